"""Decisions per minute over every gateway process sharing the state store: the console's dashboard.

Each process counts in memory on every judged request (:meth:`DecisionStats.observe`, called where
the decision or denial record is built: a few dictionary increments, no I/O; measured at about 0.8 us
of CPU per allowed request and 2.4 us per denial, which also serialises its list entry) and flushes
about once a second in one pipelined round trip, as the shadow runner does:

* ``decisions:m:<minute>`` (a hash per minute since the epoch, expiring after two hours): ``allow``,
  ``deny``, ``step_up``, ``reason:<code>`` (denials only), ``risk:<0..9>`` (the risk score by tens)
  and ``process:<host:pid:instance>`` (how many this gateway counted);
* ``decisions:denials``: the latest denials (a capped list): time, customer, account, route, reason
  codes and risk score. As the audit trail's search shows them; never an IP address or a device id.

The dashboard reads the last hour back (:meth:`DecisionStats.snapshot`, this process flushed first),
so its numbers are the sum over every process; another process's are at most one flush old. A failed
flush keeps its counts for the next one (minutes older than the retention are dropped).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway import logs
from gateway.background import Periodic
from gateway.bundles.shadow import process_name
from gateway.errors import STEP_UP_REQUIRED
from gateway.state.base import StateStore, StateUnavailable

if TYPE_CHECKING:
    from gateway.context import RequestContext

__all__ = ["OUTCOMES", "DecisionStats", "Denial", "Snapshot", "build_snapshot", "denials_key", "minute_key"]

log = logging.getLogger("portcullis.decisions")

OUTCOMES = ("allow", "step_up", "deny")
RETENTION = 2 * 3600.0
"""Seconds a minute's counts are kept in the store (the dashboard shows one hour)."""
DENIALS = 50
"""Latest denials kept in the store."""
FLUSH_INTERVAL = 1.0
_MAX_FIELDS = 256
"""Distinct fields per minute a process keeps between flushes; reason codes beyond it count as (other)."""
_MAX_TEXT = 128
"""Customer ids, accounts and codes are cut to this length in the denials list (the store holds no more)."""
_RISK_FIELDS = tuple(f"risk:{i}" for i in range(10))
_STEP_UP_CODE = STEP_UP_REQUIRED.code
OTHER = "(other)"


def minute_key(minute: int) -> str:
    return f"decisions:m:{minute}"


def denials_key() -> str:
    return "decisions:denials"


def _text(value: Any) -> str | None:
    return value[:_MAX_TEXT] if isinstance(value, str) else None


