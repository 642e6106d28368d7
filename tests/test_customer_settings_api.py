"""The customer security settings API through a real gateway and the real demo backend on loopback.

The policy is the broker bundle's own policies/limits.rego under a small `gateway` package that
turns its step-up requests into the decision (the full bundle's trading-hours rules would make the
outcome depend on when the suite runs). The memory notifier is the only fake; the clock the gateway
reads is moved instead of sleeping through the cooling-off.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import DeviceKey
from gateway.notify import MemoryNotifier
from gateway.policy.input import build_input
from gateway.policy.rego import RegoPolicy
from gateway.settings import SettingsRecord, SettingsStore, plan
from gateway.state.base import StateStore
from gateway.steps.facts import FetchFacts
from tests.harness import OffsetClock, Stack, routes_with_body_kinds, run_backend, run_stack
from tests.test_policy_input import CountingStore
from tests.test_policy_input import _ctx as input_ctx

REPO = Path(__file__).resolve().parents[1]
TOKEN = "settings-internal-token"
COOL = 3600.0
MFA = "urn:portcullis:acr:mfa"
URL_PATH = "/api/me/security"

WRAPPER = """package gateway
import rego.v1

needed contains r if {
	data.gateway.limits.applies == true
	some r in data.gateway.limits.step_up
}

