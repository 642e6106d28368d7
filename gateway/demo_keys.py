"""Demo key material: the demo identity provider and the gateway's assertion key.

``portcullis demo`` and ``portcullis token`` need keys that exist without any
set-up: :func:`ensure_demo_keys` creates them once in a directory and reuses
them afterwards, so tokens minted yesterday still verify today. Two ES256
(P-256) key pairs live there:

- ``issuer-key.pem`` / ``issuer-jwks.json``: the demo identity provider. The
  gateway trusts the JWKS as issuer :data:`DEMO_ISSUER`; :func:`mint_token`
  signs customer tokens with the private key.
- ``gateway-identity-key.pem`` / ``gateway-identity-jwks.json``: the gateway
  signs the ``X-Portcullis-Identity`` assertion it forwards upstream; the demo
  backend verifies it with the JWKS.

Private keys are written with mode 0600 and are never regenerated once
present. Key ids are RFC 7638 JWK thumbprints, so a JWKS rebuilt from the same
key has the same kid.

This module is a pure helper for the CLI and tests: it imports nothing of the
aiohttp server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.jose import ec_public_jwk
from gateway.jose import jwk_thumbprint as _thumbprint

__all__ = [
    "DEMO_AUDIENCE",
    "DEMO_ISSUER",
    "DEMO_TOTP_SUBS",
    "DemoKeys",
    "ensure_demo_keys",
    "DEMO_OFFICERS",
    "ensure_demo_totp",
    "jwk_thumbprint",
    "load_private_key",
    "mint_token",
    "public_jwk",
    "read_demo_totp",
]

DEMO_ISSUER = "https://idp.demo.portcullis.local"
DEMO_AUDIENCE = "portcullis"

ISSUER_KEY_FILE = "issuer-key.pem"
ISSUER_JWKS_FILE = "issuer-jwks.json"
IDENTITY_KEY_FILE = "gateway-identity-key.pem"
IDENTITY_JWKS_FILE = "gateway-identity-jwks.json"
IDENTITY_HMAC_FILE = "trading-identity-hmac.key"

_ALG = "ES256"


@dataclass(frozen=True, slots=True)
class DemoKeys:
    """Where the demo keys live, and their key ids (RFC 7638 thumbprints)."""

    issuer_key: Path
    issuer_jwks: Path
    identity_key: Path
    identity_jwks: Path
    issuer_kid: str
    identity_kid: str
    identity_hmac: Path
    """The demo trading upstream's own HS256 assertion key (base64url text)."""


# --------------------------------------------------------------------------
# JWK helpers (RFC 7517, RFC 7518 section 6.2, RFC 7638)


def jwk_thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint of a P-256 public key."""
    return _thumbprint(ec_public_jwk(key))


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key, with kid, use and alg."""
    jwk = ec_public_jwk(key)
    jwk.update({"kid": jwk_thumbprint(key), "use": "sig", "alg": _ALG})
    return jwk


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM P-256 private key."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise ValueError(f"{path}: not a P-256 EC private key")
    return key


