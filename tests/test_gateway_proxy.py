"""The gateway end to end on loopback: forwarding, identity, account binding, errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from harness import Stack, run_stack

from audit.sink import FileAuditSink
from gateway.demo_keys import DEMO_AUDIENCE
from gateway.policy.engine import Decision, Reason, StepUp


async def _get(st: Stack, path: str, **kw: Any) -> tuple[int, Any, Mapping[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(st.url + path, **kw) as r:
        body = await r.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = body
        return r.status, data, r.headers


async def _send(st: Stack, method: str, path: str, **kw: Any) -> tuple[int, Any, Mapping[str, str]]:
    async with aiohttp.ClientSession() as s, s.request(method, st.url + path, **kw) as r:
        body = await r.read()
        return r.status, json.loads(body) if body else None, r.headers


def _headers(echo: dict[str, Any]) -> dict[str, str]:
    """The headers the backend received (lower-case names; repeats would fail the test)."""
    out: dict[str, str] = {}
    for name, value in echo["headers"]:
        assert name.lower() not in out, f"header {name} arrived twice"
        out[name.lower()] = value
    return out


def _assert_error(status: int, body: Any, headers: Mapping[str, str], want_status: int,
                  code: str) -> None:
    assert (status, body["error"]) == (want_status, code), body
    assert body["request_id"] == headers["X-Request-Id"]
    assert body["message"]


# --------------------------------------------------------------------------
# Forwarding and identity


async def test_authenticated_read_is_forwarded(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
    assert status == 200
    assert body["symbol"] == "600519.SH"
    assert len(headers["X-Request-Id"]) == 24


async def test_backend_sees_signed_identity_and_no_client_credentials(tmp_path: Path) -> None:
    forged = {"X-User-Id": "admin", "X-Portcullis-Identity": "forged", "X-Remote-User": "root",
              "X-Forwarded-For": "6.6.6.6", "Cookie": "session=1", "User-Agent": "app/1.0"}
    async with run_stack(tmp_path) as st:
        status, echo, headers = await _get(st, "/__debug/echo?account=A1",
                                           headers={**st.auth(), **forged})
        jwks = json.loads(st.keys.identity_jwks.read_text())
    assert status == 200
    received = _headers(echo)
    assert "authorization" not in received and "cookie" not in received
    assert "x-user-id" not in received and "x-remote-user" not in received
    # The client's X-Forwarded-For is not believed: the peer is not a trusted proxy.
    assert received["x-forwarded-for"] == "127.0.0.1"
    assert received["x-forwarded-proto"] == "http"
    assert received["x-request-id"] == headers["X-Request-Id"]
    key = jwt.PyJWK(jwks["keys"][0]).key
    claims = jwt.decode(received["x-portcullis-identity"], key, algorithms=["ES256"],
                        audience="portcullis-upstream", issuer="portcullis-gateway")
    assert claims["sub"] == "alice" and claims["accounts"] == ["A1"]
    assert claims["rid"] == headers["X-Request-Id"]
    assert claims["exp"] - claims["iat"] == 60
    assert received["x-portcullis-terminal"].startswith("TYPE=API;IIP=127.0.0.1;IPORT=")
    assert received["x-portcullis-terminal"].endswith(";UA=app/1.0")


async def test_inbound_request_id_from_untrusted_peer_is_replaced(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        _, _, headers = await _get(st, "/api/quotes/600519.SH",
                                   headers={**st.auth(), "X-Request-Id": "client-chosen"})
    assert headers["X-Request-Id"] != "client-chosen"


async def test_public_route_needs_no_token(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, echo, _ = await _get(st, "/__debug/echo/public")
    assert status == 200
    claims = jwt.decode(_headers(echo)["x-portcullis-identity"], options={"verify_signature": False})
    assert claims["sub"] == "anonymous" and claims["accounts"] == []


# --------------------------------------------------------------------------
# Authentication


async def test_missing_token_is_401_with_challenge(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _get(st, "/api/quotes/600519.SH")
    _assert_error(status, body, headers, 401, "token_missing")
    assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("token", "code"), [
    ("garbage", "token_malformed"),
    ("a.b.c", "token_malformed"),
])
async def test_garbled_token_is_401(tmp_path: Path, token: str, code: str) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _get(st, "/api/quotes/600519.SH",
                                           headers={"Authorization": f"Bearer {token}"})
    _assert_error(status, body, headers, 401, code)


async def test_expired_token_is_401(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        token = st.token(now=1_000_000, ttl=60)
        status, body, headers = await _get(st, "/api/quotes/600519.SH",
                                           headers={"Authorization": f"Bearer {token}"})
    _assert_error(status, body, headers, 401, "token_expired")


async def test_wrong_audience_is_401(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        token = st.token(extra={"aud": "someone-else"})
        status, body, headers = await _get(st, "/api/quotes/600519.SH",
                                           headers={"Authorization": f"Bearer {token}"})
    _assert_error(status, body, headers, 401, "token_audience")
    assert DEMO_AUDIENCE != "someone-else"


# --------------------------------------------------------------------------
# Account binding


async def test_foreign_account_in_path_is_403(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _get(st, "/api/accounts/B9", headers=st.auth())
    _assert_error(status, body, headers, 403, "account_forbidden")


@pytest.mark.parametrize("query", ["account=B9", "account=A1&account=B9", "%61ccount=B9"])
async def test_foreign_account_in_query_is_403(tmp_path: Path, query: str) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _get(st, "/__debug/echo?" + query, headers=st.auth())
    _assert_error(status, body, headers, 403, "account_forbidden")


class BrokenPolicy:
    """An engine that is down: every evaluation fails."""

    version = "broken"

    async def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        raise ConnectionError("policy engine unreachable")


@pytest.mark.parametrize("path", ["/api/accounts/B9", "/api/accounts/B9/orders"])
async def test_account_binding_holds_when_policy_is_down(tmp_path: Path, path: str) -> None:
    # Both a fail-open read route and a fail-closed one: binding runs first, always.
    async with run_stack(tmp_path, gateway_kwargs={"policy": BrokenPolicy()}) as st:
        status, body, headers = await _get(st, path, headers=st.auth())
    _assert_error(status, body, headers, 403, "account_forbidden")


async def test_policy_down_fails_trade_closed(tmp_path: Path) -> None:
    async with run_stack(tmp_path, gateway_kwargs={"policy": BrokenPolicy()}) as st:
        status, body, headers = await _send(
            st, "POST", "/api/accounts/A1/orders", headers=st.auth(),
            json={"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0,
                  "type": "limit", "client_order_id": "c1"})
    _assert_error(status, body, headers, 503, "policy_unavailable")


async def test_policy_down_degrades_open_read_route(tmp_path: Path) -> None:
    async with run_stack(tmp_path, gateway_kwargs={"policy": BrokenPolicy()}) as st:
        status, _, _ = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
        await asyncio.sleep(0.05)
    assert status == 200
    records = _audit_records(tmp_path)
    decision = next(r for r in records if r["type"] == "decision")
    assert decision["degraded"] == ["policy_unavailable"]


# --------------------------------------------------------------------------
# Policy decisions


class StaticPolicy:
    """An engine behind the same interface that answers one fixed decision."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.version = "static"

    async def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        return self.decision


