"""Obligations through real gateways on loopback: a Rego test policy on the embedded engine, the demo
backend, real Redis for the freeze two gateways share, the memory notifier as the only fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo_keys import ensure_demo_keys
from gateway.errors import GatewayError
from gateway.notify import MemoryNotifier
from gateway.policy.rego import RegoPolicy
from gateway.state.base import StateStore
from gateway.steps.obligations import RefuseFrozen
from tests.harness import Stack, routes_with_body_kinds, run_backend, run_stack

OFFICERS = ["carol", "dave"]
MASKED = ["name", "id_number", "phone", "address", "bank_accounts.number"]

# Decisions keyed on the route and the order's client_order_id, so each test asks for one obligation.
POLICY = """package gateway
import rego.v1

plain := {"allow": true, "deny": [], "step_up": null, "obligations": {}}
coid := input.order.client_order_id

decision := {"allow": true, "deny": [], "step_up": null, "obligations": {"mask_fields": MASKED}} if {
	input.request.route == "account"
} else := {"allow": false, "deny": [{"code": "fraud_pattern", "message": "deposit then illiquid buy"}],
	"step_up": null, "obligations": {"freeze_account": true, "alert": "pig-butchering pattern"}} if {
	coid == "freeze-me"
} else := {"allow": true, "deny": [], "step_up": null,
	"obligations": {"alert": {"alerts": ["large order by alice", "burst"]}}} if {
	coid == "alert-me"
} else := {"allow": true, "deny": [], "step_up": null, "obligations": {"require_confirmation": true}} if {
	coid == "confirm-me"
	input.confirmation.risk_warning_acknowledged == true
} else := {"allow": false, "deny": [{"code": "risk_warning_required", "message": "acknowledge the warning"}],
	"step_up": null, "obligations": {"require_confirmation": true}} if {
	coid == "confirm-me"
} else := plain
""".replace("MASKED", json.dumps(MASKED))

LOOPING = """package gateway
import rego.v1
n := count([x | some x in numbers.range(1, 100000); x % 7 == 0])
decision := {"allow": n > 0, "deny": [], "step_up": null, "obligations": {}}
"""

ORDER = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit"}
TRANSFER = {"direction": "out", "amount": 100.0, "currency": "CNY", "bank_account_id": "b1"}


def _order(coid: str) -> dict[str, Any]:
    return {**ORDER, "client_order_id": coid}


@asynccontextmanager
async def _stack(tmp: Path, notifier: MemoryNotifier, *, policy: str = POLICY, time_budget: float = 0.05,
                 backend_url: str | None = None, **overrides: Any) -> AsyncIterator[Stack]:
    engine = RegoPolicy.from_modules([("test.rego", policy)], time_budget=time_budget)
    overrides.setdefault("routes", routes_with_body_kinds())
    async with run_stack(tmp, backend_url=backend_url, gateway_kwargs={"policy": engine, "notifier": notifier},
                         policy_admin={"officers": OFFICERS}, **overrides) as stack:
        yield stack


def _audit(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted(folder.glob("*.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines())
    return out


async def _records(folder: Path, request_id: str, want: Callable[[list[dict[str, Any]]], bool]
                   ) -> list[dict[str, Any]]:
    """The request's audit records once `want` holds (queued records land within the sync interval)."""
    for _ in range(100):
        found = [r for r in _audit(folder) if r.get("request_id") == request_id]
        if want(found):
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"audit records of {request_id}: {found}")


async def _metrics(s: aiohttp.ClientSession, stack: Stack) -> str:
    async with s.get(stack.admin_url + "/metrics") as resp:
        return await resp.text()


def _officer(stack: Stack, **kw: Any) -> dict[str, str]:
    return stack.auth(sub="carol", accounts=(), roles=("compliance",), acr="urn:portcullis:acr:mfa", **kw)


# --------------------------------------------------------------------------
# freeze_account: one gateway freezes, the other refuses; compliance lifts it


@pytest.fixture
def redis_state(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"backend": "redis", "url": redis_url, "prefix": redis_prefix, "timeout": 2.0}


