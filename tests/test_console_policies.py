"""The console's Policies section over HTTP: versions and history, files shown escaped, drafts edited by two
officers at once (the second save refused), huge and binary edits refused, a check pinning a compile error
to file, line and column and listing the bundle's tests.

A real gateway serving the broker bundle (policies/) with the in-memory bundle repository; the officers are
aiohttp clients keeping cookies (tests/console_helpers.py). Validation runs in a child process: few checks.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from console_helpers import OFFICER, SECOND_OFFICER, Officer, enrol_totp, officer_browser, officer_token
from harness import Stack, audit_records, run_stack

from gateway.bundles.files import read_directory

POLICIES = Path(__file__).resolve().parent.parent / "policies"
MAX_BYTES = 256 * 1024
HOSTILE = "# <script>alert(1)</script> \"quoted\" & 'single'\n"


@asynccontextmanager
async def policy_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with run_stack(tmp_path, policy={"engine": "rego", "bundle": str(POLICIES)},
                         policy_admin={"max_bundle_bytes": "256KiB", "max_files": 40}) as st:
        yield st


async def ready_officer(st: Stack, http: Officer, sub: str = OFFICER) -> Officer:
    """Signed in, with a recent step-up (changes allowed)."""
    secret = await enrol_totp(st, sub)
    await http.sign_in(officer_token(st, sub))
    page = await http.step_up(secret)
    assert page.status == 200, page.text
    return http


async def new_draft(st: Stack, officer: Officer) -> int:
    version = st.gateway.policy.version
    await officer.get(f"/console/policies/{version}")
    page = await officer.post(f"/console/policies/{version}/draft", {"back": f"/console/policies/{version}"})
    found = re.search(r"/console/drafts/(\d+)$", page.url)
    assert page.status == 200 and found, (page.status, page.url)
    return int(found[1])


async def draft_files(st: Stack, draft_id: int) -> dict[str, str]:
    draft = await st.gateway.bundles.repo.draft(draft_id)
    assert draft is not None
    return dict(draft.files)


async def save(officer: Officer, draft_id: int, path: str, text: str, revision: int, *, script: bool = False,
               **form: Any) -> Any:
    data = {"path": path, "text": text, "revision": str(revision), **form}
    headers = {"X-CSRF-Token": officer.csrf} if script else {}
    return await officer.post(f"/console/drafts/{draft_id}/save", data, headers=headers)


async def test_the_versions_page_shows_the_active_version_and_its_history(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as officer:
        await officer.sign_in(officer_token(st))
        page = await officer.get("/console/policies")
    version = st.gateway.policy.version
    assert page.status == 200
    assert f'href="/console/policies/{version}"' in page.text and "in force" in page.text
    assert "first version (from the configuration)" in page.text and "No draft yet" in page.text


async def test_a_file_is_shown_with_line_numbers_and_hostile_text_escaped(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as officer:
        files = dict(read_directory(POLICIES).files)
        files["gateway.rego"] = HOSTILE + files["gateway.rego"]
        info = await st.gateway.bundles.upload("carol", {"files": files, "description": "<b>bold</b>"})
        await officer.sign_in(officer_token(st))
        listing = await officer.get("/console/policies")
        view = await officer.get(f"/console/policies/{info.version}?file=gateway.rego&line=2")
        overview = await officer.get(f"/console/policies/{info.version}")
        missing = await officer.get(f"/console/policies/{info.version}?file=nope.rego")
    assert "<b>bold</b>" not in listing.text and "&lt;b&gt;bold&lt;/b&gt;" in listing.text
    assert view.status == 200 and "<script>alert(1)" not in view.text
    first = re.search(r'<span class="line" id="L1">(.*?)</span>', view.text)
    assert first is not None and html.unescape(first[1]) == HOSTILE.rstrip("\n")
    assert '<span class="line hit" id="L2">' in view.text and 'data-lang="rego"' in view.text
    assert "/console/static/policies.js" in view.text
    for link in ("what-if", "/console/shadow?version=", "/console/proposals?version="):
        assert link in overview.text
    assert 'href="/console/policies/' + info.version + '?file=data/limits.json"' in overview.text
    assert missing.status == 404


async def test_changes_need_a_recent_step_up(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as officer:
        await officer.sign_in(officer_token(st))
        version = st.gateway.policy.version
        await officer.get(f"/console/policies/{version}")
        page = await officer.post(f"/console/policies/{version}/draft", {"back": f"/console/policies/{version}"},
                                  allow_redirects=False)
    assert page.status == 303 and page.headers["Location"].startswith("/console/step-up?next=/console/policies/")
    assert await st.gateway.bundles.repo.drafts() == []


async def test_two_officers_edit_one_draft_and_the_stale_save_is_refused(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as li, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        wang = Officer(other, st.admin_url)
        await ready_officer(st, li)
        await ready_officer(st, wang, SECOND_OFFICER)
        draft_id = await new_draft(st, li)
        original = (await draft_files(st, draft_id))["limits.rego"]
        for officer in (li, wang):  # both open the same file at revision 1
            page = await officer.get(f"/console/drafts/{draft_id}?file=limits.rego")
            assert page.status == 200 and 'name="revision" value="1"' in page.text
        mine = await save(li, draft_id, "limits.rego", "# li was here\r\n" + original, 1)
        theirs = await save(wang, draft_id, "limits.rego", "# wang was here\n" + original, 1)
        files = await draft_files(st, draft_id)
        await asyncio.sleep(0.05)
        records = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "policy_draft_save"]
    assert mine.status == 200 and mine.url.endswith("saved=1") and "Saved." in mine.text
    assert theirs.status == 409 and f"Not saved: {OFFICER} changed this draft" in theirs.text
    assert "# wang was here" in theirs.text  # the refused text is shown back to copy
    assert files["limits.rego"] == "# li was here\n" + original  # CR LF from the browser stored as LF
    assert [(r["sub"], r["outcome"]) for r in records] == [(OFFICER, "ok"), (SECOND_OFFICER, "conflict")]


async def test_a_file_over_64kib_is_saved_and_one_over_the_bundle_limit_is_refused(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as officer:
        await ready_officer(st, officer)
        draft_id = await new_draft(st, officer)
        await officer.get(f"/console/drafts/{draft_id}?file=risk.rego")
        original = (await draft_files(st, draft_id))["risk.rego"]
        big = original + "# padding\n" * 10_000  # ~100 KB: past the listener's 64 KiB
        saved = await save(officer, draft_id, "risk.rego", big, 1, script=True)
        huge = big + "# more padding\n" * 12_000  # the bundle passes 256 KiB
        refused = await save(officer, draft_id, "risk.rego", huge, 2, script=True)
        plain = await save(officer, draft_id, "risk.rego", huge, 2)  # without the script: the listener's cap
        files = await draft_files(st, draft_id)
    assert saved.status == 200 and "Saved." in saved.text
    assert refused.status == 413 and "too large: a bundle may hold at most 262,144 bytes" in refused.text
    assert plain.status == 413
    assert files["risk.rego"] == big


async def test_binary_and_non_utf8_edits_are_refused(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as officer:
        await ready_officer(st, officer)
        draft_id = await new_draft(st, officer)
        await officer.get(f"/console/drafts/{draft_id}")
        nul = await save(officer, draft_id, "risk.rego", "package gateway.risk\n\0\0\0", 1)
        form = aiohttp.FormData()
        form.add_field("csrf", officer.csrf)
        form.add_field("revision", "1")
        form.add_field("path", "extra.rego")
        form.add_field("upload", b"package extra\n# \xff\xfe latin-1\n", filename="extra.rego",
                       content_type="application/octet-stream")
        async with officer.http.post(f"{st.admin_url}/console/drafts/{draft_id}/add", data=form,
                                     headers={"Origin": st.admin_url}) as r:
            latin, latin_text = r.status, await r.text()
        bad_name = await officer.post(f"/console/drafts/{draft_id}/add", {"path": "../etc/passwd", "revision": "1"})
        files = await draft_files(st, draft_id)
    assert nul.status == 400 and "looks like a binary file" in nul.text
    assert latin == 400 and "extra.rego is not UTF-8 text" in latin_text
    assert bad_name.status == 400 and "cannot be used" in bad_name.text
    assert files == dict(read_directory(POLICIES).files)


async def test_adding_and_deleting_files(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as officer:
        await ready_officer(st, officer)
        draft_id = await new_draft(st, officer)
        await officer.get(f"/console/drafts/{draft_id}")
        added = await officer.post(f"/console/drafts/{draft_id}/add", {"path": "notes.rego", "revision": "1"})
        deleted = await officer.post(f"/console/drafts/{draft_id}/delete", {"path": "cancel_test.rego",
                                                                            "revision": "2"})
        stale = await officer.post(f"/console/drafts/{draft_id}/delete", {"path": "risk_test.rego", "revision": "2"})
        files = await draft_files(st, draft_id)
    assert added.status == 200 and added.url.endswith("?file=notes.rego")
    assert deleted.status == 200 and "cancel_test.rego" not in files and "risk_test.rego" in files
    assert files["notes.rego"] == "package notes\n\nimport rego.v1\n"
    assert stale.status == 409 and "Not saved" in stale.text


async def test_a_check_pins_the_compile_error_then_lists_the_tests(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as officer:
        await ready_officer(st, officer)
        draft_id = await new_draft(st, officer)
        original = (await draft_files(st, draft_id))["gateway.rego"]
        lines = original.split("\n")
        assert lines[60] == "}"  # the end of the rule before route_checks_ok (line 66)
        await officer.get(f"/console/drafts/{draft_id}?file=gateway.rego")
        await save(officer, draft_id, "gateway.rego", "\n".join(lines[:60] + lines[61:]), 1)
        broken = await officer.post(f"/console/drafts/{draft_id}/check", {"revision": "2"})
        fixed_text = "# reviewed by the compliance team\n" + original
        await officer.get(f"/console/drafts/{draft_id}?file=gateway.rego")
        await save(officer, draft_id, "gateway.rego", fixed_text, 2)
        passed = await officer.post(f"/console/drafts/{draft_id}/check", {"revision": "3"})
        draft = await st.gateway.bundles.repo.draft(draft_id)
        assert draft is not None and draft.info.checked_version is not None
        version_page = await officer.get(f"/console/policies/{draft.info.checked_version}")
    assert broken.status == 422, broken.text
    link = f'href="/console/drafts/{draft_id}?file=gateway.rego&amp;line=66#L66"'
    assert link in broken.text and "gateway.rego, line 66, column 17" in broken.text
    assert "expecting `}`" in broken.text and "did not run" in broken.text
    assert passed.status == 200, passed.text
    assert "The checks passed" in passed.text and '<span class="tag passed">passed</span>' in passed.text
    assert "data.gateway.gateway_test.test_empty_input_denied" in passed.text
    assert '<span class="tag failed">' not in passed.text
    assert draft.info.checked_version in passed.text and "The checks passed" in version_page.text
    assert (await st.gateway.bundles.bundle(draft.info.checked_version)).info.status == "validated"


async def test_a_draft_is_discarded_unless_someone_saved_it_meanwhile(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, officer_browser(st) as li:
        await ready_officer(st, li)
        draft_id = await new_draft(st, li)
        await li.get(f"/console/drafts/{draft_id}")
        original = (await draft_files(st, draft_id))["limits.rego"]
        await save(li, draft_id, "limits.rego", "# changed\n" + original, 1)
        stale = await li.post(f"/console/drafts/{draft_id}/discard", {"revision": "1"})
        kept = await st.gateway.bundles.repo.draft(draft_id)
        gone = await li.post(f"/console/drafts/{draft_id}/discard", {"revision": "2"})
        await asyncio.sleep(0.05)
        records = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "policy_draft_discard"]
    assert stale.status == 409 and "Not discarded" in stale.text and kept is not None
    assert gone.status == 200 and f"Draft {draft_id} was discarded" in gone.text
    assert await st.gateway.bundles.repo.draft(draft_id) is None
    assert [r["outcome"] for r in records] == ["conflict", "ok"]
