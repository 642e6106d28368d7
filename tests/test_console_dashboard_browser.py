"""The decisions dashboard in a real browser: its charts render, and a new denial appears without reloading.

Chromium through Playwright as in tests/test_console_browser.py (skipped without it; REQUIRE_BROWSER=1
makes that a failure). ``CONSOLE_SCREENSHOTS=DIR`` saves ``decisions.png``.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from console_helpers import officer_token
from harness import Stack, run_stack
from test_console_browser import browser_page, no_horizontal_scroll, shot, sign_in

pytestmark = pytest.mark.timeout(120)


async def _get(s: aiohttp.ClientSession, st: Stack, path: str, **token: object) -> int:
    async with s.get(st.url + path, headers=st.auth(**token)) as r:  # type: ignore[arg-type]
        await r.read()
        return r.status


async def test_the_dashboard_draws_its_charts_and_a_new_denial_appears_live(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, aiohttp.ClientSession() as s, browser_page() as page:
        for _ in range(4):
            assert await _get(s, st, "/api/accounts/A1") == 200
        assert await _get(s, st, "/api/accounts/B9") == 403
        await sign_in(page, st, officer_token(st))
        await page.goto(st.admin_url + "/console/decisions")  # type: ignore[attr-defined]
        await page.evaluate("window.notReloaded = true")  # type: ignore[attr-defined]
        charts = page.get_by_role("img")  # type: ignore[attr-defined]
        assert await charts.count() == 2
        assert await page.locator("svg.per-minute rect.bar-allow").count() >= 1  # type: ignore[attr-defined]
        assert await page.locator("#count-allow").inner_text() == "4"  # type: ignore[attr-defined]
        assert await page.locator("#count-deny").inner_text() == "1"  # type: ignore[attr-defined]
        assert await no_horizontal_scroll(page)
        await shot(page, "decisions")
        # A denial through the public listener shows up within a refresh or two, the page never reloaded.
        assert await _get(s, st, "/api/accounts/B7", sub="mallory") == 403
        await page.get_by_role("cell", name="mallory").wait_for(timeout=15000)  # type: ignore[attr-defined]
        assert await page.locator("#count-deny").inner_text() == "2"  # type: ignore[attr-defined]
        assert await page.evaluate("window.notReloaded === true")  # type: ignore[attr-defined]
