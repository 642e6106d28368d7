"""TokenVerifier and RevocationList: one behaviour per test, keys made per module."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.authn import RevocationList, Subject, TokenVerifier
from gateway.config import IssuerConfig
from gateway.errors import (
    STATE_UNAVAILABLE,
    TOKEN_ALG_NOT_ALLOWED,
    TOKEN_AUDIENCE,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_ISSUER_UNKNOWN,
    TOKEN_KEY_UNKNOWN,
    TOKEN_MALFORMED,
    TOKEN_NOT_YET_VALID,
    TOKEN_REVOKED,
    GatewayError,
)

ISS = "https://idp.example"
AUD = "portcullis"
LEEWAY = 30.0

# -- helpers ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class DictStore:
    """The two state-store methods RevocationList uses, over a dict; counts reads."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, float | None]] = {}
        self.reads = 0

    async def get(self, key: str) -> bytes | None:
        self.reads += 1
        item = self.data.get(key)
        return item[0] if item else None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.data[key] = (value, ttl)


class BrokenStore:
    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("down")

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        raise ConnectionError("down")


def public_jwk(private_key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    pub = private_key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(pub, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def write_jwks(path: Path, *jwks: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(jwks)}))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 600,
        "jti": "jti-1", "accounts": ["A1"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Any, alg: str = "ES256", kid: str | None = "ec1",
         headers: dict[str, Any] | None = None, **overrides: Any) -> str:
    hdrs = dict(headers or {})
    if kid is not None:
        hdrs["kid"] = kid
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=hdrs)


def sign_raw(header: dict[str, Any], payload: dict[str, Any], key: Any, alg: str) -> str:
    """A token with exactly this header, signed with pyjwt's algorithm object."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    algo = jwt.algorithms.get_default_algorithms()[alg]
    sig = algo.sign(signing_input.encode(), algo.prepare_key(key))
    return f"{signing_input}.{b64(sig)}"


async def refused(verifier: TokenVerifier, token: str) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await verifier.verify(token)
    return info.value


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def attacker_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks_path(tmp_path: Path, ec_key: Any, rsa_key: Any, ed_key: Any) -> Path:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwk(ec_key, "ec1"), public_jwk(rsa_key, "rsa1"),
               public_jwk(ed_key, "ed1"))
    return path


@pytest.fixture
def mono() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def issuer(jwks_path: Path) -> IssuerConfig:
    return IssuerConfig(iss=ISS, audience=(AUD, "other-aud"),
                        algorithms=("ES256", "RS256", "EdDSA"), jwks_file=jwks_path, leeway=LEEWAY)


@pytest.fixture
def make_verifier(mono: FakeClock) -> Callable[..., TokenVerifier]:
    def make(*issuers: IssuerConfig, **kwargs: Any) -> TokenVerifier:
        kwargs.setdefault("monotonic", mono)
        return TokenVerifier(issuers, **kwargs)

    return make


@pytest.fixture
def verifier(make_verifier: Callable[..., TokenVerifier], issuer: IssuerConfig) -> TokenVerifier:
    return make_verifier(issuer)


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each full (signature-verifying) decode the verifier makes."""
    calls: list[str] = []
    real = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


# -- valid tokens ----------------------------------------------------------------------


async def test_valid_token_yields_subject_fields(verifier: TokenVerifier, ec_key: Any) -> None:
    now = int(time.time())
    token = mint(ec_key, sub="alice", accounts=["A1", "A2"], roles=["client", "trader"],
                 acr="urn:acr:mfa", amr=["pwd", "otp"], auth_time=now - 5, jti="j-42",
                 iat=now, exp=now + 300, cnf={"jkt": "thumb"})
    subject = await verifier.verify(token)
    assert (subject.sub, subject.iss, subject.accounts, subject.roles) == (
        "alice", ISS, ("A1", "A2"), ("client", "trader"))
    assert (subject.acr, subject.amr, subject.auth_time, subject.jti) == (
        "urn:acr:mfa", ("pwd", "otp"), now - 5, "j-42")
    assert (subject.exp, subject.iat, subject.kid, subject.cnf_jkt) == (
        now + 300, now, "ec1", "thumb")
    assert subject.token_digest == hashlib.sha256(token.encode()).digest()
    assert subject.claims["accounts"] == ("A1", "A2")


