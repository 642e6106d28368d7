"""The risk engine: shared state in one round trip, pure signals, a score, and careful learning.

Per request, in pipeline order:

1. ``prepare`` (the ``risk_state`` step, before the state round) queues what
   the signals need on the request's batch: device first-seen and known-ness,
   the customers seen on the device and from the IP, the minute's request
   count, the session's first user agent, recent authentication failures and
   the customer's learned profile. The same operations record this request
   (first sight of a device, device and IP fan-out, the rate counter), so
   recording costs no extra round trip either.
2. After the round, its results become a :class:`RiskView` (``ctx.risk_view``).
3. ``score`` (the ``score`` step, after the facts step so trade signals see the
   order and its counters) runs every signal and sums their points (capped at
   100) into a level.
4. ``learn`` (the ``learn`` step, right before forwarding) teaches the
   customer's profile from a request only when it was allowed, scored low and
   came from a known device; profiles are written back behind the request
   (:class:`ProfileWriter`), never on its path.

Keys (under the store's prefix; every key has a TTL): ``risk:seen:<sub>:<device>``
(first seen), ``risk:known:<sub>`` (devices proven by step-up), ``risk:devsubs:<device>``,
``risk:ipsubs:<ip>`` (one-hour window), ``risk:rate:<sub>:<minute>``, ``risk:sess:<jti>``,
``risk:fail:<sub>:<hour>``, ``risk:profile:<sub>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import logs
from gateway.background import Periodic
from gateway.config import RiskConfig
from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.risk.network import NetworkDataError, NetworkIntel, prefix_of
from gateway.risk.profile import Observation, Profile
from gateway.risk.scorer import DEFAULT_LEVELS, RiskResult, result_of
from gateway.risk.signals import (
    DEFAULT_POINTS,
    SIGNALS,
    TIERS,
    RiskSettings,
    RiskView,
    Signal,
    order_notional,
    signals_for,
)
from gateway.state.base import Pending, StateStore, StateUnavailable, stored_float
from gateway.steps.state_round import after_round, state_batch

log = logging.getLogger("portcullis.risk")

DAY = 86_400.0
EXCHANGE_UTC_OFFSET = 8 * 3600  # Asia/Shanghai: no daylight saving time


@dataclass(frozen=True, slots=True)
class RiskStateConfig:
    """Retention of the engine's keys (seconds) and how learning behaves."""

    device_ttl: float = 400 * DAY
    fanout_ttl: float = 30 * DAY
    profile_ttl: float = 400 * DAY
    half_life: float = 30 * DAY
    flush_interval: float = 1.0
    """Seconds between write-backs of learned profiles (one batch for all of them)."""
    local_profiles: int = 10_000
    """Profiles this process keeps after learning (newer than the stored copy until written)."""


