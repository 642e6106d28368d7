"""The console's audit trail pages over HTTP: search, pages, one record, verification, CSV export.

A real gateway writing its real file trail (tests/harness.py); the officer keeps cookies like a browser
(tests/console_helpers.py). The browser itself is in tests/test_console_audit_browser.py.
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import re
from pathlib import Path

import aiohttp
import pytest
from console_helpers import OFFICER, Officer, officer_browser, officer_token
from harness import Stack, audit_records, run_stack

from gateway.console import audit as console_audit
from gateway.console.audit import readable

_LINK = re.compile(r'href="(/console/audit/records/[^"]+)"')
_NEXT = re.compile(r'href="([^"]+)" rel="next"')
_RID = re.compile(r"[0-9a-f]{24}")
HOSTILE = '<img src=x onerror="alert(1)">'
FORMULA = '=HYPERLINK("http://evil.example","x")'


async def _request(s: aiohttp.ClientSession, st: Stack, path: str, **token: object) -> str:
    async with s.get(st.url + path, headers=st.auth(**token)) as r:  # type: ignore[arg-type]
        await r.read()
        return r.headers["X-Request-Id"]


async def _traffic(st: Stack) -> dict[str, str]:
    """Alice reads her account and tries another's; bob reads a quote: their request ids."""
    async with aiohttp.ClientSession() as s:
        rids = {"alice_ok": await _request(s, st, "/api/accounts/A1"),
                "alice_denied": await _request(s, st, "/api/accounts/B9"),
                "bob_quote": await _request(s, st, "/api/quotes/600519.SH", sub="bob", accounts=("B1",))}
    await asyncio.sleep(0.1)  # the records are queued
    return rids


async def _signed_in(st: Stack, officer: Officer) -> None:
    await officer.sign_in(officer_token(st))


def _rids(text: str) -> list[str]:
    return _RID.findall(text)


async def test_the_search_filters_by_customer_decision_reason_route_and_time(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        rids = await _traffic(st)
        await _signed_in(st, officer)
        by_sub = await officer.get("/console/audit?search=1&sub=alice")
        denied = await officer.get("/console/audit?search=1&decision=deny&sub=alice")
        reason = await officer.get("/console/audit?search=1&reason=account_forbidden")
        route = await officer.get("/console/audit?search=1&route=quotes&type=decision")
        account = await officer.get("/console/audit?search=1&account=B9")
        future = await officer.get("/console/audit?search=1&from=2999-01-01T00:00:00Z")
        bad = await officer.get("/console/audit?search=1&from=yesterday")
    assert by_sub.status == 200 and "2 records" in by_sub.text
    assert rids["alice_ok"] not in by_sub.text  # request ids are on the record page, not the list
    assert "bob" not in by_sub.text and by_sub.text.count('href="/console/audit/records/') == 2
    assert "1 record" in denied.text and "account_forbidden" in denied.text
    assert "1 record" in reason.text and "1 record" in account.text
    assert "1 record" in route.text and ">bob<" in route.text
    assert "No records match" in future.text
    assert bad.status == 400 and "That search cannot be run" in bad.text and "not a time" in bad.text
    assert 'value="yesterday"' in bad.text  # the form keeps what was typed


async def test_results_come_in_pages_with_the_cursor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_audit, "PAGE_SIZE", 2)
    async with run_stack(tmp_path) as st, officer_browser(st) as officer, aiohttp.ClientSession() as s:
        sent = [await _request(s, st, "/api/accounts/A1") for _ in range(5)]
        await asyncio.sleep(0.1)
        await _signed_in(st, officer)
        pages = [await officer.get("/console/audit?search=1&sub=alice&type=decision")]
        while (nxt := _NEXT.search(pages[-1].text)) is not None and len(pages) < 5:
            pages.append(await officer.get(html.unescape(nxt[1])))
        seen: list[str] = []
        for page in pages:
            for link in _LINK.findall(page.text):
                seen += [r for r in _rids((await officer.get(html.unescape(link))).text) if r in sent]
    assert len(pages) == 3 and "That is the last page" in pages[-1].text and "First page" in pages[1].text
    assert seen == sent  # every record once, in the trail's order


async def test_a_record_page_shows_every_field_and_sealed_ones_as_encrypted(tmp_path: Path) -> None:
    crypto = {"enabled": True, "master_key_file": str(tmp_path / "master.key")}
    async with run_stack(tmp_path, crypto=crypto) as st, officer_browser(st) as officer:
        st.gateway._auditor.queue({"type": "security_event", "time": 1.8e9, "sub": "alice",
                                   "request_id": "pd-1", "phone": "+86 138 0013 8000"})
        await asyncio.sleep(0.1)
        await _signed_in(st, officer)
        listed = await officer.get("/console/audit?search=1&type=security_event")
        link = _LINK.search(listed.text)
        assert link is not None, listed.text
        record = await officer.get(html.unescape(link[1]))
        missing = await officer.get("/console/audit/records/20260101T000000Z-00000000/7")
        malformed = await officer.get("/console/audit/records/nonsense/7")
    assert record.status == 200 and "pd-1" in record.text and "security_event" in record.text
    assert "+86 138" not in record.text and '<span class="tag">encrypted</span>' in record.text
    assert "2027-01-15" in record.text  # the time, readable
    assert missing.status == 404 and "no record 7" in missing.text
    assert malformed.status == 404


