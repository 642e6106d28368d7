"""A policy freeze taking hold across real gateway processes (issue 4, item 7).

Two ``python -m gateway serve`` processes, each with its own configuration
file (examples/portcullis.toml re-pointed: the broker bundle ``policies/``
with its real thresholds, the fact providers, the risk engine), one demo
backend process behind both, one Redis shared under this test's key prefix
(loadtests/gateway_cluster.py starts them). The test's own process only sends
HTTP requests and reads Redis and the audit segment files.

The cancel burst is the broker bundle's own rule (policies/programme.rego,
data/programme.json unchanged: >= 20 actions in the last second, >= 50
cancels today, cancels >= 90% of today's orders). The facts step counts an
order or a cancel before the policy judges it, so orders the policy refuses
(outside trading hours: ``market_closed``) and cancels of orders the backend
does not hold count as they would for a runaway bot; the test therefore runs
the same way at any time of day. Timings are measured by
loadtests/freeze_propagation.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtests"))

from gateway_cluster import Cluster, GatewayProcess, gateway_cluster  # noqa: E402

ORDERS = 30
MIN_CANCELS = 50  # data/programme.json cancel_burst_min_cancels
ORDER = {"symbol": "000001.SZ", "side": "buy", "qty": 100, "price": 11.0, "type": "limit"}
TRANSFER = {"direction": "out", "amount": 100.0, "currency": "CNY", "bank_account_id": "b1"}

Answer = tuple[int, dict[str, Any], str]


async def _call(s: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
                body: Any = None) -> Answer:
    async with s.request(method, url, json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None), r.headers.get("X-Request-Id", "")


async def _order(s: aiohttp.ClientSession, gw: GatewayProcess, account: str, headers: dict[str, str],
                 coid: str) -> Answer:
    return await _call(s, "POST", f"{gw.url}/api/accounts/{account}/orders", headers,
                       {**ORDER, "client_order_id": coid})


async def _cancel(s: aiohttp.ClientSession, gw: GatewayProcess, headers: dict[str, str], order_id: str) -> Answer:
    return await _call(s, "DELETE", f"{gw.url}/api/accounts/A1/orders/{order_id}", headers)


async def _records(gw: GatewayProcess, want: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The process's audit records matching `want` once there is one (queued records land within
    the sync interval)."""
    for _ in range(150):
        found = [r for r in gw.audit() if want(r)]
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no matching audit record in {gw.name}")


