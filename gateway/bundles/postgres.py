"""The bundle repository on PostgreSQL: durable, shared by every gateway process.

Five tables in the configured schema (created on start if missing)::

    policy_bundles      version (pk), seq, digest, files_digest, files (bytea: canonical JSON),
                        description, uploaded_by/at, status, validated_by/at, report (jsonb)
    policy_proposals    id, kind, version -> bundles, proposed_by/at, reason, status,
                        decided_by/at; CHECK approved => decided_by <> proposed_by;
                        at most one pending proposal per version (partial unique index)
    policy_activations  generation (pk, grows by one), version -> bundles, kind,
                        proposal_id, activated_by, approved_by, activated_at, reason
    policy_shadow_sessions  id, version -> bundles, sample_rate, started_by/at, reason,
                        stopped_by/at; at most one running (partial unique index)
    policy_drafts       id, base_version -> bundles, files (bytea), revision, created_by/at,
                        updated_by/at, checked_version (the console's drafts)

Every change runs in one transaction holding a transaction-level advisory
lock (one per schema), so the rules of `gateway.bundles.repository` are
checked against the state they change, and generations are committed in
order. Reads take no lock. A draft save is one conditional UPDATE (``WHERE
revision = $n``): the compare-and-set needs no lock, and the policy lock is
not held for an officer's typing. The four-eyes rule is also a CHECK constraint, so
not even a bug here can store a self-approval.

Files are stored as bytes (canonical JSON), not jsonb, so they come back
byte for byte and their SM3 digest can be re-checked on load.

Failures (connection, timeout, server errors) become 503
``repository_unavailable``; a gateway never guesses the active version.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
import orjson

from gateway.bundles.repository import (
    Activation,
    Bundle,
    BundleInfo,
    Draft,
    DraftInfo,
    NewBundle,
    Proposal,
    ProposalKind,
    ShadowSession,
    check_approval,
    check_proposal,
    check_rollback_target,
    check_shadow,
    files_size,
    is_expired,
)
from gateway.errors import (
    BUNDLE_EXISTS,
    BUNDLE_NOT_FOUND,
    PROPOSAL_NOT_FOUND,
    REPOSITORY_UNAVAILABLE,
    SHADOW_NOT_FOUND,
    SHADOW_NOT_RUNNING,
    GatewayError,
)

T = TypeVar("T")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.policy_bundles (
    version       text PRIMARY KEY,
    seq           bigserial UNIQUE,
    digest        text NOT NULL,
    files_digest  text NOT NULL,
    files         bytea NOT NULL,
    file_count    integer NOT NULL,
    size          bigint NOT NULL,
    description   text NOT NULL DEFAULT '',
    uploaded_by   text NOT NULL,
    uploaded_at   double precision NOT NULL,
    status        text NOT NULL CHECK (status IN ('uploaded', 'validated', 'invalid')),
    validated_by  text,
    validated_at  double precision,
    report        jsonb
);
CREATE TABLE IF NOT EXISTS {s}.policy_proposals (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('activate', 'rollback')),
    version      text NOT NULL REFERENCES {s}.policy_bundles (version),
    proposed_by  text NOT NULL,
    proposed_at  double precision NOT NULL,
    reason       text NOT NULL DEFAULT '',
    status       text NOT NULL CHECK (status IN ('pending', 'approved', 'expired')),
    decided_by   text,
    decided_at   double precision,
    CONSTRAINT four_eyes CHECK (status <> 'approved' OR (decided_by IS NOT NULL AND decided_by <> proposed_by))
);
CREATE UNIQUE INDEX IF NOT EXISTS policy_proposals_one_pending
    ON {s}.policy_proposals (version) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS {s}.policy_activations (
    generation    bigint PRIMARY KEY,
    version       text NOT NULL REFERENCES {s}.policy_bundles (version),
    kind          text NOT NULL CHECK (kind IN ('bootstrap', 'activate', 'rollback', 'break_glass')),
    proposal_id   bigint REFERENCES {s}.policy_proposals (id),
    activated_by  text NOT NULL,
    approved_by   text,
    activated_at  double precision NOT NULL,
    reason        text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS {s}.policy_shadow_sessions (
    id           bigserial PRIMARY KEY,
    version      text NOT NULL REFERENCES {s}.policy_bundles (version),
    sample_rate  double precision NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    started_by   text NOT NULL,
    started_at   double precision NOT NULL,
    reason       text NOT NULL DEFAULT '',
    stopped_by   text,
    stopped_at   double precision
);
CREATE UNIQUE INDEX IF NOT EXISTS policy_shadow_one_running
    ON {s}.policy_shadow_sessions ((true)) WHERE stopped_at IS NULL;
CREATE TABLE IF NOT EXISTS {s}.policy_drafts (
    id               bigserial PRIMARY KEY,
    base_version     text REFERENCES {s}.policy_bundles (version),
    files            bytea NOT NULL,
    file_count       integer NOT NULL,
    size             bigint NOT NULL,
    revision         bigint NOT NULL CHECK (revision >= 1),
    created_by       text NOT NULL,
    created_at       double precision NOT NULL,
    updated_by       text NOT NULL,
    updated_at       double precision NOT NULL,
    checked_version  text
);
"""

