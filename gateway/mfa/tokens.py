"""Step-up tokens: what a completed challenge yields and the client retries with.

A compact JWS (HS256 under the gateway's own step-up key, shared by every
gateway process through a key file; nobody else verifies it), header
``typ: step-up+jwt``. Claims::

    iss, aud      "portcullis-step-up", "portcullis"
    sub           the customer
    acr, amr      the level reached and how (RFC 8176 values), auth_time
    iat, exp, jti short-lived (transaction: 120 s by default)
    cid           the challenge it completed
    ath           base64url SHA-256 of the access token it is bound to
    cnf.jkt       the device key it is bound to (absent: the request had none)
    txn           the request binding's digest (transaction tokens only)

The client sends it in ``X-Portcullis-Step-Up`` with the retried request.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

ISSUER = "portcullis-step-up"
AUDIENCE = "portcullis"
TYP = "step-up+jwt"
HEADER = "X-Portcullis-Step-Up"


class StepUpTokenError(Exception):
    """The token is malformed, forged or expired (the message says which, for the audit record)."""


class StepUpTokenExpired(StepUpTokenError):
    """A genuine token past its ``exp``: it proves nothing any more (and is not an attack)."""


@dataclass(frozen=True, slots=True)
class StepUpClaims:
    sub: str
    acr: str
    amr: tuple[str, ...]
    auth_time: int
    exp: int
    jti: str
    cid: str
    ath: str
    jkt: str | None
    txn: str | None


def load_key(path: Path, *, create: bool) -> bytes:
    """The 32-byte signing key from ``path`` (base64), created with mode 0600 when asked and absent."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"step-up key file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    key = base64.b64decode(path.read_text().strip(), validate=True)
    if len(key) < 32:
        raise ValueError(f"step-up key file {path}: the key must be at least 32 bytes")
    return key


class StepUpTokens:
    def __init__(self, key: bytes, *, leeway: float = 5.0) -> None:
        if len(key) < 32:
            raise ValueError("the step-up key must be at least 32 bytes")
        self._key = key
        self._leeway = leeway

    def __repr__(self) -> str:
        return "StepUpTokens(<key>)"

    def issue(self, *, sub: str, acr: str, amr: list[str], auth_time: int, ttl: int, cid: str, ath: str,
              jkt: str | None, txn: str | None, now: int) -> tuple[str, StepUpClaims]:
        claims: dict[str, Any] = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "acr": acr, "amr": amr, "auth_time": auth_time,
            "iat": now, "exp": now + ttl, "jti": secrets.token_urlsafe(18), "cid": cid, "ath": ath,
        }
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        if txn is not None:
            claims["txn"] = txn
        token = jwt.encode(claims, self._key, algorithm="HS256", headers={"typ": TYP})
        return token, _claims(claims)

    def verify(self, token: str, now: float) -> StepUpClaims:
        if len(token) > 4096:
            raise StepUpTokenError("too long")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != TYP:
                raise StepUpTokenError("not a step-up token")
            doc = jwt.decode(token, self._key, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER,
                             leeway=self._leeway, options={
                                 "require": ["exp", "iat", "sub", "jti", "acr", "auth_time", "cid", "ath"],
                                 "verify_iat": False, "verify_exp": False})
        except StepUpTokenError:
            raise
        except (jwt.InvalidTokenError, json.JSONDecodeError, ValueError) as exc:
            raise StepUpTokenError(type(exc).__name__) from None
        exp = doc["exp"]  # checked here, against the gateway's clock (pyjwt would read its own)
        if isinstance(exp, bool) or not isinstance(exp, int):
            raise StepUpTokenError("exp")
        if exp < now - self._leeway:
            raise StepUpTokenExpired("expired")
        try:
            return _claims(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise StepUpTokenError(f"claims: {type(exc).__name__}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("not a string")
    return value


def _claims(doc: dict[str, Any]) -> StepUpClaims:
    cnf = doc.get("cnf")
    jkt = _str(cnf["jkt"]) if isinstance(cnf, dict) else None
    txn = doc.get("txn")
    amr = doc.get("amr", [])
    if not isinstance(amr, list) or not all(isinstance(a, str) for a in amr):
        raise ValueError("amr")
    for name in ("auth_time", "exp"):
        if isinstance(doc[name], bool) or not isinstance(doc[name], int):
            raise ValueError(name)
    return StepUpClaims(sub=_str(doc["sub"]), acr=_str(doc["acr"]), amr=tuple(amr), auth_time=doc["auth_time"],
                        exp=doc["exp"], jti=_str(doc["jti"]), cid=_str(doc["cid"]), ath=_str(doc["ath"]), jkt=jkt,
                        txn=_str(txn) if txn is not None else None)
