"""The audit trail in PostgreSQL: the same chains, checkpoints and witness as the file store.

For deployments with several gateway processes on several machines. **Each
process writes its own chain** (a new one at every start, as with files),
rather than one chain through the database: one chain would need every
append of every process to take the head under a lock (a global queue and a
round trip per batch under contention), while independent chains append
without coordinating, and the witness's checkpoints and each chain's start
bind them all the same. ``portcullis audit verify --postgres`` checks them.

Tables in the configured schema (created on start if missing)::

    audit_records  chain, seq (primary key), line (bytea: the canonical JSON, exactly as hashed), hash,
                   and for searching: time, type, sub, account, route, decision, code, reasons, request_id
    audit_chains   chain (pk), started, last_seq, head, closed, written: where each chain ends (bound at
                   start), and when the database last took a batch of it
    audit_archive  the same columns as audit_records: chains retention archived (audit/retention.py)
    audit_retained what each retention record names (chain, action, last seq), copied by a trigger

The searchable columns are copies for indexes; verification reads only
``line``. The tables refuse UPDATE, DELETE and TRUNCATE (triggers), except
retention's: DELETE of a chain's rows (and INSERT into the archive) under
``SET LOCAL portcullis.retention = '<chain>'`` when a committed retention
record names that chain (:func:`apply_postgres`). Changing the trail otherwise
takes disabling the triggers, which verification then catches anyway.

A batch is one transaction (group commit): durable when it commits
(``synchronous_commit`` on). When the database refuses a batch (down,
unreachable, timed out) the chain ends at its last committed record and the
next batch starts a new chain binding it (audit/sink.py); a write-ahead
record fails with AuditWriteError, so its request is refused with 503.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import orjson

from audit.chain import line_hash
from audit.query import MAX_LIMIT, Filter, FilterError, Page, parse_cursor
from audit.retention import DAY, Plan, decide, expired, summarize
from audit.sink import AuditWriteError, ChainedSink
from audit.verify import Item, Report, verify_chains
from gateway.crypto.sm2 import Sm2PublicKey

__all__ = ["PostgresAuditSink", "apply_postgres", "plan_postgres", "records", "search_postgres",
           "verify_postgres"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_COLUMNS = "chain, seq, line, hash, time, type, sub, account, route, decision, code, reasons, request_id"
_DDL = """
CREATE TABLE IF NOT EXISTS {s}.audit_records (
    chain text NOT NULL, seq bigint NOT NULL, line bytea NOT NULL, hash text NOT NULL,
    time double precision, type text, sub text, account text, route text, decision text, code text,
    reasons text[], request_id text,
    PRIMARY KEY (chain, seq));
CREATE INDEX IF NOT EXISTS audit_records_sub ON {s}.audit_records (sub, time);
CREATE INDEX IF NOT EXISTS audit_records_account ON {s}.audit_records (account, time);
CREATE INDEX IF NOT EXISTS audit_records_time ON {s}.audit_records (time);
CREATE INDEX IF NOT EXISTS audit_records_request_id ON {s}.audit_records (request_id);
CREATE TABLE IF NOT EXISTS {s}.audit_chains (
    chain text PRIMARY KEY, started double precision NOT NULL, last_seq bigint NOT NULL, head text NOT NULL,
    closed boolean NOT NULL DEFAULT false);
ALTER TABLE {s}.audit_chains ADD COLUMN IF NOT EXISTS written double precision;
CREATE TABLE IF NOT EXISTS {s}.audit_archive (LIKE {s}.audit_records INCLUDING ALL);
CREATE TABLE IF NOT EXISTS {s}.audit_retained (
    chain text NOT NULL, action text NOT NULL, last_seq bigint NOT NULL, record_chain text NOT NULL,
    record_seq bigint NOT NULL, xact xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE INDEX IF NOT EXISTS audit_retained_chain ON {s}.audit_retained (chain);
CREATE OR REPLACE FUNCTION {s}.audit_retention_noted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE listed jsonb := convert_from(NEW.line, 'UTF8')::jsonb -> 'chains';
BEGIN
    IF jsonb_typeof(listed) = 'array' THEN
        INSERT INTO {s}.audit_retained (chain, action, last_seq, record_chain, record_seq)
        SELECT c ->> 'chain', c ->> 'action', (c ->> 'last_seq')::bigint, NEW.chain, NEW.seq
        FROM jsonb_array_elements(listed) AS c
        WHERE jsonb_typeof(c) = 'object' AND jsonb_typeof(c -> 'chain') = 'string'
          AND c ->> 'action' IN ('archive', 'delete') AND jsonb_typeof(c -> 'last_seq') = 'number';
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION {s}.audit_retention_named(c text, act text, at_seq bigint) RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT 1 FROM {s}.audit_retained r WHERE r.chain = c AND r.action = act AND at_seq <= r.last_seq
                   AND r.xact <> pg_current_xact_id()) $$;
