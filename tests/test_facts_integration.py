"""Facts reach the policy input through the real gateway and the real demo backend."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from gateway.policy.engine import BaselinePolicy, Decision
from tests.harness import ROUTES, routes_with_body_kinds, run_stack

TOKEN = "integration-internal-token-42"


class RecordingPolicy:
    """An engine behind the PolicyEngine interface: the baseline decision, inputs recorded."""

    version = "recording-1"

    def __init__(self) -> None:
        self.inputs: list[Mapping[str, Any]] = []
        self._baseline = BaselinePolicy()

    async def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        self.inputs.append(policy_input)
        return await self._baseline.evaluate(policy_input)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ORDER = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit",
         "client_order_id": "it-1"}


async def test_facts_reach_the_policy_input(tmp_path: Path) -> None:
    policy = RecordingPolicy()
    async with run_stack(tmp_path, internal_token=TOKEN, routes=routes_with_body_kinds(),
                         gateway_kwargs={"policy": policy}) as stack, aiohttp.ClientSession() as s:
        headers = stack.auth() | {"X-Portcullis-Risk-Acknowledged": "true"}
        async with s.post(stack.url + "/api/accounts/A1/orders", json=ORDER, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
        doc = policy.inputs[-1]
        assert doc["request"]["route"] == "order_place" and doc["order"]["symbol"] == "600519.SH"
        assert doc["instrument"]["board_lot"] == 100 and doc["instrument"]["limit_up"] == 1595.0
        assert set(doc["quote"]) == {"bid", "ask", "last"}
        assert doc["account"]["investor_level"] == "C4" and "customer_id" not in doc["account"]
        assert doc["position"] == {"symbol": "600519.SH", "qty": 200, "today_bought": 0, "sellable": 200}
        assert doc["restricted"] == {"symbol": False, "person": False}
        assert isinstance(doc["clock"]["trading_day"], bool) and doc["clock"]["tz"] == "Asia/Shanghai"
        assert doc["counters"]["orders_today"] == 1 and doc["counters"]["notional_today"] == 145000.0
        assert doc["confirmation"] == {"risk_warning_acknowledged": True}

        restricted = {**ORDER, "symbol": "09988.HK", "client_order_id": "it-2"}
        async with s.post(stack.url + "/api/accounts/A1/orders", json=restricted,
                          headers=stack.auth()) as resp:
            await resp.read()
        assert policy.inputs[-1]["restricted"]["symbol"] is True
        assert policy.inputs[-1]["counters"]["orders_today"] == 2

        async with s.get(stack.url + "/api/accounts/A1", headers=stack.auth()) as resp:
            assert resp.status == 200
        read = policy.inputs[-1]
        assert read["account"]["id"] == "A1" and read["instrument"] is None and read["counters"] is None

        # The internal token is the gateway's to the providers alone: never on client traffic.
        async with s.get(stack.url + "/__debug/echo", headers=stack.auth()) as resp:
            sent = {name.lower(): value for name, value in (await resp.json())["headers"]}
        assert "x-portcullis-internal-token" not in sent and TOKEN not in str(sent)

        # The backend's internal routes are in no route table of the gateway.
        for path in ("/internal/restricted", "/internal/accounts/A1/facts"):
            async with s.get(stack.url + path, headers=stack.auth()) as resp:
                assert resp.status == 404 and (await resp.json())["error"] == "route_not_found"


async def test_provider_down_fails_trade_closed_and_reads_per_fail_mode(tmp_path: Path) -> None:
    policy = RecordingPolicy()
    routes = routes_with_body_kinds()
    closed_read = {**next(r for r in ROUTES if r["name"] == "orders_list"), "fail_mode": "closed"}
    routes = [closed_read if r["name"] == "orders_list" else r for r in routes]
    async with run_stack(
        tmp_path, routes=routes, gateway_kwargs={"policy": policy},
        upstreams={"facts": {"url": f"http://127.0.0.1:{_dead_port()}", "connect_timeout": 0.2}},
        providers={"upstream": "facts", "internal_token": TOKEN, "timeout": 0.3},
    ) as stack, aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/api/accounts/A1/orders", json=ORDER, headers=stack.auth()) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "provider_unavailable"
        async with s.delete(stack.url + "/api/accounts/A1/orders/ord-1", headers=stack.auth()) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "provider_unavailable"
        assert policy.inputs == []  # never judged without its facts
        async with s.get(stack.url + "/api/accounts/A1", headers=stack.auth()) as resp:
            assert resp.status == 200  # read, fail_mode open: degrades
        assert policy.inputs[-1]["account"] is None
        async with s.get(stack.url + "/api/accounts/A1/orders", headers=stack.auth()) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "provider_unavailable"
