"""Redis state store: the backend gateway replicas share.

Design choices, each for the per-request budget of one or two round trips:

* Every operation is one Redis command. Those needing several steps to be
  atomic (an ``INCRBY`` whose TTL is set only on creation, ``SADD`` with a
  refreshed TTL, the sliding window's add/trim/count/expire) are small Lua
  scripts. They are sent with ``EVAL``, not ``EVALSHA``: redis-py checks
  pipeline scripts with an extra ``SCRIPT EXISTS`` round trip, and retrying
  after ``NOSCRIPT`` would reorder a batch. The bodies are a few hundred bytes
  and Redis caches their compiled form.
* Batches are pipelines with ``transaction=False``: one write, one read.
* No client-side retries: retrying ``INCR`` after a lost reply would count
  twice, and a gateway waiting for Redis is worse than one failing fast to the
  route's fail mode. A stale pooled connection is still replaced by redis-py
  before use. Socket, connect and pool-wait timeouts all come from
  ``timeout``, and each call also runs under an overall ``timeout`` deadline
  (cancellation makes redis-py drop the connection, so no reply is ever read
  by the wrong caller).
* Every redis/socket failure becomes :class:`StateUnavailable`; ``WRONGTYPE``
  and "not an integer" become :class:`StateTypeError`, like the memory store.
* Each subscription holds its own connection (outside the command pool, so a
  subscriber never starves requests), pinged every ``_PUBSUB_HEALTH`` seconds
  while idle so a dead server is noticed; a lost connection raises
  :class:`StateUnavailable` from the subscription and is not re-established
  here: the consumer subscribes again and polls what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from gateway.config import StateConfig
from gateway.state.base import (
    Batch,
    Op,
    StateTypeError,
    StateUnavailable,
    Subscription,
    check_bucket,
    check_cap,
    check_score,
    ttl_ms,
)

__all__ = ["RedisStore"]

T = TypeVar("T")

# KEYS[1] counter; ARGV[1] amount, ARGV[2] ttl in ms.
_INCR_TTL = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if created then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""

# KEYS[1] set; ARGV[1] member, ARGV[2] ttl in ms.
_SADD_TTL = """
local n = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""

# KEYS[1] sorted set; ARGV[1] score, ARGV[2] member, ARGV[3] lowest score kept,
# ARGV[4] window in ms (an idle window expires on its own).
_ZADD_WINDOW = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] hash; ARGV[1] field, ARGV[2] amount, ARGV[3] ttl in ms.
_HINCRBY_TTL = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
"""

# KEYS[1] list; ARGV[1] value, ARGV[2] cap, ARGV[3] ttl in ms (0: none).
_PUSH_CAPPED = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return redis.call('LLEN', KEYS[1])
"""

# KEYS[1] hash {tk: tokens, ts: stamp}; ARGV[1] rate, ARGV[2] burst, ARGV[3] now, ARGV[4] cost,
# ARGV[5] ttl in ms. gateway/state/base.py bucket_take in Lua; numbers travel as %.17g text
# (a Lua number in a reply would be truncated to an integer).
_TOKEN_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens, stamp = tonumber(v[1]), tonumber(v[2])
if tokens == nil or stamp == nil then
  tokens, stamp = burst, now
elseif now > stamp then
  tokens, stamp = math.min(burst, tokens + (now - stamp) * rate), now
end
local allowed, wait = 0, 0
if tokens >= cost then
  tokens, allowed = tokens - cost, 1
else
  wait = (cost - tokens) / rate + math.max(0, stamp - now)
end
redis.call('HSET', KEYS[1], 'tk', string.format('%.17g', tokens), 'ts', string.format('%.17g', stamp))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {allowed, string.format('%.17g', wait)}
"""


_PUBSUB_HEALTH = 10.0
"""Seconds of quiet after which a subscription's connection is pinged."""
_PUBSUB_SLICE = 1.0
"""A waiting subscription reads in slices this long, so close and health checks get a turn."""


def _as_int(raw: Any) -> int:
    return int(raw)


def _as_bool(raw: Any) -> bool:
    return bool(raw)


def _as_none(raw: Any) -> None:
    return None


def _as_is(raw: Any) -> Any:
    return raw


def _as_list(raw: Any) -> list[bytes | None]:
    return list(raw)


