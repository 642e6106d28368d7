"""DPoP proof verification (RFC 9449) and thumbprints (RFC 7638), without sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.authn.dpop import MAX_PROOF_BYTES, ProofVerifier, ReplayCache
from gateway.client import DeviceKey, access_token_hash, thumbprint
from gateway.config import parse
from gateway.errors import ConfigError, GatewayError
from gateway.jose import jwk_thumbprint

# RFC 7638 section 3.1: the example RSA key and its published thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3o"
         "knjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6"
         "qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJ"
         "zKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# RFC 9449 figure 2 (line breaks removed): a proof for POST https://server.example.com/token
# at iat 1562262616, by the key whose thumbprint section 6.1 publishes.
RFC9449_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpD"
    "a0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6"
    "IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUu"
    "Y29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FN"
    "yJK70nfbV37xRZT3Lg"
)
RFC9449_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
RFC9449_JWK = {"kty": "EC", "crv": "P-256", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
               "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}
# RFC 9449 section 7.1: an access token and its ath.
RFC9449_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC9449_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"

ORIGIN = "https://api.broker.example"
URL = ORIGIN + "/api/quotes/600519.SH"
PATH = "/api/quotes/600519.SH"
TOKEN = "header.payload.signature"
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def es256_sign(key: ec.EllipticCurvePrivateKey, signing_input: str) -> str:
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def ec_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": int(NOW),
                            "ath": access_token_hash(TOKEN)}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def proof(key: ec.EllipticCurvePrivateKey | None = None, header: dict[str, Any] | None = None,
          **over: Any) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    head = header if header is not None else {"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_jwk(key)}
    signing_input = f"{b64json(head)}.{b64json(claims(**over))}"
    return f"{signing_input}.{es256_sign(key, signing_input)}"


def verify(p: str, verifier: ProofVerifier | None = None, **over: Any) -> Any:
    args: dict[str, Any] = {"method": "GET", "path": PATH, "origins": {ORIGIN},
                            "ath": access_token_hash(TOKEN), "now": NOW}
    args.update(over)
    return (verifier or ProofVerifier()).verify(p, **args)


def refused(p: str, verifier: ProofVerifier | None = None, **over: Any) -> str:
    with pytest.raises(GatewayError) as err:
        verify(p, verifier, **over)
    assert (err.value.code, err.value.status) == ("dpop_invalid", 401)
    return err.value.message


# -- the RFCs' own values ------------------------------------------------------------


def test_rfc7638_thumbprint_vector_on_both_sides() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT
    assert thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_rfc9449_example_key_thumbprint() -> None:
    assert jwk_thumbprint(RFC9449_JWK) == RFC9449_JKT == thumbprint(RFC9449_JWK)


def test_rfc9449_example_ath() -> None:
    assert access_token_hash(RFC9449_TOKEN) == RFC9449_ATH


def test_rfc9449_example_proof_verifies_with_its_thumbprint() -> None:
    got = ProofVerifier().verify(RFC9449_PROOF, method="POST", path="/token",
                                 origins={"https://server.example.com"}, ath=None, now=1562262616)
    assert (got.jkt, got.jti, got.iat) == (RFC9449_JKT, "-BwC3ESc6acc2lTc", 1562262616.0)


# -- the happy path and the claims -------------------------------------------------


def test_client_sdk_proof_verifies_and_names_the_device() -> None:
    device = DeviceKey.generate()
    p = device.proof("get", URL + "?x=1#frag", TOKEN, now=NOW)
    got = verify(p)
    assert got.jkt == device.thumbprint and got.iat == NOW


def test_htu_query_and_fragment_are_ignored_and_default_port_normalised() -> None:
    assert verify(proof(htu="HTTPS://API.Broker.Example:443/api/quotes/600519.SH?q=1#f")).jti == "j-1"


def test_wrong_method_is_refused() -> None:
    assert "htm" in refused(proof(htm="POST"))


@pytest.mark.parametrize("htu", [
    "https://api.broker.example/api/quotes/000001.SZ",     # another resource
    "https://evil.example/api/quotes/600519.SH",           # another origin
    "http://api.broker.example/api/quotes/600519.SH",      # another scheme
    "https://api.broker.example:8443/api/quotes/600519.SH",
    "https://user@api.broker.example/api/quotes/600519.SH",
    "/api/quotes/600519.SH",                               # not absolute
    "https://api.broker.example/api/quotes/%2e%2e/x",      # ambiguous path
])
def test_wrong_htu_is_refused(htu: str) -> None:
    assert "htu" in refused(proof(htu=htu))


@pytest.mark.parametrize("offset", [-61, 61, -3600, 10**9])
def test_stale_or_future_iat_is_refused(offset: int) -> None:
    assert "iat" in refused(proof(iat=int(NOW) + offset))


@pytest.mark.parametrize("offset", [-60, 0, 60])
def test_iat_within_the_window_is_accepted(offset: int) -> None:
    assert verify(proof(iat=int(NOW) + offset)).jti == "j-1"


@pytest.mark.parametrize("iat", ["1800000000", True, None, float("inf")])
def test_iat_that_is_not_a_number_is_refused(iat: Any) -> None:
    p = proof(iat=iat) if iat is not None else proof(iat=None)
    if iat == float("inf"):  # json.dumps writes Infinity, which strict parsing refuses
        assert "payload" in refused(p)
    else:
        assert "iat" in refused(p)


def test_ath_mismatch_or_missing_is_refused() -> None:
    assert "ath" in refused(proof(ath=access_token_hash("another.token.value")))
    assert "ath" in refused(proof(ath=None))


def test_ath_is_not_needed_without_an_access_token() -> None:
    assert verify(proof(ath=None), ath=None).jti == "j-1"


@pytest.mark.parametrize("jti", [None, "", 7, "x" * 129])
def test_missing_or_bad_jti_is_refused(jti: Any) -> None:
    assert "jti" in refused(proof(jti=jti) if jti is not None else proof(jti=None))


def test_a_server_nonce_is_not_required_and_ignored() -> None:
    assert verify(proof(nonce="n-1")).jti == "j-1"


# -- header, key and algorithm ---------------------------------------------------------


def _unsigned(header: dict[str, Any], signature: str = "") -> str:
    return f"{b64json(header)}.{b64json(claims())}.{signature}"


def test_alg_none_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert "algorithm" in refused(_unsigned({"typ": "dpop+jwt", "alg": "none", "jwk": ec_jwk(key)}))


def test_hs256_is_refused() -> None:
    secret = b"k" * 32
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": b64(secret)}}
    signing_input = f"{b64json(header)}.{b64json(claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert "algorithm" in refused(f"{signing_input}.{b64(mac)}")


def test_private_key_in_jwk_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ec_jwk(key), "d": b64(key.private_numbers().private_value.to_bytes(32, "big"))}
    assert "private" in refused(proof(key, header={"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}))


@pytest.mark.parametrize("change", [
    {"typ": "JWT"}, {"typ": None}, {"jwk": None}, {"jwk": "x"}, {"crit": ["exp"]},
    {"alg": "ES384"}, {"alg": "RS256"}, {"alg": "EdDSA"},
])
def test_unacceptable_headers_are_refused(change: dict[str, Any]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_jwk(key), **change}
    refused(proof(key, header={k: v for k, v in header.items() if v is not None}))


def test_jwk_of_another_curve_or_off_the_curve_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-384", "x": b64(p384.x.to_bytes(48, "big")), "y": b64(p384.y.to_bytes(48, "big"))}
    refused(_unsigned({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, "AA"))
    off = {"kty": "EC", "crv": "P-256", "x": b64(b"\x01" * 32), "y": b64(b"\x02" * 32)}
    assert "P-256" in refused(_unsigned({"typ": "dpop+jwt", "alg": "ES256", "jwk": off}, "AA"))


def test_signature_by_another_key_is_refused() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_jwk(key)}
    signing_input = f"{b64json(header)}.{b64json(claims())}"
    assert "signature" in refused(f"{signing_input}.{es256_sign(other, signing_input)}")


def test_tampered_payload_is_refused() -> None:
    head, _, sig = proof().split(".")
    assert "signature" in refused(f"{head}.{b64json(claims(htm='GET', jti='j-2'))}.{sig}")


@pytest.mark.parametrize("garbage", [
    "", "x", "a.b", "a.b.c.d", "!!!.e30.AA", "e30.@@@.AA", "\u00e9.e30.AA", ".e30.AA",
    "e30.e30.AA",                           # header {} (no typ)
    b64(b"[1]") + ".e30.AA",                # header not an object
    b64(b'{"a":1,"a":2}') + ".e30.AA",      # duplicate members
    "eyJ0eXAiOiJkcG9wK2p3dCJ9A.e30.AA",    # length 1 mod 4
    "e31.e30.AA",                           # non-canonical base64url (unused bits set)
])
def test_garbage_is_refused_without_crashing(garbage: str) -> None:
    refused(garbage)


def test_oversized_proof_is_refused_before_parsing() -> None:
    big = proof(htu=URL + "?" + "a" * MAX_PROOF_BYTES)
    assert len(big) > MAX_PROOF_BYTES
    assert "larger" in refused(big)


def test_truncated_signature_is_refused() -> None:
    p = proof()
    assert "signature" in refused(p[: p.rindex(".") + 10])


def test_eddsa_when_configured() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().public_bytes_raw())}
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}
    signing_input = f"{b64json(header)}.{b64json(claims())}"
    p = f"{signing_input}.{b64(key.sign(signing_input.encode()))}"
    assert verify(p, ProofVerifier(algorithms=("ES256", "EdDSA"))).jkt == jwk_thumbprint(jwk)
    assert "algorithm" in refused(p)  # ES256 only by default


def test_parsed_headers_are_cached_per_device_and_bounded() -> None:
    verifier = ProofVerifier(key_cache_size=2)
    device = DeviceKey.generate()
    for i in range(3):
        verify(device.proof("GET", URL, TOKEN, now=NOW, jti=f"j{i}"), verifier)
    assert verifier.cached_keys == 1
    for _ in range(3):
        verify(DeviceKey.generate().proof("GET", URL, TOKEN, now=NOW), verifier)
    assert verifier.cached_keys == 2


def test_a_cached_header_still_checks_each_signature() -> None:
    verifier = ProofVerifier()
    key = ec.generate_private_key(ec.SECP256R1())
    verify(proof(key), verifier)
    head, payload, _ = proof(key, jti="j-2").split(".")
    assert "signature" in refused(f"{head}.{payload}.{b64(bytes(64))}", verifier)


# -- the in-process replay memory -------------------------------------------------------


def test_replay_cache_refuses_what_it_has_seen() -> None:
    cache = ReplayCache(10, ttl=121)
    assert cache.add("a", iat=NOW, now=NOW)
    assert not cache.add("a", iat=NOW, now=NOW + 1)
    assert cache.add("a", iat=NOW + 200, now=NOW + 200)  # expired: its proof is too old anyway


def test_a_full_replay_cache_refuses_what_it_may_have_forgotten() -> None:
    cache = ReplayCache(2, ttl=121)
    for i, key in enumerate("abc"):
        cache.remember(key, iat=NOW + i, now=NOW + i)
    assert len(cache) == 2
    assert not cache.add("a", iat=NOW, now=NOW + 3)        # forgotten: not vouched for
    assert not cache.add("z", iat=NOW - 5, now=NOW + 3)    # as old as the forgotten ones
    assert cache.add("n", iat=NOW + 3, now=NOW + 3)        # a fresh proof is fine


# -- configuration ---------------------------------------------------------------------------


def _cfg(dpop: dict[str, Any]) -> Any:
    return parse({"gateway": {"security": False}, "dpop": dpop}, Path("."))


def test_config_normalises_origins() -> None:
    cfg = _cfg({"origins": ["HTTPS://API.Broker.Example:443/", "http://127.0.0.1:8080"], "iat_window": 30})
    assert cfg.dpop.origins == ("https://api.broker.example", "http://127.0.0.1:8080")
    assert cfg.dpop.iat_window == 30 and cfg.dpop.algorithms == ("ES256",)


@pytest.mark.parametrize(("dpop", "message"), [
    ({"algorithms": ["HS256"]}, "dpop.algorithms: 'HS256' is not allowed"),
    ({"algorithms": ["none"]}, "dpop.algorithms: 'none' is not allowed"),
    ({"origins": ["https://api.example/v1"]}, "dpop.origins[0]: expected scheme://host[:port]"),
    ({"iat_window": 0}, "dpop.iat_window: must be >= 1"),
    ({"iat_window": 7200}, "dpop.iat_window: must be at most 3600"),
    ({"replay_cache_size": 0}, "dpop.replay_cache_size: must be between"),
    ({"orgins": []}, "dpop.orgins: unknown key"),
])
def test_invalid_config_names_the_key(dpop: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _cfg(dpop)


def test_device_key_round_trips_through_a_private_file(tmp_path: Path) -> None:
    device = DeviceKey.generate()
    path = tmp_path / "device.pem"
    device.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert DeviceKey.load(path).thumbprint == device.thumbprint
    with pytest.raises(FileExistsError):
        device.save(path)
    assert "PRIVATE" not in repr(device)


def test_proofs_are_unique_per_request() -> None:
    device = DeviceKey.generate()
    a, b = (device.proof("GET", URL, TOKEN) for _ in range(2))
    assert a != b
    now = time.time()
    assert verify(a, now=now).jti != verify(b, now=now).jti


def test_dpop_cost_script_runs() -> None:
    """loadtests/dpop_cost.py runs (its numbers are docs/PERFORMANCE.md's "DPoP proofs")."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "loadtests" / "dpop_cost.py"
    out = subprocess.run([sys.executable, str(script), "--n", "20", "--rounds", "1"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    costs = json.loads(out)["us_per_call"]
    for name in ("es256_verify", "pyjwt_decode", "verifier_cold", "verifier_warm", "authenticate_with_proof"):
        assert costs[name] > 0, costs
