"""Redis state store: the backend gateway replicas share.

Design choices, each for the per-request budget of one or two round trips:

* Every operation, and every batch however many operations it holds, is ONE
  Redis command: ``EVALSHA`` of one script (``_BATCH``) that runs the
  operations in order, each under ``pcall`` so a wrong-kind key fails that
  operation alone. redis-py spends tens of microseconds of client CPU per
  pipelined command (packing, a deadline per reply), and a request's state
  round holds about ten operations; as one command it pays that once. The
  script is atomic: no other client's command runs between a batch's
  operations (stronger than a pipeline; in a Redis Cluster every key of a
  batch would have to share a hash slot, which this store does not support).
  A Redis that lacks the script (restarted, flushed) answers ``NOSCRIPT``
  without running anything, and the batch is sent once more with ``EVAL``,
  which caches it.
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
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError

from gateway.config import StateConfig
from gateway.state.base import (
    Batch,
    Op,
    StateTypeError,
    StateUnavailable,
    Subscription,
    check_bucket,
    ttl_ms,
)

__all__ = ["RedisStore"]

T = TypeVar("T")

# A whole batch as one script: one command and one reply however many operations it holds
# (redis-py spends ~20-60 us of client CPU per pipelined command here; a request's state
# round holds about ten). KEYS: every key of the batch in order; ARGV: for each operation
# its name, then its arguments (variable-length ones preceded by their count). Each
# operation runs under pcall, so a wrong-kind key fails that operation alone, as in a
# pipeline; the reply holds {err = message} in its place. nil results travel as false.
_BATCH = """
local out, k, a = {}, 0, 0
local function key() k = k + 1; return KEYS[k] end
local function arg() a = a + 1; return ARGV[a] end
local function n(x) return tonumber(x) end
local ops = {}
ops.get = function() return redis.call('GET', key()) end
ops.mget = function()
  local keys = {}
  for i = 1, n(arg()) do keys[i] = key() end
  if #keys == 0 then return {} end
  return redis.call('MGET', unpack(keys))
end
ops.set = function()
  local kk, v, ms = key(), arg(), arg()
  if ms == '' then redis.call('SET', kk, v) else redis.call('SET', kk, v, 'PX', ms) end
  return 1
end
ops.set_if_absent = function()
  local kk, v, ms = key(), arg(), arg()
  local r
  if ms == '' then r = redis.call('SET', kk, v, 'NX') else r = redis.call('SET', kk, v, 'NX', 'PX', ms) end
  if r then return 1 end
  return 0
end
ops.get_or_set = function()
  local kk, v, ms = key(), arg(), arg()
  local old
  if ms == '' then
    old = redis.call('SET', kk, v, 'NX', 'GET')
  else
    old = redis.call('SET', kk, v, 'NX', 'PX', ms, 'GET')
  end
  if old then return old end
  return v
end
ops.getdel = function() return redis.call('GETDEL', key()) end
ops.delete = function()
  local keys = {}
  for i = 1, n(arg()) do keys[i] = key() end
  if #keys == 0 then return 0 end
  return redis.call('DEL', unpack(keys))
end
ops.incr = function()
  local kk, amount, ms = key(), arg(), arg()
  local created = redis.call('EXISTS', kk) == 0
  local v = redis.call('INCRBY', kk, amount)
  if created and ms ~= '' then redis.call('PEXPIRE', kk, ms) end
  return v
end
ops.sadd = function()
  local kk, member, ms = key(), arg(), arg()
  local v = redis.call('SADD', kk, member)
  if ms ~= '' then redis.call('PEXPIRE', kk, ms) end
  return v
end
ops.scard = function() return redis.call('SCARD', key()) end
ops.sismember = function() return redis.call('SISMEMBER', key(), arg()) end
ops.smembers = function() return redis.call('SMEMBERS', key()) end
ops.srem = function() return redis.call('SREM', key(), arg()) end
ops.zadd_window = function()
  local kk, score, member, lowest, ms = key(), arg(), arg(), arg(), arg()
  redis.call('ZADD', kk, score, member)
  redis.call('ZREMRANGEBYSCORE', kk, '-inf', '(' .. lowest)
  redis.call('PEXPIRE', kk, ms)
  return redis.call('ZCARD', kk)
