"""Rate limits and the failed-login lockout, on the request's state round.

``rate_limit`` (before the state round) queues one ``token_bucket`` per bucket
of the route (gateway/config.py ``RateLimit``): by ``route`` (all callers), by
``account`` (the route's account, else the token's subject; on a login route
the account logging in) and by ``ip`` (the client IP as the ingress derived
it, from trusted proxies only; IPv6 by /64, which one customer's line holds).
The check after the round refuses with 429 ``rate_limited`` and
``Retry-After`` (whole seconds, rounded up) when any bucket is empty. No
round trip of its own: the buckets travel with DPoP replay and the risk
engine's reads. A refused request takes no token from the refusing bucket;
the other buckets of the same request keep what it took (conservative).

Login routes (``login = true``, public tier): ``login_attempt`` names the
account logging in (``login_field``, a JSON body member: the body is buffered,
parsed and forwarded re-serialised, so the backend reads the very account the
gateway counted; or ``login_param``, a path parameter), normalised (trimmed,
case-folded: a lock is never dodged by spelling the name differently), and
queues a read of the lock of (account, client IP). ``login_outcome`` (after
forwarding) counts a failed answer (401/403 by default) in a sliding window per
(account, IP) and, at ``max_failures``, writes the lock: that IP is refused
with 429 ``login_locked`` for ``lock_time`` on that account, other IPs still
log in to it and that IP still logs in to other accounts. Each failure is
also counted for the risk engine (``recent_auth_failures``). Recording a
failure costs one round trip after the backend answered (a successful login
costs none) and never changes the backend's answer.

Keys (under the store's prefix; every one has a TTL): ``rl:<route>:<i>:<who>``
(token bucket, burst / rate), ``login:fail:<ip>:<account>`` (sliding window,
``window``), ``login:lock:<ip>:<account>`` (the unlock time, ``lock_time``).
Times are the gateway's wall clock (``ctx.now``), so replicas agree.

Store down: routes that fail closed answer 503 before any check; on routes
that fail open each bucket and lock falls back to this process's bounded
memory (:class:`LocalBuckets`, :class:`LocalLockouts`), which is never "no
limit at all". Failures are always recorded locally too, so a lockout holds
in the process that saw them while the store is away.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Sequence
from typing import Any

import orjson

from gateway import logs
from gateway.config import LoginLockoutConfig, RateLimit, RateLimitsConfig
from gateway.context import RequestContext
from gateway.errors import (
    BAD_REQUEST,
    INVALID_JSON,
    LOGIN_LOCKED,
    RATE_LIMITED,
    UNSUPPORTED_MEDIA_TYPE,
    GatewayError,
)
from gateway.proxy import BoundedBody
from gateway.state.base import Pending, StateStore, StateUnavailable, bucket_take, stored_float
from gateway.steps.state_round import after_round, state_batch

log = logging.getLogger("portcullis.rate_limit")

MAX_LOGIN_NAME = 256
MAX_RETRY_AFTER = 30 * 86_400


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1 and bounded."""
    if not math.isfinite(seconds):
        return str(MAX_RETRY_AFTER)
    return str(min(MAX_RETRY_AFTER, max(1, math.ceil(seconds))))


@functools.lru_cache(maxsize=8192)
def ip_bucket(ip: str) -> str:
    """The address a per-IP bucket counts: IPv4 as is, IPv6 by its /64 (one customer's line)."""
    if ":" not in ip:
        return ip
    try:
        net = ipaddress.IPv6Network((ip, 64), strict=False)
    except ValueError:
        return ip
    return f"{net.network_address}/64"


def login_name(value: Any) -> str | None:
    """The account a login names, normalised; None when it is not a usable name."""
    if not isinstance(value, str):
        return None
    name = value.strip().casefold()
    if not name or len(name) > MAX_LOGIN_NAME or not name.isprintable():
        return None
    return name


# --------------------------------------------------------------------------
# This process's fallback while the state store cannot answer


class LocalBuckets:
    """Token buckets in this process, the least recently used dropped beyond ``size``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        held = self._buckets.get(key)
        tokens, stamp, allowed, wait = bucket_take(
            held[0] if held else None, held[1] if held else None, rate, burst, now, 1.0)
        self._buckets[key] = (tokens, stamp)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._size:
            self._buckets.popitem(last=False)
        return allowed, wait


class LocalLockouts:
    """Failed logins and locks per (IP, account) in this process, bounded like :class:`LocalBuckets`."""

    def __init__(self, config: LoginLockoutConfig, size: int) -> None:
        self._config = config
        self._size = size
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locks: OrderedDict[str, float] = OrderedDict()

    def fail(self, key: str, now: float) -> int:
        """Record a failure; return the failures within the window."""
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self._config.max_failures)
        times.append(now)
        self._failures.move_to_end(key)
        if len(self._failures) > self._size:
            self._failures.popitem(last=False)
        floor = now - self._config.window
        return sum(1 for t in times if t >= floor)

    def lock(self, key: str, until: float) -> None:
        self._locks[key] = max(until, self._locks.get(key, until))
        self._locks.move_to_end(key)
        if len(self._locks) > self._size:
            self._locks.popitem(last=False)

    def locked_until(self, key: str) -> float | None:
        return self._locks.get(key)


# --------------------------------------------------------------------------
# Steps


class RateLimits:
    """Queue the route's buckets on the state round; refuse with 429 after it."""

    name = "rate_limit"

    def __init__(self, store: StateStore, local: LocalBuckets) -> None:
        self._store = store
        self.local = local

    def __call__(self, ctx: RequestContext) -> None:
        limits = ctx.route.rate_limits
        if not limits:
            return
        batch = state_batch(ctx, self._store)
        queued: list[tuple[str, RateLimit, Pending[tuple[bool, float]]]] = []
        for i, limit in enumerate(limits):
            who = _who(ctx, limit)
            if who is None:
                continue
            key = f"rl:{ctx.route.name}:{i}:{who}"
            queued.append((key, limit, batch.token_bucket(key, limit.rate, limit.burst, ctx.now)))
        if queued:
            after_round(ctx, functools.partial(self._check, queued=queued))

    def _check(self, ctx: RequestContext, queued: Sequence[tuple[str, RateLimit, Pending[tuple[bool, float]]]]
               ) -> None:
        wait = -1.0
        for key, limit, pending in queued:
            if pending.done:
                allowed, after = pending.value
            else:  # the store did not answer (a route that fails open)
                allowed, after = self.local.take(key, limit.rate, limit.burst, ctx.now)
            if not allowed:
                wait = max(wait, after)
        if wait >= 0:
            raise GatewayError(RATE_LIMITED, headers={"Retry-After": retry_after(wait)})


