"""The decision pipeline: an ordered list of steps over one request context.

authenticate -> bind account -> read body -> decrypt -> score -> decide ->
step-up -> audit -> forward (role and account checks sit right after
authentication). A step either returns (the request goes on) or raises
GatewayError (the request stops with that code). Adding a step is one new
class in gateway/steps, placed in the per-tier pipelines that
gateway.server.Gateway._build_pipelines assembles.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence
from typing import Protocol

from gateway.context import RequestContext


class Step(Protocol):
    """``__call__`` is a coroutine function when the step does I/O, a plain function when pure.

    Pure steps (role and account checks, the step-up challenge...) are plain
    functions: a coroutine per step per request is overhead the hot path does
    not need. The pipeline awaits the steps that are coroutine functions, and
    whatever a plain step returns when it is not None: a step that rarely has
    I/O to do (the obligations step) returns a coroutine only then.
    """

    name: str

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None: ...


class Pipeline:
    __slots__ = ("steps", "_calls")

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)
        self._calls = tuple((step, inspect.iscoroutinefunction(step.__call__)) for step in self.steps)

    async def run(self, ctx: RequestContext) -> None:
        for step, is_async in self._calls:
            if is_async:
                await step(ctx)  # type: ignore[misc]
            else:
                pending = step(ctx)
                if pending is not None:
                    await pending