@pytest.mark.parametrize(("key_fixture", "alg", "kid"), [
    ("ec_key", "ES256", "ec1"), ("rsa_key", "RS256", "rsa1"), ("ed_key", "EdDSA", "ed1"),
])
async def test_each_key_type_verifies_its_algorithm(
    verifier: TokenVerifier, request: pytest.FixtureRequest, key_fixture: str, alg: str, kid: str
) -> None:
    key = request.getfixturevalue(key_fixture)
    subject = await verifier.verify(mint(key, alg, kid))
    assert subject.kid == kid


async def test_claims_are_read_only(verifier: TokenVerifier, ec_key: Any) -> None:
    subject = await verifier.verify(mint(ec_key))
    with pytest.raises(TypeError):
        subject.claims["sub"] = "mallory"  # type: ignore[index]


async def test_missing_accounts_and_roles_default(verifier: TokenVerifier, ec_key: Any) -> None:
    subject = await verifier.verify(mint(ec_key, accounts=None))
    assert (subject.accounts, subject.roles) == ((), ("client",))


async def test_single_role_claim_becomes_roles(verifier: TokenVerifier, ec_key: Any) -> None:
    subject = await verifier.verify(mint(ec_key, role="advisor"))
    assert subject.roles == ("advisor",)


async def test_audience_may_be_any_configured(verifier: TokenVerifier, ec_key: Any) -> None:
    subject = await verifier.verify(mint(ec_key, aud=["someone-else", "other-aud"]))
    assert subject.sub == "alice"


async def test_token_without_kid_uses_sole_key(
    make_verifier: Callable[..., TokenVerifier], tmp_path: Path, ec_key: Any
) -> None:
    path = tmp_path / "one.json"
    write_jwks(path, public_jwk(ec_key, None))
    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=("ES256",), jwks_file=path))
    assert (await v.verify(mint(ec_key, kid=None))).kid is None


# -- time and audience -----------------------------------------------------------------


async def test_expired_token_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    now = int(time.time())
    err = await refused(verifier, mint(ec_key, iat=now - 900, exp=now - LEEWAY - 5))
    assert err.kind is TOKEN_EXPIRED


async def test_token_inside_leeway_accepted(verifier: TokenVerifier, ec_key: Any) -> None:
    now = int(time.time())
    subject = await verifier.verify(mint(ec_key, iat=now - 900, exp=now - 5))
    assert subject.exp == now - 5


async def test_nbf_in_future_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    err = await refused(verifier, mint(ec_key, nbf=int(time.time()) + 600))
    assert err.kind is TOKEN_NOT_YET_VALID


async def test_expiry_checked_with_injected_clock_on_first_verify(
    make_verifier: Callable[..., TokenVerifier], issuer: IssuerConfig, ec_key: Any
) -> None:
    v = make_verifier(issuer, clock=FakeClock(time.time() + 3600))
    err = await refused(v, mint(ec_key))
    assert err.kind is TOKEN_EXPIRED


async def test_wrong_audience_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    err = await refused(verifier, mint(ec_key, aud="another-service"))
    assert err.kind is TOKEN_AUDIENCE


async def test_missing_audience_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    err = await refused(verifier, mint(ec_key, aud=None))
    assert err.kind is TOKEN_AUDIENCE


@pytest.mark.parametrize("missing", ["exp", "sub"])
async def test_required_claim_missing_refused(
    verifier: TokenVerifier, ec_key: Any, missing: str
) -> None:
    overrides: dict[str, Any] = {missing: None}
    err = await refused(verifier, mint(ec_key, **overrides))
    assert err.kind is TOKEN_INVALID


