"""Audit sinks: where decision and security-event records become durable.

`write()` returns only once the record is on disk (fsync), so the gateway can
forward trade, transfer and admin requests strictly after their decision
record is durable. Writes are group-committed: a record someone waits for is
written and fsynced at once, and the records arriving while that fsync runs
share the next write and fsync; records nobody waits for are gathered for
`fsync_interval` first. The per-record cost on the event loop is a JSON dump,
an SM3 digest and a list append.

Every record is chained as it is queued (audit/chain.py): an SM3 link to the
one before, in one chain per sink (one per gateway process and start), and
every ``checkpoint_every`` records or ``checkpoint_interval`` seconds the head
is signed with the SM2 audit key (audit/keys.py) and the signed statement is
pushed to the witness (audit/witness.py). Segment files are named after their
chain: ``audit-<chain id>-<segment number>.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from audit.chain import GENESIS, Chain, ChainBreak, canonical, line_hash, new_chain_id, parse_line
from audit.keys import AuditKeys
from audit.witness import Witness, WitnessError, append_synced

log = logging.getLogger("portcullis.audit")

SEGMENT = re.compile(r"audit-(?P<chain>\d{8}T\d{6}Z-[0-9a-f]{8})-(?P<seg>\d{6})\.jsonl")
"""Segment file names: the chain they belong to, then their number in it."""
TAIL_BYTES = 64 * 1024


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


def segment_files(directory: Path) -> dict[str, list[Path]]:
    """The chained segment files under ``directory``, by chain id, in order."""
    chains: dict[str, list[tuple[int, Path]]] = {}
    try:
        names = sorted(directory.iterdir())
    except OSError:  # absent, not a folder, unreadable: the first write reports it
        return {}
    for path in names:
        m = SEGMENT.fullmatch(path.name)
        if m is not None:
            chains.setdefault(m["chain"], []).append((int(m["seg"]), path))
    return {chain: [p for _, p in sorted(files)] for chain, files in sorted(chains.items())}


def read_records(files: list[Path]) -> Iterator[dict[str, Any]]:
    """The records of ``files`` in order: complete lines that are JSON objects (a torn last line, or a line
    that is not JSON, is skipped: `audit/verify.py` is what reports them)."""
    for path in files:
        with path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(doc, dict):
                    yield doc


def chain_end(path: Path) -> dict[str, Any]:
    """How the chain whose last segment is ``path`` ended: ``{seq, head, status}``.

    ``status``: ``closed`` (its last record is a closing checkpoint), ``open``
    (the process stopped without closing it: a crash), ``torn`` (bytes after
    the last complete line: a crash mid-write), ``corrupt`` (its last line is
    not a chained record).
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read()
        if size > TAIL_BYTES and tail.count(b"\n") < 2:  # one huge record: read it whole
            f.seek(0)
            tail = f.read()
    torn = bool(tail) and not tail.endswith(b"\n")
    lines = tail.split(b"\n")
    complete = [ln for ln in lines[:-1] if ln]
    if not complete:
        return {"seq": -1, "head": GENESIS, "status": "torn" if torn else "open"}
    last = complete[-1]
    try:
        doc = parse_line(last)
    except ChainBreak:
        return {"seq": -1, "head": line_hash(last), "status": "corrupt"}
    status = "torn" if torn else ("closed" if doc.get("type") == "checkpoint" and doc.get("closing") else "open")
    return {"seq": doc["seq"], "head": line_hash(last), "status": status}


_BEGIN, _CHECKPOINT, _CLOSE = object(), object(), object()
"""Markers in the queue: begin the chain now, sign the head now, close the chain."""

Entry = tuple[Any, "asyncio.Future[None] | None"]

RETRY_FIRST, RETRY_MAX = 0.5, 30.0
"""Seconds before held records are tried again after a failed write (doubling up to the second)."""
RETRY_CHUNK = 5_000
"""Held records per attempt: a store that comes back is not handed one huge batch past its timeout."""


