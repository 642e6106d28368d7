"""Risk scoring: pure signal functions summed into a 0-100 score and a level.

A signal takes the request context and a clock and returns a `Factor` (points
and a reason code) or None. The risk issue adds stateful signals (known
devices, IP history, behaviour baselines) through the same shape; weights and
level thresholds come from configuration.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.context import RequestContext


@dataclass(frozen=True, slots=True)
class Factor:
    code: str
    points: int


@dataclass(frozen=True, slots=True)
class RiskResult:
    score: int
    level: str
    factors: tuple[Factor, ...]


Signal = Callable[[RequestContext, Callable[[], float]], "Factor | None"]

DEFAULT_LEVELS: tuple[tuple[int, str], ...] = ((80, "critical"), (60, "high"), (30, "medium"), (0, "low"))


class RiskScorer(Protocol):
    async def score(self, ctx: RequestContext) -> RiskResult: ...


_AUTOMATION = re.compile(r"headless|phantomjs|selenium|puppeteer|playwright|python-requests|curl/|wget/", re.I)


_AUTOMATION_FACTOR = Factor("automation_client", 20)


# A few distinct user agents carry nearly all traffic: match each once (bounded: client-chosen).
@functools.lru_cache(maxsize=4096)
def _automation_agent(ua: str) -> bool:
    return _AUTOMATION.search(ua) is not None


def automation_client(ctx: RequestContext, clock: Callable[[], float]) -> Factor | None:
    """Headless browsers and scripting clients are how credential-stuffing and bots arrive."""
    return _AUTOMATION_FACTOR if _automation_agent(ctx.headers.get("User-Agent") or "") else None


_NO_UA_FACTOR = Factor("missing_user_agent", 10)
_NO_DEVICE_FACTOR = Factor("missing_device_proof", 15)


def missing_user_agent(ctx: RequestContext, clock: Callable[[], float]) -> Factor | None:
    """Every real app and browser sends a User-Agent; its absence marks a raw script."""
    return None if ctx.headers.get("User-Agent") else _NO_UA_FACTOR


def missing_device_proof(ctx: RequestContext, clock: Callable[[], float]) -> Factor | None:
    """Without a verified device key the device is unknown: the token could be replayed anywhere.

    Only a verified proof sets ctx.device_id; the mere presence of a header counts for nothing.
    """
    return None if ctx.device_id else _NO_DEVICE_FACTOR


BASE_SIGNALS: tuple[Signal, ...] = (automation_client, missing_user_agent, missing_device_proof)


def level_for(score: int, levels: Sequence[tuple[int, str]] = DEFAULT_LEVELS) -> str:
    for threshold, name in levels:
        if score >= threshold:
            return name
    return levels[-1][1]


class SignalScorer:
    """Sums weighted signal factors, caps at 100, keeps the top factors."""

    def __init__(self, signals: Sequence[Signal] = BASE_SIGNALS, *,
                 weights: Mapping[str, float] | None = None,
                 levels: Sequence[tuple[int, str]] = DEFAULT_LEVELS,
                 clock: Callable[[], float] | None = None, top: int = 5) -> None:
        self._signals = tuple(signals)
        self._weights = dict(weights or {})
        self._levels = tuple(sorted(levels, reverse=True))
        self._clock = clock or time.time
        self._top = top

    async def score(self, ctx: RequestContext) -> RiskResult:
        return self.score_sync(ctx)

    def score_sync(self, ctx: RequestContext) -> RiskResult:
        """`score` without a coroutine: these signals need no I/O (the Score step uses it)."""
        clock, weights = self._clock, self._weights
        factors: list[Factor] = []
        for signal in self._signals:
            f = signal(ctx, clock)
            if f is not None:
                if weights:
                    w = weights.get(f.code, 1.0)
                    if not w:
                        continue
                    f = Factor(f.code, round(f.points * w))
                factors.append(f)
        return _result(tuple(factors), self._levels, self._top)


# Few distinct factor sets occur: each result is built once (bounded: points may vary).
@functools.lru_cache(maxsize=4096)
def _result(factors: tuple[Factor, ...], levels: tuple[tuple[int, str], ...], top: int) -> RiskResult:
    ranked = sorted(factors, key=lambda f: -f.points)
    score = min(100, max(0, sum(f.points for f in factors)))
    return RiskResult(score, level_for(score, levels), tuple(ranked[:top]))
