"""The compliance console over HTTP: sign-in, sessions, step-up, CSRF, headers, escaping, frozen accounts.

A real gateway (tests/harness.py) and its admin listener on loopback; the officer is an aiohttp
client keeping cookies like a browser (tests/console_helpers.py). The browser itself is in
tests/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pyotp
from console_helpers import OFFICER, enrol_totp, officer_browser, officer_token
from harness import audit_records, run_stack

from gateway.console.sessions import Sessions
from gateway.freezes import Freeze
from gateway.state.memory import MemoryStore

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
_HANDLER_ATTR = re.compile(r"\son[a-z]+\s*=", re.I)
_STYLE_ATTR = re.compile(r"\sstyle\s*=", re.I)


async def test_signing_in_takes_a_valid_token_with_the_compliance_role(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        customer = await officer.sign_in(st.token())  # a customer's token: no compliance role
        forged = await officer.sign_in(officer_token(st)[:-4] + "AAAA")
        empty = await officer.sign_in("   ")
        good = await officer.sign_in(officer_token(st), next_page="/console/freezes")
        cookies = {c.key: c for c in officer.http.cookie_jar}
        freezes = await officer.get("/console/freezes")
        await asyncio.sleep(0.05)
        records = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "console_sign_in"]
    assert customer.status == 403 and "compliance role" in customer.text
    assert forged.status == 401 and "not accepted" in forged.text
    assert empty.status == 400
    assert good.status == 200 and good.url.endswith("/console/freezes") and OFFICER in good.text
    session = cookies["portcullis_console"]
    assert session["httponly"] and session["samesite"] == "Strict" and session["path"] == "/console/"
    assert freezes.status == 200 and "No account is frozen" in freezes.text
    assert [(r["sub"], r["outcome"]) for r in records] == [
        ("alice", "role_forbidden"), (None, "token_invalid"), (OFFICER, "ok")]


async def test_pages_need_a_session_and_after_sign_out_the_old_one_is_gone(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        before = await officer.get("/console/freezes", allow_redirects=False)
        posted = await officer.post("/console/freezes/A1/lift", {"reason": "x"}, csrf=False)
        await officer.sign_in(officer_token(st))
        session_id = next(c.value for c in officer.http.cookie_jar if c.key == "portcullis_console")
        out = await officer.post("/console/sign-out", {})
        officer.http.cookie_jar.update_cookies({"portcullis_console": session_id})  # a copy kept by an attacker
        replayed = await officer.get("/console/", allow_redirects=False)
    assert before.status == 303 and before.headers["Location"] == "/console/sign-in?next=/console/freezes"
    assert posted.status == 401 and "Sign in again" in posted.text
    assert out.status == 200 and "Sign in" in out.text
    assert replayed.status == 303 and replayed.headers["Location"].startswith("/console/sign-in")


async def test_every_page_has_a_strict_content_security_policy_and_no_inline_code(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        sign_in = await officer.get("/console/sign-in")
        await officer.sign_in(officer_token(st))
        pages = [sign_in] + [await officer.get(p) for p in ("/console/", "/console/freezes", "/console/step-up",
                                                            "/console/no-such-page")]
        script = await officer.get("/console/static/console.js")
    for page in pages:
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
        assert not _INLINE_SCRIPT.search(page.text) and not _HANDLER_ATTR.search(page.text)
        assert not _STYLE_ATTR.search(page.text)
    assert pages[-1].status == 404 and "Page not found" in pages[-1].text
    assert script.status == 200 and script.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_post_without_the_sessions_csrf_token_or_from_another_site_changes_nothing(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        secret = await enrol_totp(st)
        await st.gateway.freezes.freeze(Freeze(account="A1", time=time.time(), reasons=("aml_alert",), by="policy"))
        await officer.sign_in(officer_token(st))
        await officer.step_up(secret)
        await officer.get("/console/freezes")
        no_token = await officer.post("/console/freezes/A1/lift", {"reason": "cleared"}, csrf=False)
        wrong = await officer.post("/console/freezes/A1/lift", {"reason": "cleared", "csrf": "x" * 43})
        foreign = await officer.post("/console/freezes/A1/lift", {"reason": "cleared"},
                                     origin="https://evil.example")
        cross_site = await officer.post("/console/freezes/A1/lift", {"reason": "cleared"},
                                        headers={"Sec-Fetch-Site": "cross-site"})
        still = await st.gateway.freezes.get("A1")
    for page in (no_token, wrong, foreign, cross_site):
        assert page.status == 403, page.text
    assert still is not None


async def test_the_sign_in_form_refuses_a_post_without_its_own_nonce(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        page = await officer.post("/console/sign-in", {"nonce": "guess", "token": officer_token(st)}, csrf=False)
        cookies = [c.key for c in officer.http.cookie_jar]
    assert page.status == 403 and "portcullis_console" not in cookies


async def test_lifting_a_freeze_takes_a_recent_step_up_and_a_written_reason(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        secret = await enrol_totp(st)
        await st.gateway.freezes.freeze(Freeze(account="A1", time=time.time(), reasons=("aml_alert",), by="policy",
                                               sub="alice", policy_version="v1"))
        await officer.sign_in(officer_token(st))
        listed = await officer.get("/console/freezes")
        unconfirmed = await officer.post("/console/freezes/A1/lift", {"reason": "cleared", "back": "/console/freezes"},
                                         allow_redirects=False)
        wrong = await officer.post("/console/step-up", {"code": "000000", "next": "/console/freezes"})
        before = next(c.value for c in officer.http.cookie_jar if c.key == "portcullis_console")
        confirmed = await officer.step_up(secret, next_page="/console/freezes")
        after = next(c.value for c in officer.http.cookie_jar if c.key == "portcullis_console")
        no_reason = await officer.post("/console/freezes/A1/lift", {"reason": "  "})
        lifted = await officer.post("/console/freezes/A1/lift", {"reason": "AML review cleared, ticket 42"})
        frozen = await st.gateway.freezes.get("A1")
        again = await officer.post("/console/freezes/A1/lift", {"reason": "twice"})
        await asyncio.sleep(0.05)
        records = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "freeze_lift"]
    assert listed.status == 200 and "aml_alert" in listed.text and "alice" in listed.text
    assert unconfirmed.status == 303
    assert unconfirmed.headers["Location"] == "/console/step-up?next=/console/freezes&why=change"
    assert wrong.status == 403 and "Confirm it is you" in wrong.text and "code is wrong" in wrong.text
    assert confirmed.status == 200 and confirmed.url.endswith("/console/freezes") and before != after
    assert no_reason.status == 400 and "Write why" in no_reason.text
    assert lifted.status == 200 and "was lifted" in lifted.text and frozen is None
    assert again.status == 404 and "not frozen any more" in again.text
    first = records[0]  # write-ahead, with the reason, before the outcome
    assert first["sub"] == OFFICER and first["reason"] == "AML review cleared, ticket 42" and "freeze" in first
    assert [r.get("outcome") for r in records] == [None, "ok", "freeze_not_found"]


async def test_what_anyone_wrote_is_shown_escaped(tmp_path: Path) -> None:
    payload = '<script>alert(1)</script><img src=x onerror=alert(2)>"\''
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        await st.gateway.freezes.freeze(Freeze(account="A9", time=time.time(), reasons=(payload,), by=payload,
                                               sub=payload))
        await officer.sign_in(officer_token(st, sub=payload))
        page = await officer.get("/console/freezes")
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_after_sign_in_and_step_up_the_browser_goes_only_to_console_pages(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        secret = await enrol_totp(st)
        signed = await officer.sign_in(officer_token(st), next_page="https://evil.example/")
        stepped = await officer.step_up(secret, next_page="//evil.example/console/")
    assert signed.url.endswith("/console/") and "127.0.0.1" in signed.url
    assert stepped.url.endswith("/console/") and "127.0.0.1" in stepped.url


async def test_a_used_code_does_not_step_up_twice(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        secret = await enrol_totp(st)
        await officer.sign_in(officer_token(st))
        code = pyotp.TOTP(secret).now()
        await officer.get("/console/step-up")
        first = await officer.post("/console/step-up", {"code": code, "next": "/console/"})
        await officer.get("/console/step-up")
        second = await officer.post("/console/step-up", {"code": code, "next": "/console/"})
    assert first.status == 200 and second.status >= 400


async def test_a_session_ends_at_the_tokens_expiry_or_after_max_session() -> None:
    store = MemoryStore()
    sessions = Sessions(store, idle_timeout=900, max_session=3600)
    now = time.time()
    sid, session = await sessions.create("officer-li", ("compliance",), token_exp=now + 60, now=now)
    assert session.expires == now + 60
    assert await sessions.load(sid, now + 30) is not None
    assert await sessions.load(sid, now + 61) is None
    assert await sessions.load(sid, now + 30) is None  # ended for good, not only refused
    sid, session = await sessions.create("officer-li", ("compliance",), token_exp=now + 86_400, now=now)
    assert session.expires == now + 3600
    stepped_id, stepped = await sessions.stepped_up(sid, session, now + 10)
    assert stepped.stepped_up == now + 10 and stepped.csrf != session.csrf and stepped_id != sid
    assert await sessions.load(sid, now + 11) is None and await sessions.load(stepped_id, now + 11) is not None
