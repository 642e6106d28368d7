"""Shadow mode's parts without HTTP: the decision comparison (pure), the runner on real bundles and
stores (memory, and a Redis that cannot be reached), and the report built from aggregated counts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from bundles import tiny_bundle

from gateway.bundles.repository import ShadowSession
from gateway.bundles.runtime import ActivePolicy
from gateway.bundles.shadow import ShadowRunner, counts_key
from gateway.config import PolicyAdminConfig
from gateway.metrics import Metrics
from gateway.policy.compare import INVALID_CODE, brief, compare
from gateway.policy.engine import Decision, Reason, StepUp
from gateway.policy.rego import RegoPolicy
from gateway.state.memory import MemoryStore
from gateway.state.redis import RedisStore

ALLOW = Decision(allow=True)
MFA = StepUp(acr="urn:portcullis:acr:mfa", methods=("totp",), max_age=300)


def deny(*codes: str, step_up: StepUp | None = None, **obligations: Any) -> Decision:
    return Decision(allow=False, deny=tuple(Reason(c, f"message for {c}") for c in codes), step_up=step_up,
                    obligations=obligations)


# -- compare ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("live", "shadow", "kinds", "added", "removed"), [
    (ALLOW, deny("maintenance"), ("allow_to_deny",), ("maintenance",), ()),
    (deny("lot_size"), ALLOW, ("deny_to_allow",), (), ("lot_size",)),
    (ALLOW, deny("risky", step_up=MFA), ("step_up",), ("risky",), ()),
    (deny("risky", step_up=MFA), deny("risky", step_up=StepUp("urn:portcullis:acr:face", ("face",))),
     ("step_up",), (), ()),
    (deny("lot_size"), deny("price_band"), ("reasons",), ("price_band",), ("lot_size",)),
    (deny("lot_size"), deny("lot_size", freeze_account=True), ("obligations",), (), ()),
])
def test_compare_names_the_kind_of_change_and_the_reason_codes(live: Decision, shadow: Decision,
                                                              kinds: tuple[str, ...], added: tuple[str, ...],
                                                              removed: tuple[str, ...]) -> None:
    diff = compare(live, shadow)
    assert diff is not None
    assert (diff.kinds, diff.added, diff.removed) == (kinds, added, removed)


def test_compare_sees_the_same_decision_as_no_change() -> None:
    assert compare(ALLOW, Decision(allow=True, policy_version="other")) is None
    assert compare(deny("a", "b"), deny("b", "a")) is None  # the messages and order do not matter


def test_compare_counts_an_obligation_value_change_without_reporting_the_value() -> None:
    diff = compare(deny("x", alert="account A1 of alice"), deny("x", alert="another text"))
    assert diff is not None and diff.kinds == ("obligations",) and diff.obligations == ("alert",)
    shown = brief(deny("x", alert="account A1 of alice"))
    assert "alice" not in str(shown) and shown["obligations"] == ["alert"]


def test_a_reason_code_that_is_not_an_identifier_is_not_reported_as_is() -> None:
    diff = compare(ALLOW, deny("denied for alice@example.com / A1"))
    assert diff is not None and diff.added == (INVALID_CODE,)


# -- the runner ------------------------------------------------------------------------------


def quotes_input(rid: str = "r1", agent: str = "ua") -> dict[str, Any]:
    return {"request": {"id": rid, "route": "quotes", "tier": "read", "account": "A1"},
            "subject": {"sub": "alice", "roles": ["client"]}, "device": {"user_agent": agent}}


def policy(**kw: Any) -> RegoPolicy:
    files = tiny_bundle(**kw)
    modules = [(n, t) for n, t in files.items() if n.endswith(".rego") and not n.endswith("_test.rego")]
    return RegoPolicy.from_modules(modules, {"settings": orjson.loads(files["data/settings.json"])})


def runner_on(state: Any, **cfg: Any) -> tuple[ActivePolicy, ShadowRunner]:
    active = ActivePolicy(policy(rev=1))
    runner = ShadowRunner(PolicyAdminConfig(**cfg), state, time_budget=0.05, metrics=Metrics(), process="p1")
    candidate = policy(rev=2, quotes_open=False)
    runner.begin(ShadowSession(id=1, version=candidate.version, sample_rate=1.0, started_by="carol",
                               started_at=time.time()), candidate)
    active.shadow = runner
    return active, runner


def test_the_whole_input_is_built_while_a_shadow_candidate_judges() -> None:
    active, runner = runner_on(MemoryStore())
    assert active.input_members is None  # the candidate may read members the active bundle does not
    active.shadow = None
    assert active.input_members == active.engine.input_members is not None


async def test_deferred_shadow_runs_after_the_request_yields_and_never_changes_the_decision() -> None:
    active, runner = runner_on(MemoryStore())
    decision = await active.evaluate(quotes_input())
    assert decision.allow is True
    assert runner._tally is not None and runner._tally.counts["evaluated"] == 0  # not yet: deferred
    await asyncio.sleep(0)
    assert runner._tally.counts["differs"] == 1 and runner._tally.counts["kind:allow_to_deny"] == 1


async def test_a_full_queue_drops_shadow_evaluations_and_counts_them() -> None:
    active, runner = runner_on(MemoryStore(), shadow_queue=2)
    for i in range(5):
        assert (await active.evaluate(quotes_input(f"r{i}"))).allow
    await asyncio.sleep(0)
    assert runner._tally is not None
    assert (runner._tally.counts["evaluated"], runner._tally.counts["dropped"]) == (2, 3)


async def test_counts_survive_an_unreachable_state_store_until_a_flush_succeeds() -> None:
    down = RedisStore("redis://127.0.0.1:9/0", "x:", timeout=0.2)
    active, runner = runner_on(down, shadow_mode="inline")
    try:
        for i in range(3):
            await active.evaluate(quotes_input(f"r{i}"))
        assert await runner.flush() is False and runner.flush_failures == 1
        await active.evaluate(quotes_input("r3"))
        memory = MemoryStore()
        runner.state = memory  # the store is back
        assert await runner.flush() is True
    finally:
        await down.close()
    counts = await memory.hgetall(counts_key(1))
    assert (counts["evaluated"], counts["differs"], counts["process:p1"]) == (b"4", b"4", b"4")


async def test_the_report_aggregates_what_every_process_flushed() -> None:
    shared = MemoryStore()
    (a, one), (b, two) = runner_on(shared, shadow_mode="inline"), runner_on(shared, shadow_mode="inline")
    two.process = "p2"
    await a.evaluate(quotes_input("r1"))
    await b.evaluate(quotes_input("r2"))
    await b.evaluate(quotes_input("r3"))
    await two.flush()
    assert one.session is not None
    report = await one.report(one.session, active_version="v1")
    assert (report["evaluated"], report["differs"], report["processes"]) == (3, 3, {"p1": 1, "p2": 2})
    assert sorted(s["request_id"] for s in report["by_kind"]["allow_to_deny"]["samples"]) == ["r1", "r2", "r3"]
