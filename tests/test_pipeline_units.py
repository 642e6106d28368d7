"""Pure steps on hand-built contexts: account binding, risk scoring, baseline policy, input."""

from __future__ import annotations

import time
from typing import Any

import pytest
from harness import route_config
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authn.tokens import Subject
from gateway.config import RouteConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy.engine import BaselinePolicy
from gateway.policy.input import build_input
from gateway.risk.engine import RiskEngine
from gateway.risk.scorer import level_for
from gateway.risk.signals import (
    DEFAULT_POINTS,
    RiskSettings,
    automation_client,
    missing_device_proof,
    missing_user_agent,
)
from gateway.state.memory import MemoryStore
from gateway.steps.bind_account import BindAccount, requested_accounts


def _route(**kw: Any) -> RouteConfig:
    return route_config(**{"name": "r", "path": "/api/accounts/{account}/orders", "tier": "read",
                           "account_param": "account", "account_query": "account", **kw})


def _subject(accounts: tuple[str, ...] = ("A1",), roles: tuple[str, ...] = ("client",)) -> Subject:
    return Subject(sub="alice", iss="i", accounts=accounts, roles=roles, acr=None, amr=(),
                   auth_time=None, jti="j", exp=2**31, iat=None, kid=None, cnf_jkt=None,
                   token_digest=b"d", claims={})


def _ctx(route: RouteConfig, params: dict[str, str], query: str = "",
         headers: dict[str, str] | None = None, subject: Subject | None = None) -> RequestContext:
    return RequestContext(
        request_id="rid", method="GET", path="/p", query=query, route=route, params=params,
        headers=CIMultiDictProxy(CIMultiDict(headers or {})), client_ip="198.51.100.7",
        client_port=1, scheme="https", started=0.0, now=time.time(),
        subject=subject or _subject())


def client_scorer(points: dict[str, int] | None = None) -> RiskEngine:
    """The engine with the stateless client signals only (the stateful ones: tests/test_risk.py)."""
    return RiskEngine(MemoryStore(), signals=(automation_client, missing_user_agent, missing_device_proof),
                      settings=RiskSettings(points={**DEFAULT_POINTS, **(points or {})}))


def test_requested_accounts_from_path_and_every_query_value() -> None:
    ctx = _ctx(_route(), {"account": "A1"}, query="account=A2&x=1&account=A3")
    assert requested_accounts(ctx) == ["A1", "A2", "A3"]


def test_bind_account_allows_own_accounts() -> None:
    BindAccount()(_ctx(_route(), {"account": "A1"}, query="account=A1"))


@pytest.mark.parametrize(("params", "query"), [
    ({"account": "B9"}, ""), ({"account": "A1"}, "account=B9"), ({"account": "A1"}, "account="),
    ({"account": "a1"}, ""),
])
def test_bind_account_refuses_foreign_accounts(params: dict[str, str], query: str) -> None:
    with pytest.raises(GatewayError) as err:
        BindAccount()(_ctx(_route(), params, query=query))
    assert (err.value.status, err.value.code) == (403, "account_forbidden")


def test_bind_account_without_subject_refuses() -> None:
    ctx = _ctx(_route(), {"account": "A1"})
    ctx.subject = None
    with pytest.raises(GatewayError):
        BindAccount()(ctx)


async def test_device_proof_header_alone_counts_for_nothing() -> None:
    ctx = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "app/1", "DPoP": "x"})
    result = await client_scorer().score(ctx)
    assert [f.code for f in result.factors] == ["missing_device_proof"]


async def test_scorer_sums_weights_and_levels() -> None:
    ctx = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "HeadlessChrome/120"})
    result = await client_scorer({"automation_client": 40}).score(ctx)
    assert [f.code for f in result.factors] == ["automation_client", "missing_device_proof"]
    assert result.score == 40 + 15 and result.level == "medium"


async def test_scorer_zero_weight_drops_signal() -> None:
    ctx = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "app/1"})
    ctx.device_id = "verified-device-thumbprint"
    result = await client_scorer({"automation_client": 0}).score(ctx)
    assert (result.score, result.level, result.factors) == (0, "low", ())


def test_levels() -> None:
    assert [level_for(s) for s in (0, 29, 30, 60, 80, 100)] == [
        "low", "low", "medium", "high", "critical", "critical"]


