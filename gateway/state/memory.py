"""In-process state store: the single-machine backend and the tests' fake.

It follows the Redis backend's observable behaviour (same return values, same
errors for misuse, counters readable as decimal bytes, ``mget`` answering None
for non-string keys) so the shared behaviour suite runs unchanged on both.

Every operation runs without awaiting, so each one, and each batch, is atomic
on the event loop. It is single-process only: replicas need Redis.

Expiry is lazy (an expired key is dropped when touched) plus an amortised
sweep: deadlines sit in a heap and every operation drops at most
``_SWEEP_BUDGET`` expired keys from its top, so keys nobody reads again still
leave memory without a background task, and no single call stalls on a large
burst of expiries. Refreshed or deleted keys leave stale heap entries; the
heap is rebuilt when they outnumber live deadlines, which keeps it bounded.

Time comes from an injected monotonic ``clock``, so tests move it by hand.
Several stores may share one :class:`Keyspace` (each with its own prefix) to
model replicas sharing state; publish/subscribe channels live on the keyspace
too, so a message published through one store reaches subscribers of another.
"""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.state.base import (
    Batch,
    Op,
    QueueSubscription,
    StateTypeError,
    Subscription,
    bucket_take,
    check_bucket,
    check_cap,
    check_score,
    ttl_ms,
)

__all__ = ["Keyspace", "MemoryStore"]

_SWEEP_BUDGET = 64
_INT = re.compile(rb"-?(0|[1-9][0-9]*)")
_INT64 = (-(2**63), 2**63 - 1)



class _Hash:
    """A hash's fields (kept apart from a sliding window's dict so the two kinds never mix)."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[str, bytes] = {}


class _Bucket:
    """A token bucket's level and when it was last refilled (the caller's clock)."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


_Value = bytes | set[str] | dict[str, float] | _Hash | list[bytes] | _Bucket


