"""Frozen accounts: who is frozen, why and since when; lifting a freeze with a written reason.

The same store and the same lift as ``/admin/freezes`` (gateway/admin_freezes.py
``lift_account``): audited write-ahead, the customer told.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from aiohttp import web

from gateway.admin_freezes import ACCOUNT, lift_account
from gateway.bundles.service import MAX_REASON, reason_text
from gateway.console.app import CONSOLE_KEY, PREFIX, officer_session, redirect, require_step_up
from gateway.errors import FREEZE_NOT_FOUND, GatewayError


async def freezes_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    session = officer_session(request)
    freezes = sorted(await console.gw.freezes.all(), key=lambda f: f.time, reverse=True)
    console.audit({"sub": session.sub, "action": "freeze_list", "count": len(freezes), "via": "console"})
    lifted = request.query.get("lifted")
    return console.render(request, "freezes.html", active="freezes", freezes=freezes,
                          lifted=lifted if lifted and ACCOUNT.fullmatch(lifted) else None, error=None,
                          error_account=None, now=time.time())


async def lift(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    session = officer_session(request)
    account = request.match_info["account"]
    if not ACCOUNT.fullmatch(account):
        raise GatewayError(FREEZE_NOT_FOUND, "There is no such account.")
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up
    form = await request.post()

    async def again(status: int, error: str) -> web.Response:
        freezes = sorted(await console.gw.freezes.all(), key=lambda f: f.time, reverse=True)
        return console.render(request, "freezes.html", status=status, active="freezes", freezes=freezes,
                              lifted=None, error=error, error_account=account, now=time.time())

    raw = form.get("reason")
    if not isinstance(raw, str) or not raw.strip():
        return await again(400, "Write why the freeze is lifted: the reason goes into the audit trail.")
    if len(raw) > MAX_REASON:
        return await again(400, f"The reason is too long: at most {MAX_REASON} characters.")
    reason = reason_text(raw.strip(), required=True)
    try:
        await lift_account(console.gw, session.sub, account, reason)
    except GatewayError as exc:
        if exc.code == FREEZE_NOT_FOUND.code:
            return await again(404, "That account is not frozen any more: someone lifted the freeze meanwhile.")
        raise
    return redirect(f"{PREFIX}/freezes?lifted={quote(account, safe='')}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/freezes", freezes_page)
    app.router.add_post("/freezes/{account}/lift", lift)
