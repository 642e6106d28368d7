"""Shadow mode: a candidate bundle judges live traffic beside the active one, without affecting it.

`ShadowRunner` holds the running session's compiled candidate. While a
session runs, `ActivePolicy.evaluate` hands each request to `beside`, which
serialises the input once, evaluates the *active* engine on that text (the
live decision, returned as usual), and queues ``(input text, live decision,
request id/route/tier)`` for the candidate. With ``shadow_mode = "deferred"``
(the default) the candidate runs from a loop callback, i.e. once the
request's coroutine has yielded (typically while it waits for the upstream),
never between the decision and the response; ``"inline"`` evaluates at once.
Either way the candidate costs one extra evaluation (``set_input_json`` +
``execute`` + parse) per shadowed request, nothing else, and only a share
``sample_rate`` of requests is shadowed.

Nothing the candidate does reaches the request: its errors, timeouts (an
evaluation over the policy time budget) and a full queue are counted, never
raised. Outcomes: ``same``, ``differs``, ``error`` (metric
``portcullis_shadow_decisions_total{outcome}``).

Counts are kept per process and flushed to the state store every
``shadow_flush_interval`` seconds in one pipelined round trip (``HINCRBY``
on ``shadow:<session>:counts``, capped lists ``shadow:<session>:samples:<bucket>``),
so the report read from the store covers every process sharing it. A failed
flush keeps the counts for the next one. Samples carry the request id,
route, tier and each side's effect, reason codes, acr and obligation names:
never the input document, messages or tokens.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway import logs
from gateway.background import Periodic
from gateway.bundles.repository import ShadowSession
from gateway.config import PolicyAdminConfig
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.policy.compare import KINDS, brief, compare, safe_code
from gateway.policy.engine import Decision, PolicyEngine
from gateway.policy.rego import RegoPolicy
from gateway.state.base import StateStore, StateUnavailable

log = logging.getLogger("portcullis.policy")

_DRAIN_BATCH = 8
"""Deferred evaluations per loop callback: a burst never holds the loop for more than a few of them."""
_MAX_FIELDS = 512
"""Distinct count fields a process keeps between flushes; reason codes beyond it are counted as (other)."""
OTHER = "(other)"


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Tally:
    """One session's counts and samples in this process since the last flush."""

    __slots__ = ("counts", "samples", "session")

    def __init__(self, session: int) -> None:
        self.session = session
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, list[bytes]] = {}

    def add(self, field: str, amount: int = 1) -> None:
        counts = self.counts
        if field not in counts and len(counts) >= _MAX_FIELDS:
            field = field.split(":", 1)[0] + ":" + OTHER
        counts[field] += amount

    def sample(self, bucket: str, sample: bytes, cap: int) -> None:
        kept = self.samples.setdefault(bucket, [])
        kept.append(sample)
        if len(kept) > cap:
            del kept[0]

    def merge(self, other: _Tally, cap: int) -> None:
        for field, n in other.counts.items():
            self.add(field, n)
        for bucket, samples in other.samples.items():
            for s in samples:
                self.sample(bucket, s, cap)

    def __bool__(self) -> bool:
        return bool(self.counts)


def failure_cause(exc: BaseException) -> str:
    """``timeout`` for an evaluation over the time budget (RegoPolicy says "budget"), else ``error``."""
    if isinstance(exc, TimeoutError) or (isinstance(exc, GatewayError) and "budget" in exc.message):
        return "timeout"
    return "error"


def counts_key(session: int) -> str:
    return f"shadow:{session}:counts"


def samples_key(session: int, bucket: str) -> str:
    return f"shadow:{session}:samples:{bucket}"


