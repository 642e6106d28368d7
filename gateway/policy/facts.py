"""Facts for the policy input, and the pure helpers that shape them (no I/O).

The Facts step (gateway/steps/facts.py) fills :class:`Facts` on the request
context from the providers and the state store; `gateway.policy.input`
turns the context into the v1 input document. Everything here is pure so the
input builder and its edge cases (exchange-local clock, body shapes) are
tested without a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from gateway.freezes import Freeze
    from gateway.settings import SecuritySettings

EXCHANGE_TZ_NAME = "Asia/Shanghai"
EXCHANGE_TZ = ZoneInfo(EXCHANGE_TZ_NAME)

ORDER_FIELDS = ("symbol", "side", "qty", "price", "type", "client_order_id", "account")
TRANSFER_FIELDS = ("direction", "amount", "currency", "bank_account_id", "account")
ACCOUNT_KEYS = frozenset({"account", "account_id"})
_MAX_WALK = 10_000  # nodes visited when collecting body accounts (bodies are size-limited anyway)


@dataclass(slots=True)
class Facts:
    """What the providers and counters said about this request (None: not looked up)."""

    instrument: dict[str, Any] | None = None
    quote: dict[str, Any] | None = None
    account: dict[str, Any] | None = None
    position: dict[str, Any] | None = None
    restricted: dict[str, bool] | None = None
    trading_day: bool | None = None
    counters: dict[str, Any] | None = None
    freeze: Freeze | None = None
    """The gateway's own freeze of the request's account (trade and transfer routes); None: not frozen."""
    cancelled: dict[str, Any] | None = None
    """On a cancel: the order being cancelled (the order provider's answer); None: no such order here."""
    settings: SecuritySettings | None = None
    """The customer's security settings in force (read beside the freeze on a transfer); None: not read."""


def exchange_time(now: float) -> datetime:
    return datetime.fromtimestamp(now, EXCHANGE_TZ)


def _clock_fields(whole_second: int) -> tuple[str, int, str, int]:
    """date, ISO weekday, HH:MM:SS and second of day of an epoch second, exchange-local."""
    t = exchange_time(whole_second)
    hour, minute, second = t.hour, t.minute, t.second
    return (t.date().isoformat(), t.isoweekday(),
            f"{hour:02d}:{minute:02d}:{second:02d}",  # strftime("%H:%M:%S"), at a third of its cost
            hour * 3600 + minute * 60 + second)


_last_clock: tuple[int, tuple[str, int, str, int]] = (-1, ("", 0, "", 0))


def exchange_clock(now: float, trading_day: bool | None) -> dict[str, Any]:
    """The input's ``clock``: exchange-local date and time of ``now`` (epoch seconds).

    The fields of the last whole second are kept (requests arrive many per second); the whole
    second is the one `datetime.fromtimestamp` shows, which rounds to the microsecond (half even).
    """
    global _last_clock
    whole = math.floor(now)
    if round((now - whole) * 1e6) >= 1_000_000:
        whole += 1
    cached_second, fields = _last_clock
    if whole != cached_second:
        fields = _clock_fields(whole)
        _last_clock = (whole, fields)
    date, weekday, time_text, second_of_day = fields
    return {
        "epoch": now,
        "tz": EXCHANGE_TZ_NAME,
        "date": date,
        "weekday": weekday,
        "time": time_text,
        "second_of_day": second_of_day,
        "trading_day": trading_day,
    }


def seconds_to_day_end(now: float) -> float:
    """Seconds from ``now`` to the next exchange-local midnight (always > 0)."""
    t = exchange_time(now)
    midnight = datetime(t.year, t.month, t.day, tzinfo=EXCHANGE_TZ) + timedelta(days=1)
    return max(midnight.timestamp() - now, 0.001)


def _fields(body: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The named members of a JSON object body, client types kept; null when absent."""
    src = body if isinstance(body, dict) else {}
    return {name: src.get(name) for name in names}


def order_doc(body: Any) -> dict[str, Any]:
    return _fields(body, ORDER_FIELDS)


def transfer_doc(body: Any) -> dict[str, Any]:
    return _fields(body, TRANSFER_FIELDS)


CANCEL_ORDER_FIELDS = ("symbol", "side", "status", "account")


def cancel_doc(params: dict[str, str], cancelled: dict[str, Any] | None = None) -> dict[str, Any]:
    """The input's ``cancel``: the order id, and the order's symbol, side, status and account from
    the order provider (all null when the account has no such order: nothing about another
    account's order reaches the policy)."""
    src = cancelled if cancelled is not None else {}
    return {"order_id": params.get("order_id"), **{name: src.get(name) for name in CANCEL_ORDER_FIELDS}}


def body_accounts(body: Any) -> list[Any]:
    """Every value of an ``account`` / ``account_id`` member anywhere in the body, in order."""
    if isinstance(body, dict):
        # The usual body (an order, a transfer) is one flat object: no walk needed.
        found = [v for k, v in body.items() if k in ACCOUNT_KEYS and not isinstance(v, (dict, list))]
        for value in body.values():
            if isinstance(value, (dict, list)):
                break
        else:
            return found
    found = []
    stack: list[Any] = [body]
    seen = 0
    while stack and seen < _MAX_WALK:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ACCOUNT_KEYS and not isinstance(value, (dict, list)):
                    found.append(value)
            stack.extend(reversed([v for v in node.values() if isinstance(v, (dict, list))]))
        elif isinstance(node, list):
            stack.extend(reversed([v for v in node if isinstance(v, (dict, list))]))
    return found


def order_notional(order: dict[str, Any], quote: dict[str, Any] | None) -> float | None:
    """qty x price (limit), or qty x last (market); None when the order is not well formed."""
    qty = _positive(order.get("qty"))
    price = _positive(order.get("price"))
    if price is None and quote is not None:
        price = _positive(quote.get("last"))
    if qty is None or price is None:
        return None
    return qty * price


def _positive(value: Any) -> float | None:
    """A finite number > 0 as a float (booleans are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None
