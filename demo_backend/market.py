"""Simulated prices: a seeded, mean-reverting random walk per instrument.

Time is cut into ticks of :data:`TICK_SECONDS`; each tick moves each price by
a few exchange ticks, pulled back towards the previous close so the walk
stays plausible (a fraction of a percent) and is clamped inside the daily
limit band (or a synthetic +-10% for Hong Kong). The same seed and the same
sequence of clock readings give the same prices.

Quotes are serialised once per tick and per symbol: the quotes route is the
most benchmarked one, and it answers from those bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .data import INSTRUMENTS, MILS, Instrument, tick_size

TICK_SECONDS = 0.2
#: After an idle spell the walk catches up at most this many steps at once.
MAX_CATCH_UP = 50
_SIGMA = 0.0004  # relative standard deviation of one step
_KAPPA = 0.002  # pull back towards the previous close per step
_HK_BAND_PCT = 10
_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")  # also Hong Kong time


@dataclass(slots=True)
class _State:
    instrument: Instrument
    low: int
    high: int
    rng: random.Random
    price: int
    tick: int
    body: bytes = b""
    payload: dict[str, Any] | None = None


class Market:
    """Current quotes for the demo instruments, driven by a clock."""

    def __init__(self, clock: Callable[[], float], seed: int = 7) -> None:
        self._clock = clock
        start = int(clock() / TICK_SECONDS)
        self._states: dict[str, _State] = {}
        for n, (symbol, inst) in enumerate(sorted(INSTRUMENTS.items())):
            limits = inst.limits
            if limits is None:
                span = inst.prev_close * _HK_BAND_PCT // 100
                limits = (inst.prev_close - span, inst.prev_close + span)
            self._states[symbol] = _State(
                instrument=inst,
                low=limits[0],
                high=limits[1],
                rng=random.Random(seed * 1_000_003 + n),
                price=inst.prev_close,
                tick=start - 1,
            )

    def knows(self, symbol: str) -> bool:
        return symbol in self._states

    def quote(self, symbol: str) -> dict[str, Any]:
        """The current quote as a dict (do not mutate it); KeyError if unknown."""
        state = self._advance(symbol)
        assert state.payload is not None
        return state.payload

    def quote_bytes(self, symbol: str) -> bytes:
        """The current quote as JSON bytes; KeyError if unknown."""
        return self._advance(symbol).body

    def last_price(self, symbol: str) -> int:
        """Last price in mils; KeyError if unknown."""
        return self._advance(symbol).price

    def _advance(self, symbol: str) -> _State:
        state = self._states[symbol]
        now = self._clock()
        tick = int(now / TICK_SECONDS)
        if tick == state.tick:
            return state
        steps = min(tick - state.tick, MAX_CATCH_UP) if tick > state.tick else 0
        inst = state.instrument
        for _ in range(steps):
            step = tick_size(inst, state.price)
            shock = state.rng.gauss(0.0, _SIGMA * state.price)
            pull = _KAPPA * (inst.prev_close - state.price)
            moved = state.price + round((shock + pull) / step) * step
            state.price = min(max(moved, state.low), state.high)
        state.tick = tick
        state.payload = self._payload(state, now)
        state.body = json.dumps(state.payload, separators=(",", ":")).encode()
        return state

    @staticmethod
    def _payload(state: _State, now: float) -> dict[str, Any]:
        inst = state.instrument
        step = tick_size(inst, state.price)
        bid = max(state.price - step, state.low)
        ask = min(state.price + step, state.high)
        limits = inst.limits
        dp = inst.decimals

        def px(mils: int) -> float:
            return round(mils / MILS, dp)

        return {
            "symbol": inst.symbol,
            "name": inst.name,
            "market": inst.market,
            "exchange": inst.exchange,
            "board": inst.board,
            "currency": inst.currency,
            "st": inst.st,
            "risk_level": inst.risk_level,
            "last": px(state.price),
            "bid": px(bid),
            "ask": px(ask),
            "prev_close": px(inst.prev_close),
            "limit_up": px(limits[1]) if limits else None,
            "limit_down": px(limits[0]) if limits else None,
            "limit_pct": inst.limit_pct,
            "tick_size": px(step),
            "board_lot": inst.board_lot,
            "min_qty": inst.min_qty,
            "time": datetime.fromtimestamp(now, _TZ).isoformat(timespec="milliseconds"),
        }
