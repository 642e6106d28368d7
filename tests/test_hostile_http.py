"""Hostile HTTP against the real gateway, over raw sockets.

The gateway's only upstream is a recording backend, so "never forwarded" is
checked, not assumed: every request the gateway forwards carries the client's
port in X-Portcullis-Terminal, and the backend records it. Each test ends by
checking that a fresh connection is still served (and forwarded), and the last
test checks the gateway once more after everything else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from harness import Stack, run_stack
from rawhttp import (
    Exchange,
    RawConnection,
    RawResponse,
    RecordingBackend,
    exchange,
    healthy,
    recording_backend,
    request,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ORDERS = "/api/accounts/A1/orders"
ORDER_JSON = b'{"symbol":"600519.SH","side":"buy","qty":100}'


@dataclass
class Env:
    stack: Stack
    backend: RecordingBackend
    token: str

    @property
    def port(self) -> int:
        assert self.stack.gateway.public_port is not None
        return self.stack.gateway.public_port

    @property
    def auth(self) -> tuple[str, str]:
        return ("Authorization", f"Bearer {self.token}")

    def forwarded(self, ex: Exchange | RawConnection) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.backend.seen_by(ex)]

    async def assert_serving(self) -> None:
        """A fresh connection gets /healthz, and a public route still reaches the backend."""
        assert await healthy(self.port), "the gateway no longer answers /healthz"
        ex = await exchange(self.port, request("GET", "/__debug/echo/public"))
        assert ex.statuses == [200], f"forwarding broke: {ex.describe()}"
        assert self.forwarded(ex) == [("GET", "/__debug/echo/public")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("hostile")
    # A short body deadline, so the tests that stall a body finish quickly.
    async with recording_backend() as backend, run_stack(tmp, backend_url=backend.url,
                                                         gateway={"body_timeout": 1.0}) as stack:
        yield Env(stack, backend, stack.token())


def assert_json_error(resp: RawResponse, status: int, code: str) -> dict[str, object]:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.is_json, resp.headers
    body = resp.json()
    assert body["error"] == code, body
    assert isinstance(body.get("request_id"), str) and body["request_id"], body
    assert resp.header("X-Request-Id") == body["request_id"]
    assert isinstance(body.get("message"), str)
    return body  # type: ignore[no-any-return]


def assert_refused(ex: Exchange) -> None:
    """A 4xx first (and nothing else 2xx), or a closed connection without any answer."""
    assert ex.rejected(), f"not refused: {ex.describe()}"
    assert not any(200 <= s < 300 for s in ex.statuses), ex.describe()


def post(env: Env, path: str, framing: str, body: bytes,
         content_type: str = "application/json") -> bytes:
    """A POST with a valid token whose framing headers (CL/TE...) are given verbatim."""
    head = (f"POST {path} HTTP/1.1\r\nHost: gw.test\r\n{env.auth[0]}: {env.auth[1]}\r\n"
            f"Content-Type: {content_type}\r\n{framing}\r\n\r\n")
    return head.encode("latin-1") + body


# --------------------------------------------------------------------------
# Controls: the shapes below would be forwarded if they were not malformed


@pytest.mark.parametrize("path", [ORDERS, "/__debug/echo"])
async def test_control_well_formed_post_is_forwarded(env: Env, path: str) -> None:
    for framing, body in [(f"Content-Length: {len(ORDER_JSON)}", ORDER_JSON),
                          ("Transfer-Encoding: chunked",
                           b"%x\r\n" % len(ORDER_JSON) + ORDER_JSON + b"\r\n0\r\n\r\n")]:
        ex = await exchange(env.port, post(env, path, framing, body))
        assert ex.statuses == [200], ex.describe()
        got = env.backend.seen_by(ex)
        assert [(r.method, r.path, r.body, r.complete) for r in got] == [
            ("POST", path, ORDER_JSON, True)]
    await env.assert_serving()


# --------------------------------------------------------------------------
# Request smuggling shapes

SMUGGLING: dict[str, tuple[str, bytes]] = {
    # CL.TE: a front end using CL forwards "0\r\n\r\nG"; a back end using TE sees "G..." next.
    "cl_te": ("Content-Length: 6\r\nTransfer-Encoding: chunked", b"0\r\n\r\nG"),
    # TE.CL: the chunk hides a whole second request from a CL-reading hop.
    "te_cl": ("Transfer-Encoding: chunked\r\nContent-Length: 4",
              b"5c\r\nGPOST /api/accounts/A1/transfers HTTP/1.1\r\nContent-Type: "
              b"application/json\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n"),
    "te_cl_reversed_order": ("Content-Length: 4\r\nTransfer-Encoding: chunked",
                             b"2\r\n{}\r\n0\r\n\r\n"),
    "cl_duplicate_different": ("Content-Length: 2\r\nContent-Length: 45", ORDER_JSON),
    "cl_duplicate_equal": ("Content-Length: 45\r\nContent-Length: 45", ORDER_JSON),
    "cl_list": ("Content-Length: 45, 45", ORDER_JSON),
    "cl_plus_sign": ("Content-Length: +45", ORDER_JSON),
    "cl_negative": ("Content-Length: -1", ORDER_JSON),
    "cl_hex": ("Content-Length: 0x2d", ORDER_JSON),
    "cl_inner_space": ("Content-Length: 4 5", ORDER_JSON),
    "cl_overflow": ("Content-Length: 100000000000000000000000045", ORDER_JSON),
    "te_obs_fold": ("Transfer-Encoding:\r\n chunked", b"2\r\n{}\r\n0\r\n\r\n"),
    "te_obs_fold_after_value": ("Transfer-Encoding: identity\r\n chunked",
                                b"2\r\n{}\r\n0\r\n\r\n"),
    "te_chunked_identity": ("Transfer-Encoding: chunked, identity", b"2\r\n{}\r\n0\r\n\r\n"),
    "te_two_headers_chunked_first": ("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
                                     b"2\r\n{}\r\n0\r\n\r\n"),
    "te_unknown_coding": ("Transfer-Encoding: xchunked", b"2\r\n{}\r\n0\r\n\r\n"),
    "te_identity_only": ("Transfer-Encoding: identity", ORDER_JSON),
    "te_vertical_tab": ("Transfer-Encoding: \x0bchunked", b"2\r\n{}\r\n0\r\n\r\n"),
    "te_space_before_colon": ("Transfer-Encoding : chunked", b"2\r\n{}\r\n0\r\n\r\n"),
    "chunk_size_negative": ("Transfer-Encoding: chunked", b"-2\r\n{}\r\n0\r\n\r\n"),
    "chunk_size_0x_prefix": ("Transfer-Encoding: chunked", b"0x2\r\n{}\r\n0\r\n\r\n"),
    "chunk_size_not_hex": ("Transfer-Encoding: chunked", b"g\r\n{}\r\n0\r\n\r\n"),
    "chunk_size_overflow": ("Transfer-Encoding: chunked",
                            b"fffffffffffffffffffff2\r\n{}\r\n0\r\n\r\n"),
    "chunk_size_space_inside": ("Transfer-Encoding: chunked", b"1 0\r\n{}\r\n0\r\n\r\n"),
    "chunk_size_underscore": ("Transfer-Encoding: chunked", b"0_2\r\n{}\r\n0\r\n\r\n"),
    "chunk_data_longer_than_size": ("Transfer-Encoding: chunked", b"2\r\n{}XX\r\n0\r\n\r\n"),
    "chunk_bare_lf": ("Transfer-Encoding: chunked", b"2\n{}\n0\n\n"),
}


@pytest.mark.parametrize("path", [ORDERS, "/__debug/echo"], ids=["trade", "read"])
@pytest.mark.parametrize("shape", list(SMUGGLING))
async def test_smuggling_shape_refused_and_never_forwarded(env: Env, shape: str,
                                                           path: str) -> None:
    framing, body = SMUGGLING[shape]
    # Followed by a second, well-formed request on the same connection: if the
    # framing were misread, it (or the smuggled prefix) would be answered too.
    follow = request("GET", "/__debug/echo/public")
    ex = await exchange(env.port, post(env, path, framing, body) + follow,
                        max_responses=2, timeout=3.0, idle=0.5)
    assert_refused(ex)
    assert env.forwarded(ex) == [], ex.describe()
    await env.assert_serving()


# aiohttp 3.14.5's C parser never delivers a chunked-body error that arrives after the
# handler was dispatched; the gateway's body deadline (gateway.body_timeout) cuts it off.
@pytest.mark.parametrize("path", [ORDERS, "/__debug/echo"], ids=["trade", "read"])
async def test_bad_chunk_size_after_headers_is_refused(env: Env, path: str) -> None:
    head = post(env, path, "Transfer-Encoding: chunked", b"")
    conn = await RawConnection.open(env.port)
    try:
        await conn.send(head)
        await asyncio.sleep(0.3)  # headers parsed and dispatched on their own
        await conn.send(b"2\r\n{}\r\n-1\r\n")  # then a bad chunk size
        ex = await conn.read_all(timeout=2.0)
    finally:
        await conn.close()
    await env.assert_serving()
    complete = [r for r in env.backend.seen_by(conn) if r.complete]
    assert complete == []
    assert_refused(ex)


# --------------------------------------------------------------------------
# Header injection and oversized headers

INJECTIONS = {
    "cr_in_value": b"X-Note: a\rX-Injected: 1",
    "bare_lf_in_value": b"X-Note: a\nX-Injected: 1",
    "nul_in_value": b"X-Note: a\x00b",
    "nul_in_name": b"X-No\x00te: a",
    "cr_in_name": b"X-No\rte: a",
    "del_in_value": b"X-Note: a\x7fb",
    "space_in_name": b"X Note: a",
    "colonless_line": b"X-Note",
    "leading_whitespace_header": b" X-Note: a",
}


@pytest.mark.parametrize("name", list(INJECTIONS))
async def test_header_injection_refused(env: Env, name: str) -> None:
    raw = (b"GET /__debug/echo/public HTTP/1.1\r\nHost: gw.test\r\n" + INJECTIONS[name]
           + b"\r\n\r\n")
    ex = await exchange(env.port, raw, timeout=3.0)
    assert_refused(ex)
    assert env.forwarded(ex) == []
    await env.assert_serving()


async def test_encoded_crlf_in_query_does_not_become_a_header(env: Env) -> None:
    ex = await exchange(env.port, request("GET", "/__debug/echo/public?a=%0d%0aX-Injected:%201"))
    assert ex.statuses == [200], ex.describe()
    [rec] = env.backend.seen_by(ex)
    assert "x-injected" not in {k.lower() for k, _ in rec.headers}
    assert "\r" not in rec.path and "\n" not in rec.path
    await env.assert_serving()


@pytest.mark.parametrize("where", ["value", "name", "many", "request_line"])
async def test_oversized_headers_refused(env: Env, where: str) -> None:
    big = "a" * (100 * 1024)
    if where == "value":
        raw = request("GET", "/__debug/echo/public", [("X-Big", big)])
    elif where == "name":
        raw = request("GET", "/__debug/echo/public", [("X-" + big, "1")])
    elif where == "many":
        raw = request("GET", "/__debug/echo/public", [(f"X-H{i}", "v" * 100) for i in range(1000)])
    else:
        raw = request("GET", "/__debug/echo/public?q=" + big)
    ex = await exchange(env.port, raw, timeout=3.0)
    assert_refused(ex)
    assert env.forwarded(ex) == []
    await env.assert_serving()


# --------------------------------------------------------------------------
# Request targets


@pytest.mark.parametrize("target", [
    "http://evil/",
    "http://evil/__debug/echo/public",
    "https://gw.test/__debug/echo/public",
    "//evil/__debug/echo/public",
])
async def test_absolute_form_target_is_bad_path(env: Env, target: str) -> None:
    ex = await exchange(env.port, request("GET", target))
    if target.startswith("//"):
        # A network-path reference is an origin-form path whose empty first segment
        # collapses: it names /evil/..., never the authority "evil".
        assert_json_error(ex.first, 404, "route_not_found")
        assert env.forwarded(ex) == []
    else:
        assert_json_error(ex.first, 400, "bad_path")
        assert env.forwarded(ex) == []
    await env.assert_serving()


@pytest.mark.parametrize("target", [
    "/api/accounts/A1%2fpositions",
    "/api/accounts/A1%2Fpositions",
    "/api/accounts/A1/%2e%2e/B9/positions",
    "/api/accounts/A1/%2E%2E/B9/positions",
    "/api/accounts/A1/.%2e/B9/positions",
    "/api/accounts/A1%5cpositions",
    "/api/accounts/A1%5Cpositions",
    "/api/accounts/A1\\positions",
    "/api/quotes/600519.SH%00",
    "/api/quotes/600519.SH%00.json",
    "/api/quotes/%0d%0aX",
    "/api/quotes/%zz",
    "/api/quotes/%4",
    "/../api/quotes/600519.SH",
    "/__debug/echo/public%2f..%2f..",
    "/__debug/echo/public#frag",
])
async def test_ambiguous_target_is_bad_path(env: Env, target: str) -> None:
    ex = await exchange(env.port, request("GET", target, [env.auth]))
    assert_json_error(ex.first, 400, "bad_path")
    assert env.forwarded(ex) == []
    await env.assert_serving()


@pytest.mark.parametrize("raw_target", [b"/api/quotes/X\x00Y", b"/api/quotes/X\x7fY",
                                        b"/api/quotes/X\tY", b"/api/quotes/\xceX"])
async def test_raw_control_bytes_in_target_refused(env: Env, raw_target: bytes) -> None:
    raw = b"GET " + raw_target + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    ex = await exchange(env.port, raw)
    assert_refused(ex)
    assert env.forwarded(ex) == []
    await env.assert_serving()


# --------------------------------------------------------------------------
# Host and version


async def test_http10_without_host_is_served_with_upstream_host(env: Env) -> None:
    conn = await RawConnection.open(env.port)
    try:
        await conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        resp = await conn.read_response(2.0)
        assert resp is not None and resp.status == 200
        assert await conn.wait_closed_by_peer(2.0), "HTTP/1.0 without keep-alive stays open"
    finally:
        await conn.close()
    ex = await exchange(env.port, b"GET /__debug/echo/public HTTP/1.0\r\n\r\n")
    assert ex.statuses == [200], ex.describe()
    [rec] = env.backend.seen_by(ex)
    host = dict((k.lower(), v) for k, v in rec.headers)["host"]
    assert host == env.backend.url.removeprefix("http://")
    await env.assert_serving()


async def test_http10_with_evil_host_does_not_reach_backend_as_host(env: Env) -> None:
    ex = await exchange(env.port, b"GET /__debug/echo/public HTTP/1.0\r\nHost: evil.example\r\n"
                                  b"X-Forwarded-Host: evil.example\r\n\r\n")
    assert ex.statuses == [200], ex.describe()
    [rec] = env.backend.seen_by(ex)
    values = " ".join(v for _, v in rec.headers)
    assert "evil.example" not in values
    await env.assert_serving()


@pytest.mark.parametrize("raw", [
    b"GET /__debug/echo/public HTTP/1.1\r\n\r\n",
    b"GET /__debug/echo/public HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    pytest.param(b"GET /__debug/echo/public HTTP/1.1\r\nHost: a b\r\n\r\n", id="host_with_space"),
    pytest.param(b"GET /__debug/echo/public HTTP/1.1\r\nHost: evil.example/x?y\r\n\r\n", id="host_with_path"),
], ids=["http11_no_host", "two_hosts", "host_with_space", "host_with_path"])
async def test_bad_host_refused(env: Env, raw: bytes) -> None:
    ex = await exchange(env.port, raw)
    assert_refused(ex)
    assert env.forwarded(ex) == []
    await env.assert_serving()


@pytest.mark.parametrize("line", [
    b"GET /healthz HTTP/1.10", b"GET /healthz HTTP/01.1", b"GET /healthz http/1.1",
    b"GET /healthz HTTP/1.1 extra", b"GET /healthz HTTP/3.0", b"\x16\x03\x01\x02\x00\x01",
    pytest.param(b"GET /healthz", id="http09"),
])
async def test_bad_request_line_refused(env: Env, line: bytes) -> None:
    ex = await exchange(env.port, line + b"\r\nHost: gw.test\r\n\r\n")
    assert_refused(ex)
    await env.assert_serving()


# --------------------------------------------------------------------------
# Pipelining


async def test_pipelined_pair_with_malformed_second(env: Env) -> None:
    first = request("GET", "/__debug/echo/public")
    second = b"GET /__debug/echo/public HTTP/1.1\r\nHost: gw.test\r\nBad Header\r\n\r\n"
    ex = await exchange(env.port, first + second, max_responses=2, timeout=3.0)
    # Either the first is answered and then the second refused, or (when both arrive in one
    # read) the whole read is refused: never a 2xx for the malformed one.
    assert ex.refused_somewhere(), ex.describe()
    assert ex.statuses in ([200, 400], [400]), ex.describe()
    assert len(env.forwarded(ex)) == ex.statuses.count(200)
    await env.assert_serving()


async def test_pipelined_pair_split_with_malformed_second(env: Env) -> None:
    conn = await RawConnection.open(env.port)
    try:
        await conn.send(request("GET", "/__debug/echo/public"))
        first = await conn.read_response(2.0)
        assert first is not None and first.status == 200
        await conn.send(b"GET /__debug/echo/public HTTP/1.1\r\nHost: gw.test\r\nX: a\x00b\r\n\r\n")
        ex = await conn.read_all(timeout=3.0)
    finally:
        await conn.close()
    assert_refused(ex)
    assert env.backend.seen_by(conn)[1:] == []
    await env.assert_serving()


async def test_pipelined_well_formed_pair_answered_in_order(env: Env) -> None:
    raw = request("GET", "/healthz") + request("GET", "/no/such/route")
    ex = await exchange(env.port, raw, max_responses=2)
    assert ex.statuses == [200, 404], ex.describe()
    assert_json_error(ex.responses[1], 404, "route_not_found")


# --------------------------------------------------------------------------
# Slow clients


async def test_slowloris_does_not_block_other_clients(env: Env) -> None:
    slow: list[RawConnection] = []
    try:
        for _ in range(50):
            conn = await RawConnection.open(env.port)
            await conn.send(b"GET /__debug/echo/public HTTP/1.1\r\nHost: gw.test\r\nX-A: ")
            slow.append(conn)
        for _ in range(3):
            for conn in slow:
                await conn.send(b"a")
            started = time.monotonic()
            assert await healthy(env.port, timeout=2.0)
            ex = await exchange(env.port, request("GET", "/__debug/echo/public"), timeout=2.0)
            assert ex.statuses == [200], ex.describe()
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.05)
        # A trade request with a body that never comes does not hold others up either.
        body_wait = await RawConnection.open(env.port)
        slow.append(body_wait)
        await body_wait.send(post(env, ORDERS, "Content-Length: 45", b'{"sym'))
        await env.assert_serving()
    finally:
        for conn in slow:
            await conn.close()
    for conn in slow:
        assert [r for r in env.backend.seen_by(conn) if r.complete] == []


# --------------------------------------------------------------------------
# Bodies on the trade route


async def test_huge_content_length_refused_without_waiting_for_body(env: Env) -> None:
    conn = await RawConnection.open(env.port)
    try:
        started = time.monotonic()
        await conn.send(post(env, ORDERS, "Content-Length: 10485760", b""))
        resp = await conn.read_response(2.0)
        elapsed = time.monotonic() - started
    finally:
        await conn.close()
    assert resp is not None
    assert_json_error(resp, 413, "body_too_large")
    assert elapsed < 1.0
    assert env.backend.seen_by(conn) == []
    await env.assert_serving()


async def test_chunked_body_over_limit_refused(env: Env) -> None:
    chunk = b"x" * 4096
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(6)) + b"0\r\n\r\n"
    ex = await exchange(env.port, post(env, ORDERS, "Transfer-Encoding: chunked", body),
                        timeout=3.0)
    assert_json_error(ex.first, 413, "body_too_large")
    assert env.forwarded(ex) == []
    await env.assert_serving()


@pytest.mark.parametrize("body", [b"{", b"{'a': 1}", b"\xff\xfe", b'{"a": 1}}', b"NaN x"])
async def test_invalid_json_on_trade_route(env: Env, body: bytes) -> None:
    ex = await exchange(env.port, post(env, ORDERS, f"Content-Length: {len(body)}", body))
    assert_json_error(ex.first, 400, "invalid_json")
    assert env.forwarded(ex) == []
    await env.assert_serving()


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/jsonx", "multipart/form-data; boundary=x"])
async def test_wrong_content_type_on_trade_route(env: Env, ctype: str) -> None:
    ex = await exchange(env.port, post(env, ORDERS, f"Content-Length: {len(ORDER_JSON)}",
                                       ORDER_JSON, content_type=ctype))
    assert_json_error(ex.first, 415, "unsupported_media_type")
    assert env.forwarded(ex) == []
    await env.assert_serving()


# --------------------------------------------------------------------------
# Routing errors


@pytest.mark.parametrize("target", ["/nope", "/api", "/api/quotes", "/api/accounts/A1/x/y/z",
                                    "/admin/policies", "/metrics"])
async def test_unknown_route_is_404(env: Env, target: str) -> None:
    ex = await exchange(env.port, request("GET", target, [env.auth]))
    assert_json_error(ex.first, 404, "route_not_found")
    assert env.forwarded(ex) == []
    await env.assert_serving()


@pytest.mark.parametrize("method,target,allow", [
    ("PATCH", ORDERS, "GET, POST"),
    ("PUT", ORDERS, "GET, POST"),
    ("POST", "/api/quotes/600519.SH", "GET"),
    ("DELETE", "/__debug/echo", "GET, POST, PUT"),
    ("TRACE", "/__debug/echo/public", "GET"),
])
async def test_wrong_method_is_405_with_allow(env: Env, method: str, target: str,
                                              allow: str) -> None:
    ex = await exchange(env.port, request(method, target, [env.auth]))
    assert_json_error(ex.first, 405, "method_not_allowed")
    assert ex.first.header("Allow") == allow
    assert env.forwarded(ex) == []
    await env.assert_serving()


async def test_zz_gateway_still_serving_after_everything(env: Env) -> None:
    await env.assert_serving()
    ex = await exchange(env.port, post(env, ORDERS, f"Content-Length: {len(ORDER_JSON)}",
                                       ORDER_JSON))
    assert ex.statuses == [200], ex.describe()