_DRAFT_COLUMNS = ("id, base_version, revision, file_count, size, created_by, created_at, updated_by, updated_at, "
                  "checked_version")

_INFO_COLUMNS = """b.version, b.seq, b.digest, b.files_digest, b.file_count, b.size, b.description, b.uploaded_by,
    b.uploaded_at, b.status, b.validated_by, b.validated_at, b.report::text AS report,
    EXISTS (SELECT 1 FROM {s}.policy_activations a WHERE a.version = b.version) AS ever_active"""


def _info(row: Mapping[str, Any]) -> BundleInfo:
    return BundleInfo(version=row["version"], digest=row["digest"], files_digest=row["files_digest"],
                      seq=row["seq"], description=row["description"], uploaded_by=row["uploaded_by"],
                      uploaded_at=row["uploaded_at"], status=row["status"], file_count=row["file_count"],
                      size=row["size"], validated_by=row["validated_by"], validated_at=row["validated_at"],
                      report=orjson.loads(row["report"]) if row["report"] is not None else None,
                      ever_active=row["ever_active"])


def _proposal(row: Mapping[str, Any]) -> Proposal:
    return Proposal(id=row["id"], kind=row["kind"], version=row["version"], proposed_by=row["proposed_by"],
                    proposed_at=row["proposed_at"], reason=row["reason"], status=row["status"],
                    decided_by=row["decided_by"], decided_at=row["decided_at"])


def _shadow(row: Mapping[str, Any]) -> ShadowSession:
    return ShadowSession(id=row["id"], version=row["version"], sample_rate=row["sample_rate"],
                         started_by=row["started_by"], started_at=row["started_at"], reason=row["reason"],
                         stopped_by=row["stopped_by"], stopped_at=row["stopped_at"])


def _draft(row: Mapping[str, Any]) -> DraftInfo:
    return DraftInfo(id=row["id"], base_version=row["base_version"], revision=row["revision"],
                     file_count=row["file_count"], size=row["size"], created_by=row["created_by"],
                     created_at=row["created_at"], updated_by=row["updated_by"], updated_at=row["updated_at"],
                     checked_version=row["checked_version"])


def _files(files: Mapping[str, str]) -> bytes:
    return orjson.dumps(dict(files), option=orjson.OPT_SORT_KEYS)


def _activation(row: Mapping[str, Any]) -> Activation:
    return Activation(generation=row["generation"], version=row["version"], kind=row["kind"],
                      activated_by=row["activated_by"], activated_at=row["activated_at"],
                      proposal_id=row["proposal_id"], approved_by=row["approved_by"], reason=row["reason"])


