"""Verifying the gateway's identity assertion (``X-Portcullis-Identity``).

The gateway signs, per request, an ES256 JWT with ``iss="portcullis-gateway"``,
``aud="portcullis-upstream"``, ``sub``, ``accounts``, ``roles``, ``acr``,
``risk``, ``rid``, ``iat`` and ``exp`` (iat + 60). The backend trusts nothing
else about the caller: no assertion, or one that fails any check, is a 401.

Keys are parsed once from the JWKS file; each request then costs one header
parse and one ECDSA verification. Results are deliberately not cached.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import DemoError, assertion_invalid

ISSUER = "portcullis-gateway"
AUDIENCE = "portcullis-upstream"
HEADER = "X-Portcullis-Identity"
LEEWAY_SECONDS = 5.0
_REQUIRED = ["iss", "aud", "sub", "iat", "exp"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the gateway says the caller is."""

    sub: str
    accounts: frozenset[str]
    roles: tuple[str, ...]
    acr: str | None
    risk: str | None
    rid: str | None
    claims: dict[str, Any]


def load_jwks(path: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    """Public P-256 keys by kid from a JWKS file; ValueError if it has none usable."""
    try:
        document = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read identity JWKS {str(path)!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"identity JWKS {str(path)!r} is not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"identity JWKS {str(path)!r} has no \"keys\" list")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "EC" or entry.get("crv") != "P-256":
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "ES256") != "ES256":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"identity JWKS {str(path)!r}: every key needs a kid")
        key = jwt.PyJWK(entry, algorithm="ES256").key
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"identity JWKS {str(path)!r}: key {kid!r} is not a public key")
        keys[kid] = key
    if not keys:
        raise ValueError(f"identity JWKS {str(path)!r} has no ES256 P-256 signing key")
    return keys


class AssertionVerifier:
    """Checks assertions against pre-loaded keys; raises DemoError (401) on failure.

    Verified with `cryptography` directly rather than pyjwt: pyjwt 2.15 checks
    every character of the token before decoding, which here cost as much as
    the ECDSA verification itself, and the benchmark's direct and bare targets
    would then measure this backend rather than the proxies. The checks are
    the same: ES256 only, no crit, iss, aud, exp, iat, nbf.
    """

    def __init__(self, keys: dict[str, ec.EllipticCurvePublicKey],
                 clock: Callable[[], float] = time.time, *, hmac_key: bytes | None = None) -> None:
        if not keys and hmac_key is None:
            raise ValueError("at least one key is required")
        if hmac_key is not None and len(hmac_key) < 32:
            raise ValueError("the HMAC key must have at least 32 bytes")
        self._hmac_key = hmac_key
        self._keys = dict(keys)
        self._only = next(iter(self._keys.values())) if len(self._keys) == 1 else None
        self._clock = clock
        self._ecdsa = ec.ECDSA(hashes.SHA256())

    @classmethod
    def from_jwks_file(cls, path: Path) -> AssertionVerifier:
        return cls(load_jwks(path))

    @classmethod
    def from_files(cls, jwks: Path | None, hmac_key: Path | None) -> AssertionVerifier:
        """ES256 with the JWKS, HS256 with this backend's own key, or both."""
        return cls(load_jwks(jwks) if jwks else {},
                   hmac_key=load_hmac_key(hmac_key) if hmac_key else None)

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise assertion_invalid(f"the {HEADER} header is missing")
        parts = token.split(".")
        if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
            raise assertion_invalid("the identity assertion is malformed")
        header = _json_segment(parts[0])
        alg = header.get("alg")
        if "crit" in header or not ((alg == "ES256" and self._keys) or (alg == "HS256" and self._hmac_key)):
            raise assertion_invalid("the identity assertion's algorithm is not allowed")
        raw = _b64decode(parts[2])
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        if alg == "HS256":
            assert self._hmac_key is not None
            if not hmac.compare_digest(hmac.digest(self._hmac_key, signing_input, "sha256"), raw):
                raise assertion_invalid("the identity assertion's signature is not valid")
        else:
            self._verify_es256(header, signing_input, raw)
        claims = _json_segment(parts[1])
        _check_claims(claims, self._clock())
        return _identity(claims)

    def _verify_es256(self, header: dict[str, Any], signing_input: bytes, raw: bytes) -> None:
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else self._only
        if key is None:
            raise assertion_invalid("the identity assertion's key is not known")
        if len(raw) != 64:
            raise assertion_invalid("the identity assertion's signature is not valid")
        signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        try:
            key.verify(signature, signing_input, self._ecdsa)
        except InvalidSignature:
            raise assertion_invalid("the identity assertion's signature is not valid") from None


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def load_hmac_key(path: Path) -> bytes:
    """This backend's own HS256 key: base64url text of at least 32 random bytes."""
    try:
        text = Path(path).read_text("ascii").strip()
    except OSError as exc:
        raise ValueError(f"cannot read identity HMAC key {str(path)!r}: {exc.strerror}") from None
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise ValueError(f"identity HMAC key {str(path)!r} is not base64url text") from None
    if len(key) < 32:
        raise ValueError(f"identity HMAC key {str(path)!r} is shorter than 32 bytes")
    return key


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, binascii.Error):
        raise assertion_invalid("the identity assertion is malformed") from None


def _json_segment(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except ValueError:
        raise assertion_invalid("the identity assertion is malformed") from None
    if not isinstance(value, dict):
        raise assertion_invalid("the identity assertion is malformed")
    return value


def _check_claims(claims: dict[str, Any], now: float) -> None:
    for name in _REQUIRED:
        if name not in claims:
            raise assertion_invalid(f"the identity assertion is not valid: missing {name!r} claim")
    if claims["iss"] != ISSUER:
        raise assertion_invalid("the identity assertion's issuer is not trusted")
    aud = claims["aud"]
    if not (aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud)):
        raise assertion_invalid("the identity assertion is not meant for us")
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (exp, iat)):
        raise assertion_invalid("the identity assertion is not valid: bad time claims")
    if exp <= now - LEEWAY_SECONDS:
        raise assertion_invalid("the identity assertion has expired")
    if iat > now + LEEWAY_SECONDS or (isinstance(nbf, (int, float)) and nbf > now + LEEWAY_SECONDS):
        raise assertion_invalid("the identity assertion is not valid yet")


def _identity(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    accounts = claims.get("accounts")
    roles = claims.get("roles")
    acr = claims.get("acr")
    risk = claims.get("risk")
    rid = claims.get("rid")
    if not isinstance(sub, str) or not sub:
        raise _bad_claim("sub")
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise _bad_claim("accounts")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _bad_claim("roles")
    if acr is not None and not isinstance(acr, str):
        raise _bad_claim("acr")
    if risk is not None and not isinstance(risk, str):
        raise _bad_claim("risk")
    if rid is not None and not isinstance(rid, str):
        raise _bad_claim("rid")
    return Identity(
        sub=sub,
        accounts=frozenset(accounts),
        roles=tuple(roles),
        acr=acr,
        risk=risk,
        rid=rid,
        claims=claims,
    )


def _bad_claim(name: str) -> DemoError:
    return assertion_invalid(f"the identity assertion's {name} claim is malformed")
