"""One round trip to the shared state store for what a request needs before its body.

Several steps need the state store on every request: DPoP proof replay
(``jti`` seen before?), rate limits, the risk engine's device, network and
behaviour state. Each round trip to Redis costs the request ~100 us of
latency and the gateway CPU, so they do not talk to the store themselves:
steps placed before :class:`StateRound` queue their operations on the
request's batch (:func:`state_batch`) and register a check
(:func:`after_round`); the round sends every queued operation at once and
then runs the checks in order, which read their results and may refuse the
request. Read routes make this one round trip, trade and transfer routes one
more after the body (gateway/steps/facts.py), as docs/PERFORMANCE.md budgets.

The second round works the same way: once a round has run, the request's batch
is empty again, so steps after the body (the decrypt step's replay cache and
message count) queue on a fresh batch; the facts step sends those operations
with its own counters (one round trip), and a second :class:`StateRound` placed
after it runs their checks (or sends them itself when the facts step had no
reason to talk to the store: admin routes, the gateway's own endpoints).

Failure: when the store cannot be reached, routes that fail closed (trade,
transfer, admin) get 503 ``state_unavailable``; routes that fail open carry on
with ``state_unavailable`` in ``ctx.degraded``, and each check sees results
that are not ``done`` and falls back to what this process knows locally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.context import RequestContext
from gateway.errors import STATE_UNAVAILABLE
from gateway.state.base import Batch, StateStore, StateUnavailable

RoundCheck = Callable[[RequestContext], None]


def state_batch(ctx: RequestContext, store: StateStore) -> Batch:
    """The request's batch for the state round (created on first use)."""
    batch = ctx.batch
    if batch is None:
        batch = ctx.batch = store.batch()
    return batch


def after_round(ctx: RequestContext, check: RoundCheck) -> None:
    """Run ``check(ctx)`` once the round has run (or failed open); it may raise GatewayError."""
    if ctx.round_checks is None:
        ctx.round_checks = [check]
    else:
        ctx.round_checks.append(check)


class StateRound:
    name = "state_round"

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        batch = ctx.batch
        ctx.batch = None  # later steps queue on a new batch (the second round)
        if batch is None or not len(batch):
            run_checks(ctx)
            return None
        if batch.execute_now() is not None:  # an in-memory store: nothing to wait for
            run_checks(ctx)
            return None
        return self._run(ctx, batch)

    @staticmethod
    async def _run(ctx: RequestContext, batch: Batch) -> None:
        try:
            await batch.execute()
        except StateUnavailable:
            if ctx.route.fail_mode == "closed":
                raise  # 503 state_unavailable
            ctx.degraded.append(STATE_UNAVAILABLE.code)
        run_checks(ctx)


def take_batch(ctx: RequestContext, store: StateStore) -> Batch:
    """The request's queued batch for a step that sends it itself (else a new one); the caller executes it
    and a later :class:`StateRound` runs the checks."""
    batch = ctx.batch
    if batch is None:
        return store.batch()
    ctx.batch = None
    return batch


def run_checks(ctx: RequestContext) -> None:
    checks = ctx.round_checks
    if checks:
        ctx.round_checks = None
        for check in checks:
            check(ctx)
