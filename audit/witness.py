"""Witnesses: where checkpoints go besides the audit store, so the store alone cannot be rewritten.

A witness keeps every signed checkpoint statement (audit/chain.py) it is given,
append-only. ``portcullis audit verify`` checks the store against it: a chain
the witness saw up to record N must still reach record N with the same hash.
The interface is two calls, so a second PostgreSQL database, a file on other
storage, or a second party's HTTPS endpoint can play the part.

* :class:`FileWitness`: one JSON line per statement, fsynced, in a file that
  belongs on other storage than the audit directory (another disk, a mount
  of another machine, WORM storage).
* :class:`PostgresWitness`: a table in a second PostgreSQL database (another
  server, another owner than the trail's), append-only by trigger.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = ["FileWitness", "PostgresWitness", "Witness", "WitnessError"]


class WitnessError(Exception):
    """The witness could not take or give checkpoints (the sink retries; verify reports it)."""


class Witness(Protocol):
    async def push(self, statement: Mapping[str, Any]) -> None:
        """Keep ``statement`` durably; WitnessError when it could not."""
        ...

    async def statements(self) -> list[dict[str, Any]]:
        """Every statement kept, oldest first."""
        ...


class FileWitness:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileWitness({str(self.path)!r})"

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def push(self, statement: Mapping[str, Any]) -> None:
        try:
            await asyncio.to_thread(self._append, orjson.dumps(statement, option=orjson.OPT_SORT_KEYS) + b"\n")
        except OSError as exc:
            raise WitnessError(f"witness {str(self.path)!r}: {exc.strerror}") from None

    def read(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise WitnessError(f"witness {str(self.path)!r}: {exc.strerror}") from None
        out = []
        for line in data.splitlines():
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line: the push it belonged to was not acknowledged
            if isinstance(doc, dict):
                out.append(doc)
        return out

    async def statements(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.read)


class PostgresWitness:
    """Statements in a table of another PostgreSQL database (or at least another schema and role than the
    trail's own): ``audit_witness(id bigserial, chain, seq, statement jsonb)``, append-only by trigger.

    A separate connection per push (checkpoints are a few a second at most), so a witness that is down
    costs the gateway nothing but retries (audit/sink.py)."""

    def __init__(self, dsn: str, schema: str = "portcullis_witness", *, timeout: float = 5.0) -> None:
        if not _IDENT.fullmatch(schema):
            raise ValueError(f"schema must be a plain SQL identifier (got {schema!r})")
        self._dsn = dsn
        self._s = f'"{schema}"'
        self._timeout = timeout
        self._ready = False

    def __repr__(self) -> str:
        return f"PostgresWitness(schema={self._s})"

    async def _connect(self) -> Any:
        import asyncpg

        conn = await asyncpg.connect(self._dsn, timeout=self._timeout, command_timeout=self._timeout)
        if not self._ready:
            await conn.execute(_WITNESS_DDL.format(s=self._s))
            self._ready = True
        return conn

    async def push(self, statement: Mapping[str, Any]) -> None:
        try:
            conn = await self._connect()
            try:
                await conn.execute(f"INSERT INTO {self._s}.audit_witness (chain, seq, statement) "
                                   "VALUES ($1, $2, $3::jsonb)", str(statement.get("chain")),
                                   int(statement.get("seq", -1)), orjson.dumps(statement).decode())
            finally:
                await conn.close()
        except Exception as exc:  # connection, timeout, server: retried by the sink
            raise WitnessError(f"witness database: {type(exc).__name__}") from None

    async def statements(self) -> list[dict[str, Any]]:
        try:
            conn = await self._connect()
            try:
                rows = await conn.fetch(f"SELECT statement::text AS s FROM {self._s}.audit_witness ORDER BY id")
            finally:
                await conn.close()
        except Exception as exc:
            raise WitnessError(f"witness database: {type(exc).__name__}") from None
        return [orjson.loads(r["s"]) for r in rows]


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_WITNESS_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.audit_witness (
    id bigserial PRIMARY KEY, chain text NOT NULL, seq bigint NOT NULL, statement jsonb NOT NULL);
CREATE OR REPLACE FUNCTION {s}.witness_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the witness is append-only'; END $$;
DROP TRIGGER IF EXISTS audit_witness_append_only ON {s}.audit_witness;
CREATE TRIGGER audit_witness_append_only BEFORE UPDATE OR DELETE ON {s}.audit_witness
    FOR EACH ROW EXECUTE FUNCTION {s}.witness_append_only();
"""
