"""The audit trail in real PostgreSQL (its own schema per test): chains from several processes, the
append-only trigger, tampering by someone who disables it, the database going away mid-run, and a real
gateway writing its decisions there."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from audit.keys import AuditKeys
from audit.postgres import PostgresAuditSink, records, verify_postgres
from audit.sink import AuditWriteError
from audit.witness import FileWitness

pytestmark = pytest.mark.usefixtures("postgres_dsn")


@pytest.fixture
def keys(tmp_path: Path) -> AuditKeys:
    return AuditKeys.from_file(tmp_path / "audit-key.json", create=True)


def _sink(dsn: str, schema: str, keys: AuditKeys, witness: FileWitness | None, **kw: Any) -> PostgresAuditSink:
    return PostgresAuditSink(dsn, schema, fsync_interval=0.0, keys=keys, witness=witness,
                             checkpoint_every=kw.pop("checkpoint_every", 5), **kw)


async def _fill(sink: PostgresAuditSink, n: int, tag: str = "r") -> None:
    await sink.start()
    for i in range(n):
        await sink.write({"type": "decision", "time": 1_796_000_000.0 + i, "request_id": f"{tag}{i}",
                          "sub": "alice", "account": "A1", "decision": "allow", "reasons": []})


async def test_two_processes_write_their_own_chains_and_the_trail_verifies(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys, tmp_path: Path) -> None:
    witness = FileWitness(tmp_path / "witness.jsonl")
    a, b = _sink(postgres_dsn, pg_schema, keys, witness), _sink(postgres_dsn, pg_schema, keys, witness)
    await asyncio.gather(_fill(a, 12, "a"), _fill(b, 9, "b"))
    await a.close()
    await b.close()
    report = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
    assert report.ok and report.findings == [], [str(f) for f in report.findings]
    assert len(report.chains) == 2 and all(s.closed for s in report.chains.values())
    stored = [r async for r in records(postgres_dsn, pg_schema)]
    assert {r["request_id"] for r in stored if r.get("type") == "decision"} == \
        {f"a{i}" for i in range(12)} | {f"b{i}" for i in range(9)}


async def test_the_records_table_refuses_updates_deletes_and_truncation(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys) -> None:
    sink = _sink(postgres_dsn, pg_schema, keys, None)
    await _fill(sink, 3)
    await sink.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        for sql in (f'UPDATE "{pg_schema}".audit_records SET sub = \'mallory\'',
                    f'DELETE FROM "{pg_schema}".audit_records WHERE seq = 1',
                    f'TRUNCATE "{pg_schema}".audit_records'):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_tampering_past_the_trigger_is_named(postgres_dsn: str, pg_schema: str, keys: AuditKeys,
                                                   tmp_path: Path) -> None:
    witness = FileWitness(tmp_path / "witness.jsonl")
    sink = _sink(postgres_dsn, pg_schema, keys, witness)
    await _fill(sink, 20)
    await sink.close()
    s = f'"{pg_schema}"'
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"ALTER TABLE {s}.audit_records DISABLE TRIGGER USER")  # a determined insider
        chain, seq, line = await conn.fetchrow(
            f"SELECT chain, seq, line FROM {s}.audit_records WHERE request_id = 'r5'")
        await conn.execute(f"UPDATE {s}.audit_records SET line = $1 WHERE seq = $2",
                           bytes(line).replace(b'"allow"', b'"deny"'), seq)
        edited = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
        assert not edited.ok and edited.breaks[0].seq == seq and edited.breaks[0].where == f"row {chain}/{seq}"
        await conn.execute(f"UPDATE {s}.audit_records SET line = $1 WHERE seq = $2", line, seq)  # put back
        newest = await conn.fetchval(f"SELECT max(seq) FROM {s}.audit_records")
        await conn.execute(f"DELETE FROM {s}.audit_records WHERE seq > $1", newest - 5)
        cut = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
        assert not cut.ok and cut.breaks[0].where == "witness" and "deleted" in cut.breaks[0].problem
    finally:
        await conn.close()


class Cuttable:
    """A TCP hop to PostgreSQL that the test can cut and restore (the database 'going away')."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.up = True

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.up = False
        for w in self.links:
            w.close()
        self.links.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def cuttable(dsn: str) -> AsyncIterator[tuple[Cuttable, str]]:
    parts = urlsplit(dsn)
    hop = Cuttable((parts.hostname or "127.0.0.1", parts.port or 5432))
    port = await hop.start()
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    try:
        yield hop, urlunsplit(parts._replace(netloc=netloc))
    finally:
        await hop.close()


