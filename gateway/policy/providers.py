"""Fact providers for the policy input: reference data, quotes, accounts, lists, calendar.

Interfaces (Protocols) the Facts step depends on, and one implementation,
:class:`HttpFactProviders`, against the trading backend's ``/internal`` routes
(demo_backend/internal.py) over one pooled aiohttp session that sends the
shared ``X-Portcullis-Internal-Token``.

Caching: every answer is kept in a bounded LRU :class:`TtlCache` with a TTL
per kind (reference data, restricted lists and the calendar: minutes; account
facts, positions, orders and best bid/offer: about a second). Concurrent misses for the
same key share one fetch. When a refresh fails, an entry at most ``max_stale``
seconds past its TTL still answers; otherwise the failure raises
:class:`ProviderUnavailable` (503 ``provider_unavailable``), and the route's
fail mode decides (trade and transfer: closed). A 404 from the backend is an
answer, not a failure: an unknown symbol or account is ``None`` and is cached
like any other answer.

Time comes from an injected monotonic ``clock`` so tests move it by hand.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

import aiohttp

from gateway.errors import PROVIDER_UNAVAILABLE, GatewayError

__all__ = [
    "AccountFacts",
    "FactProviders",
    "HttpFactProviders",
    "ProviderUnavailable",
    "Quotes",
    "ReferenceData",
    "Restricted",
    "RestrictedLists",
    "TradingCalendar",
    "TtlCache",
    "INTERNAL_TOKEN_HEADER",
    "MISS",
]

INTERNAL_TOKEN_HEADER = "X-Portcullis-Internal-Token"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Json = dict[str, Any]

#: Members kept from each answer: exactly the input document's (docs/POLICIES.md).
INSTRUMENT_KEYS = ("symbol", "market", "board", "st", "board_lot", "min_qty", "prev_close",
                   "limit_up", "limit_down", "tick_size", "risk_level", "currency", "adv_cny")
QUOTE_KEYS = ("bid", "ask", "last")
ACCOUNT_KEYS = ("id", "investor_level", "lowest_category", "assets_cny", "trading_months",
                "programme_trading_report", "single_trade_limit", "daily_limit", "frozen",
                "cash", "buying_power",
                # For the risk engine (gateway/risk/signals.py): bank accounts' link times, last deposit.
                "bank_accounts", "last_deposit")
POSITION_KEYS = ("symbol", "qty", "today_bought", "sellable")
ORDER_KEYS = ("order_id", "account", "symbol", "side", "status")


class ProviderUnavailable(GatewayError):
    """A provider failed and no fresh-enough answer is cached (503 ``provider_unavailable``).

    ``message`` stays generic (clients see it); ``detail`` is for operators' logs.
    """

    def __init__(self, detail: str = "") -> None:
        super().__init__(PROVIDER_UNAVAILABLE)
        self.detail = detail


class ProviderError(Exception):
    """One fetch failed (transport, status, shape); the cache decides what follows."""


@dataclass(frozen=True, slots=True)
class Restricted:
    symbols: frozenset[str]
    persons: frozenset[str]


# --------------------------------------------------------------------------
# Interfaces


class ReferenceData(Protocol):
    async def instrument(self, symbol: str) -> Json | None:
        """The instrument's facts, or None when the symbol is not in the reference data."""
        ...


class Quotes(Protocol):
    async def bbo(self, symbol: str) -> Json | None:
        """``{"bid", "ask", "last"}``, or None for an unknown symbol."""
        ...


class AccountFacts(Protocol):
    async def account(self, account: str) -> Json | None:
        """Suitability, limits, cash and buying power; None for an unknown account."""
        ...

    async def position(self, account: str, symbol: str) -> Json | None:
        """``{"symbol", "qty", "today_bought", "sellable"}`` (zeros when none held)."""
        ...

    async def order(self, account: str, order_id: str) -> Json | None:
        """``{"order_id", "account", "symbol", "side", "status"}`` of one of the account's orders;
        None when the account has no order by that id (unknown, or another account's)."""
        ...


class RestrictedLists(Protocol):
    async def restricted(self) -> Restricted: ...