def _as_bucket(raw: Any) -> tuple[bool, float]:
    return bool(int(raw[0])), float(raw[1])


def _as_members(raw: Any) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)


def _as_hash(raw: Any) -> dict[str, bytes]:
    items = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in items}


@dataclass(frozen=True, slots=True)
class _Cmd:
    """One operation as a Redis command and how to read its reply.

    ``args`` None means the answer is known without asking Redis (``delete()``
    of no keys, ``mget([])``), and is ``constant``.
    """

    args: tuple[Any, ...] | None
    convert: Callable[[Any], Any] = _as_is
    constant: Any = None


class _Commands:
    """Builds the command for each operation, with the key prefix applied."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def get(self, key: str) -> _Cmd:
        return _Cmd(("GET", self.prefix + key))

    def mget(self, keys: Sequence[str]) -> _Cmd:
        if not keys:
            return _Cmd(None, constant=[])
        return _Cmd(("MGET", *(self.prefix + k for k in keys)), _as_list)

    def set(self, key: str, value: bytes, ttl: float | None) -> _Cmd:
        ms = ttl_ms(ttl)
        expiry = ("PX", ms) if ms is not None else ()
        return _Cmd(("SET", self.prefix + key, value, *expiry), _as_none)

    def set_if_absent(self, key: str, value: bytes, ttl: float | None) -> _Cmd:
        ms = ttl_ms(ttl)
        expiry = ("PX", ms) if ms is not None else ()
        return _Cmd(("SET", self.prefix + key, value, "NX", *expiry), _as_bool)

    def getdel(self, key: str) -> _Cmd:
        return _Cmd(("GETDEL", self.prefix + key))

    def delete(self, *keys: str) -> _Cmd:
        if not keys:
            return _Cmd(None, constant=0)
        return _Cmd(("DEL", *(self.prefix + k for k in keys)), _as_int)

    def incr(self, key: str, amount: int, ttl: float | None) -> _Cmd:
        ms = ttl_ms(ttl)
        if ms is None:
            return _Cmd(("INCRBY", self.prefix + key, amount), _as_int)
        return _Cmd(("EVAL", _INCR_TTL, 1, self.prefix + key, amount, ms), _as_int)

    def sadd(self, key: str, member: str, ttl: float | None) -> _Cmd:
        ms = ttl_ms(ttl)
        if ms is None:
            return _Cmd(("SADD", self.prefix + key, member), _as_int)
        return _Cmd(("EVAL", _SADD_TTL, 1, self.prefix + key, member, ms), _as_int)

    def scard(self, key: str) -> _Cmd:
        return _Cmd(("SCARD", self.prefix + key), _as_int)

    def sismember(self, key: str, member: str) -> _Cmd:
        return _Cmd(("SISMEMBER", self.prefix + key, member), _as_bool)

    def smembers(self, key: str) -> _Cmd:
        return _Cmd(("SMEMBERS", self.prefix + key), _as_members)

    def srem(self, key: str, member: str) -> _Cmd:
        return _Cmd(("SREM", self.prefix + key, member), _as_int)

    def zadd_window(self, key: str, member: str, score: float, window: float) -> _Cmd:
        check_score(score, window)
        ms = ttl_ms(window)
        args = (repr(float(score)), member, repr(float(score - window)), ms)
        return _Cmd(("EVAL", _ZADD_WINDOW, 1, self.prefix + key, *args), _as_int)

    def hincrby(self, key: str, field: str, amount: int, ttl: float | None) -> _Cmd:
        ms = ttl_ms(ttl)
        if ms is None:
            return _Cmd(("HINCRBY", self.prefix + key, field, amount), _as_int)
        return _Cmd(("EVAL", _HINCRBY_TTL, 1, self.prefix + key, field, amount, ms), _as_int)

    def hgetall(self, key: str) -> _Cmd:
        return _Cmd(("HGETALL", self.prefix + key), _as_hash)

    def push_capped(self, key: str, value: bytes, cap: int, ttl: float | None) -> _Cmd:
        check_cap(cap)
        ms = ttl_ms(ttl) or 0
        return _Cmd(("EVAL", _PUSH_CAPPED, 1, self.prefix + key, value, cap, ms), _as_int)

    def lrange(self, key: str) -> _Cmd:
        return _Cmd(("LRANGE", self.prefix + key, 0, -1), _as_list)

    def token_bucket(self, key: str, rate: float, burst: float, now: float, cost: float) -> _Cmd:
        ms = ttl_ms(check_bucket(rate, burst, now, cost))
        args = (repr(float(rate)), repr(float(burst)), repr(float(now)), repr(float(cost)), ms)
        return _Cmd(("EVAL", _TOKEN_BUCKET, 1, self.prefix + key, *args), _as_bucket)


def _redacted(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore:
    """A :class:`~gateway.state.base.StateStore` on a Redis server.

    ``connection_class`` lets tests wrap the socket layer (to count round trips);
    production leaves it to the URL scheme (``redis://``, ``rediss://``, ``unix://``).
    """

    def __init__(
        self,
        url: str,
        prefix: str = "",
        timeout: float = 0.5,
        *,
        max_connections: int = 64,
        connection_class: type[AbstractConnection] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive (got {timeout!r})")
        self.prefix = prefix
        self.timeout = timeout
        self._where = _redacted(url)
        self._cmds = _Commands(prefix)
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "timeout": timeout,  # waiting for a free pooled connection
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if connection_class is not None:
            options["connection_class"] = connection_class
        self._url = url
        self._subscriptions: set[_RedisSubscription] = set()
        self._pool = BlockingConnectionPool.from_url(url, **options)
        self._client = Redis(connection_pool=self._pool)
        # redis-py leaves execute_command unannotated; it is a coroutine here.
        self._send = cast(Callable[..., Awaitable[Any]], self._client.execute_command)

    @classmethod
    def from_config(cls, cfg: StateConfig) -> RedisStore:
        return cls(cfg.url, cfg.prefix, cfg.timeout)

    # -- plumbing ---------------------------------------------------------------

    async def _guard(self, call: Awaitable[T]) -> T:
        """Await a redis-py call under the deadline, translating its failures."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except ReadOnlyError as exc:  # a replica after failover: unusable for writes
            raise StateUnavailable(f"Redis at {self._where} is read-only") from exc
        except ResponseError as exc:
            text = str(exc)
            if "WRONGTYPE" in text or "not an integer" in text or "overflow" in text:
                raise StateTypeError(text) from exc
            raise StateUnavailable(f"Redis at {self._where} refused: {text}") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            raise StateUnavailable(f"Redis at {self._where}: {detail}") from exc

    async def _one(self, cmd: _Cmd) -> Any:
        if cmd.args is None:
            return cmd.constant
        raw = await self._guard(self._send(*cmd.args))
        return cmd.convert(raw)

    # -- the StateStore interface -------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._one(self._cmds.get(key))
        return result

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        result: list[bytes | None] = await self._one(self._cmds.mget(keys))
        return result

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._one(self._cmds.set(key, value, ttl))

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        result: bool = await self._one(self._cmds.set_if_absent(key, value, ttl))
        return result

    async def getdel(self, key: str) -> bytes | None:
        result: bytes | None = await self._one(self._cmds.getdel(key))
        return result

    async def delete(self, *keys: str) -> int:
        result: int = await self._one(self._cmds.delete(*keys))
        return result

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        result: int = await self._one(self._cmds.incr(key, amount, ttl))
        return result

    async def sadd(self, key: str, member: str, ttl: float | None = None) -> int:
        result: int = await self._one(self._cmds.sadd(key, member, ttl))
        return result

    async def scard(self, key: str) -> int:
        result: int = await self._one(self._cmds.scard(key))
        return result

    async def sismember(self, key: str, member: str) -> bool:
        result: bool = await self._one(self._cmds.sismember(key, member))
        return result

    async def smembers(self, key: str) -> list[str]:
        result: list[str] = await self._one(self._cmds.smembers(key))
        return result

    async def srem(self, key: str, member: str) -> int:
        result: int = await self._one(self._cmds.srem(key, member))
        return result

    async def zadd_window(self, key: str, member: str, score: float, window: float) -> int:
        result: int = await self._one(self._cmds.zadd_window(key, member, score, window))
        return result

    async def hincrby(self, key: str, field: str, amount: int = 1, ttl: float | None = None) -> int:
        result: int = await self._one(self._cmds.hincrby(key, field, amount, ttl))
        return result

    async def hgetall(self, key: str) -> dict[str, bytes]:
        result: dict[str, bytes] = await self._one(self._cmds.hgetall(key))
        return result

    async def push_capped(self, key: str, value: bytes, cap: int, ttl: float | None = None) -> int:
        result: int = await self._one(self._cmds.push_capped(key, value, cap, ttl))
        return result

    async def lrange(self, key: str) -> list[bytes]:
        result: list[bytes] = await self._one(self._cmds.lrange(key))
        return result

    async def token_bucket(self, key: str, rate: float, burst: float, now: float,
                           cost: float = 1) -> tuple[bool, float]:
        result: tuple[bool, float] = await self._one(self._cmds.token_bucket(key, rate, burst, now, cost))
        return result

    async def publish(self, channel: str, message: bytes) -> int:
        result: int = await self._one(_Cmd(("PUBLISH", self.prefix + channel, message), _as_int))
        return result

    async def subscribe(self, channel: str) -> Subscription:
        sub = _RedisSubscription(self, channel)
        await sub._start()
        self._subscriptions.add(sub)
        return sub

    async def ping(self) -> bool:
        try:
            return bool(await self._guard(self._send("PING")))
        except StateUnavailable:
            return False

    async def close(self) -> None:
        for sub in list(self._subscriptions):
            await sub.close()
        await self._client.aclose()
        await self._pool.disconnect()

    def batch(self) -> Batch:
        return _RedisBatch(self)


class _RedisBatch(Batch):
    def __init__(self, store: RedisStore) -> None:
        super().__init__()
        self._store = store

    async def _run(self, ops: Sequence[Op]) -> list[Any]:
        store = self._store
        cmds = [getattr(store._cmds, name)(*args) for name, args, _ in ops]
        sent = [c for c in cmds if c.args is not None]
        raw: list[Any] = []
        if sent:
            async with store._client.pipeline(transaction=False) as pipe:
                queue = cast(Callable[..., object], pipe.execute_command)
                for c in sent:
                    queue(*c.args)
                raw = await store._guard(pipe.execute())
        replies = iter(raw)
        return [c.constant if c.args is None else c.convert(next(replies)) for c in cmds]


def _client_name(channel: str) -> str:
    """``CLIENT LIST`` shows which channel a connection serves (names cannot hold spaces)."""
    return "portcullis-sub:" + "".join(c if c.isprintable() and not c.isspace() else "_" for c in channel)[:200]


class _RedisSubscription(Subscription):
    """One SUBSCRIBE on a connection of its own."""

    def __init__(self, store: RedisStore, channel: str) -> None:
        self.channel = channel
        self._store = store
        self._name = (store.prefix + channel).encode()
        self._client = Redis.from_url(
            store._url, socket_timeout=store.timeout, socket_connect_timeout=store.timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=_PUBSUB_HEALTH,
            client_name=_client_name(store.prefix + channel))
        self._pubsub: PubSub = self._client.pubsub()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def _start(self) -> None:
        """SUBSCRIBE and wait for Redis to confirm it: from then on nothing published is missed."""
        where = self._store._where
        try:
            async with asyncio.timeout(self._store.timeout):
                await self._pubsub.subscribe(self._name)
                while True:
                    msg = await self._pubsub.get_message(timeout=self._store.timeout)
                    if msg is not None and msg.get("type") == "subscribe":
                        return
        except (RedisError, OSError, TimeoutError) as exc:
            await self._release()
            detail = str(exc) or type(exc).__name__
            raise StateUnavailable(f"Redis at {where}: cannot subscribe: {detail}") from exc

    async def get(self, timeout: float | None = None) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            left = _PUBSUB_SLICE if deadline is None else min(_PUBSUB_SLICE, deadline - loop.time())
            try:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=max(0.0, left))
            except (RedisError, OSError, TimeoutError) as exc:
                if self._closed:
                    return None
                detail = str(exc) or type(exc).__name__
                raise StateUnavailable(f"Redis at {self._store._where}: subscription lost: {detail}") from exc
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py's read timeout can swallow a cancellation that lands with it (3.11's
                # asyncio.timeout): honour it here, or the caller's task never stops.
                raise asyncio.CancelledError
            if msg is not None and msg.get("type") == "message":
                data = msg["data"]
                return bytes(data) if not isinstance(data, bytes) else data
            if deadline is not None and loop.time() >= deadline:
                return None
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store._subscriptions.discard(self)
        await self._release()

    async def _release(self) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._client.aclose()