async def test_policy_deny_is_403_with_reasons(tmp_path: Path) -> None:
    deny = Decision(allow=False, deny=(Reason("lot_size", "buy in multiples of 100"),))
    async with run_stack(tmp_path, gateway_kwargs={"policy": StaticPolicy(deny)}) as st:
        status, body, headers = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
    _assert_error(status, body, headers, 403, "policy_denied")
    assert body["reasons"] == [{"code": "lot_size", "message": "buy in multiples of 100"}]


async def test_policy_step_up_is_rfc9470_challenge(tmp_path: Path) -> None:
    step = Decision(allow=False, step_up=StepUp("urn:portcullis:acr:mfa", ("totp", "sms"), 300),
                    deny=(Reason("new_device", "unknown device"),))
    async with run_stack(tmp_path, gateway_kwargs={"policy": StaticPolicy(step)},
                         internal_token="proxy-internal") as st:
        status, body, headers = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
    _assert_error(status, body, headers, 401, "insufficient_user_authentication")
    www = headers["WWW-Authenticate"]
    assert www.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="urn:portcullis:acr:mfa"' in www and "max_age=300" in www
    # No factor enrolled: the one method is a code to the phone on file (the backend's account facts).
    assert body["methods"] == ["sms"] and body["reasons"] == ["new_device"]
    assert len(body["challenge_id"]) >= 32 and body["expires_at"] > time.time()
    # The risk behind it, as codes only: no proof of a device key, first sight of this customer.
    assert "missing_device_proof" in body["risk_factors"]
    assert all(isinstance(c, str) and c.isidentifier() for c in body["risk_factors"])


