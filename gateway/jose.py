"""Small JOSE helpers shared by the identity signer and the demo keys (RFC 7515/7517/7638)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.crypto.b64 import b64url_encode

_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


b64url = b64url_encode
"""Unpadded base64url (RFC 7515 section 2)."""


def ec_public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The required members of a P-256 public JWK."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"ES256 needs a P-256 key, not {key.curve.name}")
    nums = key.public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": b64url(nums.x.to_bytes(32, "big")),
            "y": b64url(nums.y.to_bytes(32, "big"))}


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 thumbprint (SHA-256) over the required members, sorted, no spaces."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member")
    return obj


def _reject_constant(_: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def strict_json_object(data: bytes) -> dict[str, Any] | None:
    """A JOSE header or claims set: a JSON object in UTF-8 without duplicate members, NaN or
    Infinity (two parsers must never read one token two ways); None when it is not one."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None
