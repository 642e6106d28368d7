"""The demo's reference data: instruments and customers.

Everything here is fiction made to look plausible. Symbols and company names
are real listings so the demo reads naturally, but prices are approximate,
the ST instrument is deliberately given a made-up name, and every customer,
ID number, phone number and bank account is invented.

Prices are held as integers in thousandths of the currency unit ("mils"), so
tick arithmetic is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

Market = Literal["cn_a", "hk_connect"]
Board = Literal["main", "star", "chinext", "hk_main"]

MILS = 1000
#: Demo conversion rate for Stock Connect trades settled in CNY.
HKD_CNY = Decimal("0.92")


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    name: str
    market: Market
    exchange: Literal["SSE", "SZSE", "SEHK"]
    board: Board
    currency: Literal["CNY", "HKD"]
    prev_close: int  # mils
    board_lot: int  # quantity step for buys
    min_qty: int  # smallest buy order
    risk_level: Literal["R1", "R2", "R3", "R4", "R5"]
    st: bool = False
    adv_cny: int = 1_000_000_000
    """Average daily value traded (CNY): what the risk engine calls liquid or illiquid."""

    @property
    def limit_pct(self) -> int | None:
        """Daily price limit in percent of the previous close (None: no limit)."""
        if self.market == "hk_connect":
            return None  # SEHK has a volatility control mechanism, not daily limits
        if self.st:
            return 5
        if self.board in ("star", "chinext"):
            return 20
        return 10

    @property
    def limits(self) -> tuple[int, int] | None:
        """(limit_down, limit_up) in mils, rounded half-up to the cent as exchanges do."""
        pct = self.limit_pct
        if pct is None:
            return None
        base = Decimal(self.prev_close) / MILS
        cent = Decimal("0.01")
        up = (base * (100 + pct) / 100).quantize(cent, ROUND_HALF_UP)
        down = (base * (100 - pct) / 100).quantize(cent, ROUND_HALF_UP)
        return int(down * MILS), int(up * MILS)

    @property
    def decimals(self) -> int:
        return 3 if self.market == "hk_connect" else 2


def tick_size(instrument: Instrument, price: int) -> int:
    """Minimum price step in mils at ``price``.

    A-shares move in 0.01 CNY. SEHK uses its spread table: the step grows
    with the price.
    """
    if instrument.market != "hk_connect":
        return 10
    for ceiling, step in _HK_SPREADS:
        if price < ceiling:
            return step
    return 5000


_HK_SPREADS: tuple[tuple[int, int], ...] = (
    (250, 1),
    (500, 5),
    (10_000, 10),
    (20_000, 20),
    (100_000, 50),
    (200_000, 100),
    (500_000, 200),
    (1_000_000, 500),
    (2_000_000, 1000),
    (5_000_000, 2000),
)


def _cn(symbol: str, name: str, board: Board, prev: str, risk: str, st: bool = False,
        adv: int = 1_000_000_000) -> Instrument:
    exchange: Literal["SSE", "SZSE"] = "SSE" if symbol.endswith(".SH") else "SZSE"
    star = board == "star"
    return Instrument(
        symbol=symbol,
        name=name,
        market="cn_a",
        exchange=exchange,
        board=board,
        currency="CNY",
        prev_close=int(Decimal(prev) * MILS),
        board_lot=1 if star else 100,
        min_qty=200 if star else 100,
        risk_level=risk,  # type: ignore[arg-type]
        st=st,
        adv_cny=adv,
    )


def _hk(symbol: str, name: str, prev: str, lot: int, risk: str) -> Instrument:
    return Instrument(
        symbol=symbol,
        name=name,
        market="hk_connect",
        exchange="SEHK",
        board="hk_main",
        currency="HKD",
        prev_close=int(Decimal(prev) * MILS),
        board_lot=lot,
        min_qty=lot,
        risk_level=risk,  # type: ignore[arg-type]
    )


INSTRUMENTS: dict[str, Instrument] = {
    i.symbol: i
    for i in (
        _cn("600519.SH", "Kweichow Moutai", "main", "1450.00", "R3"),
        _cn("601318.SH", "Ping An Insurance", "main", "57.20", "R3"),
        _cn("000001.SZ", "Ping An Bank", "main", "11.50", "R2"),
        _cn("688981.SH", "SMIC", "star", "120.00", "R4"),
        _cn("300750.SZ", "CATL", "chinext", "250.00", "R4"),
        _cn("600137.SH", "ST Demo Holdings", "main", "8.00", "R5", st=True, adv=6_000_000),
        _hk("00700.HK", "Tencent Holdings", "520.00", 100, "R4"),
        _hk("09988.HK", "Alibaba Group", "150.00", 100, "R4"),
    )
}


# --------------------------------------------------------------------------
# Customers


@dataclass(frozen=True, slots=True)
class BankAccount:
    id: str
    bank: str
    number: str
    added_days_ago: float = 400.0
    """When the customer linked it (the demo counts back from the backend's start)."""

    @property
    def masked(self) -> str:
        return f"{self.number[:4]} **** **** {self.number[-4:]}"


@dataclass(frozen=True, slots=True)
class Holding:
    symbol: str
    qty: int
    today_bought: int
    avg_cost: str


@dataclass(frozen=True, slots=True)
class Customer:
    sub: str
    account: str
    name: str
    id_number: str
    phone: str
    address: str
    bank_accounts: tuple[BankAccount, ...]
    investor_level: Literal["C1", "C2", "C3", "C4", "C5"]
    lowest_category: bool
    assets_cny: int
    trading_months: int
    programme_trading_report: bool
    single_trade_limit: int
    daily_limit: int
    cash_cny: str
    holdings: tuple[Holding, ...]
    last_deposit: tuple[int, float] | None = None
    """(amount in CNY, days ago) of the last deposit, for the risk engine's deposit signal."""

    @property
    def star_eligible(self) -> bool:
        return self.assets_cny >= 500_000 and self.trading_months >= 24

    @property
    def hk_connect_eligible(self) -> bool:
        return self.assets_cny >= 500_000


def _id_number(region: str, birth: str, seq: str) -> str:
    """A syntactically valid resident ID (GB 11643-1999 check digit) for fictional people."""
    body = region + birth + seq
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(body, weights, strict=True))
    return body + "10X98765432"[total % 11]