async def test_a_step_up_nobody_can_answer_is_a_clear_refusal(tmp_path: Path) -> None:
    """No factor enrolled and no phone on file (no fact provider): 403, not a challenge without methods."""
    step = Decision(allow=False, step_up=StepUp("urn:portcullis:acr:mfa", ("totp", "sms"), 300),
                    deny=(Reason("new_device", "unknown device"),))
    async with run_stack(tmp_path, gateway_kwargs={"policy": StaticPolicy(step)}) as st:
        status, body, headers = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
    _assert_error(status, body, headers, 403, "no_step_up_method")
    assert body["acr_values"] == "urn:portcullis:acr:mfa" and body["reasons"] == ["new_device"]


async def test_admin_tier_requires_admin_role(tmp_path: Path) -> None:
    routes = [{"name": "admin_echo", "methods": ["GET"], "path": "/__debug/echo",
               "upstream": "trading", "tier": "admin"}]
    async with run_stack(tmp_path, routes=routes) as st:
        status, body, headers = await _get(st, "/__debug/echo", headers=st.auth())
        ok, _, _ = await _get(st, "/__debug/echo", headers=st.auth(roles=("admin",)))
    _assert_error(status, body, headers, 403, "role_forbidden")
    assert ok == 200


async def test_route_roles_hold_when_policy_is_down_on_open_route(tmp_path: Path) -> None:
    routes = [{"name": "advisor_echo", "methods": ["GET"], "path": "/__debug/echo",
               "upstream": "trading", "tier": "read", "fail_mode": "open", "roles": ["advisor"]}]
    async with run_stack(tmp_path, routes=routes, gateway_kwargs={"policy": BrokenPolicy()}) as st:
        status, body, headers = await _get(st, "/__debug/echo", headers=st.auth())
        ok, _, _ = await _get(st, "/__debug/echo", headers=st.auth(roles=("advisor",)))
    _assert_error(status, body, headers, 403, "role_forbidden")
    assert ok == 200  # the advisor goes on, degraded


# --------------------------------------------------------------------------
# Bodies


ORDER = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit",
         "client_order_id": "c-1"}


