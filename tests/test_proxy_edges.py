"""Edges of forwarding found in review: aborted streams, WebSocket handshakes, compressed
bodies, DPoP-bound tokens, client hang-ups, shutdown with open sockets, the admin API."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from harness import Stack, run_backend, run_stack

from audit.sink import FileAuditSink
from gateway.demo_keys import ensure_demo_keys


@asynccontextmanager
async def _truncating_upstream() -> AsyncIterator[str]:
    """Answers any request with a 1 MB Content-Length, sends 400 KB, then hangs up."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + b"x" * 400_000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    finally:
        writer.close()
    return data


async def test_upstream_failing_mid_stream_closes_the_connection(tmp_path: Path) -> None:
    async with _truncating_upstream() as url, run_stack(tmp_path, backend_url=url) as st:
        data = await _raw(st.gateway.public_port or 0,
                          b"GET /__debug/echo/public HTTP/1.1\r\nHost: gw\r\n\r\n")
        metrics = st.gateway.metrics.render().decode()
    assert data.count(b"HTTP/1.1 ") == 1  # no second response smuggled into the body
    assert b"upstream_bad_response" not in data
    assert len(data) < 1_000_000
    assert 'outcome="upstream_bad_response",route="echo_public"' in metrics


async def test_bad_websocket_handshake_is_400_and_leaks_no_upstream_connection(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    async with run_backend(keys) as url:
        upstreams = {"trading": {"url": url, "pool_size": 2}}  # a pool a leak would exhaust
        async with run_stack(tmp_path, backend_url=url, upstreams=upstreams) as st, \
                aiohttp.ClientSession() as s:
            bad = {**st.auth(), "Upgrade": "websocket", "Connection": "Upgrade"}
            for _ in range(4):  # more than the pool holds
                async with s.get(st.url + "/api/quotes/stream", headers=bad) as r:
                    body = await r.json()
                    assert (r.status, body["error"]) == (400, "bad_request")
            async with asyncio.timeout(5):
                async with s.get(st.url + "/api/quotes/600519.SH", headers=st.auth()) as r:
                    assert r.status == 200


async def test_compressed_body_refused_on_trade_route(tmp_path: Path) -> None:
    order = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit",
             "client_order_id": "gz"}
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        async with s.post(st.url + "/api/accounts/A1/orders", data=gzip.compress(json.dumps(order).encode()),
                          headers={**st.auth(), "Content-Type": "application/json",
                                   "Content-Encoding": "gzip"}) as r:
            body = await r.json()
    assert (r.status, body["error"]) == (415, "unsupported_media_type")


async def test_compressed_body_on_read_route_is_forwarded_as_sent(tmp_path: Path) -> None:
    raw = gzip.compress(b"hello " * 50)
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        async with s.post(st.url + "/__debug/echo", data=raw,
                          headers={**st.auth(), "Content-Encoding": "gzip"}) as r:
            echo = await r.json(content_type=None)
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert r.status == 200
    # The backend gets the very bytes and the header that describes them: its own
    # decompression then yields the original text (a re-framed body would not).
    assert headers["content-encoding"] == "gzip"
    assert base64.b64decode(echo["body_b64"]) == b"hello " * 50


async def test_client_hanging_up_does_not_cut_the_request_short(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        token = st.token()
        reader, writer = await asyncio.open_connection("127.0.0.1", st.gateway.public_port)
        writer.write(f"GET /__debug/slow?delay=0.4 HTTP/1.1\r\nHost: gw\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.8)
    records = [json.loads(line) for f in (tmp_path / "audit").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    outcomes = [r for r in records if r["type"] == "outcome" and r["route"] == "slow"]
    assert [o["status"] for o in outcomes] == [200]


async def test_shutdown_closes_relayed_websockets_promptly(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(st.url + "/api/quotes/stream", headers=st.auth())
        await ws.send_json({"subscribe": ["600519.SH"]})
        await asyncio.wait_for(ws.receive(), 5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(st.gateway.stop())
        msg = await asyncio.wait_for(ws.receive(), 5)
        while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            msg = await asyncio.wait_for(ws.receive(), 5)
        await stopping
        elapsed = loop.time() - started
        st.gateway.stop = _noop  # type: ignore[method-assign]
    assert elapsed < 4  # shutdown_timeout in the harness is 5 s
    assert ws.close_code == 1001


async def _noop() -> None:
    return None


async def _admin(st: Stack, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, st.admin_url + path, **kw) as r:
        return r.status, await r.json()


async def test_admin_errors_are_json(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        admin = st.auth(sub="ops", accounts=(), roles=("admin",))
        huge = await _admin(st, "POST", "/admin/revocations", headers=admin,
                            json={"jti": "j", "exp": 10**400})
        wrong_method = await _admin(st, "PUT", "/admin/revocations", headers=admin)
        missing = await _admin(st, "GET", "/admin/nothing", headers=admin)
        garbage = await _admin(st, "POST", "/admin/revocations", headers=admin, data=b"{")
    assert (huge[0], huge[1]["error"]) == (400, "bad_request")
    assert (wrong_method[0], wrong_method[1]["error"]) == (405, "method_not_allowed")
    assert (missing[0], missing[1]["error"]) == (404, "route_not_found")
    assert (garbage[0], garbage[1]["error"]) == (400, "invalid_json")
    assert all(r[1]["request_id"] for r in (huge, wrong_method, missing, garbage))


async def test_admin_revocation_fails_closed_when_audit_is_down(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("x")
    async with run_stack(tmp_path, gateway_kwargs={"audit_sink": FileAuditSink(blocked)}) as st:
        token = st.token()
        claims = jwt.decode(token, options={"verify_signature": False})
        admin = st.auth(sub="ops", accounts=(), roles=("admin",))
        status, body = await _admin(st, "POST", "/admin/revocations", headers=admin,
                                    json={"jti": claims["jti"], "exp": claims["exp"]})
        revoked = await st.gateway.revocations.is_revoked(claims["jti"])
    assert (status, body["error"]) == (503, "audit_unavailable")
    assert revoked is False  # not audited, so not done
