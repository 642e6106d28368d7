"""Customer security settings: own trade limits and alert choices, with a cooling-off for anything weaker.

A customer (the token's ``sub``) sets a single-trade and a daily notional
limit in CNY (null: no limit of their own) and which alerts they want (a login
from a new device, transfers, freezes). The policy steps up above the limits
(policies/limits.rego, RULES.md "Customer-set limits").

The rule that makes the settings worth having: a change that **lowers
protection** (a higher limit, removing a limit, an alert switched off) is what
a thief with a stolen session would do first, so it needs a recent step-up, is
announced to the customer at once, and takes effect only ``cooling_off``
seconds later: the real customer has that long to notice and undo it. A change
that **raises protection** (a lower limit, a limit where there was none, an
alert switched on) applies at once, and also cancels a pending weaker value of
the same setting.

Storage: one JSON record per customer in the shared state store,
``custsec:<sub>``: the settings in force when it was written and the pending
changes, each with its own ``effective_at``. A pending change is promoted when
the record is read at or after that time (:meth:`SettingsRecord.at`): no timer,
no writer on the hot path. The facts step reads the record inside its one
state-store batch and merges the limits into ``input.account``
(:func:`merge_limits`, docs/POLICIES.md).

Everything here is pure but :class:`SettingsStore`; the HTTP side is
gateway/settings_api.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from gateway.errors import SETTINGS_INVALID, GatewayError
from gateway.state.base import StateStore

__all__ = [
    "ALERTS",
    "FIELDS",
    "LIMITS",
    "Change",
    "PendingChange",
    "SecuritySettings",
    "SettingsRecord",
    "SettingsStore",
    "lowers_protection",
    "merge_limits",
    "parse_record",
    "parse_update",
    "plan",
    "settings_key",
]

KEY_PREFIX = "custsec:"
LOCK_PREFIX = "custsec-lock:"
LIMITS = ("single_trade_limit", "daily_limit")
ALERTS = ("new_device_login", "transfers", "freezes")
FIELDS: tuple[str, ...] = (*LIMITS, *(f"alerts.{a}" for a in ALERTS))
"""Every setting by name, as pending changes, alerts and audit records name them."""

Value = float | bool | None


def settings_key(sub: str) -> str:
    return KEY_PREFIX + sub


def lock_key(sub: str) -> str:
    return LOCK_PREFIX + sub


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """One customer's settings. Defaults: no limit of their own, every alert on."""

    single_trade_limit: float | None = None
    daily_limit: float | None = None
    new_device_login: bool = True
    transfers: bool = True
    freezes: bool = True

    def value(self, name: str) -> Value:
        value: Value = getattr(self, name.removeprefix("alerts."))
        return value

    def with_value(self, name: str, value: Value) -> SecuritySettings:
        changes: dict[str, Any] = {name.removeprefix("alerts."): value}
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        return {"single_trade_limit": _amount(self.single_trade_limit),
                "daily_limit": _amount(self.daily_limit),
                "alerts": {a: getattr(self, a) for a in ALERTS}}


UNREADABLE = SecuritySettings(single_trade_limit=0.0, daily_limit=0.0)
"""What a record that cannot be read means: every order steps up, every alert on (fail safe)."""


@dataclass(frozen=True, slots=True)
class PendingChange:
    """A change that lowers protection, waiting for its cooling-off."""

    field: str
    value: Value
    requested_at: float
    effective_at: float
    request_id: str | None = None

    def public(self) -> dict[str, Any]:
        return {"field": self.field, "value": _amount(self.value), "requested_at": self.requested_at,
                "effective_at": self.effective_at}


@dataclass(frozen=True, slots=True)
class SettingsRecord:
    """What is stored: the settings as last written and the pending changes."""

    settings: SecuritySettings = SecuritySettings()
    pending: tuple[PendingChange, ...] = ()
    updated_at: float | None = None

    def at(self, now: float) -> SettingsRecord:
        """The record as of ``now``: pending changes whose time has come are in force."""
        if not any(p.effective_at <= now for p in self.pending):
            return self
        settings = self.settings
        for p in sorted(self.pending, key=lambda p: p.effective_at):
            if p.effective_at <= now:
                settings = settings.with_value(p.field, p.value)
        return replace(self, settings=settings, pending=tuple(p for p in self.pending if p.effective_at > now))

    def effective(self, now: float) -> SecuritySettings:
        return self.at(now).settings

    def to_json(self) -> bytes:
        return orjson.dumps({
            "v": 1,
            "settings": self.settings.public(),
            "pending": [{**p.public(), "request_id": p.request_id} for p in self.pending],
            "updated_at": self.updated_at,
        })

    def public(self, now: float) -> dict[str, Any]:
        current = self.at(now)
        pending = sorted(current.pending, key=lambda p: (p.effective_at, FIELDS.index(p.field)))
        return {"settings": current.settings.public(), "pending": [p.public() for p in pending]}


