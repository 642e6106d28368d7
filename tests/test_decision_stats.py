"""The decisions dashboard's numbers (gateway/decision_stats.py, gateway/console/decisions.py).

Counted in memory where each decision or denial record is built, flushed to the state store in one
batch; the dashboard's numbers are the sum over every gateway sharing the store (real Redis here).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from console_helpers import OFFICER, officer_browser, officer_token
from harness import Stack, audit_records, run_backend, run_stack

from gateway.decision_stats import DecisionStats, build_snapshot, denials_key, minute_key
from gateway.demo_keys import ensure_demo_keys
from gateway.policy.engine import Decision, Reason, StepUp
from gateway.state.base import Batch, StateUnavailable
from gateway.state.memory import MemoryStore

_COUNT = re.compile(r'id="count-(allow|step_up|deny)">(\d+)<')
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
_STYLE_ATTR = re.compile(r"\sstyle\s*=", re.I)
HOSTILE = '<img src=x onerror="alert(1)">'


class RoutePolicy:
    """Step-up on the positions route, a denial with a reason on the orders list, allow elsewhere."""

    version = "route-test"

    def __init__(self, reason: str = "lot_size") -> None:
        self.reason = reason

    async def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        route = policy_input["request"]["route"]
        if route == "positions":
            return Decision(allow=False, step_up=StepUp("urn:portcullis:acr:mfa", ("totp", "sms"), 300),
                            deny=(Reason("new_device", "unknown device"),), policy_version=self.version)
        if route == "orders_list":
            return Decision(allow=False, deny=(Reason(self.reason, "not allowed"),), policy_version=self.version)
        return Decision(allow=True, policy_version=self.version)


async def _status(s: aiohttp.ClientSession, st: Stack, path: str, **token: Any) -> int:
    async with s.get(st.url + path, headers=st.auth(**token)) as r:
        await r.read()
        return r.status


def _counts(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in _COUNT.findall(text)}


# -- pure counting and flushing ------------------------------------------------------------


class _Ctx:
    """What observe reads of a request context."""

    def __init__(self, now: float, score: int | None = None, deny: tuple[Reason, ...] = ()) -> None:
        self.now = now
        self.risk = type("R", (), {"score": score})() if score is not None else None
        self.decision = Decision(allow=False, deny=deny) if deny else None


def _record(kind: str, code: str | None = None, **kw: Any) -> dict[str, Any]:
    if kind == "decision":
        return {"type": "decision", "decision": "allow", **kw}
    return {"type": "denial", "decision": "deny", "code": code, **kw}


async def test_counts_reach_the_store_in_one_batch_per_flush() -> None:
    store = MemoryStore()
    batches: list[int] = []
    real = store.batch

    def counting() -> Batch:
        batches.append(1)
        return real()

    store.batch = counting  # type: ignore[method-assign]
    now = 1_800_000_000.0
    stats = DecisionStats(store, clock=lambda: now, process="p1")
    for _ in range(3):
        stats.observe(_Ctx(now, score=5), _record("decision"))  # type: ignore[arg-type]
    stats.observe(_Ctx(now, score=72, deny=(Reason("lot_size", "x"),)),  # type: ignore[arg-type]
                  _record("denial", "policy_denied", sub="alice", account="A1", route="order_place",
                          client_ip="10.0.0.1", device_id="dev-1"))
    stats.observe(_Ctx(now), _record("denial", "insufficient_user_authentication"))  # type: ignore[arg-type]
    assert batches == []  # nothing leaves the process on the request path
    assert await stats.flush()
    stored = await store.hgetall(minute_key(int(now // 60)))
    latest = await store.lrange(denials_key())
    assert len(batches) == 1
    assert {k: int(v) for k, v in stored.items()} == {
        "allow": 3, "deny": 1, "step_up": 1, "risk:0": 3, "risk:7": 1, "reason:lot_size": 1, "process:p1": 5}
    assert len(latest) == 1 and b"10.0.0.1" not in latest[0] and b"dev-1" not in latest[0]


async def test_a_failed_flush_keeps_the_counts_for_the_next() -> None:
    class Down(MemoryStore):
        down = True

        def batch(self) -> Batch:
            inner = super().batch()
            if self.down:
                async def fail() -> list[Any]:
                    raise StateUnavailable("down")
                inner.execute = fail  # type: ignore[method-assign]
            return inner

    store = Down()
    now = 1_800_000_000.0
    stats = DecisionStats(store, clock=lambda: now, process="p1")
    stats.observe(_Ctx(now), _record("denial", "account_forbidden", sub="bob"))  # type: ignore[arg-type]
    assert not await stats.flush()
    store.down = False
    stats.observe(_Ctx(now), _record("decision"))  # type: ignore[arg-type]
    assert await stats.flush()
    snap = await stats.snapshot()
    assert snap.totals == {"allow": 1, "step_up": 0, "deny": 1} and stats.flush_failures == 1
    assert [(d.sub, d.reasons) for d in snap.denials] == [("bob", ("account_forbidden",))]


def test_the_snapshot_sums_minutes_reasons_and_risk_and_ignores_malformed_denials() -> None:
    now = 1_800_000_000.0
    m = int(now // 60)
    snap = build_snapshot({m - 1: {"allow": 2, "reason:a": 1, "risk:3": 2, "process:x": 2},
                           m: {"deny": 3, "step_up": 1, "reason:a": 2, "reason:b": 1, "process:y": 4}},
                          [{"time": now, "sub": "s", "reasons": ["a"], "risk": 40}, {"time": "bad"}, "junk"],
                          now=now)
    assert snap.totals == {"allow": 2, "step_up": 1, "deny": 3} and snap.total == 6
    assert snap.reasons == [("a", 3), ("b", 1)] and snap.risk[3] == 2 and snap.processes == 2
    assert snap.rate("step_up") == 1 / 6 and [d.sub for d in snap.denials] == ["s"]


# -- two gateways sharing real Redis ---------------------------------------------------------


async def test_the_dashboard_shows_the_sum_over_two_gateways_sharing_redis(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    state = {"backend": "redis", "url": redis_url, "prefix": redis_prefix, "timeout": 2.0}
    async with run_backend(keys) as url, \
            run_stack(tmp_path, backend_url=url, state=state) as first, \
            run_stack(tmp_path, backend_url=url, state=state) as second, \
            aiohttp.ClientSession() as s, officer_browser(first) as officer:
        assert [await _status(s, first, "/api/accounts/A1") for _ in range(2)] == [200, 200]
        assert await _status(s, first, "/api/accounts/B9") == 403
        assert await _status(s, second, "/api/accounts/A1") == 200
        assert await _status(s, second, "/api/accounts/B9", sub="bob") == 403
        await officer.sign_in(officer_token(first), next_page="/console/decisions")
        deadline = time.monotonic() + 5
        while True:  # the second gateway's counts arrive with its next flush (about a second)
            page = await officer.get("/console/decisions")
            if _counts(page.text) == {"allow": 3, "step_up": 0, "deny": 2} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert page.status == 200 and _counts(page.text) == {"allow": 3, "step_up": 0, "deny": 2}
    assert "2 gateway processes reporting" in page.text
    assert page.text.count("account_forbidden") >= 2 and "bob" in page.text and "B9" in page.text


async def test_the_page_counts_real_requests_allowed_denied_and_stepped_up(tmp_path: Path) -> None:
    async with run_stack(tmp_path, gateway_kwargs={"policy": RoutePolicy()},
                         internal_token="proxy-internal") as st, \
            aiohttp.ClientSession() as s, officer_browser(st) as officer:
        statuses = [await _status(s, st, p) for p in ("/api/accounts/A1", "/api/quotes/600519.SH",
                                                      "/api/accounts/B9", "/api/accounts/A1/orders",
                                                      "/api/accounts/A1/positions")]
        await officer.sign_in(officer_token(st), next_page="/console/decisions")
        page = await officer.get("/console/decisions")
        async with s.get(st.admin_url + "/metrics") as r:
            metrics = await r.text()
    assert "portcullis_decision_stats_flush_failures 0.0" in metrics
    assert statuses == [200, 200, 403, 403, 401]
    assert _counts(page.text) == {"allow": 2, "step_up": 1, "deny": 2}
    assert "step-up rate 20.0%" in page.text and "denial rate 40.0%" in page.text
    for code in ("lot_size", "account_forbidden"):
        assert f'<span class="tag">{code}</span>' in page.text
    assert page.text.count('class="bar-allow"') >= 2  # the chart's bar and its legend
    assert "<svg" in page.text and 'data-refresh="3"' in page.text


async def test_hostile_customer_ids_and_reason_codes_are_escaped(tmp_path: Path) -> None:
    async with run_stack(tmp_path, gateway_kwargs={"policy": RoutePolicy(reason=HOSTILE)}) as st, \
            aiohttp.ClientSession() as s, officer_browser(st) as officer:
        assert await _status(s, st, "/api/accounts/A1/orders", sub=HOSTILE) == 403
        await officer.sign_in(officer_token(st), next_page="/console/decisions")
        page = await officer.get("/console/decisions")
    assert HOSTILE not in page.text and "&lt;img src=x onerror=" in page.text
    assert "<img" not in page.text and not _INLINE_SCRIPT.search(page.text) and not _STYLE_ATTR.search(page.text)
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]


async def test_opening_the_page_is_audited_but_its_live_refreshes_are_not(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        await officer.sign_in(officer_token(st))
        await officer.get("/console/decisions", headers={"Sec-Fetch-Mode": "navigate"})
        for _ in range(3):
            await officer.get("/console/decisions", headers={"Sec-Fetch-Mode": "cors"})
        await asyncio.sleep(0.05)
        views = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "decisions_view"]
    assert [(r["sub"], r["via"]) for r in views] == [(OFFICER, "console")]
