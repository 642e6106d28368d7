"""The risk signals: small pure functions of the request, the state it needs, and the settings.

Each signal takes ``(ctx, view, settings)`` and returns a :class:`Factor` (a
reason code and its points) or None. ``ctx`` is the request context (its
``now`` is the clock reading the request arrived with), ``view`` is what the
state round and the network tables said about this request
(:class:`RiskView`), ``settings`` holds the points of each reason code and the
thresholds (configuration ``[risk]``). No signal does I/O or reads the clock;
tests call them with hand-built values. docs/RISK.md has one sentence per
signal on why it indicates risk.

A signal whose state is unknown (the store was unreachable, a value not
looked up on this route) says nothing: it never guesses either way. Unknown
state is scored once, by ``state_unavailable``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from gateway.context import RequestContext
from gateway.risk.network import UNKNOWN, Place
from gateway.risk.profile import Profile, distance_km
from gateway.risk.scorer import Factor

GUARDED = frozenset({"trade", "transfer"})
DAY = 86_400.0


#: Default points per reason code (configuration ``[risk.points]`` overrides them).
DEFAULT_POINTS: Mapping[str, int] = MappingProxyType({
    "unknown_device": 20,
    "new_device": 35,
    "device_many_accounts": 35,
    "agent_changed_in_session": 25,
    "automation_client": 20,
    "missing_user_agent": 10,
    "missing_device_proof": 15,
    "new_network": 10,
    "new_region": 15,
    "new_asn": 5,
    "impossible_travel": 20,
    "ip_blocklisted": 45,
    "ip_many_accounts": 30,
    "hosting_network": 15,
    "request_rate_spike": 20,
    "unusual_hour": 10,
    "first_sensitive_route": 10,
    "order_notional_spike": 20,
    "order_burst": 60,
    "cancel_ratio_high": 40,
    "recent_auth_failures": 25,
    "stale_session": 10,
    "stale_mfa_for_transfer": 10,
    "new_bank_account_transfer": 35,
    "transfer_soon_after_login": 15,
    "deposit_then_illiquid_buy": 60,
    "dormant_account": 20,
    "state_unavailable": 10,
})


@dataclass(frozen=True, slots=True)
class RiskSettings:
    """Points and thresholds; every number here is configuration (``[risk]``), with these defaults."""

    points: Mapping[str, int] = field(default_factory=lambda: DEFAULT_POINTS)
    new_device_age: float = DAY
    """A device first seen less than this long ago (seconds) is new."""
    device_accounts: int = 3
    """Customers on one device at which it looks like a mule farm."""
    ip_accounts_hour: int = 5
    """Customers from one IP within an hour at which it looks like stuffing or a farm."""
    min_history: float = 20.0
    """Learned requests a profile needs before its habits count (new network, region, hour, rate)."""
    rare_share: float = 0.02
    """A network, region or hour holding less than this share of the history is unusual."""
    travel_kmh: float = 900.0
    """Faster than an airliner between two requests is impossible travel."""
    travel_min_km: float = 300.0
    """Distances below this are within the tables' precision: never impossible travel."""
    rate_factor: float = 5.0
    rate_floor: int = 30
    """A minute's request count above both floor and factor x the learned rate is a spike."""
    notional_factor: float = 5.0
    min_orders: float = 5.0
    """Learned orders needed before an order's size is compared with them."""
    burst_per_second: int = 10
    orders_per_day: int = 500
    cancel_ratio: float = 0.9
    cancel_min_orders: int = 20
    """Cancels/orders above cancel_ratio once a day has at least cancel_min_orders orders."""
    auth_failures: int = 3
    """Failed logins and MFA attempts in the last hour at which the customer looks attacked."""
    session_max_age: float = 12 * 3600.0
    transfer_mfa_age: float = DAY
    new_bank_account_age: float = 7 * DAY
    login_transfer_window: float = 300.0
    large_deposit: float = 100_000.0
    deposit_window: float = 7 * DAY
    illiquid_adv: float = 20_000_000.0
    """Average daily value traded (CNY) below which a symbol is illiquid."""
    concentration: float = 0.5
    """An order worth at least this share of the account's assets is concentrated."""
    dormant_after: float = 180 * DAY
    _factors: dict[str, Factor] = field(default_factory=dict, compare=False, repr=False)

    def factor(self, code: str) -> Factor:
        f = self._factors.get(code)
        if f is None:
            f = self._factors[code] = Factor(code, int(self.points.get(code, DEFAULT_POINTS.get(code, 0))))
        return f


