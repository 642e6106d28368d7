"""The decision pipeline: an ordered list of steps over one request context.

authenticate -> bind account -> state round -> read body -> decrypt -> facts ->
score -> decide -> obligations -> step-up -> audit -> forward (role and account
checks sit right after authentication; the state round sends in one round
trip what the steps before it queued for the shared state store). A step either returns (the request goes on) or raises
GatewayError (the request stops with that code). Adding a step is one new
class in gateway/steps, placed in the per-tier pipelines that
gateway.server.Gateway._build_pipelines assembles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from gateway.context import RequestContext


class Step(Protocol):
    """A step returns None when it finished, or an awaitable when it has I/O to wait for.

    Pure steps (role and account checks, the step-up challenge...) are plain
    functions, and steps with a fast path (a cached token, a queued audit
    record) return an awaitable only when they must wait: a coroutine per
    step per request is overhead the hot path does not need. ``async def``
    steps fit too (their call returns a coroutine, which is awaited).
    """

    name: str

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None: ...


class Pipeline:
    __slots__ = ("steps",)

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    async def run(self, ctx: RequestContext) -> None:
        for step in self.steps:
            pending = step(ctx)
            if pending is not None:
                await pending
