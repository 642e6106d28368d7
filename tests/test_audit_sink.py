"""The file audit sink: durable on return, group-committed, failures reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from audit.chain import CHAIN_FIELDS, canonical
from audit.keys import AuditKeys
from audit.sink import AuditWriteError, FileAuditSink
from audit.verify import verify_directory


def _lines(folder: Path) -> list[dict[str, object]]:
    """The records written, as given: the chain's own records and fields left out (tests/test_audit_chain.py)."""
    out = []
    for f in sorted(folder.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            doc = json.loads(line)
            if doc.get("type") not in ("chain_start", "checkpoint"):
                out.append({k: v for k, v in doc.items() if k not in CHAIN_FIELDS})
    return out


async def test_write_returns_once_record_is_on_disk(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.001)
    await sink.write({"type": "decision", "request_id": "r1"})
    assert _lines(tmp_path) == [{"type": "decision", "request_id": "r1"}]
    await sink.close()


async def test_concurrent_writes_share_a_batch_and_keep_every_record(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.01)
    await asyncio.gather(*(sink.write({"n": i}) for i in range(200)))
    assert sorted(r["n"] for r in _lines(tmp_path)) == list(range(200))  # type: ignore[type-var]
    assert sink.backlog == 0
    await sink.close()


async def test_submitted_records_are_flushed_on_close(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.05)
    futures = [sink.submit({"n": i}) for i in range(5)]
    await sink.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(_lines(tmp_path)) == 5


async def test_unwritable_folder_fails_the_write(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    sink = FileAuditSink(blocked, fsync_interval=0.001)
    with pytest.raises(AuditWriteError):
        await sink.write({"type": "decision"})
    await sink.close()


async def test_write_after_close_fails(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path)
    await sink.close()
    with pytest.raises(AuditWriteError):
        await sink.write({"type": "decision"})


async def test_segments_rotate_by_size(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.0, segment_max_bytes=100)
    for i in range(5):
        await sink.write({"n": i, "pad": "x" * 60})
    await sink.close()
    # A segment is closed once it has reached the limit (each write is its own batch here).
    segments = sorted(tmp_path.glob("*.jsonl"))
    assert len(segments) == 5 and all(f.stat().st_size >= 100 for f in segments[:-1])
    assert sorted(r["n"] for r in _lines(tmp_path)) == [0, 1, 2, 3, 4]  # type: ignore[type-var]


async def test_segment_files_are_private(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path)
    await sink.write({"n": 1})
    await sink.close()
    (segment,) = tmp_path.glob("*.jsonl")
    assert segment.stat().st_mode & 0o777 == 0o600


def test_encoding_is_canonical() -> None:
    assert canonical({"b": 1, "a": "\u00e9"}) == '{"a":"\u00e9","b":1}'.encode()


async def test_enqueued_records_are_written_and_failures_counted(tmp_path: Path) -> None:
    good = FileAuditSink(tmp_path / "good", fsync_interval=0.001)
    for i in range(3):
        good.enqueue({"n": i})
    await good.close()
    assert len(_lines(tmp_path / "good")) == 3 and good.failed == 0
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    bad = FileAuditSink(blocked, fsync_interval=0.001)
    bad.enqueue({"n": 1})
    bad.enqueue({"n": 2})
    await bad.close()
    assert bad.failed == 2
    bad.enqueue({"n": 3})  # after close
    assert bad.failed == 3


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors the sink fsyncs, in order (the real fsync still runs)."""
    import audit.sink as sink_module

    calls: list[int] = []
    real_fsync, real_fdatasync = sink_module.os.fsync, sink_module.os.fdatasync

    def recording(real: Any) -> Any:
        def sync(fd: int) -> None:
            calls.append(fd)
            real(fd)
        return sync

    monkeypatch.setattr(sink_module.os, "fsync", recording(real_fsync))  # directory entries
    monkeypatch.setattr(sink_module.os, "fdatasync", recording(real_fdatasync))  # records
    return calls


async def test_queued_records_reach_the_file_at_once_and_the_disk_by_the_sync_deadline(
        tmp_path: Path, synced: list[int]) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.001, sync_interval=0.3)
    for i in range(3):
        sink.enqueue({"n": i})
    await asyncio.sleep(0.05)
    # In the file (a gateway crash keeps them) without a data fsync per batch.
    assert sorted(r["n"] for r in _lines(tmp_path)) == [0, 1, 2]  # type: ignore[type-var]
    segment_syncs = len(synced)  # the new segment's directory entry only
    await asyncio.sleep(0.5)
    assert len(synced) == segment_syncs + 1  # the deadline synced them, though traffic stopped
    await sink.close()


async def test_an_awaited_record_is_fsynced_before_it_is_acknowledged(
        tmp_path: Path, synced: list[int]) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.001, sync_interval=60)
    sink.enqueue({"n": 0})
    await asyncio.sleep(0.05)
    before = len(synced)
    await sink.write({"n": 1})  # write-ahead: durable on return, the queued record with it
    assert len(synced) == before + 1
    assert sorted(r["n"] for r in _lines(tmp_path)) == [0, 1]  # type: ignore[type-var]
    await sink.close()


async def test_a_full_segment_is_synced_before_the_next_one_starts(
        tmp_path: Path, synced: list[int]) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.001, sync_interval=60, segment_max_bytes=100)
    sink.enqueue({"n": 0, "pad": "x" * 120})  # fills the first segment, nobody waits for it
    await asyncio.sleep(0.05)
    first_fd = sink._fd
    before = synced.count(first_fd)  # type: ignore[arg-type]
    sink.enqueue({"n": 1})  # opens the second segment
    await asyncio.sleep(0.05)
    assert synced.count(first_fd) == before + 1  # type: ignore[arg-type]
    await sink.close()
    assert len(list(tmp_path.glob("*.jsonl"))) == 2


async def test_a_record_setting_the_chains_fields_is_refused_and_the_chain_goes_on(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path, fsync_interval=0.0)
    with pytest.raises(AuditWriteError, match="the chain does"):
        await sink.write({"type": "decision", "seq": 7})
    sink.enqueue({"type": "decision", "prev": "x"})
    await sink.write({"n": 1})
    await sink.close()
    assert sink.failed == 1 and _lines(tmp_path) == [{"n": 1}]


# --------------------------------------------------------------------------
# Queued records while the store fails: held, retried, spooled across a restart


async def _until(check: Any, seconds: float = 10.0) -> None:
    """Wait for ``check()`` (the sink retries with backoff: 0.5 s, then 1 s, ...)."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _verifies(folder: Path, keys: AuditKeys) -> None:
    report = verify_directory(folder, keys.public_keys())
    assert report.ok, [str(f) for f in report.breaks]


async def test_queued_records_are_held_while_the_store_fails_and_written_once_it_is_back(tmp_path: Path) -> None:
    keys = AuditKeys.generate()
    trail = tmp_path / "trail"
    trail.write_text("a file where the audit folder should be")  # every write fails
    sink = FileAuditSink(trail, fsync_interval=0.001, keys=keys)
    for i in range(3):
        sink.enqueue({"type": "decision", "n": i})
    await _until(lambda: sink.retained == 3)
    assert sink.failed == 0 and sink.backlog == 3
    with pytest.raises(AuditWriteError):
        await sink.write({"type": "decision", "n": "write-ahead"})  # still refused: its request fails closed
    trail.unlink()  # the store is back
    await _until(lambda: sink.backlog == 0)
    await sink.write({"type": "decision", "n": 3})
    await sink.close()
    assert [r["n"] for r in _lines(trail)] == [0, 1, 2, 3] and sink.failed == 0
    _verifies(trail, keys)


async def test_past_max_retained_queued_records_are_lost_and_counted(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    sink = FileAuditSink(blocked, fsync_interval=0.001, max_retained=2)
    for i in range(3):
        sink.enqueue({"n": i})
    await _until(lambda: sink.failed == 1)
    assert sink.retained == 2
    await sink.close()
    assert sink.failed == 3  # no spool: what is held at shutdown is lost, and counted


async def test_the_spool_keeps_held_records_across_a_restart(tmp_path: Path) -> None:
    keys = AuditKeys.generate()
    trail, spool = tmp_path / "trail", tmp_path / "local" / "spool.jsonl"
    trail.write_text("the store is down")
    down = FileAuditSink(trail, fsync_interval=0.001, keys=keys, spool=spool)
    await down.start()
    for i in range(4):
        down.enqueue({"type": "decision", "n": i, "sub": "alice"})
    await _until(lambda: down.retained == 4)
    assert len(spool.read_bytes().splitlines()) == 4 and spool.stat().st_mode & 0o777 == 0o600
    await down.close()  # the gateway stops while the store is still down
    assert down.failed == 0 and len(spool.read_bytes().splitlines()) == 4
    with spool.open("ab") as f:
        f.write(b'{"type":"decision","n":')  # and a torn append from a crash: skipped
    trail.unlink()
    up = FileAuditSink(trail, fsync_interval=0.001, keys=keys, spool=spool)
    await up.start()
    await _until(lambda: up.backlog == 0 and not spool.read_bytes())
    await up.close()
    assert [r["n"] for r in _lines(trail)] == [0, 1, 2, 3]
    _verifies(trail, keys)
