"""Audit sinks: where decision and security-event records become durable.

`write()` returns only once the record is on disk (fsync), so the gateway can
forward trade, transfer and admin requests strictly after their decision
record is durable. Writes are group-committed: records arriving within
`fsync_interval` share one write and one fsync, which keeps the per-record
cost to a JSON dump and a list append on the event loop.

The audit issue hardens this (SM3 hash chain, SM2-signed checkpoints,
rotation and retention, a PostgreSQL store) behind the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson


class AuditWriteError(Exception):
    """The record could not be made durable."""


class AuditSink(Protocol):
    async def write(self, record: Mapping[str, Any]) -> None:
        """Return once the record is durable; raise AuditWriteError otherwise."""
        ...

    def submit(self, record: Mapping[str, Any]) -> asyncio.Future[None]:
        """Queue the record without waiting; the future resolves when durable."""
        ...

    def enqueue(self, record: Mapping[str, Any]) -> None:
        """Queue the record with nobody waiting for it; a failed write is counted in `failed`."""
        ...

    @property
    def failed(self) -> int:
        """Queued records (from `enqueue`) whose write failed."""
        ...

    @property
    def backlog(self) -> int: ...

    async def close(self) -> None: ...


_ORJSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def encode(record: Mapping[str, Any]) -> bytes:
    """Canonical line form: sorted keys, compact, UTF-8, one line (orjson: ~2 us, json: ~16 us)."""
    return orjson.dumps(record, option=_ORJSON_OPTS, default=str)


class FileAuditSink:
    """Append-only JSON Lines segments with batched fsync.

    Two promises, by who is waiting. A record someone awaits (``write`` or
    ``submit``: the write-ahead decision records of trade, transfer and admin
    requests) is fsynced before its future resolves, together with everything
    written before it. A queued record (``enqueue``) is written to the file
    within ``fsync_interval`` on the event loop, so a gateway crash keeps it,
    and fsynced within ``sync_interval``, so a power cut loses at most that
    much. Under read traffic that is a handful of fsyncs a second instead of
    one per batch, each of which cost a thread hand-off (~12 us a request
    under load here, docs/PERFORMANCE.md).
    """

    def __init__(self, directory: Path, *, fsync_interval: float = 0.005,
                 segment_max_bytes: int = 256 * 1024 * 1024, sync_interval: float = 0.2) -> None:
        self.directory = directory
        self._interval = fsync_interval
        self._sync_interval = sync_interval
        self._dirty = False  # queued records written but not yet fsynced
        self._sync_deadline = 0.0
        self._segment_max = segment_max_bytes
        self._pending: list[tuple[bytes, asyncio.Future[None] | None]] = []
        self._failed = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._size = 0
        self._closed = False
        self._segment_seq = 0
        self.written = 0

    @property
    def backlog(self) -> int:
        return len(self._pending)

    @property
    def failed(self) -> int:
        return self._failed

    def _open_segment(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segment_seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"audit-{stamp}-{os.getpid()}-{self._segment_seq:06d}.jsonl"
        path = self.directory / name
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        self.current_path = path
        # The new file's directory entry must be durable too, or a power cut could
        # take the whole segment, records acknowledged as durable included.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _write_batch(self, data: bytes, sync: bool = True) -> None:
        if self._fd is None or self._size >= self._segment_max:
            if self._fd is not None:
                # Queued records may still be unsynced in the full segment: the sync
                # deadline only ever syncs the current one.
                os.fsync(self._fd)
                os.close(self._fd)
            self._open_segment()
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if sync:
                os.fsync(self._fd)
        except OSError:
            # Never leave a torn line for the next batch to append to.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

    def submit(self, record: Mapping[str, Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(AuditWriteError("audit sink is closed"))
            return fut
        self._append(encode(record), fut)
        return fut

    def enqueue(self, record: Mapping[str, Any]) -> None:
        if self._closed:
            self._failed += 1
            return
        self._append(encode(record), None)

    def _append(self, line: bytes, fut: asyncio.Future[None] | None) -> None:
        self._pending.append((line, fut))
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        assert self._wake is not None
        self._wake.set()

    async def write(self, record: Mapping[str, Any]) -> None:
        await self.submit(record)

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._dirty:
                # Unsynced queued records: sync them by the deadline even if traffic stops.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(self._sync_deadline - loop.time(), 0))
            else:
                await self._wake.wait()
            self._wake.clear()
            if self._interval and not self._closed:
                await asyncio.sleep(self._interval)
            batch, self._pending = self._pending, []
            data = b"".join(b for b, _ in batch)
            awaited = any(fut is not None for _, fut in batch)
            due = self._dirty and loop.time() >= self._sync_deadline
            try:
                if awaited or due or (self._closed and (batch or self._dirty)):
                    # Someone waits (write-ahead), the deadline passed or the sink closes:
                    # write and fsync off the loop, covering every record written before.
                    await loop.run_in_executor(None, self._write_batch, data, True)
                    self._dirty = False
                elif batch:
                    # Only queued records: into the page cache now (a gateway crash keeps
                    # them), onto the disk within sync_interval, without a thread hand-off.
                    self._write_batch(data, False)
                    if not self._dirty:
                        self._dirty = True
                        self._sync_deadline = loop.time() + self._sync_interval
            except OSError as exc:
                for _, fut in batch:
                    if fut is None:
                        self._failed += 1
                    elif not fut.done():
                        fut.set_exception(AuditWriteError(f"audit write failed: {exc.strerror}"))
            else:
                self.written += len(batch)
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_result(None)
            if self._closed and not self._pending and not self._dirty:
                return

    async def close(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            assert self._wake is not None
            self._wake.set()
            await self._task
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
