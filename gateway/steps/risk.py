"""The risk engine's two steps around the scoring (gateway/risk/engine.py).

``risk_state`` (before the state round) queues what the signals need and what
this request records; ``learn`` (after the decision is audited, right before
forwarding) teaches the customer's profile from an allowed, low-risk request
on a known device. Scoring itself is the ``score`` step (gateway/steps/judge.py).
"""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.risk.engine import RiskEngine


class RiskState:
    name = "risk_state"

    def __init__(self, engine: RiskEngine) -> None:
        self._engine = engine

    def __call__(self, ctx: RequestContext) -> None:
        self._engine.prepare(ctx)


class Learn:
    name = "learn"

    def __init__(self, engine: RiskEngine) -> None:
        self._engine = engine

    def __call__(self, ctx: RequestContext) -> None:
        self._engine.learn(ctx)