@dataclass(slots=True)
class RiskView:
    """What the state round and the network tables said about one request (None: unknown)."""

    device_first_seen: float | None = None
    device_known: bool | None = None
    device_accounts: int | None = None
    ip_accounts_hour: int | None = None
    requests_last_minute: int | None = None
    session_agent: str | None = None
    """The user agent the session's first request carried (its digest)."""
    agent: str | None = None
    """This request's user agent (its digest), as compared with ``session_agent``."""
    auth_failures: int | None = None
    profile: Profile | None = None
    """The customer's learned habits; None: no history yet, or the store was unreachable."""
    place: Place = UNKNOWN
    prefix: str | None = None
    hour: int = 0
    """Exchange-local hour of the request."""
    state_ok: bool = True
    """False: the state store could not be asked; state-based signals stay silent."""


Signal = Callable[[RequestContext, RiskView, RiskSettings], "Factor | None"]

TIERS = ("public", "read", "trade", "transfer", "admin")
S = TypeVar("S", bound=Callable[..., Any])


def only_on(*tiers: str) -> Callable[[S], S]:
    """Marks a signal that can only fire on these route tiers: the engine skips it elsewhere."""
    def mark(signal: S) -> S:
        signal.tiers = frozenset(tiers)  # type: ignore[attr-defined]
        return signal
    return mark


def signals_for(tier: str, signals: Sequence[Signal]) -> tuple[Signal, ...]:
    """The signals that can fire on a route of `tier`, in order."""
    return tuple(s for s in signals if tier in getattr(s, "tiers", TIERS))


# -- the device -----------------------------------------------------------------------------