end
ops.hincrby = function()
  local kk, field, amount, ms = key(), arg(), arg(), arg()
  local v = redis.call('HINCRBY', kk, field, amount)
  if ms ~= '' then redis.call('PEXPIRE', kk, ms) end
  return v
end
ops.hgetall = function() return redis.call('HGETALL', key()) end
ops.push_capped = function()
  local kk, value, cap, ms = key(), arg(), n(arg()), arg()
  redis.call('RPUSH', kk, value)
  redis.call('LTRIM', kk, -cap, -1)
  if ms ~= '' then redis.call('PEXPIRE', kk, ms) end
  return redis.call('LLEN', kk)
end
ops.lrange = function() return redis.call('LRANGE', key(), 0, -1) end
ops.token_bucket = function()
  local kk = key()
  local rate, burst, now, cost, ms = n(arg()), n(arg()), n(arg()), n(arg()), arg()
  local v = redis.call('HMGET', kk, 'tk', 'ts')
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
  redis.call('HSET', kk, 'tk', string.format('%.17g', tokens), 'ts', string.format('%.17g', stamp))
  redis.call('PEXPIRE', kk, ms)
  return {allowed, string.format('%.17g', wait)}
end
local i = 0
while a < #ARGV do
  local op = ops[arg()]
  local ok, res = pcall(op)
  i = i + 1
  if ok then
    if res == nil then res = false end
    out[i] = res
  else
    if type(res) == 'table' and res.err then out[i] = res else out[i] = {err = tostring(res)} end
  end
