"""Obligations without sockets: masking, alert labels, policy error reasons, malformed obligations,
the refuse-frozen and mask-response steps, and the freeze store on memory and real Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from harness import route_config
from multidict import CIMultiDict, CIMultiDictProxy

from audit.sink import FileAuditSink
from gateway.authn.tokens import Subject
from gateway.config import RouteConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.freezes import UNREADABLE, Freeze, FreezeStore, freeze_key
from gateway.masking import mask_document, mask_scalar, parse_paths
from gateway.pipeline import Pipeline
from gateway.policy.decision import ObligationError, parse_decision
from gateway.policy.engine import Decision, Reason
from gateway.policy.facts import Facts
from gateway.policy.rego import RegoPolicy
from gateway.state import MemoryStore
from gateway.state.base import StateStore
from gateway.steps.audit import AuditDecision
from gateway.steps.judge import Decide, policy_error_reason
from gateway.steps.obligations import MaskResponse, RefuseFrozen, alert_labels

# --------------------------------------------------------------------------
# Masking (pure)


def test_parse_paths_accepts_dots_stars_and_array_brackets() -> None:
    assert parse_paths(["id_number", "bank_accounts[].number", "a.*.b", "id_number"]) == (
        ("id_number",), ("bank_accounts", "*", "number"), ("a", "*", "b"))


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.", "[]", "x" * 300, ".".join("a" * 17)])
def test_parse_paths_refuses_malformed_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_paths([bad])


@pytest.mark.parametrize(("value", "masked"), [
    ("110101199003071234", "**************1234"),
    ("13800138000", "*******8000"),
    ("张三", "****"),
    ("Alice Wang", "****"),
    ("1234567", "****"),
    ("11010119900307123X", "**************123X"),
    (6222020200112233, "************2233"),
    (True, "****"),
    (None, None),
])
def test_mask_scalar_keeps_the_last_four_of_long_values_only(value: Any, masked: Any) -> None:
    assert mask_scalar(value) == masked


def test_mask_document_follows_paths_through_objects_and_arrays() -> None:
    doc: dict[str, Any] = {"name": "Alice Zhang", "id_number": "110101199003071234", "phone": None,
                           "bank_accounts": [{"id": "b1", "number": "6222020200112233"},
                                             {"id": "b2", "number": "62220202"}],
                           "address": {"city": "Shanghai", "street": "1 Bund Road"}, "level": "C4"}
    paths = parse_paths(["id_number", "phone", "bank_accounts.number", "address", "missing.deep"])
    assert mask_document(doc, paths) == 5  # null is not counted
    assert doc["id_number"] == "**************1234" and doc["phone"] is None
    assert [b["number"] for b in doc["bank_accounts"]] == ["************2233", "****0202"]
    assert [b["id"] for b in doc["bank_accounts"]] == ["b1", "b2"]
    assert doc["address"] == {"city": "****", "street": "****"}
    assert doc["name"] == "Alice Zhang" and doc["level"] == "C4"


def test_mask_document_star_and_root_arrays() -> None:
    doc = [{"secret": "abcdefghij", "keep": 1}, {"secret": 12}]
    assert mask_document(doc, parse_paths(["secret"])) == 2
    assert doc == [{"secret": "****", "keep": 1}, {"secret": "****"}]
    obj = {"a": {"x": "1", "y": "2"}}
    assert mask_document(obj, parse_paths(["a.*"])) == 2 and obj == {"a": {"x": "****", "y": "****"}}


# --------------------------------------------------------------------------
# Alerts carry labels and codes, never the request's personal data


def test_alert_labels_from_strings_and_merged_objects() -> None:
    assert alert_labels("high-frequency trading pattern") == ["high-frequency trading pattern"]
    merged = {"alerts": ["a", {"code": "pig_butchering", "message": "deposit then illiquid buy"}]}
    assert alert_labels(merged) == ["a", "pig_butchering", "deposit then illiquid buy"]
    assert alert_labels({"unrelated": 1}) == ["policy_alert"]


def test_alert_labels_cut_out_the_subject_account_and_ip() -> None:
    labels = alert_labels("alice on A1 from 198.51.100.7", ("alice", "A1", "198.51.100.7"))
    assert labels == ["[redacted] on [redacted] from [redacted]"]
    assert len(alert_labels("x" * 1000)[0]) == 200
    assert len(alert_labels({"alerts": ["x"] * 50})) == 10


# --------------------------------------------------------------------------
# Policy errors: the reason label, pinned on the real engine


SIMPLE = ("p.rego", "package gateway\nimport rego.v1\n"
                    'decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}}\n')
LOOPING = ("p.rego", "package gateway\nimport rego.v1\n"
                     "n := count([x | some x in numbers.range(1, 100000); x % 7 == 0])\n"
                     'decision := {"allow": n > 0, "deny": [], "step_up": null, "obligations": {}}\n')


def test_policy_error_reason_of_the_real_engine() -> None:
    with pytest.raises(GatewayError) as slow:
        RegoPolicy.from_modules([SIMPLE], time_budget=1e-9).evaluate_sync({})
    assert policy_error_reason(slow.value) == "timeout"
    with pytest.raises(GatewayError) as looping:
        RegoPolicy.from_modules([LOOPING]).evaluate_sync({})
    assert policy_error_reason(looping.value) == "runtime_error"


def test_policy_error_reason_of_other_failures() -> None:
    assert policy_error_reason(TimeoutError()) == "timeout"
    assert policy_error_reason(RuntimeError("panic")) == "runtime_error"
    assert policy_error_reason(ConnectionError("opa down")) == "unavailable"


# --------------------------------------------------------------------------
# A malformed obligation never allows


@pytest.mark.parametrize("obligations", [
    [], "freeze", {"freeze_account": "yes"}, {"freeze_account": 1}, {"require_confirmation": None},
    {"alert": 3}, {"alert": ["x"]}, {"mask_fields": "id_number"}, {"mask_fields": [1]},
    {"mask_fields": [""]}, {"launch_missiles": True},
])
def test_malformed_obligations_raise_obligation_error(obligations: Any) -> None:
    with pytest.raises(ObligationError) as err:
        parse_decision({"allow": True, "deny": [], "step_up": None, "obligations": obligations}, "v")
    assert err.value.code == "policy_unavailable"


def test_a_malformed_obligation_wins_over_other_malformations() -> None:
    with pytest.raises(ObligationError):
        parse_decision({"allow": True, "deny": "x", "obligations": {"mask_fields": "x"}}, "v")


def _route(**kw: Any) -> RouteConfig:
    return route_config(**{"name": "r", "path": "/api/accounts/{account}", "tier": "read",
                           "account_param": "account", "fail_mode": "open", **kw})


def _ctx(route: RouteConfig, headers: dict[str, str] | None = None) -> RequestContext:
    subject = Subject(sub="alice", iss="i", accounts=("A1",), roles=("client",), acr=None, amr=(),
                      auth_time=None, jti="j", exp=2**31, iat=None, kid=None, cnf_jkt=None,
                      token_digest=b"d", claims={})
    return RequestContext(
        request_id="rid", method="GET", path="/api/accounts/A1", query="", route=route,
        params={"account": "A1"}, headers=CIMultiDictProxy(CIMultiDict(headers or {})),
        client_ip="198.51.100.7", client_port=1, scheme="https", started=0.0, now=time.time(),
        subject=subject)


def _policy(obligations: str) -> RegoPolicy:
    return RegoPolicy.from_modules([("p.rego", "package gateway\nimport rego.v1\n"
                                    f'decision := {{"allow": true, "deny": [], "step_up": null, '
                                    f'"obligations": {obligations}}}\n')])


async def test_decide_fails_a_malformed_obligation_closed_even_on_a_fail_open_read() -> None:
    errors: list[tuple[str, str]] = []
    decide = Decide(_policy('{"mask_fields": "id_number"}'), on_error=lambda r, t: errors.append((r, t)))
    ctx = _ctx(_route())
    with pytest.raises(ObligationError):
        await decide(ctx)
    assert ctx.decision is None and errors == [("runtime_error", "read")]


async def test_decide_degrades_a_timeout_on_a_fail_open_read_and_counts_it() -> None:
    errors: list[tuple[str, str]] = []
    slow = RegoPolicy.from_modules([SIMPLE], time_budget=1e-9)
    ctx = _ctx(_route())
    await Decide(slow, on_error=lambda r, t: errors.append((r, t)))(ctx)
    assert ctx.degraded == ["policy_unavailable"] and errors == [("timeout", "read")]


async def test_decide_fails_a_trade_route_closed_on_a_runtime_error() -> None:
    errors: list[tuple[str, str]] = []
    ctx = _ctx(_route(name="t", tier="trade", fail_mode="closed", methods=["POST"]))
    with pytest.raises(GatewayError) as err:
        await Decide(RegoPolicy.from_modules([LOOPING]), on_error=lambda r, t: errors.append((r, t)))(ctx)
    assert (err.value.status, err.value.code) == (503, "policy_unavailable")
    assert errors == [("runtime_error", "trade")]


# --------------------------------------------------------------------------
# Refuse frozen accounts; mask a buffered response


FREEZE = Freeze(account="A1", time=1.0, reasons=("suspicious",), by="policy", request_id="r0")


@pytest.mark.parametrize("tier", ["trade", "transfer"])
def test_refuse_frozen_stops_trade_and_transfer(tier: str) -> None:
    ctx = _ctx(_route(tier=tier, fail_mode="closed", methods=["POST"]))
    ctx.facts = Facts(freeze=FREEZE)
    with pytest.raises(GatewayError) as err:
        RefuseFrozen()(ctx)
    assert (err.value.status, err.value.code) == (403, "account_frozen")
    ctx.facts = Facts(account={"frozen": True})  # the broker's own freeze, from the account facts
    with pytest.raises(GatewayError):
        RefuseFrozen()(ctx)


def test_refuse_frozen_lets_reads_and_unfrozen_accounts_through() -> None:
    read = _ctx(_route())
    read.facts = Facts(freeze=FREEZE)
    RefuseFrozen()(read)
    trade = _ctx(_route(tier="trade", fail_mode="closed", methods=["POST"]))
    trade.facts = Facts(account={"frozen": False})
    RefuseFrozen()(trade)


@pytest.fixture
def auditor(tmp_path: Path) -> AuditDecision:
    return AuditDecision(FileAuditSink(tmp_path / "audit", fsync_interval=0.001), timeout=2.0)


def _masked_ctx(response: web.StreamResponse) -> RequestContext:
    ctx = _ctx(_route())
    ctx.decision = Decision(allow=True, obligations={"mask_fields": ["id_number"]}, policy_version="v")
    ctx.mask_fields = parse_paths(["id_number"])
    ctx.response = response
    return ctx


async def test_mask_response_masks_json_and_drops_body_digests(auditor: AuditDecision) -> None:
    counts: list[tuple[str, str]] = []
    resp = web.Response(body=orjson.dumps({"id_number": "110101199003071234"}),
                        content_type="application/json", headers={"ETag": '"abc"'})
    ctx = _masked_ctx(resp)
    MaskResponse(auditor, count=lambda o, r: counts.append((o, r)))(ctx)
    assert isinstance(resp.body, bytes)
    assert orjson.loads(resp.body) == {"id_number": "**************1234"} and "ETag" not in resp.headers
    assert counts == [("mask_fields", "applied")]


@pytest.mark.parametrize("response", [
    web.Response(text="id 110101199003071234", content_type="text/plain"),
    web.Response(body=b"{not json", content_type="application/json"),
    web.Response(body=b"\x1f\x8b...", content_type="application/json", headers={"Content-Encoding": "gzip"}),
    web.StreamResponse(),
], ids=["text", "invalid-json", "compressed", "streamed"])
async def test_mask_response_fails_closed_on_what_it_cannot_mask(auditor: AuditDecision,
                                                           response: web.StreamResponse) -> None:
    counts: list[tuple[str, str]] = []
    with pytest.raises(GatewayError) as err:
        MaskResponse(auditor, count=lambda o, r: counts.append((o, r)))(_masked_ctx(response))
    assert (err.value.status, err.value.code) == (502, "response_unmaskable")
    assert counts == [("mask_fields", "failed")]


async def test_mask_response_passes_an_empty_body(auditor: AuditDecision) -> None:
    MaskResponse(auditor)(_masked_ctx(web.Response(status=204)))


# --------------------------------------------------------------------------
# A plain step may hand the pipeline a coroutine


async def test_pipeline_awaits_what_a_plain_step_returns() -> None:
    seen: list[str] = []

    class Sometimes:
        name = "sometimes"

        def __call__(self, ctx: RequestContext) -> Any:
            async def later() -> None:
                seen.append("awaited")
            return later() if ctx.request_id == "rid" else None

    await Pipeline([Sometimes()]).run(_ctx(_route()))
    assert seen == ["awaited"]


# --------------------------------------------------------------------------
# The freeze store on memory and on real Redis


async def _freeze_store_behaviour(state: StateStore) -> None:
    store = FreezeStore(state)
    assert await store.get("A1") is None and await store.all() == []
    assert await store.freeze(FREEZE) is True
    later = Freeze(account="A1", time=2.0, reasons=("other",), by="policy")
    assert await store.freeze(later) is False  # the first record stays
    assert await store.get("A1") == FREEZE
    await store.freeze(Freeze(account="B9", time=5.0, reasons=("x",), by="policy"))
    assert [f.account for f in await store.all()] == ["B9", "A1"]  # newest first
    assert await store.lift("A1") == FREEZE
    assert await store.lift("A1") is None
    assert [f.account for f in await store.all()] == ["B9"]
    await state.set(freeze_key("C3"), b"garbage")
    unreadable = await store.get("C3")
    assert unreadable is not None and unreadable.reasons == (UNREADABLE,)  # still frozen


async def test_freeze_store_on_memory() -> None:
    await _freeze_store_behaviour(MemoryStore())


async def test_freeze_store_on_redis(redis_store: StateStore) -> None:
    await _freeze_store_behaviour(redis_store)


async def test_the_audit_step_never_lets_a_deny_through(auditor: AuditDecision) -> None:
    """A pipeline missing the obligations step still cannot forward a deny that carries obligations."""
    ctx = _ctx(_route())
    ctx.decision = Decision(allow=False, deny=(Reason("fraud_pattern", "x"),),
                            obligations={"alert": "x"}, policy_version="v")
    with pytest.raises(GatewayError) as err:
        await auditor(ctx)
    assert (err.value.status, err.value.code) == (403, "policy_denied")
