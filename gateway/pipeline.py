"""The decision pipeline: an ordered list of steps over one request context.

authenticate -> bind account -> read body -> decrypt -> score -> decide ->
step-up -> audit -> forward. A step either returns (the request goes on) or
raises GatewayError (the request stops with that code). Adding a step is one
new class in gateway/steps, registered in gateway.steps.build_steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.context import RequestContext


class Step(Protocol):
    name: str

    async def __call__(self, ctx: RequestContext) -> None: ...


class Pipeline:
    __slots__ = ("steps", "names")

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)
        self.names = tuple(s.name for s in self.steps)

    async def run(self, ctx: RequestContext) -> None:
        for step in self.steps:
            await step(ctx)
