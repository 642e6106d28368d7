"""A tiny raw-socket HTTP/1.1 client and a recording upstream, for hostile-input tests.

The client sends bytes exactly as given (no normalisation, no framing of its
own) and reads back whatever the server answers: zero or more responses, then
either a closed connection or silence until a timeout. Nothing here ever
raises on a misbehaving server; the result says what happened.

``RecordingBackend`` is an upstream that answers 200 to everything and records
each request it receives, with the gateway client port taken from the
``X-Portcullis-Terminal`` header, so a test can ask "did anything I sent reach
the backend?" even when other tests share it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# --------------------------------------------------------------------------
# Client


@dataclass
class RawResponse:
    """One parsed response."""

    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_json(self) -> bool:
        return (self.header("Content-Type") or "").split(";")[0].strip() == "application/json"


@dataclass
class Exchange:
    """What came back on one connection."""

    responses: list[RawResponse] = field(default_factory=list)
    closed: bool = False
    """The server closed (or reset) the connection."""
    timed_out: bool = False
    """We stopped waiting while the connection was still open and silent."""
    garbage: bytes = b""
    """Bytes received that did not form a complete response."""
    local_port: int = 0
    opened_at: float = 0.0
    """When its connection was opened (monotonic): a forward recorded before belongs to another one."""

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    @property
    def first(self) -> RawResponse:
        assert self.responses, f"no response (closed={self.closed}, timed_out={self.timed_out})"
        return self.responses[0]

    def rejected(self) -> bool:
        """Refused: the first response is a 4xx, or the connection closed without a response."""
        if self.responses:
            return 400 <= self.responses[0].status < 500
        return self.closed

    def refused_somewhere(self) -> bool:
        """Some response is a 4xx, or the connection was closed by the server."""
        return self.closed or any(400 <= s < 500 for s in self.statuses)

    def describe(self) -> str:
        parts = [f"{r.status} {r.body[:200]!r}" for r in self.responses]
        return (f"responses={parts} closed={self.closed} timed_out={self.timed_out} "
                f"garbage={self.garbage[:120]!r}")


class _Closed(Exception):
    pass


class RawConnection:
    """One TCP connection driven byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.local_port: int = writer.get_extra_info("sockname")[1]
        self.opened_at = time.monotonic()
        self.closed = False
        self._buf = b""

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> RawConnection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=4 * 1024 * 1024), timeout)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Write bytes; False if the server has already gone away."""
        try:
            self.writer.write(data)
            await self.writer.drain()
            return True
        except (ConnectionError, OSError):
            self.closed = True
            return False

    def half_close(self) -> None:
        """Send FIN (no more data from us) but keep reading."""
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except (ConnectionError, OSError):
            self.closed = True

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (TimeoutError, ConnectionError, OSError):
            pass

    async def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
        except TimeoutError:  # a subclass of OSError: not a closed connection
            raise
        except (ConnectionError, OSError):
            chunk = b""
        if not chunk:
            self.closed = True
            raise _Closed
        self._buf += chunk

    async def _until(self, sep: bytes, deadline: float) -> bytes:
        while True:
            i = self._buf.find(sep)
            if i >= 0:
                out, self._buf = self._buf[: i + len(sep)], self._buf[i + len(sep):]
                return out
            await self._fill(deadline)

    async def _exactly(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            await self._fill(deadline)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    async def read_response(self, timeout: float = 2.0, *, head: bool = False) -> RawResponse | None:
        """The next response, or None if the connection closed first.

        Raises TimeoutError when nothing complete arrives in time.
        """
        deadline = time.monotonic() + timeout
        try:
            head_bytes = await self._until(b"\r\n\r\n", deadline)
            lines = head_bytes[:-4].decode("latin-1").split("\r\n")
            m = re.fullmatch(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?", lines[0])
            if m is None:
                raise ValueError(f"bad status line {lines[0]!r}")
            headers: list[tuple[str, str]] = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
            status = int(m.group(2))
            resp = RawResponse(status, m.group(3) or "", m.group(1), headers, b"")
            if head or status < 200 or status in (204, 304):
                return resp
            te = (resp.header("Transfer-Encoding") or "").lower()
            cl = resp.header("Content-Length")
            if "chunked" in te:
                body = b""
                while True:
                    size_line = await self._until(b"\r\n", deadline)
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while (await self._until(b"\r\n", deadline)) != b"\r\n":
                            pass
                        break
                    body += await self._exactly(size, deadline)
                    await self._exactly(2, deadline)
                resp.body = body
            elif cl is not None:
                resp.body = await self._exactly(int(cl), deadline)
            else:
                try:
                    while True:
                        await self._fill(deadline)
                except _Closed:
                    pass
                resp.body, self._buf = self._buf, b""
            return resp
        except _Closed:
            return None

    async def read_all(self, *, max_responses: int = 1, timeout: float = 2.0,
                       idle: float | None = None, head: bool = False) -> Exchange:
        """Read up to ``max_responses`` responses, stopping early on close or timeout.

        ``timeout`` bounds the whole read; ``idle`` (if given) bounds the wait for
        each next response after the first.
        """
        ex = Exchange(local_port=self.local_port, opened_at=self.opened_at)
        deadline = time.monotonic() + timeout
        while len(ex.responses) < max_responses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                ex.timed_out = True
                break
            wait = min(remaining, idle) if (idle is not None and ex.responses) else remaining
            try:
                resp = await self.read_response(wait, head=head)
            except TimeoutError:
                ex.timed_out = True
                break
            except ValueError:
                ex.garbage = self._buf
                break
            if resp is None:
                break
            ex.responses.append(resp)
        ex.closed = self.closed
        if not ex.garbage:
            ex.garbage = self._buf
        return ex

    async def wait_closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True if the server closes the connection within ``timeout`` (data is discarded)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                await self._fill(deadline)
        except _Closed:
            return True
        except TimeoutError:
            return False


async def exchange(port: int, data: bytes | Sequence[bytes], *, max_responses: int = 1,
                   timeout: float = 2.0, idle: float | None = None, half_close: bool = False,
                   pause: float = 0.0, head: bool = False, host: str = "127.0.0.1") -> Exchange:
    """Open a connection, send ``data`` (pieces separated by ``pause`` seconds), read back."""
    conn = await RawConnection.open(port, host)
    try:
        pieces = [data] if isinstance(data, bytes) else list(data)
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            if not await conn.send(piece):
                break
        if half_close:
            conn.half_close()
        return await conn.read_all(max_responses=max_responses, timeout=timeout, idle=idle,
                                   head=head)
    finally:
        await conn.close()


def request(method: str, target: str, headers: Sequence[tuple[str, str]] = (),
            body: bytes = b"", *, version: str = "HTTP/1.1", host: str | None = "gw.test",
            content_length: bool | None = None) -> bytes:
    """Build request bytes from parts (no checks: garbage in, garbage out).

    ``content_length`` None adds Content-Length when there is a body.
    """
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if content_length or (content_length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------
# Recording upstream

_IPORT = re.compile(r"(?:^|;)IPORT=(\d*)(?:;|$)")


@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]
    client_port: int | None
    """The gateway's client's port, from X-Portcullis-Terminal."""
    body: bytes = b""
    complete: bool = False
    """The whole body arrived; False while reading or when the body was cut off."""
    error: str | None = None
    at: float = field(default_factory=time.monotonic)
    """When it was recorded (this process's monotonic clock)."""


class RecordingBackend:
    """An upstream that answers 200 JSON to every request and records it."""

    def __init__(self) -> None:
        self.records: list[Recorded] = []
        self.url = ""
        self._runner: web.ServerRunner | None = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        terminal = request.headers.get("X-Portcullis-Terminal", "")
        m = _IPORT.search(terminal)
        rec = Recorded(request.method, request.raw_path, list(request.headers.items()),
                       int(m.group(1)) if m and m.group(1) else None)
        self.records.append(rec)
        try:
            rec.body = await request.read()
            rec.complete = True
        except Exception as exc:  # the gateway cut the body off: record, never raise
            rec.error = repr(exc)
            raise
        return web.json_response({"recorded": True, "method": rec.method, "path": rec.path,
                                  "body_len": len(rec.body)})

    def from_port(self, *ports: int, since: int = 0) -> list[Recorded]:
        """Requests forwarded on behalf of clients using these local ports, recorded at index
        ``since`` or later (a test passes ``len(records)`` from before its exchange: the OS reuses
        ephemeral ports, and a late forward of an earlier case must not count for this one)."""
        wanted = set(ports)
        return [r for r in self.records[since:] if r.client_port in wanted]

    def seen_by(self, conn: Exchange | RawConnection) -> list[Recorded]:
        """Requests forwarded on behalf of this connection: its client port, recorded since it opened (the OS
        reuses ephemeral ports, at once when the server closed first)."""
        return [r for r in self.from_port(conn.local_port) if r.at >= conn.opened_at]

    async def start(self) -> str:
        self._runner = web.ServerRunner(web.Server(self._handle, access_log=None))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def recording_backend() -> AsyncIterator[RecordingBackend]:
    backend = RecordingBackend()
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


async def healthy(port: int, timeout: float = 5.0) -> bool:
    """A fresh connection gets 200 from /healthz."""
    ex = await exchange(port, request("GET", "/healthz"), timeout=timeout)
    return ex.statuses[:1] == [200]