class Keyspace:
    """The data behind one or more :class:`MemoryStore`: values, deadlines, clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.values: dict[str, _Value] = {}
        self.deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self.channels: dict[str, set[QueueSubscription]] = {}

    def __len__(self) -> int:
        """Keys held, including expired ones not yet swept."""
        return len(self.values)

    def live(self, key: str) -> _Value | None:
        """The key's value, or None when absent; drops it first if expired."""
        deadline = self.deadlines.get(key)
        if deadline is not None and deadline <= self.clock():
            self.drop(key)
            return None
        return self.values.get(key)

    def drop(self, key: str) -> bool:
        self.deadlines.pop(key, None)
        return self.values.pop(key, None) is not None

    def put(self, key: str, value: _Value, ttl: float | None) -> None:
        """Store a value; ``ttl`` None clears any deadline."""
        self.values[key] = value
        if ttl is None:
            self.deadlines.pop(key, None)
        else:
            self.expire(key, ttl)

    def expire(self, key: str, ttl: float) -> None:
        ms = ttl_ms(ttl)
        assert ms is not None
        deadline = self.clock() + ms / 1000
        self.deadlines[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        if len(self._heap) > 2 * len(self.deadlines) + 1024:
            self._heap = [(d, k) for k, d in self.deadlines.items()]
            heapq.heapify(self._heap)

    def sweep(self, budget: int = _SWEEP_BUDGET) -> None:
        """Drop up to ``budget`` expired keys, oldest deadline first."""
        now = self.clock()
        heap = self._heap
        while budget > 0 and heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            if self.deadlines.get(key) == deadline:  # else a stale entry
                self.drop(key)
                budget -= 1


class MemoryStore:
    """A :class:`~gateway.state.base.StateStore` held in this process's memory."""

    def __init__(
        self,
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
        *,
        keyspace: Keyspace | None = None,
    ) -> None:
        self.prefix = prefix
        self.keyspace = keyspace if keyspace is not None else Keyspace(clock)
        self._ops: dict[str, Callable[..., Any]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_op_")}

    # -- synchronous cores, shared by the async methods and by batches --------

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _string(self, key: str) -> bytes | None:
        value = self.keyspace.live(self._k(key))
        if value is None or isinstance(value, bytes):
            return value
        raise StateTypeError(f"key {key!r} does not hold a string")

    def _set_of(self, key: str) -> set[str] | None:
        value = self.keyspace.live(self._k(key))
        if value is None or isinstance(value, set):
            return value
        raise StateTypeError(f"key {key!r} does not hold a set")

    def _op_get(self, key: str) -> bytes | None:
        return self._string(key)

    def _op_mget(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            value = self.keyspace.live(self._k(key))
            out.append(value if isinstance(value, bytes) else None)
        return out

    def _op_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.keyspace.put(self._k(key), bytes(value), ttl)

    def _op_set_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        if self.keyspace.live(self._k(key)) is not None:
            return False
        self.keyspace.put(self._k(key), bytes(value), ttl)
        return True

    def _op_get_or_set(self, key: str, value: bytes, ttl: float | None) -> bytes:
        current = self._string(key)
        if current is not None:
            return current
        stored = bytes(value)
        self.keyspace.put(self._k(key), stored, ttl)
        return stored

    def _op_getdel(self, key: str) -> bytes | None:
        value = self._string(key)
        if value is not None:
            self.keyspace.drop(self._k(key))
        return value

    def _op_delete(self, *keys: str) -> int:
        count = 0
        for key in keys:
            if self.keyspace.live(self._k(key)) is not None:
                count += self.keyspace.drop(self._k(key))
        return count

    def _op_incr(self, key: str, amount: int, ttl: float | None) -> int:
        current = self._string(key)
        if current is not None and not _INT.fullmatch(current):
            raise StateTypeError(f"key {key!r} does not hold an integer")
        total = (int(current) if current is not None else 0) + amount
        if not _INT64[0] <= total <= _INT64[1]:
            raise StateTypeError(f"incrementing {key!r} would overflow a 64-bit integer")
        encoded = str(total).encode()
        if current is None:
            self.keyspace.put(self._k(key), encoded, ttl)
        else:  # keep the existing deadline, like INCRBY
            self.keyspace.values[self._k(key)] = encoded
        return total

    def _op_sadd(self, key: str, member: str, ttl: float | None) -> int:
        members = self._set_of(key)
        if members is None:
            members = set()
            self.keyspace.values[self._k(key)] = members
        added = member not in members
        members.add(member)
        if ttl is not None:
            self.keyspace.expire(self._k(key), ttl)
        return int(added)

    def _op_scard(self, key: str) -> int:
        members = self._set_of(key)
        return len(members) if members is not None else 0

    def _op_sismember(self, key: str, member: str) -> bool:
        members = self._set_of(key)
        return members is not None and member in members

    def _op_smembers(self, key: str) -> list[str]:
        members = self._set_of(key)
        return sorted(members) if members is not None else []

    def _op_srem(self, key: str, member: str) -> int:
        members = self._set_of(key)
        if members is None or member not in members:
            return 0
        members.discard(member)
        if not members:  # like Redis: an empty set does not exist
            self.keyspace.drop(self._k(key))
        return 1

    def _op_zadd_window(self, key: str, member: str, score: float, window: float) -> int:
        check_score(score, window)
        value = self.keyspace.live(self._k(key))
        if value is not None and type(value) is not dict:
            raise StateTypeError(f"key {key!r} does not hold a sliding window")
        events: dict[str, float] = value if value is not None else {}
        events[member] = score
        floor = score - window
        # Linear in the window's size; windows hold at most a few hundred events.
        for old in [m for m, s in events.items() if s < floor]:
            del events[old]
        self.keyspace.put(self._k(key), events, window)
        return len(events)

    def _hash(self, key: str) -> _Hash | None:
        value = self.keyspace.live(self._k(key))
        if value is None or isinstance(value, _Hash):
            return value
        raise StateTypeError(f"key {key!r} does not hold a hash")

    def _list(self, key: str) -> list[bytes] | None:
        value = self.keyspace.live(self._k(key))
        if value is None or isinstance(value, list):
            return value
        raise StateTypeError(f"key {key!r} does not hold a list")

    def _op_hincrby(self, key: str, field: str, amount: int, ttl: float | None) -> int:
        h = self._hash(key)
        if h is None:
            h = _Hash()
            self.keyspace.values[self._k(key)] = h
        current = h.fields.get(field)
        if current is not None and not _INT.fullmatch(current):
            raise StateTypeError(f"field {field!r} of {key!r} does not hold an integer")
        total = (int(current) if current is not None else 0) + amount
        if not _INT64[0] <= total <= _INT64[1]:
            raise StateTypeError(f"incrementing {field!r} of {key!r} would overflow a 64-bit integer")
        h.fields[field] = str(total).encode()
        if ttl is not None:
            self.keyspace.expire(self._k(key), ttl)
        return total

    def _op_hgetall(self, key: str) -> dict[str, bytes]:
        h = self._hash(key)
        return dict(h.fields) if h is not None else {}

    def _op_push_capped(self, key: str, value: bytes, cap: int, ttl: float | None) -> int:
        check_cap(cap)
        items = self._list(key)
        if items is None:
            items = []
            self.keyspace.values[self._k(key)] = items
        items.append(bytes(value))
        del items[:-cap]
        if ttl is not None:
            self.keyspace.expire(self._k(key), ttl)
        return len(items)

    def _op_lrange(self, key: str) -> list[bytes]:
        items = self._list(key)
        return list(items) if items is not None else []

    def _op_token_bucket(self, key: str, rate: float, burst: float, now: float,
                         cost: float) -> tuple[bool, float]:
        ttl = check_bucket(rate, burst, now, cost)
        value = self.keyspace.live(self._k(key))
        if value is not None and not isinstance(value, _Bucket):
            raise StateTypeError(f"key {key!r} does not hold a token bucket")
        tokens, stamp, allowed, wait = bucket_take(
            value.tokens if value else None, value.stamp if value else None, rate, burst, now, cost)
        self.keyspace.put(self._k(key), _Bucket(tokens, stamp), ttl)
        return allowed, wait

    def _call(self, name: str, args: tuple[Any, ...]) -> Any:
        self.keyspace.sweep()
        return self._ops[name](*args)

    # -- the StateStore interface ---------------------------------------------
    # Each call first spends the sweep budget, then runs its synchronous core.

    async def get(self, key: str) -> bytes | None:
        self.keyspace.sweep()
        return self._op_get(key)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        self.keyspace.sweep()
        return self._op_mget(keys)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        ttl_ms(ttl)
        self.keyspace.sweep()
        self._op_set(key, value, ttl)

    async def get_or_set(self, key: str, value: bytes, ttl: float | None) -> bytes:
        ttl_ms(ttl)
        self.keyspace.sweep()
        return self._op_get_or_set(key, value, ttl)

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        ttl_ms(ttl)
        self.keyspace.sweep()
        return self._op_set_if_absent(key, value, ttl)

    async def getdel(self, key: str) -> bytes | None:
        self.keyspace.sweep()
        return self._op_getdel(key)

    async def delete(self, *keys: str) -> int:
        self.keyspace.sweep()
        return self._op_delete(*keys)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        ttl_ms(ttl)
        self.keyspace.sweep()
        return self._op_incr(key, amount, ttl)

    async def sadd(self, key: str, member: str, ttl: float | None = None) -> int:
        ttl_ms(ttl)
        self.keyspace.sweep()
        return self._op_sadd(key, member, ttl)

    async def scard(self, key: str) -> int:
        self.keyspace.sweep()
        return self._op_scard(key)

    async def sismember(self, key: str, member: str) -> bool:
        self.keyspace.sweep()
        return self._op_sismember(key, member)

    async def smembers(self, key: str) -> list[str]:
        self.keyspace.sweep()
        return self._op_smembers(key)

    async def srem(self, key: str, member: str) -> int:
        self.keyspace.sweep()
        return self._op_srem(key, member)

    async def zadd_window(self, key: str, member: str, score: float, window: float) -> int:
        self.keyspace.sweep()
        return self._op_zadd_window(key, member, score, window)

    async def hincrby(self, key: str, field: str, amount: int = 1, ttl: float | None = None) -> int:
        ttl_ms(ttl)
        self.keyspace.sweep()
        return self._op_hincrby(key, field, amount, ttl)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        self.keyspace.sweep()
        return self._op_hgetall(key)

    async def push_capped(self, key: str, value: bytes, cap: int, ttl: float | None = None) -> int:
        check_cap(cap)
        ttl_ms(ttl)
        self.keyspace.sweep()
        return self._op_push_capped(key, value, cap, ttl)

    async def lrange(self, key: str) -> list[bytes]:
        self.keyspace.sweep()
        return self._op_lrange(key)

    async def token_bucket(self, key: str, rate: float, burst: float, now: float,
                           cost: float = 1) -> tuple[bool, float]:
        check_bucket(rate, burst, now, cost)
        self.keyspace.sweep()
        return self._op_token_bucket(key, float(rate), float(burst), float(now), float(cost))

    async def publish(self, channel: str, message: bytes) -> int:
        subscribers = list(self.keyspace.channels.get(self._k(channel), ()))
        for sub in subscribers:
            sub.deliver(bytes(message))
        return len(subscribers)

    async def subscribe(self, channel: str) -> Subscription:
        name = self._k(channel)
        channels = self.keyspace.channels

        def forget(sub: QueueSubscription) -> None:
            members = channels.get(name)
            if members is not None:
                members.discard(sub)
                if not members:
                    del channels[name]

        sub = QueueSubscription(channel, forget)
        channels.setdefault(name, set()).add(sub)
        return sub

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release; the data stays for other stores on the keyspace."""

    def batch(self) -> Batch:
        return _MemoryBatch(self)


class _MemoryBatch(Batch):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store

    def execute_now(self) -> list[Any] | None:
        # Nothing to wait for in memory: the request's state round costs no coroutine.
        return self._execute_with(self._run_now)

    async def _run(self, ops: Sequence[Op]) -> list[Any]:
        return self._run_now(ops)

    def _run_now(self, ops: Sequence[Op]) -> list[Any]:
        # No await between operations: the whole batch is atomic in memory. One sweep for the
        # batch, with the budget its operations would have spent one by one.
        store = self._store
        store.keyspace.sweep(_SWEEP_BUDGET * len(ops))
        table = store._ops
        return [table[name](*args) for name, args, _ in ops]