async def test_the_database_going_away_mid_run_ends_the_chain_cleanly(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys, tmp_path: Path) -> None:
    witness = FileWitness(tmp_path / "witness.jsonl")
    async with cuttable(postgres_dsn) as (hop, via):
        sink = _sink(via, pg_schema, keys, witness, timeout=0.5)
        await _fill(sink, 4)
        first = sink.chain_id
        hop.cut()
        with pytest.raises(AuditWriteError):
            await sink.write({"type": "decision", "request_id": "lost"})  # write-ahead: refused (503)
        hop.up = True
        for _ in range(50):  # the pool reconnects through the restored hop
            try:
                await sink.write({"type": "decision", "request_id": "after"})
                break
            except AuditWriteError:
                await asyncio.sleep(0.1)
        await sink.close()
    assert sink.chain_id != first
    report = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
    assert report.ok, [str(f) for f in report.breaks]
    ids = [r.get("request_id") async for r in records(postgres_dsn, pg_schema)]
    assert "lost" not in ids and "after" in ids


async def test_read_records_queued_while_the_database_is_down_wait_in_the_local_spool(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    witness = FileWitness(tmp_path / "witness.jsonl")
    async with cuttable(postgres_dsn) as (hop, via):
        sink = _sink(via, pg_schema, keys, witness, timeout=0.5, spool=spool)
        await _fill(sink, 2)
        hop.cut()
        for i in range(5):
            sink.enqueue({"type": "decision", "request_id": f"queued{i}", "route": "quotes"})
        for _ in range(100):
            if sink.retained == 5:
                break
            await asyncio.sleep(0.05)
        assert sink.retained == 5 and len(spool.read_bytes().splitlines()) == 5
        await sink.close()  # the gateway stops before the database is back: the spool keeps them
        assert sink.failed == 0
        hop.up = True
        again = _sink(via, pg_schema, keys, witness, timeout=0.5, spool=spool)
        await again.start()  # the spooled records go into the new chain
        await again.write({"type": "decision", "request_id": "after"})
        for _ in range(100):
            if again.backlog == 0 and not spool.read_bytes():
                break
            await asyncio.sleep(0.05)
        await again.close()
    assert not spool.read_bytes()
    ids = [r.get("request_id") async for r in records(postgres_dsn, pg_schema)]
    assert {f"queued{i}" for i in range(5)} | {"after"} <= set(ids)
    report = await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), witness.read())
    assert report.ok, [str(f) for f in report.breaks]


async def test_a_gateway_writes_its_decisions_to_postgres(postgres_dsn: str, pg_schema: str,
                                                         tmp_path: Path) -> None:
    from tests.harness import run_stack

    audit = {"sink": "postgres", "postgres_dsn": postgres_dsn, "postgres_schema": pg_schema,
             "signing_key_file": str(tmp_path / "audit-key.json")}
    order = {"symbol": "601318.SH", "side": "buy", "qty": 100, "price": 57.2, "type": "limit",
             "client_order_id": "pg-1"}
    async with run_stack(tmp_path, audit=audit) as st, aiohttp.ClientSession() as http:
        async with http.post(st.url + "/api/accounts/A1/orders", json=order, headers=st.auth()) as r:
            assert r.status == 201
            rid = r.headers["X-Request-Id"]
    stored = [r async for r in records(postgres_dsn, pg_schema)]
    assert [r["type"] for r in stored if r.get("request_id") == rid] == ["decision", "outcome"]
    keys = AuditKeys.from_file(tmp_path / "audit-key.json")
    assert (await verify_postgres(postgres_dsn, pg_schema, keys.public_keys())).ok


