"""The demo trading backend's HTTP and WebSocket application.

Same paths as the gateway's public API (DESIGN.md, "Contracts"). Every
``/api`` request must carry the gateway's identity assertion; as defence in
depth an ``{account}`` in the path must be one of the assertion's accounts.
``/healthz`` is open; ``/__debug/*`` exists only with ``debug_routes=True``.

Nothing here logs request or response bodies, headers or identities: the
profiles hold personal data and the assertion names the customer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from . import internal, sealed
from .book import Brokerage
from .data import CUSTOMERS
from .errors import DemoError, invalid_order, invalid_transfer
from .identity import HEADER, AssertionVerifier, Identity
from .market import TICK_SECONDS, Market
from .payloads import parse_order, parse_transfer

log = logging.getLogger("demo_backend")

INTERNAL_TOKEN_HEADER = "X-Portcullis-Internal-Token"
DEMO_PASSWORD = "portcullis-demo"
"""The password of every demo customer at ``POST /auth/login`` (a demo: no real credentials here)."""
_DEMO_SUBS = frozenset(c.sub for c in CUSTOMERS.values())
MAX_BODY = 256 * 1024
MAX_SUBSCRIPTIONS = 50
MAX_DEBUG_DELAY = 30.0

VERIFIER = web.AppKey("verifier", AssertionVerifier)
MARKET = web.AppKey("market", Market)
BROKERAGE = web.AppKey("brokerage", Brokerage)
INTERNAL_TOKEN = web.AppKey("internal_token", bytes)
STREAM_INTERVAL = web.AppKey("stream_interval", float)
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])  # handlers remove themselves
IDENTITY = web.RequestKey("identity", Identity)
PAYLOAD_KEYS = web.AppKey("payload_keys", dict[str, bytes])
SEALED_ROUTES = web.AppKey("sealed_routes", frozenset[str])
OPENED_BODY = web.RequestKey("opened_body", bytes)
SEALED_ROUTE_NAMES = ("order_place", "order_cancel", "transfer")
"""Routes ``require_sealed`` may name: those with a request body the gateway may seal."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HEALTH_BODY = b'{"status":"ok"}'
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


# --------------------------------------------------------------------------
# Errors and the guard


def error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    payload = {"error": code, "message": message}
    rid = request.headers.get("X-Request-Id")
    if rid:
        payload["request_id"] = rid[:128]
    return web.json_response(payload, status=status)