def _who(ctx: RequestContext, limit: RateLimit) -> str | None:
    if limit.by == "ip":
        return "ip:" + ip_bucket(ctx.client_ip)
    if limit.by == "route":
        return "all"
    account = ctx.login_account if ctx.route.login else ctx.account
    if account is None and ctx.subject is not None:
        account = ctx.subject.sub
    return None if account is None else "acct:" + account


class Lockouts:
    """The failed-login lockout: shared by the two login steps."""

    def __init__(self, config: RateLimitsConfig, store: StateStore, risk: Any | None = None) -> None:
        self.config = config.login
        self._store = store
        self._risk = risk
        """Has ``record_auth_failure(sub, now)`` (gateway/risk/engine.py RiskEngine)."""
        self.local = LocalLockouts(config.login, config.fallback_size)

    @staticmethod
    def key(ctx: RequestContext) -> str:
        return f"{ip_bucket(ctx.client_ip)}:{ctx.login_account}"

    def queue_check(self, ctx: RequestContext) -> None:
        key = self.key(ctx)
        pending = state_batch(ctx, self._store).get("login:lock:" + key)
        after_round(ctx, functools.partial(self._check, key=key, pending=pending))

    def _check(self, ctx: RequestContext, key: str, pending: Pending[bytes | None]) -> None:
        until: float | None
        if pending.done:
            until = stored_float(pending.value)
        else:
            until = self.local.locked_until(key)
        if until is not None and until > ctx.now:
            raise GatewayError(LOGIN_LOCKED, headers={"Retry-After": retry_after(until - ctx.now)})

    async def record_failure(self, ctx: RequestContext) -> None:
        cfg, now, key = self.config, ctx.now, self.key(ctx)
        account = ctx.login_account
        assert account is not None
        failures = self.local.fail(key, now)
        batch = self._store.batch()
        counted = batch.zadd_window("login:fail:" + key, ctx.request_id, now, cfg.window)
        calls: list[Awaitable[Any]] = [batch.execute()]
        if self._risk is not None:
            calls.append(self._risk.record_auth_failure(account, now))
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, StateUnavailable):
                logs.event(log, "login_failure_not_shared", logging.WARNING, route=ctx.route.name)
            elif isinstance(result, BaseException):
                raise result
        if counted.done:
            failures = max(failures, counted.value)
        if failures < cfg.max_failures:
            return
        until = now + cfg.lock_time
        self.local.lock(key, until)
        try:
            await self._store.set("login:lock:" + key, repr(until).encode(), cfg.lock_time)
        except StateUnavailable:
            logs.event(log, "login_lock_not_shared", logging.WARNING, route=ctx.route.name)


class LoginAttempt:
    """On a login route: name the account logging in and queue the check of its lock for this IP."""

    name = "login_attempt"

    def __init__(self, lockouts: Lockouts, body_timeout: float) -> None:
        self._lockouts = lockouts
        self._timeout = body_timeout

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        route = ctx.route
        if not route.login:
            return None
        if route.login_param is not None:
            self._named(ctx, ctx.params.get(route.login_param))
            return None
        return self._from_body(ctx)

    async def _from_body(self, ctx: RequestContext) -> None:
        request = ctx.request
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "compressed request bodies are not accepted here")
        if request.content_type != "application/json":
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "expected application/json")
        raw = await BoundedBody(request, ctx.route.body_limit, self._timeout).read()
        try:
            doc = orjson.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise GatewayError(INVALID_JSON) from None
        # Forward what was judged: a backend whose JSON parser reads duplicate members differently
        # must not see another account than the one counted.
        ctx.body = orjson.dumps(doc)
        self._named(ctx, doc.get(ctx.route.login_field) if isinstance(doc, dict) else None)

    def _named(self, ctx: RequestContext, value: Any) -> None:
        account = login_name(value)
        if account is None:
            where = ctx.route.login_field or ctx.route.login_param
            raise GatewayError(BAD_REQUEST, f"the login needs the account name in {where!r}"
                               f" (a string of 1-{MAX_LOGIN_NAME} printable characters)")
        ctx.login_account = account
        self._lockouts.queue_check(ctx)


class LoginOutcome:
    """After forwarding a login: a failed answer counts towards the lockout."""

    name = "login_outcome"

    def __init__(self, lockouts: Lockouts) -> None:
        self._lockouts = lockouts
        self._statuses = frozenset(lockouts.config.failure_statuses)

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        if ctx.login_account is None or ctx.response is None or ctx.response.status not in self._statuses:
            return None
        return self._lockouts.record_failure(ctx)