async def test_a_gateway_refuses_to_start_without_its_audit_database(tmp_path: Path) -> None:
    from gateway.errors import ConfigError
    from tests.harness import run_stack

    audit = {"sink": "postgres", "postgres_dsn": "postgresql://postgres@127.0.0.1:9/none", "postgres_timeout": 0.5}
    with pytest.raises(ConfigError, match="audit database cannot be reached"):
        async with run_stack(tmp_path, audit=audit):
            pass


async def test_searching_the_database_matches_the_file_stores_search(postgres_dsn: str, pg_schema: str,
                                                                     keys: AuditKeys) -> None:
    from audit.postgres import search_postgres
    from audit.query import Filter, FilterError

    sink = _sink(postgres_dsn, pg_schema, keys, None)
    await _fill(sink, 8)
    await sink.write({"type": "decision", "time": 1_796_000_100.0, "request_id": "bob-1", "sub": "bob",
                      "account": "B9", "decision": "deny", "reasons": ["market_closed"]})
    await sink.write({"type": "denial", "time": 1_796_000_101.0, "request_id": "d-1", "sub": "bob",
                      "code": "envelope_replayed"})
    conn = await asyncpg.connect(postgres_dsn)
    try:
        async def ids(**params: Any) -> list[str]:
            page = await search_postgres(conn, pg_schema, Filter.parse(params), limit=100)
            return [r["request_id"] for r in page.records]

        assert await ids(sub="bob") == ["bob-1", "d-1"]
        assert await ids(reason="market_closed") == ["bob-1"] and await ids(reason="envelope_replayed") == ["d-1"]
        assert await ids(decision="deny", account="B9") == ["bob-1"]
        assert await ids(**{"from": 1_796_000_002, "to": 1_796_000_004}) == ["r2", "r3", "r4"]
        assert len(await ids()) == 10  # the chain's own records are left out
        pages, cursor = [], None
        while True:
            page = await sink.search(Filter(sub="alice"), limit=3, cursor=cursor)
            pages.append([r["request_id"] for r in page.records])
            if page.cursor is None:
                break
            cursor = page.cursor
        assert pages == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6", "r7"]]
        with pytest.raises(FilterError):
            await search_postgres(conn, pg_schema, Filter(), cursor="'; DROP TABLE audit_records; --")
    finally:
        await conn.close()
        await sink.close()


async def test_the_request_id_filter_finds_one_requests_records_as_the_file_store_does(
        postgres_dsn: str, pg_schema: str, keys: AuditKeys, tmp_path: Path) -> None:
    from audit.postgres import search_postgres
    from audit.query import Filter, FilterError, search
    from audit.sink import FileAuditSink

    docs: list[dict[str, Any]] = [
        {"type": "decision", "time": 1_796_000_000.0 + i, "request_id": rid, "sub": "alice", "account": "A1",
         "decision": "allow", "reasons": []} for i, rid in enumerate(("r1", "r10", "R1", "r1:x", "r2"))]
    docs.append({"type": "denial", "time": 1_796_000_010.0, "request_id": "r1", "sub": "alice",
                 "code": "rate_limited"})
    docs.append({"type": "outcome", "time": 1_796_000_011.0, "request_id": "r2", "status": 200})
    sink = _sink(postgres_dsn, pg_schema, keys, None)
    files = FileAuditSink(tmp_path / "audit", fsync_interval=0.0, keys=keys, checkpoint_every=5)
    await sink.start()
    await files.start()
    for doc in docs:
        await sink.write(dict(doc))
        await files.write(dict(doc))
    await sink.close()
    await files.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        async def both(**params: Any) -> list[tuple[str, str]]:
            flt = Filter.parse(params)
            db = await search_postgres(conn, pg_schema, flt, limit=100)
            on_file = search(tmp_path / "audit", flt, limit=100)
            def same(r: dict[str, Any]) -> dict[str, Any]:  # each store has its own chain: its id and hashes
                return {k: v for k, v in r.items() if k not in ("chain", "prev")}
            assert [same(r) for r in db.records] == [same(r) for r in on_file.records]
            assert db.cursor is None and on_file.cursor is None
            return [(r["request_id"], r["type"]) for r in db.records]

        assert await both(request_id="r1") == [("r1", "decision"), ("r1", "denial")]  # exactly: not r10, R1, r1:x
        assert await both(request_id="r1:x") == [("r1:x", "decision")]
        assert await both(request_id="r2") == [("r2", "decision"), ("r2", "outcome")]
        assert await both(request_id="r1", type="decision") == [("r1", "decision")]
        assert await both(request_id="r1", sub="bob") == [] and await both(request_id="nobody") == []
        assert (await search_postgres(conn, pg_schema, Filter(request_id="r1"), limit=1)).cursor is not None
        for bad in ("r 1", "r1'; DROP TABLE audit_records; --", "r" * 129, "r1%"):
            with pytest.raises(FilterError, match="request_id"):
                Filter.parse({"request_id": bad})
        index = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
                                    pg_schema, "audit_records_request_id")
        assert index is not None and index.endswith("(request_id)")
    finally:
        await conn.close()