@web.middleware
async def _guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Authenticate, bind the account, and render every failure as JSON."""
    try:
        unmatched = request.match_info.http_exception
        if unmatched is not None:
            raise unmatched
        if handler in internal.HANDLERS:
            # The fact routes answer the gateway's providers alone: only with the token.
            token = request.app.get(INTERNAL_TOKEN)
            if token is None:
                raise DemoError(404, "not_found", "no such route")  # never without a token
            if not hmac.compare_digest(request.headers.get(INTERNAL_TOKEN_HEADER, "").encode(), token):
                raise DemoError(
                    401, "internal_token_invalid", "the internal token is missing or wrong"
                )
        elif handler is not healthz:
            if handler not in _UNAUTHENTICATED:
                identity = request.app[VERIFIER].verify(request.headers.get(HEADER))
                account = request.match_info.get("account")
                if account is not None and account not in identity.accounts:
                    raise DemoError(403, "account_forbidden", "the account is not the caller's")
                request[IDENTITY] = identity
        keys = request.app.get(PAYLOAD_KEYS)
        if keys is not None:
            await _open_sealed(request, keys)
        return await handler(request)
    except DemoError as exc:
        return error_response(request, exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(request, exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path,
                  exc_info=exc)
        return error_response(request, 500, "internal_error", "the backend failed")


async def _open_sealed(request: web.Request, keys: dict[str, bytes]) -> None:
    """A body the gateway sealed for us is opened here, before any handler reads it."""
    if sealed.HEADER in request.headers or request.content_type == sealed.CONTENT_TYPE:
        identity = request.get(IDENTITY)
        # The signed assertion's request id, so a body cannot ride on another request's assertion.
        rid = identity.rid if identity is not None and identity.rid else request.headers.get("X-Request-Id", "")
        _, request[OPENED_BODY] = sealed.open_body(
            keys, request.headers.get(sealed.HEADER), request.method, request.raw_path, rid, await request.read())
    elif request.body_exists and request.match_info.route.name in request.app[SEALED_ROUTES]:
        raise DemoError(415, "upstream_envelope_required", "this route accepts bodies sealed by the gateway only")


# --------------------------------------------------------------------------
# Routes


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTH_BODY, content_type="application/json")


async def get_quote(request: web.Request) -> web.Response:
    try:
        body = request.app[MARKET].quote_bytes(request.match_info["symbol"])
    except KeyError:
        raise DemoError(404, "unknown_symbol", "no such symbol") from None
    return web.Response(body=body, content_type="application/json")


async def get_profile(request: web.Request) -> web.Response:
    return web.json_response(request.app[BROKERAGE].profile(request.match_info["account"]))


async def get_positions(request: web.Request) -> web.Response:
    return web.json_response(request.app[BROKERAGE].positions(request.match_info["account"]))


async def get_orders(request: web.Request) -> web.Response:
    return web.json_response(request.app[BROKERAGE].orders(request.match_info["account"]))


async def _json_body(request: web.Request, bad: Callable[[str], DemoError]) -> Any:
    raw = request.get(OPENED_BODY)
    if raw is None:
        raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("the body is not valid JSON") from None


async def post_order(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    brokerage = request.app[BROKERAGE]
    brokerage.profile(account)  # an unknown account is a 404 before any body complaint
    order = parse_order(await _json_body(request, invalid_order))
    return web.json_response(brokerage.place_order(account, order), status=201)


async def delete_order(request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(request.app[BROKERAGE].cancel_order(m["account"], m["order_id"]))


async def post_transfer(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    brokerage = request.app[BROKERAGE]
    brokerage.profile(account)
    transfer = parse_transfer(await _json_body(request, invalid_transfer))
    return web.json_response(brokerage.transfer(account, transfer), status=201)


async def login(request: web.Request) -> web.Response:
    """``{"username": sub, "password": ...}``: 200 for a demo customer with the demo password, else 401.

    The gateway's failed-login lockout (docs/RISK.md) counts the 401s; this
    endpoint issues no token (the demo issuer's key lives with the gateway CLI).
    """
    body = await _json_body(request, lambda m: DemoError(400, "invalid_login", m))
    username = body.get("username") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(username, str) or not isinstance(password, str):
        raise DemoError(400, "invalid_login", "username and password (strings) are required")
    ok = hmac.compare_digest(password.encode("utf-8", "replace"), DEMO_PASSWORD.encode())
    if not ok or username not in _DEMO_SUBS:
        raise DemoError(401, "login_failed", "the username or password is wrong")
    return web.json_response({"status": "ok", "sub": username})


# --------------------------------------------------------------------------
# Quote stream


async def quote_stream(request: web.Request) -> web.WebSocketResponse:
    """``{"subscribe": [...]}`` / ``{"unsubscribe": [...]}`` in, quotes out."""
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
    await ws.prepare(request)
    market = request.app[MARKET]
    request.app[SOCKETS].add(ws)
    subscribed: dict[str, None] = {}  # an ordered set
    pusher = asyncio.create_task(_push(ws, market, subscribed, request.app[STREAM_INTERVAL]))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _on_message(ws, market, subscribed, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await _ws_error(ws, "invalid_message", "send JSON text messages")
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
        request.app[SOCKETS].discard(ws)
    return ws


async def _ws_error(ws: web.WebSocketResponse, code: str, message: str, **extra: Any) -> None:
    await ws.send_json({"type": "error", "error": code, "message": message, **extra})


def _symbols(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    return None


async def _on_message(
    ws: web.WebSocketResponse, market: Market, subscribed: dict[str, None], data: str
) -> None:
    try:
        message = json.loads(data)
    except ValueError:
        await _ws_error(ws, "invalid_message", "the message is not valid JSON")
        return
    if not isinstance(message, dict) or not ({"subscribe", "unsubscribe"} & message.keys()):
        await _ws_error(ws, "invalid_message", 'expected {"subscribe": [symbols]}')
        return
    if "unsubscribe" in message:
        symbols = _symbols(message["unsubscribe"])
        if symbols is None:
            await _ws_error(ws, "invalid_message", "unsubscribe: a list of symbols is required")
            return
        for s in symbols:
            subscribed.pop(s, None)
        await ws.send_json({"type": "unsubscribed", "symbols": list(subscribed)})
    if "subscribe" in message:
        symbols = _symbols(message["subscribe"])
        if symbols is None:
            await _ws_error(ws, "invalid_message", "subscribe: a list of symbols is required")
            return
        unknown = [s for s in symbols if not market.knows(s)]
        fresh = [s for s in symbols if market.knows(s) and s not in subscribed]
        if unknown:
            await _ws_error(ws, "unknown_symbol", "these symbols are not known", symbols=unknown)
        if len(subscribed) + len(fresh) > MAX_SUBSCRIPTIONS:
            await _ws_error(ws, "too_many_subscriptions", f"at most {MAX_SUBSCRIPTIONS} symbols")
            return
        subscribed.update(dict.fromkeys(fresh))
        await ws.send_json({"type": "subscribed", "symbols": list(subscribed)})
        for s in fresh:  # a snapshot at once, not one interval later
            await ws.send_json({"type": "quote", **market.quote(s)})


async def _push(
    ws: web.WebSocketResponse, market: Market, subscribed: dict[str, None], interval: float
) -> None:
    try:
        while not ws.closed:
            await asyncio.sleep(interval)
            for s in list(subscribed):
                await ws.send_json({"type": "quote", **market.quote(s)})
    except (ConnectionError, RuntimeError):
        pass  # the peer went away; the reader loop ends on its own


async def _close_sockets(app: web.Application) -> None:
    sockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


# --------------------------------------------------------------------------
# Debug routes (integration tests only)


async def debug_slow(request: web.Request) -> web.Response:
    try:
        delay = float(request.query.get("delay", "1"))
    except ValueError:
        raise DemoError(400, "invalid_delay", "delay: a number of seconds") from None
    if not 0 <= delay <= MAX_DEBUG_DELAY:
        raise DemoError(400, "invalid_delay", f"delay: between 0 and {MAX_DEBUG_DELAY:g} seconds")
    await asyncio.sleep(delay)
    return web.json_response({"slept": delay})


async def debug_echo(request: web.Request) -> web.Response:
    """What arrived, as the upstream saw it: for checking what the gateway forwards."""
    body = await request.read()
    identity: dict[str, Any] | None = None
    identity_error: str | None = None
    try:
        identity = request.app[VERIFIER].verify(request.headers.get(HEADER)).claims
    except DemoError as exc:
        identity_error = exc.message
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": [[k, v] for k, v in request.query.items()],
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "body_b64": base64.b64encode(body).decode("ascii"),
            "remote": request.remote,
            "identity": identity,
            "identity_error": identity_error,
        }
    )


_UNAUTHENTICATED = frozenset({healthz, login, debug_slow, debug_echo})


# --------------------------------------------------------------------------
# Assembly


def create_app(
    identity_jwks: Path | None,
    *,
    identity_hmac_key: Path | None = None,
    debug_routes: bool = False,
    internal_token: str | None = None,
    clock: Callable[[], float] = time.time,
    seed: int = 7,
    stream_interval: float = TICK_SECONDS,
    payload_key_file: Path | None = None,
    require_sealed: Collection[str] = (),
) -> web.Application:
    """The backend application; ``identity_jwks`` holds the gateway's public key(s)
    (ES256 assertions), ``identity_hmac_key`` this backend's own HS256 key.

    ``internal_token``, when set, enables the ``/internal`` fact routes
    (demo_backend/internal.py) that the gateway's policy providers call; they
    answer only requests carrying it in ``X-Portcullis-Internal-Token``. Client
    routes trust the identity assertion alone, so the token never travels with
    client traffic. ``clock`` and ``seed`` drive the simulated
    market and timestamps.

    ``payload_key_file`` (SM4 keys shared with the gateway, demo_backend/sealed.py) opens
    request bodies the gateway sealed; without it such bodies are not understood, as
    before. ``require_sealed`` names routes (of ``SEALED_ROUTE_NAMES``) where a plaintext
    body is refused (415 ``upstream_envelope_required``).
    """
    unknown = set(require_sealed) - set(SEALED_ROUTE_NAMES)
    if unknown or (require_sealed and payload_key_file is None):
        raise ValueError(f"require_sealed: needs a payload key file and names of {', '.join(SEALED_ROUTE_NAMES)}"
                         f" (got {', '.join(sorted(require_sealed))})")
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    if payload_key_file is not None:
        app[PAYLOAD_KEYS] = sealed.load_keys(payload_key_file)
    app[SEALED_ROUTES] = frozenset(require_sealed)
    market = Market(clock, seed)
    app[VERIFIER] = AssertionVerifier.from_files(identity_jwks, identity_hmac_key)
    app[MARKET] = market
    app[BROKERAGE] = Brokerage(market, clock)
    app[STREAM_INTERVAL] = stream_interval
    app[SOCKETS] = set()
    if internal_token:
        app[INTERNAL_TOKEN] = internal_token.encode()
    app.on_shutdown.append(_close_sockets)

    r = app.router
    r.add_get("/healthz", healthz, allow_head=True)
    r.add_get("/api/quotes/stream", quote_stream)  # before {symbol}, which would match it
    r.add_get("/api/quotes/{symbol}", get_quote)
    r.add_get("/api/accounts/{account}", get_profile)
    r.add_get("/api/accounts/{account}/positions", get_positions)
    r.add_get("/api/accounts/{account}/orders", get_orders)
    r.add_post("/api/accounts/{account}/orders", post_order, name="order_place")
    r.add_delete("/api/accounts/{account}/orders/{order_id}", delete_order, name="order_cancel")
    r.add_post("/api/accounts/{account}/transfers", post_transfer, name="transfer")
    r.add_post("/auth/login", login)
    if internal_token:
        internal.add_routes(app, market, app[BROKERAGE])
    if debug_routes:
        r.add_get("/__debug/slow", debug_slow)
        r.add_route("*", "/__debug/echo", debug_echo)
        r.add_route("*", "/__debug/echo/{tail:.*}", debug_echo)
    return app
