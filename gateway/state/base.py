"""The shared-state contract: one small async interface over Redis or memory.

Risk counters, MFA challenges, replay caches, account freezes and token
revocation all keep state that every gateway replica must see. They talk to
this interface only, so a single process runs on :class:`MemoryStore` and a
fleet on :class:`RedisStore` without a line of difference in the callers, and
tests hand in a memory store with a fake clock.

The operations are the few the gateway needs, each atomic on its own
(``set_if_absent`` for replay caches, ``getdel`` for single-use tokens,
``incr`` with a TTL set only on creation, ``zadd_window`` for sliding-window
rate counters, ``hincrby``/``hgetall`` for counters aggregated across
replicas, ``push_capped``/``lrange`` for bounded sample lists,
``smembers``/``srem`` for small indexes such as the frozen accounts,
``token_bucket`` for rate limits).
The design budget is one Redis round trip per request on read
routes, two on trade routes: :meth:`StateStore.batch` queues several
operations and sends them in one round trip, returning typed handles::

    async with store.batch() as b:
        frozen = b.get(f"freeze:{account}")
        rate = b.zadd_window(f"rate:{account}", request_id, now, 1.0)
    if frozen.value is not None or rate.value > limit: ...

Each operation is atomic; on both backends a whole batch runs without another
client's commands in between (one script on Redis, no await in memory), but it
is not a transaction: a failed operation does not undo the ones before it.

Failure model: any connection failure or timeout raises
:class:`StateUnavailable` (503 ``state_unavailable``); the route's fail mode
decides what happens next. Using a key with the wrong kind of operation
(``incr`` on a set, ``sadd`` on a string) is a programming error and raises
:class:`StateTypeError` on every backend.

Keys are plain strings; every store prepends its configured prefix, so several
deployments (and test runs) can share one Redis. TTLs and windows are seconds
as floats, applied with millisecond precision (``PEXPIRE`` semantics).

Publish/subscribe (``publish``, ``subscribe``) carries hints between replicas,
such as "a new policy version is active". Delivery is at most once: a
subscriber that is disconnected, or too slow (more than
:data:`SUBSCRIPTION_BUFFER` messages behind), misses messages, so a consumer
must also poll the truth it is told about. Channels get the store's prefix,
like keys. :meth:`StateStore.subscribe` returns once the subscription is
registered: anything published afterwards is delivered to it.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from gateway.errors import STATE_UNAVAILABLE, GatewayError

__all__ = [
    "Batch",
    "Pending",
    "StateStore",
    "StateTypeError",
    "StateUnavailable",
    "QueueSubscription",
    "Subscription",
    "bucket_take",
    "check_bucket",
    "check_cap",
    "check_score",
    "stored_float",
    "ttl_ms",
]

T = TypeVar("T")


class StateUnavailable(GatewayError):
    """The state store could not be reached in time (503 ``state_unavailable``).

    ``message`` stays the generic one because it is sent to clients; the cause
    (kept in ``detail`` and ``__cause__``) is for operators' logs only.
    """

    def __init__(self, detail: str = "") -> None:
        super().__init__(STATE_UNAVAILABLE)
        self.detail = detail


class StateTypeError(TypeError):
    """A key holds a value the operation cannot use (wrong kind, not an integer)."""


# --------------------------------------------------------------------------
# Argument checks shared by the backends, so both reject the same inputs.


def ttl_ms(ttl: float | None) -> int | None:
    """Seconds to whole milliseconds (rounded up, at least 1); None stays None."""
    if ttl is None:
        return None
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds (got {ttl!r})")
    return max(1, math.ceil(ttl * 1000))


def check_cap(cap: int) -> None:
    """A capped list keeps at least one element."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"cap must be a positive integer (got {cap!r})")


def check_score(score: float, window: float) -> None:
    """Scores and windows of ``zadd_window`` must be finite; the window positive."""
    if not math.isfinite(score):
        raise ValueError(f"score must be finite (got {score!r})")
    if not math.isfinite(window) or window <= 0:
        raise ValueError(f"window must be a positive number of seconds (got {window!r})")


MAX_BUCKET_TTL = 10 * 365 * 86_400.0
"""A bucket refills from empty within this many seconds at most (its key's TTL is burst / rate)."""


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (got {value!r})")
    return float(value)