CUSTOMERS: dict[str, Customer] = {
    c.account: c
    for c in (
        Customer(
            sub="alice",
            account="A1",
            name="Alice Wang",
            id_number=_id_number("110105", "19850312", "002"),
            phone="+86 138 0000 0001",
            address="Room 1201, 8 Demo Road, Chaoyang District, Beijing",
            bank_accounts=(
                BankAccount("bank-a1-1", "Demo Commercial Bank", "6222020000000000011"),
                BankAccount("bank-a1-2", "Example Merchants Bank", "6214830000000000027", added_days_ago=2),
            ),
            investor_level="C4",
            lowest_category=False,
            assets_cny=1_200_000,
            trading_months=60,
            programme_trading_report=False,
            single_trade_limit=200_000,
            daily_limit=500_000,
            cash_cny="300000.00",
            holdings=(
                Holding("600519.SH", 200, 0, "1398.50"),
                Holding("000001.SZ", 5000, 1000, "11.20"),
                Holding("688981.SH", 500, 0, "98.40"),
                Holding("00700.HK", 350, 0, "455.00"),
            ),
        ),
        Customer(
            sub="bob",
            account="B9",
            name="Bob Li",
            id_number=_id_number("310104", "19990806", "013"),
            phone="+86 139 0000 0009",
            address="No. 9, Lane 99, Sample Street, Xuhui District, Shanghai",
            bank_accounts=(
                BankAccount("bank-b9-1", "Demo Commercial Bank", "6222020000000000093"),
            ),
            investor_level="C1",
            lowest_category=True,
            assets_cny=80_000,
            trading_months=3,
            programme_trading_report=False,
            single_trade_limit=20_000,
            daily_limit=50_000,
            cash_cny="20000.00",
            holdings=(
                Holding("000001.SZ", 1000, 0, "11.80"),
                Holding("601318.SH", 150, 0, "55.10"),
            ),
        ),
        Customer(
            sub="carol",
            account="C3",
            name="Carol Chen",
            id_number=_id_number("440305", "19780221", "024"),
            phone="+86 137 0000 0003",
            address="Flat 3B, 3 Example Avenue, Nanshan District, Shenzhen",
            bank_accounts=(
                BankAccount("bank-c3-1", "Example Merchants Bank", "6214830000000000035"),
            ),
            investor_level="C3",
            lowest_category=False,
            assets_cny=650_000,
            trading_months=30,
            programme_trading_report=True,
            single_trade_limit=300_000,
            daily_limit=1_000_000,
            cash_cny="100000.00",
            holdings=(
                Holding("300750.SZ", 400, 0, "231.00"),
                Holding("600137.SH", 1000, 0, "8.40"),
            ),
            last_deposit=(500_000, 1.0),
        ),
    )
}
