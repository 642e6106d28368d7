"""Request bodies re-encrypted for the upstream (gateway/upstream_crypto.py, demo_backend/sealed.py).

A real gateway and the demo backend on loopback, with a small recording relay between them
that keeps every request as the backend received it (headers and raw body) and passes it on
unchanged: what the tests assert about the wire is what crossed it. The backend opens sealed
bodies with its own code (no import of the gateway), so the format is tested from both sides.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from demo_backend import sealed as backend_sealed
from demo_backend.errors import DemoError
from gateway.client import aiohttp_send
from gateway.config import parse
from gateway.crypto.secretbox import SecretBox
from gateway.demo_keys import ensure_demo_keys
from gateway.errors import ConfigError
from gateway.policy.rego import RegoPolicy
from gateway.upstream_crypto import (
    UPSTREAM_ENVELOPE_HEADER,
    UPSTREAM_ENVELOPE_TYPE,
    PayloadKeys,
    UpstreamEnvelope,
    open_body,
    seal_body,
)
from tests.harness import ROUTES, Stack, routes_with_body_kinds, run_backend, run_stack
from tests.test_envelope import ORDER, ORDERS, POLICY, TRANSFERS, Customer

_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class Seen:
    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes

    def replay_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k.lower() not in _HOP}


@asynccontextmanager
async def recording_relay(backend: str) -> AsyncIterator[tuple[str, list[Seen]]]:
    """A loopback hop that records each request and relays it to ``backend`` byte for byte."""
    seen: list[Seen] = []
    session = aiohttp.ClientSession(auto_decompress=False)

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        record = Seen(request.method, request.raw_path, CIMultiDict(request.headers), body)
        seen.append(record)
        async with session.request(request.method, URL(backend + request.raw_path, encoded=True),
                                   headers=record.replay_headers(), data=body,
                                   skip_auto_headers=("Content-Type", "User-Agent")) as r:
            return web.Response(status=r.status, body=await r.read(),
                                headers={"Content-Type": r.headers.get("Content-Type", "application/json")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()
        await session.close()


def _key_file(folder: Path, kid: str = "up1") -> Path:
    path = folder / f"payload-{kid}.json"
    SecretBox.generate(kid).write_file(path)
    return path


def _routes(sealed_routes: tuple[str, ...], *, body_kinds: bool = False) -> list[dict[str, Any]]:
    routes = routes_with_body_kinds() if body_kinds else [dict(r) for r in ROUTES]
    for r in routes:
        if r["name"] in sealed_routes:
            r["upstream_encryption"] = "sm4-gcm"
    return routes


@dataclass
class Wire:
    stack: Stack
    seen: list[Seen]
    key_file: Path | None
    backend: str


@asynccontextmanager
async def sealed_stack(tmp: Path, *, sealed_routes: tuple[str, ...] = ("order_place",),
                       gateway_key: str | None = "up1", backend_key: str | None = "up1",
                       require_sealed: tuple[str, ...] = (), body_kinds: bool = False,
                       **overrides: Any) -> AsyncIterator[Wire]:
    """Backend (with ``backend_key``) <- recording relay <- gateway (its upstream with ``gateway_key``)."""
    keys = ensure_demo_keys(tmp / "keys")  # the same folder run_stack uses
    files = {kid: _key_file(tmp, kid) for kid in {gateway_key, backend_key} if kid is not None}
    backend_file = files[backend_key] if backend_key else None
    upstream: dict[str, Any] = {"connect_timeout": 1, "read_timeout": 5}
    if gateway_key is not None:
        upstream["payload_key_file"] = str(files[gateway_key])
    async with run_backend(keys, payload_key_file=backend_file, require_sealed=require_sealed) as backend, \
            recording_relay(backend) as (relay, seen):
        async with run_stack(tmp, backend_url=relay, routes=_routes(sealed_routes, body_kinds=body_kinds),
                             upstreams={"trading": {"url": relay, **upstream}}, **overrides) as stack:
            yield Wire(stack, seen, files.get(gateway_key) if gateway_key else None, backend)


async def _post(stack: Stack, path: str, body: Any) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as s, \
            s.post(stack.url + path, json=body, headers=stack.auth()) as r:
        return r.status, await r.json(), r.headers["X-Request-Id"]


async def _book(stack: Stack) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(stack.url + ORDERS, headers=stack.auth()) as r:
        assert r.status == 200
        return list((await r.json())["orders"])


def _posts(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s.method == "POST"]


# -- on the wire -----------------------------------------------------------------------------


async def test_an_order_on_a_re_encrypting_route_reaches_the_backend_sealed_and_is_placed(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path) as w:
        status, placed, rid = await _post(w.stack, ORDERS, ORDER)
        book = await _book(w.stack)
    assert status == 201, placed
    assert placed["symbol"] == ORDER["symbol"] and [o["order_id"] for o in book] == [placed["order_id"]]
    [wire] = _posts(w.seen)
    assert wire.headers["Content-Type"] == UPSTREAM_ENVELOPE_TYPE
    assert b"601318" not in wire.body and b"limit" not in wire.body
    h = UpstreamEnvelope.parse(wire.headers[UPSTREAM_ENVELOPE_HEADER])
    assert h.kid == "up1" and h.type == "application/json"
    assert wire.headers["X-Request-Id"] == rid
    assert w.key_file is not None
    plain = open_body(PayloadKeys.from_file(w.key_file), "POST", ORDERS, rid, h, wire.body)
    assert json.loads(plain) == ORDER
    assert [g.headers.get(UPSTREAM_ENVELOPE_HEADER) for g in w.seen if g.method == "GET"] == [None]


async def test_the_same_order_on_a_route_without_re_encryption_arrives_in_plaintext(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path, sealed_routes=()) as w:
        status, placed, _ = await _post(w.stack, ORDERS, ORDER)
    assert status == 201, placed
    [wire] = _posts(w.seen)
    assert wire.headers["Content-Type"] == "application/json"
    assert UPSTREAM_ENVELOPE_HEADER not in wire.headers
    assert json.loads(wire.body) == ORDER


async def test_each_order_is_sealed_with_a_fresh_iv(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path) as w:
        for _ in range(2):
            assert (await _post(w.stack, ORDERS, ORDER))[0] == 201
    ivs = {UpstreamEnvelope.parse(s.headers[UPSTREAM_ENVELOPE_HEADER]).iv for s in _posts(w.seen)}
    assert len(ivs) == 2


async def test_a_body_less_request_on_a_re_encrypting_route_is_forwarded_as_is(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path, sealed_routes=("order_place", "order_cancel")) as w:
        status, placed, _ = await _post(w.stack, ORDERS, ORDER)
        assert status == 201
        async with aiohttp.ClientSession() as s, \
                s.delete(w.stack.url + f"{ORDERS}/{placed['order_id']}", headers=w.stack.auth()) as r:
            assert r.status in (200, 409), await r.text()  # cancelled, or already filled
    [cancel] = [s for s in w.seen if s.method == "DELETE"]
    assert cancel.body == b"" and UPSTREAM_ENVELOPE_HEADER not in cancel.headers


async def test_a_client_sent_upstream_envelope_header_is_not_forwarded(tmp_path: Path) -> None:
    forged = "kid=up1; iv=AAAAAAAAAAAAAAAA; type=application/json"
    async with sealed_stack(tmp_path, sealed_routes=()) as w, aiohttp.ClientSession() as s:
        async with s.post(w.stack.url + ORDERS, json=ORDER,
                          headers={**w.stack.auth(), UPSTREAM_ENVELOPE_HEADER: forged}) as r:
            assert r.status == 201, await r.text()
    [wire] = _posts(w.seen)
    assert UPSTREAM_ENVELOPE_HEADER not in wire.headers


async def test_an_order_sent_in_a_client_envelope_reaches_the_backend_under_the_upstream_key(
        tmp_path: Path) -> None:
    envelope = {"agreement_key_file": str(tmp_path / "agreement.json"),
                "key_file": str(tmp_path / "envelope-keys.json")}
    policy = RegoPolicy.from_modules([("policy.rego", POLICY)], {})
    async with sealed_stack(tmp_path, body_kinds=True, envelope=envelope,
                            gateway_kwargs={"policy": policy}) as w, aiohttp.ClientSession() as http:
        me = Customer(w.stack, http)
        session = await me.agree()
        result = await me.client.request(aiohttp_send(http), "POST", ORDERS, ORDER, expect=(201,))
        assert result.response.status == 201, result.response.body
        assert result.response.json()["qty"] == ORDER["qty"]
    [wire] = _posts([s for s in w.seen if s.target == ORDERS])
    assert "Portcullis-Envelope" not in wire.headers  # the client's envelope ends at the gateway
    h = UpstreamEnvelope.parse(wire.headers[UPSTREAM_ENVELOPE_HEADER])
    assert h.kid == "up1" and h.type == "application/json"
    assert w.key_file is not None
    plain = open_body(PayloadKeys.from_file(w.key_file), "POST", ORDERS, wire.headers["X-Request-Id"], h, wire.body)
    assert json.loads(plain) == ORDER and b"601318" not in wire.body
    assert session.sent == 1


# -- the backend's checks -------------------------------------------------------------------


async def _direct(backend: str, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, \
            s.request(method, backend + path, headers=headers, data=body,
                      skip_auto_headers=("Content-Type",)) as r:
        return r.status, await r.json()


async def test_the_backend_refuses_a_sealed_body_replayed_to_another_path(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path, sealed_routes=("order_place", "transfer")) as w:
        assert (await _post(w.stack, ORDERS, ORDER))[0] == 201
        [wire] = _posts(w.seen)
        status, body = await _direct(w.backend, "POST", TRANSFERS, wire.replay_headers(), wire.body)
    assert (status, body["error"]) == (400, "upstream_envelope_invalid")


async def test_the_backend_refuses_a_sealed_body_moved_to_another_request(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path) as w:
        for qty in (100, 200):
            assert (await _post(w.stack, ORDERS, {**ORDER, "qty": qty}))[0] == 201
        first, second = _posts(w.seen)
        before = len(await _book(w.stack))
        # The second request's identity assertion (and request id) with the first one's body.
        status, body = await _direct(w.backend, "POST", ORDERS, second.replay_headers(), first.body)
        after = len(await _book(w.stack))
    assert (status, body["error"]) == (400, "upstream_envelope_invalid")
    assert after == before


async def test_a_backend_without_the_gateways_key_id_refuses_the_body(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path, gateway_key="up1", backend_key="up2") as w:
        status, body, _ = await _post(w.stack, ORDERS, ORDER)
        book = await _book(w.stack)
    assert (status, body["error"]) == (400, "upstream_envelope_key_unknown")
    assert book == []


async def test_a_backend_requiring_sealed_bodies_refuses_plaintext(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path, sealed_routes=(), require_sealed=("order_place",)) as w:
        status, body, _ = await _post(w.stack, ORDERS, ORDER)
        book = await _book(w.stack)
    assert (status, body["error"]) == (415, "upstream_envelope_required")
    assert book == []


async def test_a_backend_requiring_sealed_bodies_places_a_sealed_order(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path, require_sealed=("order_place",)) as w:
        status, placed, _ = await _post(w.stack, ORDERS, ORDER)
    assert status == 201, placed


async def test_a_malformed_upstream_envelope_header_is_refused_by_the_backend(tmp_path: Path) -> None:
    async with sealed_stack(tmp_path) as w:
        assert (await _post(w.stack, ORDERS, ORDER))[0] == 201
        [wire] = _posts(w.seen)
        headers = {**wire.replay_headers(), UPSTREAM_ENVELOPE_HEADER: "kid=up1; iv=short; type=application/json"}
        status, body = await _direct(w.backend, "POST", ORDERS, headers, wire.body)
    assert (status, body["error"]) == (400, "upstream_envelope_malformed")


# -- the format, from both sides ------------------------------------------------------------


def _keys(tmp: Path) -> tuple[PayloadKeys, dict[str, bytes]]:
    path = _key_file(tmp)
    return PayloadKeys.from_file(path), backend_sealed.load_keys(path)


def test_the_backend_opens_what_the_gateway_seals_with_code_of_its_own(tmp_path: Path) -> None:
    gateway_keys, backend_keys = _keys(tmp_path)
    h, body = seal_body(gateway_keys, "POST", "/api/accounts/A1/orders?x=1", "rid-1",
                        "application/json; charset=utf-8", b'{"qty": 1}')
    assert h.type == "application/json" and len(body) == len(b'{"qty": 1}') + 16
    media, plain = backend_sealed.open_body(backend_keys, h.render(), "POST", "/api/accounts/A1/orders?x=1",
                                            "rid-1", body)
    assert (media, plain) == ("application/json", b'{"qty": 1}')


@pytest.mark.parametrize(("what", "change"), [
    ("method", {"method": "PUT"}),
    ("path", {"target": "/api/accounts/B9/orders?x=1"}),
    ("query", {"target": "/api/accounts/A1/orders?x=2"}),
    ("request id", {"request_id": "rid-2"}),
    ("media type", {"header": "type=text/plain"}),
])
def test_a_sealed_body_opens_only_where_it_was_sealed(tmp_path: Path, what: str, change: dict[str, str]) -> None:
    gateway_keys, backend_keys = _keys(tmp_path)
    h, body = seal_body(gateway_keys, "POST", "/api/accounts/A1/orders?x=1", "rid-1", "application/json",
                        b'{"qty": 1}')
    header = h.render()
    if "header" in change:
        header = header.replace("type=application/json", change["header"])
    with pytest.raises(DemoError) as caught:
        backend_sealed.open_body(backend_keys, header, change.get("method", "POST"),
                                 change.get("target", "/api/accounts/A1/orders?x=1"),
                                 change.get("request_id", "rid-1"), body)
    assert caught.value.code == "upstream_envelope_invalid", what


def test_an_altered_sealed_body_is_refused(tmp_path: Path) -> None:
    gateway_keys, backend_keys = _keys(tmp_path)
    h, body = seal_body(gateway_keys, "POST", "/o", "r", "application/json", b"{}")
    altered = bytes([body[0] ^ 1]) + body[1:]
    with pytest.raises(DemoError) as caught:
        backend_sealed.open_body(backend_keys, h.render(), "POST", "/o", "r", altered)
    assert caught.value.code == "upstream_envelope_invalid"


def test_payload_keys_are_never_printed(tmp_path: Path) -> None:
    path = _key_file(tmp_path)
    keys = PayloadKeys.from_file(path)
    secret = json.loads(path.read_text())["keys"]["up1"]
    assert secret not in repr(keys) and "up1" in repr(keys)


# -- configuration ---------------------------------------------------------------------------


def _config(tmp: Path, route: dict[str, Any], **upstream: Any) -> Any:
    return parse({"gateway": {"security": False},
                  "upstreams": {"t": {"url": "http://127.0.0.1:9", **upstream}},
                  "routes": [{"upstream": "t", "path": "/api/x", "methods": ["POST"], **route}]}, tmp)


def test_a_route_asking_for_re_encryption_needs_a_payload_key_on_its_upstream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\]\.upstream_encryption: upstream 't' has no payload key"):
        _config(tmp_path, {"tier": "trade", "upstream_encryption": "sm4-gcm"})


@pytest.mark.parametrize("route", [{"tier": "read"}, {"tier": "public"},
                                   {"tier": "trade", "websocket": True}], ids=["read", "public", "websocket"])
def test_re_encryption_is_refused_on_a_streamed_tier(tmp_path: Path, route: dict[str, Any]) -> None:
    key = _key_file(tmp_path)
    with pytest.raises(ConfigError, match=r"routes\[0\]\.upstream_encryption: only buffered routes"):
        _config(tmp_path, {**route, "upstream_encryption": "sm4-gcm"}, payload_key_file=str(key))


def test_upstream_encryption_is_off_unless_asked_and_checks_its_value(tmp_path: Path) -> None:
    key = _key_file(tmp_path)
    cfg = _config(tmp_path, {"tier": "trade"}, payload_key_file=str(key))
    assert cfg.routes[0].upstream_encryption == "off" and cfg.upstreams["t"].payload_key_file == key
    on = _config(tmp_path, {"tier": "transfer", "upstream_encryption": "sm4-gcm"}, payload_key_file=str(key))
    assert on.routes[0].upstream_encryption == "sm4-gcm"
    with pytest.raises(ConfigError, match=r"upstream_encryption: must be one of off, sm4-gcm"):
        _config(tmp_path, {"tier": "trade", "upstream_encryption": "aes"}, payload_key_file=str(key))


def test_a_payload_key_file_others_may_read_is_refused_at_load(tmp_path: Path) -> None:
    key = _key_file(tmp_path)
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match=r"upstreams\.t\.payload_key_file: .*readable by group or others"):
        _config(tmp_path, {"tier": "trade"}, payload_key_file=str(key))


def test_a_missing_payload_key_file_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.t\.payload_key_file: .*does not exist"):
        _config(tmp_path, {"tier": "trade"}, payload_key_file=str(tmp_path / "nope.json"))


async def test_a_bare_proxy_buffers_and_seals_a_body_on_a_re_encrypting_route(tmp_path: Path) -> None:
    # No read_body step runs without security: the forward step reads the body itself.
    async with sealed_stack(tmp_path, gateway={"security": False}) as w, aiohttp.ClientSession() as s:
        async with s.post(w.stack.url + ORDERS, json=ORDER) as r:
            rid = r.headers["X-Request-Id"]
    [wire] = _posts(w.seen)
    h = UpstreamEnvelope.parse(wire.headers[UPSTREAM_ENVELOPE_HEADER])
    assert w.key_file is not None
    assert json.loads(open_body(PayloadKeys.from_file(w.key_file), "POST", ORDERS, rid, h, wire.body)) == ORDER
