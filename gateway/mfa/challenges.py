"""A step-up challenge: bound to one pending request, single-use, short-lived.

The binding is what the customer approves: method, path, account and the
SM3 digest of the canonical body (the decrypted body for an encrypted
request, so an encrypted retry matches; JSON bodies are canonicalised with
sorted keys, so key order or whitespace does not matter). A transaction
challenge (trade and transfer tiers) yields a token that approves that
request once; a session challenge (other tiers, the policy's ``max_age``)
yields a token that raises the session's acr until it expires.

State in the shared store (every gateway process sees it)::

    mfa:ch:{id}            the challenge (JSON), kept GRACE seconds past expiry to say "expired"
    mfa:ch:{id}:done       methods completed so far (a set)
    mfa:ch:{id}:fail:{m}   failed attempts of method m
    mfa:ch:{id}:used       set once when the challenge yields its token (single use)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes

from gateway.jose import b64url
from gateway.state.base import StateStore

GRACE = 600.0
"""Seconds an expired challenge is remembered, so its id answers 410 challenge_expired, not 404."""

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def body_digest(body: bytes | None, json_body: Any = None) -> str | None:
    """SM3 of the canonical body: sorted-key compact JSON when it parsed, else the raw bytes."""
    if json_body is not None:
        return b64url(sm3(orjson.dumps(json_body, option=orjson.OPT_SORT_KEYS)))
    if not body:
        return None
    return b64url(sm3(body))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def challenge_header(acr: str, max_age: int | None, description: str) -> str:
    """The RFC 9470 ``WWW-Authenticate`` value asking for ``acr`` (and ``max_age``)."""
    params = ['error="insufficient_user_authentication"', f'error_description="{_quote(description)}"',
              f'acr_values="{_quote(acr)}"']
    if max_age is not None:
        params.append(f"max_age={int(max_age)}")
    return "Bearer " + ", ".join(params)


@dataclass(frozen=True, slots=True)
class Binding:
    method: str
    path: str
    account: str | None
    body: str | None
    """body_digest() of the request body, None without one."""

    def digest(self) -> str:
        """One value for the whole binding (what a transaction step-up token carries)."""
        doc = [self.method, self.path, self.account, self.body]
        return b64url(sm3(orjson.dumps(doc)))


def valid_id(value: str) -> bool:
    return 16 <= len(value) <= 64 and set(value) <= _ID_CHARS


@dataclass(frozen=True, slots=True)
class Challenge:
    id: str
    sub: str
    ath: str
    """base64url SHA-256 of the access token it was issued to (RFC 9449 ``ath``)."""
    jkt: str | None
    """The device key's thumbprint, None when the request had no DPoP proof."""
    binding: Binding
    transaction: bool
    acr: str
    max_age: int | None
    allowed: tuple[str, ...] | None
    """The policy's methods (None: any the ladder lists)."""
    methods: tuple[str, ...]
    """Offered when issued: enrolled, usable and reaching ``acr``."""
    reasons: tuple[str, ...]
    risk_factors: tuple[str, ...]
    created: float
    expires_at: float
    request_id: str
    tier: str

    def to_json(self) -> bytes:
        doc = asdict(self)
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, raw: bytes) -> Challenge:
        doc: dict[str, Any] = orjson.loads(raw)
        b = doc.pop("binding")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
        return cls(binding=Binding(**b), **fields)


class ChallengeStore:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(24)

    async def put(self, ch: Challenge, now: float) -> None:
        await self._store.set(f"mfa:ch:{ch.id}", ch.to_json(), ch.expires_at - now + GRACE)

    async def get(self, challenge_id: str) -> Challenge | None:
        if not valid_id(challenge_id):
            return None
        raw = await self._store.get(f"mfa:ch:{challenge_id}")
        return Challenge.from_json(raw) if raw is not None else None

    async def done(self, ch: Challenge) -> list[str]:
        return sorted(await self._store.smembers(f"mfa:ch:{ch.id}:done"))

    async def mark_done(self, ch: Challenge, method: str, now: float) -> list[str]:
        async with self._store.batch() as b:
            b.sadd(f"mfa:ch:{ch.id}:done", method, ch.expires_at - now + GRACE)
            members = b.smembers(f"mfa:ch:{ch.id}:done")
        return sorted(members.value)

    async def failures(self, ch: Challenge, methods: Sequence[str]) -> dict[str, int]:
        values = await self._store.mget([f"mfa:ch:{ch.id}:fail:{m}" for m in methods])
        return {m: int(v) if v is not None else 0 for m, v in zip(methods, values, strict=True)}

    async def fail(self, ch: Challenge, method: str, now: float) -> int:
        return await self._store.incr(f"mfa:ch:{ch.id}:fail:{method}", 1, ch.expires_at - now + GRACE)

    async def consume(self, ch: Challenge, now: float) -> bool:
        """True once: the challenge yields its token; every later call is False."""
        return await self._store.set_if_absent(f"mfa:ch:{ch.id}:used", b"1", ch.expires_at - now + GRACE)
