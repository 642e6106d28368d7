"""Score risk, decide by policy, and raise the step-up challenge when asked.

Each dependency failure follows the route's fail mode: trade, transfer and
admin routes fail closed (503 with the dependency's code); read routes with
`fail_mode = "open"` carry on, and the request's audit record names what
degraded. A policy failure is also counted by reason
(``portcullis_policy_errors_total{reason, tier}``, see `policy_error_reason`).

A deny that carries obligations is not refused here: the obligations step
(gateway/steps/obligations.py) placed right after this one carries them out
(a freeze, an alert) and then refuses the request itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.context import RequestContext
from gateway.errors import (
    POLICY_DENIED,
    POLICY_UNAVAILABLE,
    RISK_UNAVAILABLE,
    STEP_UP_REQUIRED,
    ErrorKind,
    GatewayError,
)
from gateway.mfa.challenges import challenge_header
from gateway.policy.decision import ObligationError
from gateway.policy.engine import Decision, PolicyEngine
from gateway.policy.input import build_input
from gateway.risk.scorer import RiskResult, RiskScorer


def _fail(ctx: RequestContext, kind: ErrorKind, exc: Exception) -> None:
    """Fail closed, or note the degradation and carry on when the route allows it."""
    if ctx.route.fail_mode == "closed":
        raise GatewayError(kind) from exc
    ctx.degraded.append(kind.code)


class Score:
    """Asks the scorer; a scorer with a synchronous ``score_sync`` is called without a coroutine."""

    name = "score"

    def __init__(self, scorer: RiskScorer) -> None:
        self._scorer = scorer
        self._sync: Callable[[RequestContext], RiskResult] | None = getattr(scorer, "score_sync", None)

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        if self._sync is None:
            return self._score(ctx)
        try:
            ctx.risk = self._sync(ctx)
        except Exception as exc:  # any scorer failure is a dependency failure
            _fail(ctx, RISK_UNAVAILABLE, exc)
        return None

    async def _score(self, ctx: RequestContext) -> None:
        try:
            ctx.risk = await self._scorer.score(ctx)
        except Exception as exc:
            _fail(ctx, RISK_UNAVAILABLE, exc)


def policy_error_reason(exc: BaseException) -> str:
    """``timeout``, ``runtime_error`` or ``unavailable``: the metric label of a failed evaluation.

    The embedded engine reports every failure as POLICY_UNAVAILABLE; one over its
    time budget says "budget" (gateway/policy/rego.py, pinned by a test). Engine
    errors, panics, undefined or malformed decisions are runtime errors; anything
    else (an engine that cannot be reached, a bug) is ``unavailable``.
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, GatewayError) and exc.code == POLICY_UNAVAILABLE.code:
        return "timeout" if "budget" in exc.message else "runtime_error"
    if isinstance(exc, RuntimeError):
        return "runtime_error"
    return "unavailable"


class Decide:
    name = "decide"

    def __init__(self, engine: PolicyEngine, *,
                 on_error: Callable[[str, str], None] | None = None) -> None:
        self._engine = engine
        self._now: Callable[[dict[str, Any]], Decision | None] | None = getattr(engine, "evaluate_now", None)
        self._on_error = on_error
        """Called with (reason, tier) for each failed evaluation (the metrics counter)."""

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        # An engine that judges synchronously (`evaluate_now`) costs no coroutine here.
        try:
            doc = ctx.policy_input = build_input(ctx, getattr(self._engine, "input_members", None))
            decision = self._now(doc) if self._now is not None else None
        except Exception as exc:
            self._failed(ctx, exc)
            return None
        if decision is None:
            return self._evaluate(ctx, doc)
        self._decided(ctx, decision)
        return None

    async def _evaluate(self, ctx: RequestContext, doc: dict[str, Any]) -> None:
        try:
            decision = await self._engine.evaluate(doc)
        except Exception as exc:
            self._failed(ctx, exc)
            return
        self._decided(ctx, decision)

    def _failed(self, ctx: RequestContext, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(policy_error_reason(exc), ctx.route.tier)
        if isinstance(exc, ObligationError):
            raise exc  # never degraded: the request would go on without what the policy required
        _fail(ctx, POLICY_UNAVAILABLE, exc)
        ctx.decision = Decision(allow=True, policy_version="degraded")

    @staticmethod
    def _decided(ctx: RequestContext, decision: Decision) -> None:
        ctx.decision = decision
        if not decision.allow and decision.step_up is None and not decision.obligations:
            reasons = [{"code": r.code, "message": r.message} for r in decision.deny]
            raise GatewayError(POLICY_DENIED, extra={"reasons": reasons})


def bare_challenge(ctx: RequestContext) -> GatewayError:
    """The RFC 9470 challenge without a challenge to answer (``[step_up] enabled = false``).

    With step-up enabled, gateway/steps/step_up.py stores a challenge bound to the request
    and adds its id and methods; this form only tells the client what level is asked.
    """
    decision = ctx.decision
    assert decision is not None and decision.step_up is not None
    su = decision.step_up
    factors = [f.code for f in ctx.risk.factors] if ctx.risk is not None else []
    return GatewayError(
        STEP_UP_REQUIRED,
        headers={"WWW-Authenticate": challenge_header(su.acr, su.max_age, "A stronger authentication is required")},
        extra={"methods": list(su.methods), "acr_values": su.acr, "reasons": [r.code for r in decision.deny],
               "risk_factors": factors},
    )
