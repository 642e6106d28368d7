"""Cancels carry the cancelled order's facts (issue 3, item 5), through the real gateway and backend.

The gateway's order provider asks the demo backend's ``/internal/accounts/{account}/orders/{id}``
for the order being cancelled: its symbol, side, status and account go into ``input.cancel`` and
its instrument into ``input.instrument``, so the A-share and Stock Connect packages judge the
cancel (sessions, no-cancel windows: policies/cancel_test.rego, at every boundary second). An
unknown order id, or another account's, is ``order_not_found`` and tells nothing about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from harness import routes_with_body_kinds, run_stack
from test_demo_backend import auth

from gateway.policy.decision import Decision
from gateway.policy.providers import HttpFactProviders
from gateway.policy.rego import RegoPolicy

POLICIES = Path(__file__).resolve().parent.parent / "policies"
ORDER = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit"}


class RecordingPolicy(RegoPolicy):
    """The real bundle, keeping each input it judged (as the gateway built it)."""

    inputs: list[dict[str, Any]]

    def evaluate_sync(self, policy_input: Mapping[str, Any]) -> Decision:
        self.inputs.append(dict(policy_input))
        return super().evaluate_sync(policy_input)


async def test_a_cancel_is_judged_with_the_orders_instrument(tmp_path: Path) -> None:
    policy = RecordingPolicy.from_directory(POLICIES)
    assert isinstance(policy, RecordingPolicy)
    policy.inputs = []
    async with run_stack(tmp_path, internal_token="cancel-facts", routes=routes_with_body_kinds(),
                         gateway_kwargs={"policy": policy}) as st, aiohttp.ClientSession() as s:
        # An open order of A1 and one of B9, placed at the backend itself (the gateway's clock is
        # the wall clock: outside trading hours the bundle would refuse to place them).
        async with s.post(st.backend_url + "/api/accounts/A1/orders", json=ORDER,
                          headers=auth(st.keys)) as r:
            assert r.status == 201, await r.text()
            mine = (await r.json())["order_id"]
        async with s.post(st.backend_url + "/api/accounts/B9/orders", json=ORDER,
                          headers=auth(st.keys, sub="bob", accounts=["B9"])) as r:
            assert r.status == 201, await r.text()
            theirs = (await r.json())["order_id"]

        async def cancel(order_id: str) -> tuple[int, Any]:
            async with s.delete(f"{st.url}/api/accounts/A1/orders/{order_id}", headers=st.auth()) as r:
                return r.status, await r.json()

        known = await cancel(mine)
        known_input = policy.inputs[-1]
        unknown = await cancel("ord-0000000000000000")
        unknown_input = policy.inputs[-1]
        other = await cancel(theirs)
        other_input = policy.inputs[-1]

    # The cancel's input names the order's instrument and the order itself.
    assert known_input["request"]["route"] == "order_cancel"
    assert known_input["cancel"] == {"order_id": mine, "symbol": "600519.SH", "side": "buy",
                                     "status": "accepted", "account": "A1"}
    assert known_input["instrument"]["symbol"] == "600519.SH"
    assert known_input["instrument"]["market"] == "cn_a"
    # Judged by the A-share package: allowed in a session outside the no-cancel windows, else refused.
    second, trading_day = known_input["clock"]["second_of_day"], known_input["clock"]["trading_day"]
    in_session = trading_day is True and (33300 <= second < 33600 or 34200 <= second < 41400
                                          or 46800 <= second < 53820)
    if in_session:
        assert known[0] == 200, known
    else:
        assert known[0] == 403, known
        assert {r["code"] for r in known[1]["reasons"]} <= {"market_closed", "cancel_window_closed"}, known

    # An unknown order id and another account's order: the same answer, nothing about the order.
    for status_body, doc in ((unknown, unknown_input), (other, other_input)):
        status, body = status_body
        assert status == 403, body
        assert [r["code"] for r in body["reasons"]] == ["order_not_found"], body
        assert doc["instrument"] is None
        assert {k: v for k, v in doc["cancel"].items() if k != "order_id"} == {
            "symbol": None, "side": None, "status": None, "account": None}


async def test_the_order_provider_caches_and_answers_none_for_unknown_orders(tmp_path: Path) -> None:
    async with run_stack(tmp_path, internal_token="cancel-facts", routes=routes_with_body_kinds()) as st, \
            aiohttp.ClientSession() as s:
        async with s.post(st.backend_url + "/api/accounts/A1/orders", json=ORDER,
                          headers=auth(st.keys)) as r:
            order_id = (await r.json())["order_id"]
        providers = HttpFactProviders(st.backend_url, "cancel-facts")
        try:
            found = await providers.order("A1", order_id)
            assert found == {"order_id": order_id, "account": "A1", "symbol": "600519.SH",
                             "side": "buy", "status": "accepted"}
            assert providers.cached("order", ("A1", order_id)) == found
            assert await providers.order("B9", order_id) is None  # not B9's
            assert await providers.order("A1", "ord-unknown") is None
            assert await providers.order("Z9", order_id) is None  # unknown account
        finally:
            await providers.close()
        # The internal route is guarded by the internal token.
        async with s.get(f"{st.backend_url}/internal/accounts/A1/orders/{order_id}") as r:
            assert r.status in (401, 403)
