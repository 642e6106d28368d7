"""One behaviour suite for every StateStore backend.

Each behaviour test runs on MemoryStore (with a fake clock) and on RedisStore
(against the real test Redis, short real TTLs), so the two stay
interchangeable. Backend-specific tests follow: Redis round trips counted on
the wire, failure translation, the memory store's sweep. The last section
checks the shared service fixtures of conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from conftest import PrivateRedis
from redis.asyncio.connection import Connection

from gateway.config import StateConfig
from gateway.errors import STATE_UNAVAILABLE, GatewayError
from gateway.state import (
    Keyspace,
    MemoryStore,
    StateStore,
    StateTypeError,
    StateUnavailable,
    build_store,
)
from gateway.state.redis import RedisStore

LONG = 60.0  # a TTL no test outlives


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """A store under test plus what backend-neutral tests need to drive it."""

    kind: str
    store: StateStore
    #: Another store on the same data with ``prefix`` appended to the test's own.
    make: Callable[[str], StateStore]
    #: A TTL short enough to wait out: fake seconds (memory) or real ones (Redis).
    short: float
    #: Let more than ``short`` seconds pass.
    pass_short: Callable[[], Awaitable[None]]
    extra: list[StateStore] = field(default_factory=list)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        keyspace = Keyspace(clock)

        async def pass_fake() -> None:
            clock.now += 2.0

        yield Backend(
            "memory",
            MemoryStore("t:", keyspace=keyspace),
            lambda prefix: MemoryStore("t:" + prefix, keyspace=keyspace),
            short=1.0,
            pass_short=pass_fake,
        )
        return

    url: str = request.getfixturevalue("redis_url")
    base: str = request.getfixturevalue("redis_prefix")
    made: list[RedisStore] = []

    def make(prefix: str) -> StateStore:
        made.append(RedisStore(url, base + prefix, timeout=2.0))
        return made[-1]

    async def pass_real() -> None:
        await asyncio.sleep(0.12)

    store = RedisStore(url, base, timeout=2.0)
    try:
        yield Backend("redis", store, make, short=0.05, pass_short=pass_real)
    finally:
        for s in [store, *made]:
            await s.close()  # redis_prefix deletes the keys


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.store


# --------------------------------------------------------------------------
# Strings: get, mget, set, set_if_absent, getdel, delete


async def test_get_of_missing_key_is_none(store: StateStore) -> None:
    assert await store.get("nothing") is None


async def test_set_then_get_returns_the_bytes(store: StateStore) -> None:
    await store.set("k", b"\x00value\xff")
    assert await store.get("k") == b"\x00value\xff"


async def test_set_with_ttl_expires(backend: Backend) -> None:
    store = backend.store
    await store.set("short", b"1", ttl=backend.short)
    await store.set("long", b"2", ttl=LONG)
    await store.set("forever", b"3")
    await backend.pass_short()
    assert await store.get("short") is None
    assert await store.get("long") == b"2"
    assert await store.get("forever") == b"3"


async def test_set_without_ttl_clears_an_existing_ttl(backend: Backend) -> None:
    await backend.store.set("k", b"1", ttl=backend.short)
    await backend.store.set("k", b"2")
    await backend.pass_short()
    assert await backend.store.get("k") == b"2"


async def test_mget_returns_values_in_order_and_none_for_missing(store: StateStore) -> None:
    await store.set("a", b"1")
    await store.set("c", b"3")
    await store.sadd("s", "member")
    assert await store.mget(["a", "b", "c", "s", "a"]) == [b"1", None, b"3", None, b"1"]


async def test_mget_of_no_keys_is_empty(store: StateStore) -> None:
    assert await store.mget([]) == []


async def test_set_if_absent_stores_only_the_first_value(store: StateStore) -> None:
    assert await store.set_if_absent("nonce", b"first", ttl=LONG) is True
    assert await store.set_if_absent("nonce", b"second", ttl=LONG) is False
    assert await store.get("nonce") == b"first"


async def test_set_if_absent_succeeds_again_after_expiry(backend: Backend) -> None:
    assert await backend.store.set_if_absent("nonce", b"1", ttl=backend.short) is True
    await backend.pass_short()
    assert await backend.store.set_if_absent("nonce", b"2", ttl=None) is True
    assert await backend.store.get("nonce") == b"2"


async def test_set_if_absent_has_exactly_one_winner_under_concurrency(
    store: StateStore,
) -> None:
    results = await asyncio.gather(
        *(store.set_if_absent("jti", str(i).encode(), ttl=LONG) for i in range(20))
    )
    assert results.count(True) == 1
    winner = results.index(True)
    assert await store.get("jti") == str(winner).encode()


async def test_get_or_set_answers_the_first_writers_value(store: StateStore) -> None:
    assert await store.get_or_set("first-seen", b"100.5", ttl=LONG) == b"100.5"
    assert await store.get_or_set("first-seen", b"200.0", ttl=LONG) == b"100.5"  # unchanged
    assert await store.get("first-seen") == b"100.5"
    async with store.batch() as b:
        again = b.get_or_set("first-seen", b"300", ttl=LONG)
        fresh = b.get_or_set("other", b"7", ttl=None)
    assert (again.value, fresh.value) == (b"100.5", b"7")
    results = await asyncio.gather(*(store.get_or_set("race", str(i).encode(), ttl=LONG) for i in range(20)))
    assert len(set(results)) == 1  # one winner, and everyone sees it
    await store.sadd("a-set", "m")
    with pytest.raises(StateTypeError):
        await store.get_or_set("a-set", b"x", ttl=LONG)


async def test_get_or_set_stores_again_after_expiry(backend: Backend) -> None:
    assert await backend.store.get_or_set("k", b"1", ttl=backend.short) == b"1"
    await backend.pass_short()
    assert await backend.store.get_or_set("k", b"2", ttl=LONG) == b"2"


async def test_getdel_returns_the_value_and_removes_the_key(store: StateStore) -> None:
    await store.set("otp", b"123456")
    assert await store.getdel("otp") == b"123456"
    assert await store.get("otp") is None
    assert await store.getdel("otp") is None


async def test_getdel_hands_a_token_to_exactly_one_consumer(store: StateStore) -> None:
    await store.set("challenge", b"c1", ttl=LONG)
    results = await asyncio.gather(*(store.getdel("challenge") for _ in range(20)))
    assert results.count(b"c1") == 1
    assert results.count(None) == 19


async def test_delete_counts_existing_keys_of_every_kind(store: StateStore) -> None:
    await store.set("string", b"1")
    await store.incr("counter")
    await store.sadd("set", "m")
    await store.zadd_window("window", "e1", 10.0, 5.0)
    assert await store.delete("string", "counter", "set", "window", "missing") == 4
    assert await store.mget(["string", "counter"]) == [None, None]
    assert await store.scard("set") == 0


async def test_delete_of_no_keys_is_zero(store: StateStore) -> None:
    assert await store.delete() == 0


async def test_delete_does_not_count_expired_keys(backend: Backend) -> None:
    await backend.store.set("k", b"1", ttl=backend.short)
    await backend.pass_short()
    assert await backend.store.delete("k") == 0


# --------------------------------------------------------------------------
# Counters


async def test_incr_creates_a_counter_readable_as_decimal_bytes(store: StateStore) -> None:
    assert await store.incr("n") == 1
    assert await store.incr("n", 41) == 42
    assert await store.incr("n", -50) == -8
    assert await store.get("n") == b"-8"


async def test_incr_continues_from_a_set_decimal_value(store: StateStore) -> None:
    await store.set("n", b"10")
    assert await store.incr("n", 5) == 15


async def test_incr_ttl_applies_only_when_the_counter_is_created(backend: Backend) -> None:
    store = backend.store
    await store.incr("created-short", ttl=backend.short)
    await store.incr("created-short", ttl=LONG)  # must not extend the first TTL
    await store.incr("created-plain")
    await store.incr("created-plain", ttl=backend.short)  # must not add a TTL
    await backend.pass_short()
    assert await store.get("created-short") is None
    assert await store.get("created-plain") == b"2"


async def test_incr_counts_every_concurrent_increment(store: StateStore) -> None:
    results = await asyncio.gather(*(store.incr("hits", ttl=LONG) for _ in range(20)))
    assert sorted(results) == list(range(1, 21))


async def test_incr_of_a_non_integer_raises_state_type_error(store: StateStore) -> None:
    await store.set("text", b"abc")
    with pytest.raises(StateTypeError):
        await store.incr("text")
    assert await store.get("text") == b"abc"


async def test_incr_past_64_bits_raises_state_type_error(store: StateStore) -> None:
    await store.set("big", str(2**63 - 1).encode())
    with pytest.raises(StateTypeError):
        await store.incr("big")


# --------------------------------------------------------------------------
# Sets


async def test_sadd_returns_how_many_members_were_new(store: StateStore) -> None:
    assert await store.sadd("devices", "d1") == 1
    assert await store.sadd("devices", "d2") == 1
    assert await store.sadd("devices", "d1") == 0
    assert await store.scard("devices") == 2


async def test_sismember_tells_members_from_others(store: StateStore) -> None:
    await store.sadd("ips", "10.0.0.1")
    assert await store.sismember("ips", "10.0.0.1") is True
    assert await store.sismember("ips", "10.0.0.2") is False


async def test_scard_and_sismember_of_missing_set(store: StateStore) -> None:
    assert await store.scard("none") == 0
    assert await store.sismember("none", "x") is False


async def test_smembers_lists_members_sorted(store: StateStore) -> None:
    assert await store.smembers("frozen") == []
    for member in ("B9", "A1", "C3"):
        await store.sadd("frozen", member)
    assert await store.smembers("frozen") == ["A1", "B9", "C3"]


async def test_srem_removes_one_member_and_an_emptied_set(store: StateStore) -> None:
    await store.sadd("frozen", "A1")
    await store.sadd("frozen", "B9")
    assert await store.srem("frozen", "A1") == 1
    assert await store.srem("frozen", "A1") == 0
    assert await store.srem("none", "A1") == 0
    assert await store.smembers("frozen") == ["B9"]
    assert await store.srem("frozen", "B9") == 1
    assert await store.delete("frozen") == 0  # gone, as in Redis


async def test_smembers_and_srem_in_a_batch(store: StateStore) -> None:
    await store.sadd("frozen", "A1")
    async with store.batch() as b:
        removed = b.srem("frozen", "A1")
        left = b.smembers("frozen")
    assert (removed.value, left.value) == (1, [])


async def test_sadd_ttl_expires_the_set(backend: Backend) -> None:
    await backend.store.sadd("s", "a", ttl=backend.short)
    await backend.pass_short()
    assert await backend.store.scard("s") == 0


async def test_sadd_refreshes_the_ttl_even_for_a_known_member(backend: Backend) -> None:
    await backend.store.sadd("s", "a", ttl=backend.short)
    assert await backend.store.sadd("s", "a", ttl=LONG) == 0
    await backend.pass_short()
    assert await backend.store.sismember("s", "a") is True


async def test_sadd_without_ttl_keeps_the_existing_ttl(backend: Backend) -> None:
    await backend.store.sadd("s", "a", ttl=backend.short)
    await backend.store.sadd("s", "b")
    await backend.pass_short()
    assert await backend.store.scard("s") == 0


# --------------------------------------------------------------------------
# Sliding windows


async def test_zadd_window_counts_events_inside_the_window(store: StateStore) -> None:
    assert await store.zadd_window("rate", "e1", 100.0, 1.0) == 1
    assert await store.zadd_window("rate", "e2", 100.5, 1.0) == 2
    # The window is [score - window, score]: e1 at exactly 100.0 still counts.
    assert await store.zadd_window("rate", "e3", 101.0, 1.0) == 3
    assert await store.zadd_window("rate", "e4", 101.2, 1.0) == 3
    assert await store.zadd_window("rate", "e5", 105.0, 1.0) == 1


async def test_zadd_window_counts_a_repeated_member_once(store: StateStore) -> None:
    await store.zadd_window("rate", "req-1", 10.0, 5.0)
    assert await store.zadd_window("rate", "req-1", 11.0, 5.0) == 1


async def test_zadd_window_expires_after_a_window_of_quiet(backend: Backend) -> None:
    await backend.store.zadd_window("rate", "e1", 10.0, backend.short)
    await backend.pass_short()
    assert await backend.store.delete("rate") == 0


async def test_zadd_window_gives_each_concurrent_event_its_own_count(
    store: StateStore,
) -> None:
    counts = await asyncio.gather(
        *(store.zadd_window("rate", f"e{i}", 50.0, 10.0) for i in range(20))
    )
    assert sorted(counts) == list(range(1, 21))


# --------------------------------------------------------------------------
# Misuse


# --------------------------------------------------------------------------
# Hashes and capped lists: counters aggregated across replicas, bounded samples


async def test_hincrby_adds_to_fields_and_hgetall_reads_them_as_decimal_bytes(store: StateStore) -> None:
    assert await store.hincrby("h", "a") == 1
    assert await store.hincrby("h", "a", 4) == 5
    assert await store.hincrby("h", "b", -2, ttl=LONG) == -2
    assert await store.hgetall("h") == {"a": b"5", "b": b"-2"}
    assert await store.hgetall("missing") == {}


async def test_hincrby_ttl_expires_the_hash(backend: Backend) -> None:
    store = backend.store
    await store.hincrby("h", "a", 1, ttl=backend.short)
    await backend.pass_short()
    assert await store.hgetall("h") == {}


async def test_hincrby_counts_every_concurrent_increment(store: StateStore) -> None:
    await asyncio.gather(*(store.hincrby("h", "n", 2, ttl=LONG) for _ in range(50)))
    assert await store.hgetall("h") == {"n": b"100"}


async def test_push_capped_keeps_the_newest_elements(store: StateStore) -> None:
    for i in range(5):
        length = await store.push_capped("l", str(i).encode(), 3, ttl=LONG)
    assert length == 3
    assert await store.lrange("l") == [b"2", b"3", b"4"]
    assert await store.lrange("missing") == []


async def test_push_capped_ttl_expires_the_list(backend: Backend) -> None:
    store = backend.store
    await store.push_capped("l", b"x", 2, ttl=backend.short)
    await backend.pass_short()
    assert await store.lrange("l") == []


@pytest.mark.parametrize("cap", [0, -1, True, 1.5])
async def test_push_capped_needs_a_positive_integer_cap(store: StateStore, cap: Any) -> None:
    with pytest.raises(ValueError):
        await store.push_capped("l", b"x", cap)
    with pytest.raises(ValueError):
        store.batch().push_capped("l", b"x", cap)


async def test_hash_and_list_operations_run_in_a_batch(store: StateStore) -> None:
    async with store.batch() as b:
        b.hincrby("h", "a", 2, ttl=LONG)
        b.hincrby("h", "b")
        b.push_capped("l", b"s1", 2, ttl=LONG)
        b.push_capped("l", b"s2", 2, ttl=LONG)
        counts = b.hgetall("h")
        samples = b.lrange("l")
    assert counts.value == {"a": b"2", "b": b"1"}
    assert samples.value == [b"s1", b"s2"]


# --------------------------------------------------------------------------
# Token buckets


async def test_token_bucket_allows_a_full_burst_then_refuses(store: StateStore) -> None:
    results = [await store.token_bucket("b", 1.0, 3, 1000.0) for _ in range(4)]
    assert [allowed for allowed, _ in results] == [True, True, True, False]
    assert [wait for _, wait in results[:3]] == [0.0, 0.0, 0.0]
    assert results[3][1] == pytest.approx(1.0)


async def test_token_bucket_retry_after_shrinks_as_time_passes(store: StateStore) -> None:
    for _ in range(2):
        await store.token_bucket("b", 2.0, 2, 1000.0)
    assert await store.token_bucket("b", 2.0, 2, 1000.0) == (False, pytest.approx(0.5))
    assert await store.token_bucket("b", 2.0, 2, 1000.25) == (False, pytest.approx(0.25))
    assert await store.token_bucket("b", 2.0, 2, 1000.5) == (True, 0.0)


async def test_token_bucket_refills_at_the_rate_up_to_the_burst(store: StateStore) -> None:
    for _ in range(5):
        await store.token_bucket("b", 1.0, 5, 1000.0)
    # 100 seconds later: full again (5 tokens), never more.
    allowed = [(await store.token_bucket("b", 1.0, 5, 1100.0))[0] for _ in range(6)]
    assert allowed == [True] * 5 + [False]


async def test_token_bucket_refused_requests_take_no_tokens(store: StateStore) -> None:
    await store.token_bucket("b", 1.0, 1, 1000.0)
    for _ in range(3):
        assert (await store.token_bucket("b", 1.0, 1, 1000.5))[0] is False
    assert await store.token_bucket("b", 1.0, 1, 1001.0) == (True, 0.0)


async def test_token_bucket_cost_takes_several_tokens(store: StateStore) -> None:
    assert (await store.token_bucket("b", 1.0, 4, 1000.0, cost=3))[0] is True
    assert await store.token_bucket("b", 1.0, 4, 1000.0, cost=3) == (False, pytest.approx(2.0))


async def test_token_bucket_clock_behind_the_stamp_refills_nothing(store: StateStore) -> None:
    await store.token_bucket("b", 1.0, 1, 1000.0)
    allowed, wait = await store.token_bucket("b", 1.0, 1, 990.0)  # another replica's slower clock
    assert allowed is False
    assert wait == pytest.approx(11.0)


async def test_token_buckets_of_different_keys_are_independent(store: StateStore) -> None:
    await store.token_bucket("a", 1.0, 1, 1000.0)
    assert await store.token_bucket("b", 1.0, 1, 1000.0) == (True, 0.0)


async def test_token_bucket_key_expires_once_it_would_be_full(backend: Backend) -> None:
    store = backend.store
    rate = 2 / backend.short  # burst 2: the TTL is burst / rate = short
    await store.token_bucket("b", rate, 2, 1000.0)
    assert await store.delete("b") == 1
    await store.token_bucket("b", rate, 2, 1000.0)
    await backend.pass_short()
    assert await store.delete("b") == 0


async def test_token_bucket_runs_in_a_batch(store: StateStore) -> None:
    async with store.batch() as b:
        first = b.token_bucket("b", 1.0, 1, 1000.0)
        second = b.token_bucket("b", 1.0, 1, 1000.0)
        other = b.token_bucket("c", 1.0, 1, 1000.0)
    assert (first.value, second.value[0], other.value) == ((True, 0.0), False, (True, 0.0))


async def test_token_bucket_takes_each_concurrent_token_once(store: StateStore) -> None:
    results = await asyncio.gather(*(store.token_bucket("b", 0.001, 10, 1000.0) for _ in range(25)))
    assert sum(allowed for allowed, _ in results) == 10


@pytest.mark.parametrize(
    ("rate", "burst", "now", "cost"),
    [
        pytest.param(0, 5, 1.0, 1, id="rate-zero"),
        pytest.param(-1.0, 5, 1.0, 1, id="rate-negative"),
        pytest.param(float("nan"), 5, 1.0, 1, id="rate-nan"),
        pytest.param(float("inf"), 5, 1.0, 1, id="rate-inf"),
        pytest.param(1e-300, 5, 1.0, 1, id="ttl-absurd"),
        pytest.param(True, 5, 1.0, 1, id="rate-bool"),
        pytest.param(1.0, 0.5, 1.0, 1, id="burst-below-one"),
        pytest.param(1.0, float("inf"), 1.0, 1, id="burst-inf"),
        pytest.param(1.0, 5, float("nan"), 1, id="now-nan"),
        pytest.param(1.0, 5, float("-inf"), 1, id="now-inf"),
        pytest.param(1.0, 5, 1.0, 0, id="cost-zero"),
        pytest.param(1.0, 5, 1.0, 6, id="cost-above-burst"),
        pytest.param(1.0, 5, 1.0, float("nan"), id="cost-nan"),
        pytest.param(1.0, "5", 1.0, 1, id="burst-text"),
    ],
)
async def test_token_bucket_rejects_bad_arguments_when_queued(
        store: StateStore, rate: Any, burst: Any, now: Any, cost: Any) -> None:
    batch = store.batch()
    with pytest.raises(ValueError):
        batch.token_bucket("b", rate, burst, now, cost)
    with pytest.raises(ValueError):
        await store.token_bucket("b", rate, burst, now, cost)
    assert len(batch) == 0
    assert await store.delete("b") == 0


@pytest.mark.parametrize(
    "misuse",
    [
        pytest.param(lambda s: s.get("set"), id="get-on-set"),
        pytest.param(lambda s: s.getdel("set"), id="getdel-on-set"),
        pytest.param(lambda s: s.incr("set"), id="incr-on-set"),
        pytest.param(lambda s: s.incr("set", ttl=LONG), id="incr-ttl-on-set"),
        pytest.param(lambda s: s.sadd("string", "m"), id="sadd-on-string"),
        pytest.param(lambda s: s.sadd("string", "m", ttl=LONG), id="sadd-ttl-on-string"),
        pytest.param(lambda s: s.scard("string"), id="scard-on-string"),
        pytest.param(lambda s: s.sismember("string", "m"), id="sismember-on-string"),
        pytest.param(lambda s: s.smembers("string"), id="smembers-on-string"),
        pytest.param(lambda s: s.srem("string", "m"), id="srem-on-string"),
        pytest.param(lambda s: s.zadd_window("string", "m", 1.0, 1.0), id="window-on-string"),
        pytest.param(lambda s: s.hincrby("string", "f"), id="hincrby-on-string"),
        pytest.param(lambda s: s.hgetall("set"), id="hgetall-on-set"),
        pytest.param(lambda s: s.push_capped("set", b"x", 2), id="push-on-set"),
        pytest.param(lambda s: s.lrange("string"), id="lrange-on-string"),
        pytest.param(lambda s: s.token_bucket("string", 1.0, 1, 1.0), id="bucket-on-string"),
        pytest.param(lambda s: s.token_bucket("set", 1.0, 1, 1.0), id="bucket-on-set"),
    ],
)
async def test_wrong_kind_of_key_raises_state_type_error(
    store: StateStore, misuse: Callable[[StateStore], Awaitable[Any]]
) -> None:
    await store.set("string", b"x")
    await store.sadd("set", "m")
    with pytest.raises(StateTypeError):
        await misuse(store)


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan"), float("inf")])
async def test_non_positive_or_non_finite_ttl_is_rejected(store: StateStore, ttl: float) -> None:
    for call in (
        lambda: store.set("k", b"1", ttl=ttl),
        lambda: store.set_if_absent("k", b"1", ttl=ttl),
        lambda: store.incr("k", ttl=ttl),
        lambda: store.sadd("k", "m", ttl=ttl),
        lambda: store.zadd_window("k", "m", 1.0, ttl),
    ):
        with pytest.raises(ValueError):
            await call()
    assert await store.delete("k") == 0


async def test_ping_answers_true(store: StateStore) -> None:
    assert await store.ping() is True


def test_store_satisfies_the_protocol(store: StateStore) -> None:
    assert isinstance(store, StateStore)


# --------------------------------------------------------------------------
# Batches


async def test_batch_runs_operations_in_order_and_returns_their_results(
    store: StateStore,
) -> None:
    await store.set("frozen", b"yes")
    batch = store.batch()
    batch.get("frozen")
    batch.set("seen", b"1", ttl=LONG)
    batch.mget(["frozen", "seen", "missing"])
    batch.set_if_absent("seen", b"2", ttl=LONG)
    batch.incr("hits", 3, ttl=LONG)
    batch.sadd("devices", "d1", ttl=LONG)
    batch.scard("devices")
    batch.sismember("devices", "d2")
    batch.zadd_window("rate", "r1", 10.0, 1.0)
    batch.getdel("seen")
    batch.delete("frozen", "hits")
    batch.delete()
    batch.mget([])
    assert await batch.execute() == [
        b"yes", None, [b"yes", b"1", None], False, 3, 1, 1, False, 1, b"1", 2, 0, [],
    ]


async def test_batch_as_context_manager_resolves_its_pending_results(
    store: StateStore,
) -> None:
    await store.set("freeze:A1", b"1")
    async with store.batch() as b:
        frozen = b.get("freeze:A1")
        rate = b.zadd_window("rate:A1", "req-1", 100.0, 1.0)
        count = b.incr("count:A1")
    assert frozen.value == b"1"
    assert rate.value == 1
    assert count.value == 1


async def test_pending_result_is_unreadable_before_the_batch_runs(store: StateStore) -> None:
    batch = store.batch()
    pending = batch.get("k")
    assert not pending.done
    with pytest.raises(RuntimeError):
        _ = pending.value


async def test_batch_runs_only_once(store: StateStore) -> None:
    batch = store.batch()
    batch.incr("n")
    assert await batch.execute() == [1]
    with pytest.raises(RuntimeError):
        await batch.execute()
    with pytest.raises(RuntimeError):
        batch.incr("n")
    assert await store.get("n") == b"1"


async def test_empty_batch_returns_no_results(store: StateStore) -> None:
    assert await store.batch().execute() == []


async def test_batch_is_not_run_when_its_block_raises(store: StateStore) -> None:
    with pytest.raises(KeyError):
        async with store.batch() as b:
            b.set("k", b"1")
            raise KeyError("caller failed")
    assert await store.get("k") is None


async def test_batch_rejects_a_bad_argument_when_queued(store: StateStore) -> None:
    batch = store.batch()
    batch.set("k", b"1")
    with pytest.raises(ValueError):
        batch.incr("n", ttl=0)
    assert await batch.execute() == [None]
    assert await store.get("n") is None


async def test_batch_reports_misuse_as_state_type_error(store: StateStore) -> None:
    await store.set("string", b"x")
    batch = store.batch()
    batch.sadd("string", "m")
    with pytest.raises(StateTypeError):
        await batch.execute()


# --------------------------------------------------------------------------
# Prefixes


async def test_keys_are_stored_under_the_prefix(backend: Backend) -> None:
    tenant = backend.make("tenant:")
    root = backend.make("")
    await tenant.set("k", b"v")
    await tenant.sadd("s", "m")
    assert await root.get("tenant:k") == b"v"
    assert await root.sismember("tenant:s", "m") is True
    assert await root.get("k") is None


async def test_stores_with_different_prefixes_do_not_see_each_other(backend: Backend) -> None:
    a, b = backend.make("a:"), backend.make("b:")
    await a.set("k", b"a")
    await a.incr("n")
    assert await b.get("k") is None
    assert await b.set_if_absent("k", b"b", ttl=LONG) is True
    assert await b.incr("n") == 1
    assert await b.delete("k", "n") == 2
    assert await a.mget(["k", "n"]) == [b"a", b"1"]


# --------------------------------------------------------------------------
# Redis only: round trips, timeouts, failure translation


def counting_connection() -> tuple[type[Connection], list[bytes]]:
    """A redis-py Connection class recording every write it sends (one per round trip)."""
    writes: list[bytes] = []

    class Counting(Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            packed = command if isinstance(command, bytes | str) else b"".join(command)
            writes.append(packed if isinstance(packed, bytes) else packed.encode())
            await super().send_packed_command(command, check_health)

    return Counting, writes


@pytest.fixture
async def counted(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[RedisStore, list[bytes]]]:
    cls, writes = counting_connection()
    store = RedisStore(redis_url, redis_prefix, timeout=2.0, connection_class=cls)
    assert await store.ping()  # connect (handshake writes) before counting
    writes.clear()
    yield store, writes
    await store.close()


async def test_redis_batch_is_one_round_trip_and_one_command(counted: tuple[RedisStore, list[bytes]]) -> None:
    store, writes = counted
    async with store.batch() as b:  # the first batch may load the script (see below)
        b.get("warm-up")
    writes.clear()
    async with store.batch() as b:
        b.get("freeze:A1")
        b.mget(["a", "b"])
        b.set_if_absent("jti:1", b"1", ttl=LONG)
        b.incr("orders:A1", ttl=LONG)
        b.sadd("devices:alice", "d1", ttl=LONG)
        b.zadd_window("rate:A1", "req-1", time.time(), 1.0)
        b.getdel("otp:1")
        b.sismember("devices:alice", "d1")
    assert len(writes) == 1
    assert len(re.findall(rb"\*\d+\r\n\$", writes[0])) == 1 and b"EVALSHA" in writes[0]  # one command
    for key in (b"freeze:A1", b"jti:1", b"orders:A1", b"devices:alice", b"rate:A1", b"otp:1"):
        assert key in writes[0]


async def test_a_redis_without_the_batch_script_is_sent_it_once(private_redis: PrivateRedis) -> None:
    cls, writes = counting_connection()
    store = RedisStore(private_redis.url, "p:", timeout=2.0, connection_class=cls)
    try:
        assert await store.ping()
        writes.clear()
        async with store.batch() as b:
            first = b.incr("n", ttl=LONG)
        assert first.value == 1 and len(writes) == 2  # EVALSHA answered NOSCRIPT (nothing ran), then EVAL
        assert b"EVALSHA" in writes[0] and writes[1].count(b"EVAL") == 1
        writes.clear()
        async with store.batch() as b:
            again = b.incr("n", ttl=LONG)
        assert again.value == 2 and len(writes) == 1  # cached from now on: counted once each time
    finally:
        await store.close()


async def test_redis_each_operation_is_one_round_trip(
    counted: tuple[RedisStore, list[bytes]],
) -> None:
    store, writes = counted
    await store.incr("n", ttl=LONG)
    await store.sadd("s", "m", ttl=LONG)
    await store.zadd_window("w", "e", 1.0, 1.0)
    await store.set_if_absent("k", b"1", ttl=LONG)
    assert len(writes) == 4


async def test_redis_operations_answered_locally_send_nothing(
    counted: tuple[RedisStore, list[bytes]],
) -> None:
    store, writes = counted
    assert await store.delete() == 0
    assert await store.mget([]) == []
    async with store.batch() as b:
        b.delete()
    assert writes == []


async def test_redis_ttl_has_millisecond_precision(
    redis_url: str, redis_store: RedisStore
) -> None:
    await redis_store.set("k", b"1", ttl=1.5)
    await redis_store.incr("n", ttl=2.25)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        ttl_k = await raw.pttl(redis_store.prefix + "k")
        ttl_n = await raw.pttl(redis_store.prefix + "n")
    finally:
        await raw.aclose()
    assert 1400 < ttl_k <= 1500
    assert 2150 < ttl_n <= 2250


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def unreachable_store() -> AsyncIterator[RedisStore]:
    store = RedisStore(f"redis://:s3cret@127.0.0.1:{closed_port()}/0", "p:", timeout=0.3)
    yield store
    await store.close()


async def test_redis_closed_port_raises_state_unavailable(
    unreachable_store: RedisStore,
) -> None:
    started = time.monotonic()
    with pytest.raises(StateUnavailable) as caught:
        await unreachable_store.get("k")
    assert time.monotonic() - started < 0.3 + 0.2
    assert isinstance(caught.value, GatewayError)
    assert caught.value.kind is STATE_UNAVAILABLE
    assert caught.value.status == 503
    assert caught.value.message == STATE_UNAVAILABLE.message  # nothing internal for clients
    assert "s3cret" not in caught.value.detail


async def test_redis_unreachable_batch_raises_state_unavailable(
    unreachable_store: RedisStore,
) -> None:
    batch = unreachable_store.batch()
    batch.incr("n")
    with pytest.raises(StateUnavailable):
        await batch.execute()


async def test_redis_unreachable_ping_is_false(unreachable_store: RedisStore) -> None:
    assert await unreachable_store.ping() is False


async def test_redis_silent_server_raises_state_unavailable_within_timeout() -> None:
    """A server that accepts connections but never answers (a hung Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", "p:", timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await store.incr("n")
        assert time.monotonic() - started < 0.2 + 0.2
    finally:
        await store.close()
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


def test_redis_store_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError):
        RedisStore("redis://127.0.0.1:6379/0", timeout=0)