class ShadowRunner:
    """The candidate of the running shadow session in this process, its counts and their flushes."""

    def __init__(self, cfg: PolicyAdminConfig, state: StateStore, *, time_budget: float,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random, process: str | None = None) -> None:
        self.cfg = cfg
        self.state = state
        self.time_budget = time_budget
        self.process = process or process_name()
        self._clock = clock
        self._rng = rng
        self._inline = cfg.shadow_mode == "inline"
        self._cap = cfg.shadow_samples
        self.session: ShadowSession | None = None
        self.engine: RegoPolicy | None = None
        self._rate = 1.0
        self._tally: _Tally | None = None
        self._retired: list[_Tally] = []
        self._queue: collections.deque[tuple[RegoPolicy, _Tally, str, Decision, Mapping[str, Any]]] = (
            collections.deque())
        self._scheduled = False
        self._flusher = Periodic(self.flush, cfg.shadow_flush_interval, "policy-shadow-flush")
        self._flush_lock = asyncio.Lock()
        self.flush_failures = 0
        if metrics is not None:
            counter = metrics.shadow_decisions
            self._outcome = {o: counter.labels(o) for o in ("same", "differs", "error")}
        else:
            self._outcome = {}

    # -- sessions ------------------------------------------------------------------

    def begin(self, session: ShadowSession, engine: RegoPolicy) -> None:
        """Shadow `session` with its compiled candidate from now on (replaces any other session)."""
        self.end()
        self.session, self.engine = session, engine
        self._rate = session.sample_rate
        self._tally = _Tally(session.id)
        logs.event(log, "policy_shadow_started", session=session.id, version=session.version,
                   sample_rate=session.sample_rate)

    def end(self) -> None:
        """Stop shadowing; what was counted is flushed by the next flush (queued evaluations are dropped)."""
        if self._tally is None:
            return
        tally = self._tally
        if self._queue:
            tally.add("dropped", len(self._queue))
            self._queue.clear()
        self._retired.append(tally)
        logs.event(log, "policy_shadow_stopped", session=tally.session)
        self.session = self.engine = self._tally = None

    @property
    def running(self) -> bool:
        return self._tally is not None

    # -- the request path ------------------------------------------------------------

    async def beside(self, engine: PolicyEngine, policy_input: Mapping[str, Any]) -> Decision:
        """The live decision of `engine`; the candidate judges the same input text afterwards."""
        tally, candidate = self._tally, self.engine
        if tally is None or candidate is None:
            return await engine.evaluate(policy_input)
        tally.counts["seen"] += 1
        if self._rate < 1.0 and self._rng() >= self._rate:
            return await engine.evaluate(policy_input)
        if isinstance(engine, RegoPolicy):
            input_json = engine.input_text(policy_input)  # serialised once, for both bundles
            decision = engine.evaluate_text(input_json)
        else:  # an engine that does not read JSON text (the baseline): serialise for the candidate only
            decision = await engine.evaluate(policy_input)
            try:
                input_json = orjson.dumps(policy_input).decode()
            except TypeError:
                tally.add("error")
                tally.add("error:input")
                return decision
        request = policy_input.get("request") or {}
        if self._inline:
            self._judge(candidate, tally, input_json, decision, request)
        elif len(self._queue) >= self.cfg.shadow_queue:
            tally.add("dropped")
        else:
            self._queue.append((candidate, tally, input_json, decision, request))
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._drain)
        return decision

    def _drain(self) -> None:
        self._scheduled = False
        queue = self._queue
        for _ in range(min(len(queue), _DRAIN_BATCH)):
            self._judge(*queue.popleft())
        if queue:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _judge(self, candidate: RegoPolicy, tally: _Tally, input_json: str, live: Decision,
               request: Mapping[str, Any]) -> None:
        """One candidate evaluation, counted; nothing it raises leaves this method."""
        started = time.perf_counter()
        try:
            shadow = candidate.evaluate_text(input_json, diagnose=False)
        except Exception as exc:  # any candidate failure is counted, never raised
            cause = failure_cause(exc)
            tally.add("evaluated")
            tally.add("error")
            tally.add(f"error:{cause}")
            tally.sample(f"error:{cause}", self._sample(request, live, None, error=cause), self._cap)
            self._count_outcome("error")
            logs.event(log, "policy_shadow_error", logging.DEBUG, session=tally.session, cause=cause,
                       error=type(exc).__name__)
            return
        tally.add("eval_us", int((time.perf_counter() - started) * 1e6))
        tally.add("evaluated")
        diff = compare(live, shadow)
        if diff is None:
            tally.add("same")
            self._count_outcome("same")
            return
        tally.add("differs")
        self._count_outcome("differs")
        sample = self._sample(request, live, shadow, kinds=diff.kinds)
        cap = self._cap
        for kind in diff.kinds:
            tally.add(f"kind:{kind}")
            tally.sample(f"kind:{kind}", sample, cap)
        for code in diff.added:
            tally.add(f"reason_added:{code}")
            tally.sample(f"reason_added:{code}", sample, cap)
        for code in diff.removed:
            tally.add(f"reason_removed:{code}")
            tally.sample(f"reason_removed:{code}", sample, cap)
        for name in diff.obligations:
            tally.add(f"obligation:{name}")
            tally.sample(f"obligation:{name}", sample, cap)

    def _count_outcome(self, outcome: str) -> None:
        child = self._outcome.get(outcome)
        if child is not None:
            child.inc()

    def _sample(self, request: Mapping[str, Any], live: Decision, shadow: Decision | None, *,
                kinds: tuple[str, ...] = (), error: str | None = None) -> bytes:
        rid, route, tier = request.get("id"), request.get("route"), request.get("tier")
        return orjson.dumps({
            "request_id": rid if isinstance(rid, str) else None,
            "route": route if isinstance(route, str) else None,
            "tier": tier if isinstance(tier, str) else None,
            "at": round(self._clock(), 3), "process": self.process, "kinds": list(kinds),
            "active": brief(live), "shadow": brief(shadow) if shadow is not None else {"error": error},
        })

    # -- flushing to the state store ----------------------------------------------------

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        self.end()
        await self.flush()

    async def flush(self) -> bool:
        """Send this process's counts to the state store in one round trip; False (kept) if it is unreachable."""
        async with self._flush_lock:
            tallies = self._retired
            self._retired = []
            current = self._tally
            if current is not None and current:
                # Queued evaluations hold `current`: move its contents out instead of replacing it.
                taken = _Tally(current.session)
                taken.counts, taken.samples = current.counts, current.samples
                current.counts, current.samples = collections.Counter(), {}
                tallies.append(taken)
            tallies = [t for t in tallies if t]
            if not tallies:
                return True
            ttl = self.cfg.shadow_retention
            batch = self.state.batch()
            for t in tallies:
                key = counts_key(t.session)
                evaluated = t.counts.get("evaluated", 0)
                if evaluated:
                    batch.hincrby(key, f"process:{self.process}", evaluated, ttl)
                for field, n in t.counts.items():
                    batch.hincrby(key, field, n, ttl)
                for bucket, samples in t.samples.items():
                    for s in samples:
                        batch.push_capped(samples_key(t.session, bucket), s, self._cap, ttl)
            try:
                await batch.execute()
            except StateUnavailable as exc:
                self.flush_failures += 1
                logs.event(log, "policy_shadow_flush_failed", logging.WARNING, error=exc.detail)
                self._keep(tallies)
                return False
            return True

    def _keep(self, tallies: list[_Tally]) -> None:
        """Counts that could not be flushed wait for the next flush (merged into the live tally if same session)."""
        for t in tallies:
            if self._tally is not None and self._tally.session == t.session:
                self._tally.merge(t, self._cap)
            else:
                self._retired.append(t)

    # -- the report -------------------------------------------------------------------

    async def report(self, session: ShadowSession, *, active_version: str) -> dict[str, Any]:
        """The session's counts over every process sharing the state store (this one flushed first)."""
        await self.flush()
        counts = {k: int(v) for k, v in (await self.state.hgetall(counts_key(session.id))).items()}
        buckets = sorted(k for k in counts if k.startswith(("kind:", "reason_added:", "reason_removed:",
                                                            "obligation:", "error:")))
        async with self.state.batch() as b:
            pending = {bucket: b.lrange(samples_key(session.id, bucket)) for bucket in buckets}
        samples = {bucket: [orjson.loads(s) for s in p.value] for bucket, p in pending.items()}
        return build_report(session, counts, samples, active_version=active_version, now=self._clock(),
                            flush_interval=self.cfg.shadow_flush_interval)


