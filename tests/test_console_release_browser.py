"""Releasing a policy in a real browser (Debian's Chromium through Playwright) against a real gateway.

What-if on a past request taken from the audit trail, shadow mode's live report, four-eyes approval by
two officers in two browser contexts (the approved bundle then decides live requests), and the
break-glass rollback. Skipped without /usr/bin/chromium unless REQUIRE_BROWSER=1.
``CONSOLE_SCREENSHOTS=DIR`` saves the screenshots (what-if, shadow, proposals, break-glass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from console_helpers import (
    OFFICER,
    QUOTE,
    SECOND_OFFICER,
    candidate,
    enrol_totp,
    officer_token,
    release_config,
)
from harness import Stack, run_stack
from test_console_browser import chromium, new_page, no_horizontal_scroll, shot, sign_in

pytestmark = pytest.mark.timeout(120)


async def confirm_code(page: Any, secret: str) -> None:
    """On the step-up page the console sent us to: type the code, return to where we were."""
    assert "/console/step-up" in page.url
    await page.get_by_label("Authenticator code").fill(pyotp.TOTP(secret).now())
    await page.get_by_role("button", name="Confirm").click()


async def quote(st: Stack) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(st.url + QUOTE, headers=st.auth()) as r:
        await r.read()
        return r.status, r.headers["X-Request-Id"]


async def test_what_if_on_a_past_request_then_shadow_mode_shows_the_diff_live(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path, crypto=True)) as st, chromium() as browser:
        version = await candidate(st)
        secret = await enrol_totp(st, OFFICER)
        status, rid = await quote(st)
        assert status == 200
        page = await new_page(browser)
        await sign_in(page, st, officer_token(st))
        await page.goto(f"{st.admin_url}/console/policies/{version}/what-if")
        await page.get_by_role("link", name=rid).click()  # picked from the latest decisions
        assert await page.get_by_label("Request id").input_value() == rid
        await page.get_by_role("button", name="Try on this request").click()
        await confirm_code(page, secret)  # opening a customer's sealed input takes the code
        await page.get_by_role("button", name="Try on this request").click()
        status_text = await page.get_by_role("status").inner_text()
        assert "decide differently" in status_text
        assert "Replayed request" in await page.content()
        assert await page.locator(".side.differs .effect").all_inner_texts() == ["Allowed", "Refused"]
        assert await no_horizontal_scroll(page)
        await shot(page, "what-if")

        await page.goto(st.admin_url + "/console/shadow")
        await page.get_by_label("Version to compare").select_option(version)
        await page.get_by_label("Why (optional, recorded)").fill("would closing quotes hurt?")
        await page.get_by_role("button", name="Start shadow mode").click()
        assert "Shadow mode started" in await page.get_by_role("status").first.inner_text()
        for _ in range(4):
            assert (await quote(st))[0] == 200  # customers still get the active version's answer
        # No reload: the report refreshes itself (data-refresh) and shows the changed decisions.
        from playwright.async_api import expect

        await expect(page.locator("#shadow-differs")).to_have_text("4", timeout=15_000)
        assert "Allowed now, would be refused" in await page.locator("#shadow-report").inner_text()
        assert await no_horizontal_scroll(page)
        await shot(page, "shadow")
        await page.get_by_role("button", name="Stop shadow mode").click()
        assert "Shadow mode stopped" in await page.get_by_role("status").first.inner_text()


async def test_one_officer_proposes_another_approves_then_a_break_glass_rollback(tmp_path: Path) -> None:
    async with run_stack(tmp_path, **release_config(tmp_path)) as st, chromium() as browser:
        v1 = st.gateway.policy.version
        version = await candidate(st)
        first_secret, second_secret = await enrol_totp(st, OFFICER), await enrol_totp(st, SECOND_OFFICER)
        first, second = await new_page(browser), await new_page(browser)

        await sign_in(first, st, officer_token(st))
        await first.goto(st.admin_url + "/console/proposals")
        await first.get_by_label("Why this version should become active").fill("Close quotes for the exchange audit")
        await first.get_by_role("button", name="Propose activation").click()
        await confirm_code(first, first_secret)
        await first.get_by_label("Why this version should become active").fill("Close quotes for the exchange audit")
        await first.get_by_role("button", name="Propose activation").click()
        assert "must now approve" in await first.get_by_role("status").inner_text()
        assert "You proposed this" in await first.content()
        assert await first.get_by_role("button", name="Approve proposal 1").count() == 0

        await sign_in(second, st, officer_token(st, sub=SECOND_OFFICER))
        await second.goto(st.admin_url + "/console/proposals")
        await second.get_by_role("button", name="Approve proposal 1").click()
        await confirm_code(second, second_secret)
        await second.get_by_role("button", name="Approve proposal 1").click()
        assert "is now active" in await second.get_by_role("status").inner_text()
        assert await second.locator("#active-version").inner_text() == version
        assert await no_horizontal_scroll(second)
        await shot(second, "proposals")
        assert (await quote(st))[0] == 403  # a live request is now decided by the approved bundle

        await first.goto(st.admin_url + "/console/rollback")
        await first.get_by_role("link", name="Read what break-glass does, then roll back").click()
        await first.get_by_label("Why this cannot wait for a second officer").fill("Customers cannot get quotes")
        await shot(first, "break-glass")
        await first.get_by_role("button", name="Roll back now (break glass)").click()
        # The browser itself refuses the form until the confirmation is ticked: nothing changed.
        assert st.gateway.policy.version == version and first.url.endswith("/console/rollback/break-glass")
        await first.get_by_label("I understand").check()
        await first.get_by_role("button", name="Roll back now (break glass)").click()
        assert "Rolled back" in await first.get_by_role("status").inner_text()
        assert st.gateway.policy.version == v1 and (await quote(st))[0] == 200
