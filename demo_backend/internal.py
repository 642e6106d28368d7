"""Internal fact endpoints for the gateway's policy providers (``/internal/...``).

Served only when the backend runs with an internal token (``--internal-token``
or ``PORTCULLIS_BACKEND_INTERNAL_TOKEN``): the app's guard compares
``X-Portcullis-Internal-Token`` with it in constant time (``hmac.compare_digest``)
on every route but ``/healthz``. These routes are the gateway talking to its
backend as itself, so they need no customer identity assertion; they are in no
gateway route table, so no client reaches them through the gateway.

* ``GET /internal/reference/{symbol}``               instrument facts (404 unknown)
* ``GET /internal/quotes/{symbol}/bbo``              best bid / offer and last
* ``GET /internal/accounts/{account}/facts``         suitability, limits, cash
* ``GET /internal/accounts/{account}/positions/{symbol}``  qty, today_bought, sellable
* ``GET /internal/accounts/{account}/orders/{order_id}``  symbol, side, status of an order (404 unknown,
  or not this account's)
* ``GET /internal/restricted``                       restricted symbols and persons
* ``GET /internal/calendar?year=YYYY``               trading days and holidays
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from decimal import Decimal

from aiohttp import web

from .book import Brokerage
from .data import CUSTOMERS, INSTRUMENTS, MILS, tick_size
from .errors import DemoError
from .market import Market

#: The broker's restricted list (demo): symbols no customer may trade (e.g. the
#: broker holds inside information), and persons (customer ids) barred from trading.
RESTRICTED_SYMBOLS: tuple[str, ...] = ("09988.HK",)
RESTRICTED_PERSONS: tuple[str, ...] = ("mallory",)

#: Exchange holidays on weekdays (demo list; weekends are always closed).
_HOLIDAYS: dict[int, tuple[str, ...]] = {
    2025: ("2025-01-01", "2025-01-28", "2025-01-29", "2025-01-30", "2025-01-31", "2025-02-03",
           "2025-02-04", "2025-04-04", "2025-05-01", "2025-05-02", "2025-05-05", "2025-06-02",
           "2025-10-01", "2025-10-02", "2025-10-03", "2025-10-06", "2025-10-07", "2025-10-08"),
    2026: ("2026-01-01", "2026-01-02", "2026-02-16", "2026-02-17", "2026-02-18", "2026-02-19",
           "2026-02-20", "2026-04-06", "2026-05-01", "2026-05-04", "2026-05-05", "2026-06-19",
           "2026-09-25", "2026-10-01", "2026-10-02", "2026-10-05", "2026-10-06", "2026-10-07"),
    2027: ("2027-01-01", "2027-02-05", "2027-02-08", "2027-02-09", "2027-02-10", "2027-02-11",
           "2027-04-05", "2027-05-03", "2027-05-04", "2027-05-05", "2027-06-09", "2027-09-15",
           "2027-10-01", "2027-10-04", "2027-10-05", "2027-10-06", "2027-10-07"),
}
_FIXED_HOLIDAYS = ("01-01", "05-01", "10-01", "10-02", "10-03")  # years without a list

STARTED = time.time()
"""The demo's "now" for dates it counts back (bank accounts linked, the last deposit)."""

MARKET = web.AppKey("internal_market", Market)
BROKERAGE = web.AppKey("internal_brokerage", Brokerage)


def _px(mils: int, decimals: int) -> float:
    return round(mils / MILS, decimals)


async def reference(request: web.Request) -> web.Response:
    inst = INSTRUMENTS.get(request.match_info["symbol"])
    if inst is None:
        raise DemoError(404, "unknown_symbol", "no such symbol")
    limits = inst.limits
    dp = inst.decimals
    return web.json_response({
        "symbol": inst.symbol,
        "market": inst.market,
        "board": inst.board,
        "st": inst.st,
        "board_lot": inst.board_lot,
        "min_qty": inst.min_qty,
        "prev_close": _px(inst.prev_close, dp),
        "limit_up": _px(limits[1], dp) if limits else None,
        "limit_down": _px(limits[0], dp) if limits else None,
        "tick_size": _px(tick_size(inst, inst.prev_close), dp),
        "risk_level": inst.risk_level,
        "currency": inst.currency,
        "adv_cny": inst.adv_cny,
    })