# -- issuer and algorithm --------------------------------------------------------------


async def test_unknown_issuer_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    err = await refused(verifier, mint(ec_key, iss="https://evil.example"))
    assert err.kind is TOKEN_ISSUER_UNKNOWN


async def test_missing_issuer_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    err = await refused(verifier, mint(ec_key, iss=None))
    assert err.kind is TOKEN_INVALID


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_refused_even_if_configured(
    make_verifier: Callable[..., TokenVerifier], jwks_path: Path, alg: str
) -> None:
    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=("ES256", alg),
                                   jwks_file=jwks_path))
    header = b64(json.dumps({"alg": alg, "kid": "ec1"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    err = await refused(v, token)
    assert err.kind is TOKEN_ALG_NOT_ALLOWED


@pytest.mark.parametrize("allowed", [("RS256",), ("RS256", "HS256")])
async def test_hs256_with_rsa_public_key_as_secret_refused(
    make_verifier: Callable[..., TokenVerifier], jwks_path: Path, rsa_key: Any,
    allowed: tuple[str, ...],
) -> None:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa1'}).encode())}."
                     f"{b64(json.dumps(claims()).encode())}")
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=allowed,
                                   jwks_file=jwks_path))
    err = await refused(v, f"{signing_input}.{b64(mac)}")
    assert err.kind is TOKEN_ALG_NOT_ALLOWED


async def test_rs256_refused_when_only_es256_allowed(
    make_verifier: Callable[..., TokenVerifier], jwks_path: Path, rsa_key: Any
) -> None:
    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=("ES256",),
                                   jwks_file=jwks_path))
    err = await refused(v, mint(rsa_key, "RS256", "rsa1"))
    assert err.kind is TOKEN_ALG_NOT_ALLOWED


async def test_alg_not_in_allow_list_refused(verifier: TokenVerifier, rsa_key: Any) -> None:
    err = await refused(verifier, mint(rsa_key, "PS256", "rsa1"))
    assert err.kind is TOKEN_ALG_NOT_ALLOWED


async def test_rsa_key_never_verifies_es256(verifier: TokenVerifier, ec_key: Any) -> None:
    err = await refused(verifier, mint(ec_key, "ES256", "rsa1"))
    assert err.kind is TOKEN_ALG_NOT_ALLOWED


async def test_p256_key_never_verifies_es384(
    make_verifier: Callable[..., TokenVerifier], tmp_path: Path, ec_key: Any
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "p256.json"
    write_jwks(path, public_jwk(ec_key, "k"))
    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=("ES256", "ES384"),
                                   jwks_file=path))
    err = await refused(v, mint(p384, "ES384", "k"))
    assert err.kind is TOKEN_ALG_NOT_ALLOWED


async def test_key_declaring_another_alg_refused(
    make_verifier: Callable[..., TokenVerifier], tmp_path: Path, rsa_key: Any
) -> None:
    path = tmp_path / "ps.json"
    write_jwks(path, public_jwk(rsa_key, "rsa1", alg="PS256"))
    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=("RS256", "PS256"),
                                   jwks_file=path))
    err = await refused(v, mint(rsa_key, "RS256", "rsa1"))
    assert err.kind is TOKEN_ALG_NOT_ALLOWED


async def test_signature_by_other_key_refused(verifier: TokenVerifier, attacker_key: Any) -> None:
    err = await refused(verifier, mint(attacker_key, "ES256", "ec1"))
    assert err.kind is TOKEN_INVALID


# -- headers that must not be followed -------------------------------------------------


