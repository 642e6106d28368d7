"""The customer's chosen alerts (transfers, new devices) through a real gateway and the demo backend.

On the memory store and on real Redis. The memory notifier is the only fake; the customer's
settings are written through the real settings store. Each test waits for the alerts in flight
(`CustomerAlerts.drain`): they are sent off the request's path.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import DeviceKey
from gateway.customer_alerts import CustomerAlerts, mask_tail, new_device_fields, transfer_fields
from gateway.notify import MemoryNotifier, Notification
from gateway.settings import SecuritySettings, SettingsRecord, SettingsStore
from tests.harness import Stack, audit_records, routes_with_body_kinds, run_stack

BANK = "bank-a1-1"
TRANSFER = {"direction": "out", "amount": 100.0, "currency": "CNY", "bank_account_id": BANK}
QUOTE = "/api/quotes/600519.SH"
# What must never leave the gateway in a customer alert (the demo customer's name, IP, accounts).
PERSONAL = ("Alice", "Wang", "127.0.0.1", BANK, "6222020000000000011")


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {"backend": "memory"}
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return {"backend": "redis", "url": url, "prefix": prefix, "timeout": 2.0}


@asynccontextmanager
async def alert_stack(tmp: Path, notifier: MemoryNotifier, state: dict[str, Any]) -> AsyncIterator[Stack]:
    async with run_stack(tmp, routes=routes_with_body_kinds(), state=state,
                         gateway_kwargs={"notifier": notifier}) as stack:
        yield stack


async def _settings(stack: Stack, **alerts: bool) -> None:
    await SettingsStore(stack.gateway.state).put("alice", SettingsRecord(SecuritySettings(**alerts)))


async def _transfer(s: aiohttp.ClientSession, stack: Stack) -> str:
    async with s.post(stack.url + "/api/accounts/A1/transfers", json=TRANSFER, headers=stack.auth()) as r:
        assert 200 <= r.status < 300, await r.text()
        return r.headers["X-Request-Id"]


def _assert_no_personal_data(sent: list[Notification]) -> None:
    for n in sent:
        text = json.dumps({"recipient": n.recipient, "message": n.message, "fields": dict(n.fields)})
        for secret in PERSONAL:
            assert secret not in text, (secret, text)


def _audit(stack: Stack) -> list[dict[str, Any]]:
    return audit_records(stack.tmp / "audit")


async def test_a_transfer_alerts_the_customer_when_transfer_alerts_are_on(
        tmp_path: Path, state: dict[str, Any]) -> None:
    notifier = MemoryNotifier()
    async with alert_stack(tmp_path, notifier, state) as stack, aiohttp.ClientSession() as s:
        rid = await _transfer(s, stack)  # no settings stored: the default, on
        await stack.gateway.customer_alerts.drain()
        async with s.get(stack.admin_url + "/metrics") as r:
            metrics = await r.text()
    [alert] = [n for n in notifier.sent if n.kind == "transfer_made"]
    assert alert.recipient == "alice"
    assert dict(alert.fields) == {"amount": "100.00", "currency": "CNY", "direction": "out",
                                  "bank_account": "****a1-1", "time": alert.fields["time"], "request_id": rid}
    _assert_no_personal_data(notifier.sent)
    for outcome in ("queued", "sent"):
        assert f'portcullis_customer_alerts_total{{kind="transfer_made",outcome="{outcome}"}} 1.0' in metrics
    assert "portcullis_customer_alerts_pending 0.0" in metrics


async def test_a_transfer_does_not_alert_when_transfer_alerts_are_off(
        tmp_path: Path, state: dict[str, Any]) -> None:
    notifier = MemoryNotifier()
    async with alert_stack(tmp_path, notifier, state) as stack, aiohttp.ClientSession() as s:
        await _settings(stack, transfers=False)
        await _transfer(s, stack)
        await stack.gateway.customer_alerts.drain()
    assert [n for n in notifier.sent if n.kind == "transfer_made"] == []


async def test_a_refused_transfer_does_not_alert(tmp_path: Path) -> None:
    notifier = MemoryNotifier()
    async with alert_stack(tmp_path, notifier, {"backend": "memory"}) as stack, aiohttp.ClientSession() as s:
        body = {**TRANSFER, "bank_account_id": "not-mine"}
        async with s.post(stack.url + "/api/accounts/A1/transfers", json=body, headers=stack.auth()) as r:
            assert r.status >= 400
        await stack.gateway.customer_alerts.drain()
    assert [n for n in notifier.sent if n.kind == "transfer_made"] == []


async def test_a_device_seen_for_the_first_time_alerts_once(tmp_path: Path, state: dict[str, Any]) -> None:
    notifier = MemoryNotifier()
    device = DeviceKey.generate()
    async with alert_stack(tmp_path, notifier, state) as stack, aiohttp.ClientSession() as s:
        token = stack.token()
        rids = []
        for _ in range(2):
            headers = {"Authorization": f"Bearer {token}", "DPoP": device.proof("GET", stack.url + QUOTE, token)}
            async with s.get(stack.url + QUOTE, headers=headers) as r:
                assert r.status == 200
                rids.append(r.headers["X-Request-Id"])
            await stack.gateway.customer_alerts.drain()
        records = [r for r in _audit(stack) if r.get("type") == "customer_alert"]
    [alert] = [n for n in notifier.sent if n.kind == "new_device_seen"]
    assert alert.recipient == "alice" and alert.fields["request_id"] == rids[0]
    assert alert.fields["device"] == device.thumbprint[:8] and device.thumbprint not in json.dumps(dict(alert.fields))
    assert alert.fields["region"] == "unknown"  # loopback is in no region table
    _assert_no_personal_data(notifier.sent)
    assert {r["outcome"] for r in records if r["request_id"] == rids[0]} >= {"queued", "sent"}


async def test_a_new_device_does_not_alert_when_the_customer_switched_it_off(
        tmp_path: Path, state: dict[str, Any]) -> None:
    notifier = MemoryNotifier()
    device = DeviceKey.generate()
    async with alert_stack(tmp_path, notifier, state) as stack, aiohttp.ClientSession() as s:
        await _settings(stack, new_device_login=False)
        token = stack.token()
        headers = {"Authorization": f"Bearer {token}", "DPoP": device.proof("GET", stack.url + QUOTE, token)}
        async with s.get(stack.url + QUOTE, headers=headers) as r:
            assert r.status == 200
        await stack.gateway.customer_alerts.drain()
    assert [n for n in notifier.sent if n.kind == "new_device_seen"] == []


# -- pure parts and the bound -------------------------------------------------------------


def test_mask_tail_never_shows_a_short_value_whole() -> None:
    assert mask_tail("6222020000000000011") == "****0011"
    assert mask_tail("b1") == "****1" and mask_tail("x") == "****" and mask_tail(None) == ""


def test_alert_fields_carry_only_what_the_alert_needs() -> None:
    body = {**TRANSFER, "name": "Alice Wang", "account": "A1", "memo": "rent"}
    assert set(transfer_fields(body, 0.0, "r1")) == {"amount", "currency", "direction", "bank_account",
                                                     "time", "request_id"}
    assert new_device_fields("abcdefghijklmnop", None, 0.0, "r1") == {
        "device": "abcdefgh", "region": "unknown", "time": "1970-01-01T00:00:00Z", "request_id": "r1"}


class _SlowNotifier(MemoryNotifier):
    async def notify(self, kind: str, recipient: str, message: str, fields: Any = None) -> None:
        import asyncio

        await asyncio.sleep(0.05)
        await super().notify(kind, recipient, message, fields)


async def test_a_full_queue_drops_and_counts() -> None:
    from gateway.state.memory import MemoryStore

    audited: list[dict[str, Any]] = []
    notifier = _SlowNotifier()
    observed: list[tuple[str, str]] = []
    alerts = CustomerAlerts(notifier, SettingsStore(MemoryStore()), audited.append, max_pending=2,
                            observe=lambda kind, outcome: observed.append((kind, outcome)))
    for i in range(3):
        alerts.transfer_made("alice", SecuritySettings(), TRANSFER, 0.0, f"r{i}")
    assert alerts.dropped == 1 and alerts.pending == 2
    await alerts.drain()
    assert alerts.sent == 2 and len(notifier.sent) == 2
    assert [r["outcome"] for r in audited if r["request_id"] == "r2"] == ["dropped"]
    assert sorted(observed) == sorted([("transfer_made", "queued")] * 2 + [("transfer_made", "dropped")]
                                      + [("transfer_made", "sent")] * 2)
