"""The identity assertion in both schemes, as the backend must verify it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import jwt
import pytest
from harness import gateway_config, run_backend, run_stack

from gateway.config import parse
from gateway.demo_keys import ensure_demo_keys
from gateway.errors import ConfigError
from gateway.identity import HmacIdentitySigner, IdentitySigner, load_hmac_key
from gateway.server import Gateway


def _claims(token: str, key: object, alg: str) -> dict[str, object]:
    return jwt.decode(token, key, algorithms=[alg], audience="portcullis-upstream",  # type: ignore[arg-type]
                      issuer="portcullis-gateway")


def test_es256_assertion_verifies_with_public_jwks(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path)
    signer = IdentitySigner.from_file(keys.identity_key, issuer="portcullis-gateway",
                                      audience="portcullis-upstream", ttl=60)
    token = signer.sign(sub="alice", accounts=["A1"], roles=["client"], acr=None, risk="low",
                        request_id="r1", now=int(__import__("time").time()))
    public = jwt.PyJWK(json.loads(keys.identity_jwks.read_text())["keys"][0]).key
    claims = _claims(token, public, "ES256")
    assert (claims["sub"], claims["rid"], claims["accounts"]) == ("alice", "r1", ["A1"])
    assert jwt.get_unverified_header(token)["kid"] == keys.identity_kid


def test_hs256_assertion_verifies_with_the_upstream_key(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path)
    signer = HmacIdentitySigner.from_file(keys.identity_hmac, issuer="portcullis-gateway",
                                          audience="portcullis-upstream", ttl=30)
    token = signer.sign(sub="bob", accounts=["B9"], roles=["client"], acr="a", risk="high",
                        request_id="r2", now=int(__import__("time").time()))
    claims = _claims(token, load_hmac_key(keys.identity_hmac), "HS256")
    assert (claims["sub"], claims["risk"], int(claims["exp"]) - int(claims["iat"])) == ("bob", "high", 30)  # type: ignore[call-overload]
    assert keys.identity_hmac.read_text().strip() not in jwt.get_unverified_header(token)["kid"]
    with pytest.raises(jwt.InvalidSignatureError):
        _claims(token, b"x" * 32, "HS256")


@pytest.mark.parametrize("size", [32, 64, 65, 100])
def test_hs256_assertion_verifies_for_keys_shorter_and_longer_than_the_block(size: int) -> None:
    import secrets
    import time

    key = secrets.token_bytes(size)  # over 64 bytes, RFC 2104 hashes the key first
    signer = HmacIdentitySigner(key, issuer="portcullis-gateway", audience="portcullis-upstream", ttl=30)
    for rid in ("r1", "r2"):  # the precomputed pad states are copied, never consumed
        token = signer.sign(sub="bob", accounts=["B9"], roles=["client"], acr=None, risk="low",
                            request_id=rid, now=int(time.time()))
        assert _claims(token, key, "HS256")["rid"] == rid


def test_terminal_information_is_sanitised_each_time() -> None:
    from gateway.identity import terminal_info

    for _ in range(2):  # the second from the user-agent memo
        value = terminal_info(client_ip="198.51.100.7", client_port=443, device_id=None,
                              user_agent="evil;UA=forged\r\n")
        assert value.endswith(";UA=evil_UA_forged__") and value.count(";") == 4


def test_short_hmac_key_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text(base64.urlsafe_b64encode(b"k" * 16).decode())
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_hmac_key(short)


def test_signing_key_required_only_for_upstreams_without_hmac_key(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    data = gateway_config(keys, tmp_path, "http://127.0.0.1:9")
    del data["identity"]["signing_key"]
    wanted = r"identity.signing_key: required for upstreams without identity_hmac_key \(trading\)"
    with pytest.raises(ConfigError, match=wanted):
        parse(data, tmp_path)
    data["upstreams"]["trading"]["identity_hmac_key"] = str(keys.identity_hmac)
    assert parse(data, tmp_path).identity.signing_key is None


def test_unusable_hmac_key_stops_startup_naming_the_upstream(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    data = gateway_config(keys, tmp_path, "http://127.0.0.1:9")
    data["upstreams"]["trading"]["identity_hmac_key"] = str(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="upstreams.trading.identity_hmac_key"):
        Gateway(parse(data, tmp_path))


async def test_backend_accepts_hs256_assertion_from_gateway(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    async with run_backend(keys) as url:
        upstreams = {"trading": {"url": url, "identity_hmac_key": str(keys.identity_hmac)}}
        async with run_stack(tmp_path, backend_url=url, upstreams=upstreams) as st, \
                aiohttp.ClientSession() as s:
            async with s.get(st.url + "/__debug/echo", headers=st.auth()) as r:
                echo = await r.json()
            async with s.get(st.url + "/api/accounts/A1", headers=st.auth()) as r:
                profile_status = r.status
    assert r.status == 200 and profile_status == 200
    assert echo["identity_error"] is None and echo["identity"]["sub"] == "alice"
    header = dict((k.lower(), v) for k, v in echo["headers"])["x-portcullis-identity"]
    assert jwt.get_unverified_header(header)["alg"] == "HS256"