def _audit_records(tmp: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((tmp / "audit").glob("*.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines())
    return out


async def test_order_is_forwarded_after_durable_decision_record(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _send(st, "POST", "/api/accounts/A1/orders",
                                            headers=st.auth(), json=ORDER)
        await asyncio.sleep(0.05)
    assert status == 201, body
    records = [r for r in _audit_records(tmp_path) if r.get("request_id") == headers["X-Request-Id"]]
    assert [r["type"] for r in records] == ["decision", "outcome"]
    assert records[0]["decision"] == "allow" and records[0]["account"] == "A1"
    assert records[1]["status"] == 201


async def test_oversized_body_is_413(tmp_path: Path) -> None:
    big = {**ORDER, "note": "x" * 20_000}
    async with run_stack(tmp_path) as st:
        status, body, headers = await _send(st, "POST", "/api/accounts/A1/orders",
                                            headers=st.auth(), json=big)
    _assert_error(status, body, headers, 413, "body_too_large")


async def test_oversized_chunked_body_is_413(tmp_path: Path) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 1024

    async with run_stack(tmp_path) as st:
        status, body, headers = await _send(
            st, "POST", "/api/accounts/A1/orders",
            headers={**st.auth(), "Content-Type": "application/json"}, data=chunks())
    _assert_error(status, body, headers, 413, "body_too_large")


async def test_invalid_json_on_trade_route_is_400(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _send(
            st, "POST", "/api/accounts/A1/orders",
            headers={**st.auth(), "Content-Type": "application/json"}, data=b"{not json")
    _assert_error(status, body, headers, 400, "invalid_json")


async def test_wrong_content_type_on_trade_route_is_415(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _send(
            st, "POST", "/api/accounts/A1/orders",
            headers={**st.auth(), "Content-Type": "text/plain"}, data=b"buy 100")
    _assert_error(status, body, headers, 415, "unsupported_media_type")


async def test_streamed_read_body_is_forwarded(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, echo, _ = await _send(st, "POST", "/__debug/echo", headers=st.auth(),
                                      data=b"hello world")
    assert status == 200
    assert echo["body"] == "hello world"


async def test_audit_down_fails_trade_closed_but_read_goes_on(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the audit folder should be")
    sink = FileAuditSink(blocked, fsync_interval=0.001)
    async with run_stack(tmp_path, gateway_kwargs={"audit_sink": sink}) as st:
        status, body, headers = await _send(st, "POST", "/api/accounts/A1/orders",
                                            headers=st.auth(), json=ORDER)
        read_status, _, _ = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
        positions = await _get(st, "/api/accounts/A1/positions", headers=st.auth())
        await asyncio.sleep(0.05)
        held = st.gateway.audit.backlog  # the reads' records, held for retrying (docs/AUDIT.md)
    _assert_error(status, body, headers, 503, "audit_unavailable")
    assert read_status == 200 and positions[0] == 200
    assert held >= 2


# --------------------------------------------------------------------------
# Upstream failures


async def test_refused_upstream_is_502(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with run_stack(tmp_path, backend_url=f"http://127.0.0.1:{port}") as st:
        status, body, headers = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
        again, _, _ = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
    _assert_error(status, body, headers, 502, "upstream_unreachable")
    assert again == 502


async def test_slow_upstream_is_504(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _get(st, "/__debug/slow?delay=3", headers=st.auth())
        after, _, _ = await _get(st, "/api/quotes/600519.SH", headers=st.auth())
    _assert_error(status, body, headers, 504, "upstream_timeout")
    assert after == 200


# --------------------------------------------------------------------------
# Routing


async def test_unknown_route_is_404(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _get(st, "/api/nothing", headers=st.auth())
    _assert_error(status, body, headers, 404, "route_not_found")


async def test_wrong_method_is_405(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        status, body, headers = await _send(st, "PUT", "/api/accounts/A1/orders",
                                            headers=st.auth())
    _assert_error(status, body, headers, 405, "method_not_allowed")
    assert headers["Allow"] == "GET, POST"


async def test_ambiguous_path_is_400_and_never_forwarded(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        url = st.url + "/api/accounts/A1/..%2fB9"
        async with s.get(aiohttp.client.URL(url, encoded=True), headers=st.auth()) as r:
            body = await r.json()
    assert (r.status, body["error"]) == (400, "bad_path")


# --------------------------------------------------------------------------
# WebSocket, operations, shutdown


async def test_websocket_quotes_stream_is_proxied(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        async with s.ws_connect(st.url + "/api/quotes/stream", headers=st.auth()) as ws:
            await ws.send_json({"subscribe": ["600519.SH"]})
            msg = await asyncio.wait_for(ws.receive_json(), 5)
            while msg.get("symbol") != "600519.SH":
                msg = await asyncio.wait_for(ws.receive_json(), 5)
    assert msg["symbol"] == "600519.SH" and msg["last"] > 0


async def test_websocket_needs_token(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(st.url + "/api/quotes/stream")
    assert err.value.status == 401


async def test_health_and_readiness(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st:
        health = await _get(st, "/healthz")
        ready = await _get(st, "/readyz")
    assert health[:2] == (200, {"status": "ok"})
    assert ready[0] == 200 and ready[1]["checks"] == {"upstream:trading": True, "state": True}


async def test_readiness_fails_when_upstream_down(tmp_path: Path) -> None:
    async with run_stack(tmp_path, backend_url="http://127.0.0.1:9") as st:
        status, body, _ = await _get(st, "/readyz")
    assert status == 503 and body["checks"]["upstream:trading"] is False


async def test_metrics_only_on_admin_listener(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        await _get(st, "/api/quotes/600519.SH", headers=st.auth())
        await _get(st, "/api/accounts/B9", headers=st.auth())
        public = await _get(st, "/metrics")
        async with s.get(st.admin_url + "/metrics") as r:
            text = await r.text()
    assert public[0] == 404
    assert 'portcullis_requests_total{outcome="ok",route="quotes",status="200",tier="read"} 1.0' in text
    assert 'outcome="account_forbidden",route="account",status="403"' in text
    assert "portcullis_gateway_seconds_bucket" in text and "portcullis_upstream_seconds_bucket" in text


async def test_admin_revocation_refuses_cached_token(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        token = st.token()
        auth = {"Authorization": f"Bearer {token}"}
        first, _, _ = await _get(st, "/api/quotes/600519.SH", headers=auth)
        claims = jwt.decode(token, options={"verify_signature": False})
        async with s.post(st.admin_url + "/admin/revocations", headers=auth,
                          json={"jti": claims["jti"], "exp": claims["exp"]}) as r:
            not_admin = r.status
        async with s.post(st.admin_url + "/admin/revocations",
                          headers=st.auth(sub="ops", accounts=(), roles=("admin",)),
                          json={"jti": claims["jti"], "exp": claims["exp"]}) as r:
            revoked = r.status
        status, body, headers = await _get(st, "/api/quotes/600519.SH", headers=auth)
    assert (first, not_admin, revoked) == (200, 403, 201)
    _assert_error(status, body, headers, 401, "token_revoked")


async def test_graceful_shutdown_drains_in_flight_requests(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        slow = asyncio.create_task(s.get(st.url + "/__debug/slow?delay=0.5", headers=st.auth()))
        await asyncio.sleep(0.2)
        await st.gateway.stop()
        resp = await slow
        assert resp.status == 200
        resp.release()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(st.url + "/healthz")
        st.gateway.stop = _noop  # type: ignore[method-assign]


async def _noop() -> None:
    return None


async def test_bare_mode_forwards_without_pipeline(tmp_path: Path) -> None:
    async with run_stack(tmp_path, gateway={"security": False, "access_log": False}) as st:
        status, echo, _ = await _get(st, "/__debug/echo?account=B9",
                                     headers={"Authorization": "Bearer passthrough"})
    assert status == 200
    assert _headers(echo)["authorization"] == "Bearer passthrough"


async def test_oversized_streamed_read_body_is_413_not_502(tmp_path: Path) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1024  # the echo route allows 4 KiB

    async with run_stack(tmp_path) as st:
        status, body, headers = await _send(st, "POST", "/__debug/echo", headers=st.auth(),
                                            data=chunks())
    _assert_error(status, body, headers, 413, "body_too_large")


async def test_stalled_body_is_408(tmp_path: Path) -> None:
    async def stalled() -> Any:
        yield b'{"symbol": '
        await asyncio.sleep(2)
        yield b'"600519.SH"}'

    async with run_stack(tmp_path, gateway={"body_timeout": 0.3}) as st:
        status, body, headers = await _send(
            st, "POST", "/api/accounts/A1/orders",
            headers={**st.auth(), "Content-Type": "application/json"}, data=stalled())
    _assert_error(status, body, headers, 408, "body_timeout")