class PostgresBundleRepository:
    """A `BundleRepository` on PostgreSQL (asyncpg pool)."""

    def __init__(self, dsn: str, schema: str = "portcullis", *, timeout: float = 5.0,
                 max_connections: int = 4) -> None:
        if not _IDENT.fullmatch(schema):
            raise ValueError(f"schema must be a plain SQL identifier (got {schema!r})")
        self._dsn = dsn
        self._schema = schema
        self._s = f'"{schema}"'
        self._timeout = timeout
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        # One advisory lock per schema serialises every change.
        self._lock_key = zlib.crc32(f"portcullis-policy:{schema}".encode())
        self._info_columns = _INFO_COLUMNS.format(s=self._s)

    # -- plumbing -----------------------------------------------------------

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max,
                                                   timeout=self._timeout, command_timeout=self._timeout)
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
                await conn.execute(_DDL.format(s=self._s))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise GatewayError(REPOSITORY_UNAVAILABLE, f"PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, write: bool) -> T:
        if self._pool is None:
            raise GatewayError(REPOSITORY_UNAVAILABLE, "the bundle repository is not started")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                if not write:
                    return await work(conn)
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
                    return await work(conn)
        except GatewayError:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise GatewayError(REPOSITORY_UNAVAILABLE, f"PostgreSQL: {type(exc).__name__}") from exc

    async def _info_row(self, conn: asyncpg.Connection, version: str) -> BundleInfo:
        row = await conn.fetchrow(f"SELECT {self._info_columns} FROM {self._s}.policy_bundles b "
                                  "WHERE b.version = $1", version)
        if row is None:
            raise GatewayError(BUNDLE_NOT_FOUND, f"no bundle has version {version}")
        return _info(row)

    async def _active_row(self, conn: asyncpg.Connection) -> Activation | None:
        row = await conn.fetchrow(f"SELECT * FROM {self._s}.policy_activations ORDER BY generation DESC LIMIT 1")
        return _activation(row) if row is not None else None

    async def _insert_bundle(self, conn: asyncpg.Connection, b: NewBundle, status: str) -> None:
        await conn.execute(
            f"INSERT INTO {self._s}.policy_bundles (version, digest, files_digest, files, file_count, size, "
            "description, uploaded_by, uploaded_at, status) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            b.version, b.digest, b.files_digest, orjson.dumps(dict(b.files), option=orjson.OPT_SORT_KEYS),
            len(b.files), b.size, b.description, b.uploaded_by, b.uploaded_at, status)

    async def _activate(self, conn: asyncpg.Connection, version: str, kind: str, by: str, at: float, *,
                        proposal_id: int | None = None, approved_by: str | None = None,
                        reason: str = "") -> Activation:
        row = await conn.fetchrow(
            f"INSERT INTO {self._s}.policy_activations (generation, version, kind, proposal_id, activated_by, "
            "approved_by, activated_at, reason) SELECT COALESCE(MAX(generation), 0) + 1, $1, $2, $3, $4, $5, $6, $7 "
            f"FROM {self._s}.policy_activations RETURNING *",
            version, kind, proposal_id, by, approved_by, at, reason)
        assert row is not None
        return _activation(row)

    # -- BundleRepository -------------------------------------------------------

    async def add(self, bundle: NewBundle) -> BundleInfo:
        async def work(conn: asyncpg.Connection) -> BundleInfo:
            if await conn.fetchval(f"SELECT 1 FROM {self._s}.policy_bundles WHERE version = $1", bundle.version):
                raise GatewayError(BUNDLE_EXISTS, f"version {bundle.version} is already stored",
                                   extra={"version": bundle.version})
            await self._insert_bundle(conn, bundle, "uploaded")
            return await self._info_row(conn, bundle.version)

        return await self._run(work, write=True)

    async def info(self, version: str) -> BundleInfo:
        return await self._run(lambda conn: self._info_row(conn, version), write=False)

    async def get(self, version: str) -> Bundle:
        async def work(conn: asyncpg.Connection) -> Bundle:
            info = await self._info_row(conn, version)
            raw = await conn.fetchval(f"SELECT files FROM {self._s}.policy_bundles WHERE version = $1", version)
            return Bundle(info, orjson.loads(raw))

        return await self._run(work, write=False)

    async def bundles(self, limit: int = 100) -> list[BundleInfo]:
        async def work(conn: asyncpg.Connection) -> list[BundleInfo]:
            rows = await conn.fetch(f"SELECT {self._info_columns} FROM {self._s}.policy_bundles b "
                                    "ORDER BY b.seq DESC LIMIT $1", limit)
            return [_info(r) for r in rows]

        return await self._run(work, write=False)

    async def record_validation(self, version: str, *, ok: bool, report: Mapping[str, Any], by: str,
                                at: float) -> BundleInfo:
        async def work(conn: asyncpg.Connection) -> BundleInfo:
            await self._info_row(conn, version)
            await conn.execute(
                f"UPDATE {self._s}.policy_bundles SET status = $2, validated_by = $3, validated_at = $4, "
                "report = $5::jsonb WHERE version = $1",
                version, "validated" if ok else "invalid", by, at, orjson.dumps(dict(report)).decode())
            return await self._info_row(conn, version)

        return await self._run(work, write=True)

    async def _pending_for(self, conn: asyncpg.Connection, version: str, now: float,
                           ttl: float) -> Proposal | None:
        row = await conn.fetchrow(f"SELECT * FROM {self._s}.policy_proposals WHERE version = $1 "
                                  "AND status = 'pending'", version)
        if row is None:
            return None
        pending = _proposal(row)
        if is_expired(pending, now, ttl):
            await conn.execute(f"UPDATE {self._s}.policy_proposals SET status = 'expired' WHERE id = $1",
                               pending.id)
            return None
        return pending

    async def propose(self, kind: ProposalKind, version: str, *, by: str, at: float, reason: str,
                      ttl: float) -> Proposal:
        async def work(conn: asyncpg.Connection) -> Proposal:
            info = await self._info_row(conn, version)
            check_proposal(kind, info, await self._active_row(conn), await self._pending_for(conn, version, at, ttl))
            row = await conn.fetchrow(
                f"INSERT INTO {self._s}.policy_proposals (kind, version, proposed_by, proposed_at, reason, status) "
                "VALUES ($1, $2, $3, $4, $5, 'pending') RETURNING *", kind, version, by, at, reason)
            assert row is not None
            return _proposal(row)

        return await self._run(work, write=True)

    async def _proposal_row(self, conn: asyncpg.Connection, proposal_id: int) -> Proposal:
        row = await conn.fetchrow(f"SELECT * FROM {self._s}.policy_proposals WHERE id = $1", proposal_id)
        if row is None:
            raise GatewayError(PROPOSAL_NOT_FOUND, f"no proposal has id {proposal_id}")
        return _proposal(row)

    async def proposal(self, proposal_id: int) -> Proposal:
        return await self._run(lambda conn: self._proposal_row(conn, proposal_id), write=False)

    async def proposals(self, limit: int = 100) -> list[Proposal]:
        async def work(conn: asyncpg.Connection) -> list[Proposal]:
            rows = await conn.fetch(f"SELECT * FROM {self._s}.policy_proposals ORDER BY id DESC LIMIT $1", limit)
            return [_proposal(r) for r in rows]

        return await self._run(work, write=False)

    async def approve(self, proposal_id: int, *, by: str, at: float, ttl: float) -> Activation:
        async def work(conn: asyncpg.Connection) -> Activation:
            p = await self._proposal_row(conn, proposal_id)
            check_approval(p, await self._info_row(conn, p.version), await self._active_row(conn), by=by,
                           now=at, ttl=ttl)
            await conn.execute(f"UPDATE {self._s}.policy_proposals SET status = 'approved', decided_by = $2, "
                               "decided_at = $3 WHERE id = $1", p.id, by, at)
            return await self._activate(conn, p.version, p.kind, p.proposed_by, at, proposal_id=p.id,
                                        approved_by=by, reason=p.reason)

        return await self._run(work, write=True)

    async def break_glass(self, version: str, *, by: str, at: float, reason: str) -> Activation:
        async def work(conn: asyncpg.Connection) -> Activation:
            check_rollback_target(await self._info_row(conn, version), await self._active_row(conn))
            return await self._activate(conn, version, "break_glass", by, at, reason=reason)

        return await self._run(work, write=True)

    async def bootstrap(self, bundle: NewBundle, *, at: float) -> Activation | None:
        async def work(conn: asyncpg.Connection) -> Activation | None:
            if await self._active_row(conn) is not None:
                return None
            if not await conn.fetchval(f"SELECT 1 FROM {self._s}.policy_bundles WHERE version = $1",
                                       bundle.version):
                await self._insert_bundle(conn, bundle, "validated")
            return await self._activate(conn, bundle.version, "bootstrap", bundle.uploaded_by, at)

        return await self._run(work, write=True)

    async def active(self) -> Activation | None:
        return await self._run(self._active_row, write=False)

    async def history(self, limit: int = 20) -> list[Activation]:
        async def work(conn: asyncpg.Connection) -> list[Activation]:
            rows = await conn.fetch(f"SELECT * FROM {self._s}.policy_activations ORDER BY generation DESC "
                                    "LIMIT $1", limit)
            return [_activation(r) for r in rows]

        return await self._run(work, write=False)

    async def _latest_shadow(self, conn: asyncpg.Connection) -> ShadowSession | None:
        row = await conn.fetchrow(f"SELECT * FROM {self._s}.policy_shadow_sessions ORDER BY id DESC LIMIT 1")
        return _shadow(row) if row is not None else None

    async def start_shadow(self, version: str, *, by: str, at: float, sample_rate: float,
                           reason: str) -> ShadowSession:
        async def work(conn: asyncpg.Connection) -> ShadowSession:
            check_shadow(await self._info_row(conn, version), await self._active_row(conn),
                         await self._latest_shadow(conn))
            row = await conn.fetchrow(
                f"INSERT INTO {self._s}.policy_shadow_sessions (version, sample_rate, started_by, started_at, "
                "reason) VALUES ($1, $2, $3, $4, $5) RETURNING *", version, sample_rate, by, at, reason)
            assert row is not None
            return _shadow(row)

        return await self._run(work, write=True)

    async def stop_shadow(self, *, by: str, at: float) -> ShadowSession:
        async def work(conn: asyncpg.Connection) -> ShadowSession:
            row = await conn.fetchrow(
                f"UPDATE {self._s}.policy_shadow_sessions SET stopped_by = $1, stopped_at = $2 "
                "WHERE stopped_at IS NULL RETURNING *", by, at)
            if row is None:
                raise GatewayError(SHADOW_NOT_RUNNING)
            return _shadow(row)

        return await self._run(work, write=True)

    async def shadow(self, session_id: int | None = None) -> ShadowSession | None:
        async def work(conn: asyncpg.Connection) -> ShadowSession | None:
            if session_id is None:
                return await self._latest_shadow(conn)
            row = await conn.fetchrow(f"SELECT * FROM {self._s}.policy_shadow_sessions WHERE id = $1", session_id)
            if row is None:
                raise GatewayError(SHADOW_NOT_FOUND, f"no shadow session has id {session_id}")
            return _shadow(row)

        return await self._run(work, write=False)

    # -- drafts -----------------------------------------------------------------------

    async def create_draft(self, base_version: str | None, files: Mapping[str, str], *, by: str,
                           at: float) -> DraftInfo:
        async def work(conn: asyncpg.Connection) -> DraftInfo:
            if base_version is not None:
                await self._info_row(conn, base_version)
            row = await conn.fetchrow(
                f"INSERT INTO {self._s}.policy_drafts (base_version, files, file_count, size, revision, created_by, "
                f"created_at, updated_by, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $5, $6) "
                f"RETURNING {_DRAFT_COLUMNS}", base_version, _files(files), len(files), files_size(files), by, at)
            assert row is not None
            return _draft(row)

        return await self._run(work, write=False)

    async def draft(self, draft_id: int) -> Draft | None:
        async def work(conn: asyncpg.Connection) -> Draft | None:
            row = await conn.fetchrow(f"SELECT {_DRAFT_COLUMNS}, files FROM {self._s}.policy_drafts WHERE id = $1",
                                      draft_id)
            return Draft(_draft(row), orjson.loads(row["files"])) if row is not None else None

        return await self._run(work, write=False)

    async def drafts(self, limit: int = 100) -> list[DraftInfo]:
        async def work(conn: asyncpg.Connection) -> list[DraftInfo]:
            rows = await conn.fetch(f"SELECT {_DRAFT_COLUMNS} FROM {self._s}.policy_drafts "
                                    "ORDER BY updated_at DESC, id DESC LIMIT $1", limit)
            return [_draft(r) for r in rows]

        return await self._run(work, write=False)

    async def save_draft(self, draft_id: int, files: Mapping[str, str], *, revision: int, by: str,
                         at: float) -> DraftInfo | None:
        async def work(conn: asyncpg.Connection) -> DraftInfo | None:
            row = await conn.fetchrow(
                f"UPDATE {self._s}.policy_drafts SET files = $3, file_count = $4, size = $5, revision = revision + 1, "
                "updated_by = $6, updated_at = $7, checked_version = NULL WHERE id = $1 AND revision = $2 "
                f"RETURNING {_DRAFT_COLUMNS}", draft_id, revision, _files(files), len(files), files_size(files),
                by, at)
            return _draft(row) if row is not None else None

        return await self._run(work, write=False)

    async def record_draft_check(self, draft_id: int, *, revision: int, version: str) -> DraftInfo | None:
        async def work(conn: asyncpg.Connection) -> DraftInfo | None:
            row = await conn.fetchrow(
                f"UPDATE {self._s}.policy_drafts SET checked_version = $3 WHERE id = $1 AND revision = $2 "
                f"RETURNING {_DRAFT_COLUMNS}", draft_id, revision, version)
            return _draft(row) if row is not None else None

        return await self._run(work, write=False)

    async def discard_draft(self, draft_id: int, *, revision: int) -> bool:
        async def work(conn: asyncpg.Connection) -> bool:
            row = await conn.fetchrow(f"DELETE FROM {self._s}.policy_drafts WHERE id = $1 AND revision = $2 "
                                      "RETURNING id", draft_id, revision)
            return row is not None

        return await self._run(work, write=False)