CREATE OR REPLACE FUNCTION {s}.audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL <> 'ROW' THEN
        NULL;
    ELSIF TG_TABLE_NAME = 'audit_retained' THEN
        IF TG_OP = 'INSERT' AND pg_trigger_depth() > 1 THEN RETURN NEW; END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF OLD.chain = current_setting('portcullis.retention', true) THEN
            IF {s}.audit_retention_named(OLD.chain, 'delete', OLD.seq) THEN RETURN OLD; END IF;
            IF TG_TABLE_NAME = 'audit_records' AND {s}.audit_retention_named(OLD.chain, 'archive', OLD.seq)
                    AND EXISTS (SELECT 1 FROM {s}.audit_archive a
                                WHERE a.chain = OLD.chain AND a.seq = OLD.seq AND a.line = OLD.line) THEN
                RETURN OLD;
            END IF;
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        IF NEW.chain = current_setting('portcullis.retention', true)
                AND {s}.audit_retention_named(NEW.chain, 'archive', NEW.seq) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only (% on %: only retention deletes, for a chain a committed '
                    'retention record names, under SET LOCAL portcullis.retention)', TG_OP, TG_TABLE_NAME;
END $$;
DROP TRIGGER IF EXISTS audit_records_append_only ON {s}.audit_records;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON {s}.audit_records
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_append_only();
DROP TRIGGER IF EXISTS audit_records_no_truncate ON {s}.audit_records;
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON {s}.audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.audit_append_only();
DROP TRIGGER IF EXISTS audit_records_retention ON {s}.audit_records;
CREATE TRIGGER audit_records_retention AFTER INSERT ON {s}.audit_records
    FOR EACH ROW WHEN (NEW.type = 'retention') EXECUTE FUNCTION {s}.audit_retention_noted();
DROP TRIGGER IF EXISTS audit_archive_append_only ON {s}.audit_archive;
CREATE TRIGGER audit_archive_append_only BEFORE INSERT OR UPDATE OR DELETE ON {s}.audit_archive
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_append_only();
DROP TRIGGER IF EXISTS audit_archive_no_truncate ON {s}.audit_archive;
CREATE TRIGGER audit_archive_no_truncate BEFORE TRUNCATE ON {s}.audit_archive
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.audit_append_only();
DROP TRIGGER IF EXISTS audit_retained_append_only ON {s}.audit_retained;
CREATE TRIGGER audit_retained_append_only BEFORE INSERT OR UPDATE OR DELETE ON {s}.audit_retained
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_append_only();
DROP TRIGGER IF EXISTS audit_retained_no_truncate ON {s}.audit_retained;
CREATE TRIGGER audit_retained_no_truncate BEFORE TRUNCATE ON {s}.audit_retained
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.audit_append_only();
"""
_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _schema(schema: str) -> str:
    if not _IDENT.fullmatch(schema):
        raise ValueError(f"schema must be a plain SQL identifier (got {schema!r})")
    return f'"{schema}"'


async def _create(conn: asyncpg.Connection, s: str) -> None:
    """The tables, functions and triggers, created or brought up to date (under a lock: processes start
    at once)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"portcullis-audit:{s}")
        await conn.execute(_DDL.format(s=s))


def _row(line: bytes) -> tuple[Any, ...]:
    doc = orjson.loads(line)
    reasons = doc.get("reasons")

    def text(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) else None
    t = doc.get("time")
    return (doc["chain"], doc["seq"], line, line_hash(line), float(t) if isinstance(t, (int, float)) else None,
            text("type"), text("sub"), text("account"), text("route"), text("decision"), text("code"),
            [str(r) for r in reasons] if isinstance(reasons, list) else None, text("request_id"))


