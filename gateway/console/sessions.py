"""Console sessions: who is signed in, until when, and since when stepped up (in the state store).

A session is created when an officer signs in with a token from the identity
provider (role ``compliance``); the browser holds only a random id in an
HttpOnly, SameSite=Strict cookie, and the store keeps the session under the
SHA-256 of that id (a dump of the store gives no usable cookie). It ends after
``idle_timeout`` without a page, after ``max_session``, at the token's own
expiry, or at sign-out, whichever comes first. A TOTP step-up stamps it (and
gives it a new id: a privilege change never keeps an id seen before it);
changes need a stamp at most ``step_up_max_age`` old. Every process of the
gateway reads the same store, so any of them serves the next page.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from gateway.state.base import StateStore

__all__ = ["Session", "Sessions"]

_PREFIX = "console:session:"


@dataclass(frozen=True, slots=True)
class Session:
    sub: str
    roles: tuple[str, ...]
    created: float
    expires: float
    """The absolute end: the sign-in's ``max_session`` or the token's expiry, whichever is first."""
    csrf: str
    """The token every form and script request of this session carries (checked in constant time)."""
    stepped_up: float | None = None
    """When the officer last proved their TOTP (None: not in this session)."""

    def step_up_age(self, now: float) -> float | None:
        return None if self.stepped_up is None else now - self.stepped_up


def _key(session_id: str) -> str:
    return _PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, state: StateStore, *, idle_timeout: float, max_session: float) -> None:
        self._state = state
        self._idle = idle_timeout
        self._max = max_session

    async def _put(self, session_id: str, session: Session, now: float) -> None:
        ttl = min(self._idle, session.expires - now)
        await self._state.set(_key(session_id), orjson.dumps(asdict(session)), ttl=max(ttl, 1.0))

    async def create(self, sub: str, roles: tuple[str, ...], token_exp: float, now: float) -> tuple[str, Session]:
        session = Session(sub=sub, roles=roles, created=now, expires=min(now + self._max, token_exp),
                          csrf=secrets.token_urlsafe(32))
        session_id = secrets.token_urlsafe(32)
        await self._put(session_id, session, now)
        return session_id, session

    async def load(self, session_id: str, now: float) -> Session | None:
        """The live session with this id (its idle timer restarted), or None."""
        if not session_id or len(session_id) > 128:
            return None
        raw = await self._state.get(_key(session_id))
        if raw is None:
            return None
        try:
            doc: dict[str, Any] = orjson.loads(raw)
            session = Session(sub=doc["sub"], roles=tuple(doc["roles"]), created=float(doc["created"]),
                              expires=float(doc["expires"]), csrf=doc["csrf"],
                              stepped_up=None if doc.get("stepped_up") is None else float(doc["stepped_up"]))
        except (ValueError, KeyError, TypeError):
            await self.end(session_id)
            return None
        if now >= session.expires:
            await self.end(session_id)
            return None
        await self._put(session_id, session, now)
        return session

    async def stepped_up(self, session_id: str, session: Session, now: float) -> tuple[str, Session]:
        """The session stamped as stepped up now, under a new id (the old one ends)."""
        fresh = replace(session, stepped_up=now, csrf=secrets.token_urlsafe(32))
        new_id = secrets.token_urlsafe(32)
        await self._put(new_id, fresh, now)
        await self.end(session_id)
        return new_id, fresh

    async def end(self, session_id: str) -> None:
        await self._state.delete(_key(session_id))