class TradingCalendar(Protocol):
    async def is_trading_day(self, day: date) -> bool:
        """Whether the exchange trades on this (exchange-local) date."""
        ...


#: What :meth:`FactProviders.cached` answers when it has no fresh answer.
MISS: Any = object()


class FactProviders(ReferenceData, Quotes, AccountFacts, RestrictedLists, TradingCalendar, Protocol):
    """Everything the Facts step asks for, from one object."""

    def cached(self, kind: str, key: Hashable) -> Any:
        """A fresh cached answer without I/O, or :data:`MISS` (the step's no-task fast path).

        ``kind`` is the method name (``instrument``, ``bbo``, ``account``, ``position``
        with key ``(account, symbol)``, ``order`` with key ``(account, order_id)``, ``restricted``
        with key None, ``is_trading_day`` with a ``date`` key).
        """
        ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------
# The cache


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    at: float


class TtlCache(Generic[K, V]):
    """Bounded LRU with a TTL, single-flight refresh and bounded staleness on failure."""

    def __init__(self, ttl: float, *, max_stale: float, size: int,
                 clock: Callable[[], float] = time.monotonic, name: str = "cache") -> None:
        self.ttl = ttl
        self.max_stale = max_stale
        self.size = size
        self.name = name
        self._clock = clock
        self._data: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._inflight: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._data)

    def peek(self, key: K) -> V:
        """The fresh value without I/O, or :data:`MISS`."""
        entry = self._data.get(key)
        if entry is not None and self._clock() - entry.at < self.ttl:
            return entry.value
        result: V = MISS
        return result

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        entry = self._data.get(key)
        if entry is not None and self._clock() - entry.at < self.ttl:
            self._data.move_to_end(key)
            return entry.value
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._refresh(key, fetch))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: a caller that goes away does not cancel the fetch the others wait for
        return await asyncio.shield(task)

    async def _refresh(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await fetch()
        except Exception as exc:  # any fetch failure: serve a bounded-stale answer or refuse
            entry = self._data.get(key)
            if entry is not None and self._clock() - entry.at < self.ttl + self.max_stale:
                return entry.value
            raise ProviderUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        self._data[key] = _Entry(value, self._clock())
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        return value


# --------------------------------------------------------------------------
# The HTTP implementation


def _pick(data: Json, keys: tuple[str, ...]) -> Json:
    return {k: data.get(k) for k in keys}


class HttpFactProviders:
    """All providers against the backend's ``/internal`` routes, each with its cache."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 0.5,
                 reference_ttl: float = 300.0, calendar_ttl: float = 3600.0,
                 restricted_ttl: float = 60.0, account_ttl: float = 1.0,
                 position_ttl: float = 1.0, order_ttl: float = 1.0, quote_ttl: float = 1.0,
                 max_stale: float = 2.0,
                 cache_size: int = 10_000, pool_size: int = 32,
                 ssl_context: ssl.SSLContext | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pool_size = pool_size
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else False
        self._session: aiohttp.ClientSession | None = None

        def cache(ttl: float, name: str) -> TtlCache[Any, Any]:
            return TtlCache(ttl, max_stale=max_stale, size=cache_size, clock=clock, name=name)

        self.instruments: TtlCache[str, Json | None] = cache(reference_ttl, "reference")
        self.quotes: TtlCache[str, Json | None] = cache(quote_ttl, "quotes")
        self.accounts: TtlCache[str, Json | None] = cache(account_ttl, "accounts")
        self.positions: TtlCache[tuple[str, str], Json | None] = cache(position_ttl, "positions")
        self.orders: TtlCache[tuple[str, str], Json | None] = cache(order_ttl, "orders")
        self.lists: TtlCache[str, Restricted] = cache(restricted_ttl, "restricted")
        self.calendars: TtlCache[int, frozenset[str]] = cache(calendar_ttl, "calendar")

    # -- transport

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=self._ssl,
                                             keepalive_timeout=30.0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout,
                headers={INTERNAL_TOKEN_HEADER: self._token}, auto_decompress=True)
        return self._session

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Json | None:
        """The JSON object at ``path``; None on 404; ProviderError otherwise."""
        try:
            async with self._client().get(self._base + path, params=params,
                                          allow_redirects=False) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise ProviderError(f"GET {path}: HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise ProviderError(f"GET {path}: {type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise ProviderError(f"GET {path}: expected a JSON object")
        return data

    def cached(self, kind: str, key: Hashable) -> Any:
        if kind == "is_trading_day":
            assert isinstance(key, date)
            days = self.calendars.peek(key.year)
            return MISS if days is MISS else key.isoformat() in days
        caches: dict[str, TtlCache[Any, Any]] = {
            "instrument": self.instruments, "bbo": self.quotes, "account": self.accounts,
            "position": self.positions, "order": self.orders, "restricted": self.lists}
        cache = caches.get(kind)
        if cache is None:
            return MISS
        return cache.peek("restricted" if kind == "restricted" else key)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- providers

    async def instrument(self, symbol: str) -> Json | None:
        async def fetch() -> Json | None:
            data = await self._get(f"/internal/reference/{quote(symbol, safe='')}")
            return None if data is None else _pick(data, INSTRUMENT_KEYS)
        return await self.instruments.get(symbol, fetch)

    async def bbo(self, symbol: str) -> Json | None:
        async def fetch() -> Json | None:
            data = await self._get(f"/internal/quotes/{quote(symbol, safe='')}/bbo")
            return None if data is None else _pick(data, QUOTE_KEYS)
        return await self.quotes.get(symbol, fetch)

    async def account(self, account: str) -> Json | None:
        async def fetch() -> Json | None:
            data = await self._get(f"/internal/accounts/{quote(account, safe='')}/facts")
            if data is None:
                return None
            facts = _pick(data, ACCOUNT_KEYS)
            facts["customer_id"] = data.get("customer_id")  # for the restricted-person check
            return facts
        return await self.accounts.get(account, fetch)

    async def phone_on_file(self, account: str) -> str | None:
        """The phone number in the account facts, for step-up codes (docs/STEP_UP.md).

        Fetched when a code is to be sent, never cached, never part of the policy input.
        """
        data = await self._get(f"/internal/accounts/{quote(account, safe='')}/facts")
        phone = data.get("phone") if data is not None else None
        return phone if isinstance(phone, str) and phone else None

    async def position(self, account: str, symbol: str) -> Json | None:
        async def fetch() -> Json | None:
            data = await self._get(
                f"/internal/accounts/{quote(account, safe='')}/positions/{quote(symbol, safe='')}")
            return None if data is None else _pick(data, POSITION_KEYS)
        return await self.positions.get((account, symbol), fetch)

    async def order(self, account: str, order_id: str) -> Json | None:
        async def fetch() -> Json | None:
            data = await self._get(
                f"/internal/accounts/{quote(account, safe='')}/orders/{quote(order_id, safe='')}")
            if data is None:
                return None
            picked = _pick(data, ORDER_KEYS)
            # Only this account's order, by this id: anything else is "no such order" (nothing leaks).
            if picked["account"] != account or picked["order_id"] != order_id:
                return None
            return picked
        return await self.orders.get((account, order_id), fetch)

    async def restricted(self) -> Restricted:
        async def fetch() -> Restricted:
            data = await self._get("/internal/restricted")
            if data is None:
                raise ProviderError("GET /internal/restricted: HTTP 404")
            symbols, persons = data.get("symbols"), data.get("persons")
            if not (isinstance(symbols, list) and isinstance(persons, list)):
                raise ProviderError("GET /internal/restricted: symbols and persons must be lists")
            return Restricted(frozenset(map(str, symbols)), frozenset(map(str, persons)))
        return await self.lists.get("restricted", fetch)

    async def trading_days(self, year: int) -> frozenset[str]:
        async def fetch() -> frozenset[str]:
            data = await self._get("/internal/calendar", {"year": str(year)})
            days = None if data is None else data.get("trading_days")
            if not isinstance(days, list):
                raise ProviderError(f"GET /internal/calendar?year={year}: no trading_days list")
            return frozenset(map(str, days))
        return await self.calendars.get(year, fetch)

    async def is_trading_day(self, day: date) -> bool:
        return day.isoformat() in await self.trading_days(day.year)
