"""The console's Policies section in a real browser (Chromium through Playwright, see test_console_browser.py):
open the active bundle, make a draft, break a Rego file, check it, follow the error to its line, fix it,
check again and see the tests pass. ``CONSOLE_SCREENSHOTS=DIR`` saves the screenshots.
"""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest
from console_helpers import enrol_totp, officer_token
from test_console_browser import browser_page, no_horizontal_scroll, shot, sign_in
from test_console_policies import policy_stack

pytestmark = pytest.mark.timeout(180)


async def test_an_officer_breaks_a_rule_in_a_draft_sees_where_and_fixes_it(tmp_path: Path) -> None:
    async with policy_stack(tmp_path) as st, browser_page() as page:
        p: object = page
        secret = await enrol_totp(st)
        version = st.gateway.policy.version
        await sign_in(page, st, officer_token(st))
        await p.goto(st.admin_url + "/console/policies")  # type: ignore[attr-defined]
        await shot(page, "policies")
        assert await no_horizontal_scroll(page)
        await p.get_by_role("link", name=version).first.click()  # type: ignore[attr-defined]
        await p.get_by_role("link", name="gateway.rego", exact=True).click()  # type: ignore[attr-defined]
        assert await p.locator("pre.code .tok-keyword").count() > 10  # type: ignore[attr-defined]
        assert await p.locator("pre.code .tok-comment").count() > 10  # type: ignore[attr-defined]
        await shot(page, "policy-file")
        assert await no_horizontal_scroll(page)

        await p.goto(f"{st.admin_url}/console/policies/{version}")  # type: ignore[attr-defined]
        await p.get_by_role("button", name="Edit as a draft").click()  # type: ignore[attr-defined]
        assert "/console/step-up" in p.url  # type: ignore[attr-defined]
        await p.get_by_label("Authenticator code").fill(pyotp.TOTP(secret).now())  # type: ignore[attr-defined]
        await p.get_by_role("button", name="Confirm").click()  # type: ignore[attr-defined]
        await p.get_by_role("button", name="Edit as a draft").click()  # type: ignore[attr-defined]
        assert "/console/drafts/1" in p.url  # type: ignore[attr-defined]

        await p.get_by_role("link", name="gateway.rego", exact=True).click()  # type: ignore[attr-defined]
        editor = p.get_by_label("Text of gateway.rego")  # type: ignore[attr-defined]
        original = await editor.input_value()
        lines = original.split("\n")
        assert lines[60] == "}"
        await editor.fill("\n".join(lines[:60] + lines[61:]))  # the closing brace of a rule is gone
        assert await p.locator(".editor.live pre.overlay .tok-keyword").count() > 10  # type: ignore[attr-defined]
        await shot(page, "draft-editor")
        await p.get_by_role("button", name="Save").click()  # type: ignore[attr-defined]
        await p.wait_for_url("**saved=1")  # type: ignore[attr-defined]

        await p.get_by_role("link", name="draft 1").click()  # type: ignore[attr-defined]
        await p.get_by_role("button", name="Check this draft").click()  # type: ignore[attr-defined]
        error = p.get_by_role("link", name="gateway.rego, line 66, column 17")  # type: ignore[attr-defined]
        assert await error.count() == 1
        await shot(page, "draft-error")
        await error.click()
        marked = p.locator(".editor.live pre.overlay .line.hit")  # type: ignore[attr-defined]
        assert "route_checks_ok if {" in await marked.inner_text()
        assert await p.evaluate("document.activeElement.id") == "text"  # type: ignore[attr-defined]

        editor = p.get_by_label("Text of gateway.rego")  # type: ignore[attr-defined]
        await editor.fill("# reviewed by the compliance team\n" + original)
        await p.get_by_role("button", name="Save").click()  # type: ignore[attr-defined]
        await p.wait_for_url("**saved=1")  # type: ignore[attr-defined]
        await p.get_by_role("link", name="draft 1").click()  # type: ignore[attr-defined]
        await p.get_by_role("button", name="Check this draft").click()  # type: ignore[attr-defined]
        status = p.get_by_role("status").filter(has_text="The checks passed")  # type: ignore[attr-defined]
        assert await status.count() == 1
        assert await p.locator(".tag.passed").count() > 100  # type: ignore[attr-defined]
        assert await p.locator(".tag.failed").count() == 0  # type: ignore[attr-defined]