@pytest.mark.parametrize("header", ["jwk", "jku", "x5u", "x5c"])
async def test_key_carrying_headers_are_not_used(
    make_verifier: Callable[..., TokenVerifier], ec_key: Any, attacker_key: Any, header: str
) -> None:
    jwks = json.dumps({"keys": [public_jwk(ec_key, "ec1")]}).encode()
    fetched: list[str] = []

    async def fetcher(url: str) -> bytes:
        fetched.append(url)
        return jwks

    values = {
        "jwk": public_jwk(attacker_key, "ec1"),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": [b64(b"attacker certificate")],
    }
    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=("ES256",),
                                   jwks_url="https://idp.example/jwks.json"), jwks_fetcher=fetcher)
    token = mint(attacker_key, "ES256", "ec1", headers={header: values[header]})
    err = await refused(v, token)
    assert err.kind is TOKEN_INVALID
    assert fetched == ["https://idp.example/jwks.json"]


async def test_unknown_crit_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    token = sign_raw({"alg": "ES256", "kid": "ec1", "crit": ["exp-ext"], "exp-ext": 1},
                     claims(), ec_key, "ES256")
    err = await refused(verifier, token)
    assert err.kind is TOKEN_INVALID


async def test_crit_naming_b64_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    # pyjwt understands "b64"; the gateway supports no critical extension at all.
    token = sign_raw({"alg": "ES256", "kid": "ec1", "crit": ["b64"], "b64": True},
                     claims(), ec_key, "ES256")
    err = await refused(verifier, token)
    assert err.kind is TOKEN_INVALID


async def test_unencoded_payload_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    token = sign_raw({"alg": "ES256", "kid": "ec1", "b64": False}, claims(), ec_key, "ES256")
    err = await refused(verifier, token)
    assert err.kind is TOKEN_INVALID


# -- JWKS refetch ----------------------------------------------------------------------


async def test_unknown_kid_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    err = await refused(verifier, mint(ec_key, kid="nope"))
    assert err.kind is TOKEN_KEY_UNKNOWN


async def test_key_added_to_jwks_file_accepted_after_refetch(
    verifier: TokenVerifier, jwks_path: Path, mono: FakeClock, ec_key: Any
) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    token = mint(new_key, kid="ec2")
    assert (await refused(verifier, token)).kind is TOKEN_KEY_UNKNOWN
    write_jwks(jwks_path, public_jwk(ec_key, "ec1"), public_jwk(new_key, "ec2"))
    mono.now += 31
    assert (await verifier.verify(token)).kid == "ec2"


async def test_unknown_kids_within_interval_fetch_once(
    make_verifier: Callable[..., TokenVerifier], mono: FakeClock, ec_key: Any
) -> None:
    jwks = json.dumps({"keys": [public_jwk(ec_key, "ec1")]}).encode()
    fetched: list[str] = []

    async def fetcher(url: str) -> bytes:
        fetched.append(url)
        return jwks

    v = make_verifier(IssuerConfig(iss=ISS, audience=(AUD,), algorithms=("ES256",),
                                   jwks_url="https://idp.example/jwks.json",
                                   jwks_min_refetch_interval=30.0), jwks_fetcher=fetcher)
    for kid in ("random-1", "random-2", "random-3"):
        assert (await refused(v, mint(ec_key, kid=kid))).kind is TOKEN_KEY_UNKNOWN
    assert len(fetched) == 1
    mono.now += 30
    await refused(v, mint(ec_key, kid="random-4"))
    assert len(fetched) == 2


# -- cache -----------------------------------------------------------------------------


async def test_cache_hit_returns_same_subject_without_verifying(
    verifier: TokenVerifier, ec_key: Any, decode_calls: list[str]
) -> None:
    token = mint(ec_key)
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second is first
    assert decode_calls == ["decode"]


async def test_cache_entry_expires_with_injected_clock(
    make_verifier: Callable[..., TokenVerifier], issuer: IssuerConfig, ec_key: Any,
    decode_calls: list[str],
) -> None:
    clock = FakeClock(time.time())
    v = make_verifier(issuer, clock=clock)
    token = mint(ec_key, exp=int(clock.now) + 60)
    await v.verify(token)
    clock.now += 60 + LEEWAY
    assert (await refused(v, token)).kind is TOKEN_EXPIRED
    assert v.cached == 0
    assert decode_calls == ["decode"]