@functools.lru_cache(maxsize=4096)
def agent_digest(agent: str) -> str:
    """A short digest of a user agent: enough to compare, without storing the text."""
    return hashlib.sha256(agent.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def exchange_hour(now: float) -> int:
    return int((now + EXCHANGE_UTC_OFFSET) // 3600 % 24)


class _Reads:
    """The handles one request queued in the state round."""

    __slots__ = ("first_seen", "known", "device_subs", "ip_subs", "rate", "session", "failures", "profile")

    def __init__(self) -> None:
        self.first_seen: Pending[bytes] | None = None
        self.known: Pending[bool] | None = None
        self.device_subs: Pending[int] | None = None
        self.ip_subs: Pending[int] | None = None
        self.rate: Pending[int] | None = None
        self.session: Pending[bytes] | None = None
        self.failures: Pending[list[bytes | None]] | None = None
        self.profile: Pending[bytes | None] | None = None


def _value(p: Pending[Any] | None) -> Any:
    return p.value if p is not None and p.done else None


class RiskEngine:
    """A `RiskScorer` over the shared state store, the network tables and the signals."""

    def __init__(self, state: StateStore, *, network: NetworkIntel | None = None,
                 settings: RiskSettings | None = None,
                 levels: Sequence[tuple[int, str]] = DEFAULT_LEVELS, top: int = 5,
                 signals: Sequence[Signal] = SIGNALS, config: RiskStateConfig | None = None) -> None:
        self.state = state
        self.network = network or NetworkIntel()
        self.settings = settings or RiskSettings()
        self._levels = tuple(sorted(levels, reverse=True))
        self._top = top
        self._signals = {tier: signals_for(tier, signals) for tier in TIERS}
        self.config = config or RiskStateConfig()
        self.writer = ProfileWriter(state, self.config)
        self._profiles: OrderedDict[str, tuple[bytes, Profile]] = OrderedDict()
        self.on_first_sight: Callable[[RequestContext, str | None], None] | None = None
        """Called after the round when a customer's device is seen for the first time (the
        new-device alert, gateway/customer_alerts.py), with the coarse region of the request."""

    # -- 1. before the round -------------------------------------------------------------

    def prepare(self, ctx: RequestContext) -> None:
        subject = ctx.subject
        if subject is None:
            return
        sub, now, cfg = subject.sub, ctx.now, self.config
        batch = state_batch(ctx, self.state)
        r = _Reads()
        device = ctx.device_id
        if device:
            r.first_seen = batch.get_or_set(f"risk:seen:{sub}:{device}", repr(now).encode(), cfg.device_ttl)
            r.known = batch.sismember(f"risk:known:{sub}", device)
            subs_key = f"risk:devsubs:{device}"
            batch.sadd(subs_key, sub, cfg.fanout_ttl)
            r.device_subs = batch.scard(subs_key)
        r.ip_subs = batch.zadd_window(f"risk:ipsubs:{ctx.client_ip}", sub, now, 3600.0)
        r.rate = batch.incr(f"risk:rate:{sub}:{int(now // 60)}", 1, 120.0)
        agent = ctx.headers.get("User-Agent")
        if subject.jti and agent:
            ttl = max(min(float(subject.exp) - now, DAY), 60.0) if subject.exp else DAY
            r.session = batch.get_or_set(f"risk:sess:{subject.jti}", agent_digest(agent).encode(), ttl)
        hour = int(now // 3600)
        r.failures = batch.mget((f"risk:fail:{sub}:{hour}", f"risk:fail:{sub}:{hour - 1}"))
        r.profile = batch.get(f"risk:profile:{sub}")
        after_round(ctx, functools.partial(self._view, reads=r))

    # -- 2. after the round --------------------------------------------------------------

    def _view(self, ctx: RequestContext, reads: _Reads) -> None:
        view = ctx.risk_view = self.view(ctx, reads)
        hook = self.on_first_sight
        first = reads.first_seen
        # First sight: the get-or-set found nothing and stored this request's time.
        if hook is not None and first is not None and first.done and first.value == repr(ctx.now).encode():
            hook(ctx, view.place.region)

    def view(self, ctx: RequestContext, reads: _Reads | None) -> RiskView:
        place = self.network.lookup(ctx.client_ip)
        hour = exchange_hour(ctx.now)
        prefix = prefix_of(ctx.client_ip)
        subject = ctx.subject
        if reads is None or reads.profile is None or not reads.profile.done:
            # Local only: the store was unreachable (a fail-open read route) or not asked.
            local = self.writer.local(subject.sub) if subject is not None else None
            return RiskView(profile=local, place=place, prefix=prefix, hour=hour, state_ok=False)
        failures = _value(reads.failures) or ()
        session = _value(reads.session)
        agent = ctx.headers.get("User-Agent")
        stored = self._parsed(subject.sub, _value(reads.profile)) if subject is not None else None
        local = self.writer.local(subject.sub) if subject is not None else None
        profile = local if local is not None and (stored is None or local.last_seen >= stored.last_seen) else stored
        return RiskView(
            device_first_seen=stored_float(_value(reads.first_seen)),
            device_known=_value(reads.known),
            device_accounts=_value(reads.device_subs),
            ip_accounts_hour=_value(reads.ip_subs),
            requests_last_minute=_value(reads.rate),
            session_agent=session.decode("ascii", "replace") if session else None,
            agent=agent_digest(agent) if agent and session else None,
            auth_failures=sum(int(f) for f in failures if f is not None and f.isdigit()),
            profile=profile, place=place, prefix=prefix, hour=hour, state_ok=True)

    def _parsed(self, sub: str, raw: bytes | None) -> Profile | None:
        """The stored profile, parsed once per distinct stored value (a parse costs ~20 us; the
        stored value changes at most once per write-back interval)."""
        if raw is None:
            return None
        cache = self._profiles
        hit = cache.get(sub)
        if hit is not None and hit[0] == raw:
            cache.move_to_end(sub)
            return hit[1]
        profile = Profile.from_json(raw)
        if profile is not None:
            cache[sub] = (raw, profile)
            if len(cache) > self.config.local_profiles:
                cache.popitem(last=False)
        return profile

    # -- 3. the score --------------------------------------------------------------------

    async def score(self, ctx: RequestContext) -> RiskResult:
        return self.score_sync(ctx)

    def score_sync(self, ctx: RequestContext) -> RiskResult:
        view = ctx.risk_view
        if view is None:
            view = ctx.risk_view = self.view(ctx, None)
        settings = self.settings
        factors = []
        for signal in self._signals[ctx.route.tier]:
            f = signal(ctx, view, settings)
            if f is not None and f.points:
                factors.append(f)
        return result_of(tuple(factors), self._levels, self._top)

    # -- 4. learning ---------------------------------------------------------------------

    def learn(self, ctx: RequestContext) -> bool:
        """Teach the profile from this request if it may (allowed, low risk, known device)."""
        view, risk, decision, subject = ctx.risk_view, ctx.risk, ctx.decision, ctx.subject
        if (view is None or risk is None or subject is None or not view.state_ok
                or view.device_known is not True or risk.level != "low"
                or (decision is not None and not decision.allow)):
            return False
        # The view's profile is this request's own copy (parsed from the store) or this
        # process's newest (the writer's): learning updates it in place.
        profile = view.profile if view.profile is not None else Profile()
        place = view.place
        profile.learn(Observation(
            now=ctx.now, hour=view.hour, prefix=view.prefix, region=place.region, asn=place.asn,
            lat=place.lat, lon=place.lon, route=ctx.route.name,
            # A minute above the spike floor never teaches the pace: a burst on a known device
            # would otherwise raise its own baseline until the spike signal stops firing.
            rate=rate if (rate := view.requests_last_minute) is not None and rate <= self.settings.rate_floor
            else None,
            notional=order_notional(ctx)), self.config.half_life)
        self.writer.put(subject.sub, profile)
        return True

    # -- events from other parts ---------------------------------------------------------

    async def mark_known(self, sub: str, device_id: str) -> None:
        """The customer proved this device with a step-up: it is theirs from now on."""
        await self.state.sadd(f"risk:known:{sub}", device_id, self.config.device_ttl)

    async def forget_device(self, sub: str, device_id: str) -> None:
        await self.state.srem(f"risk:known:{sub}", device_id)

    async def record_auth_failure(self, sub: str, now: float) -> None:
        """A failed login or one-time code for this customer (counted per hour, kept two)."""
        await self.state.incr(f"risk:fail:{sub}:{int(now // 3600)}", 1, 2 * 3600.0)

    async def start(self) -> None:
        self.writer.start()

    async def close(self) -> None:
        await self.writer.close()
        self.network.close()


def build_risk(config: RiskConfig, state: StateStore) -> RiskEngine:
    """The engine `[risk]` describes; a network file that cannot be read stops startup."""
    try:
        network = NetworkIntel.from_files(
            regions_file=config.regions_file, hosting_files=config.hosting_files,
            blocklist_files=dict(config.blocklist_files), mmdb_file=config.mmdb_file)
    except NetworkDataError as exc:
        raise ConfigError(f"risk.network: {exc}") from None
    base = RiskSettings(points={**DEFAULT_POINTS, **dict(config.points)})
    overrides: dict[str, Any] = {  # counts stay integers
        name: int(value) if isinstance(getattr(base, name), int) else value for name, value in config.thresholds}
    settings = dataclasses.replace(base, **overrides)
    return RiskEngine(state, network=network, settings=settings, levels=config.levels,
                      top=config.top_factors,
                      config=RiskStateConfig(half_life=config.half_life_days * DAY,
                                             flush_interval=config.profile_flush_interval))


class ProfileWriter:
    """Writes learned profiles back in one batch per interval, off the requests' path.

    Keeps the newest profile of each customer it learned for (bounded LRU), so
    the next request of that customer in this process builds on it even before
    the write lands. Across processes the last write wins: a profile is a
    statistical summary, and an occasional lost increment does not matter.
    """

    def __init__(self, state: StateStore, config: RiskStateConfig) -> None:
        self._state = state
        self._config = config
        self._local: OrderedDict[str, Profile] = OrderedDict()
        self._dirty: dict[str, Profile] = {}
        self._flusher = Periodic(self.flush, config.flush_interval, "risk-profile-flush")
        self.failures = 0

    def local(self, sub: str) -> Profile | None:
        return self._local.get(sub)

    def put(self, sub: str, profile: Profile) -> None:
        self._local[sub] = profile
        self._local.move_to_end(sub)
        if len(self._local) > self._config.local_profiles:
            self._local.popitem(last=False)
        self._dirty[sub] = profile

    @property
    def pending(self) -> int:
        return len(self._dirty)

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        try:
            async with self._state.batch() as b:
                for sub, profile in dirty.items():
                    b.set(f"risk:profile:{sub}", profile.to_json(), self._config.profile_ttl)
        except StateUnavailable:
            self.failures += 1
            for sub, profile in dirty.items():  # keep them for the next attempt (newer wins)
                self._dirty.setdefault(sub, profile)
            logs.event(log, "risk_profiles_not_written", logging.WARNING, profiles=len(dirty))

    def start(self) -> None:
        self._flusher.start()

    async def close(self) -> None:
        await self._flusher.stop()
        with contextlib.suppress(StateUnavailable):
            await self.flush()
