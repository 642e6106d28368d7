"""gateway.demo_keys: demo key files, JWKS, and demo tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest

from gateway.demo_keys import (
    DEMO_AUDIENCE,
    DEMO_ISSUER,
    DemoKeys,
    ensure_demo_keys,
    jwk_thumbprint,
    load_private_key,
    mint_token,
)


@pytest.fixture
def keys(tmp_path: Path) -> DemoKeys:
    return ensure_demo_keys(tmp_path / "keys")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verify(keys: DemoKeys, token: str) -> dict[str, object]:
    jwks = jwt.PyJWKSet.from_json(keys.issuer_jwks.read_text())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return jwt.decode(token, key, algorithms=["ES256"], audience=DEMO_AUDIENCE, issuer=DEMO_ISSUER)


def test_creates_four_files(keys: DemoKeys) -> None:
    for path in (keys.issuer_key, keys.issuer_jwks, keys.identity_key, keys.identity_jwks):
        assert path.is_file()
    assert keys.issuer_key.name == "issuer-key.pem"
    assert keys.issuer_jwks.name == "issuer-jwks.json"
    assert keys.identity_key.name == "gateway-identity-key.pem"
    assert keys.identity_jwks.name == "gateway-identity-jwks.json"


def test_private_keys_are_mode_0600(keys: DemoKeys) -> None:
    assert _mode(keys.issuer_key) == 0o600
    assert _mode(keys.identity_key) == 0o600


def test_loose_private_key_mode_is_tightened(keys: DemoKeys) -> None:
    keys.issuer_key.chmod(0o644)
    ensure_demo_keys(keys.issuer_key.parent)
    assert _mode(keys.issuer_key) == 0o600


def test_second_call_keeps_the_keys(keys: DemoKeys) -> None:
    before = {p: p.read_bytes() for p in (keys.issuer_key, keys.identity_key)}
    again = ensure_demo_keys(keys.issuer_key.parent)
    assert again == keys
    assert {p: p.read_bytes() for p in before} == before


def test_missing_jwks_is_rebuilt_from_the_existing_key(keys: DemoKeys) -> None:
    original = json.loads(keys.identity_jwks.read_text())
    keys.identity_jwks.unlink()
    again = ensure_demo_keys(keys.identity_key.parent)
    assert again.identity_kid == keys.identity_kid
    assert json.loads(keys.identity_jwks.read_text()) == original


def test_the_two_keys_differ(keys: DemoKeys) -> None:
    assert keys.issuer_kid != keys.identity_kid
    assert keys.issuer_key.read_bytes() != keys.identity_key.read_bytes()


def test_jwks_holds_one_public_es256_key_with_the_kid(keys: DemoKeys) -> None:
    for path, kid in ((keys.issuer_jwks, keys.issuer_kid), (keys.identity_jwks, keys.identity_kid)):
        document = json.loads(path.read_text())
        [jwk] = document["keys"]
        assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
        assert jwk["alg"] == "ES256" and jwk["use"] == "sig"
        assert jwk["kid"] == kid
        assert "d" not in jwk


def test_kid_is_the_rfc7638_thumbprint(keys: DemoKeys) -> None:
    [jwk] = json.loads(keys.issuer_jwks.read_text())["keys"]
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
        separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert keys.issuer_kid == expected
    assert jwk_thumbprint(load_private_key(keys.issuer_key).public_key()) == expected


def test_minted_token_verifies_against_the_jwks(keys: DemoKeys) -> None:
    token = mint_token(keys, sub="alice", accounts=["A1"])
    claims = _verify(keys, token)
    assert claims["sub"] == "alice"


def test_minted_token_header(keys: DemoKeys) -> None:
    header = jwt.get_unverified_header(mint_token(keys, sub="alice", accounts=["A1"]))
    assert header == {"alg": "ES256", "typ": "JWT", "kid": keys.issuer_kid}


def test_minted_token_carries_the_claims(keys: DemoKeys) -> None:
    token = mint_token(
        keys,
        sub="bob",
        accounts=["B9"],
        roles=("client", "advisor"),
        ttl=120,
        amr=("pwd", "otp"),
        now=1_700_000_000,
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == DEMO_ISSUER
    assert claims["aud"] == DEMO_AUDIENCE
    assert claims["accounts"] == ["B9"]
    assert claims["roles"] == ["client", "advisor"]
    assert claims["acr"] == "urn:portcullis:acr:pwd"
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["iat"] == claims["nbf"] == claims["auth_time"] == 1_700_000_000
    assert claims["exp"] == 1_700_000_120
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


def test_each_token_has_a_fresh_jti(keys: DemoKeys) -> None:
    a = jwt.decode(mint_token(keys, sub="a", accounts=[]), options={"verify_signature": False})
    b = jwt.decode(mint_token(keys, sub="a", accounts=[]), options={"verify_signature": False})
    assert a["jti"] != b["jti"]


def test_acr_none_leaves_the_claim_out(keys: DemoKeys) -> None:
    token = mint_token(keys, sub="alice", accounts=["A1"], acr=None)
    assert "acr" not in jwt.decode(token, options={"verify_signature": False})


def test_extra_claims_are_added_and_may_override(keys: DemoKeys) -> None:
    token = mint_token(
        keys, sub="alice", accounts=["A1"], extra={"cnf": {"jkt": "x"}, "auth_time": 5}, now=100
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": "x"}
    assert claims["auth_time"] == 5


def test_a_string_for_accounts_is_refused(keys: DemoKeys) -> None:
    with pytest.raises(TypeError):
        mint_token(keys, sub="alice", accounts="A1")


def test_expired_token_does_not_verify(keys: DemoKeys) -> None:
    token = mint_token(keys, sub="alice", accounts=["A1"], ttl=60, now=1_000)
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(keys, token)


def test_concurrent_first_calls_agree_on_one_key(tmp_path: Path) -> None:
    directory = tmp_path / "race"
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: ensure_demo_keys(directory), range(8)))
    assert len({r.issuer_kid for r in results}) == 1
    assert len({r.identity_kid for r in results}) == 1
    assert len({r.identity_hmac.read_text() for r in results}) == 1
    assert sorted(p.name for p in directory.iterdir()) == [
        "gateway-identity-jwks.json",
        "gateway-identity-key.pem",
        "issuer-jwks.json",
        "issuer-key.pem",
        "trading-identity-hmac.key",
    ]