async def test_build_store_picks_the_configured_backend(redis_url: str) -> None:
    memory = build_store(StateConfig(backend="memory", prefix="m:"))
    assert isinstance(memory, MemoryStore) and memory.prefix == "m:"
    redis = build_store(StateConfig(backend="redis", url=redis_url, prefix="r:", timeout=0.7))
    assert isinstance(redis, RedisStore)
    assert (redis.prefix, redis.timeout) == ("r:", 0.7)
    assert await redis.ping()
    await redis.close()


# --------------------------------------------------------------------------
# Memory only: bounded memory without readers


async def test_memory_sweep_removes_expired_keys_nobody_reads() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for i in range(1000):
        await store.set(f"k{i}", b"1", ttl=1.0)
    await store.set("keep", b"1")
    clock.now += 2.0
    for _ in range(20):  # 20 calls x 64 swept per call > 1000
        await store.get("keep")
    assert len(store.keyspace) == 1


async def test_memory_refreshed_ttls_do_not_grow_the_deadline_heap() -> None:
    store = MemoryStore(clock=FakeClock())
    for _ in range(10_000):
        await store.sadd("s", "m", ttl=LONG)
    assert len(store.keyspace._heap) <= 2 * 1 + 1024 + 1


# --------------------------------------------------------------------------
# The shared service fixtures (conftest.py)


