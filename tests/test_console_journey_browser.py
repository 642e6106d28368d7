"""The whole journey of a policy change in the console, in a real browser, as the issue tells it.

Officer A signs in, breaks the policy in a draft and sees the error at the right line, fixes it and
changes what it decides (quotes closed), runs the checks and the bundle's tests, runs a what-if on a
real past request from the audit trail, starts shadow mode and watches the diff, proposes the
version; officer B (their own browser context) approves it; a live customer request is now decided
by the new bundle; A proposes the rollback, B approves it, and the customer is served again.

Debian's Chromium through Playwright against a real gateway (tests/harness.py) with the policy input
sealed into the audit trail ([crypto]). Skipped without /usr/bin/chromium unless REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from console_helpers import OFFICER, SECOND_OFFICER, enrol_totp, officer_token, release_config
from harness import run_stack
from test_console_browser import chromium, new_page, sign_in
from test_console_release_browser import confirm_code, quote

pytestmark = pytest.mark.timeout(180)

_ERROR_LINK = re.compile(r"gateway\.rego, line (\d+), column (\d+)")


async def test_a_policy_change_from_a_broken_draft_to_approval_live_traffic_and_rollback(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with run_stack(tmp_path, **release_config(tmp_path, crypto=True)) as st, chromium() as browser:
        v1 = st.gateway.policy.version
        a_secret, b_secret = await enrol_totp(st, OFFICER), await enrol_totp(st, SECOND_OFFICER)
        status, past_request = await quote(st)  # a customer's request, decided and audited
        assert status == 200
        a, b = await new_page(browser), await new_page(browser)

        # Sign in; the active version; a draft of it (a change: the code is asked first).
        await sign_in(a, st, officer_token(st))
        await a.goto(st.admin_url + "/console/policies")
        await a.get_by_role("link", name=v1).first.click()
        await a.get_by_role("button", name="Edit as a draft").click()
        await confirm_code(a, a_secret)
        await a.get_by_role("button", name="Edit as a draft").click()
        draft_url = a.url
        assert "/console/drafts/" in draft_url

        # Break the policy: the closing brace of the rule on lines 7-10 is gone.
        await a.get_by_role("link", name="gateway.rego", exact=True).click()
        editor = a.get_by_label("Text of gateway.rego")
        original = await editor.input_value()
        lines = original.split("\n")
        assert lines[9] == "}"
        await editor.fill("\n".join(lines[:9] + lines[10:]))
        await a.get_by_role("button", name="Save").click()
        await a.wait_for_url("**saved=1")
        await a.goto(draft_url)
        await a.get_by_role("button", name="Check this draft").click()
        error = a.get_by_role("link", name=_ERROR_LINK)
        assert await error.count() == 1
        line = int(_ERROR_LINK.search(await error.inner_text())[1])  # type: ignore[index]
        assert 10 <= line <= 12, line  # where the parser runs into the next rule
        await error.click()
        assert await a.locator(".editor.live pre.overlay .line.hit").count() == 1

        # Fix it, and change what it decides: quotes close.
        editor = a.get_by_label("Text of gateway.rego")
        await editor.fill(original)
        await a.get_by_role("button", name="Save").click()
        await a.wait_for_url("**saved=1")
        await a.goto(draft_url)
        await a.get_by_role("link", name="data/settings.json", exact=True).click()
        settings = a.get_by_label("Text of data/settings.json")
        await settings.fill((await settings.input_value()).replace('"quotes_open":true', '"quotes_open":false'))
        await a.get_by_role("button", name="Save").click()
        await a.wait_for_url("**saved=1")
        await a.goto(draft_url)
        await a.get_by_role("button", name="Check this draft").click()  # validation and the bundle's tests
        assert await a.get_by_role("status").filter(has_text="The checks passed").count() == 1
        assert await a.locator(".tag.passed").count() >= 2 and await a.locator(".tag.failed").count() == 0
        newest = max(await st.gateway.bundles.bundles(), key=lambda b: b.seq)
        v2 = newest.version
        assert v2 != v1 and newest.status == "validated"

        # What-if on the past request, opened from the audit trail.
        await a.goto(f"{st.admin_url}/console/policies/{v2}/what-if")
        await a.get_by_role("link", name=past_request).click()
        await a.get_by_role("button", name="Try on this request").click()
        assert "decide differently" in await a.get_by_role("status").inner_text()
        assert await a.locator(".side.differs .effect").all_inner_texts() == ["Allowed", "Refused"]

        # Shadow mode: live requests judged by both; the report shows the diff without a reload.
        await a.goto(st.admin_url + "/console/shadow")
        await a.get_by_label("Version to compare").select_option(v2)
        await a.get_by_role("button", name="Start shadow mode").click()
        for _ in range(3):
            assert (await quote(st))[0] == 200  # customers still get the active version's answer
        await expect(a.locator("#shadow-differs")).to_have_text("3", timeout=15_000)
        await a.get_by_role("button", name="Stop shadow mode").click()

        # Propose; the proposer cannot approve; officer B approves.
        await a.goto(f"{st.admin_url}/console/proposals?version={v2}")
        await a.get_by_label("Why this version should become active").fill("Quotes close for the exchange audit")
        await a.get_by_role("button", name="Propose activation").click()
        assert "must now approve" in await a.get_by_role("status").inner_text()
        assert await a.get_by_role("button", name=re.compile("Approve proposal")).count() == 0
        await sign_in(b, st, officer_token(st, sub=SECOND_OFFICER))
        await b.goto(st.admin_url + "/console/proposals")
        await b.get_by_role("button", name="Approve proposal 1").click()
        await confirm_code(b, b_secret)
        await b.get_by_role("button", name="Approve proposal 1").click()
        assert "is now active" in await b.get_by_role("status").inner_text()
        assert st.gateway.policy.version == v2
        assert (await quote(st))[0] == 403  # a live request, decided by the new bundle

        # Roll back the same four-eyes way.
        await a.goto(st.admin_url + "/console/rollback")
        await a.get_by_label("Earlier version").select_option(v1)
        await a.get_by_label("Why roll back").fill("Customers must get quotes again")
        await a.get_by_role("button", name="Propose rollback").click()
        await b.goto(st.admin_url + "/console/proposals")
        await b.get_by_role("button", name="Approve proposal 2").click()
        assert st.gateway.policy.version == v1
        assert (await quote(st))[0] == 200
