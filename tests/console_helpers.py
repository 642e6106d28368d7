"""Driving the compliance console over HTTP in tests: an officer with a browser-like cookie jar.

The console is a real gateway's admin listener (tests/harness.py ``run_stack``); these helpers only
do what a browser does: keep cookies, read the form tokens a page carries, post forms from the
console's own origin.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pyotp
from harness import Stack

OFFICER = "officer-li"
SECOND_OFFICER = "officer-wang"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_NONCE = re.compile(r'name="nonce" value="([^"]+)"')


@dataclass
class Page:
    status: int
    text: str
    headers: Any
    url: str


@dataclass
class Officer:
    http: aiohttp.ClientSession
    base: str
    csrf: str = ""

    async def get(self, path: str, **kw: Any) -> Page:
        async with self.http.get(self.base + path, **kw) as r:
            page = Page(r.status, await r.text(), r.headers, str(r.url))
        found = _CSRF.search(page.text)
        if found:
            self.csrf = found[1]
        return page

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True, origin: str | None = None,
                   **kw: Any) -> Page:
        form = {"csrf": self.csrf, **data} if csrf else data
        headers = {"Origin": origin or self.base, **kw.pop("headers", {})}
        async with self.http.post(self.base + path, data=form, headers=headers, **kw) as r:
            page = Page(r.status, await r.text(), r.headers, str(r.url))
        found = _CSRF.search(page.text)
        if found:
            self.csrf = found[1]
        return page

    async def sign_in(self, token: str, next_page: str = "/console/") -> Page:
        form = await self.get("/console/sign-in")
        nonce = _NONCE.search(form.text)
        assert nonce is not None, form.text
        page = await self.post("/console/sign-in", {"nonce": nonce[1], "token": token, "next": next_page},
                               csrf=False)
        return page

    async def step_up(self, secret: str, at: float | None = None, next_page: str = "/console/") -> Page:
        await self.get("/console/step-up")
        code = pyotp.TOTP(secret).at(at) if at is not None else pyotp.TOTP(secret).now()
        return await self.post("/console/step-up", {"code": code, "next": next_page})


@asynccontextmanager
async def officer_browser(st: Stack) -> AsyncIterator[Officer]:
    """A cookie jar that keeps cookies for 127.0.0.1 (aiohttp's default refuses IP hosts)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Officer(http, st.admin_url)


def officer_token(st: Stack, sub: str = OFFICER, roles: tuple[str, ...] = ("compliance",), **kw: Any) -> str:
    return st.token(sub=sub, accounts=(), roles=roles, **kw)


async def enrol_totp(st: Stack, sub: str = OFFICER) -> str:
    """The officer's TOTP, enrolled long ago (as the demo's officers are); the secret."""
    secret = pyotp.random_base32()
    assert st.gateway.stepups is not None
    await st.gateway.stepups.totp.enrol_known(sub, secret, 0.0)
    return secret


# -- releasing a policy (tests/test_console_release*.py) ------------------------------------------

UPLOADER = "officer-zhao"
"""Uploads candidate bundles in the release tests: neither officer approving is the uploader."""
QUOTE = "/api/quotes/600519.SH"


def release_config(tmp: Any, *, crypto: bool = False) -> dict[str, Any]:
    """run_stack overrides (``tmp``: the test's folder, a Path): tests/bundles.py's tiny bundle active
    (quotes open), both officers alerted by a break-glass rollback (a file notifier), and with ``crypto``
    the policy inputs sealed into the audit trail."""
    from bundles import tiny_bundle, write_bundle

    folder = write_bundle(tmp / "bundle-v1", tiny_bundle(rev=1))
    overrides: dict[str, Any] = {
        "policy": {"engine": "rego", "bundle": str(folder)},
        "policy_admin": {"officers": [OFFICER, SECOND_OFFICER], "max_files": 16},
        "notifier": {"sink": "file", "path": str(tmp / "alerts.jsonl")},
    }
    if crypto:
        overrides["crypto"] = {"enabled": True, "master_key_file": str(tmp / "master.key")}
    return overrides


async def candidate(st: Stack, *, rev: int = 2, quotes_open: bool = False, validate: bool = True,
                    description: str = "closes quotes") -> str:
    """A candidate bundle uploaded (by UPLOADER) and, unless told otherwise, validated; its version."""
    from bundles import tiny_bundle

    admin = st.gateway.bundles
    info = await admin.upload(UPLOADER, {"files": tiny_bundle(rev=rev, quotes_open=quotes_open),
                                         "description": description})
    if validate:
        await admin.validate(UPLOADER, info.version)
    return info.version


async def activate(st: Stack, version: str) -> None:
    """Make `version` active through the four-eyes workflow itself (proposed by OFFICER, approved by the other)."""
    admin = st.gateway.bundles
    proposal = await admin.propose(OFFICER, version, "set up by the test")
    await admin.approve(SECOND_OFFICER, proposal.id)