def test_nested_sealed_values_are_shown_as_encrypted() -> None:
    sealed = {"enc": "sm4-gcm", "kid": "k1", "iv": "AAAA", "ct": "BBBB"}
    fields = {f.name: f for f in readable({"time": 1.8e9, "sub": "alice", "input": sealed,
                                           "facts": {"phone": sealed, "n": 1}, "reasons": ["a", "b"], "ok": True})}
    assert fields["input"].sealed and fields["input"].text == "encrypted"
    assert fields["facts"].block and "(encrypted)" in fields["facts"].text and "BBBB" not in fields["facts"].text
    assert fields["reasons"].text == "a, b" and fields["ok"].text == "yes"
    assert list(fields)[:2] == ["time", "sub"]


async def test_verify_says_ok_then_names_the_first_break_after_a_segment_is_edited(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        rids = await _traffic(st)
        await _signed_in(st, officer)
        ok = await officer.get("/console/audit/verify")
        segment = next(f for f in sorted((tmp_path / "audit").rglob("*.jsonl"))
                       if rids["alice_ok"] in f.read_text())
        lines = segment.read_text().splitlines(keepends=True)
        i = next(n for n, line in enumerate(lines) if rids["alice_ok"] in line and '"decision"' in line)
        doc = json.loads(lines[i])
        doc["account"] = "A2"  # someone rewrites history
        lines[i] = json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
        segment.write_text("".join(lines))
        broken = await officer.get("/console/audit/verify")
    assert ok.status == 200 and "Yes: the audit trail verifies" in ok.text
    assert "No: the audit trail has been changed" in broken.text
    first = re.search(r'id="first-break">(.*?)</p>', broken.text, re.S)
    assert first is not None and f"at record {doc['seq']} " in first[1] and f"{segment.name}:{i + 1}" in first[1]
    assert "edited" in first[1]


async def test_the_csv_export_downloads_the_search_with_formulas_neutralised(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer, aiohttp.ClientSession() as s:
        rid = await _request(s, st, "/api/accounts/A1", sub=FORMULA)
        await asyncio.sleep(0.1)
        await _signed_in(st, officer)
        page = await officer.get("/console/audit?" + "search=1&type=decision&sub=" + aiohttp.helpers.quote(FORMULA))
        export = re.search(r'href="(/console/audit/export\.csv[^"]*)"', page.text)
        assert export is not None
        download = await officer.get(html.unescape(export[1]))
    assert download.status == 200 and download.headers["Content-Type"].startswith("text/csv")
    assert download.headers["Content-Disposition"] == 'attachment; filename="audit.csv"'
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert [(r["request_id"], r["sub"]) for r in rows] == [(rid, "'" + FORMULA)]


async def test_hostile_values_are_escaped_in_results_records_and_the_form(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer, aiohttp.ClientSession() as s:
        await _request(s, st, "/api/accounts/A1", sub=HOSTILE)
        await asyncio.sleep(0.1)
        await _signed_in(st, officer)
        listed = await officer.get("/console/audit?search=1&type=decision&sub=" + aiohttp.helpers.quote(HOSTILE))
        link = _LINK.search(listed.text)
        assert link is not None
        record = await officer.get(html.unescape(link[1]))
        reflected = await officer.get('/console/audit?search=1&reason="><script>alert(1)</script>')
    for page in (listed, record, reflected):
        assert "<img" not in page.text and "<script>alert" not in page.text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)
    assert "&lt;img src=x onerror=" in listed.text and "&lt;img src=x onerror=" in record.text


async def test_every_search_record_view_export_and_check_is_audited(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, officer_browser(st) as officer:
        await _traffic(st)
        await _signed_in(st, officer)
        opened = await officer.get("/console/audit")  # the form alone: no search yet
        listed = await officer.get("/console/audit?search=1&sub=alice")
        link = _LINK.search(listed.text)
        assert link is not None
        await officer.get(html.unescape(link[1]))
        await officer.get("/console/audit/export.csv?sub=alice")
        await officer.get("/console/audit/verify")
        await asyncio.sleep(0.1)
        records = audit_records(tmp_path / "audit")
    queries = [r for r in records if r.get("action") == "audit_query"]
    assert opened.status == 200 and "Search" in opened.text
    assert [(q["sub"], q["via"], q["format"]) for q in queries] == [
        (OFFICER, "console", "console"), (OFFICER, "console", "record"), (OFFICER, "console", "csv")]
    assert queries[0]["filters"] == {"sub": "alice"} and queries[0]["count"] == 2
    checks = [r for r in records if r.get("action") == "audit_verify"]
    assert [(c["sub"], c["via"], c["ok"]) for c in checks] == [(OFFICER, "console", True)]