async def test_portcullis_audit_verify_reads_the_database_from_the_config(
        postgres_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    from gateway.demo_keys import ensure_demo_keys
    from tests.harness import gateway_config
    from tests.test_cli import _write_toml

    keys = AuditKeys.from_file(tmp_path / "audit-key.json", create=True)
    witness = FileWitness(tmp_path / "witness.jsonl")
    sink = _sink(postgres_dsn, pg_schema, keys, witness)
    await _fill(sink, 6)
    await sink.close()
    config = tmp_path / "gw.toml"
    _write_toml(config, gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9", audit={
        "sink": "postgres", "postgres_dsn": postgres_dsn, "postgres_schema": pg_schema,
        "signing_key_file": str(tmp_path / "audit-key.json"), "witness": "file",
        "witness_path": str(witness.path)}))
    def verify() -> int:  # its own process: the command runs its own event loop
        return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--config", str(config)],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                              timeout=60).returncode

    assert await asyncio.to_thread(verify) == 0
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'ALTER TABLE "{pg_schema}".audit_records DISABLE TRIGGER USER')
        await conn.execute(f'DELETE FROM "{pg_schema}".audit_records WHERE request_id = \'r3\'')
    finally:
        await conn.close()
    assert await asyncio.to_thread(verify) == 1


async def test_a_second_database_witnesses_the_checkpoints(postgres_dsn: str, pg_schema: str, keys: AuditKeys,
                                                           tmp_path: Path) -> None:
    from audit.witness import PostgresWitness
    from gateway.demo_keys import ensure_demo_keys
    from tests.harness import gateway_config
    from tests.test_cli import _write_toml

    witness_schema = pg_schema + "_w"
    witness = PostgresWitness(postgres_dsn, witness_schema)
    sink = PostgresAuditSink(postgres_dsn, pg_schema, fsync_interval=0.0, keys=keys, witness=witness,
                             checkpoint_every=4)
    try:
        await _fill(sink, 10)
        await sink.close()
        statements = await witness.statements()
        assert len(statements) >= 3 and statements[-1]["seq"] > statements[0]["seq"]
        assert (await verify_postgres(postgres_dsn, pg_schema, keys.public_keys(), statements)).ok
        conn = await asyncpg.connect(postgres_dsn)
        try:
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(f'DELETE FROM "{witness_schema}".audit_witness')
            await conn.execute(f'ALTER TABLE "{pg_schema}".audit_records DISABLE TRIGGER USER')
            newest = await conn.fetchval(f'SELECT max(seq) FROM "{pg_schema}".audit_records')
            await conn.execute(f'DELETE FROM "{pg_schema}".audit_records WHERE seq > $1', newest - 3)
        finally:
            await conn.close()
        config = tmp_path / "gw.toml"
        _write_toml(config, gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9",
                                           audit={"sink": "postgres", "postgres_dsn": postgres_dsn,
                                                  "postgres_schema": pg_schema, "witness": "postgres",
                                                  "witness_dsn": postgres_dsn, "witness_schema": witness_schema,
                                                  "signing_key_file": str(tmp_path / "audit-key.json")}))
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", "audit", "verify", "--config",
                                                       str(config)], capture_output=True, text=True,
                                      cwd=Path(__file__).resolve().parents[1], timeout=60)
        assert out.returncode == 1 and "witness" in out.stdout and "deleted" in out.stdout
    finally:
        conn = await asyncpg.connect(postgres_dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{witness_schema}" CASCADE')
        await conn.close()
