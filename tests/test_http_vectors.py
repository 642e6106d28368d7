"""llhttp's request-parser cases, replayed byte for byte against the real gateway.

The cases live in the shared vectors (``llhttp/test/request/*.md``, see
``llhttp/SOURCE.txt``) and are read at test time. Each case is a raw request
and the log of parser callbacks llhttp produces for it; an ``error code=``
line means llhttp rejects the message.

The gateway's only upstream is a recording backend, and besides the usual
test routes it has public catch-all routes (``/``, ``/{a}``, ``/{a}/{b}``, ...
for every method llhttp knows), so any message the gateway accepts really is
forwarded. Then:

* a case llhttp rejects must be refused (4xx, or the connection closed), and
  nothing of it may reach the backend (only the complete messages that came
  before the error on a pipelined connection may);
* a case llhttp accepts may get any answer, but the gateway must not crash;
* a case that ends mid-message (``finish=2``) must never reach the backend as
  a complete request;
* after every case, a new connection still gets ``/healthz``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from harness import ROUTES, Stack, run_stack
from rawhttp import RecordingBackend, exchange, healthy, recording_backend

# Async tests share the module's event loop, where the one stack for the module runs.
module_loop = pytest.mark.asyncio(loop_scope="module")

# --------------------------------------------------------------------------
# Reading the vectors

_DEFAULT_VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
VECTORS = Path(os.environ.get("PORTCULLIS_VECTORS", str(_DEFAULT_VECTORS)))
REQUEST_DIR = VECTORS / "llhttp" / "test" / "request"

_META = re.compile(r"<!--\s*meta=(\{.*?\})\s*-->")
_HEADING = re.compile(r"^(#{2,6})\s+(.*?)\s*$")


# llhttp's "errors" 21-23 are pauses (HPE_PAUSED, HPE_PAUSED_UPGRADE, HPE_PAUSED_H2_UPGRADE):
# the parser hands the connection over (Upgrade, CONNECT, PRI), it does not reject the message.
_ERROR = re.compile(r" error code=(\d+) ")
_PAUSE_CODES = frozenset({21, 22, 23})


def _is_rejection(line: str) -> bool:
    m = _ERROR.search(line)
    return m is not None and int(m.group(1)) not in _PAUSE_CODES


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    line: int
    meta: dict[str, Any]
    raw: bytes
    log: tuple[str, ...]

    @property
    def expects_error(self) -> bool:
        return any(_is_rejection(line) for line in self.log)

    @property
    def complete_before_error(self) -> int:
        """Messages llhttp completed before its error (they may legitimately be forwarded)."""
        n = 0
        for line in self.log:
            if _is_rejection(line):
                break
            if line.endswith(" message complete"):
                n += 1
        return n

    @property
    def messages(self) -> int:
        return sum(1 for line in self.log if line.endswith(" message complete"))

    @property
    def unsafe_finish(self) -> bool:
        """llhttp_finish() reports the input ends inside a message."""
        return any(line.endswith("finish=2") for line in self.log)

    @property
    def is_head(self) -> bool:
        return self.raw.startswith(b"HEAD ")

    @property
    def is_finish(self) -> bool:
        return str(self.meta.get("type", "")).endswith("-finish")


def raw_input(block: str) -> bytes:
    """The wire bytes of an ```http block, as llhttp's test runner (test/md-test.ts) builds them."""
    text = block
    text = re.sub(r"\\(\r\n|\r|\n)", "", text)  # escaped newlines join lines
    text = re.sub(r"\r\n|\r|\n", "\r\n", text)  # every line end is CRLF
    text = text.replace("\\r", "\r").replace("\\n", "\n")
    text = text.replace("\\t", "\t").replace("\\f", "\f")
    text = re.sub(r"\\x([0-9a-fA-F]+)", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"\\([0-7]{1,3})", lambda m: chr(int(m.group(1), 8)), text)
    if "${" in text:
        raise ValueError("inline JavaScript in an http block is not supported")
    # Escaped bytes (and any char < 256) are one byte each; other literal text is UTF-8.
    return b"".join(bytes([ord(ch)]) if ord(ch) < 256 else ch.encode("utf-8") for ch in text)


_REQUEST_LINE_11 = re.compile(rb"[A-Z_-]+ [!-~]+ HTTP/1\.1\r\n")


def with_host(raw: bytes) -> bytes | None:
    """The message with ``Host:`` added after an HTTP/1.1 request line, if it has none.

    aiohttp refuses HTTP/1.1 requests without Host before anything else, so
    without this most cases would be rejected for that reason alone and never
    exercise the defect they were written for.
    """
    m = _REQUEST_LINE_11.match(raw)
    if m is None or re.search(rb"(?im)^host:", raw):
        return None
    return raw[: m.end()] + b"Host: vectors.test\r\n" + raw[m.end():]


def parse_md(path: Path) -> list[Case]:
    lines = path.read_text(encoding="utf-8").split("\n")
    headings: dict[int, str] = {}
    cases: list[Case] = []
    seen: dict[str, int] = {}
    i = 0
    meta: dict[str, Any] | None = None
    meta_line = 0
    http_block: str | None = None
    while i < len(lines):
        line = lines[i]
        h = _HEADING.match(line)
        m = _META.search(line)
        if h:
            level = len(h.group(1))
            headings = {k: v for k, v in headings.items() if k < level}
            headings[level] = h.group(2).replace("`", "")
        elif m:
            meta, meta_line, http_block = json.loads(m.group(1)), i + 1, None
        elif line.startswith("```") and line[3:].strip() in ("http", "log"):
            lang = line[3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            body = "\n".join(lines[i + 1 : j])  # no newline after the last line
            i = j
            if lang == "http":
                http_block = body
            elif meta is not None and http_block is not None:
                name = " > ".join(headings[k] for k in sorted(headings)) or f"line {meta_line}"
                cid = f"{path.stem}: {name}"
                seen[cid] = seen.get(cid, 0) + 1
                if seen[cid] > 1:
                    cid += f" #{seen[cid]}"
                cases.append(Case(cid, path.name, meta_line, meta, raw_input(http_block),
                                  tuple(x for x in body.split("\n") if x.strip())))
                meta, http_block = None, None
        i += 1
    return cases


def load_cases() -> list[Any]:
    if not REQUEST_DIR.is_dir():
        return [pytest.param(None, id="vectors-missing", marks=pytest.mark.skip(
            reason=f"llhttp vectors not found at {REQUEST_DIR}: check out the shared vectors "
                   "next to the repository or set PORTCULLIS_VECTORS"))]
    out: list[Any] = []
    for md in sorted(REQUEST_DIR.glob("*.md")):
        for c in parse_md(md):
            out.append(pytest.param(c, id=c.id))
            hosted = with_host(c.raw)
            if hosted is not None:
                alt = replace(c, id=c.id + " [+Host]", raw=hosted)
                out.append(pytest.param(alt, id=alt.id))
    return out


CASES = load_cases()

# --------------------------------------------------------------------------
# The stack: recording backend + gateway with catch-all public routes

LLHTTP_METHODS = (
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE PRI DESCRIBE ANNOUNCE "
    "SETUP PLAY PAUSE TEARDOWN GET_PARAMETER SET_PARAMETER REDIRECT RECORD FLUSH QUERY"
).split()


def catch_all_routes(depth: int = 8) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = [
        {"name": "any_root", "methods": LLHTTP_METHODS, "path": "/", "upstream": "trading",
         "tier": "public"}]
    for n in range(1, depth + 1):
        path = "".join(f"/{{p{k}}}" for k in range(n))
        routes.append({"name": f"any_{n}", "methods": LLHTTP_METHODS, "path": path,
                       "upstream": "trading", "tier": "public"})
    return routes


@dataclass
class Env:
    stack: Stack
    backend: RecordingBackend

    @property
    def port(self) -> int:
        assert self.stack.gateway.public_port is not None
        return self.stack.gateway.public_port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("vectors")
    async with recording_backend() as backend, run_stack(
        tmp, backend_url=backend.url, routes=[*ROUTES, *catch_all_routes()],
    ) as stack:
        yield Env(stack, backend)


# --------------------------------------------------------------------------
# Tests


def test_vectors_found() -> None:
    """The vectors parse into a sensible number of cases, errors among them."""
    cases = [p.values[0] for p in CASES
             if p.values[0] is not None and not p.values[0].id.endswith("[+Host]")]
    if not cases:
        pytest.skip(f"llhttp vectors not found at {REQUEST_DIR}")
    assert len(cases) >= 100
    assert sum(c.expects_error for c in cases) >= 30
    assert len({c.id for c in cases}) == len(cases)


@module_loop
async def test_catch_all_forwards(env: Env) -> None:
    """Control: a plain message on a catch-all route does reach the backend."""
    ex = await exchange(env.port, b"PUT /some/where HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 3\r\n\r\nabc")
    assert ex.statuses == [200], ex.describe()
    got = env.backend.seen_by(ex)
    assert [(r.method, r.path, r.body, r.complete) for r in got] == [
        ("PUT", "/some/where", b"abc", True)]


@module_loop
@pytest.mark.parametrize("case", CASES)
async def test_llhttp_request_case(case: Case, env: Env) -> None:
    before = len(env.backend.records)
    if case.expects_error:
        # Generous: a refusal comes at once, and a busy CI machine must not turn it into silence.
        ex = await exchange(env.port, case.raw, max_responses=case.complete_before_error + 1,
                            timeout=6.0, half_close=case.is_finish, head=case.is_head)
    else:
        # A message llhttp never completes (body still to come) gets no answer: wait briefly.
        ex = await exchange(env.port, case.raw, max_responses=max(case.messages, 1),
                            timeout=1.5 if case.messages else 0.5, idle=1.0,
                            half_close=case.is_finish, head=case.is_head)
    assert await healthy(env.port), "the gateway stopped serving after this case"
    # The connection is closed now, so any forward it started is over too.
    forwarded = env.backend.from_port(ex.local_port, since=before)
    complete = [(r.method, r.path) for r in forwarded if r.complete]
    if case.expects_error:
        assert ex.refused_somewhere(), f"malformed request was not refused: {ex.describe()}"
        if case.complete_before_error == 0:
            assert ex.rejected(), f"malformed request was answered: {ex.describe()}"
        assert len(forwarded) <= case.complete_before_error, (
            f"the backend received {[(r.method, r.path) for r in forwarded]} ({ex.describe()})")
    else:
        assert not any(s >= 500 and s not in (502, 503, 504) for s in ex.statuses), ex.describe()
        # Never more complete requests upstream than complete messages on the wire: a
        # message cut off (by EOF or by the end of the input) is never forwarded whole.
        assert len(complete) <= case.messages, f"forwarded {complete}, {ex.describe()}"


@module_loop
async def test_still_serving_after_all(env: Env) -> None:
    assert await healthy(env.port)
    ex = await exchange(env.port, b"GET /__debug/echo/public HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ex.statuses == [200], ex.describe()
