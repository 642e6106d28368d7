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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import DemoError, assertion_invalid

ISSUER = "portcullis-gateway"
AUDIENCE = "portcullis-upstream"
HEADER = "X-Portcullis-Identity"
LEEWAY_SECONDS = 5.0
_ALGORITHMS = ["ES256"]
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
    """Checks assertions against pre-loaded keys; raises DemoError (401) on failure."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._keys = dict(keys)
        self._only = next(iter(self._keys.values())) if len(self._keys) == 1 else None
        self._jwt = jwt.PyJWT()

    @classmethod
    def from_jwks_file(cls, path: Path) -> AssertionVerifier:
        return cls(load_jwks(path))

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise assertion_invalid(f"the {HEADER} header is missing")
        kid = _header_kid(token)
        key = self._keys.get(kid) if isinstance(kid, str) else self._only
        if key is None:
            raise assertion_invalid("the identity assertion's key is not known")
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=_ALGORITHMS,
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise assertion_invalid("the identity assertion has expired") from None
        except jwt.InvalidAlgorithmError:
            raise assertion_invalid("the identity assertion's algorithm is not allowed") from None
        except jwt.InvalidAudienceError:
            raise assertion_invalid("the identity assertion is not meant for us") from None
        except jwt.InvalidIssuerError:
            raise assertion_invalid("the identity assertion's issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise assertion_invalid("the identity assertion's signature is not valid") from None
        except jwt.InvalidTokenError as exc:
            raise assertion_invalid(f"the identity assertion is not valid: {exc}") from None
        return _identity(claims)


def _header_kid(token: str) -> object:
    """The header's kid, read only to pick a key (pyjwt then checks the header in full).

    pyjwt's own get_unverified_header validates every character of the whole
    token and costs about a third of an ES256 verification; this does not.
    """
    head, dot, _ = token.partition(".")
    try:
        if not dot:
            raise ValueError("no dot")
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        raise assertion_invalid("the identity assertion is malformed") from None
    if not isinstance(header, dict):
        raise assertion_invalid("the identity assertion is malformed")
    return header.get("kid")


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
