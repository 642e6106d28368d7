"""Publish/subscribe on the state store: one behaviour suite for memory and Redis.

Every test runs on MemoryStore and on RedisStore (the real test Redis under the
test's own prefix), so the two stay interchangeable for the policy fan-out.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from gateway.state import Keyspace, MemoryStore, StateStore, StateUnavailable
from gateway.state.base import Subscription
from gateway.state.redis import RedisStore

WAIT = 2.0  # seconds a delivered message may take at most (Redis on loopback: well under 1 ms)


@dataclass
class Pair:
    """Two stores on the same data (two replicas) and a maker for stores under another prefix."""

    kind: str
    one: StateStore
    two: StateStore
    other_prefix: Callable[[str], StateStore]
    made: list[StateStore] = field(default_factory=list)


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    if request.param == "memory":
        keyspace = Keyspace()
        yield Pair("memory", MemoryStore("t:", keyspace=keyspace), MemoryStore("t:", keyspace=keyspace),
                   lambda extra: MemoryStore("t:" + extra, keyspace=keyspace))
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    made: list[StateStore] = []

    def other(extra: str) -> StateStore:
        made.append(RedisStore(url, prefix + extra, timeout=2.0))
        return made[-1]

    p = Pair("redis", RedisStore(url, prefix, timeout=2.0), RedisStore(url, prefix, timeout=2.0), other, made)
    try:
        yield p
    finally:
        for s in [p.one, p.two, *made]:
            await s.close()


async def test_a_published_message_reaches_a_subscriber_of_another_replica(pair: Pair) -> None:
    async with await pair.two.subscribe("policy") as sub:
        receivers = await pair.one.publish("policy", b"v2")
        assert await sub.get(timeout=WAIT) == b"v2"
    assert receivers == 1


async def test_publish_counts_every_subscriber(pair: Pair) -> None:
    subs = [await pair.one.subscribe("c"), await pair.two.subscribe("c")]
    try:
        assert await pair.one.publish("c", b"x") == 2
        assert [await s.get(timeout=WAIT) for s in subs] == [b"x", b"x"]
    finally:
        for s in subs:
            await s.close()


async def test_publish_without_subscribers_reaches_nobody(pair: Pair) -> None:
    assert await pair.one.publish("empty", b"x") == 0


async def test_messages_arrive_in_publish_order(pair: Pair) -> None:
    async with await pair.two.subscribe("order") as sub:
        for i in range(20):
            await pair.one.publish("order", str(i).encode())
        got = [await sub.get(timeout=WAIT) for _ in range(20)]
    assert got == [str(i).encode() for i in range(20)]


async def test_bytes_are_delivered_unchanged(pair: Pair) -> None:
    payload = bytes(range(256))
    async with await pair.two.subscribe("bin") as sub:
        await pair.one.publish("bin", payload)
        assert await sub.get(timeout=WAIT) == payload


async def test_channels_are_separate(pair: Pair) -> None:
    async with await pair.two.subscribe("a") as sub:
        await pair.one.publish("b", b"for b")
        assert await sub.get(timeout=0.1) is None


async def test_a_store_under_another_prefix_does_not_hear_the_channel(pair: Pair) -> None:
    stranger = pair.other_prefix("other:")
    async with await stranger.subscribe("policy") as sub:
        assert await pair.one.publish("policy", b"v2") == 0
        assert await sub.get(timeout=0.1) is None


async def test_get_times_out_with_none(pair: Pair) -> None:
    async with await pair.one.subscribe("quiet") as sub:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await sub.get(timeout=0.2) is None
        assert 0.15 <= loop.time() - started < 1.5


async def test_a_closed_subscription_receives_nothing_more(pair: Pair) -> None:
    sub = await pair.two.subscribe("c")
    await sub.close()
    assert sub.closed
    assert await pair.one.publish("c", b"late") == 0
    assert await sub.get(timeout=0.1) is None
    await sub.close()  # idempotent


async def test_close_wakes_a_waiting_get(pair: Pair) -> None:
    sub = await pair.one.subscribe("c")
    waiting = asyncio.create_task(sub.get(timeout=None))
    await asyncio.sleep(0.05)
    await sub.close()
    assert await asyncio.wait_for(waiting, WAIT + 1) is None


async def test_iteration_yields_messages_until_closed(pair: Pair) -> None:
    sub = await pair.two.subscribe("it")
    got: list[bytes] = []

    async def consume(s: Subscription) -> None:
        async for message in s:
            got.append(message)
            if len(got) == 3:
                await s.close()

    task = asyncio.create_task(consume(sub))
    for m in (b"1", b"2", b"3"):
        await pair.one.publish("it", m)
    await asyncio.wait_for(task, WAIT)
    assert got == [b"1", b"2", b"3"]


async def test_closing_the_store_closes_its_subscriptions(pair: Pair) -> None:
    sub = await pair.two.subscribe("c")
    await pair.two.close()
    assert sub.closed or pair.kind == "memory"  # a memory store has nothing to release
    if pair.kind == "memory":
        await sub.close()


# --------------------------------------------------------------------------
# Backend specifics


async def test_memory_slow_subscriber_drops_the_oldest_messages() -> None:
    store = MemoryStore("t:")
    sub = await store.subscribe("c")
    from gateway.state.base import SUBSCRIPTION_BUFFER

    for i in range(SUBSCRIPTION_BUFFER + 5):
        await store.publish("c", str(i).encode())
    assert await sub.get(timeout=0.1) == b"5"
    await sub.close()


async def test_redis_subscribe_to_an_unreachable_server_raises_state_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", "x:", timeout=0.3)
    with pytest.raises(StateUnavailable):
        await store.subscribe("c")
    with pytest.raises(StateUnavailable):
        await store.publish("c", b"x")
    await store.close()


async def test_redis_subscription_lost_raises_state_unavailable(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    store = RedisStore(redis_url, redis_prefix, timeout=2.0)
    sub = await store.subscribe("c")
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        # Only this test's subscriber: its connection is named after its prefixed channel.
        clients = await admin.client_list(_type="pubsub")
        mine = [c for c in clients if c.get("name") == f"portcullis-sub:{redis_prefix}c"]
        assert len(mine) == 1
        await admin.client_kill_filter(_id=mine[0]["id"])
        with pytest.raises(StateUnavailable):
            await sub.get(timeout=3.0)
    finally:
        await admin.aclose()
        await store.close()
