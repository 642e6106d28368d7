"""Account freezes on the admin listener: ``/admin/freezes`` (docs/POLICIES.md, "Freezes").

For compliance officers only: the ``compliance`` role and a recent step-up,
the same check as the policy admin API (`require_recent_step_up`). Listing
is audited (queued); lifting needs a written reason and is audited
write-ahead (durable before the freeze is removed, else 503
``audit_unavailable`` and nothing changes), then its outcome.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.admin import GATEWAY_KEY, audit_first
from gateway.admin_policy import compliance_officer, json_ok, small_json
from gateway.authn.tokens import Subject
from gateway.bundles.service import reason_text
from gateway.errors import FREEZE_NOT_FOUND, GatewayError

if TYPE_CHECKING:
    from gateway.freezes import Freeze
    from gateway.server import Gateway

ACCOUNT = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def _officer(request: web.Request) -> Subject:
    return await compliance_officer(request, "freeze admin API")


def _account(request: web.Request) -> str:
    account = request.match_info["account"]
    if not ACCOUNT.fullmatch(account):
        raise GatewayError(FREEZE_NOT_FOUND, "not an account id")
    return account


async def list_freezes(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    subject = await _officer(request)
    freezes = await gw.freezes.all()
    gw.audit.enqueue({"type": "admin", "time": time.time(), "sub": subject.sub, "action": "freeze_list",
                      "count": len(freezes)})
    return json_ok({"freezes": [f.public() for f in freezes]})


async def show_freeze(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    await _officer(request)
    freeze = await gw.freezes.get(_account(request))
    if freeze is None:
        raise GatewayError(FREEZE_NOT_FOUND)
    return json_ok(freeze.public())


async def lift_freeze(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    subject = await _officer(request)
    account = _account(request)
    body = await small_json(request)
    reason = reason_text(body.get("reason"), required=True)
    lifted = await lift_account(gw, subject.sub, account, reason)
    return json_ok({"lifted": lifted.public(), "lifted_by": subject.sub, "reason": reason})


async def lift_account(gw: Gateway, officer: str, account: str, reason: str) -> Freeze:
    """Lift ``account``'s freeze for ``officer`` (the API and the console): audited write-ahead, then its
    outcome; the customer is told. FREEZE_NOT_FOUND when there is none (or it went meanwhile)."""
    record = {"type": "admin", "time": time.time(), "sub": officer, "action": "freeze_lift",
              "account": account, "reason": reason}
    current = await gw.freezes.get(account)
    if current is None:
        gw.audit.enqueue({**record, "refused": True, "outcome": FREEZE_NOT_FOUND.code})
        raise GatewayError(FREEZE_NOT_FOUND)
    await audit_first(gw, {**record, "freeze": current.public()})
    lifted = await gw.freezes.lift(account)
    outcome = "ok" if lifted is not None else FREEZE_NOT_FOUND.code  # lifted meanwhile by someone else
    gw.audit.enqueue({"type": "admin", "time": time.time(), "sub": officer, "action": "freeze_lift",
                      "account": account, "outcome": outcome})
    if lifted is None:
        raise GatewayError(FREEZE_NOT_FOUND, "the freeze was lifted meanwhile")
    gw.metrics.obligation("freeze_account", "lifted")
    if lifted.sub:
        try:
            await gw.notifier.notify("account_unfrozen", lifted.sub, "Your account is no longer frozen",
                                     {"account": account})
        except Exception:  # the lift stands; the customer sees it on the next request
            pass
    return lifted


def add_freeze_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/freezes", list_freezes)
    r.add_get("/admin/freezes/{account}", show_freeze)
    r.add_post("/admin/freezes/{account}/lift", lift_freeze)
