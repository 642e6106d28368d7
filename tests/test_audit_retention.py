"""Retention of the file store (audit/retention.py, `portcullis audit retain`): old chains of reads are
deleted and old chains with money records archived, both on the record, and the trail still verifies
(with the archive); a deletion no retention record names is still caught."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from audit.keys import AuditKeys
from audit.sink import FileAuditSink, segment_files
from audit.verify import verify_directory
from audit.witness import FileWitness
from gateway.config import parse
from gateway.demo_keys import ensure_demo_keys
from gateway.errors import ConfigError
from tests.harness import audit_records, gateway_config
from tests.test_cli import _write_toml

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400.0


async def _chain(folder: Path, keys: AuditKeys, witness: FileWitness, *, age_days: float, tier: str) -> str:
    then = time.time() - age_days * DAY
    sink = FileAuditSink(folder, fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=3,
                         wall=lambda: then)
    await sink.start()
    for i in range(4):
        await sink.write({"type": "decision", "time": then, "tier": tier, "request_id": f"{tier}-{age_days}-{i}"})
    await sink.close()
    assert sink.chain_id is not None
    return sink.chain_id


def _config(tmp_path: Path, **audit: Any) -> Path:
    config = tmp_path / "gw.toml"
    _write_toml(config, gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9", audit={
        "signing_key_file": str(tmp_path / "audit-key.json"), "witness": "file",
        "witness_path": str(tmp_path / "witness.jsonl"), "archive_path": str(tmp_path / "archive"), **audit}))
    return config


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


async def test_old_chains_are_deleted_or_archived_on_the_record_and_the_trail_still_verifies(
        tmp_path: Path) -> None:
    keys = AuditKeys.from_file(tmp_path / "audit-key.json", create=True)
    witness = FileWitness(tmp_path / "witness.jsonl")
    folder = tmp_path / "audit"
    reads = await _chain(folder, keys, witness, age_days=200, tier="read")
    trades = await _chain(folder, keys, witness, age_days=200, tier="trade")
    recent = await _chain(folder, keys, witness, age_days=10, tier="read")
    config = _config(tmp_path)
    dry = _cli(config, "retain", "--dry-run")
    assert dry.returncode == 0 and f"delete   chain {reads}" in dry.stdout and f"archive  chain {trades}" in dry.stdout
    assert set(segment_files(folder)) == {reads, trades, recent}  # a dry run touches nothing
    done = _cli(config, "retain", "--officer", "erin")
    assert done.returncode == 0, done.stderr
    live, archived = set(segment_files(folder)), set(segment_files(tmp_path / "archive"))
    assert reads not in live and reads not in archived  # deleted
    assert trades in archived and trades not in live  # kept for 20 years, elsewhere
    assert recent in live
    [retention] = [r for r in audit_records(folder) if r.get("type") == "retention"]
    assert retention["sub"] == "erin" and {c["chain"]: c["action"] for c in retention["chains"]} == \
        {reads: "delete", trades: "archive"}
    with_archive = verify_directory(folder, keys.public_keys(), witness.read(), archive=tmp_path / "archive")
    assert with_archive.ok, [str(f) for f in with_archive.breaks]
    assert with_archive.chains[trades].records > 0
    assert _cli(config, "verify").returncode == 0  # the config names the archive
    alone = verify_directory(folder, keys.public_keys(), witness.read())
    assert alone.ok and any("archived" in f.problem for f in alone.findings)
    # A deletion no retention record names is still a break.
    for path in segment_files(folder)[recent]:
        path.unlink()
    assert _cli(config, "verify").returncode == 1


def test_retention_shorter_than_six_months_is_refused(tmp_path: Path) -> None:
    base = gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="retention_days"):
        parse({**base, "audit": {**base["audit"], "retention_days": 30}}, tmp_path)
    with pytest.raises(ConfigError, match="archive_years"):
        parse({**base, "audit": {**base["audit"], "archive_years": 5}}, tmp_path)