decision := {"allow": false, "deny": [{"code": r.reason, "message": "step up"} | some r in needed],
	"step_up": {"acr": "urn:portcullis:acr:mfa", "methods": ["totp", "sms"], "max_age": 300},
	"obligations": {}} if {
	count(needed) > 0
} else := {"allow": true, "deny": [], "step_up": null, "obligations": {}}
"""

# Ping An Insurance at 57.20: 100 shares are 5,720 CNY, 200 are 11,440.
SMALL = {"symbol": "601318.SH", "side": "buy", "qty": 100, "price": 57.2, "type": "limit"}
LARGE = {**SMALL, "qty": 200}


def limits_policy() -> RegoPolicy:
    limits = (REPO / "policies" / "limits.rego").read_text()
    data = {"limits": json.loads((REPO / "policies" / "data" / "limits.json").read_text())}
    return RegoPolicy.from_modules([("limits.rego", limits), ("wrapper.rego", WRAPPER)], data)


Clock = OffsetClock


@asynccontextmanager
async def settings_stack(tmp: Path, notifier: MemoryNotifier, clock: Clock | None = None,
                         **overrides: Any) -> AsyncIterator[Stack]:
    overrides.setdefault("customer_settings", {"cooling_off": COOL})
    async with run_stack(tmp, internal_token=TOKEN, routes=routes_with_body_kinds(),
                         gateway_kwargs={"policy": limits_policy(), "notifier": notifier,
                                         "clock": clock or Clock()}, **overrides) as stack:
        yield stack


async def _put(s: aiohttp.ClientSession, stack: Stack, body: Any, **token: Any) -> tuple[int, Any, Any]:
    async with s.put(stack.url + URL_PATH, json=body, headers=stack.auth(**token)) as r:
        return r.status, await r.json(), r.headers


async def _get(s: aiohttp.ClientSession, stack: Stack, **token: Any) -> Any:
    async with s.get(stack.url + URL_PATH, headers=stack.auth(**token)) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Cache-Control"] == "no-store"
        return await r.json()


async def _order(s: aiohttp.ClientSession, stack: Stack, order: dict[str, Any], coid: str) -> tuple[int, Any]:
    async with s.post(stack.url + "/api/accounts/A1/orders", json={**order, "client_order_id": coid},
                      headers=stack.auth()) as r:
        return r.status, (await r.json(), r.headers.get("WWW-Authenticate"))


def _audit(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted(folder.glob("*.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines())
    return out


async def test_raising_protection_applies_at_once_and_is_announced(tmp_path: Path) -> None:
    notifier = MemoryNotifier()
    async with settings_stack(tmp_path, notifier) as stack, aiohttp.ClientSession() as s:
        assert await _get(s, stack) == {"settings": {"single_trade_limit": None, "daily_limit": None, "alerts": {
            "new_device_login": True, "transfers": True, "freezes": True}}, "pending": [], "cooling_off": COOL}
        status, body, headers = await _put(s, stack, {"single_trade_limit": 10000, "daily_limit": 30000.5})
        assert status == 200, body
        assert body["settings"]["single_trade_limit"] == 10000 and body["settings"]["daily_limit"] == 30000.5
        assert body["pending"] == [] and body["notified"] is True
        assert [(c["field"], c["kind"]) for c in body["changes"]] == [
            ("single_trade_limit", "applied"), ("daily_limit", "applied")]
        [alert] = notifier.sent
        assert (alert.kind, alert.recipient, alert.fields["takes_effect"]) == ("security_settings_changed",
                                                                              "alice", "now")
        assert alert.fields["changes"] == ("single_trade_limit: none -> 10000 from now; "
                                           "daily_limit: none -> 30000.5 from now")
        assert set(alert.fields) == {"changes", "takes_effect", "request_id"}  # no account, IP or device
        # Another customer's settings are their own.
        bob = await _get(s, stack, sub="bob", accounts=("B9",))
        assert bob["settings"]["single_trade_limit"] is None
        # Audited write-ahead, with what changed.
        rid = headers["X-Request-Id"]
        for _ in range(100):
            records = [r for r in _audit(tmp_path / "audit") if r.get("request_id") == rid]
            if any(r.get("action") == "customer_settings_outcome" for r in records):
                break
            await asyncio.sleep(0.02)
        change = next(r for r in records if r.get("action") == "customer_settings_change")
        assert change["sub"] == "alice" and change["lowers_protection"] is False
        assert [c["field"] for c in change["changes"]] == ["single_trade_limit", "daily_limit"]


async def test_lowering_protection_needs_a_step_up_and_waits_for_the_cooling_off(tmp_path: Path) -> None:
    notifier, clock = MemoryNotifier(), Clock()
    async with settings_stack(tmp_path, notifier, clock) as stack, aiohttp.ClientSession() as s:
        assert (await _put(s, stack, {"single_trade_limit": 10000}))[0] == 200
        # Weaker without a recent step-up: the RFC 9470 challenge, nothing changes, no alert.
        status, body, headers = await _put(s, stack, {"single_trade_limit": 50000, "alerts": {"transfers": False}})
        assert (status, body["error"]) == (401, "insufficient_user_authentication")
        assert headers["WWW-Authenticate"].startswith('Bearer error="insufficient_user_authentication"')
        assert f'acr_values="{MFA}"' in headers["WWW-Authenticate"] and "max_age=300" in headers["WWW-Authenticate"]
        assert (body["acr_values"], body["max_age"]) == (MFA, 300)
        stale = int(time.time()) - 1000
        status, body, _ = await _put(s, stack, {"single_trade_limit": 50000}, acr=MFA, extra={"auth_time": stale})
        assert status == 401 and "s old" in body["message"]
        assert len(notifier.sent) == 1 and (await _get(s, stack))["pending"] == []

        # With it: scheduled, announced now, in force only after the cooling-off.
        status, body, _ = await _put(s, stack, {"single_trade_limit": 50000, "alerts": {"transfers": False}}, acr=MFA)
        assert status == 200, body
        assert body["settings"]["single_trade_limit"] == 10000 and body["settings"]["alerts"]["transfers"] is True
        assert [(p["field"], p["value"]) for p in body["pending"]] == [
            ("single_trade_limit", 50000), ("alerts.transfers", False)]
        due = body["pending"][0]["effective_at"]
        assert due == pytest.approx(clock() + COOL, abs=5)
        alert = notifier.sent[-1]
        assert "single_trade_limit: 10000 -> 50000 from 20" in alert.fields["changes"]
        assert "alerts.transfers: on -> off" in alert.fields["changes"] and alert.fields["takes_effect"] != "now"

        clock.offset = COOL - 60
        assert (await _get(s, stack))["settings"]["single_trade_limit"] == 10000
        clock.offset = COOL + 5
        after = await _get(s, stack)
        assert after["settings"]["single_trade_limit"] == 50000 and after["pending"] == []
        assert after["settings"]["alerts"]["transfers"] is False


async def test_the_policy_steps_up_above_the_customers_own_limit(tmp_path: Path) -> None:
    async with settings_stack(tmp_path, MemoryNotifier()) as stack, aiohttp.ClientSession() as s:
        assert (await _order(s, stack, LARGE, "o1"))[0] == 201  # the broker's 200,000 alone
        assert (await _put(s, stack, {"single_trade_limit": 10000}))[0] == 200
        status, (body, challenge) = await _order(s, stack, LARGE, "o2")
        assert (status, body["error"]) == (401, "insufficient_user_authentication")
        assert "single_trade_limit" in body["reasons"] and f'acr_values="{MFA}"' in challenge
        assert (await _order(s, stack, SMALL, "o3"))[0] == 201  # below the customer's limit

        # Raising it again waits: the old limit still holds during the cooling-off (the facts step
        # reads the pending raise at the request's time: test_settings_on_redis_reach_the_input...).
        assert (await _put(s, stack, {"single_trade_limit": 20000}, acr=MFA))[0] == 200
        assert (await _order(s, stack, LARGE, "o4"))[0] == 401

        # The daily limit counts today's notional, this order included.
        assert (await _put(s, stack, {"daily_limit": 1000}))[0] == 200
        status, (body, _) = await _order(s, stack, SMALL, "o6")
        assert status == 401 and "daily_limit" in body["reasons"]


async def test_bad_bodies_get_400_json_errors(tmp_path: Path) -> None:
    async with settings_stack(tmp_path, MemoryNotifier()) as stack, aiohttp.ClientSession() as s:
        status, body, _ = await _put(s, stack, {"single_trade_limit": "5"})
        assert (status, body["error"]) == (400, "settings_invalid")
        assert body["message"] == "single_trade_limit: must be a number of CNY or null (got a string)"
        assert body["request_id"]
        status, body, _ = await _put(s, stack, {"alerts": {"freezes": 1}})
        assert (status, body["error"]) == (400, "settings_invalid")
        headers = stack.auth() | {"Content-Type": "application/json"}
        async with s.put(stack.url + URL_PATH, data=b"{not json", headers=headers) as r:
            assert (r.status, (await r.json())["error"]) == (400, "invalid_json")
        async with s.put(stack.url + URL_PATH, data=b"a=1", headers=stack.auth() | {
                "Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert (r.status, (await r.json())["error"]) == (415, "unsupported_media_type")
        async with s.put(stack.url + URL_PATH, data=b"[" * 5000, headers=headers) as r:
            assert (r.status, (await r.json())["error"]) == (413, "body_too_large")
        async with s.post(stack.url + URL_PATH, json={}, headers=stack.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (405, "method_not_allowed")
            assert r.headers["Allow"] == "GET, PUT"


async def test_the_api_is_behind_the_same_authentication(tmp_path: Path) -> None:
    async with settings_stack(tmp_path, MemoryNotifier()) as stack, aiohttp.ClientSession() as s:
        async with s.get(stack.url + URL_PATH) as r:
            assert (r.status, (await r.json())["error"]) == (401, "token_missing")
        async with s.get(stack.url + URL_PATH, headers=stack.auth(roles=("admin",))) as r:
            assert (r.status, (await r.json())["error"]) == (403, "role_forbidden")
        device = DeviceKey.generate()
        bound = stack.token(extra={"cnf": {"jkt": device.thumbprint}})
        async with s.get(stack.url + URL_PATH, headers={"Authorization": f"DPoP {bound}"}) as r:
            assert (r.status, (await r.json())["error"]) == (401, "dpop_required")
        proofed = {"Authorization": f"DPoP {bound}",
                   "DPoP": device.proof("GET", stack.url + URL_PATH, bound)}
        async with s.get(stack.url + URL_PATH, headers=proofed) as r:
            assert r.status == 200, await r.text()


async def test_a_weakening_that_cannot_be_announced_is_not_scheduled(tmp_path: Path) -> None:
    class Unreachable(MemoryNotifier):
        async def notify(self, kind: str, recipient: str, message: str, fields: Any = None) -> None:
            raise OSError("messaging service down")

    async with settings_stack(tmp_path, Unreachable()) as stack, aiohttp.ClientSession() as s:
        status, body, _ = await _put(s, stack, {"daily_limit": 500})  # stronger: kept, told it was not announced
        assert (status, body["notified"]) == (200, False)
        status, body, _ = await _put(s, stack, {"daily_limit": 900}, acr=MFA)
        assert (status, body["error"]) == (503, "notify_unavailable")
        assert (await _get(s, stack))["pending"] == []


async def test_disabled_the_path_is_an_ordinary_unknown_route(tmp_path: Path) -> None:
    async with settings_stack(tmp_path, MemoryNotifier(), customer_settings={"enabled": False}) as stack, \
            aiohttp.ClientSession() as s:
        async with s.get(stack.url + URL_PATH, headers=stack.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (404, "route_not_found")


# -- settings on real Redis, read in the facts step's one batch ------------------------------


async def test_settings_on_redis_reach_the_input_in_the_one_batch(
        tmp_path: Path, redis_store: StateStore) -> None:
    from gateway.demo_keys import ensure_demo_keys
    from gateway.policy.providers import HttpFactProviders
    from tests.test_policy_input import ORDER as INPUT_ORDER

    now = time.time()
    record, _ = plan(SettingsRecord(), {"single_trade_limit": 1000.0}, now - 10, COOL)
    record, _ = plan(record, {"single_trade_limit": 150000.0}, now - 5, COOL)  # raised: pending
    await SettingsStore(redis_store).put("alice", record)
    keys = ensure_demo_keys(tmp_path / "keys")
    async with run_backend(keys, internal_token=TOKEN) as url:
        providers = HttpFactProviders(url, TOKEN)
        try:
            counting = CountingStore(redis_store)
            step = FetchFacts(providers, counting)
            order = input_ctx("order_place", body=INPUT_ORDER, rid="r-settings", now=now)
            await step(order)
            assert counting.round_trips == 1  # inside the counters' batch
            account = build_input(order)["account"]
            assert (account["single_trade_limit"], account["daily_limit"]) == (1000, 500000)
            transfer = input_ctx("transfer", body={"direction": "out", "amount": 10.0, "currency": "CNY",
                                                   "bank_account_id": "b1"}, rid="r-settings-t", now=now)
            await step(transfer)
            assert counting.round_trips == 2  # one round trip beside the providers, as before
            assert build_input(transfer)["account"]["single_trade_limit"] == 1000
            later = input_ctx("order_place", body={**INPUT_ORDER, "client_order_id": "c9"}, rid="r-later",
                              now=now + COOL)
            await step(later)  # the cooling-off has passed: the raised limit is in force
            assert build_input(later)["account"]["single_trade_limit"] == 150000
        finally:
            await providers.close()


async def test_a_settings_change_on_one_gateway_reaches_another_through_redis(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    state = {"backend": "redis", "url": redis_url, "prefix": redis_prefix, "timeout": 2.0}
    async with settings_stack(tmp_path, MemoryNotifier(), state=state) as gw1, \
            settings_stack(tmp_path, MemoryNotifier(), state=state, backend_url=gw1.backend_url,
                           audit={"path": str(tmp_path / "audit2")}) as gw2, aiohttp.ClientSession() as s:
        assert (await _put(s, gw1, {"single_trade_limit": 10000}))[0] == 200
        assert (await _get(s, gw2))["settings"]["single_trade_limit"] == 10000
        assert (await _order(s, gw2, LARGE, "r1"))[0] == 401