class Spool:
    """Queued records a failed write held, in a file on local storage (JSON Lines, fsynced, mode 0600).

    The store (the audit database, another disk) is down; the gateway's own disk keeps what read routes
    queued meanwhile, so a restart before the store is back loses none of it. The file is read at start
    and emptied once every held record is stored: a crash between the two stores some records twice
    (each has its request id), never none.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dirty = False

    def load(self) -> list[Mapping[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        self.dirty = bool(data)
        out: list[Mapping[str, Any]] = []
        for line in data.split(b"\n"):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:  # a torn last line (a crash mid-append) or a blank
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def append(self, records: list[Mapping[str, Any]]) -> None:
        append_synced(self.path, b"".join(canonical(r) + b"\n" for r in records))
        self.dirty = True

    def clear(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.dirty = False


class ChainedSink:
    """What every store of the trail shares: the chain, checkpoints, the witness, group commit.

    A store supplies where lines go (:meth:`_store`), the ends of the chains it
    already holds (:meth:`_previous`), and, if it keeps unsynced data, when it
    must sync it (:meth:`_deadline`, :meth:`_settled`).

    Two promises, by who is waiting. A record someone awaits (``write`` or
    ``submit``: the write-ahead decision records of trade, transfer and admin
    requests) is durable before its future resolves, together with everything
    queued before it; it goes at once, and the records arriving meanwhile form
    the next batch. A queued record (``enqueue``) is gathered for
    ``fsync_interval`` first.

    Records are chained when their batch is taken (in order, on the loop), so a
    batch the store refuses (disk full, the database down) leaves no gap: the
    chain ends at its last stored record, and the next batch begins a new chain
    whose ``chain_start`` binds that end. A checkpoint goes to the witness only
    once it is stored, so the witness never holds a head the store lacks.

    A refused batch fails its awaited records (their requests fail closed); its
    queued ones are held (at most ``max_retained``, and in the ``spool`` file
    when there is one) and tried again with backoff, in a new chain, until the
    store takes them.
    """

    def __init__(self, *, fsync_interval: float = 0.005, keys: AuditKeys | None = None,
                 witness: Witness | None = None, checkpoint_every: int = 1000, checkpoint_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 spool: Path | None = None, max_retained: int = 100_000) -> None:
        self._keys = keys
        self._witness = witness
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._clock = clock
        self._wall = wall
        self._chain: Chain | None = None
        self._stored: dict[str, Any] | None = None  # the end of the current chain that is stored
        self._ended: dict[str, dict[str, Any]] = {}  # this sink's chains that a failed batch ended
        self._statements: list[dict[str, Any]] = []  # stored checkpoints the witness has not taken yet
        self._pusher: asyncio.Task[None] | None = None
        self.witness_failures = 0
        self._interval = fsync_interval
        self._pending: list[Entry] = []
        self._failed = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        # Queued records a failed batch held (oldest first), retried with backoff; also in the spool file.
        self._retry: list[Mapping[str, Any]] = []
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self._max_retained = max_retained
        self._spool = Spool(spool) if spool is not None else None

    # -- what a store supplies ------------------------------------------------------------

    def _previous(self) -> list[dict[str, Any]]:
        """``{chain, seq, head, status}`` of the chains in the store that did not close (bound at start)."""
        return []

    async def _store(self, lines: list[bytes], awaited: bool) -> None:
        """Make ``lines`` durable if ``awaited`` (else at least safe from a process crash); AuditWriteError."""
        raise NotImplementedError

    def _deadline(self) -> float | None:
        """Loop time by which unsynced data must be synced, if any."""
        return None

    def _settled(self) -> bool:
        """Nothing left unsynced."""
        return True

    async def _release(self) -> None:
        """Close files or connections (after the last batch)."""

    # -- the sink -------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Records not yet stored: queued, and held after a failed write (retried)."""
        return len(self._pending) + len(self._retry)

    @property
    def retained(self) -> int:
        """Queued records a failed write held for retrying (in the spool file too, when there is one)."""
        return len(self._retry)

    @property
    def witness_backlog(self) -> int:
        """Signed checkpoints not yet taken by the witness."""
        return len(self._statements)

    @property
    def keys(self) -> AuditKeys | None:
        """The audit keys signing this sink's checkpoints (their public halves verify the trail)."""
        return self._keys

    @property
    def witness(self) -> Witness | None:
        """Where this sink's signed checkpoints go besides the store."""
        return self._witness

    @property
    def chain_id(self) -> str | None:
        return self._chain.chain_id if self._chain is not None else None

    @property
    def failed(self) -> int:
        return self._failed

    def submit(self, record: Mapping[str, Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(AuditWriteError("audit sink is closed"))
            return fut
        self._append(record, fut)
        return fut

    def enqueue(self, record: Mapping[str, Any]) -> None:
        if self._closed:
            self._failed += 1
            return
        self._append(record, None)

    async def write(self, record: Mapping[str, Any]) -> None:
        await self.submit(record)

    async def start(self) -> None:
        """Begin the chain now (at the gateway's start) rather than with the first record: the store's
        earlier chains are looked at here, and the witness hears of the chain at once."""
        if self._spool is not None and not self._retry:
            self._retry = await asyncio.to_thread(self._spool.load)
            if self._retry:
                log.warning("audit: %d records spooled while the store was down are written now (%s)",
                            len(self._retry), self._spool.path)
        if self._chain is None and not self._closed:
            self._pending.append((_BEGIN, None))
            self._kick()

    def _append(self, record: Mapping[str, Any], fut: asyncio.Future[None] | None) -> None:
        # Checked when its batch is chained (Chain.append refuses what is not JSON or sets the chain's fields).
        self._pending.append((record, fut))
        self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        assert self._wake is not None
        self._wake.set()

    # -- the chain ------------------------------------------------------------------------

    def _begin(self, lines: list[bytes], statements: list[dict[str, Any]]) -> Chain:
        """A new chain: its first record names the audit key and binds the ends of the chains found."""
        found = {end["chain"]: end for end in self._previous()}
        found.update(self._ended)
        previous = list(found.values())
        for end in previous:
            if end["status"] != "open":
                log.warning("audit chain %s ends %s (last stored record seq %s): it is not continued, a new"
                            " chain starts and binds it; `portcullis audit verify` reports it",
                            end["chain"], end["status"], end["seq"])
        chain = self._chain = Chain(new_chain_id(self._wall()), last_checkpoint=self._clock())
        self._stored = None
        start: dict[str, Any] = {"type": "chain_start", "time": round(self._wall(), 3), "pid": os.getpid(),
                                 "previous": previous}
        if self._keys is not None:
            start["key_id"] = self._keys.current
        lines.append(chain.append(start))
        self._sign(chain, lines, statements)  # the witness learns of the chain from its first record
        return chain

    def _sign(self, chain: Chain, lines: list[bytes], statements: list[dict[str, Any]], *,
              closing: bool = False) -> None:
        if self._keys is None:
            return
        cp = chain.checkpoint(self._keys.signing_key, self._keys.current, now=self._clock(), wall=self._wall(),
                              closing=closing)
        lines.append(cp.line)
        statements.append(cp.statement)

    def _encode(self, batch: list[Entry]) -> tuple[list[bytes], list[dict[str, Any]], list[Entry]]:
        """Chain the batch's records in order: their lines, the checkpoints signed, the entries kept."""
        lines: list[bytes] = []
        statements: list[dict[str, Any]] = []
        kept: list[Entry] = []
        for item, fut in batch:
            if item is _CLOSE:
                if self._chain is not None:
                    self._sign(self._chain, lines, statements, closing=True)
                continue
            chain = self._chain or self._begin(lines, statements)
            if item is _BEGIN:
                continue
            if item is _CHECKPOINT:
                if chain.seq > chain.checkpointed_seq:
                    self._sign(chain, lines, statements)
                continue
            try:
                lines.append(chain.append(item))
            except (TypeError, ValueError) as exc:  # not JSON-able: refused, the chain unharmed
                if fut is None:
                    self._failed += 1
                else:
                    fut.set_exception(AuditWriteError(f"audit record refused: {exc}"))
                continue
            kept.append((item, fut))
            if self._keys is not None and chain.since_checkpoint >= self._checkpoint_every:
                self._sign(chain, lines, statements)
        return lines, statements, kept

    async def _push(self) -> None:
        """Hand the signed checkpoints to the witness in order, retrying with backoff while it fails."""
        assert self._witness is not None
        delay = 0.1
        while self._statements:
            try:
                await self._witness.push(self._statements[0])
            except WitnessError as exc:
                self.witness_failures += 1
                log.warning("audit checkpoint not taken by the witness (retrying in %.1f s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._statements.pop(0)
            delay = 0.1

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._deadline()
            chain = self._chain
            if self._keys is not None and chain is not None and chain.seq > chain.checkpointed_seq:
                # Unsigned records: a checkpoint within checkpoint_interval even if traffic stops.
                signed_by = loop.time() + max(chain.last_checkpoint + self._checkpoint_interval - self._clock(), 0)
                deadline = signed_by if deadline is None else min(deadline, signed_by)
            if self._retry and not self._closed:  # held records: the next attempt
                deadline = self._retry_at if deadline is None else min(deadline, self._retry_at)
            if deadline is not None and not self._pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(deadline - loop.time(), 0))
            elif not self._pending:
                await self._wake.wait()
            self._wake.clear()
            chain = self._chain
            if self._keys is not None and chain is not None and not self._closed \
                    and chain.checkpoint_due(self._checkpoint_every, self._checkpoint_interval, self._clock()):
                self._pending.append((_CHECKPOINT, None))
            if self._interval and not self._closed and not any(fut is not None for _, fut in self._pending):
                # Only queued records: gather more before writing. Someone waiting (write-ahead) goes at
                # once; records arriving while that write runs form the next batch (group commit).
                await asyncio.sleep(self._interval)
            batch, self._pending = self._pending, []
            held = 0
            if self._retry and (self._closed or loop.time() >= self._retry_at):
                held = min(len(self._retry), RETRY_CHUNK)
                batch[:0] = [(record, None) for record in self._retry[:held]]
                del self._retry[:held]
            lines, statements, kept = self._encode(batch)
            stored = False
            try:
                await self._store(lines, any(fut is not None for _, fut in kept))
                stored = True
            except AuditWriteError as exc:
                self._chain_failed()
                for _, fut in kept:
                    if fut is not None and not fut.done():
                        fut.set_exception(AuditWriteError(str(exc)))
                await self._hold([record for record, _ in kept[:held]],
                                 [record for record, fut in kept[held:] if fut is None])
            else:
                if lines and self._chain is not None:
                    self._stored = {"chain": self._chain.chain_id, "seq": self._chain.seq,
                                    "head": self._chain.head}
                self.written += len(kept)
                for _, fut in kept:
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                if self._retry:  # the store takes writes again: the held records go next, at once
                    self._retry_at = loop.time()
                self._retry_delay = RETRY_FIRST
                if not self._retry and self._spool is not None and self._spool.dirty:
                    await self._unspool()
                if statements and self._witness is not None:
                    self._statements.extend(statements)
                    if self._pusher is None or self._pusher.done():
                        self._pusher = loop.create_task(self._push())
            if self._closed and not self._pending and self._settled() and not (stored and self._retry):
                return

    async def _hold(self, again: list[Mapping[str, Any]], fresh: list[Mapping[str, Any]]) -> None:
        """A batch failed: keep its queued records (``again``: already held once) for the next attempt.

        New ones go to the spool file first (a restart while the store is down keeps them); past
        ``max_retained`` they are lost and counted in ``failed``."""
        room = max(self._max_retained - len(self._retry) - len(again), 0)
        keep, lost = fresh[:room], fresh[room:]
        if keep and self._spool is not None:
            try:
                await asyncio.to_thread(self._spool.append, keep)
            except OSError as exc:  # still held in memory: only a restart before the store is back loses them
                log.error("audit: %d records not spooled (%s): %s", len(keep), self._spool.path, exc.strerror)
        self._retry[:0] = again
        self._retry.extend(keep)
        if lost:
            self._failed += len(lost)
            log.error("audit: %d queued records lost: %d are held already (max_retained)", len(lost),
                      len(self._retry))
        self._retry_at = asyncio.get_running_loop().time() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    async def _unspool(self) -> None:
        """Every held record is stored: the spool file is emptied."""
        assert self._spool is not None
        try:
            await asyncio.to_thread(self._spool.clear)
        except OSError as exc:  # the next start writes them again (duplicates, never a loss)
            log.error("audit: spool %s not emptied: %s", self._spool.path, exc.strerror)

    def _chain_failed(self) -> None:
        """The store refused a batch: the chain ends at its last stored record (never a gap in it)."""
        if self._chain is not None:
            if self._stored is not None:
                self._ended[self._chain.chain_id] = {**self._stored, "status": "open"}
            log.error("audit chain %s ends after a failed write; the next record starts a new chain",
                      self._chain.chain_id)
        self._chain = None
        self._stored = None

    async def close(self, *, witness_timeout: float = 5.0) -> None:
        if not self._closed and self._chain is not None:
            self._pending.append((_CLOSE, None))  # the chain ends signed: a later start knows it closed
        self._closed = True
        if self._pending and (self._task is None or self._task.done()):
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if self._task is not None and not self._task.done():
            assert self._wake is not None
            self._wake.set()
            await self._task
        if self._pusher is not None and not self._pusher.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._pusher), witness_timeout)
            except TimeoutError:
                log.error("audit: %d checkpoints not taken by the witness at shutdown", len(self._statements))
                self._pusher.cancel()
        if self._witness is not None:
            await self._witness.close()
        if self._retry:
            if self._spool is not None:
                log.error("audit: %d records not stored at shutdown stay in the spool %s for the next start",
                          len(self._retry), self._spool.path)
            else:
                self._failed += len(self._retry)
                log.error("audit: %d records not stored at shutdown are lost (no spool)", len(self._retry))
        await self._release()


