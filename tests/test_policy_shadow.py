"""Shadow mode end to end: real gateways on loopback, real Redis (counts) and PostgreSQL (sessions).

The active bundle is `tests/bundles.py`'s tiny bundle (quotes allowed); the
candidate closes quotes (``maintenance``), so every quote it judges differs
(allow -> deny) while the live answer stays 200.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bundles import tiny_bundle
from harness import Stack
from test_policy_admin import Officer, audit_records, gateways, settle_audit, version_of

QUOTE = "/api/quotes/600519.SH"
BOOM_AGENT = "shadow-boom"


def erroring_bundle() -> dict[str, str]:
    """Valid (its tests and the invariants pass), but a conflict makes the decision undefined for one agent."""
    files = tiny_bundle(rev=7)
    files["gateway.rego"] += f'''
decision := {{"allow": true, "obligations": {{"alert": "conflict"}}}} if {{
\tquotes
\tinput.device.user_agent == "{BOOM_AGENT}"
}}
'''
    return files


@pytest.fixture
def env(tmp_path: Path, postgres_dsn: str, pg_schema: str, redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"tmp": tmp_path, "postgres_dsn": postgres_dsn, "schema": pg_schema, "redis_url": redis_url,
            "prefix": redis_prefix}


def run(env: dict[str, Any], **kw: Any) -> Any:
    kw.setdefault("shadow_flush_interval", 0.05)
    return gateways(env["tmp"], env["postgres_dsn"], env["schema"], env["redis_url"], env["prefix"], **kw)


async def quotes(s: aiohttp.ClientSession, gw: Stack, n: int, **headers: str) -> list[int]:
    statuses = []
    for _ in range(n):
        async with s.get(gw.url + QUOTE, headers={**gw.auth(), **headers}) as r:
            await r.read()
            statuses.append(r.status)
    return statuses


async def settled_report(officer: Officer, evaluated: int, timeout: float = 5.0) -> dict[str, Any]:
    """The report once `evaluated` evaluations reached the state store (flushes are periodic)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await officer.call("GET", "/shadow")
        assert status == 200, body
        if body["evaluated"] >= evaluated or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.05)


