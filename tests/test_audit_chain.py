"""The audit trail's SM3 chain, SM2 checkpoints and witness: written by the real file sink, then tampered
with in each way an insider could (edit, delete, reorder, insert, truncate, drop a chain, forge a
checkpoint), and `verify_directory` / `portcullis audit verify` must name the first bad record."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from audit.chain import CHAIN_FIELDS, GENESIS, Chain, line_hash, parse_line, sign_statement, verify_statement
from audit.keys import AuditKeyError, AuditKeys, load_public_keys, public_keys_json
from audit.sink import FileAuditSink, segment_files
from audit.verify import Report, verify_directory
from audit.witness import FileWitness


@pytest.fixture
def keys(tmp_path: Path) -> AuditKeys:
    return AuditKeys.from_file(tmp_path / "audit-key.json", create=True)


async def _write(folder: Path, keys: AuditKeys, witness: FileWitness | None, n: int, *, every: int = 5,
                 close: bool = True, **kw: Any) -> FileAuditSink:
    sink = FileAuditSink(folder, fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=every, **kw)
    for i in range(n):
        await sink.write({"type": "decision", "request_id": f"r{i}", "n": i})
    if close:
        await sink.close()
    else:  # a crash: the witness still gets what was pushed, the chain never closes
        await asyncio.sleep(0.05)
    return sink


def _verify(folder: Path, keys: AuditKeys, witness: FileWitness | None) -> Report:
    return verify_directory(folder, keys.public_keys(), witness.read() if witness is not None else None)


def _segment(folder: Path) -> Path:
    [(_, files)] = segment_files(folder).items()
    [path] = files
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _seq_line(lines: list[bytes], seq: int) -> int:
    return next(i for i, line in enumerate(lines) if parse_line(line.rstrip(b"\n"))["seq"] == seq)


# -- what is written -------------------------------------------------------------------------------


async def test_records_are_chained_checkpointed_and_witnessed(tmp_path: Path, keys: AuditKeys) -> None:
    witness = FileWitness(tmp_path / "other-disk" / "witness.jsonl")
    await _write(tmp_path / "audit", keys, witness, 12)
    lines = [raw.rstrip(b"\n") for raw in _lines(_segment(tmp_path / "audit"))]
    docs = [parse_line(line) for line in lines]
    assert [d["seq"] for d in docs] == list(range(len(docs)))
    assert docs[0]["type"] == "chain_start" and docs[0]["prev"] == GENESIS and docs[0]["key_id"] == keys.current
    assert all(d["prev"] == line_hash(p) for p, d in zip(lines, docs[1:], strict=False))
    checkpoints = [d for d in docs if d["type"] == "checkpoint"]
    # One at the start, one per 5 records, one closing the chain.
    assert len(checkpoints) >= 4 and checkpoints[-1]["closing"] is True and docs[-1] is checkpoints[-1]
    statements = witness.read()
    assert [s["seq"] for s in statements] == [c["checkpoint"]["seq"] for c in checkpoints]
    for s in statements:
        verify_statement(s, keys.public_keys())
    report = _verify(tmp_path / "audit", keys, witness)
    assert report.ok and report.findings == [], [str(f) for f in report.findings]
    assert report.witnessed == len(statements) and report.chains[docs[0]["chain"]].records == len(docs)


async def test_a_checkpoint_is_signed_within_the_interval_when_traffic_stops(tmp_path: Path,
                                                                            keys: AuditKeys) -> None:
    witness = FileWitness(tmp_path / "witness.jsonl")
    sink = FileAuditSink(tmp_path / "audit", fsync_interval=0.0, keys=keys, witness=witness,
                         checkpoint_every=1000, checkpoint_interval=0.1)
    await sink.write({"type": "decision", "n": 1})
    for _ in range(100):  # no more records: the interval alone must bring the checkpoint
        if len(witness.read()) >= 2:
            break
        await asyncio.sleep(0.02)
    statements = witness.read()
    assert len(statements) >= 2 and statements[-1]["seq"] >= 1  # the start, then one signing the decision
    await sink.close()


def test_chain_fields_belong_to_the_chain() -> None:
    with pytest.raises(ValueError, match="the chain does"):
        Chain("c").append({"seq": 5})
    assert set(CHAIN_FIELDS) == {"chain", "seq", "prev"}


def test_a_statement_signed_by_another_key_or_altered_does_not_verify(keys: AuditKeys) -> None:
    other = AuditKeys.generate()
    signed = sign_statement(other.signing_key, keys.current, chain="c", seq=3, head="ab" * 32, now=1.0)
    from audit.chain import ChainBreak

    with pytest.raises(ChainBreak, match="does not verify"):
        verify_statement(signed, keys.public_keys())
    good = sign_statement(keys.signing_key, keys.current, chain="c", seq=3, head="ab" * 32, now=1.0)
    verify_statement(good, keys.public_keys())
    with pytest.raises(ChainBreak):
        verify_statement({**good, "seq": 4}, keys.public_keys())


# -- tampering, each way ---------------------------------------------------------------------------


@pytest.fixture
async def trail(tmp_path: Path, keys: AuditKeys) -> tuple[Path, FileWitness]:
    witness = FileWitness(tmp_path / "witness.jsonl")
    await _write(tmp_path / "audit", keys, witness, 20)
    return tmp_path / "audit", witness


def _first_break(report: Report) -> Any:
    assert not report.ok
    return report.breaks[0]


async def test_an_edited_record_is_named(trail: tuple[Path, FileWitness], keys: AuditKeys) -> None:
    folder, witness = trail
    path = _segment(folder)
    lines = _lines(path)
    i = _seq_line(lines, 7)
    doc = json.loads(lines[i])
    doc["n"] = 999  # still valid JSON, still claims its place
    lines[i] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    found = _first_break(_verify(folder, keys, witness))
    assert found.seq == 7 and found.where == f"{path.name}:{i + 1}" and "edited" in found.problem


async def test_a_deleted_record_is_named(trail: tuple[Path, FileWitness], keys: AuditKeys) -> None:
    folder, witness = trail
    path = _segment(folder)
    lines = _lines(path)
    del lines[_seq_line(lines, 9)]
    path.write_bytes(b"".join(lines))
    found = _first_break(_verify(folder, keys, witness))
    assert found.seq == 9 and "missing" in found.problem


async def test_reordered_records_are_named(trail: tuple[Path, FileWitness], keys: AuditKeys) -> None:
    folder, witness = trail
    path = _segment(folder)
    lines = _lines(path)
    i = _seq_line(lines, 4)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    path.write_bytes(b"".join(lines))
    found = _first_break(_verify(folder, keys, witness))
    assert found.seq == 4 and "missing" in found.problem  # seq 5 came where 4 was due


async def test_an_inserted_record_is_named(trail: tuple[Path, FileWitness], keys: AuditKeys) -> None:
    folder, witness = trail
    path = _segment(folder)
    lines = _lines(path)
    i = _seq_line(lines, 6)
    forged = json.loads(lines[i])
    forged.update({"request_id": "forged", "seq": 6})  # a record slipped in, claiming seq 6
    lines.insert(i + 1, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    path.write_bytes(b"".join(lines))
    found = _first_break(_verify(folder, keys, witness))
    assert found.seq == 6 and found.where == f"{path.name}:{i + 2}" and "inserted or reordered" in found.problem


async def test_a_truncated_tail_is_caught_by_the_witness(trail: tuple[Path, FileWitness], keys: AuditKeys) -> None:
    folder, witness = trail
    path = _segment(folder)
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:-6]))  # the newest records and the closing checkpoint, gone
    alone = _verify(folder, keys, None)
    assert alone.ok  # the chain itself still links: only the witness knows more was there
    found = _first_break(_verify(folder, keys, witness))
    assert found.where == "witness" and "deleted or the file truncated" in found.problem


async def test_a_deleted_chain_is_caught_by_the_witness(trail: tuple[Path, FileWitness], keys: AuditKeys) -> None:
    folder, witness = trail
    _segment(folder).unlink()
    found = _first_break(_verify(folder, keys, witness))
    assert "missing from the store" in found.problem


async def test_a_forged_checkpoint_is_named(trail: tuple[Path, FileWitness], keys: AuditKeys) -> None:
    folder, witness = trail
    path = _segment(folder)
    lines = _lines(path)
    i = next(i for i, line in enumerate(lines) if b'"type":"checkpoint"' in line and i > 2)
    doc = json.loads(lines[i])
    doc["checkpoint"]["count"] += 1
    lines[i] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    found = _first_break(_verify(folder, keys, witness))
    assert (found.seq, found.where) == (doc["seq"], f"{path.name}:{i + 1}")
    assert "signature does not verify" in found.problem


async def test_a_torn_last_line_is_a_notice_not_a_break(tmp_path: Path, keys: AuditKeys) -> None:
    witness = FileWitness(tmp_path / "witness.jsonl")
    await _write(tmp_path / "audit", keys, witness, 6, close=False)
    path = _segment(tmp_path / "audit")
    with path.open("ab") as f:
        f.write(b'{"chain":"half a rec')  # a crash in the middle of a write
    report = _verify(tmp_path / "audit", keys, witness)
    assert report.ok, [str(f) for f in report.breaks]
    assert any("torn final line" in f.problem and f.severity == "notice" for f in report.findings)


async def test_a_restart_binds_the_previous_chain_so_its_truncation_shows_without_a_witness(
        tmp_path: Path, keys: AuditKeys) -> None:
    folder = tmp_path / "audit"
    first = await _write(folder, keys, None, 8, close=False)  # crashed: never closed
    await _write(folder, keys, None, 3)  # the next start
    chains = segment_files(folder)
    assert len(chains) == 2
    start = parse_line(_lines(chains[next(c for c in chains if c != first.chain_id)][0])[0].rstrip(b"\n"))
    [bound] = start["previous"]
    assert bound["chain"] == first.chain_id and bound["status"] == "open" and bound["seq"] >= 8
    assert _verify(folder, keys, None).ok
    old = chains[first.chain_id][0]
    old.write_bytes(b"".join(_lines(old)[:-2]))
    found = _first_break(_verify(folder, keys, None))
    assert found.chain == first.chain_id and "records deleted" in found.problem


# -- the command -------------------------------------------------------------------------------------


async def test_portcullis_audit_verify_exits_non_zero_and_names_the_record(
        trail: tuple[Path, FileWitness], keys: AuditKeys, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    folder, witness = trail
    public = tmp_path / "audit-public.json"
    public.write_text(public_keys_json(keys.public_keys()))
    assert load_public_keys(public).keys() == keys.public_keys().keys()
    args = ["audit", "verify", "--dir", str(folder), "--public-keys", str(public), "--witness", str(witness.path)]
    assert main(args) == 0  # on this thread: no asyncio inside a file verify
    assert "OK" in capsys.readouterr().out
    broken = tmp_path / "copy"
    shutil.copytree(folder, broken)
    path = _segment(broken)
    lines = _lines(path)
    del lines[_seq_line(lines, 3)]
    path.write_bytes(b"".join(lines))
    args[3] = str(broken)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "BREAK" in out and "seq 3" in out and path.name in out


async def test_a_witness_that_is_down_is_retried_until_it_takes_every_checkpoint(tmp_path: Path,
                                                                                 keys: AuditKeys) -> None:
    blocked = tmp_path / "mount"
    blocked.write_text("the witness's storage is not there")  # a file where its folder should be
    witness = FileWitness(blocked / "witness.jsonl")
    sink = FileAuditSink(tmp_path / "audit", fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=3)
    for i in range(7):
        await sink.write({"type": "decision", "n": i})  # records are durable whatever the witness does
    await asyncio.sleep(0.3)
    assert sink.witness_backlog >= 3 and sink.witness_failures >= 1
    blocked.unlink()  # the storage comes back
    for _ in range(200):
        if sink.witness_backlog == 0:
            break
        await asyncio.sleep(0.05)
    assert sink.witness_backlog == 0
    await sink.close()
    statements = witness.read()
    assert [s["seq"] for s in statements] == sorted(s["seq"] for s in statements)  # in order, none lost
    assert _verify(tmp_path / "audit", keys, witness).ok


async def test_the_gateway_exports_the_witness_backlog(tmp_path: Path) -> None:
    import aiohttp

    from tests.harness import run_stack

    audit = {"signing_key_file": str(tmp_path / "k.json"), "witness": "file",
             "witness_path": str(tmp_path / "w" / "witness.jsonl")}
    async with run_stack(tmp_path, audit=audit) as stack, aiohttp.ClientSession() as http:
        async with http.get(stack.admin_url + "/metrics") as r:
            text = await r.text()
    assert "portcullis_audit_witness_backlog" in text and "portcullis_audit_witness_failures" in text
    assert FileWitness(tmp_path / "w" / "witness.jsonl").read()  # the chain's first checkpoint got there


async def test_a_full_disk_ends_the_chain_without_a_gap_and_the_next_record_starts_a_new_one(
        tmp_path: Path, keys: AuditKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import audit.sink as sink_module

    witness = FileWitness(tmp_path / "witness.jsonl")
    sink = FileAuditSink(tmp_path / "audit", fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=3)
    await sink.start()
    for i in range(4):
        await sink.write({"type": "decision", "n": i})
    first = sink.chain_id
    real_write = sink_module.os.write

    def full(fd: int, data: Any) -> int:  # the disk is full (an OS fault we cannot cause here)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sink_module.os, "write", full)
    from audit.sink import AuditWriteError

    with pytest.raises(AuditWriteError, match="No space left"):
        await sink.write({"type": "decision", "n": 99})  # write-ahead: refused, never acknowledged
    monkeypatch.setattr(sink_module.os, "write", real_write)
    await sink.write({"type": "decision", "n": 5})  # space again: a new chain
    await sink.close()
    assert sink.chain_id != first
    report = _verify(tmp_path / "audit", keys, witness)
    assert report.ok, [str(f) for f in report.breaks]
    assert len(report.chains) == 2
    texts = "".join(p.read_text() for files in segment_files(tmp_path / "audit").values() for p in files)
    assert '"n":99' not in texts  # the refused record is nowhere: its request was not forwarded
    starts = [parse_line(line.encode()) for line in texts.splitlines() if '"chain_start"' in line]
    assert any(p["chain"] == first for s in starts for p in s["previous"])  # the new chain bound the old end


def _race_for_the_key_file(path: Path, racers: int) -> list[object]:
    """What ``racers`` threads released at once get from ``AuditKeys.from_file(path, create=True)``."""
    import threading

    start = threading.Barrier(racers)
    got: list[object] = []

    def load() -> None:
        start.wait()
        try:
            got.append(AuditKeys.from_file(path, create=True).current)
        except AuditKeyError as exc:
            got.append(exc)
    threads = [threading.Thread(target=load) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_processes_starting_at_once_share_one_audit_key_file(tmp_path: Path) -> None:
    """The race `portcullis bench` ran into (a bare proxy and a gateway sharing the key file): whoever
    loses the creation reads the winner's whole file, never an empty or half-written one."""
    for attempt in range(20):
        got = _race_for_the_key_file(tmp_path / f"run{attempt}" / "audit-key.json", 8)
        assert len(set(map(str, got))) == 1 and isinstance(got[0], str), got