async def bbo(request: web.Request) -> web.Response:
    try:
        q = request.app[MARKET].quote(request.match_info["symbol"])
    except KeyError:
        raise DemoError(404, "unknown_symbol", "no such symbol") from None
    return web.json_response({"symbol": q["symbol"], "bid": q["bid"], "ask": q["ask"], "last": q["last"]})


async def account_facts(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    holdings = request.app[BROKERAGE].positions(account)  # 404 for an unknown account
    c = CUSTOMERS[account]
    cash = float(Decimal(str(holdings["cash"])))
    return web.json_response({
        "id": c.account,
        "customer_id": c.sub,
        "phone": c.phone,  # the phone on file: step-up codes go there until the customer enrols another
        "investor_level": c.investor_level,
        "lowest_category": c.lowest_category,
        "assets_cny": c.assets_cny,
        "trading_months": c.trading_months,
        "programme_trading_report": c.programme_trading_report,
        "single_trade_limit": c.single_trade_limit,
        "daily_limit": c.daily_limit,
        "frozen": False,  # freezes are the gateway's (shared state), not the book's
        "cash": cash,
        "buying_power": cash,  # the demo book reserves no cash for open limit buys
        # For the risk engine: when each bank account was linked (ids only, never numbers) and
        # the last deposit (epoch seconds, counted back from the backend's start).
        "bank_accounts": [{"id": b.id, "added_at": STARTED - b.added_days_ago * 86400} for b in c.bank_accounts],
        "last_deposit": None if c.last_deposit is None else {
            "amount": c.last_deposit[0], "at": STARTED - c.last_deposit[1] * 86400},
    })


async def position(request: web.Request) -> web.Response:
    m = request.match_info
    symbol = m["symbol"]
    rows = request.app[BROKERAGE].positions(m["account"])["positions"]
    row = next((r for r in rows if r["symbol"] == symbol), None)
    return web.json_response({
        "symbol": symbol,
        "qty": row["qty"] if row else 0,
        "today_bought": row["today_bought"] if row else 0,
        "sellable": row["sellable"] if row else 0,
    })


async def order(request: web.Request) -> web.Response:
    m = request.match_info
    found = request.app[BROKERAGE].order(m["account"], m["order_id"])  # 404 unknown account
    if found is None:  # unknown here, or another account's: nothing about it
        raise DemoError(404, "unknown_order", "no such order in this account")
    return web.json_response({"order_id": found["order_id"], "account": found["account"],
                              "symbol": found["symbol"], "side": found["side"], "status": found["status"]})


async def restricted(request: web.Request) -> web.Response:
    return web.json_response({"symbols": list(RESTRICTED_SYMBOLS), "persons": list(RESTRICTED_PERSONS)})


def holidays(year: int) -> list[str]:
    listed = _HOLIDAYS.get(year)
    days = listed if listed is not None else tuple(f"{year}-{md}" for md in _FIXED_HOLIDAYS)
    return sorted(d for d in days if date.fromisoformat(d).isoweekday() <= 5)


def trading_days(year: int) -> list[str]:
    closed = set(holidays(year))
    day, end, out = date(year, 1, 1), date(year + 1, 1, 1), []
    while day < end:
        iso = day.isoformat()
        if day.isoweekday() <= 5 and iso not in closed:
            out.append(iso)
        day += timedelta(days=1)
    return out


async def calendar(request: web.Request) -> web.Response:
    raw = request.query.get("year", "")
    if not (raw.isascii() and raw.isdigit() and 1990 <= int(raw) <= 2100):
        raise DemoError(400, "invalid_year", "year: a four-digit year between 1990 and 2100")
    year = int(raw)
    return web.json_response({"year": year, "tz": "Asia/Shanghai", "weekends_closed": True,
                              "holidays": holidays(year), "trading_days": trading_days(year)})


HANDLERS = frozenset({reference, bbo, account_facts, position, order, restricted, calendar})


def add_routes(app: web.Application, market: Market, brokerage: Brokerage) -> None:
    """Register the internal routes (call only when the app requires an internal token)."""
    app[MARKET] = market
    app[BROKERAGE] = brokerage
    r = app.router
    r.add_get("/internal/reference/{symbol}", reference)
    r.add_get("/internal/quotes/{symbol}/bbo", bbo)
    r.add_get("/internal/accounts/{account}/facts", account_facts)
    r.add_get("/internal/accounts/{account}/positions/{symbol}", position)
    r.add_get("/internal/accounts/{account}/orders/{order_id}", order)
    r.add_get("/internal/restricted", restricted)
    r.add_get("/internal/calendar", calendar)