async def test_a_freeze_reaches_every_gateway_until_compliance_lifts_it(
        tmp_path: Path, redis_state: dict[str, Any]) -> None:
    n1, n2 = MemoryNotifier(), MemoryNotifier()
    async with _stack(tmp_path, n1, state=redis_state) as gw1, \
            _stack(tmp_path, n2, state=redis_state, backend_url=gw1.backend_url,
                   audit={"path": str(tmp_path / "audit2")}) as gw2, aiohttp.ClientSession() as s:
        async with s.post(gw1.url + "/api/accounts/A1/orders", json=_order("freeze-me"), headers=gw1.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (403, "account_frozen")
            rid = r.headers["X-Request-Id"]
        # The other gateway refuses trade and transfer on A1 before any policy; reads go on.
        async with s.post(gw2.url + "/api/accounts/A1/orders", json=_order("ok-1"), headers=gw2.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (403, "account_frozen")
        async with s.post(gw2.url + "/api/accounts/A1/transfers", json=TRANSFER, headers=gw2.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (403, "account_frozen")
        async with s.get(gw2.url + "/api/accounts/A1/positions", headers=gw2.auth()) as r:
            assert r.status == 200
        bob = gw2.auth(sub="bob", accounts=("B9",))
        async with s.post(gw2.url + "/api/accounts/B9/orders", json=_order("ok-2"), headers=bob) as r:
            assert r.status == 201, await r.text()  # another account trades on

        # Customer and both officers told; the alert of the same decision went out too.
        frozen = [(n.kind, n.recipient) for n in n1.sent if n.kind == "account_frozen"]
        assert sorted(frozen) == [("account_frozen", "alice"), ("account_frozen", "carol"),
                                  ("account_frozen", "dave")]
        alerts = [n for n in n1.sent if n.kind == "policy_alert"]
        assert {n.recipient for n in alerts} == set(OFFICERS)
        assert alerts[0].fields["reasons"] == "fraud_pattern" and alerts[0].fields["request_id"] == rid
        records = await _records(tmp_path / "audit", rid,
                                 lambda rs: {r["type"] for r in rs} >= {"obligation", "denial"})
        done = {r["obligation"]: r for r in records if r["type"] == "obligation"}
        assert done["freeze_account"]["outcome"] == "applied" and done["freeze_account"]["notified"] is True
        assert done["freeze_account"]["reasons"] == ["fraud_pattern"] and done["alert"]["outcome"] == "applied"
        denial = next(r for r in records if r["type"] == "denial")
        assert denial["code"] == "account_frozen" and denial["obligations"] == ["alert", "freeze_account"]

        # Compliance lists it on either gateway ...
        async with s.get(gw2.admin_url + "/admin/freezes", headers=_officer(gw2)) as r:
            assert r.status == 200
            (listed,) = (await r.json())["freezes"]
        assert listed["account"] == "A1" and listed["reasons"] == ["fraud_pattern"]
        assert listed["request_id"] == rid and listed["by"] == "policy" and listed["sub"] == "alice"
        # ... and lifts it only with a written reason, a compliance role and a recent step-up.
        lift = gw2.admin_url + "/admin/freezes/A1/lift"
        async with s.post(lift, json={}, headers=_officer(gw2)) as r:
            assert (r.status, (await r.json())["error"]) == (400, "bad_request")
        async with s.post(lift, json={"reason": "x"}, headers=gw2.auth(sub="eve", roles=("admin",))) as r:
            assert (r.status, (await r.json())["error"]) == (403, "role_forbidden")
        async with s.post(lift, json={"reason": "x"},
                          headers=gw2.auth(sub="carol", accounts=(), roles=("compliance",))) as r:
            assert (r.status, (await r.json())["error"]) == (401, "insufficient_user_authentication")
        async with s.post(lift, json={"reason": "customer verified by phone"}, headers=_officer(gw2)) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert body["lifted_by"] == "carol" and body["lifted"]["request_id"] == rid
        async with s.post(lift, json={"reason": "again"}, headers=_officer(gw2)) as r:
            assert (r.status, (await r.json())["error"]) == (404, "freeze_not_found")

        async with s.post(gw1.url + "/api/accounts/A1/orders", json=_order("ok-3"), headers=gw1.auth()) as r:
            assert r.status == 201, await r.text()
        metrics = await _metrics(s, gw1)
    assert 'portcullis_obligations_total{obligation="freeze_account",outcome="applied"} 1.0' in metrics
    lifts = [r for r in _audit(tmp_path / "audit2") if r.get("action") == "freeze_lift"]
    assert [r.get("outcome") for r in lifts] == [None, "ok", "freeze_not_found"]  # write-ahead, outcome, refused
    assert lifts[0]["reason"] == "customer verified by phone" and lifts[0]["freeze"]["account"] == "A1"
    assert lifts[0]["sub"] == "carol"


async def test_a_frozen_account_cannot_even_cancel_when_the_policy_would_allow(tmp_path: Path) -> None:
    notifier = MemoryNotifier()
    async with _stack(tmp_path, notifier) as stack, aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/api/accounts/A1/orders", json=_order("freeze-me"),
                          headers=stack.auth()) as r:
            assert r.status == 403
        assert await stack.gateway.freezes.get("A1") is not None
        # The plain-allow policy would let this cancel through: Python refuses it.
        async with s.delete(stack.url + "/api/accounts/A1/orders/o-1", headers=stack.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (403, "account_frozen")


# --------------------------------------------------------------------------
# alert, require_confirmation, mask_fields


async def test_an_alert_reaches_the_officers_with_codes_but_no_personal_data(tmp_path: Path) -> None:
    notifier = MemoryNotifier()
    async with _stack(tmp_path, notifier) as stack, aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/api/accounts/A1/orders", json=_order("alert-me"),
                          headers=stack.auth()) as r:
            assert r.status == 201, await r.text()
            rid = r.headers["X-Request-Id"]
        metrics = await _metrics(s, stack)
    assert [n.recipient for n in notifier.sent] == OFFICERS
    text = json.dumps([(n.message, dict(n.fields)) for n in notifier.sent])
    assert "alice" not in text and "A1" not in text and "Bearer" not in text and "127.0.0.1" not in text
    assert notifier.sent[0].fields["alert"] == "large order by [redacted]; burst"
    assert notifier.sent[0].fields["request_id"] == rid
    records = await _records(tmp_path / "audit", rid, lambda rs: any(r["type"] == "obligation" for r in rs))
    decision = next(r for r in records if r["type"] == "decision")
    assert decision["obligations"] == ["alert"]
    assert 'portcullis_obligations_total{obligation="alert",outcome="applied"} 1.0' in metrics


async def test_an_undeliverable_alert_refuses_the_order(tmp_path: Path) -> None:
    class DownNotifier(MemoryNotifier):  # the external channel is down (a fake at the boundary)
        async def notify(self, *args: Any, **kw: Any) -> None:
            raise OSError("smtp unreachable")

    async with _stack(tmp_path, DownNotifier()) as stack, aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/api/accounts/A1/orders", json=_order("alert-me"),
                          headers=stack.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (503, "notify_unavailable")
        metrics = await _metrics(s, stack)
    assert 'portcullis_obligations_total{obligation="alert",outcome="failed"} 1.0' in metrics


async def test_confirmation_is_asked_for_and_the_acknowledged_resend_passes(tmp_path: Path) -> None:
    async with _stack(tmp_path, MemoryNotifier()) as stack, aiohttp.ClientSession() as s:
        url = stack.url + "/api/accounts/A1/orders"
        async with s.post(url, json=_order("confirm-me"), headers=stack.auth()) as r:
            body = await r.json()
            assert (r.status, body["error"]) == (428, "confirmation_required")
        assert body["confirm_header"] == "X-Portcullis-Risk-Acknowledged" and body["confirm_value"] == "true"
        assert body["reasons"] == ["risk_warning_required"]
        ack = stack.auth() | {"X-Portcullis-Risk-Acknowledged": "true"}
        async with s.post(url, json=_order("confirm-me"), headers=ack) as r:
            assert r.status == 201, await r.text()
        metrics = await _metrics(s, stack)
    assert 'portcullis_obligations_total{obligation="require_confirmation",outcome="requested"} 1.0' in metrics
    assert 'portcullis_obligations_total{obligation="require_confirmation",outcome="acknowledged"} 1.0' in metrics


async def test_the_profile_reaches_the_client_masked(tmp_path: Path) -> None:
    async with _stack(tmp_path, MemoryNotifier()) as stack, aiohttp.ClientSession() as s:
        async with s.get(stack.backend_url + "/api/accounts/A1") as r:
            raw = await r.json() if r.status == 200 else None
        async with s.get(stack.url + "/api/accounts/A1", headers=stack.auth()) as r:
            assert r.status == 200, await r.text()
            profile = await r.json()
            rid = r.headers["X-Request-Id"]
        metrics = await _metrics(s, stack)
    assert profile["id_number"].startswith("*" * 14) and profile["id_number"][-4:].isdigit()
    assert set(profile["phone"][:-4]) == {"*"} and profile["phone"][-4:].isdigit()
    assert set(profile["name"]) == {"*"}
    numbers = [b["number"] for b in profile["bank_accounts"]]
    assert numbers and all(n.startswith("****") for n in numbers)
    assert profile["investor_level"] and profile["account"] == "A1"  # unlisted fields untouched
    if raw is not None:  # the backend may refuse direct calls; when it answers, the tails match
        assert profile["id_number"][-4:] == raw["id_number"][-4:] and raw["id_number"] != profile["id_number"]
    records = await _records(tmp_path / "audit", rid, lambda rs: any(r["type"] == "obligation" for r in rs))
    (masked,) = [r for r in records if r["type"] == "obligation"]
    assert masked["obligation"] == "mask_fields" and masked["outcome"] == "applied" and masked["masked"] >= 5
    assert 'portcullis_obligations_total{obligation="mask_fields",outcome="applied"} 1.0' in metrics


# --------------------------------------------------------------------------
# Policy runtime errors and timeouts (issue 3 item 9)


async def test_a_looping_policy_fails_a_trade_closed_and_is_counted(tmp_path: Path) -> None:
    async with _stack(tmp_path, MemoryNotifier(), policy=LOOPING) as stack, aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/api/accounts/A1/orders", json=_order("c1"), headers=stack.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (503, "policy_unavailable")
        metrics = await _metrics(s, stack)
    assert 'portcullis_policy_errors_total{reason="runtime_error",tier="trade"} 1.0' in metrics


async def test_a_policy_timeout_degrades_a_fail_open_read_and_is_counted(tmp_path: Path) -> None:
    async with _stack(tmp_path, MemoryNotifier(), time_budget=1e-9) as stack, aiohttp.ClientSession() as s:
        async with s.get(stack.url + "/api/quotes/600519.SH", headers=stack.auth()) as r:
            assert r.status == 200, await r.text()  # quotes: fail_mode = "open"
            rid = r.headers["X-Request-Id"]
        async with s.post(stack.url + "/api/accounts/A1/orders", json=_order("c2"), headers=stack.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (503, "policy_unavailable")
        metrics = await _metrics(s, stack)
    assert 'portcullis_policy_errors_total{reason="timeout",tier="read"} 1.0' in metrics
    assert 'portcullis_policy_errors_total{reason="timeout",tier="trade"} 1.0' in metrics
    records = await _records(tmp_path / "audit", rid, lambda rs: any(r["type"] == "decision" for r in rs))
    assert next(r for r in records if r["type"] == "decision")["degraded"] == ["policy_unavailable"]


# --------------------------------------------------------------------------
# The facts step: the freeze rides the trade batch and reaches the policy input


async def test_a_gateway_freeze_rides_the_one_batch_and_reaches_the_input(
        tmp_path: Path, redis_store: StateStore) -> None:
    from gateway.freezes import Freeze, FreezeStore
    from gateway.policy.input import build_input
    from gateway.policy.providers import HttpFactProviders
    from gateway.steps.facts import FetchFacts
    from tests.test_policy_input import ORDER as INPUT_ORDER
    from tests.test_policy_input import CountingStore
    from tests.test_policy_input import _ctx as input_ctx

    await FreezeStore(redis_store).freeze(Freeze(account="A1", time=1.0, reasons=("fraud_pattern",), by="policy"))
    keys = ensure_demo_keys(tmp_path / "keys")
    async with run_backend(keys, internal_token="facts-token") as url:
        providers = HttpFactProviders(url, "facts-token")
        try:
            counting = CountingStore(redis_store)
            step = FetchFacts(providers, counting)
            order = input_ctx("order_place", body=INPUT_ORDER, rid="r-frozen")
            await step(order)
            assert counting.round_trips == 1  # the freeze GET is inside the counters' batch
            assert order.facts is not None and order.facts.freeze is not None
            assert order.facts.freeze.reasons == ("fraud_pattern",)
            assert build_input(order)["account"]["frozen"] is True  # the bundle's account_frozen rule fires
            transfer = input_ctx("transfer", body=TRANSFER, rid="r-transfer")
            await step(transfer)
            assert counting.round_trips == 2  # one GET on a transfer, beside the providers
            assert transfer.facts is not None and build_input(transfer)["account"]["frozen"] is True
            with pytest.raises(GatewayError) as err:
                RefuseFrozen()(transfer)
            assert err.value.code == "account_frozen"
        finally:
            await providers.close()


async def test_the_customers_freeze_notice_follows_their_choice(tmp_path: Path) -> None:
    """alerts.freezes off (a weaker setting in force after its cooling-off): officers are told, the
    customer is not; docs/RISK.md "Customer security settings"."""
    from gateway.settings import SecuritySettings, SettingsRecord, SettingsStore

    notifier = MemoryNotifier()
    async with _stack(tmp_path, notifier) as gw, aiohttp.ClientSession() as s:
        quiet = SettingsRecord(settings=SecuritySettings(freezes=False))
        await SettingsStore(gw.gateway.state).put("alice", quiet)
        async with s.post(gw.url + "/api/accounts/A1/orders", json=_order("freeze-me"), headers=gw.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (403, "account_frozen")
    told = sorted(n.recipient for n in notifier.sent if n.kind == "account_frozen")
    assert told == sorted(OFFICERS)  # not alice
