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