def _of(request_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("request_id") == request_id


async def _judged_by_policy(gw: GatewayProcess, answer: Answer) -> None:
    """Not refused as frozen: the request reached the policy (its audit record names the bundle).
    What the policy then says depends on the hour (allowed in a session, market_closed outside)."""
    status, body, rid = answer
    assert body.get("error") != "account_frozen", answer
    records = await _records(gw, lambda r: r.get("request_id") == rid and r.get("type") in ("decision", "denial"))
    assert records[0]["policy_version"], records


async def _burst_until_frozen(s: aiohttp.ClientSession, a: GatewayProcess, alice: dict[str, str]) -> Answer:
    placed = await asyncio.gather(*(_order(s, a, "A1", alice, f"burst-{i}") for i in range(ORDERS)))
    held = [body["order_id"] for status, body, _ in placed if status == 200 and "order_id" in body]
    ids = held + [f"ord-burst{i:04d}" for i in range(MIN_CANCELS + 20 - len(held))]
    # Below the cancel count nothing freezes, however fast.
    first = await asyncio.gather(*(_cancel(s, a, alice, ids[i]) for i in range(MIN_CANCELS - 1)))
    assert all(body.get("error") != "account_frozen" for _, body, _ in first), first
    for order_id in ids[MIN_CANCELS - 1:]:
        answer = await _cancel(s, a, alice, order_id)
        if answer[1].get("error") == "account_frozen":
            return answer
    raise AssertionError("the cancel burst never froze A1")


async def test_a_cancel_burst_on_one_gateway_freezes_the_account_on_the_other_until_compliance_lifts_it(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with gateway_cluster(tmp_path, redis_url, redis_prefix) as cluster, aiohttp.ClientSession() as s:
        a, b = cluster.gateways
        alice, bob = cluster.auth("alice", "A1"), cluster.auth("bob", "B9")

        # Process A: the policy freezes A1 on the cancel that tips the burst, and refuses it.
        status, body, tipping = await _burst_until_frozen(s, a, alice)
        assert (status, body["error"]) == (403, "account_frozen")
        stored = await _frozen_in_redis(cluster, redis_url, tipping)
        # The freeze's record was durable before the 403 (awaited); the alert's is queued.
        await _records(a, lambda r: r.get("request_id") == tipping and r.get("obligation") == "alert")
        applied = [r for r in a.audit() if r.get("request_id") == tipping and r.get("type") == "obligation"]
        assert sorted((r["obligation"], r["outcome"], r["account"]) for r in applied) == [
            ("alert", "applied", "A1"), ("freeze_account", "applied", "A1")]
        freeze = next(r for r in applied if r["obligation"] == "freeze_account")
        assert freeze["reasons"] == stored["reasons"] and freeze["notified"] is True

        # Process B refuses A1's very next order and transfer, before any policy ...
        for answer in (await _order(s, b, "A1", alice, "after-freeze"),
                       await _call(s, "POST", f"{b.url}/api/accounts/A1/transfers", alice, TRANSFER)):
            assert (answer[0], answer[1]["error"]) == (403, "account_frozen"), answer
            denial = await _records(b, _of(answer[2]))
            assert [(r["type"], r["code"], r["account"]) for r in denial] == [("denial", "account_frozen", "A1")]
        # ... while another account still trades there, judged by the policy as usual.
        await _judged_by_policy(b, await _order(s, b, "B9", bob, "bob-1"))

        # Compliance sees the freeze on B's admin API and lifts it there (fresh step-up).
        async with s.get(f"{b.admin_url}/admin/freezes", headers=cluster.officer()) as r:
            listed = (await r.json())["freezes"]
        assert [(f["account"], f["request_id"], f["by"]) for f in listed] == [("A1", tipping, "policy")]
        status, lifted, _ = await _call(s, "POST", f"{b.admin_url}/admin/freezes/A1/lift", cluster.officer(),
                                        {"reason": "reviewed: a client's runaway cancel script, stopped"})
        assert status == 200, lifted
        assert (lifted["lifted"]["request_id"], lifted["lifted_by"]) == (tipping, "carol")
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            assert await client.get(f"{redis_prefix}freeze:A1") is None
            assert await client.smembers(f"{redis_prefix}freezes") == set()
        finally:
            await client.aclose()
        lifts = await _records(b, lambda r: r.get("action") == "freeze_lift" and r.get("outcome") == "ok")
        ahead = [r for r in b.audit() if r.get("action") == "freeze_lift" and "freeze" in r]
        assert [(r["sub"], r["account"], r["freeze"]["request_id"]) for r in ahead] == [("carol", "A1", tipping)]
        assert lifts[0]["sub"] == "carol" and ahead[0]["reason"].startswith("reviewed")

        # Process A takes A1's orders to the policy again.
        await _judged_by_policy(a, await _order(s, a, "A1", alice, "after-lift"))


async def _frozen_in_redis(cluster: Cluster, redis_url: str, tipping: str) -> dict[str, Any]:
    """The freeze record in the shared store (and the index), made by the policy on the tipping cancel."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        raw = await client.get(f"{cluster.prefix}freeze:A1")
        index = await client.smembers(f"{cluster.prefix}freezes")
    finally:
        await client.aclose()
    assert raw is not None and index == {b"A1"}
    record = json.loads(raw)
    assert (record["by"], record["request_id"], record["sub"], record["route"]) == (
        "policy", tipping, "alice", "order_cancel")
    assert record["policy_version"] and record["reasons"]  # the deny codes, else policy_obligation
    return dict(record)