def parse_record(raw: bytes | None) -> SettingsRecord:
    """The stored record (absent: the defaults); an unreadable one is :data:`UNREADABLE`, never an error."""
    if raw is None:
        return SettingsRecord()
    try:
        doc = orjson.loads(raw)
        settings = _settings_doc(doc["settings"])
        pending = tuple(_pending_doc(p) for p in doc["pending"])
        updated = doc.get("updated_at")
        return SettingsRecord(settings, pending, float(updated) if _is_number(updated) else None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return SettingsRecord(UNREADABLE)


def _settings_doc(doc: Any) -> SecuritySettings:
    alerts = doc["alerts"]
    values: dict[str, Any] = {}
    for name in LIMITS:
        v = doc[name]
        if v is not None and not _is_number(v):
            raise ValueError(name)
        values[name] = None if v is None else float(v)
    for name in ALERTS:
        if not isinstance(alerts[name], bool):
            raise ValueError(name)
        values[name] = alerts[name]
    return SecuritySettings(**values)


def _pending_doc(doc: Any) -> PendingChange:
    name = doc["field"]
    value = doc["value"]
    if name not in FIELDS or not _valid_value(name, value):
        raise ValueError(name)
    rid = doc.get("request_id")
    return PendingChange(name, float(value) if _is_number(value) else value, float(doc["requested_at"]),
                         float(doc["effective_at"]), rid if isinstance(rid, str) else None)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _valid_value(name: str, value: Any) -> bool:
    if name in LIMITS:
        return value is None or (_is_number(value) and math.isfinite(value) and value >= 0)
    return isinstance(value, bool)


def _amount(value: Value) -> Value:
    """A whole amount as an int in JSON (50000, not 50000.0); bools and None unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- updates ------------------------------------------------------------------------------


def _invalid(message: str) -> GatewayError:
    return GatewayError(SETTINGS_INVALID, message)


def parse_update(body: Any, max_limit: float) -> dict[str, Value]:
    """The fields a ``PUT`` body changes, validated (400 ``settings_invalid`` naming the member).

    ``{"single_trade_limit": 50000, "daily_limit": null, "alerts": {"transfers": true}}``: any
    subset; a limit is null (no limit of the customer's own) or a finite number of CNY, >= 0, at
    most ``max_limit``, to the fen; an alert is true or false. JSON types are strict: no strings
    for numbers, no 0/1 for booleans, no unknown members.
    """
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    unknown = sorted(set(body) - {*LIMITS, "alerts"})
    if unknown:
        raise _invalid(f"{unknown[0]}: unknown setting (expected {', '.join((*LIMITS, 'alerts'))})")
    update: dict[str, Value] = {}
    for name in LIMITS:
        if name not in body:
            continue
        value = body[name]
        if value is None:
            update[name] = None
            continue
        if not _is_number(value):
            raise _invalid(f"{name}: must be a number of CNY or null (got {_json_type(value)})")
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise _invalid(f"{name}: must be a finite number >= 0")
        if number > max_limit:
            raise _invalid(f"{name}: at most {_amount(max_limit)} CNY")
        if abs(number * 100 - round(number * 100)) > 1e-6:
            raise _invalid(f"{name}: at most two decimals (fen)")
        update[name] = round(number, 2)
    if "alerts" in body:
        alerts = body["alerts"]
        if not isinstance(alerts, dict):
            raise _invalid(f"alerts: must be an object of booleans (got {_json_type(alerts)})")
        unknown = sorted(set(alerts) - set(ALERTS))
        if unknown:
            raise _invalid(f"alerts.{unknown[0]}: unknown alert (expected {', '.join(ALERTS)})")
        for name in ALERTS:
            if name in alerts:
                if not isinstance(alerts[name], bool):
                    raise _invalid(f"alerts.{name}: must be true or false (got {_json_type(alerts[name])})")
                update[f"alerts.{name}"] = alerts[name]
    if not update:
        raise _invalid("nothing to change: name at least one setting")
    return update


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def lowers_protection(name: str, old: Value, new: Value) -> bool:
    """Whether setting ``name`` from ``old`` to ``new`` weakens the customer's protection."""
    if name in LIMITS:
        if new is None:
            return old is not None  # removing a limit
        return old is not None and float(new) > float(old)
    return old is True and new is False


ChangeKind = Literal["applied", "scheduled", "cancelled"]


@dataclass(frozen=True, slots=True)
class Change:
    """One setting changed by a request: applied now, scheduled after the cooling-off, or a pending
    weaker value cancelled (the setting keeps its value in force)."""

    field: str
    old: Value
    new: Value
    kind: ChangeKind
    effective_at: float

    @property
    def lowers_protection(self) -> bool:
        return self.kind == "scheduled"

    def public(self) -> dict[str, Any]:
        return {"field": self.field, "old": _amount(self.old), "new": _amount(self.new), "kind": self.kind,
                "effective_at": self.effective_at}


def plan(record: SettingsRecord, update: Mapping[str, Value], now: float, cooling_off: float,
         request_id: str | None = None) -> tuple[SettingsRecord, list[Change]]:
    """The record after ``update`` at ``now``, and what changed (empty: nothing did).

    Per setting: the value in force stays (a pending weaker one is cancelled); a stronger one
    applies at once (and cancels a pending weaker one); a weaker one is pending until
    ``now + cooling_off`` (asking again for the value already pending keeps its time: a retried
    request does not restart the clock).
    """
    current = record.at(now)
    settings = current.settings
    pending = {p.field: p for p in current.pending}
    changes: list[Change] = []
    for name in FIELDS:
        if name not in update:
            continue
        new, old = update[name], settings.value(name)
        waiting = pending.get(name)
        if new == old and type(new) is type(old):
            if waiting is not None:
                del pending[name]
                changes.append(Change(name, waiting.value, new, "cancelled", now))
            continue
        if lowers_protection(name, old, new):
            if waiting is not None and waiting.value == new:
                continue
            pending[name] = PendingChange(name, new, now, now + cooling_off, request_id)
            changes.append(Change(name, old, new, "scheduled", now + cooling_off))
        else:
            settings = settings.with_value(name, new)
            pending.pop(name, None)
            changes.append(Change(name, old, new, "applied", now))
    if not changes:
        return current, []
    return SettingsRecord(settings, tuple(pending.values()), now), changes


# -- the policy input ---------------------------------------------------------------------


def merge_limits(account: dict[str, Any], settings: SecuritySettings) -> dict[str, Any]:
    """The account facts with the customer's own limits: the stricter of the broker's and the customer's.

    The broker's figure (the backend's account facts) stays a ceiling the gateway's settings can
    only tighten; where the broker has none (null), the customer's applies. A broker value that is
    not a number is left alone (the policy denies ``account_facts_unavailable`` for it).
    Returns ``account`` itself when nothing changes.
    """
    merged: dict[str, Any] | None = None
    for name in LIMITS:
        mine = getattr(settings, name)
        if mine is None:
            continue
        broker = account.get(name)
        if broker is None:
            value = _amount(mine)
        elif _is_number(broker):
            if broker <= mine:
                continue
            value = _amount(mine)
        else:
            continue
        if merged is None:
            merged = dict(account)
        merged[name] = value
    return account if merged is None else merged


# -- storage ------------------------------------------------------------------------------


class SettingsStore:
    """Settings records over a `StateStore` (Redis across processes, memory for one).

    Writers take a short per-customer lock (``SET NX`` with a TTL) around read-modify-write, so
    two concurrent changes cannot lose one another; readers never lock.
    """

    def __init__(self, state: StateStore, *, lock_ttl: float = 60.0) -> None:
        self._state = state
        self._lock_ttl = lock_ttl

    async def get(self, sub: str) -> SettingsRecord:
        return parse_record(await self._state.get(settings_key(sub)))

    async def put(self, sub: str, record: SettingsRecord) -> None:
        await self._state.set(settings_key(sub), record.to_json())

    async def lock(self, sub: str, owner: str) -> bool:
        return await self._state.set_if_absent(lock_key(sub), owner.encode(), self._lock_ttl)

    async def unlock(self, sub: str) -> None:
        await self._state.delete(lock_key(sub))
