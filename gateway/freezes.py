"""Account freezes in the shared state store, so every gateway process sees them.

A freeze is one string key ``freeze:<account>`` holding a JSON record (who or
what froze it, when, on which request, with which reason codes) plus the
account in the set ``freezes``, the index the compliance API lists. Freezes
never expire: only a compliance officer lifts one (``/admin/freezes``,
gateway/admin_freezes.py).

Reads on the hot path cost nothing extra: the trade routes fetch
``freeze:<account>`` inside the facts step's one state-store batch, transfer
routes with one ``GET`` (gateway/steps/facts.py).

Ordering keeps the index complete without transactions: a freeze writes the
key (``SET NX``) then adds to the index; a lift removes from the index then
deletes the key. Whatever the interleaving, a key that exists at the end is
in the index; the index may briefly name an account whose key is gone, and
:meth:`FreezeStore.all` leaves those out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.state.base import StateStore

KEY_PREFIX = "freeze:"
INDEX_KEY = "freezes"
UNREADABLE = "freeze_record_unreadable"
"""Reason code of a freeze whose record cannot be read: the account stays frozen (fail safe)."""


def freeze_key(account: str) -> str:
    return KEY_PREFIX + account


@dataclass(frozen=True, slots=True)
class Freeze:
    """One freeze as stored. ``by`` is ``policy`` for an obligation (``sub`` is then the customer
    whose request triggered it, ``policy_version`` the bundle that asked)."""

    account: str
    time: float
    reasons: tuple[str, ...]
    by: str
    request_id: str | None = None
    sub: str | None = None
    route: str | None = None
    policy_version: str | None = None

    def public(self) -> dict[str, Any]:
        return {"account": self.account, "time": self.time, "reasons": list(self.reasons), "by": self.by,
                "request_id": self.request_id, "sub": self.sub, "route": self.route,
                "policy_version": self.policy_version}

    def to_json(self) -> bytes:
        return orjson.dumps(self.public())


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_freeze(raw: bytes, account: str) -> Freeze:
    """The stored record; an unreadable one is still a freeze (reason ``freeze_record_unreadable``)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, Mapping):
        return Freeze(account=account, time=0.0, reasons=(UNREADABLE,), by="unknown")
    reasons = doc.get("reasons")
    when = doc.get("time")
    return Freeze(
        account=account,
        time=float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else 0.0,
        reasons=tuple(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else (UNREADABLE,),
        by=_str(doc.get("by")) or "unknown",
        request_id=_str(doc.get("request_id")),
        sub=_str(doc.get("sub")),
        route=_str(doc.get("route")),
        policy_version=_str(doc.get("policy_version")),
    )


class FreezeStore:
    """Freezes over a `StateStore` (Redis across processes, memory for one)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    @property
    def state(self) -> StateStore:
        return self._state

    async def freeze(self, freeze: Freeze) -> bool:
        """Record a freeze (one round trip); False when the account was already frozen (the first record stays)."""
        async with self._state.batch() as b:
            created = b.set_if_absent(freeze_key(freeze.account), freeze.to_json(), None)
            b.sadd(INDEX_KEY, freeze.account)
        return created.value

    async def get(self, account: str) -> Freeze | None:
        raw = await self._state.get(freeze_key(account))
        return None if raw is None else parse_freeze(raw, account)

    async def all(self) -> list[Freeze]:
        """Every frozen account, newest freeze first (two round trips: for the admin API, not requests)."""
        accounts = await self._state.smembers(INDEX_KEY)
        raws = await self._state.mget([freeze_key(a) for a in accounts])
        found = [parse_freeze(raw, a) for a, raw in zip(accounts, raws, strict=True) if raw is not None]
        return sorted(found, key=lambda f: (-f.time, f.account))

    async def lift(self, account: str) -> Freeze | None:
        """Remove a freeze (one round trip); the record that was lifted, or None if there was none."""
        async with self._state.batch() as b:
            b.srem(INDEX_KEY, account)
            gone = b.getdel(freeze_key(account))
        raw = gone.value
        return None if raw is None else parse_freeze(raw, account)