def build_report(session: ShadowSession, counts: Mapping[str, int], samples: Mapping[str, list[Any]], *,
                 active_version: str, now: float, flush_interval: float) -> dict[str, Any]:
    """The diff report from the aggregated counts and samples (pure)."""
    def bucket(name: str) -> dict[str, Any]:
        return {"count": counts.get(name, 0), "samples": samples.get(name, [])}

    by_reason: dict[str, dict[str, Any]] = {}
    for field in counts:
        change, _, code = field.partition(":")
        if change in ("reason_added", "reason_removed"):
            entry = by_reason.setdefault(code, {"added": {"count": 0, "samples": []},
                                                "removed": {"count": 0, "samples": []}})
            entry[change.removeprefix("reason_")] = bucket(field)
    evaluated = counts.get("evaluated", 0)
    end = session.stopped_at if session.stopped_at is not None else now
    return {
        "session": session.public(),
        "active_version": active_version,
        "candidate_version": session.version,
        "window": {"from": session.started_at, "to": end, "seconds": round(max(end - session.started_at, 0.0), 3),
                   "running": session.running},
        "seen": counts.get("seen", 0),
        "evaluated": evaluated,
        "same": counts.get("same", 0),
        "differs": counts.get("differs", 0),
        "errors": {"total": counts.get("error", 0), "timeout": counts.get("error:timeout", 0),
                   "error": counts.get("error:error", 0), "input": counts.get("error:input", 0),
                   "samples": samples.get("error:timeout", []) + samples.get("error:error", [])},
        "dropped": counts.get("dropped", 0),
        "by_kind": {kind: bucket(f"kind:{kind}") for kind in KINDS},
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -(kv[1]["added"]["count"]
                                                                     + kv[1]["removed"]["count"]))),
        "by_obligation": {field.removeprefix("obligation:"): bucket(field) for field in sorted(counts)
                          if field.startswith("obligation:")},
        "processes": {field.removeprefix("process:"): n for field, n in sorted(counts.items())
                      if field.startswith("process:")},
        "candidate_eval_us_mean": round(counts.get("eval_us", 0) / max(evaluated - counts.get("error", 0), 1), 1),
        "as_of": now,
        "staleness_s": flush_interval,
    }


__all__ = ["ShadowRunner", "build_report", "counts_key", "process_name", "safe_code", "samples_key"]
