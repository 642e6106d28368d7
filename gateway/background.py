"""Coroutines run beside the request path: ones their owner waits for before it closes, and periodic work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["Background", "Periodic"]


class Background:
    """A set of tasks: ``spawn`` one, ``drain`` them all (a task may spawn more while they drain).

    ``on_error`` is told of each task that ended with an exception (nothing else sees it)."""

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_error = on_error

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None and self._on_error is not None:
            self._on_error(exc)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Periodic:
    """``work`` every ``interval`` seconds on a task of its own, from :meth:`start` until :meth:`stop`
    (the flushes of counts kept in memory: risk profiles, shadow tallies, decision statistics)."""

    def __init__(self, work: Callable[[], Awaitable[object]], interval: float, name: str) -> None:
        self._work = work
        self._interval = interval
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._work()

    async def stop(self) -> None:
        """Cancel the loop and wait for it (the owner runs its last ``work`` itself, when it needs one)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
