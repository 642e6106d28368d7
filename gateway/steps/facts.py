"""Look up the facts the policy judges by: providers and counters, concurrently.

Runs after read_body/decrypt and before score/decide, and fills ``ctx.facts``.

Trade and transfer routes: instrument, best bid/offer, position (when the
order names a symbol), account facts, the restricted lists and today's
trading-day flag are fetched together. On a cancel the order being cancelled
(``providers.order(account, order_id)``: symbol, side, status; None when the
account has no such order) is fetched beside them, then its instrument (one
chained lookup, no extra state-store round trip): ``facts.cancelled`` and
``facts.instrument``, so the market packages judge cancels too (``asyncio.gather``; warm caches answer
without I/O). Any provider failure fails the request closed with 503
``provider_unavailable``, whatever it was (transport, bad answer, a bug).

Counters (orders and cancels today per account, actions in the last second,
notional today, duplicate ``client_order_id``) cost ONE state-store batch, and
only on a new order or cancel (``body_kind`` of the route). They are counted
*before* the decision: the policy sees counts that include this request
(``orders_today`` >= 1 on an order), denied and stepped-up attempts count too,
and no second round trip follows the decision (the design budget is two on
trade routes). That is the conservative choice: a flood of orders the policy
refuses still trips the rate rules, and the count never lags behind requests
judged concurrently on other replicas. A state-store failure fails the request
closed with 503 ``state_unavailable`` (its own code, for operators).
Operations that steps after the first state round queued on the request's
batch (the envelope's replay cache and message count, gateway/envelope.py)
are sent in the same round trip; the :class:`StateRound` after this step runs
their checks.

``duplicate_client_order_id`` is true when the same ``client_order_id`` was
seen today on this account with a *different* body: the retry of the very same
order after a step-up challenge is not a duplicate (the backend refuses a real
replay of an executed order with its own 409).

The customer's own security settings (gateway/settings.py: their limits, set
through ``/api/me/security``) ride along the same way: ``custsec:<sub>`` in the
counters' batch on an order, beside the freeze on a transfer. The limits in
force at ``ctx.now`` are merged into ``account`` (the stricter of the broker's
and the customer's, :func:`gateway.settings.merge_limits`), so the policy's
``input.account.single_trade_limit`` / ``daily_limit`` are the effective ones.

The gateway's own account freezes (gateway/freezes.py) are read in the same
batch: ``freeze:<account>`` rides along with the counters on an order or a
cancel, and is one ``GET`` beside the providers on a transfer (nothing else
on that route touches the store). A freeze fills ``facts.freeze`` and turns
``account.frozen`` true in the policy input; the refuse-frozen step then
stops the request in Python (403 ``account_frozen``) before any policy.

Read routes: only the account facts, and only where the route names an
account and ``providers.read_account_facts`` is on. It is cheap: one small
loopback call per account per ``account_ttl`` (1 s) per process, shared by
concurrent requests, else a cache hit. A failure follows the route's fail
mode (open: ``account`` is null and ``provider_unavailable`` is listed under
``degraded``). Public and admin routes look nothing up.

Without ``[providers]`` configured only the counters are kept; every provider
fact is null (the baseline engine does not read them; `engine = "rego"`
requires providers).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.context import RequestContext
from gateway.errors import PROVIDER_UNAVAILABLE, STATE_UNAVAILABLE, GatewayError
from gateway.freezes import freeze_key, parse_freeze
from gateway.policy.facts import Facts, exchange_time, order_doc, order_notional, seconds_to_day_end
from gateway.policy.providers import MISS, FactProviders
from gateway.settings import merge_limits, parse_record, settings_key
from gateway.state.base import StateStore, StateUnavailable
from gateway.steps.state_round import take_batch

_DAY_TTL_MARGIN = 60.0  # seconds a daily counter outlives the exchange day (clock skew)


async def _none() -> None:
    return None


def _order_symbol(order: Any) -> str | None:
    symbol = order.get("symbol") if isinstance(order, dict) else None
    return symbol if isinstance(symbol, str) and symbol else None


async def _cancelled(p: FactProviders, account: str, order_id: str) -> tuple[Any, Any]:
    """The order being cancelled and its instrument (None, None: the account has no such order)."""
    order = await p.order(account, order_id)
    symbol = _order_symbol(order)
    return order, (await p.instrument(symbol) if symbol is not None else None)


def _cancelled_cached(p: FactProviders, key: tuple[str, str]) -> Any:
    """What `_cancelled` would answer, from warm caches only, or MISS."""
    order = p.cached("order", key)
    if order is MISS:
        return MISS
    symbol = _order_symbol(order)
    if symbol is None:
        return order, None
    instrument = p.cached("instrument", symbol)
    return MISS if instrument is MISS else (order, instrument)


class FetchFacts:
    name = "facts"

    def __init__(self, providers: FactProviders | None, state: StateStore, *,
                 read_account_facts: bool = True) -> None:
        self._providers = providers
        self._state = state
        self._read_account = read_account_facts

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        # A coroutine only when there is something to look up (most reads have nothing).
        tier = ctx.route.tier
        if tier in ("trade", "transfer"):
            return self._guarded(ctx)
        if tier == "read" and self._read_account and self._providers is not None \
                and ctx.account is not None:
            return self._read(ctx, self._providers, ctx.account)
        return None

    async def _read(self, ctx: RequestContext, providers: FactProviders, account: str) -> None:
        facts = Facts()
        ctx.facts = facts
        try:
            facts.account = await providers.account(account)
        except Exception as exc:
            if ctx.route.fail_mode == "closed":
                raise GatewayError(PROVIDER_UNAVAILABLE) from exc
            ctx.degraded.append(PROVIDER_UNAVAILABLE.code)

    async def _guarded(self, ctx: RequestContext) -> None:
        kind = ctx.route.body_kind
        account = ctx.account
        order = order_doc(ctx.json_body) if kind == "order" else None
        symbol = order.get("symbol") if order is not None else None
        if not isinstance(symbol, str) or not symbol:
            symbol = None
        order_id = ctx.params.get("order_id") if kind == "cancel" else None
        cancel_key = (account, order_id) if account and isinstance(order_id, str) and order_id else None
        facts = Facts()
        ctx.facts = facts
        p = self._providers
        lookups: list[Awaitable[Any]] = []
        results: list[Any] = []
        if p is not None:
            day = exchange_time(ctx.now).date()
            wanted: list[tuple[str, Any, Callable[[], Awaitable[Any]] | None]] = [
                ("instrument", symbol, (lambda: p.instrument(symbol)) if symbol else None),
                ("bbo", symbol, (lambda: p.bbo(symbol)) if symbol else None),
                ("account", account, (lambda: p.account(account)) if account else None),
                ("position", (account, symbol),
                 (lambda: p.position(account, symbol)) if account and symbol else None),
                ("restricted", None, p.restricted),
                ("is_trading_day", day, lambda: p.is_trading_day(day)),
                ("cancelled", cancel_key,
                 (lambda: _cancelled(p, account, order_id)) if cancel_key and account and order_id else None),
            ]
            # Warm caches answer without I/O and without a task each (a gather of six costs ~90 us).
            hits = [None if fetch is None
                    else _cancelled_cached(p, key) if kind == "cancelled" else p.cached(kind, key)
                    for kind, key, fetch in wanted]
            if any(hit is MISS for hit in hits):
                lookups = [_none() if fetch is None else fetch() for _, _, fetch in wanted]
            else:
                results = hits
        # Count only a new order or cancel on an account (transfers and others: counters null).
        counted_as = kind if account is not None and kind in ("order", "cancel") else None
        # A market order's notional needs the price: then the counters wait for the quote.
        price_known = order is None or order_notional(order, None) is not None
        freeze_raw: bytes | None = None
        settings_raw: bytes | None = None
        try:
            if counted_as is not None and account is not None and price_known:
                counted = self._counters(ctx, counted_as, account, order, None)
                if lookups:
                    *results, (facts.counters, freeze_raw, settings_raw) = await asyncio.gather(*lookups, counted)
                else:
                    facts.counters, freeze_raw, settings_raw = await counted
            elif counted_as is None and account is not None:
                # Not counted (a transfer): the freeze and the customer's settings, one batch, beside the providers.
                frozen = self._freeze(ctx, account)
                if lookups:
                    *results, (freeze_raw, settings_raw) = await asyncio.gather(*lookups, frozen)
                else:
                    freeze_raw, settings_raw = await frozen
            elif lookups:
                results = list(await asyncio.gather(*lookups))
        except GatewayError as exc:
            if exc.code == STATE_UNAVAILABLE.code:
                raise
            raise GatewayError(PROVIDER_UNAVAILABLE) from exc
        except Exception as exc:  # fail closed whatever happened
            raise GatewayError(PROVIDER_UNAVAILABLE) from exc
        if results:
            instrument, quote, acct, position, restricted, trading_day, cancelled = results
            if cancelled is not None:  # a cancel: the order's instrument is the request's
                facts.cancelled, instrument = cancelled
            facts.instrument, facts.quote, facts.account = instrument, quote, acct
            facts.position, facts.trading_day = position, trading_day
            if facts.account is not None:
                facts.account = {k: v for k, v in facts.account.items() if k != "customer_id"}
            sub = ctx.subject.sub if ctx.subject is not None else None
            customer = acct.get("customer_id") if acct is not None else None
            facts.restricted = {
                "symbol": symbol is not None and symbol in restricted.symbols,
                "person": (sub is not None and sub in restricted.persons)
                or (customer is not None and customer in restricted.persons),
            }
        if counted_as is not None and account is not None and not price_known:
            facts.counters, freeze_raw, settings_raw = await self._counters(
                ctx, counted_as, account, order, facts.quote)
        if counted_as is None and account is not None and ctx.subject is not None:
            # Read beside the freeze (an absent record: the defaults); the transfer alert reuses them.
            facts.settings = parse_record(settings_raw).effective(ctx.now)
        if settings_raw is not None and facts.account is not None:
            # The customer's own limits in force now (docs/POLICIES.md: where the limits come from).
            in_force = facts.settings or parse_record(settings_raw).effective(ctx.now)
            facts.account = merge_limits(facts.account, in_force)
        if freeze_raw is not None and account is not None:
            facts.freeze = parse_freeze(freeze_raw, account)
            if facts.account is not None:  # the policy sees the gateway's freeze too (docs/POLICIES.md)
                facts.account = {**facts.account, "frozen": True}

    async def _freeze(self, ctx: RequestContext, account: str) -> tuple[bytes | None, bytes | None]:
        """The account's freeze and the customer's settings (one round trip, with what is queued)."""
        sub = ctx.subject.sub if ctx.subject is not None else None
        try:
            if ctx.batch is not None:  # an encrypted transfer: the envelope's replay check rides along
                async with take_batch(ctx, self._state) as b:
                    frozen_p = b.get(freeze_key(account))
                    settings_p = b.get(settings_key(sub)) if sub is not None else None
                return frozen_p.value, settings_p.value if settings_p is not None else None
            if sub is None:
                return await self._state.get(freeze_key(account)), None
            frozen, settings = await self._state.mget([freeze_key(account), settings_key(sub)])
            return frozen, settings
        except StateUnavailable:
            raise
        except Exception as exc:
            raise GatewayError(STATE_UNAVAILABLE) from exc

    async def _counters(self, ctx: RequestContext, kind: str, account: str,
                        order: dict[str, Any] | None,
                        quote: dict[str, Any] | None) -> tuple[dict[str, Any], bytes | None, bytes | None]:
        day = exchange_time(ctx.now).date().isoformat()
        ttl = seconds_to_day_end(ctx.now) + _DAY_TTL_MARGIN
        is_order = kind == "order"
        notional = order_notional(order, quote) if order is not None else None
        cents = round(notional * 100) if notional is not None else 0
        coid = order.get("client_order_id") if order is not None else None
        try:
            async with take_batch(ctx, self._state) as b:  # with what earlier steps queued (decrypt)
                frozen = b.get(freeze_key(account))
                orders = b.incr(f"ctr:orders:{account}:{day}", 1 if is_order else 0, ttl)
                cancels = b.incr(f"ctr:cancels:{account}:{day}", 0 if is_order else 1, ttl)
                actions = b.zadd_window(f"ctr:actions:{account}", ctx.request_id, ctx.now, 1.0)
                total = b.incr(f"ctr:notional:{account}:{day}", cents, ttl)
                seen = stored = None
                if isinstance(coid, str) and coid:
                    key = f"coid:{account}:{day}:{hashlib.sha256(coid.encode()).hexdigest()[:32]}"
                    fingerprint = hashlib.sha256(ctx.body or b"").hexdigest().encode()
                    seen = b.get(key)
                    stored = b.set_if_absent(key, fingerprint, ttl)
                sub = ctx.subject.sub if ctx.subject is not None and is_order else None
                settings = b.get(settings_key(sub)) if sub is not None else None
        except StateUnavailable:
            raise
        except Exception as exc:
            raise GatewayError(STATE_UNAVAILABLE) from exc
        duplicate = False
        if seen is not None and stored is not None and not stored.value:
            duplicate = seen.value != hashlib.sha256(ctx.body or b"").hexdigest().encode()
        return {
            "orders_today": orders.value,
            "cancels_today": cancels.value,
            "actions_last_second": actions.value,
            "notional_today": total.value / 100,
            "duplicate_client_order_id": duplicate,
        }, frozen.value, settings.value if settings is not None else None
