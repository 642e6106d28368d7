"""The signature layer against published JWS vectors (RFC 7515 appendix A, Wycheproof).

Vectors are read at test time from the shared folder (``../shared/vectors``
next to the repository, or ``$PORTCULLIS_VECTORS``) and never copied here.
They carry no iss/aud/exp, so they go through
:func:`gateway.authn.tokens.verify_signature`, the parsing, header policy,
key policy and signature steps that ``TokenVerifier`` runs on every token.

Each case gets the key of its vector and an allow-list holding the vector's
algorithm. Where the gateway's policy is stricter than the vector's verdict,
:data:`EXPECTED_DIFFERENCES` says so and why.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.authn.tokens import verify_signature
from gateway.errors import (
    TOKEN_ALG_NOT_ALLOWED,
    TOKEN_INVALID,
    TOKEN_KEY_UNKNOWN,
    TOKEN_MALFORMED,
    ErrorKind,
    GatewayError,
)

_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
VECTORS = Path(os.environ.get("PORTCULLIS_VECTORS", _DEFAULT))
RFC7515 = VECTORS / "jwt" / "rfc7515_appendixA.json"
WYCHEPROOF = VECTORS / "wycheproof" / "testvectors_v1"
JWS_SCHEMA = "json_web_signature_schema_v1.json"

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")

# Vectors whose structure is broken: refused before any key or algorithm is looked at.
MALFORMED = {
    "rejectsMissingSignatureAndSeparator", "rejectsMissingPayloadAndSeparator",
    "rejectsMissingHeader", "rejectsMissingHeaderAndSeparator", "rejectsMissingHeaderAndSignature",
    "rejectsMissingHeaderSignatureAndSeparators", "rejectsMissingHeaderSignatureAndSeparator",
    "rejectsEmptyString", "rejectsExtraEmptyComponent", "rejectsExtraComponent",
    "rejectsValidJsonSerialization", "rejectsSpacesInMac", "rejectsInvalidCharacterInsertedInMac",
    "rejects0ReplacedbyInvalidCharacter", "rejectsInvalidCharacters", "spacesInHeader",
    "invalidCharactersInHeader", "spacesInPayload", "invalidCharactersInPayload",
    "InvalidCharacterInPayload", "ModifiedUnusedBitsInPayload", "MacOfIncorrectlyEncodedMessage",
    "InvalidCharacterInsertedInHeader", "InvalidCharacterInsertedInPayload",
}
# The key is not a signing key for this token: wrong kid, use=enc, key_ops without verify.
KEY_UNKNOWN = {"rejectsModifiedHeader", "rejectWrongUse", "rejectWrongKeyOps"}

EXPECTED_DIFFERENCES = {
    "HMAC": "HS256 vectors that Wycheproof/RFC 7515 call valid are refused "
            "(token_alg_not_allowed): the gateway never accepts HMAC, so a public key can "
            "never be turned into a MAC secret",
    "lenient-base64": "tcId 372/373 (a '?' inserted in header/payload) are 'valid' for "
                      "decoders that skip junk; we parse base64url strictly (token_malformed)",
    "ES521": "tcId 347/351: the RFC 7520 key declares alg 'ES521', not a registered JWS "
             "algorithm; a JWK's alg must equal the token's (ES512), so they are refused "
             "(token_alg_not_allowed)",
    "PS256-key": "tcId 346/350: the RFC 7520 key declares alg PS256 but the token is PS384; "
                 "an issuer allowing the key's algorithm refuses it (token_alg_not_allowed), "
                 "and a JWK's declared alg must match the token's anyway",
    "identical": "tcId 367/370 are byte-identical to the valid tcId 357 (their padding was "
                 "lost); being HMAC they are refused like it",
}

# RFC 7520's P-521 key says "ES521"; the issuer configuration would say ES512.
_ALG_ALIASES = {"ES521": "ES512"}


@dataclass(frozen=True)
class Case:
    id: str
    jws: str
    jwk: dict[str, Any] | None
    alg: str
    valid: bool
    comment: str
    flags: tuple[str, ...]


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _header_alg(jws: str) -> str | None:
    try:
        alg = json.loads(_b64decode(jws.split(".")[0]))["alg"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return alg if isinstance(alg, str) else None


def _public(jwk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}


def _rfc7515_cases() -> list[Any]:
    data = json.loads(RFC7515.read_text())
    cases: list[Any] = []
    for name, v in data["vectors"].items():
        if not v.get("compact"):
            cases.append(pytest.param(None, id=name, marks=pytest.mark.skip(
                reason="the vector file has no compact serialization for this case")))
            continue
        alg = _header_alg(v["compact"]) or "none"
        jwk = _public(v["jwk"]) if "jwk" in v else None
        cases.append(pytest.param(Case(
            id=name, jws=v["compact"], jwk=jwk, alg=alg,
            valid=v["expect"].startswith("accept"), comment=name, flags=(),
        ), id=name))
    return cases


def _wycheproof_cases() -> list[Any]:
    cases: list[Any] = []
    for path in sorted(WYCHEPROOF.glob("json_web_*_test.json")):
        doc = json.loads(path.read_text())
        if doc.get("schema") != JWS_SCHEMA:
            continue
        for group in doc["testGroups"]:
            jwk = group.get("public") or _public(group["private"])
            for t in group["tests"]:
                alg = jwk.get("alg") or _header_alg(t["jws"]) or "none"
                case_id = f"wycheproof-{t['tcId']}-{t['comment']}"
                cases.append(pytest.param(Case(
                    id=case_id, jws=t["jws"], jwk=jwk, alg=_ALG_ALIASES.get(alg, alg),
                    valid=t["result"] == "valid", comment=t["comment"], flags=tuple(t["flags"]),
                ), id=case_id))
    return cases


def _all_cases() -> list[Any]:
    if not RFC7515.is_file() or not WYCHEPROOF.is_dir():
        return [pytest.param(None, id="vectors-missing", marks=pytest.mark.skip(
            reason=f"test vectors not found at {VECTORS}: check out the shared vectors next "
                   "to the repository (../shared/vectors) or set PORTCULLIS_VECTORS"))]
    return _rfc7515_cases() + _wycheproof_cases()


def expected(case: Case) -> ErrorKind | None:
    """The gateway's verdict: None to accept, else the error kind."""
    if case.comment in MALFORMED or "JsonSerialization" in case.flags:
        return TOKEN_MALFORMED
    alg = _header_alg(case.jws)
    if alg is None or alg.lower() == "none" or alg.upper().startswith("HS"):
        return TOKEN_ALG_NOT_ALLOWED  # "AlgIsNone" and every HMAC vector
    if alg != case.alg:
        return TOKEN_ALG_NOT_ALLOWED  # WrongPrimitive with another alg in the header
    declared = (case.jwk or {}).get("alg")
    if declared is not None and declared != alg:
        return TOKEN_ALG_NOT_ALLOWED
    if case.comment in KEY_UNKNOWN:
        return TOKEN_KEY_UNKNOWN
    return None if case.valid else TOKEN_INVALID


def _key(case: Case) -> jwt.PyJWK:
    # Unsecured (alg none) vectors come with no key, or RFC 7515 A.5's empty "k":
    # any key will do, since they must be refused before a key is used.
    if case.jwk is None or (case.alg == "none" and not case.jwk.get("k")):
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        return jwt.PyJWK(jwt.algorithms.ECAlgorithm.to_jwk(pub, as_dict=True))
    return jwt.PyJWK(case.jwk)


@pytest.mark.parametrize("case", _all_cases())
def test_jws_vector(case: Case) -> None:
    want = expected(case)
    key = _key(case)
    if want is None:
        payload = verify_signature(case.jws, key, (case.alg,))
        assert payload == _b64decode(case.jws.split(".")[1])
        return
    with pytest.raises(GatewayError) as info:
        verify_signature(case.jws, key, (case.alg,))
    assert info.value.kind is want, info.value.message
