"""The admin listener: /metrics, /admin/... and the compliance console (/console/, gateway/console/).

It binds to 127.0.0.1 by default and is never reachable through the public
listener. Zero trust still applies: every /admin call needs a token from a
configured issuer carrying the `admin` role (``/admin/policy/...`` and
``/admin/freezes/...``: the `compliance` role and a recent step-up, see
gateway/admin_policy.py and gateway/admin_freezes.py), and every call is audited.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from audit.sink import AuditWriteError
from gateway.errors import (
    AUDIT_UNAVAILABLE,
    BAD_REQUEST,
    BODY_TOO_LARGE,
    INVALID_JSON,
    METHOD_NOT_ALLOWED,
    ROLE_FORBIDDEN,
    ROUTE_NOT_FOUND,
    GatewayError,
)
from gateway.responses import error_response
from gateway.steps.authenticate import bearer_token, refuse_device_bound

if TYPE_CHECKING:
    from gateway.server import Gateway

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")
_MAX_EXP = 2**40  # epoch seconds far beyond any token's life; bigger values are garbage


_HTTP_KINDS = {404: ROUTE_NOT_FOUND, 405: METHOD_NOT_ALLOWED, 413: BODY_TOO_LARGE}


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every admin error is the same JSON shape as on the public listener."""
    rid = secrets.token_hex(12)
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except GatewayError as exc:
        return error_response(exc, rid, "X-Request-Id")
    except web.HTTPException as exc:
        kind = _HTTP_KINDS.get(exc.status, BAD_REQUEST)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(GatewayError(kind, headers=allow), rid, "X-Request-Id")


async def audit_first(gw: Gateway, record: dict[str, Any]) -> None:
    """Write-ahead for admin actions: durable before the action, or 503 and no action."""
    try:
        await asyncio.wait_for(asyncio.shield(gw.audit.submit(record)), gw.config.audit.write_timeout)
    except (AuditWriteError, TimeoutError):
        raise GatewayError(AUDIT_UNAVAILABLE) from None


async def _admin_subject(request: web.Request) -> Any:
    gw = request.app[GATEWAY_KEY]
    token = bearer_token(request.headers.getall("Authorization", []))
    subject = await gw.verifier.verify(token)
    refuse_device_bound(subject)
    if "admin" not in subject.roles:
        raise GatewayError(ROLE_FORBIDDEN, "the admin API requires the admin role")
    return subject


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    return web.Response(body=gw.metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def status(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    subject = await _admin_subject(request)
    gw.audit.enqueue({"type": "admin", "time": time.time(), "sub": subject.sub,
                      "action": "status"})
    return web.json_response({
        "name": gw.config.gateway.name,
        "security": gw.config.gateway.security,
        "routes": [{"name": r.name, "methods": list(r.methods), "path": r.path, "tier": r.tier}
                   for r in gw.config.routes],
        "policy_version": gw.policy.version,
        "audit_backlog": gw.audit.backlog,
        "readiness": await gw.readiness(),
    })


async def revoke(request: web.Request) -> web.Response:
    """Revoke a token by its jti until its expiry (body: {"jti": ..., "exp": epoch})."""
    gw = request.app[GATEWAY_KEY]
    subject = await _admin_subject(request)
    try:
        body = await request.json()
    except ValueError:
        raise GatewayError(INVALID_JSON) from None
    jti, exp = (body.get("jti"), body.get("exp")) if isinstance(body, dict) else (None, None)
    if (not isinstance(jti, str) or not 0 < len(jti) <= 256 or not isinstance(exp, int)
            or isinstance(exp, bool) or not 0 < exp < _MAX_EXP):
        raise GatewayError(BAD_REQUEST, "expected {\"jti\": string, \"exp\": epoch seconds}")
    # Write-ahead: the revocation is audited before it takes effect.
    await audit_first(gw, {"type": "admin", "time": time.time(), "sub": subject.sub,
                            "action": "revoke_token", "jti": jti})
    await gw.revocations.revoke(jti, exp)
    return web.json_response({"revoked": jti}, status=201)


def build_admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/status", status)
    app.router.add_post("/admin/revocations", revoke)
    from gateway.admin_audit import add_audit_routes
    from gateway.admin_freezes import add_freeze_routes
    from gateway.admin_policy import add_policy_routes

    add_policy_routes(app)
    add_freeze_routes(app)
    add_audit_routes(app)
    if gateway.config.console.enabled:
        from gateway.console.app import build_console_app

        app.add_subapp("/console", build_console_app(gateway))
    return app