# --------------------------------------------------------------------------
# Files


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` atomically; False if it already exists.

    The bytes go to a private temporary file first and are then hard-linked
    into place, so a concurrent caller never sees a half-written key and two
    callers racing cannot both win.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # os.open filters the mode through the umask
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        fresh = ec.generate_private_key(ec.SECP256R1())
        pem = fresh.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(path, pem, 0o600)  # a concurrent winner's key is just as good
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # a private key readable by others is a leak in waiting
    return load_private_key(path)


def _ensure_jwks(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    jwk = public_jwk(key.public_key())
    wanted = {"keys": [jwk]}
    try:
        current = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        current = None
    if current != wanted:
        text = json.dumps(wanted, indent=2, sort_keys=True) + "\n"
        _replace(path, text.encode("utf-8"), 0o644)
    return jwk["kid"]


def _ensure_hmac_key(path: Path) -> None:
    if not path.exists():
        text = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=") + b"\n"
        _write_new(path, text, 0o600)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


def ensure_demo_keys(directory: Path) -> DemoKeys:
    """Create the demo keys in ``directory`` unless they exist; return their paths.

    Idempotent: existing private keys are kept (only their mode is tightened
    to 0600 if needed) and each JWKS is rewritten only if it no longer
    matches its key.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    issuer_key = directory / ISSUER_KEY_FILE
    identity_key = directory / IDENTITY_KEY_FILE
    issuer_jwks = directory / ISSUER_JWKS_FILE
    identity_jwks = directory / IDENTITY_JWKS_FILE
    issuer_kid = _ensure_jwks(issuer_jwks, _ensure_key(issuer_key))
    identity_kid = _ensure_jwks(identity_jwks, _ensure_key(identity_key))
    identity_hmac = directory / IDENTITY_HMAC_FILE
    _ensure_hmac_key(identity_hmac)
    return DemoKeys(
        issuer_key=issuer_key,
        issuer_jwks=issuer_jwks,
        identity_key=identity_key,
        identity_jwks=identity_jwks,
        issuer_kid=issuer_kid,
        identity_kid=identity_kid,
        identity_hmac=identity_hmac,
    )


# --------------------------------------------------------------------------
# Tokens


def mint_token(
    keys: DemoKeys,
    *,
    sub: str,
    accounts: Sequence[str],
    roles: Sequence[str] = ("client",),
    ttl: int = 900,
    acr: str | None = "urn:portcullis:acr:pwd",
    amr: Sequence[str] = ("pwd",),
    extra: Mapping[str, Any] | None = None,
    now: int | None = None,
) -> str:
    """An ES256 access token from the demo identity provider.

    Claims: iss, aud, sub, accounts, roles, acr (left out when ``None``), amr,
    auth_time, iat, nbf, exp, jti. ``extra`` is merged last, so a test can
    override any claim (an old ``auth_time``, a foreign ``aud``).
    """
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    if isinstance(accounts, str) or isinstance(roles, str) or isinstance(amr, str):
        raise TypeError("accounts, roles and amr are sequences of strings, not a string")
    issued = int(time.time()) if now is None else int(now)
    claims: dict[str, Any] = {
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": sub,
        "accounts": list(accounts),
        "roles": list(roles),
        "amr": list(amr),
        "auth_time": issued,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    if acr is not None:
        claims["acr"] = acr
    if extra:
        claims.update(extra)
    return jwt.encode(
        claims,
        load_private_key(keys.issuer_key),
        algorithm=_ALG,
        headers={"kid": keys.issuer_kid, "typ": "JWT"},
    )


# --------------------------------------------------------------------------
# The demo customers' TOTP secrets ([step_up] demo_totp_file)

TOTP_FILE = "totp.json"
DEMO_OFFICERS: tuple[str, ...] = ("officer-li", "officer-wang")
"""The demo's compliance officers: two, so one can propose and the other approve (four eyes)."""
DEMO_TOTP_SUBS: tuple[str, ...] = ("alice", "bob", *DEMO_OFFICERS)
"""Whose TOTP ``portcullis demo`` enrols: the demo backend's customers alice and bob, and the officers
(their code is the console's step-up before a change)."""


def read_demo_totp(path: Path) -> dict[str, str]:
    """``{sub: base32 secret}`` from a demo TOTP file; ValueError if it is not that."""
    doc = json.loads(Path(path).read_text("utf-8"))
    if not isinstance(doc, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in doc.items()):
        raise ValueError(f"{path}: expected a JSON object {{sub: base32 secret}}")
    for sub, secret in doc.items():
        try:
            base64.b32decode(secret + "=" * (-len(secret) % 8))
        except ValueError:
            raise ValueError(f"{path}: the secret of {sub!r} is not base32") from None
    return dict(doc)


def ensure_demo_totp(path: Path, subs: Sequence[str] = DEMO_TOTP_SUBS) -> dict[str, str]:
    """The demo TOTP file at ``path``, created (mode 0600) with a fresh 160-bit secret per sub if absent.

    Created once and reused: existing secrets are kept (so an authenticator app set up from them
    keeps working); a sub missing from the file gets a new secret.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    current = read_demo_totp(path) if path.exists() else {}
    missing = [s for s in subs if s not in current]
    if missing:
        fresh = {**current, **{s: base64.b32encode(secrets.token_bytes(20)).decode("ascii") for s in missing}}
        text = (json.dumps(fresh, indent=2, sort_keys=True) + "\n").encode("utf-8")
        if current or not _write_new(path, text, 0o600):
            if not current:  # a concurrent creator won: use its secrets
                return ensure_demo_totp(path, subs)
            _replace(path, text, 0o600)
        current = fresh
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return current
