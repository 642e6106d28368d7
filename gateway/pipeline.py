"""The decision pipeline: an ordered list of steps over one request context.

authenticate -> bind account -> read body -> decrypt -> score -> decide ->
step-up -> audit -> forward (role and account checks sit right after
authentication). A step either returns (the request goes on) or raises
GatewayError (the request stops with that code). Adding a step is one new
class in gateway/steps, placed in the per-tier pipelines that
gateway.server.Gateway._build_pipelines assembles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.context import RequestContext


class Step(Protocol):
    name: str

    async def __call__(self, ctx: RequestContext) -> None: ...


class Pipeline:
    __slots__ = ("steps",)

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    async def run(self, ctx: RequestContext) -> None:
        for step in self.steps:
            await step(ctx)
