"""The audit trail pages in a real browser: search, open a record, check the trail.

Chromium through Playwright as in tests/test_console_browser.py (skipped without it; REQUIRE_BROWSER=1
makes that a failure). ``CONSOLE_SCREENSHOTS=DIR`` saves ``audit.png`` and ``audit-record.png``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from console_helpers import officer_token
from harness import run_stack
from test_console_browser import browser_page, no_horizontal_scroll, shot, sign_in

pytestmark = pytest.mark.timeout(120)


async def test_an_officer_searches_opens_a_record_and_checks_the_trail(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s, browser_page() as page:
        for path in ("/api/accounts/A1", "/api/accounts/B9", "/api/quotes/600519.SH"):
            async with s.get(st.url + path, headers=st.auth()) as r:
                await r.read()
                if path.endswith("B9"):
                    denied = r.headers["X-Request-Id"]
        await asyncio.sleep(0.1)
        await sign_in(page, st, officer_token(st))
        await page.get_by_role("link", name="Audit trail").click()  # type: ignore[attr-defined]
        await page.get_by_label("Customer").fill("alice")  # type: ignore[attr-defined]
        await page.get_by_label("Decision").select_option(label="Denied")  # type: ignore[attr-defined]
        await page.get_by_role("button", name="Search").click()  # type: ignore[attr-defined]
        assert "sub=alice" in page.url and "decision=deny" in page.url  # type: ignore[attr-defined]
        results = page.locator("table.results tbody tr")  # type: ignore[attr-defined]
        assert await results.count() == 1
        assert "account_forbidden" in await results.first.inner_text()
        assert await no_horizontal_scroll(page)
        await shot(page, "audit")
        await results.first.get_by_role("link").click()
        assert "/console/audit/records/" in page.url  # type: ignore[attr-defined]
        record = page.locator("table.record")  # type: ignore[attr-defined]
        assert denied in await record.inner_text() and "B9" in await record.inner_text()
        await shot(page, "audit-record")
        await page.get_by_role("link", name="Back to the audit trail").click()  # type: ignore[attr-defined]
        await page.get_by_role("link", name="Check that the trail is intact").click()  # type: ignore[attr-defined]
        assert "the audit trail verifies" in await page.get_by_role("status").inner_text()  # type: ignore[attr-defined]
