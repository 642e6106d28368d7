"""Releasing a policy in the compliance console over HTTP: what-if, shadow mode, four-eyes approval, rollback.

A real gateway (tests/harness.py) starts on tests/bundles.py's tiny bundle (quotes allowed); the
candidate closes quotes (``maintenance``), so the two decide differently on every quote. Candidates
are uploaded and validated through the service itself (tests/console_helpers.py ``candidate``): each
validation runs the bundle's tests in a child process, so each test validates at most once.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import orjson
from console_helpers import (
    OFFICER,
    QUOTE,
    SECOND_OFFICER,
    Officer,
    activate,
    candidate,
    enrol_totp,
    officer_browser,
    officer_token,
    release_config,
)
from harness import Stack, audit_records, run_stack

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
_HANDLER_ATTR = re.compile(r"\son[a-z]+\s*=", re.I)
_STYLE_ATTR = re.compile(r"\sstyle\s*=", re.I)
QUOTE_INPUT = {"request": {"route": "quotes"}, "subject": {"roles": ["client"]}}


def active_version(st: Stack) -> str:
    return st.gateway.policy.version


async def settle(st: Stack) -> None:
    for _ in range(200):
        if st.gateway.audit.backlog == 0:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


async def signed_in(st: Stack, officer: Officer, sub: str = OFFICER, *, step_up: bool = True) -> None:
    secret = await enrol_totp(st, sub)
    await officer.sign_in(officer_token(st, sub=sub))
    if step_up:
        await officer.step_up(secret)


async def quote(st: Stack) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(st.url + QUOTE, headers=st.auth()) as r:
        await r.read()
        return r.status, r.headers["X-Request-Id"]


# -- what-if ------------------------------------------------------------------------------------------


async def test_what_if_on_a_sample_input_shows_both_decisions_and_that_they_differ(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, officer_browser(st) as officer:
        version = await candidate(st)
        await signed_in(st, officer, step_up=False)  # trying is reading: no code needed
        form = await officer.get(f"/console/policies/{version}/what-if")
        tried = await officer.post(f"/console/policies/{version}/what-if",
                                   {"source": "sample", "input": json.dumps(QUOTE_INPUT)})
        same = await officer.post(f"/console/policies/{version}/what-if",
                                  {"source": "sample", "input": json.dumps({**QUOTE_INPUT, "request": {
                                      "route": "order_place"}})})
        bad = await officer.post(f"/console/policies/{version}/what-if", {"source": "sample", "input": "{nope"})
        await settle(st)
        records = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "policy_what_if"]
    assert form.status == 200 and "order_place" in form.text and "&#34;request&#34;" in form.text  # a sample
    assert tried.status == 200 and "decide differently" in tried.text
    assert "Allowed" in tried.text and "Refused" in tried.text and "maintenance" in tried.text
    assert "Quotes are closed." in tried.text and active_version(st) in tried.text
    assert same.status == 200 and "decide the same way" in same.text and "default_deny" in same.text
    assert bad.status == 400 and "not valid JSON" in bad.text
    assert [(r["sub"], r["version"], r["input"], r["outcome"]) for r in records] == [
        (OFFICER, version, "sample", "differs"), (OFFICER, version, "sample", "same")]
    assert len(records[0]["input_sm3"]) == 64 and records[0]["kinds"] == ["allow_to_deny"]


async def test_an_unvalidated_version_is_never_tried(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, officer_browser(st) as officer:
        version = await candidate(st, validate=False)
        await signed_in(st, officer, step_up=False)
        page = await officer.get(f"/console/policies/{version}/what-if")
        posted = await officer.post(f"/console/policies/{version}/what-if",
                                    {"source": "sample", "input": json.dumps(QUOTE_INPUT)})
        unknown = await officer.get("/console/policies/0123456789abcdef/what-if")
    assert page.status == 409 and "has not passed validation" in page.text
    assert posted.status == 409 and "Allowed" not in posted.text
    assert unknown.status == 404


async def test_what_if_replays_a_past_request_from_the_audit_trail(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path, crypto=True)) as st, officer_browser(st) as officer:
        version = await candidate(st)
        status, rid = await quote(st)
        await settle(st)
        await signed_in(st, officer)
        listed = await officer.get(f"/console/policies/{version}/what-if")
        replayed = await officer.post(f"/console/policies/{version}/what-if",
                                      {"source": "request", "request_id": rid})
        missing = await officer.post(f"/console/policies/{version}/what-if",
                                     {"source": "request", "request_id": "no-such-request"})
        assert st.gateway.personal is not None
        await st.gateway.personal.erase("alice")
        erased = await officer.post(f"/console/policies/{version}/what-if",
                                    {"source": "request", "request_id": rid})
        await settle(st)
        records = [r for r in audit_records(tmp_path / "audit")
                   if r.get("action") in ("policy_what_if", "policy_what_if_open_input")]
    assert status == 200 and rid in listed.text
    assert replayed.status == 200 and "decide differently" in replayed.text and "Replayed request" in replayed.text
    assert "maintenance" in replayed.text and "&#34;quotes&#34;" in replayed.text  # the input it was judged on
    assert missing.status == 404 and "No decision on request no-such-request" in missing.text
    assert erased.status == 409 and "erased" in erased.text
    assert [(r["action"], r.get("request_id"), r.get("outcome")) for r in records] == [
        ("policy_what_if_open_input", rid, None), ("policy_what_if", rid, "differs"),
        ("policy_what_if_open_input", rid, None)]
    assert records[0]["customer"] == "alice" and records[1]["input"] == "request"


async def test_without_crypto_a_past_request_cannot_be_replayed_and_the_page_says_so(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, officer_browser(st) as officer:
        _, rid = await quote(st)
        await settle(st)
        await signed_in(st, officer)
        page = await officer.post(f"/console/policies/{active_version(st)}/what-if",
                                  {"source": "request", "request_id": rid})
    assert page.status == 409 and "encryption is not configured" in page.text


# -- shadow mode -----------------------------------------------------------------------------------------


async def test_shadow_mode_starts_reports_the_changed_decisions_live_and_stops(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, officer_browser(st) as officer:
        version = await candidate(st)
        await signed_in(st, officer)
        empty = await officer.get("/console/shadow")
        started = await officer.post("/console/shadow/start", {"version": version, "sample_percent": "100",
                                                               "reason": "closing quotes?"})
        statuses = [(await quote(st))[0] for _ in range(3)]
        await asyncio.sleep(0.05)  # the candidate judges after each request's coroutine yields
        live = await officer.get("/console/shadow")
        twice = await officer.post("/console/shadow/start", {"version": version, "sample_percent": "100"})
        stopped = await officer.post("/console/shadow/stop", {"reason": "seen enough"})
    assert empty.status == 200 and version in empty.text and "Start shadow mode" in empty.text
    assert started.status == 200 and "Shadow mode started" in started.text
    assert statuses == [200, 200, 200]  # customers only ever get the active version's answer
    assert 'id="shadow-report"' in live.text and 'data-refresh="2"' in live.text
    assert re.search(r'id="shadow-differs">3<', live.text) and "Allowed now, would be refused" in live.text
    assert "maintenance" in live.text
    assert twice.status == 409 and "already running" in twice.text
    assert stopped.status == 200 and "Shadow mode stopped" in stopped.text and "data-refresh" not in stopped.text
    assert re.search(r'id="shadow-differs">3<', stopped.text)


# -- proposals and four-eyes approval ------------------------------------------------------------------


async def test_one_officer_proposes_the_same_cannot_approve_and_a_second_approval_activates(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, \
            officer_browser(st) as first, officer_browser(st) as second:
        version = await candidate(st)
        before = active_version(st)
        await signed_in(st, first)
        no_reason = await first.post("/console/proposals", {"version": version, "reason": " "})
        proposed = await first.post("/console/proposals", {"version": version, "reason": "close quotes for the audit"})
        pid = (await st.gateway.bundles.proposals())[0].id
        self_approved = await first.post(f"/console/proposals/{pid}/approve", {})
        still = active_version(st)
        await signed_in(st, second, SECOND_OFFICER)
        offered = await second.get("/console/proposals")
        approved = await second.post(f"/console/proposals/{pid}/approve", {})
        status, _ = await quote(st)
        await settle(st)
        records = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "policy_approve"]
    assert no_reason.status == 400 and "Write the reason" in no_reason.text
    assert proposed.status == 200 and "Another compliance officer must now approve it" in proposed.text
    assert "You proposed this: another compliance officer must approve it." in proposed.text
    assert f"Approve proposal {pid}" not in proposed.text
    assert self_approved.status == 403 and "cannot approve this change yourself" in self_approved.text
    assert still == before
    assert f"Approve proposal {pid}" in offered.text and "close quotes for the audit" in offered.text
    assert approved.status == 200 and "is now active" in approved.text and version in approved.text
    assert active_version(st) == version and status == 403  # quotes are closed now
    assert [(r["sub"], r.get("outcome")) for r in records] == [
        (OFFICER, "self_approval"), (SECOND_OFFICER, None)]


async def test_a_change_without_a_recent_step_up_is_sent_to_the_step_up_page(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, officer_browser(st) as officer:
        await signed_in(st, officer, step_up=False)
        version = active_version(st)
        sent = {path: await officer.post(path, {**form, "back": back}, allow_redirects=False) for path, form, back in [
            ("/console/proposals", {"version": version, "reason": "x"}, "/console/proposals"),
            ("/console/proposals/1/approve", {}, "/console/proposals"),
            ("/console/shadow/start", {"version": version}, "/console/shadow"),
            ("/console/shadow/stop", {}, "/console/shadow"),
            ("/console/rollback", {"version": version, "reason": "x"}, "/console/rollback"),
            ("/console/rollback/break-glass", {"version": version, "reason": "x", "confirm": "yes"},
             "/console/rollback/break-glass"),
            (f"/console/policies/{version}/what-if", {"source": "request", "request_id": "r1"},
             f"/console/policies/{version}/what-if"),
        ]}
        history = await st.gateway.bundles.history()
    for path, page in sent.items():
        assert page.status == 303, path
        assert page.headers["Location"].startswith("/console/step-up?next=/console/") and "why=change" in \
            page.headers["Location"], path
    assert sent["/console/proposals"].headers["Location"] == "/console/step-up?next=/console/proposals&why=change"
    assert [a.kind for a in history] == ["bootstrap"]


# -- rollback and break-glass -------------------------------------------------------------------------------


async def test_a_rollback_is_proposed_and_approved_the_four_eyes_way(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, \
            officer_browser(st) as first, officer_browser(st) as second:
        v1 = active_version(st)
        await activate(st, await candidate(st))
        await signed_in(st, first)
        page = await first.get("/console/rollback")
        proposed = await first.post("/console/rollback", {"version": v1, "reason": "quotes must stay open"})
        pid = next(p.id for p in await st.gateway.bundles.proposals() if p.kind == "rollback")
        await signed_in(st, second, SECOND_OFFICER)
        approved = await second.post(f"/console/proposals/{pid}/approve", {})
    assert page.status == 200 and v1 in page.text and "break-glass" in page.text
    assert proposed.status == 200 and "Roll back to" in proposed.text and "quotes must stay open" in proposed.text
    assert approved.status == 200 and active_version(st) == v1


async def test_break_glass_takes_a_written_reason_and_an_explicit_confirmation(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, officer_browser(st) as officer:
        v1 = active_version(st)
        v2 = await candidate(st)
        await activate(st, v2)
        await signed_in(st, officer)
        warning = await officer.get("/console/rollback/break-glass")
        no_reason = await officer.post("/console/rollback/break-glass", {"version": v1, "reason": "", "confirm": "yes"})
        unconfirmed = await officer.post("/console/rollback/break-glass",
                                         {"version": v1, "reason": "quotes closed by mistake"})
        between = active_version(st)
        done = await officer.post("/console/rollback/break-glass",
                                  {"version": v1, "reason": "quotes closed by mistake", "confirm": "yes"})
        await settle(st)
        alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        records = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "policy_break_glass"]
    assert warning.status == 200 and "without a second officer" in warning.text
    assert "every compliance officer is alerted" in warning.text and "audit trail" in warning.text
    assert OFFICER in warning.text and SECOND_OFFICER in warning.text
    assert no_reason.status == 400 and "Write the reason" in no_reason.text
    assert unconfirmed.status == 400 and "Tick the box" in unconfirmed.text
    assert "quotes closed by mistake" in unconfirmed.text  # what was written is kept
    assert between == v2
    assert done.status == 200 and "Rolled back" in done.text and active_version(st) == v1
    assert sorted(a["recipient"] for a in alerts if a["kind"] == "policy_break_glass") == [OFFICER, SECOND_OFFICER]
    assert records[0]["sub"] == OFFICER and records[0]["reason"] == "quotes closed by mistake"


# -- what anyone wrote is shown escaped; pages keep the console's strict rules ---------------------------------


async def test_hostile_reasons_and_descriptions_are_shown_escaped(tmp_path: Path) -> None:
    payload = '<script>alert(1)</script><img src=x onerror=alert(2)>"\''
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, officer_browser(st) as officer:
        version = await candidate(st, description=payload)
        await st.gateway.bundles.propose(OFFICER, version, payload)
        await signed_in(st, officer, SECOND_OFFICER, step_up=False)
        pages = [await officer.get(p) for p in ("/console/proposals", "/console/shadow", "/console/rollback",
                                                "/console/rollback/break-glass",
                                                f"/console/policies/{version}/what-if")]
        hostile = orjson.dumps({"request": {"route": payload}}).decode()
        tried = await officer.post(f"/console/policies/{version}/what-if", {"source": "sample", "input": hostile})
    for page in pages + [tried]:
        assert page.status == 200, page.url
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        text = page.text.replace(" onerror=alert(2)", "")  # the payload shown as text says it; no tag does
        assert not _INLINE_SCRIPT.search(text) and not _HANDLER_ATTR.search(text) and not _STYLE_ATTR.search(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0].text