def _pytest_with_redis_down(require: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PORTCULLIS_TEST_REDIS_URL"] = f"redis://127.0.0.1:{closed_port()}/0"
    env.pop("REQUIRE_REDIS", None)
    if require:
        env["REQUIRE_REDIS"] = "1"
    here = Path(__file__).resolve()
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         f"tests/{here.name}::test_redis_store_fixture_uses_its_prefix"],
        cwd=here.parents[1], env=env, capture_output=True, text=True, timeout=60,
    )


def test_redis_fixture_skips_with_instructions_when_redis_is_down() -> None:
    result = _pytest_with_redis_down(require=False)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "redis-server --daemonize yes" in result.stdout


def test_redis_fixture_fails_when_redis_is_required_and_down() -> None:
    result = _pytest_with_redis_down(require=True)
    assert result.returncode != 0
    assert "REQUIRE_REDIS=1" in result.stdout
    assert "skipped" not in result.stdout


async def test_redis_store_fixture_uses_its_prefix(
    redis_store: RedisStore, redis_prefix: str
) -> None:
    assert redis_store.prefix == redis_prefix
    assert redis_prefix.startswith("ptest:")


async def test_pg_schema_is_a_fresh_schema(postgres_dsn: str, pg_schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("CREATE TABLE t (x int)")
        where = await conn.fetchval("SELECT table_schema FROM information_schema.tables"
                                    " WHERE table_name = 't' AND table_schema = $1", pg_schema)
    finally:
        await conn.close()
    assert where == pg_schema


def test_vectors_dir_is_a_folder(vectors_dir: Path) -> None:
    assert vectors_dir.is_dir()