async def test_cache_drops_entry_when_kid_leaves_jwks(
    verifier: TokenVerifier, jwks_path: Path, mono: FakeClock, ec_key: Any, rsa_key: Any
) -> None:
    token = mint(ec_key, kid="ec1")
    await verifier.verify(token)
    write_jwks(jwks_path, public_jwk(rsa_key, "rsa1"))
    mono.now += 31
    await refused(verifier, mint(ec_key, kid="unknown-kid"))  # triggers the refetch
    assert (await refused(verifier, token)).kind is TOKEN_KEY_UNKNOWN


async def test_cache_keeps_entry_when_other_keys_change(
    verifier: TokenVerifier, jwks_path: Path, mono: FakeClock, ec_key: Any, decode_calls: list[str]
) -> None:
    token = mint(ec_key, kid="ec1")
    first = await verifier.verify(token)
    write_jwks(jwks_path, public_jwk(ec_key, "ec1"))
    mono.now += 31
    await refused(verifier, mint(ec_key, kid="unknown-kid"))
    assert await verifier.verify(token) is first
    assert decode_calls == ["decode"]


async def test_revoked_jti_refused_even_when_cached(
    make_verifier: Callable[..., TokenVerifier], issuer: IssuerConfig, ec_key: Any
) -> None:
    revocations = RevocationList(DictStore())
    v = make_verifier(issuer, revocations=revocations)
    token = mint(ec_key, jti="stolen")
    subject = await v.verify(token)
    await revocations.revoke("stolen", subject.exp)
    assert (await refused(v, token)).kind is TOKEN_REVOKED


async def test_cached_verification_answers_without_io_only_when_it_can(
    make_verifier: Callable[..., TokenVerifier], issuer: IssuerConfig, ec_key: Any
) -> None:
    store = DictStore()
    clock = FakeClock(0.0)
    revocations = RevocationList(store, local_ttl=1.0, clock=clock)
    v = make_verifier(issuer, revocations=revocations)
    token = mint(ec_key, jti="j-cached")
    assert v.verify_cached(token) is None  # never verified: the caller must verify
    subject = await v.verify(token)
    reads = store.reads
    assert v.verify_cached(token) is subject and store.reads == reads  # no store read
    clock.now += 1.5
    assert v.verify_cached(token) is None  # the revocation answer went stale: ask the store
    await revocations.revoke("j-cached", subject.exp)
    with pytest.raises(GatewayError) as info:
        v.verify_cached(token)
    assert info.value.kind is TOKEN_REVOKED


async def test_lru_bound_holds(
    make_verifier: Callable[..., TokenVerifier], issuer: IssuerConfig, ec_key: Any,
    decode_calls: list[str],
) -> None:
    v = make_verifier(issuer, cache_size=2)
    first, second, third = (mint(ec_key, jti=f"j{i}") for i in range(3))
    for token in (first, second, third):
        await v.verify(token)
    assert v.cached == 2
    await v.verify(third)  # still cached
    await v.verify(first)  # evicted: verified again
    assert len(decode_calls) == 4


# -- malformed tokens and claim types --------------------------------------------------


@pytest.mark.parametrize("token", [
    "",
    "abc.def",
    "a.b.c.d",
    "!!!.e30.c2ln",
    "eyJhbGciOiJFUzI1NiJ9=.e30.c2ln",
    f"{b64(b'not json')}.e30.c2ln",
    f"{b64(b'[1, 2]')}.e30.c2ln",
    b64(b'{"alg":"ES256","alg":"none"}') + ".e30.c2ln",
    b64(b'{"alg":"ES256"}') + "." + b64(b"not json") + ".c2ln",
    "eyJhbGciOiJFUzI1NiJ9.e30.c2ln\u00e9",
], ids=["empty", "two-parts", "four-parts", "bad-base64", "padded", "header-not-json",
        "header-not-object", "duplicate-header-member", "payload-not-json", "non-ascii"])
