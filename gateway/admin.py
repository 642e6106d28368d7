"""The admin listener: /metrics, /admin/... (and later the compliance console).

It binds to 127.0.0.1 by default and is never reachable through the public
listener. Zero trust still applies: every /admin call needs a token from a
configured issuer carrying the `admin` role, and every call is audited.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.errors import (
    BAD_REQUEST,
    INVALID_JSON,
    ROLE_FORBIDDEN,
    ROUTE_NOT_FOUND,
    GatewayError,
)
from gateway.steps.authenticate import bearer_token

if TYPE_CHECKING:
    from gateway.server import Gateway

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


def _error(exc: GatewayError) -> web.Response:
    body = {"error": exc.code, "message": exc.message, "request_id": None}
    return web.json_response(body, status=exc.status, headers=exc.headers)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except GatewayError as exc:
        return _error(exc)
    except web.HTTPNotFound:
        return _error(GatewayError(ROUTE_NOT_FOUND))


async def _admin_subject(request: web.Request) -> Any:
    gw = request.app[GATEWAY_KEY]
    token = bearer_token(request.headers.getall("Authorization", []))
    subject = await gw.verifier.verify(token)
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
    gw.audit.submit({"type": "admin", "time": time.time(), "sub": subject.sub,
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
    if not isinstance(jti, str) or not jti or not isinstance(exp, int) or isinstance(exp, bool):
        raise GatewayError(BAD_REQUEST, "expected {\"jti\": string, \"exp\": integer}")
    # Write-ahead: the revocation is audited before it takes effect.
    await gw.audit.write({"type": "admin", "time": time.time(), "sub": subject.sub,
                          "action": "revoke_token", "jti": jti})
    await gw.revocations.revoke(jti, exp)
    return web.json_response({"revoked": jti}, status=201)


def build_admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/status", status)
    app.router.add_post("/admin/revocations", revoke)
    return app