def unknown_device(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A device the customer never proved with a step-up: it could be anyone's."""
    return s.factor("unknown_device") if ctx.device_id and v.device_known is False else None


def new_device(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A device first seen in the last day: account takeovers arrive on fresh devices."""
    seen = v.device_first_seen
    if ctx.device_id and seen is not None and ctx.now - seen < s.new_device_age and v.device_known is not True:
        return s.factor("new_device")
    return None


def device_many_accounts(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """One device driving many customers' accounts is a mule farm or a fraud operator."""
    n = v.device_accounts
    return s.factor("device_many_accounts") if n is not None and n >= s.device_accounts else None


def agent_changed_in_session(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A session whose user agent changes midway was probably copied to another client."""
    if v.session_agent is not None and v.agent is not None and v.session_agent != v.agent:
        return s.factor("agent_changed_in_session")
    return None


_AUTOMATION = re.compile(r"headless|phantomjs|selenium|puppeteer|playwright|python-requests|curl/|wget/"
                         r"|go-http-client|okhttp/[0-2]\.|scrapy|httpclient", re.I)


# A few distinct user agents carry nearly all traffic: match each once (bounded: client-chosen).
@functools.lru_cache(maxsize=4096)
def _automation_agent(ua: str) -> bool:
    return _AUTOMATION.search(ua) is not None


def automation_client(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Headless browsers and scripting clients are how credential stuffing and bots arrive."""
    return s.factor("automation_client") if _automation_agent(ctx.headers.get("User-Agent") or "") else None


def missing_user_agent(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Every real app and browser sends a User-Agent; its absence marks a raw script."""
    return None if ctx.headers.get("User-Agent") else s.factor("missing_user_agent")


def missing_device_proof(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Without a verified device key the device is unknown: the token could be replayed anywhere.

    Only a verified DPoP proof sets ctx.device_id (an invalid one is refused outright).
    """
    return None if ctx.device_id else s.factor("missing_device_proof")


# -- the network ----------------------------------------------------------------------------


def _habit(v: RiskView, s: RiskSettings) -> Profile | None:
    p = v.profile
    return p if p is not None and p.n >= s.min_history else None


def new_network(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A /24 (IPv6 /48) the customer has not used is where a stolen session is replayed from."""
    p = _habit(v, s)
    if p is not None and v.prefix is not None and p.share(p.prefixes, v.prefix) < s.rare_share:
        return s.factor("new_network")
    return None


def new_region(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A province or country the customer does not trade from ("remote location" in RULES.md)."""
    p = _habit(v, s)
    region = v.place.region
    if p is not None and region is not None and p.share(p.regions, region) < s.rare_share:
        return s.factor("new_region")
    return None


def new_asn(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A carrier or hosting network the customer never used hints at a proxy or another person."""
    p = _habit(v, s)
    asn = v.place.asn
    if p is not None and asn is not None and p.share(p.asns, str(asn)) < s.rare_share:
        return s.factor("new_asn")
    return None


def impossible_travel(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Two requests further apart than any traveller could go in between are two people."""
    p = v.profile
    place = v.place
    if p is None or p.last is None or place.lat is None or place.lon is None:
        return None
    then, lat, lon = p.last
    km = distance_km(lat, lon, place.lat, place.lon)
    if km < s.travel_min_km:
        return None
    hours = max(ctx.now - then, 1.0) / 3600.0
    return s.factor("impossible_travel") if km / hours > s.travel_kmh else None


def ip_blocklisted(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Anonymising exits and known-bad ranges hide who is really behind the request."""
    return s.factor("ip_blocklisted") if v.place.blocklist is not None else None


def ip_many_accounts(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """One address serving many customers within an hour is credential stuffing or a farm."""
    n = v.ip_accounts_hour
    return s.factor("ip_many_accounts") if n is not None and n >= s.ip_accounts_hour else None


def hosting_network(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Retail customers trade from homes and phones; data-centre ranges mean servers and proxies."""
    return s.factor("hosting_network") if v.place.hosting else None


# -- behaviour ------------------------------------------------------------------------------


def request_rate_spike(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Far more requests than the customer's usual pace is a script, not a person."""
    n = v.requests_last_minute
    if n is None or n <= s.rate_floor:
        return None
    p = _habit(v, s)
    if p is None or n > s.rate_factor * max(p.rate, 1.0):
        return s.factor("request_rate_spike")
    return None


def unusual_hour(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Activity at an hour the customer never keeps (e.g. 3 a.m.) is often someone else."""
    p = _habit(v, s)
    return s.factor("unusual_hour") if p is not None and p.hour_share(v.hour) < s.rare_share else None


@only_on("trade", "transfer")
def first_sensitive_route(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """The first trade or transfer of a customer with history is a step change worth a look."""
    p = _habit(v, s)
    if p is not None and ctx.route.tier in GUARDED and ctx.route.name not in p.routes:
        return s.factor("first_sensitive_route")
    return None


def order_notional(ctx: RequestContext) -> float | None:
    """qty x price of an order body with positive numbers (None on any other route or body)."""
    body = ctx.json_body
    if ctx.route.body_kind != "order" or not isinstance(body, dict):
        return None
    qty, price = body.get("qty"), body.get("price")
    if isinstance(qty, bool) or isinstance(price, bool):
        return None
    if isinstance(qty, (int, float)) and isinstance(price, (int, float)) and qty > 0 and price > 0:
        return float(qty) * float(price)
    return None


@only_on("trade")
def order_notional_spike(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """An order many times larger than the customer's usual size is how a takeover cashes out."""
    p = v.profile
    notional = order_notional(ctx)
    if p is None or notional is None or p.orders < s.min_orders or p.notional <= 0:
        return None
    return s.factor("order_notional_spike") if notional > s.notional_factor * p.notional else None


def _counter(ctx: RequestContext, name: str) -> int | None:
    counters = ctx.facts.counters if ctx.facts is not None else None
    value = counters.get(name) if counters else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@only_on("trade")
def order_burst(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Orders and cancels faster than a hand can place them are a bot, or a spoofing attempt."""
    per_second = _counter(ctx, "actions_last_second")
    per_day = _counter(ctx, "orders_today")
    if (per_second is not None and per_second > s.burst_per_second) or (
            per_day is not None and per_day > s.orders_per_day):
        return s.factor("order_burst")
    return None


@only_on("trade")
def cancel_ratio_high(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Placing orders only to cancel them moves prices without trading (layering, spoofing)."""
    orders, cancels = _counter(ctx, "orders_today"), _counter(ctx, "cancels_today")
    if orders is None or cancels is None or orders < s.cancel_min_orders:
        return None
    return s.factor("cancel_ratio_high") if cancels / orders > s.cancel_ratio else None


def recent_auth_failures(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Failed logins and one-time codes just before a request mean someone is guessing."""
    n = v.auth_failures
    return s.factor("recent_auth_failures") if n is not None and n >= s.auth_failures else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def stale_session(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A session far older than a working day is more likely a token lifted from a device."""
    sub = ctx.subject
    # The login (auth_time), not the token's iat: refreshed tokens are minutes old all session long.
    started = _number(sub.auth_time) if sub is not None else None
    if started is None and sub is not None:
        started = _number(sub.claims.get("iat"))
    return s.factor("stale_session") if started is not None and ctx.now - started > s.session_max_age else None


@only_on("transfer")
def stale_mfa_for_transfer(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Money leaving on a login whose strong authentication is a day old has not been re-confirmed."""
    sub = ctx.subject
    if ctx.route.tier != "transfer" or sub is None:
        return None
    at = _number(sub.auth_time)
    return s.factor("stale_mfa_for_transfer") if at is None or ctx.now - at > s.transfer_mfa_age else None


def _account_fact(ctx: RequestContext, name: str) -> Any:
    account = ctx.facts.account if ctx.facts is not None else None
    return account.get(name) if isinstance(account, dict) else None


@only_on("transfer")
def new_bank_account_transfer(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A transfer out to a bank account added days ago is the classic takeover cash-out."""
    if ctx.route.body_kind != "transfer" or not isinstance(ctx.json_body, dict):
        return None
    target = ctx.json_body.get("bank_account_id")
    for acct in _account_fact(ctx, "bank_accounts") or ():
        if isinstance(acct, dict) and acct.get("id") == target:
            added = _number(acct.get("added_at"))
            if added is not None and ctx.now - added < s.new_bank_account_age:
                return s.factor("new_bank_account_transfer")
    return None


@only_on("transfer")
def transfer_soon_after_login(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Money moved within minutes of a login is what a taken-over session does first."""
    sub = ctx.subject
    if ctx.route.tier != "transfer" or sub is None:
        return None
    login = _number(sub.auth_time) or _number(sub.claims.get("iat"))  # the login, not the last refresh
    if login is not None and ctx.now - login < s.login_transfer_window:
        return s.factor("transfer_soon_after_login")
    return None


@only_on("trade")
def deposit_then_illiquid_buy(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """A large deposit spent at once on one thinly traded stock is the pig-butchering pattern."""
    notional = order_notional(ctx)
    body = ctx.json_body
    if notional is None or not isinstance(body, dict) or body.get("side") != "buy":
        return None
    deposit = _account_fact(ctx, "last_deposit")
    if not isinstance(deposit, dict):
        return None
    amount, at = _number(deposit.get("amount")), _number(deposit.get("at"))
    if amount is None or at is None or amount < s.large_deposit or ctx.now - at > s.deposit_window:
        return None
    instrument = ctx.facts.instrument if ctx.facts is not None else None
    adv = _number(instrument.get("adv_cny")) if isinstance(instrument, dict) else None
    assets = _number(_account_fact(ctx, "assets_cny"))
    if adv is None or adv >= s.illiquid_adv or not assets or notional < s.concentration * assets:
        return None
    return s.factor("deposit_then_illiquid_buy")


def dormant_account(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """An account silent for months that wakes up is more often taken over than remembered."""
    p = v.profile
    if p is None or not p.last_seen:
        return None
    return s.factor("dormant_account") if ctx.now - p.last_seen > s.dormant_after else None


def state_unavailable(ctx: RequestContext, v: RiskView, s: RiskSettings) -> Factor | None:
    """Scored on local signals only: what the shared state would have said is unknown."""
    return None if v.state_ok else s.factor("state_unavailable")


SIGNALS: tuple[Signal, ...] = (
    unknown_device, new_device, device_many_accounts, agent_changed_in_session, automation_client,
    missing_user_agent, missing_device_proof, new_network, new_region, new_asn, impossible_travel,
    ip_blocklisted, ip_many_accounts, hosting_network, request_rate_spike, unusual_hour,
    first_sensitive_route, order_notional_spike, order_burst, cancel_ratio_high, recent_auth_failures,
    stale_session, stale_mfa_for_transfer, new_bank_account_transfer, transfer_soon_after_login,
    deposit_then_illiquid_buy, dormant_account, state_unavailable,
)
"""Every signal, in the order their factors are reported when points tie."""