end
return out
"""
_BATCH_SHA = hashlib.sha1(_BATCH.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


def _ms(ttl: float | None) -> int | str:
    ms = ttl_ms(ttl)
    return "" if ms is None else ms


class _Encoder:
    """Each operation's keys and arguments for the batch script, and how to read its result."""

    def get(self, key: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [], _as_is

    def mget(self, keys: Sequence[str]) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return list(keys), [len(keys)], _as_list

    def set(self, key: str, value: bytes, ttl: float | None) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [value, _ms(ttl)], _as_none

    def set_if_absent(self, key: str, value: bytes,
                      ttl: float | None) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [value, _ms(ttl)], _as_bool

    def get_or_set(self, key: str, value: bytes,
                   ttl: float | None) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [value, _ms(ttl)], _as_is

    def getdel(self, key: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [], _as_is

    def delete(self, *keys: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return list(keys), [len(keys)], _as_int

    def incr(self, key: str, amount: int, ttl: float | None) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [amount, _ms(ttl)], _as_int

    def sadd(self, key: str, member: str, ttl: float | None) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [member, _ms(ttl)], _as_int

    def scard(self, key: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [], _as_int

    def sismember(self, key: str, member: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [member], _as_bool

    def smembers(self, key: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [], _as_members

    def srem(self, key: str, member: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [member], _as_int

    def zadd_window(self, key: str, member: str, score: float,
                    window: float) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [repr(float(score)), member, repr(float(score - window)), ttl_ms(window)], _as_int

    def hincrby(self, key: str, field: str, amount: int,
                ttl: float | None) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [field, amount, _ms(ttl)], _as_int

    def hgetall(self, key: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [], _as_hash

    def push_capped(self, key: str, value: bytes, cap: int,
                    ttl: float | None) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [value, cap, _ms(ttl)], _as_int

    def lrange(self, key: str) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        return [key], [], _as_list

    def token_bucket(self, key: str, rate: float, burst: float, now: float,
                     cost: float) -> tuple[list[str], list[Any], Callable[[Any], Any]]:
        ms = ttl_ms(check_bucket(rate, burst, now, cost))
        return [key], [repr(float(rate)), repr(float(burst)), repr(float(now)), repr(float(cost)), ms], _as_bucket


_ENCODER = _Encoder()


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

    async def _single(self, name: str, *args: Any) -> Any:
        """One operation: a batch of one (the same script, so both paths behave alike)."""
        batch = _RedisBatch(self)
        pending = getattr(batch, name)(*args)
        await batch.execute()
        return pending.value

    # -- the StateStore interface -------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._single("get", key)
        return result

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        result: list[bytes | None] = await self._single("mget", keys)
        return result

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._single("set", key, value, ttl)

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        result: bool = await self._single("set_if_absent", key, value, ttl)
        return result

    async def get_or_set(self, key: str, value: bytes, ttl: float | None) -> bytes:
        result: bytes = await self._single("get_or_set", key, value, ttl)
        return result

    async def getdel(self, key: str) -> bytes | None:
        result: bytes | None = await self._single("getdel", key)
        return result

    async def delete(self, *keys: str) -> int:
        result: int = await self._single("delete", *keys)
        return result

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        result: int = await self._single("incr", key, amount, ttl)
        return result

    async def sadd(self, key: str, member: str, ttl: float | None = None) -> int:
        result: int = await self._single("sadd", key, member, ttl)
        return result

    async def scard(self, key: str) -> int:
        result: int = await self._single("scard", key)
        return result

    async def sismember(self, key: str, member: str) -> bool:
        result: bool = await self._single("sismember", key, member)
        return result

    async def smembers(self, key: str) -> list[str]:
        result: list[str] = await self._single("smembers", key)
        return result

    async def srem(self, key: str, member: str) -> int:
        result: int = await self._single("srem", key, member)
        return result

    async def zadd_window(self, key: str, member: str, score: float, window: float) -> int:
        result: int = await self._single("zadd_window", key, member, score, window)
        return result

    async def hincrby(self, key: str, field: str, amount: int = 1, ttl: float | None = None) -> int:
        result: int = await self._single("hincrby", key, field, amount, ttl)
        return result

    async def hgetall(self, key: str) -> dict[str, bytes]:
        result: dict[str, bytes] = await self._single("hgetall", key)
        return result

    async def push_capped(self, key: str, value: bytes, cap: int, ttl: float | None = None) -> int:
        result: int = await self._single("push_capped", key, value, cap, ttl)
        return result

    async def lrange(self, key: str) -> list[bytes]:
        result: list[bytes] = await self._single("lrange", key)
        return result

    async def token_bucket(self, key: str, rate: float, burst: float, now: float,
                           cost: float = 1) -> tuple[bool, float]:
        result: tuple[bool, float] = await self._single("token_bucket", key, rate, burst, now, cost)
        return result

    async def publish(self, channel: str, message: bytes) -> int:
        result = await self._guard(self._send("PUBLISH", self.prefix + channel, message))
        return int(result)

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
        """The whole batch as one EVALSHA of the batch script (EVAL when Redis lacks it)."""
        store = self._store
        prefix = store.prefix
        keys: list[str] = []
        argv: list[Any] = []
        converters: list[Callable[[Any], Any]] = []
        local: dict[int, Any] = {}
        for i, (name, args, _) in enumerate(ops):
            if (name == "delete" and not args) or (name == "mget" and not args[0]):
                local[i] = 0 if name == "delete" else []  # known without asking Redis
                continue
            op_keys, op_args, convert = getattr(_ENCODER, name)(*args)
            keys.extend(prefix + k for k in op_keys)
            argv.append(name)
            argv.extend(op_args)
            converters.append(convert)
        if not converters:
            return [local[i] for i in range(len(ops))]
        try:
            raw = await store._guard(store._send("EVALSHA", _BATCH_SHA, len(keys), *keys, *argv))
        except StateUnavailable as exc:
            # NOSCRIPT: nothing ran (a restarted or flushed Redis); send the body once, which caches it.
            if not isinstance(exc.__cause__, NoScriptError):
                raise
            raw = await store._guard(store._send("EVAL", _BATCH, len(keys), *keys, *argv))
        replies = iter(zip(converters, raw, strict=True))
        out = []
        for i in range(len(ops)):
            if i in local:
                out.append(local[i])
                continue
            convert, reply = next(replies)
            if isinstance(reply, ResponseError):
                text = str(reply)
                if "WRONGTYPE" in text or "not an integer" in text or "overflow" in text:
                    raise StateTypeError(text)
                raise StateUnavailable(f"Redis at {store._where} refused: {text}")
            out.append(convert(reply))
        return out


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
