"""DPoP device proofs through a real gateway on loopback (RFC 9449), with real Redis where state is shared."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from conftest import PrivateRedis
from harness import Stack, run_backend, run_stack

from gateway.client import DeviceKey
from gateway.demo_keys import DEMO_AUDIENCE, DEMO_ISSUER, ensure_demo_keys, load_private_key

QUOTE = "/api/quotes/600519.SH"
ECHO = "/__debug/echo"


async def _get(s: aiohttp.ClientSession, st: Stack, path: str, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with s.get(st.url + path, headers=headers) as r:
        return r.status, await r.json(), r.headers


def _proofed(st: Stack, device: DeviceKey, token: str, path: str = QUOTE, *, scheme: str = "Bearer",
             method: str = "GET") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}", "DPoP": device.proof(method, st.url + path, token)}


def _terminal(echo: dict[str, Any]) -> str:
    return next(v for k, v in echo["headers"] if k.lower() == "x-portcullis-terminal")


async def test_bearer_token_with_a_proof_gets_the_device_id(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        token = st.token()
        status, echo, _ = await _get(s, st, ECHO, _proofed(st, device, token, ECHO))
        plain_status, plain, _ = await _get(s, st, ECHO, {"Authorization": f"Bearer {token}"})
    assert status == 200 and f"DEVID={device.thumbprint};" in _terminal(echo)
    assert not any(k.lower() == "dpop" for k, _ in echo["headers"])  # the proof is never forwarded
    assert plain_status == 200 and "DEVID=;" in _terminal(plain)     # no proof: the device is unknown


async def test_bound_token_without_a_proof_is_refused(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        token = st.token(extra={"cnf": {"jkt": device.thumbprint}})
        bearer = await _get(s, st, QUOTE, {"Authorization": f"Bearer {token}"})
        dpop = await _get(s, st, QUOTE, {"Authorization": f"DPoP {token}"})
    for status, body, headers in (bearer, dpop):
        assert (status, body["error"]) == (401, "dpop_required")
        assert headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')


async def test_bound_token_with_its_device_proof_passes(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        token = st.token(extra={"cnf": {"jkt": device.thumbprint}})
        first = await _get(s, st, QUOTE, _proofed(st, device, token, scheme="DPoP"))
        second = await _get(s, st, QUOTE, _proofed(st, device, token))  # the Bearer scheme, still proven
    assert first[0] == 200 and second[0] == 200


async def test_bound_token_with_another_devices_proof_is_refused(tmp_path: Path) -> None:
    device, thief = DeviceKey.generate(), DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        token = st.token(extra={"cnf": {"jkt": device.thumbprint}})
        status, body, headers = await _get(s, st, QUOTE, _proofed(st, thief, token, scheme="DPoP"))
    assert (status, body["error"]) == (401, "dpop_key_mismatch")
    assert headers["WWW-Authenticate"].startswith("DPoP ")


async def test_dpop_scheme_needs_a_bound_token(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        status, body, _ = await _get(s, st, QUOTE, _proofed(st, device, st.token(), scheme="DPoP"))
    assert (status, body["error"]) == (401, "token_invalid")


async def test_a_wrong_proof_with_a_plain_token_is_refused_not_ignored(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        token = st.token()
        url = st.url + QUOTE
        good = device.proof("GET", url, token)
        head, payload, sig = good.split(".")
        cases = {
            "bad signature": f"{head}.{payload}.{sig[:-4]}AAAA",
            "wrong htm": device.proof("POST", url, token),
            "wrong htu": device.proof("GET", st.url + "/api/quotes/000001.SZ", token),
            "wrong origin": device.proof("GET", "https://elsewhere.example" + QUOTE, token),
            "stale iat": device.proof("GET", url, token, now=time.time() - 300),
            "future iat": device.proof("GET", url, token, now=time.time() + 300),
            "ath of another token": device.proof("GET", url, st.token()),
            "no ath": device.proof("GET", url),
            "garbage": "not-a-proof",
            "oversized": "e" * 7_000,  # over our bound, under aiohttp's header line limit
        }
        results = {}
        for name, p in cases.items():
            status, body, headers = await _get(s, st, QUOTE, {"Authorization": f"Bearer {token}", "DPoP": p})
            results[name] = (status, body["error"], headers.get("WWW-Authenticate", "").split(",")[0])
        async with s.get(url, headers=[("Authorization", f"Bearer {token}"), ("DPoP", good), ("DPoP", good)]) as r:
            results["two DPoP headers"] = (r.status, (await r.json())["error"],
                                           r.headers["WWW-Authenticate"].split(",")[0])
    assert results == {name: (401, "dpop_invalid", 'DPoP error="invalid_dpop_proof"') for name in results}


async def test_a_replayed_proof_is_refused(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        headers = _proofed(st, device, st.token())
        first = await _get(s, st, QUOTE, headers)
        again = await _get(s, st, QUOTE, headers)
    assert first[0] == 200
    assert (again[0], again[1]["error"]) == (401, "dpop_replayed")


async def test_a_proof_replayed_to_another_gateway_sharing_redis_is_refused(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    state = {"backend": "redis", "url": redis_url, "prefix": redis_prefix, "timeout": 2.0}
    device = DeviceKey.generate()
    # Both gateways are told the public origin clients use (as behind a load balancer).
    async with run_backend(keys) as url, \
            run_stack(tmp_path, backend_url=url, state=state,
                      dpop={"origins": ["https://api.broker.example"]}) as first, \
            run_stack(tmp_path, backend_url=url, state=state,
                      dpop={"origins": ["https://api.broker.example"]}) as second, \
            aiohttp.ClientSession() as s:
        token = first.token(extra={"cnf": {"jkt": device.thumbprint}})
        proof = device.proof("GET", "https://api.broker.example" + QUOTE + "?depth=5", token)
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        one = await _get(s, first, QUOTE + "?depth=5", headers)
        two = await _get(s, second, QUOTE, headers)
        local = await _get(s, first, QUOTE, _proofed(first, device, token, scheme="DPoP"))
    assert one[0] == 200
    assert (two[0], two[1]["error"]) == (401, "dpop_replayed")
    assert (local[0], local[1]["error"]) == (401, "dpop_invalid")  # htu names the gateway's own address


def _token_without_jti(tmp: Path, thumbprint: str) -> str:
    """An IdP token without jti (RFC 7519 makes it optional), so no revocation lookup needs the store."""
    keys = ensure_demo_keys(tmp / "keys")
    now = int(time.time())
    claims = {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": "alice", "accounts": ["A1"], "roles": ["client"],
              "iat": now, "nbf": now, "exp": now + 600, "cnf": {"jkt": thumbprint}}
    return jwt.encode(claims, load_private_key(keys.issuer_key), algorithm="ES256",
                      headers={"kid": keys.issuer_kid})


async def test_read_route_with_the_store_down_still_catches_replays_in_process(
        tmp_path: Path, private_redis: PrivateRedis) -> None:
    device = DeviceKey.generate()
    token = _token_without_jti(tmp_path, device.thumbprint)
    state = {"backend": "redis", "url": private_redis.url, "prefix": "ptest:dpop:", "timeout": 0.5}
    async with run_stack(tmp_path, state=state) as st, aiohttp.ClientSession() as s:
        seen_before = _proofed(st, device, token, scheme="DPoP")
        assert (await _get(s, st, QUOTE, seen_before))[0] == 200       # remembered in Redis and locally
        private_redis.stop()
        fresh = _proofed(st, device, token, scheme="DPoP")
        degraded = await _get(s, st, QUOTE, fresh)
        replay = await _get(s, st, QUOTE, fresh)
        earlier = await _get(s, st, QUOTE, seen_before)
        trade = await s.post(st.url + "/api/accounts/A1/orders", json={"symbol": "600519.SH"},
                             headers=_proofed(st, device, token, "/api/accounts/A1/orders", scheme="DPoP",
                                              method="POST"))
        trade_status, trade_body = trade.status, await trade.json()
    assert degraded[0] == 200                                             # the quote route fails open
    assert (replay[0], replay[1]["error"]) == (401, "dpop_replayed")      # ... but never blindly
    assert (earlier[0], earlier[1]["error"]) == (401, "dpop_replayed")
    assert (trade_status, trade_body["error"]) == (503, "state_unavailable")  # money fails closed


async def test_admin_listener_refuses_device_bound_tokens(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s:
        admin = st.token(sub="ops", accounts=(), roles=("admin",), extra={"cnf": {"jkt": device.thumbprint}})
        async with s.get(st.admin_url + "/admin/status", headers={"Authorization": f"Bearer {admin}"}) as r:
            status, body = r.status, await r.json()
    assert (status, body["error"]) == (401, "dpop_required")