async def test_a_denying_candidate_is_reported_and_live_answers_are_unchanged(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        candidate = await carol.ready(tiny_bundle(rev=2, quotes_open=False))
        status, started = await carol.call("POST", "/shadow", {"version": candidate, "reason": "close quotes?"})
        assert status == 201, started
        assert started["session"]["version"] == candidate and started["session"]["running"] is True
        assert await quotes(s, gw, 12) == [200] * 12  # the active bundle still allows them
        report = await settled_report(carol, 12)
        await settle_audit(gw)
    assert (report["seen"], report["evaluated"], report["same"], report["differs"]) == (12, 12, 0, 12)
    assert report["errors"]["total"] == 0 and report["dropped"] == 0
    assert report["candidate_version"] == candidate and report["active_version"] == version_of(tiny_bundle(rev=1))
    assert report["by_kind"]["allow_to_deny"]["count"] == 12
    assert {k: v["count"] for k, v in report["by_kind"].items() if k != "allow_to_deny"} == {
        "deny_to_allow": 0, "step_up": 0, "reasons": 0, "obligations": 0}
    assert report["by_reason"]["maintenance"]["added"]["count"] == 12
    samples = report["by_kind"]["allow_to_deny"]["samples"]
    assert len(samples) == 10  # shadow_samples per bucket
    first = samples[0]
    assert set(first) == {"request_id", "route", "tier", "at", "process", "kinds", "active", "shadow"}
    assert (first["route"], first["tier"], first["kinds"]) == ("quotes", "read", ["allow_to_deny"])
    assert first["active"] == {"effect": "allow", "reasons": [], "step_up": None, "obligations": []}
    assert first["shadow"] == {"effect": "deny", "reasons": ["maintenance"], "step_up": None, "obligations": []}
    window = report["window"]
    assert window["running"] is True and window["from"] <= window["to"]
    text = str(report)
    assert "alice" not in text and "A1" not in text and "Bearer" not in text  # no personal data, no token
    records = [r for r in audit_records(env["tmp"] / "gw0") if r.get("action") == "policy_shadow_start"]
    assert [r.get("outcome") for r in records] == [None, "ok"]  # written ahead, then its outcome
    decisions = [r for r in audit_records(env["tmp"] / "gw0") if r["type"] == "decision"]
    assert len(decisions) == 12 and all(r["decision"] == "allow" for r in decisions)


async def test_metrics_count_shadow_outcomes(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        candidate = await carol.ready(tiny_bundle(rev=2, quotes_open=False))
        await carol.call("POST", "/shadow", {"version": candidate})
        await quotes(s, gw, 3)
        await settled_report(carol, 3)
        async with s.get(gw.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'portcullis_shadow_decisions_total{outcome="differs"} 3.0' in text


async def test_an_erroring_candidate_is_counted_and_requests_still_succeed(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        candidate = await carol.ready(erroring_bundle())
        status, _ = await carol.call("POST", "/shadow", {"version": candidate})
        assert status == 201
        assert await quotes(s, gw, 5, **{"User-Agent": BOOM_AGENT}) == [200] * 5
        assert await quotes(s, gw, 3) == [200] * 3
        report = await settled_report(carol, 8)
    assert (report["evaluated"], report["same"], report["differs"]) == (8, 3, 0)
    assert report["errors"] == {**report["errors"], "total": 5, "error": 5, "timeout": 0}
    sample = report["errors"]["samples"][0]
    assert sample["shadow"] == {"error": "error"} and sample["route"] == "quotes"


async def test_a_bundle_that_was_not_validated_cannot_be_shadowed(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        status, up = await carol.upload(tiny_bundle(rev=2, quotes_open=False))
        assert status == 201
        status, body = await carol.call("POST", "/shadow", {"version": up["version"]})
        assert (status, body["error"]) == (409, "bundle_not_validated")
        broken = tiny_bundle(rev=3)
        broken["gateway.rego"] = broken["gateway.rego"].replace("quotes if {", "quotes if {{")
        _, bad = await carol.upload(broken)
        status, body = await carol.call("POST", f"/bundles/{bad['version']}/validate")
        assert (status, body["error"]) == (422, "bundle_invalid")
        status, body = await carol.call("POST", "/shadow", {"version": bad["version"]})
        assert (status, body["error"]) == (409, "bundle_not_validated")
        status, body = await carol.call("POST", "/shadow", {"version": version_of(tiny_bundle(rev=1))})
        assert (status, body["error"]) == (409, "bundle_already_active")
        status, body = await carol.call("GET", "/shadow")
        assert (status, body["error"]) == (404, "shadow_not_found")
        assert gw.gateway.policy.shadow is None
        await settle_audit(gw)
    refused = [r for r in audit_records(env["tmp"] / "gw0") if r.get("action") == "policy_shadow_start"]
    assert [r["outcome"] for r in refused] == ["bundle_not_validated", "bundle_not_validated",
                                               "bundle_already_active"]
    assert all(r["refused"] for r in refused)


async def test_only_a_recently_stepped_up_compliance_officer_may_use_shadow_mode(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        candidate = await Officer(gw, s, "carol").ready(tiny_bundle(rev=2, quotes_open=False))
        for roles in (("admin",), ("client",)):
            mallory = Officer(gw, s, "mallory", roles=roles)
            for method, path, body in (("POST", "/shadow", {"version": candidate}), ("GET", "/shadow", None),
                                       ("POST", "/shadow/stop", None)):
                status, answer = await mallory.call(method, path, body)
                assert (status, answer["error"]) == (403, "role_forbidden"), (roles, path)
        stale = Officer(gw, s, "carol", extra={"auth_time": int(time.time()) - 301})
        status, answer = await stale.call("POST", "/shadow", {"version": candidate})
        assert (status, answer["error"]) == (401, "insufficient_user_authentication")
        assert gw.gateway.policy.shadow is None


async def test_stop_ends_shadowing_and_the_report_keeps_the_window(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol, dave = Officer(gw, s, "carol"), Officer(gw, s, "dave")
        candidate = await carol.ready(tiny_bundle(rev=2, quotes_open=False))
        status, body = await carol.call("POST", "/shadow/stop")
        assert (status, body["error"]) == (409, "shadow_not_running")
        _, started = await carol.call("POST", "/shadow", {"version": candidate, "sample_rate": 1})
        status, body = await dave.call("POST", "/shadow", {"version": candidate})
        assert (status, body["error"]) == (409, "shadow_running")
        status, body = await dave.call("POST", "/shadow", {"version": candidate, "sample_rate": 0})
        assert (status, body["error"]) == (400, "bad_request")
        await quotes(s, gw, 2)
        status, stopped = await dave.call("POST", "/shadow/stop", {"reason": "seen enough"})
        assert status == 200 and stopped["session"]["stopped_by"] == "dave"
        assert gw.gateway.policy.shadow is None
        await quotes(s, gw, 2)  # not shadowed any more
        status, report = await carol.call("GET", f"/shadow/{started['session']['id']}")
        assert status == 200
        status, missing = await carol.call("GET", "/shadow/999")
        assert (status, missing["error"]) == (404, "shadow_not_found")
    assert (report["seen"], report["evaluated"], report["differs"]) == (2, 2, 2)
    assert report["window"]["running"] is False and report["window"]["to"] == report["session"]["stopped_at"]


async def test_sampling_shadows_a_share_of_requests(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        candidate = await carol.ready(tiny_bundle(rev=2, quotes_open=False))
        await carol.call("POST", "/shadow", {"version": candidate, "sample_rate": 0.0001})
        await quotes(s, gw, 20)
        await asyncio.sleep(0.1)
        _, report = await carol.call("GET", "/shadow")
    assert report["seen"] == 20 and report["evaluated"] <= 1


async def test_two_gateways_sharing_redis_aggregate_into_one_report(env: dict[str, Any]) -> None:
    async with run(env, count=2, poll_interval=3600) as [one, two], aiohttp.ClientSession() as s:
        assert await two.gateway.bundles.watcher.subscribed.wait()
        carol = Officer(one, s, "carol")
        candidate = await carol.ready(tiny_bundle(rev=2, quotes_open=False))
        status, started = await carol.call("POST", "/shadow", {"version": candidate})
        assert status == 201 and started["notified_processes"] == 2
        for _ in range(200):  # the second process hears it through pub/sub
            if two.gateway.policy.shadow is not None:
                break
            await asyncio.sleep(0.01)
        assert two.gateway.bundles.shadow.session is not None
        one.gateway.bundles.shadow.process = "gw-one"
        two.gateway.bundles.shadow.process = "gw-two"
        assert await quotes(s, one, 4) == [200] * 4
        assert await quotes(s, two, 6) == [200] * 6
        report = await settled_report(Officer(two, s, "erin"), 10)
        assert report["processes"] == {"gw-one": 4, "gw-two": 6}
        assert (report["evaluated"], report["differs"]) == (10, 10)
        assert report["by_reason"]["maintenance"]["added"]["count"] == 10
        status, _ = await carol.call("POST", "/shadow/stop")
        assert status == 200
        for _ in range(200):
            if two.gateway.policy.shadow is None:
                break
            await asyncio.sleep(0.01)
        assert two.gateway.policy.shadow is None
