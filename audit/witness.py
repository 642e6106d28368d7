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
* :class:`HttpWitness`: a second party's HTTPS endpoint (audit/witness_server.py is
  a reference server it can run), which checks each statement's signature and
  keeps it in an append-only file of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

__all__ = ["FileWitness", "HttpWitness", "PostgresWitness", "Witness", "WitnessError", "append_synced",
           "check_witness_url", "is_loopback"]


def append_synced(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created with mode 0600) and fsync it. A failed append is cut back
    off, so no torn line is left for the next one to follow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


class WitnessError(Exception):
    """The witness could not take or give checkpoints (the sink retries; verify reports it)."""


class Witness(Protocol):
    async def push(self, statement: Mapping[str, Any]) -> None:
        """Keep ``statement`` durably; WitnessError when it could not."""
        ...

    async def statements(self) -> list[dict[str, Any]]:
        """Every statement kept, oldest first."""
        ...

    async def close(self) -> None:
        """Let go of what pushes held open (the sink closing with it); ``statements`` still works."""
        ...


class FileWitness:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileWitness({str(self.path)!r})"

    async def push(self, statement: Mapping[str, Any]) -> None:
        try:
            await asyncio.to_thread(append_synced, self.path,
                                    orjson.dumps(statement, option=orjson.OPT_SORT_KEYS) + b"\n")
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

    async def close(self) -> None:
        """Nothing is held between pushes."""


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

    async def close(self) -> None:
        """Nothing is held between pushes (a connection each)."""


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


def check_witness_url(url: str) -> str:
    """``url`` without a trailing slash; ValueError unless it is ``https://``, or ``http://`` to a loopback
    host (a witness run beside the gateway for tests): a checkpoint in clear over a network could be
    dropped or replayed by anyone on the path, and the bearer token read. Credentials, a query or a
    fragment are refused too: the token goes in ``witness_token``, never in a URL that ends up in logs."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"the witness URL must be https://host[:port][/path] (got {url!r})")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError("the witness URL must not carry credentials, a query or a fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"the witness URL must be https:// unless its host is loopback (got {url!r})")
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: where plain HTTP never leaves the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


HTTP_PAGE = 1000
"""Statements a ``GET /statements`` page holds at most (audit/witness_server.py serves the same)."""
_CODE = re.compile(r"[a-z_]{1,40}")


class HttpWitness:
    """A second party's HTTPS endpoint: ``POST {url}/statements`` keeps a statement (the server
    drops a repeat of one it holds, so a retry after a lost answer is harmless), ``GET
    {url}/statements?after=N`` gives them back a page at a time.

    TLS is verified; ``ca_file`` (the second party's CA) replaces the system's CAs rather than adding
    to them, so only that party's certificates are trusted. The bearer ``token`` appears in no message
    or repr.

    Pushes share one session (the sink pushes a checkpoint at a time, so keep-alive spares a handshake
    each), created on first use on the running loop; the sink's close closes it. Reading the
    statements (verify, once) opens a session of its own, so it works from any loop.
    """

    def __init__(self, url: str, *, ca_file: Path | None = None, token: str | None = None,
                 timeout: float = 5.0) -> None:
        self.url = check_witness_url(url)
        try:
            self._ssl = ssl.create_default_context(cafile=ca_file)
        except OSError as exc:  # ssl.SSLError too
            raise ValueError(f"witness CA file {str(ca_file)!r} cannot be loaded: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpWitness({self.url!r})"

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl), timeout=self._timeout,
                                     headers=self._headers)

    def _error(self, what: str) -> WitnessError:
        message = f"witness {self.url}: {what}"
        if self._token:  # belt and braces: nothing above quotes it, nor may anything later
            message = message.replace(self._token, "[token]")
        return WitnessError(message)

    async def _answer(self, response: aiohttp.ClientResponse) -> Any:
        """The JSON body of a 2xx answer; WitnessError with the status and stable error code otherwise."""
        try:
            body = await response.json(content_type=None)
        except (ValueError, aiohttp.ContentTypeError):
            body = None
        if not 200 <= response.status < 300:
            code = body.get("error") if isinstance(body, dict) else None
            said = f" {code}" if isinstance(code, str) and _CODE.fullmatch(code) else ""
            raise self._error(f"HTTP {response.status}{said}")
        if body is None:
            raise self._error("the answer is not JSON")
        return body

    async def push(self, statement: Mapping[str, Any]) -> None:
        if self._closed:
            raise self._error("closed")
        if self._session is None or self._session.closed:  # no await before it is set: concurrent pushes share it
            self._session = self._new_session()
        try:
            async with self._session.post(self.url + "/statements", data=orjson.dumps(statement),
                                          headers={"Content-Type": "application/json"},
                                          allow_redirects=False) as response:
                await self._answer(response)
        except (aiohttp.ClientError, TimeoutError) as exc:  # connection, TLS, timeout: retried by the sink
            raise self._error(_why(exc)) from None

    async def statements(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            async with self._new_session() as session:
                while True:
                    async with session.get(self.url + "/statements",
                                           params={"after": str(len(out)), "limit": str(HTTP_PAGE)},
                                           allow_redirects=False) as response:
                        page = await self._answer(response)
                    got = page.get("statements") if isinstance(page, dict) else None
                    if not isinstance(got, list) or not all(isinstance(s, dict) for s in got):
                        raise self._error("the answer is not a page of statements")
                    out.extend(got)
                    if page.get("next") is None or not got:
                        return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._error(_why(exc)) from None

    async def close(self) -> None:
        """Close the pushes' session; a later push fails (the sink that used it is closed first)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _why(exc: BaseException) -> str:
    """A short reason that quotes no header (aiohttp's own messages name URLs and TLS errors at most)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.strerror or type(exc).__name__})"
    return type(exc).__name__
