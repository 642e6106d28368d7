"""The state round: one round trip for what the steps before it queued, then their checks."""

from __future__ import annotations

import socket
import time

import pytest
from harness import BatchCountingStore as CountingStore
from harness import route_config
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext
from gateway.errors import TOKEN_INVALID, GatewayError
from gateway.state.base import StateStore
from gateway.state.memory import MemoryStore
from gateway.state.redis import RedisStore
from gateway.steps.state_round import StateRound, after_round, state_batch


def _ctx(tier: str) -> RequestContext:
    route = route_config(name="r", path="/p", tier=tier)
    return RequestContext(
        request_id="rid", method="GET", path="/p", query="", route=route, params={},
        headers=CIMultiDictProxy(CIMultiDict()), client_ip="198.51.100.7", client_port=1,
        scheme="https", started=0.0, now=time.time())


async def _replay_round(store: StateStore, ctx: RequestContext, jti: str) -> list[str]:
    """Two steps queue on the request's batch; their checks run in order after one round."""
    seen: list[str] = []
    fresh = state_batch(ctx, store).set_if_absent(f"jti:{jti}", b"1", 60)
    hits = state_batch(ctx, store).incr("rate:alice", 1, 60)

    def no_replay(c: RequestContext) -> None:
        seen.append("replay")
        if fresh.done and not fresh.value:
            raise GatewayError(TOKEN_INVALID, "replayed")

    def count(c: RequestContext) -> None:
        seen.append(f"rate={hits.value if hits.done else None}")

    after_round(ctx, no_replay)
    after_round(ctx, count)
    pending = StateRound()(ctx)
    # Memory runs the batch at once (no coroutine); Redis returns the round trip to wait for.
    assert (pending is None) == isinstance(store.inner, MemoryStore)  # type: ignore[attr-defined]
    if pending is not None:
        await pending
    return seen


async def test_one_round_trip_then_the_checks_in_order(any_store: StateStore) -> None:
    store = CountingStore(any_store)
    assert await _replay_round(store, _ctx("read"), "j1") == ["replay", "rate=1"]
    assert store.batches == 1
    with pytest.raises(GatewayError) as err:
        await _replay_round(store, _ctx("read"), "j1")  # the same jti again: refused by its check
    assert err.value.code == "token_invalid"
    assert store.batches == 2


def test_nothing_queued_costs_no_coroutine_but_checks_still_run() -> None:
    ctx = _ctx("read")
    ran: list[bool] = []
    after_round(ctx, lambda c: ran.append(True))
    assert StateRound()(ctx) is None
    assert ran == [True] and ctx.round_checks is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("tier", "fails_closed"), [("read", False), ("trade", True), ("transfer", True)])
async def test_an_unreachable_store_fails_money_closed_and_reads_open(tier: str, fails_closed: bool) -> None:
    down = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0", "pc-test-down:", timeout=0.2)
    try:
        ctx = _ctx(tier)
        pending_jti = state_batch(ctx, down).set_if_absent("jti:x", b"1", 60)
        saw: list[bool] = []
        after_round(ctx, lambda c: saw.append(pending_jti.done))
        step = StateRound()(ctx)
        assert step is not None
        if fails_closed:
            with pytest.raises(GatewayError) as err:
                await step
            assert (err.value.code, err.value.status) == ("state_unavailable", 503)
            assert saw == []  # refused before any check could grant anything
        else:
            await step
            assert ctx.degraded == ["state_unavailable"] and saw == [False]  # checks see no result
    finally:
        await down.close()