async def test_baseline_policy_enforces_route_roles_and_admin_tier() -> None:
    policy = BaselinePolicy()
    advisor_route = _route(roles=["advisor"])
    denied = await policy.evaluate(build_input(_ctx(advisor_route, {"account": "A1"})))
    allowed = await policy.evaluate(build_input(
        _ctx(advisor_route, {"account": "A1"}, subject=_subject(roles=("advisor",)))))
    admin = await policy.evaluate(build_input(_ctx(_route(tier="admin"), {"account": "A1"})))
    assert (denied.allow, denied.deny[0].code) == (False, "role_forbidden")
    assert allowed.allow
    assert not admin.allow


def test_policy_input_document() -> None:
    doc = build_input(_ctx(_route(), {"account": "A1"}, headers={"User-Agent": "app/1"}))
    assert doc["request"]["account"] == "A1" and doc["request"]["tier"] == "read"
    assert doc["subject"]["accounts"] == ["A1"] and doc["network"] == {"ip": "198.51.100.7"}
    assert doc["device"] == {"id": None, "user_agent": "app/1"}
    assert doc["risk"] is None and doc["order"] is None and doc["body_accounts"] == []


def test_decision_record_carries_every_base_field() -> None:
    from gateway.steps.audit import base_record, decision_record

    ctx = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "app/1"})
    record = decision_record(ctx)
    base = base_record(ctx, "decision")
    assert {k: record[k] for k in base} == base
    assert record["decision"] == "allow" and record["reasons"] == []


async def test_automation_user_agents_are_flagged_each_time() -> None:
    headless = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "HeadlessChrome/120"})
    plain = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "app/1"})
    scorer = client_scorer()
    for _ in range(2):  # the second time from the user-agent memo
        assert "automation_client" in [f.code for f in (await scorer.score(headless)).factors]
        assert "automation_client" not in [f.code for f in (await scorer.score(plain)).factors]


async def test_scorer_results_are_the_same_for_the_same_signals() -> None:
    scorer = client_scorer()
    quiet = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "app/1"})
    bot = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "curl/8.0"})
    first, again = await scorer.score(quiet), await scorer.score(quiet)
    assert first == again and first.score == 15
    flagged = await scorer.score(bot)  # a different factor set is scored on its own
    assert (flagged.score, [f.code for f in flagged.factors]) == (
        35, ["automation_client", "missing_device_proof"])


class _AsyncOnlyScorer:
    """A scorer with I/O (no score_sync), as the risk issue's Redis-backed one will be."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    async def score(self, ctx: RequestContext) -> Any:
        self.calls += 1
        if self.fail:
            raise ConnectionError("risk state unavailable")
        return await client_scorer().score(ctx)


class _BrokenSyncScorer:
    def score_sync(self, ctx: RequestContext) -> Any:
        raise ConnectionError("broken")

    async def score(self, ctx: RequestContext) -> Any:
        raise ConnectionError("broken")


async def _run_step(step: Any, ctx: RequestContext) -> None:
    pending = step(ctx)  # as the pipeline does: await only what is returned
    if pending is not None:
        await pending


@pytest.mark.parametrize("scorer", [client_scorer(), _AsyncOnlyScorer()])
async def test_score_step_with_sync_and_async_scorers(scorer: Any) -> None:
    from gateway.steps.judge import Score

    ctx = _ctx(_route(), {"account": "A1"}, headers={"User-Agent": "app/1"})
    await _run_step(Score(scorer), ctx)
    assert ctx.risk is not None and [f.code for f in ctx.risk.factors] == ["missing_device_proof"]


@pytest.mark.parametrize("scorer", [_BrokenSyncScorer(), _AsyncOnlyScorer(fail=True)])
async def test_score_failure_degrades_open_reads_and_fails_closed_routes(scorer: Any) -> None:
    from gateway.steps.judge import Score

    open_ctx = _ctx(_route(fail_mode="open"), {"account": "A1"})
    await _run_step(Score(scorer), open_ctx)
    assert open_ctx.risk is None and open_ctx.degraded == ["risk_unavailable"]
    closed = _ctx(_route(tier="trade"), {"account": "A1"})
    with pytest.raises(GatewayError) as err:
        await _run_step(Score(scorer), closed)
    assert (err.value.status, err.value.code) == (503, "risk_unavailable")
