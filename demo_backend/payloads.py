"""Parsing order and transfer bodies into typed requests.

Only the shape is checked here (types, ranges, known symbols and bank
accounts are checked by the book). Trading rules (lots, bands, sessions,
suitability) are the gateway's policies' business, not the demo backend's.
Unknown fields are ignored so the gateway may add its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from .errors import invalid_order, invalid_transfer

MAX_QTY = 10_000_000
MAX_AMOUNT = Decimal("1000000000")
MAX_PRICE = Decimal("1000000")
_CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_CENT = Decimal("0.01")
_MIL = Decimal("0.001")


@dataclass(frozen=True, slots=True)
class OrderRequest:
    symbol: str
    side: Literal["buy", "sell"]
    qty: int
    type: Literal["limit", "market"]
    price: Decimal | None
    client_order_id: str | None


@dataclass(frozen=True, slots=True)
class TransferRequest:
    direction: Literal["in", "out"]
    amount: Decimal
    currency: Literal["CNY"]
    bank_account_id: str


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _decimal(value: Any) -> Decimal | None:
    if not _is_number(value):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:  # pragma: no cover - finite numbers always convert
        return None


def parse_order(body: Any) -> OrderRequest:
    """An order from a decoded JSON body; DemoError ``invalid_order`` if malformed."""
    if not isinstance(body, dict):
        raise invalid_order("the order must be a JSON object")
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise invalid_order("symbol: a non-empty string is required")
    side = body.get("side")
    if side not in ("buy", "sell"):
        raise invalid_order('side: must be "buy" or "sell"')
    qty = body.get("qty")
    if not isinstance(qty, int) or isinstance(qty, bool):
        raise invalid_order("qty: an integer is required")
    if not 0 < qty <= MAX_QTY:
        raise invalid_order(f"qty: must be between 1 and {MAX_QTY}")
    kind = body.get("type")
    if kind not in ("limit", "market"):
        raise invalid_order('type: must be "limit" or "market"')
    raw_price = body.get("price")
    price: Decimal | None = None
    if kind == "limit":
        price = _decimal(raw_price)
        if price is None or price <= 0:
            raise invalid_order("price: a positive number is required for a limit order")
        if price > MAX_PRICE:
            raise invalid_order(f"price: at most {MAX_PRICE}")
        if price != price.quantize(_MIL):
            raise invalid_order("price: at most 3 decimal places")
    elif raw_price is not None:
        raise invalid_order("price: must be null for a market order")
    client_order_id = body.get("client_order_id")
    if client_order_id is not None and (
        not isinstance(client_order_id, str) or not _CLIENT_ORDER_ID.fullmatch(client_order_id)
    ):
        raise invalid_order("client_order_id: 1-64 characters of letters, digits and ._:-")
    return OrderRequest(
        symbol=symbol,
        side=side,
        qty=qty,
        type=kind,
        price=price,
        client_order_id=client_order_id,
    )


def parse_transfer(body: Any) -> TransferRequest:
    """A transfer from a decoded JSON body; DemoError ``invalid_transfer`` if malformed."""
    if not isinstance(body, dict):
        raise invalid_transfer("the transfer must be a JSON object")
    direction = body.get("direction")
    if direction not in ("in", "out"):
        raise invalid_transfer('direction: must be "in" or "out"')
    amount = _decimal(body.get("amount"))
    if amount is None or amount <= 0:
        raise invalid_transfer("amount: a positive number is required")
    if amount > MAX_AMOUNT:
        raise invalid_transfer(f"amount: at most {MAX_AMOUNT}")
    if amount != amount.quantize(_CENT):
        raise invalid_transfer("amount: at most 2 decimal places")
    currency = body.get("currency", "CNY")
    if currency != "CNY":
        raise invalid_transfer('currency: only "CNY" is supported')
    bank_account_id = body.get("bank_account_id")
    if not isinstance(bank_account_id, str) or not bank_account_id:
        raise invalid_transfer("bank_account_id: a non-empty string is required")
    return TransferRequest(
        direction=direction,
        amount=amount.quantize(_CENT),
        currency="CNY",
        bank_account_id=bank_account_id,
    )
