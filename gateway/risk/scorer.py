"""Risk results: the score, its level and the top factors, and the scorer interface.

The signals are in gateway/risk/signals.py, the engine that feeds them shared
state and learns from requests in gateway/risk/engine.py. A scorer only has to
turn a request context into a :class:`RiskResult`; tests and other deployments
may plug in their own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
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


DEFAULT_LEVELS: tuple[tuple[int, str], ...] = ((80, "critical"), (60, "high"), (30, "medium"), (0, "low"))
LEVELS = ("low", "medium", "high", "critical")


class RiskScorer(Protocol):
    async def score(self, ctx: RequestContext) -> RiskResult: ...


def level_for(score: int, levels: Sequence[tuple[int, str]] = DEFAULT_LEVELS) -> str:
    for threshold, name in levels:
        if score >= threshold:
            return name
    return levels[-1][1]


# Few distinct factor sets occur: each result is built once (bounded: points may vary).
@functools.lru_cache(maxsize=4096)
def result_of(factors: tuple[Factor, ...], levels: tuple[tuple[int, str], ...], top: int) -> RiskResult:
    """The score (sum of points, 0-100), its level, and the `top` factors by points (ties: in order)."""
    ranked = sorted(factors, key=lambda f: -f.points)
    score = min(100, max(0, sum(f.points for f in factors)))
    return RiskResult(score, level_for(score, levels), tuple(ranked[:top]))