async def test_malformed_token_refused(verifier: TokenVerifier, token: str) -> None:
    assert (await refused(verifier, token)).kind is TOKEN_MALFORMED


async def test_token_over_8_kib_refused(verifier: TokenVerifier, ec_key: Any) -> None:
    token = mint(ec_key, padding="x" * 9 * 1024)
    assert (await refused(verifier, token)).kind is TOKEN_MALFORMED


@pytest.mark.parametrize("bad", [
    {"accounts": "A1"}, {"accounts": ["A1", 7]}, {"roles": "admin"}, {"roles": [None]},
    {"role": ["admin"]}, {"amr": "otp"}, {"acr": 2}, {"auth_time": "yesterday"},
    {"auth_time": True}, {"jti": 5}, {"cnf": "thumb"}, {"cnf": {"jkt": 1}}, {"sub": ""},
], ids=lambda d: "-".join(f"{k}={v!r}" for k, v in d.items()))
async def test_claim_type_error_refused(
    verifier: TokenVerifier, ec_key: Any, bad: dict[str, Any]
) -> None:
    assert (await refused(verifier, mint(ec_key, **bad))).kind is TOKEN_INVALID


@pytest.mark.parametrize("case", ["expired", "bad-signature", "malformed-payload", "audience"])
async def test_error_message_never_contains_token(
    verifier: TokenVerifier, ec_key: Any, attacker_key: Any, case: str
) -> None:
    now = int(time.time())
    token = {
        "expired": mint(ec_key, iat=now - 900, exp=now - 600),
        "bad-signature": mint(attacker_key),
        "malformed-payload": b64(b'{"alg":"ES256"}') + "." + b64(b'["x"]') + ".c2ln",
        "audience": mint(ec_key, aud="elsewhere"),
    }[case]
    err = await refused(verifier, token)
    for part in token.split("."):
        assert part not in str(err) and part not in err.message


def test_subject_is_hashable_without_claims() -> None:
    s = Subject(sub="a", iss=ISS, accounts=(), roles=("client",), acr=None, amr=(),
                auth_time=None, jti=None, exp=1, iat=None, kid=None, cnf_jkt=None,
                token_digest=b"d", claims={"x": 1})
    assert hash(s) == hash(s)


# -- revocation list -------------------------------------------------------------------


async def test_revoke_stores_key_until_exp() -> None:
    store = DictStore()
    revocations = RevocationList(store, grace=0.0, wall_clock=FakeClock(1000.0))
    await revocations.revoke("j1", 1600)
    assert store.data["revoked:jti:j1"] == (b"1", 600.0)


async def test_hot_token_reads_store_once_per_local_ttl() -> None:
    store = DictStore()
    clock = FakeClock(0.0)
    revocations = RevocationList(store, local_ttl=1.0, clock=clock)
    for _ in range(5):
        assert not await revocations.is_revoked("j1")
    clock.now += 1.0
    assert not await revocations.is_revoked("j1")
    assert store.reads == 2


async def test_local_revoke_takes_effect_at_once() -> None:
    revocations = RevocationList(DictStore(), clock=FakeClock(0.0))
    assert not await revocations.is_revoked("j1")
    await revocations.revoke("j1", int(time.time()) + 60)
    assert await revocations.is_revoked("j1")


async def test_remote_revoke_seen_after_local_ttl() -> None:
    store = DictStore()
    clock = FakeClock(0.0)
    here = RevocationList(store, clock=clock)
    elsewhere = RevocationList(store)
    assert not await here.is_revoked("j1")
    await elsewhere.revoke("j1", int(time.time()) + 60)
    clock.now += 1.0
    assert await here.is_revoked("j1")


async def test_store_failure_is_state_unavailable() -> None:
    revocations = RevocationList(BrokenStore())
    with pytest.raises(GatewayError) as info:
        await revocations.is_revoked("j1")
    assert info.value.kind is STATE_UNAVAILABLE
