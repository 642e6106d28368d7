"""Retention of the PostgreSQL store (audit/postgres.py plan_postgres and apply_postgres, `portcullis audit
retain` with sink = "postgres"), in real PostgreSQL, a schema per test: old chains of reads deleted, old
chains with money records moved to the archive table, both on the record, and the trail still verifies;
the trigger lets rows go only for a chain a committed retention record names; a deletion past it is
still caught. Record times come from an injected wall clock, no test sleeps."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from audit.keys import AuditKeys
from audit.postgres import PostgresAuditSink, apply_postgres, plan_postgres, records, verify_postgres
from audit.retention import record
from audit.witness import FileWitness
from gateway.demo_keys import ensure_demo_keys
from tests.harness import gateway_config
from tests.test_cli import _write_toml

pytestmark = pytest.mark.usefixtures("postgres_dsn")

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400.0
YEAR = 365.25 * DAY


@pytest.fixture
def keys(tmp_path: Path) -> AuditKeys:
    return AuditKeys.from_file(tmp_path / "audit-key.json", create=True)


@pytest.fixture
def witness(tmp_path: Path) -> FileWitness:
    return FileWitness(tmp_path / "witness.jsonl")


async def _chain(dsn: str, schema: str, keys: AuditKeys, witness: FileWitness, *, age: float, tier: str,
                 close: bool = True) -> PostgresAuditSink:
    """A chain whose records (and chain_start, checkpoints) are stamped ``age`` seconds ago."""
    then = time.time() - age
    sink = PostgresAuditSink(dsn, schema, fsync_interval=0.0, keys=keys, witness=witness, checkpoint_every=3,
                             wall=lambda: then)
    await sink.start()
    for i in range(4):
        await sink.write({"type": "decision", "time": then, "tier": tier, "request_id": f"{tier}-{age}-{i}"})
    if close:
        await sink.close()
    return sink


async def _write(dsn: str, schema: str, keys: AuditKeys, witness: FileWitness, doc: dict[str, Any]) -> None:
    """One record in a chain of its own, committed (as `portcullis audit retain` writes its record)."""
    sink = PostgresAuditSink(dsn, schema, fsync_interval=0.0, keys=keys, witness=witness)
    await sink.start()
    await sink.write(doc)
    await sink.close()


async def _chains(dsn: str, schema: str, table: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["chain"] for r in await conn.fetch(f'SELECT DISTINCT chain FROM "{schema}".{table}')}
    finally:
        await conn.close()


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


async def test_retain_deletes_and_archives_old_chains_on_the_record_and_the_trail_still_verifies(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys, witness: FileWitness, tmp_path: Path) -> None:
    reads = (await _chain(postgres_dsn, pg_schema, keys, witness, age=200 * DAY, tier="read")).chain_id
    trades = (await _chain(postgres_dsn, pg_schema, keys, witness, age=200 * DAY, tier="trade")).chain_id
    recent = (await _chain(postgres_dsn, pg_schema, keys, witness, age=10 * DAY, tier="read")).chain_id
    # Open, its records stamped long ago, but the database saw it written just now: not finished.
    running = await _chain(postgres_dsn, pg_schema, keys, witness, age=200 * DAY, tier="read", close=False)
    config = tmp_path / "gw.toml"
    _write_toml(config, gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9", audit={
        "sink": "postgres", "postgres_dsn": postgres_dsn, "postgres_schema": pg_schema,
        "signing_key_file": str(tmp_path / "audit-key.json"), "witness": "file",
        "witness_path": str(witness.path)}))
    everything = {reads, trades, recent, running.chain_id}

    dry = await asyncio.to_thread(_cli, config, "retain", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"delete   chain {reads}" in dry.stdout and f"archive  chain {trades}" in dry.stdout
    assert recent not in dry.stdout and str(running.chain_id) not in dry.stdout
    assert await _chains(postgres_dsn, pg_schema, "audit_records") == everything  # a dry run touches nothing

    done = await asyncio.to_thread(_cli, config, "retain", "--officer", "erin")
    assert done.returncode == 0, done.stderr
    live = await _chains(postgres_dsn, pg_schema, "audit_records")
    assert reads not in live and trades not in live and {recent, running.chain_id} <= live
    assert await _chains(postgres_dsn, pg_schema, "audit_archive") == {trades}
    [retention] = [r async for r in records(postgres_dsn, pg_schema) if r.get("type") == "retention"]
    assert retention["sub"] == "erin" and {c["chain"]: c["action"] for c in retention["chains"]} == \
        {reads: "delete", trades: "archive"}

    await running.close()
    report = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
    assert report.ok, [str(f) for f in report.breaks]
    assert report.chains[trades].records > 0 and reads not in report.chains
    assert any(f.chain == reads and "deleted by a retention record" in f.problem for f in report.findings)
    assert (await asyncio.to_thread(_cli, config, "verify")).returncode == 0

    # A chain deleted past the trigger, with no retention record naming it, is still a break.
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'ALTER TABLE "{pg_schema}".audit_records DISABLE TRIGGER USER')
        await conn.execute(f'DELETE FROM "{pg_schema}".audit_records WHERE chain = $1', recent)
    finally:
        await conn.close()
    cut = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
    assert not cut.ok and {f.chain for f in cut.breaks} == {recent}
    assert (await asyncio.to_thread(_cli, config, "verify")).returncode == 1


async def test_the_trigger_lets_rows_go_only_for_a_chain_a_committed_retention_record_names(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys, witness: FileWitness) -> None:
    chain = (await _chain(postgres_dsn, pg_schema, keys, witness, age=200 * DAY, tier="read")).chain_id
    s = f'"{pg_schema}"'
    conn = await asyncpg.connect(postgres_dsn)
    try:
        last = await conn.fetchval(f"SELECT max(seq) FROM {s}.audit_records WHERE chain = $1", chain)

        async def delete(*before: str) -> None:
            async with conn.transaction():
                await conn.execute("SELECT set_config('portcullis.retention', $1, true)", chain)
                for sql in before:
                    await conn.execute(sql)
                await conn.execute(f"DELETE FROM {s}.audit_records WHERE chain = $1", chain)

        with pytest.raises(asyncpg.RaiseError, match="append-only"):  # no setting, no record
            await conn.execute(f"DELETE FROM {s}.audit_records WHERE chain = $1", chain)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):  # the setting, but no record names it
            await delete()
        # A retention record in the deleting transaction itself is not committed first: refused.
        forged = orjson.dumps({"chain": "forged", "seq": 0, "type": "retention",
                               "chains": [{"chain": chain, "action": "delete", "last_seq": last}]})
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await delete(f"INSERT INTO {s}.audit_records (chain, seq, line, hash, type) "
                         f"VALUES ('forged', 0, '\\x{forged.hex()}'::bytea, 'h', 'retention')")
        # A committed record that names the chain only up to an earlier seq: the rest is not accounted for.
        await _write(postgres_dsn, pg_schema, keys, witness, {"type": "retention", "time": time.time(), "chains": [
            {"chain": chain, "action": "delete", "last_seq": last - 1, "head": "-"}]})
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await delete()
        with pytest.raises(asyncpg.RaiseError, match="append-only"):  # "archive" needs the archived copy
            await _write(postgres_dsn, pg_schema, keys, witness, {"type": "retention", "time": time.time(),
                                                                  "chains": [{"chain": chain, "action": "archive",
                                                                              "last_seq": last, "head": "-"}]})
            await delete()
        for sql in (f"UPDATE {s}.audit_records SET sub = 'mallory' WHERE chain = $1",
                    f"INSERT INTO {s}.audit_retained (chain, action, last_seq, record_chain, record_seq) "
                    "VALUES ($1, 'delete', 99, 'x', 0)"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('portcullis.retention', $1, true)", chain)
                    await conn.execute(sql, chain)
        for table in ("audit_records", "audit_archive", "audit_retained"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(f"TRUNCATE {s}.{table}")
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.audit_records WHERE chain = $1", chain) == last + 1
        # Named in full and committed: the retention path goes through.
        await _write(postgres_dsn, pg_schema, keys, witness, {"type": "retention", "time": time.time(), "chains": [
            {"chain": chain, "action": "delete", "last_seq": last, "head": "-"}]})
        await delete()
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.audit_records WHERE chain = $1", chain) == 0
    finally:
        await conn.close()


async def test_an_archived_chain_past_archive_years_is_deleted_on_the_record(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys, witness: FileWitness) -> None:
    trades = (await _chain(postgres_dsn, pg_schema, keys, witness, age=21 * YEAR, tier="transfer")).chain_id
    now = time.time()

    async def retain(at: float) -> list[Any]:
        plans = await plan_postgres(postgres_dsn, pg_schema, now=at, retention_days=183, archive_years=20)
        await _write(postgres_dsn, pg_schema, keys, witness, record(plans, by="erin", retention_days=183))
        await apply_postgres(postgres_dsn, pg_schema, plans)
        return [(p.chain, p.action, p.archived) for p in plans]

    assert await retain(now) == [(trades, "archive", False)]  # first moved: expiry counts in the archive
    assert await _chains(postgres_dsn, pg_schema, "audit_archive") == {trades}
    conn = await asyncpg.connect(postgres_dsn)
    try:  # the archive is append-only too: no retention record says delete yet
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            async with conn.transaction():
                await conn.execute("SELECT set_config('portcullis.retention', $1, true)", trades)
                await conn.execute(f'DELETE FROM "{pg_schema}".audit_archive WHERE chain = $1', trades)
    finally:
        await conn.close()
    assert await plan_postgres(postgres_dsn, pg_schema, now=now - 2 * YEAR, retention_days=183,
                               archive_years=20) == []  # two years earlier it was not due yet
    assert await retain(now) == [(trades, "delete", True)]
    assert await _chains(postgres_dsn, pg_schema, "audit_archive") == set()
    report = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
    assert report.ok, [str(f) for f in report.breaks]
    assert any(f.chain == trades and "deleted by a retention record" in f.problem for f in report.findings)