class DecisionStats:
    """This process's counts since the last flush, their flushes, and the dashboard's read."""

    def __init__(self, state: StateStore, *, clock: Callable[[], float] = time.time,
                 flush_interval: float = FLUSH_INTERVAL, retention: float = RETENTION, denials: int = DENIALS,
                 process: str | None = None) -> None:
        self.state = state
        # Its instance too: two gateways in one process (tests, an embedding) are two reporters.
        self.process = process or f"{process_name()}:{secrets.token_hex(3)}"
        self._clock = clock
        self._retention = retention
        self._cap = denials
        self._counts: dict[int, collections.Counter[str]] = {}
        self._denials: collections.deque[bytes] = collections.deque(maxlen=denials)
        self._flusher = Periodic(self.flush, flush_interval, "decision-stats-flush")
        self._lock = asyncio.Lock()
        self.flush_failures = 0

    # -- the request path: memory only ------------------------------------------------

    def observe(self, ctx: RequestContext, record: Mapping[str, Any]) -> None:
        """Count one decision (``type: decision``) or denial (``type: denial``) record of ``ctx``."""
        code = record.get("code")
        outcome = ("step_up" if code == _STEP_UP_CODE else "deny") if code is not None else record.get("decision")
        if outcome not in OUTCOMES:
            return
        minute = int(ctx.now // 60)
        counts = self._counts.get(minute)
        if counts is None:
            counts = self._counts[minute] = collections.Counter()
        counts[outcome] += 1
        risk = ctx.risk
        if risk is not None:
            counts[_RISK_FIELDS[min(max(int(risk.score), 0) // 10, 9)]] += 1
        if outcome != "deny":
            return
        d = ctx.decision
        reasons = [r.code for r in d.deny] if d is not None and d.deny else [str(code)]
        for reason in reasons:
            field = "reason:" + reason[:_MAX_TEXT]
            if field not in counts and len(counts) >= _MAX_FIELDS:
                field = "reason:" + OTHER
            counts[field] += 1
        self._denials.append(orjson.dumps({
            "time": ctx.now, "sub": _text(record.get("sub")), "account": _text(record.get("account")),
            "route": _text(record.get("route")), "reasons": [r[:_MAX_TEXT] for r in reasons[:8]],
            "risk": risk.score if risk is not None else None}))

    # -- flushing -----------------------------------------------------------------------

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        await self.flush()

    async def flush(self) -> bool:
        """This process's counts to the store in one round trip; False (kept for the next) if unreachable."""
        async with self._lock:
            counts, self._counts = self._counts, {}
            denials = list(self._denials)
            self._denials.clear()
            if not counts and not denials:
                return True
            ttl = self._retention
            batch = self.state.batch()
            for minute, fields in counts.items():
                key = minute_key(minute)
                total = sum(fields[o] for o in OUTCOMES)
                if total:
                    batch.hincrby(key, "process:" + self.process, total, ttl)
                for field, n in fields.items():
                    batch.hincrby(key, field, n, ttl)
            for denial in denials:
                batch.push_capped(denials_key(), denial, self._cap, ttl)
            try:
                await batch.execute()
            except StateUnavailable as exc:
                self.flush_failures += 1
                logs.event(log, "decision_stats_flush_failed", logging.WARNING, error=exc.detail)
                self._keep(counts, denials)
                return False
            return True

    def _keep(self, counts: dict[int, collections.Counter[str]], denials: list[bytes]) -> None:
        oldest = int((self._clock() - self._retention) // 60)
        for minute, fields in counts.items():
            if minute >= oldest:
                self._counts.setdefault(minute, collections.Counter()).update(fields)
        newer = list(self._denials)
        self._denials.clear()
        self._denials.extend(denials + newer)

    # -- the dashboard ------------------------------------------------------------------

    async def snapshot(self, minutes: int = 60) -> Snapshot:
        """The last ``minutes`` over every process sharing the store (this one flushed first)."""
        await self.flush()
        now = self._clock()
        last = int(now // 60)
        wanted = list(range(last - minutes + 1, last + 1))
        async with self.state.batch() as b:
            pending = [b.hgetall(minute_key(m)) for m in wanted]
            latest = b.lrange(denials_key())
        by_minute = {m: {k: int(v) for k, v in p.value.items()} for m, p in zip(wanted, pending, strict=True)}
        denials = [orjson.loads(d) for d in reversed(latest.value)]
        return build_snapshot(by_minute, denials, now=now)


@dataclass(frozen=True, slots=True)
class Denial:
    time: float
    sub: str | None
    account: str | None
    route: str | None
    reasons: tuple[str, ...]
    risk: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    minutes: list[tuple[int, dict[str, int]]]
    """Each minute (epoch seconds of its start) oldest first, with its count per outcome."""
    totals: dict[str, int]
    reasons: list[tuple[str, int]]
    """Deny reason codes, most frequent first."""
    risk: list[int]
    """Decisions by risk score: 0-9, 10-19, ... 90-100."""
    denials: list[Denial]
    """Newest first."""
    processes: int
    """Gateway processes that counted decisions in the last five minutes."""

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def rate(self, outcome: str) -> float | None:
        """The share of decisions with ``outcome`` over the hour, or None without any."""
        return self.totals[outcome] / self.total if self.total else None


def build_snapshot(by_minute: Mapping[int, Mapping[str, int]], denials: Sequence[Any], *, now: float) -> Snapshot:
    """The dashboard's numbers from the stored counts (pure)."""
    minutes = [(m * 60, {o: fields.get(o, 0) for o in OUTCOMES}) for m, fields in sorted(by_minute.items())]
    totals = {o: sum(c[o] for _, c in minutes) for o in OUTCOMES}
    reasons: collections.Counter[str] = collections.Counter()
    risk = [0] * 10
    recent: set[str] = set()
    current = int(now // 60)
    for m, fields in by_minute.items():
        for field, n in fields.items():
            kind, _, name = field.partition(":")
            if kind == "reason":
                reasons[name] += n
            elif kind == "risk" and name.isdigit() and int(name) < 10:
                risk[int(name)] += n
            elif kind == "process" and m > current - 5:
                recent.add(name)
    out: list[Denial] = []
    for d in denials:
        if not isinstance(d, dict) or not isinstance(d.get("time"), (int, float)):
            continue
        reasons_of = d.get("reasons")
        score = d.get("risk")
        out.append(Denial(time=float(d["time"]), sub=_text(d.get("sub")), account=_text(d.get("account")),
                          route=_text(d.get("route")),
                          reasons=tuple(r for r in reasons_of if isinstance(r, str)) if isinstance(reasons_of, list)
                          else (), risk=score if isinstance(score, int) else None))
    return Snapshot(now=now, minutes=minutes, totals=totals, reasons=reasons.most_common(),
                    risk=risk, denials=out, processes=len(recent))