class FileAuditSink(ChainedSink):
    """The trail in append-only JSON Lines segment files, one set per chain.

    A queued record is written to the file on the event loop (a gateway crash
    keeps it) and synced within ``sync_interval`` (a power cut loses at most
    that much): under read traffic a handful of syncs a second instead of one
    per batch, each a thread hand-off. A record someone awaits is written and
    synced (``fdatasync``) in the executor before its future resolves.
    """

    def __init__(self, directory: Path, *, fsync_interval: float = 0.005,
                 segment_max_bytes: int = 256 * 1024 * 1024, sync_interval: float = 0.2, **chained: Any) -> None:
        super().__init__(fsync_interval=fsync_interval, **chained)
        self.directory = directory
        self._sync_interval = sync_interval
        self._dirty = False  # queued records written but not yet synced
        self._sync_deadline = 0.0
        self._segment_max = segment_max_bytes
        self._fd: int | None = None
        self._size = 0
        self._segment_seq = 0
        self._segment_chain = ""

    def _previous(self) -> list[dict[str, Any]]:
        previous = []
        for chain_id, files in segment_files(self.directory).items():
            try:
                end = chain_end(files[-1])
            except OSError as exc:
                end = {"seq": -1, "head": GENESIS, "status": f"unreadable: {exc.strerror}"}
            if end["status"] != "closed":
                previous.append({"chain": chain_id, **end})
        return previous

    def _deadline(self) -> float | None:
        return self._sync_deadline if self._dirty else None

    def _settled(self) -> bool:
        return not self._dirty

    async def _store(self, lines: list[bytes], awaited: bool) -> None:
        loop = asyncio.get_running_loop()
        data = b"".join(lines)
        due = self._dirty and loop.time() >= self._sync_deadline
        try:
            if awaited or due or (self._closed and (data or self._dirty)):
                # Someone waits (write-ahead), the deadline passed or the sink closes: write and sync
                # off the loop, covering every record written before.
                await loop.run_in_executor(None, self._write_batch, data, True)
                self._dirty = False
            elif data:
                # Only queued records: into the page cache now (a gateway crash keeps them), onto
                # the disk within sync_interval, without a thread hand-off.
                self._write_batch(data, False)
                if not self._dirty:
                    self._dirty = True
                    self._sync_deadline = loop.time() + self._sync_interval
        except OSError as exc:
            raise AuditWriteError(f"audit write failed: {exc.strerror}") from None

    async def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open_segment(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segment_seq += 1
        assert self._chain is not None
        self._segment_chain = self._chain.chain_id
        path = self.directory / f"audit-{self._chain.chain_id}-{self._segment_seq:06d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
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
        if not data:  # only a sync of what was written (never opens a segment)
            if sync and self._fd is not None:
                os.fdatasync(self._fd)
            return
        chain = self._chain.chain_id if self._chain is not None else ""
        if self._fd is not None and chain != self._segment_chain:  # a new chain (after a failed write)
            os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd, self._segment_seq = None, 0
        if self._fd is None or self._size >= self._segment_max:
            if self._fd is not None:
                # Queued records may still be unsynced in the full segment: the sync
                # deadline only ever syncs the current one.
                os.fdatasync(self._fd)
                os.close(self._fd)
            self._open_segment()
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if sync:
                # The data and what reading it back needs (the file's size), not its times: an
                # appended record is as durable as with fsync, at ~0.6x its cost here.
                os.fdatasync(self._fd)
        except OSError:
            # Never leave a torn line for the next batch to append to.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
