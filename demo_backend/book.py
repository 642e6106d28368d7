"""The in-memory brokerage: accounts, cash, positions, orders and transfers.

A demo, not an exchange: market orders fill at once at the last price,
limit orders stay open until cancelled, and the only checks are the ones a
book needs to stay consistent (enough cash for a market buy, enough sellable
shares for a sell, a known bank account). Compliance lives in the gateway.

Shares bought today are kept apart (``today_bought``) because A-shares settle
T+1: they become sellable on the next trading day (here: the next calendar
day in Asia/Shanghai).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from .data import CUSTOMERS, HKD_CNY, INSTRUMENTS, MILS, Customer
from .errors import DemoError, invalid_order, invalid_transfer
from .market import Market
from .payloads import OrderRequest, TransferRequest

_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
_CENT = Decimal("0.01")
_OPEN = "accepted"


@dataclass(slots=True)
class Position:
    symbol: str
    qty: int
    today_bought: int
    avg_cost: Decimal


@dataclass(slots=True)
class Order:
    order_id: str
    client_order_id: str | None
    account: str
    symbol: str
    side: str
    qty: int
    type: str
    price: Decimal | None
    status: str
    filled_qty: int
    avg_fill_price: Decimal | None
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "client_order_id": self.client_order_id,
            "account": self.account,
            "symbol": self.symbol,
            "side": self.side,
            "qty": self.qty,
            "type": self.type,
            "price": _num(self.price),
            "status": self.status,
            "filled_qty": self.filled_qty,
            "avg_fill_price": _num(self.avg_fill_price),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(slots=True)
class _Account:
    customer: Customer
    cash: Decimal
    positions: dict[str, Position]
    day: date
    orders: dict[str, Order] = field(default_factory=dict)
    transfers: list[dict[str, Any]] = field(default_factory=list)


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


class Brokerage:
    """All demo accounts. Methods raise DemoError for the caller to render."""

    def __init__(self, market: Market, clock: Callable[[], float]) -> None:
        self._market = market
        self._clock = clock
        today = self._now().date()
        self._accounts = {
            acct: _Account(
                customer=c,
                cash=Decimal(c.cash_cny),
                positions={
                    h.symbol: Position(h.symbol, h.qty, h.today_bought, Decimal(h.avg_cost))
                    for h in c.holdings
                },
                day=today,
            )
            for acct, c in CUSTOMERS.items()
        }

    # -- reading

    def profile(self, account: str) -> dict[str, Any]:
        c = self._account(account).customer
        return {
            "account": c.account,
            "customer_id": c.sub,
            "name": c.name,
            "id_number": c.id_number,
            "phone": c.phone,
            "address": c.address,
            "bank_accounts": [
                {"id": b.id, "bank": b.bank, "number_masked": b.masked, "number": b.number}
                for b in c.bank_accounts
            ],
            "investor_level": c.investor_level,
            "lowest_category": c.lowest_category,
            "assets_cny": c.assets_cny,
            "trading_months": c.trading_months,
            "star_eligible": c.star_eligible,
            "hk_connect_eligible": c.hk_connect_eligible,
            "programme_trading_report": c.programme_trading_report,
            "single_trade_limit": c.single_trade_limit,
            "daily_limit": c.daily_limit,
            "currency": "CNY",
        }

    def positions(self, account: str) -> dict[str, Any]:
        book = self._account(account)
        rows = []
        for pos in book.positions.values():
            inst = INSTRUMENTS[pos.symbol]
            rows.append(
                {
                    "symbol": pos.symbol,
                    "name": inst.name,
                    "market": inst.market,
                    "currency": inst.currency,
                    "qty": pos.qty,
                    "today_bought": pos.today_bought,
                    "sellable": self._sellable(book, pos.symbol),
                    "avg_cost": float(pos.avg_cost),
                    "last": round(self._market.last_price(pos.symbol) / MILS, inst.decimals),
                }
            )
        return {
            "account": account,
            "cash": float(book.cash),
            "currency": "CNY",
            "positions": rows,
        }

    def orders(self, account: str) -> dict[str, Any]:
        book = self._account(account)
        return {"account": account, "orders": [o.to_json() for o in book.orders.values()]}

    def order(self, account: str, order_id: str) -> dict[str, Any] | None:
        """One order of this account (None when it has none by this id)."""
        found = self._account(account).orders.get(order_id)
        return None if found is None else found.to_json()

    # -- trading

    def place_order(self, account: str, req: OrderRequest) -> dict[str, Any]:
        book = self._account(account)
        inst = INSTRUMENTS.get(req.symbol)
        if inst is None:
            raise invalid_order(f"symbol: {req.symbol!r} is not a known instrument")
        if req.client_order_id is not None and any(
            o.client_order_id == req.client_order_id for o in book.orders.values()
        ):
            raise DemoError(409, "duplicate_order", "an order with this client_order_id exists")
        if req.side == "sell" and req.qty > self._sellable(book, req.symbol):
            raise DemoError(
                422, "insufficient_position", "the quantity exceeds the sellable position"
            )
        stamp = self._now().isoformat(timespec="milliseconds")
        order = Order(
            order_id=f"ord-{secrets.token_hex(8)}",
            client_order_id=req.client_order_id,
            account=account,
            symbol=req.symbol,
            side=req.side,
            qty=req.qty,
            type=req.type,
            price=req.price,
            status=_OPEN,
            filled_qty=0,
            avg_fill_price=None,
            created_at=stamp,
            updated_at=stamp,
        )
        if req.type == "market":
            self._fill(book, order)
        book.orders[order.order_id] = order
        return order.to_json()

    def cancel_order(self, account: str, order_id: str) -> dict[str, Any]:
        book = self._account(account)
        order = book.orders.get(order_id)
        if order is None:
            raise DemoError(404, "unknown_order", "no such order in this account")
        if order.status != _OPEN:
            raise DemoError(409, "order_not_cancellable", f"the order is already {order.status}")
        order.status = "cancelled"
        order.updated_at = self._now().isoformat(timespec="milliseconds")
        return order.to_json()

    def transfer(self, account: str, req: TransferRequest) -> dict[str, Any]:
        book = self._account(account)
        bank = next((b for b in book.customer.bank_accounts if b.id == req.bank_account_id), None)
        if bank is None:
            raise invalid_transfer("bank_account_id: not one of this account's bank accounts")
        if req.direction == "out":
            if req.amount > book.cash:
                raise DemoError(422, "insufficient_funds", "the amount exceeds the available cash")
            book.cash -= req.amount
        else:
            book.cash += req.amount
        record = {
            "transfer_id": f"trf-{secrets.token_hex(8)}",
            "account": account,
            "direction": req.direction,
            "amount": float(req.amount),
            "currency": req.currency,
            "bank_account_id": bank.id,
            "bank_account_masked": bank.masked,
            "status": "completed",
            "cash_after": float(book.cash),
            "created_at": self._now().isoformat(timespec="milliseconds"),
        }
        book.transfers.append(record)
        return record

    # -- internals

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), _TZ)

    def _account(self, account: str) -> _Account:
        book = self._accounts.get(account)
        if book is None:
            raise DemoError(404, "unknown_account", "no such account")
        today = self._now().date()
        if book.day != today:  # T+1: yesterday's buys settle overnight
            for pos in book.positions.values():
                pos.today_bought = 0
            book.day = today
        return book

    @staticmethod
    def _sellable(book: _Account, symbol: str) -> int:
        pos = book.positions.get(symbol)
        if pos is None:
            return 0
        reserved = sum(
            o.qty - o.filled_qty
            for o in book.orders.values()
            if o.symbol == symbol and o.side == "sell" and o.status == _OPEN
        )
        return max(pos.qty - pos.today_bought - reserved, 0)

    def _fill(self, book: _Account, order: Order) -> None:
        inst = INSTRUMENTS[order.symbol]
        price = Decimal(self._market.last_price(order.symbol)) / MILS
        notional = price * order.qty
        if inst.currency == "HKD":
            notional *= HKD_CNY
        notional = notional.quantize(_CENT)
        pos = book.positions.get(order.symbol)
        if order.side == "buy":
            if notional > book.cash:
                raise DemoError(422, "insufficient_funds", "the order exceeds the available cash")
            book.cash -= notional
            if pos is None:
                book.positions[order.symbol] = Position(order.symbol, order.qty, order.qty, price)
            else:
                total = pos.qty + order.qty
                pos.avg_cost = ((pos.avg_cost * pos.qty + price * order.qty) / total).quantize(
                    Decimal("0.001")
                )
                pos.qty = total
                pos.today_bought += order.qty
        else:
            assert pos is not None  # place_order checked the sellable quantity
            book.cash += notional
            pos.qty -= order.qty
            if pos.qty == 0:
                del book.positions[order.symbol]
        order.status = "filled"
        order.filled_qty = order.qty
        order.avg_fill_price = price