class PostgresAuditSink(ChainedSink):
    """An AuditSink (and ChainedSink) on PostgreSQL; ``await start()`` before use."""

    def __init__(self, dsn: str, schema: str = "portcullis", *, timeout: float = 2.0, max_connections: int = 2,
                 **chained: Any) -> None:
        super().__init__(**chained)
        self._dsn = dsn
        self._s = _schema(schema)
        self._schema = schema
        self._timeout = timeout
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        self._open_chains: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"PostgresAuditSink(schema={self._s})"

    async def start(self) -> None:
        """Connect, create the tables if missing, read where the unclosed chains end; then begin the chain.

        AuditWriteError when the database cannot be reached: the gateway does not start without its trail."""
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max,
                                                   timeout=self._timeout, command_timeout=self._timeout)
            async with self._pool.acquire() as conn:
                await _create(conn, self._s)
                rows = await conn.fetch(f"SELECT chain, last_seq, head FROM {self._s}.audit_chains "
                                        "WHERE NOT closed ORDER BY chain")
        except _ERRORS as exc:
            await self._release()
            raise AuditWriteError(f"the audit database cannot be reached: {type(exc).__name__}: {exc}") from None
        self._open_chains = [{"chain": r["chain"], "seq": r["last_seq"], "head": r["head"], "status": "open"}
                             for r in rows]
        await super().start()

    def _previous(self) -> list[dict[str, Any]]:
        return list(self._open_chains)

    async def _store(self, lines: list[bytes], awaited: bool) -> None:
        if not lines:
            return
        if self._pool is None:
            raise AuditWriteError("the audit database is not connected (start() was not awaited)")
        rows = [_row(line.rstrip(b"\n")) for line in lines]
        last = orjson.loads(rows[-1][2])
        closed = last.get("type") == "checkpoint" and bool(last.get("closing"))
        started = float(orjson.loads(rows[0][2]).get("time") or 0.0)
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                await conn.executemany(
                    f"INSERT INTO {self._s}.audit_records (chain, seq, line, hash, time, type, sub, account, route, "
                    "decision, code, reasons, request_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)", rows)
                await conn.execute(
                    f"INSERT INTO {self._s}.audit_chains (chain, started, last_seq, head, closed, written) "
                    "VALUES ($1,$2,$3,$4,$5,extract(epoch FROM now())) ON CONFLICT (chain) DO UPDATE SET "
                    "last_seq = EXCLUDED.last_seq, head = EXCLUDED.head, closed = EXCLUDED.closed, "
                    "written = EXCLUDED.written", last["chain"], started, last["seq"],
                    rows[-1][3], closed)
        except _ERRORS as exc:
            raise AuditWriteError(f"audit write failed: {type(exc).__name__}") from None

    async def _release(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def verify(self, public_keys: Mapping[str, Sm2PublicKey],
                     witness: list[dict[str, Any]] | None = None) -> Report:
        return await verify_postgres(self._dsn, self._schema, public_keys, witness)

    async def search(self, flt: Filter, *, limit: int = 100, cursor: str | None = None) -> Page:
        """A page of the trail (the admin API's search), on this sink's connections."""
        if self._pool is None:
            raise AuditWriteError("the audit database is not connected")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await search_postgres(conn, self._schema, flt, limit=limit, cursor=cursor)
        except _ERRORS as exc:
            raise AuditWriteError(f"audit search failed: {type(exc).__name__}") from None


async def _chain_items(conn: asyncpg.Connection, schema: str, chain: str, archive: bool) -> list[Item]:
    both = f" UNION ALL SELECT 'archive' AS src, seq, line FROM {schema}.audit_archive WHERE chain = $1" \
        if archive else ""
    rows = await conn.fetch(f"SELECT 'row' AS src, seq, line FROM {schema}.audit_records WHERE chain = $1{both} "
                            "ORDER BY seq", chain)
    return [(f"{r['src']} {chain}/{r['seq']}", bytes(r["line"])) for r in rows]


async def verify_postgres(dsn: str, schema: str, public_keys: Mapping[str, Sm2PublicKey],
                          witness: list[dict[str, Any]] | None = None) -> Report:
    """Every chain in the database, live or archived by retention, as the file store's."""
    s = _schema(schema)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        archive = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{s}.audit_archive")
        union = f" UNION SELECT chain FROM {s}.audit_archive" if archive else ""
        names = [r["chain"] for r in await conn.fetch(
            f"SELECT chain FROM {s}.audit_records{union} GROUP BY 1 ORDER BY 1")]
        chains: dict[str, tuple[int, list[Item]]] = {}
        for chain in names:
            chains[chain] = (1, await _chain_items(conn, s, chain, archive))
    finally:
        await conn.close()
    return verify_chains(chains, public_keys, witness, archive_read=archive)


async def plan_postgres(dsn: str, schema: str, *, now: float, retention_days: float,
                        archive_years: float) -> list[Plan]:
    """What retention would do (audit/retention.py's rule): live chains to archive or delete, archived chains
    whose ``archive_years`` are over; nothing is touched. The archive table is always there, so money
    chains are always archived."""
    s = _schema(schema)
    conn = await asyncpg.connect(dsn, timeout=10)
    out: list[Plan] = []
    try:
        await _create(conn, s)  # a trail last written before retention existed has no archive yet
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            candidates = await conn.fetch(f"SELECT chain, written FROM {s}.audit_chains WHERE started <= $1 "
                                          "ORDER BY chain", now - retention_days * DAY)
            for row in candidates:
                newest, money, last, head = 0.0, False, None, ""
                cursor = await conn.cursor(f"SELECT line, hash FROM {s}.audit_records WHERE chain = $1 "
                                           "ORDER BY seq", row["chain"])
                while batch := await cursor.fetch(1000):
                    docs = [orjson.loads(bytes(r["line"])) for r in batch]
                    got, has = summarize(docs)
                    newest, money, last, head = max(newest, got), money or has, docs[-1], batch[-1]["hash"]
                if last is None:
                    continue
                ended = last.get("type") == "checkpoint" and bool(last.get("closing"))
                written = row["written"] if row["written"] is not None else newest
                action = decide(now=now, newest=newest, money=money, ended=ended, last_written=written,
                                retention_days=retention_days, can_archive=True)
                if action is not None:
                    out.append(Plan(row["chain"], action, (), int(last["seq"]), head, newest))
            for row in await conn.fetch(
                    f"SELECT chain, max(time) AS newest, max(seq) AS last_seq FROM {s}.audit_archive WHERE chain IN "
                    f"(SELECT DISTINCT chain FROM {s}.audit_archive WHERE time <= $1) GROUP BY chain ORDER BY chain",
                    now - archive_years * 365.25 * DAY):
                if expired(now=now, newest=row["newest"] or 0.0, archive_years=archive_years):
                    head = await conn.fetchval(f"SELECT hash FROM {s}.audit_archive WHERE chain = $1 AND seq = $2",
                                               row["chain"], row["last_seq"])
                    out.append(Plan(row["chain"], "delete", (), row["last_seq"], head, row["newest"], archived=True))
    finally:
        await conn.close()
    return out


async def apply_postgres(dsn: str, schema: str, plans: list[Plan]) -> None:
    """Move or delete the chains of ``plans``, each in one transaction, once their retention record is
    committed: the trigger lets only such a chain's rows go (up to the seq the record names: a chain
    written since is refused whole), and only to the archive when the record says archive."""
    s = _schema(schema)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for p in plans:
            try:
                async with conn.transaction():
                    await conn.execute("SELECT set_config('portcullis.retention', $1, true)", p.chain)
                    if p.action == "archive":
                        await conn.execute(f"INSERT INTO {s}.audit_archive ({_COLUMNS}) SELECT {_COLUMNS} "
                                           f"FROM {s}.audit_records WHERE chain = $1", p.chain)
                    table = "audit_archive" if p.archived else "audit_records"
                    await conn.execute(f"DELETE FROM {s}.{table} WHERE chain = $1", p.chain)
                    await conn.execute(f"DELETE FROM {s}.audit_chains WHERE chain = $1", p.chain)
            except asyncpg.PostgresError as exc:
                raise AuditWriteError(f"retention of chain {p.chain} refused: {exc}") from None
    finally:
        await conn.close()


async def records(dsn: str, schema: str) -> AsyncIterator[dict[str, Any]]:
    """Every stored record, in the trail's order (for tests and exports)."""
    s = _schema(schema)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for r in await conn.fetch(f"SELECT line FROM {s}.audit_records ORDER BY chain, seq"):
            yield orjson.loads(bytes(r["line"]))
    finally:
        await conn.close()


async def search_postgres(conn: asyncpg.Connection, schema: str, flt: Filter, *, limit: int = 100,
                          cursor: str | None = None) -> Page:
    """audit/query.py's search on the database: the same filters and cursor, through the indexes."""
    s = _schema(schema)
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit: 1 to {MAX_LIMIT}")
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"
    for column in ("sub", "account", "route", "decision", "request_id"):
        value = getattr(flt, column)
        if value is not None:
            where.append(f"{column} = {arg(value)}")
    if flt.reason is not None:
        p = arg(flt.reason)
        where.append(f"(code = {p} OR {p} = ANY(reasons))")
    if flt.since is not None:
        where.append(f"time >= {arg(flt.since)}")
    if flt.until is not None:
        where.append(f"time <= {arg(flt.until)}")
    if flt.type is not None:
        where.append(f"type = {arg(flt.type)}")
    else:
        where.append("(type IS NULL OR type NOT IN ('chain_start', 'checkpoint'))")
    if cursor:
        chain, seq = parse_cursor(cursor)
        where.append(f"(chain, seq) > ({arg(chain)}, {arg(seq)})")
    rows = await conn.fetch(f"SELECT line FROM {s}.audit_records WHERE {' AND '.join(where)} "
                            f"ORDER BY chain, seq LIMIT {limit + 1}", *args)
    docs = [orjson.loads(bytes(r["line"])) for r in rows]
    more = len(docs) > limit
    docs = docs[:limit]
    return Page(docs, f"{docs[-1]['chain']}:{docs[-1]['seq']}" if more else None, len(rows))