def check_bucket(rate: float, burst: float, now: float, cost: float) -> float:
    """Validate ``token_bucket`` arguments; return the key's TTL (burst / rate seconds)."""
    rate, burst, now, cost = (_finite("rate", rate), _finite("burst", burst), _finite("now", now),
                              _finite("cost", cost))
    if rate <= 0:
        raise ValueError(f"rate must be positive (got {rate!r})")
    if burst < 1:
        raise ValueError(f"burst must be at least 1 (got {burst!r})")
    if not 0 < cost <= burst:
        raise ValueError(f"cost must be positive and at most the burst (got {cost!r})")
    ttl = burst / rate
    if not ttl <= MAX_BUCKET_TTL:
        raise ValueError(f"burst / rate must be at most {MAX_BUCKET_TTL:g} seconds (got {ttl!r})")
    return ttl


def bucket_take(tokens: float | None, stamp: float | None, rate: float, burst: float, now: float,
                cost: float) -> tuple[float, float, bool, float]:
    """One token-bucket step: (tokens left, stamp, allowed, seconds until ``cost`` tokens are there).

    An absent bucket (``tokens`` None) is full. A ``now`` before the stamp (another replica's
    clock) refills nothing and keeps the later stamp. A refused request takes no tokens.
    The Redis script (gateway/state/redis.py ``_TOKEN_BUCKET``) is this function in Lua.
    """
    if tokens is None or stamp is None:
        tokens, stamp = burst, now
    elif now > stamp:
        tokens, stamp = min(burst, tokens + (now - stamp) * rate), now
    if tokens >= cost:
        return tokens - cost, stamp, True, 0.0
    return tokens, stamp, False, (cost - tokens) / rate + max(0.0, stamp - now)


# --------------------------------------------------------------------------
# Batches


def stored_float(raw: bytes | None) -> float | None:
    """A number stored as text (``repr(float)``), or None when absent, unreadable or not finite."""
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


