"""The compliance console in a real browser: Debian's Chromium driven by Playwright, against a real gateway.

Headless, ``--no-sandbox`` (CI runs as root), at 1280x800. Skipped without /usr/bin/chromium
(`make test` installs it as root); REQUIRE_BROWSER=1 (CI) turns that into a failure.

``CONSOLE_SCREENSHOTS=DIR`` saves a screenshot of each page visited to DIR (the ones in
docs/console/ come from ``CONSOLE_SCREENSHOTS=docs/console``).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pyotp
import pytest
from conftest import service_unavailable
from console_helpers import OFFICER, enrol_totp, officer_token
from harness import Stack, run_stack

from gateway.freezes import Freeze

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless; each officer gets a context of their own (``new_page``: own cookies)."""
    if not CHROMIUM.exists():
        service_unavailable("REQUIRE_BROWSER", f"{CHROMIUM} is not installed (as root: apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Any) -> Any:
    context = await browser.new_context(viewport=VIEWPORT)
    return await context.new_page()


@asynccontextmanager
async def browser_page() -> AsyncIterator[object]:
    """One officer's page in a browser of its own."""
    async with chromium() as browser:
        yield await new_page(browser)


async def shot(page: object, name: str) -> None:
    folder = os.environ.get("CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


async def no_horizontal_scroll(page: object) -> bool:
    return bool(await page.evaluate(  # type: ignore[attr-defined]
        "document.documentElement.scrollWidth <= window.innerWidth"))


async def sign_in(page: object, st: Stack, token: str) -> None:
    await page.goto(st.admin_url + "/console/freezes")  # type: ignore[attr-defined]
    await page.get_by_label("Sign-in token").fill(token)  # type: ignore[attr-defined]
    await page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


async def test_an_officer_signs_in_confirms_a_code_and_lifts_a_freeze(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, browser_page() as page:
        secret = await enrol_totp(st)
        await st.gateway.freezes.freeze(Freeze(account="A1", time=time.time(), reasons=("aml_alert",), by="policy",
                                               sub="alice", policy_version="v1", route="order_place"))
        await page.goto(st.admin_url + "/console/freezes")  # type: ignore[attr-defined]
        await shot(page, "sign-in")
        await sign_in(page, st, officer_token(st))
        assert page.url.endswith("/console/freezes")  # type: ignore[attr-defined]
        await shot(page, "freezes")
        assert await no_horizontal_scroll(page)
        await page.get_by_label("Reason for lifting").fill("AML review cleared, ticket 42")  # type: ignore[attr-defined]
        await page.get_by_role("button", name="Lift freeze on A1").click()  # type: ignore[attr-defined]
        # No recent step-up: the console asks for the code first.
        assert "/console/step-up" in page.url  # type: ignore[attr-defined]
        await shot(page, "step-up")
        await page.get_by_label("Authenticator code").fill(pyotp.TOTP(secret).now())  # type: ignore[attr-defined]
        await page.get_by_role("button", name="Confirm").click()  # type: ignore[attr-defined]
        assert page.url.endswith("/console/freezes")  # type: ignore[attr-defined]
        await page.get_by_label("Reason for lifting").fill("AML review cleared, ticket 42")  # type: ignore[attr-defined]
        await page.get_by_role("button", name="Lift freeze on A1").click()  # type: ignore[attr-defined]
        status = page.get_by_role("status")  # type: ignore[attr-defined]
        assert "was lifted" in await status.inner_text()
        assert await st.gateway.freezes.get("A1") is None
        await page.get_by_role("link", name="Overview").click()  # type: ignore[attr-defined]
        await shot(page, "overview")
        assert OFFICER in await page.content()  # type: ignore[attr-defined]


async def test_the_sign_in_works_from_the_keyboard_alone(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, browser_page() as page:
        await page.goto(st.admin_url + "/console/")  # type: ignore[attr-defined]
        keyboard = page.keyboard  # type: ignore[attr-defined]
        focused = []
        for _ in range(4):  # skip link, then the token field
            await keyboard.press("Tab")
            focused.append(await page.evaluate("document.activeElement.id || document.activeElement.tagName"))  # type: ignore[attr-defined]
            if focused[-1] == "token":
                break
        assert focused[-1] == "token", focused
        await keyboard.insert_text(officer_token(st))
        await keyboard.press("Tab")  # to the button
        await keyboard.press("Enter")
        await page.wait_for_url(lambda url: url.endswith("/console/") and "sign-in" not in url)  # type: ignore[attr-defined]
        assert "Overview" in await page.title()  # type: ignore[attr-defined]


async def test_a_customer_token_is_refused_in_plain_words(tmp_path: Path) -> None:
    async with run_stack(tmp_path) as st, browser_page() as page:
        await sign_in(page, st, st.token())
        alert = page.get_by_role("alert")  # type: ignore[attr-defined]
        assert "compliance role" in await alert.inner_text()
