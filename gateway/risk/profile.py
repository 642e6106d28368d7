"""A customer's learned habits: networks, places, hours, request rate, order sizes.

The profile learns only from requests the gateway judged low risk, allowed, and
made from a device the customer has proven (a successful step-up made it
known): a thief using a stolen session from a new device never teaches the
profile that device's network, place or hours, however long they use it.

Weights decay with a half-life (default 30 days), so habits that stop fade and
a move to a new city is learned within weeks, not never. Every map is bounded
(the heaviest entries are kept), so a profile stays a few hundred bytes
whatever a client does. Profiles are stored as compact JSON in the state store
(one GET in the request's state round, written back behind the request by
:class:`gateway.risk.engine.ProfileWriter`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

HOURS = 24
DECAY_STEP = 3600.0
"""Seconds between two decays of a profile's weights."""

# Bounds on each learned map (the heaviest entries are kept).
MAX_PREFIXES = 32
MAX_REGIONS = 16
MAX_ASNS = 16
MAX_ROUTES = 64


@dataclass(slots=True)
class Observation:
    """What one low-risk, allowed request on a known device teaches."""

    now: float
    hour: int
    """Exchange-local hour of the request (0-23)."""
    prefix: str | None = None
    region: str | None = None
    asn: int | None = None
    lat: float | None = None
    lon: float | None = None
    route: str | None = None
    rate: int | None = None
    """Requests of the customer in the last minute, this one included."""
    notional: float | None = None
    """An order's notional (CNY), on order routes."""


@dataclass(slots=True)
class Profile:
    updated: float = 0.0
    """When the weights were last decayed (at most once per DECAY_STEP; ``last_seen`` is the last learning)."""
    n: float = 0.0
    """Decayed count of requests learned from: how much history the weights rest on."""
    prefixes: dict[str, float] = field(default_factory=dict)
    regions: dict[str, float] = field(default_factory=dict)
    asns: dict[str, float] = field(default_factory=dict)
    hours: list[float] = field(default_factory=lambda: [0.0] * HOURS)
    routes: dict[str, float] = field(default_factory=dict)
    """Route name -> when it was last used (first use of a sensitive route)."""
    rate: float = 0.0
    """Moving average of the requests-per-minute count seen at learned requests."""
    orders: float = 0.0
    """Decayed count of learned orders (the notional average's support)."""
    notional: float = 0.0
    """Moving average of learned order notionals (CNY)."""
    last: tuple[float, float, float] | None = None
    """(time, lat, lon) of the last learned request with a known place (impossible travel)."""
    last_seen: float = 0.0
    """Time of the last learned request (dormancy)."""

    # -- learning ---------------------------------------------------------------------------

    def learn(self, obs: Observation, half_life: float) -> None:
        """Decay every weight to ``obs.now``, then add this request's evidence (pure, in place).

        Weights are decayed at most once per ``DECAY_STEP`` (an hour): a request's weight
        then counts from the start of that hour, an error of 0.5 ** (1 h / half-life), about
        0.1% for 30 days, for a tenth of the learning's cost under steady traffic.
        """
        if not self.updated:
            self.updated = obs.now
        elif obs.now - self.updated >= DECAY_STEP:
            k = 0.5 ** ((obs.now - self.updated) / half_life)
            self.n *= k
            self.orders *= k
            for table in (self.prefixes, self.regions, self.asns):
                for key in table:
                    table[key] *= k
            self.hours = [h * k for h in self.hours]
            self.updated = obs.now
        self.n += 1.0
        _bump(self.prefixes, obs.prefix, MAX_PREFIXES)
        _bump(self.regions, obs.region, MAX_REGIONS)
        _bump(self.asns, str(obs.asn) if obs.asn is not None else None, MAX_ASNS)
        if 0 <= obs.hour < HOURS:
            self.hours[obs.hour] += 1.0
        if obs.route is not None:
            self.routes[obs.route] = obs.now
            if len(self.routes) > MAX_ROUTES:
                del self.routes[min(self.routes, key=self.routes.__getitem__)]
        if obs.rate is not None:
            self.rate = float(obs.rate) if self.n <= 1.0 else 0.9 * self.rate + 0.1 * obs.rate
        if obs.notional is not None and math.isfinite(obs.notional) and obs.notional > 0:
            self.notional = obs.notional if self.orders < 1e-9 else 0.8 * self.notional + 0.2 * obs.notional
            self.orders += 1.0
        if obs.lat is not None and obs.lon is not None:
            self.last = (obs.now, obs.lat, obs.lon)
        self.last_seen = max(self.last_seen, obs.now)

    # -- what the signals ask ---------------------------------------------------------------

    def share(self, table: dict[str, float], key: str | None) -> float:
        """The share of the learned weight that `key` holds in `table` (0 when unknown)."""
        if key is None:
            return 0.0
        total = sum(table.values())
        return table.get(key, 0.0) / total if total > 0 else 0.0

    def hour_share(self, hour: int) -> float:
        total = sum(self.hours)
        return self.hours[hour] / total if total > 0 and 0 <= hour < HOURS else 0.0

    # -- storage ----------------------------------------------------------------------------

    def to_json(self) -> bytes:
        return orjson.dumps({
            "v": 1, "u": self.updated, "n": round(self.n, 4),
            "p": _rounded(self.prefixes), "r": _rounded(self.regions), "a": _rounded(self.asns),
            "h": [round(h, 4) for h in self.hours], "rt": self.routes, "rate": round(self.rate, 3),
            "o": round(self.orders, 4), "no": round(self.notional, 2), "l": self.last, "ls": self.last_seen,
        })

    @classmethod
    def from_json(cls, data: bytes | None) -> Profile | None:
        """A stored profile, or None when absent or unreadable (a corrupt value is not trusted)."""
        if not data:
            return None
        try:
            d = orjson.loads(data)
            if not isinstance(d, dict) or d.get("v") != 1:
                return None
            hours = [float(h) for h in d.get("h", [])]
            last = d.get("l")
            return cls(
                updated=float(d["u"]), n=float(d["n"]),
                prefixes=_floats(d.get("p")), regions=_floats(d.get("r")), asns=_floats(d.get("a")),
                hours=hours if len(hours) == HOURS else [0.0] * HOURS,
                routes=_floats(d.get("rt")), rate=float(d.get("rate", 0.0)),
                orders=float(d.get("o", 0.0)), notional=float(d.get("no", 0.0)),
                last=(float(last[0]), float(last[1]), float(last[2]))
                if isinstance(last, list) and len(last) == 3 else None,
                last_seen=float(d.get("ls", 0.0)),
            )
        except (ValueError, TypeError, KeyError):
            return None


def _bump(table: dict[str, float], key: str | None, bound: int) -> None:
    if key is None:
        return
    table[key] = table.get(key, 0.0) + 1.0
    if len(table) > bound:
        del table[min(table, key=table.__getitem__)]


def _rounded(table: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in table.items()}


def _floats(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float))}


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))