class Pending(Generic[T]):
    """The result of one queued operation, readable once its batch has run."""

    __slots__ = ("_done", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None

    def _resolve(self, value: Any) -> None:
        self._value = value
        self._done = True

    @property
    def done(self) -> bool:
        return self._done

    @property
    def value(self) -> T:
        if not self._done:
            raise RuntimeError("the batch has not been executed yet")
        result: T = self._value
        return result


#: One queued operation: its name (a :class:`StateStore` method), arguments, handle.
Op = tuple[str, tuple[Any, ...], Pending[Any]]


class Batch(ABC):
    """Operations queued to run in one round trip, in order.

    Use as ``async with store.batch() as b:`` (runs on a clean exit) or call
    :meth:`execute` yourself. Each queuing method returns a :class:`Pending`
    handle; :meth:`execute` also returns all results as a list. Arguments are
    checked when queued, so a bad one never leaves a batch half applied.
    A batch runs once.
    """

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._executed = False

    def __len__(self) -> int:
        return len(self._ops)

    def _queue(self, name: str, *args: Any) -> Pending[Any]:
        if self._executed:
            raise RuntimeError("this batch has already been executed")
        pending: Pending[Any] = Pending()
        self._ops.append((name, args, pending))
        return pending

    def get(self, key: str) -> Pending[bytes | None]:
        return self._queue("get", key)

    def mget(self, keys: Sequence[str]) -> Pending[list[bytes | None]]:
        return self._queue("mget", tuple(keys))

    def set(self, key: str, value: bytes, ttl: float | None = None) -> Pending[None]:
        ttl_ms(ttl)
        return self._queue("set", key, value, ttl)

    def set_if_absent(self, key: str, value: bytes, ttl: float | None) -> Pending[bool]:
        ttl_ms(ttl)
        return self._queue("set_if_absent", key, value, ttl)

    def get_or_set(self, key: str, value: bytes, ttl: float | None) -> Pending[bytes]:
        ttl_ms(ttl)
        return self._queue("get_or_set", key, value, ttl)

    def getdel(self, key: str) -> Pending[bytes | None]:
        return self._queue("getdel", key)

    def delete(self, *keys: str) -> Pending[int]:
        return self._queue("delete", *keys)

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> Pending[int]:
        ttl_ms(ttl)
        return self._queue("incr", key, amount, ttl)

    def sadd(self, key: str, member: str, ttl: float | None = None) -> Pending[int]:
        ttl_ms(ttl)
        return self._queue("sadd", key, member, ttl)

    def scard(self, key: str) -> Pending[int]:
        return self._queue("scard", key)

    def sismember(self, key: str, member: str) -> Pending[bool]:
        return self._queue("sismember", key, member)

    def smembers(self, key: str) -> Pending[list[str]]:
        return self._queue("smembers", key)

    def srem(self, key: str, member: str) -> Pending[int]:
        return self._queue("srem", key, member)

    def zadd_window(self, key: str, member: str, score: float, window: float) -> Pending[int]:
        check_score(score, window)
        return self._queue("zadd_window", key, member, score, window)

    def hincrby(self, key: str, field: str, amount: int = 1, ttl: float | None = None) -> Pending[int]:
        ttl_ms(ttl)
        return self._queue("hincrby", key, field, amount, ttl)

    def hgetall(self, key: str) -> Pending[dict[str, bytes]]:
        return self._queue("hgetall", key)

    def push_capped(self, key: str, value: bytes, cap: int, ttl: float | None = None) -> Pending[int]:
        check_cap(cap)
        ttl_ms(ttl)
        return self._queue("push_capped", key, value, cap, ttl)

    def lrange(self, key: str) -> Pending[list[bytes]]:
        return self._queue("lrange", key)

    def token_bucket(self, key: str, rate: float, burst: float, now: float,
                     cost: float = 1) -> Pending[tuple[bool, float]]:
        check_bucket(rate, burst, now, cost)
        return self._queue("token_bucket", key, float(rate), float(burst), float(now), float(cost))

    async def execute(self) -> list[Any]:
        """Run every queued operation in one round trip; return their results."""
        if self._executed:
            raise RuntimeError("this batch has already been executed")
        self._executed = True
        if not self._ops:
            return []
        return self._resolve(await self._run(self._ops))

    def execute_now(self) -> list[Any] | None:
        """Run the batch without waiting if this backend can (memory), else None (call `execute`)."""
        return None

    def _execute_with(self, run: Callable[[Sequence[Op]], list[Any]]) -> list[Any]:
        """`execute` for a backend that runs `ops` synchronously."""
        if self._executed:
            raise RuntimeError("this batch has already been executed")
        self._executed = True
        return self._resolve(run(self._ops)) if self._ops else []

    def _resolve(self, results: list[Any]) -> list[Any]:
        for (_, _, pending), result in zip(self._ops, results, strict=True):
            pending._resolve(result)
        return results

    @abstractmethod
    async def _run(self, ops: Sequence[Op]) -> list[Any]:
        """Backend hook: run ``ops`` in order in one round trip."""

    async def __aenter__(self) -> Batch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.execute()


# --------------------------------------------------------------------------
# Publish/subscribe

SUBSCRIPTION_BUFFER = 1024
"""Messages a subscription holds before it drops the oldest (the memory store; Redis has its own limits)."""


class Subscription(ABC):
    """Messages published on one channel, from the moment :meth:`StateStore.subscribe` returned.

    ``async for message in sub`` yields each message's bytes and ends once the
    subscription is closed. A lost connection raises :class:`StateUnavailable`
    from :meth:`get` (and from the iteration): subscribe again, and poll for
    what may have been missed meanwhile.
    """

    channel: str

    @abstractmethod
    async def get(self, timeout: float | None = None) -> bytes | None:
        """The next message; None after ``timeout`` seconds without one, or once closed."""

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @abstractmethod
    async def close(self) -> None:
        """Unsubscribe; a waiting :meth:`get` returns None. Idempotent."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.closed:
            message = await self.get(timeout=None)
            if message is not None:
                yield message

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class QueueSubscription(Subscription):
    """A subscription fed through a bounded queue (the oldest message goes when it is full)."""

    def __init__(self, channel: str, on_close: Callable[[QueueSubscription], None] | None = None,
                 maxsize: int = SUBSCRIPTION_BUFFER) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize + 1)  # +1: room for the wake-up
        self._maxsize = maxsize
        self._on_close = on_close
        self._closed = False
        self.dropped = 0

    def deliver(self, message: bytes) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= self._maxsize:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(message)

    @property
    def closed(self) -> bool:
        return self._closed

    async def get(self, timeout: float | None = None) -> bytes | None:
        if self._closed:
            return None
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()  # None: closed while waiting
        except TimeoutError:
            return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close(self)
        self._queue.put_nowait(None)


# --------------------------------------------------------------------------
# The interface


@runtime_checkable
class StateStore(Protocol):
    """Async key-value state shared by gateway replicas; see the module docstring."""

    async def get(self, key: str) -> bytes | None:
        """The value of a string key, or None when absent or expired."""
        ...

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of several keys in one round trip; None for absent or non-string keys."""
        ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a value, replacing any value and TTL; no TTL means it never expires."""
        ...

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        """Atomically store a value only if the key is absent; True if it was stored."""
        ...

    async def get_or_set(self, key: str, value: bytes, ttl: float | None) -> bytes:
        """Atomically store a value if the key is absent; the value the key holds afterwards
        (the first writer's): "first seen", "first user agent of the session" in one operation."""
        ...

    async def getdel(self, key: str) -> bytes | None:
        """Atomically read and delete a string key (consume a single-use token)."""
        ...

    async def delete(self, *keys: str) -> int:
        """Delete keys of any kind; return how many existed."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add to a counter (created at 0); the TTL is set only when this creates it."""
        ...

    async def sadd(self, key: str, member: str, ttl: float | None = None) -> int:
        """Add a member to a set; return 1 if new, 0 if present. A TTL is refreshed."""
        ...

    async def scard(self, key: str) -> int:
        """Number of members of a set (0 when absent)."""
        ...

    async def sismember(self, key: str, member: str) -> bool:
        """Whether ``member`` is in the set."""
        ...

    async def smembers(self, key: str) -> list[str]:
        """Every member of a set, sorted; [] when absent. For small sets (an index), not for hot paths."""
        ...

    async def srem(self, key: str, member: str) -> int:
        """Remove a member from a set; return 1 if it was there, else 0. An emptied set is deleted."""
        ...

    async def zadd_window(self, key: str, member: str, score: float, window: float) -> int:
        """Record an event and count those in the sliding window, atomically.

        Adds ``member`` with ``score`` (seconds, e.g. a wall-clock timestamp),
        drops members scoring below ``score - window``, returns how many are
        left, and lets the key expire after ``window`` seconds of quiet.
        Members must be unique per event (a request id): re-adding one moves it.
        """
        ...

    async def hincrby(self, key: str, field: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add to one field of a hash (created at 0); return its new value. A TTL is refreshed."""
        ...

    async def hgetall(self, key: str) -> dict[str, bytes]:
        """Every field of a hash and its value as bytes (counters as decimal text); {} when absent."""
        ...

    async def push_capped(self, key: str, value: bytes, cap: int, ttl: float | None = None) -> int:
        """Append to a list and keep only its newest ``cap`` elements; return its length. A TTL is refreshed."""
        ...

    async def lrange(self, key: str) -> list[bytes]:
        """Every element of a list, oldest first; [] when absent."""
        ...

    async def token_bucket(self, key: str, rate: float, burst: float, now: float,
                           cost: float = 1) -> tuple[bool, float]:
        """Take ``cost`` tokens from a token bucket, atomically: (allowed, retry_after seconds).

        The bucket holds at most ``burst`` tokens and refills at ``rate`` tokens a
        second of ``now`` (the caller's clock, seconds; replicas should share wall
        time). An absent bucket is full; a refused request takes nothing and
        ``retry_after`` says when ``cost`` tokens will be there (0.0 when allowed).
        The key expires once the bucket would be full again (burst / rate seconds).
        ``rate`` > 0, ``burst`` >= 1, 0 < ``cost`` <= ``burst``, all finite, or ValueError.
        """
        ...

    async def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` to the channel's current subscribers (in every replica); how many got it."""
        ...

    async def subscribe(self, channel: str) -> Subscription:
        """A new :class:`Subscription`, registered by the time this returns."""
        ...

    async def ping(self) -> bool:
        """True when the store answers; False (never an exception) when it does not."""
        ...

    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...

    def batch(self) -> Batch:
        """A new :class:`Batch` that runs its operations in one round trip."""
        ...
