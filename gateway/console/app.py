"""The compliance console's web layer: pages under ``/console/`` on the admin listener (docs/CONSOLE.md).

Server-rendered HTML (Jinja2, every value escaped), a little of our own
JavaScript for what must be live, and no third-party front-end code. What
every page shares lives here:

* **Sign-in**: a token from the identity provider (in the demo, ``portcullis
  token --role compliance``), verified like every other token; the
  ``compliance`` role is required. The browser gets a session cookie
  (``console/sessions.py``), never the token.
* **Step-up**: any change (policies, approvals, freezes) needs the officer's
  TOTP code at most ``[console] step_up_max_age`` seconds ago; reading does not.
* **CSRF**: every POST carries the session's token (a hidden field, or the
  ``X-CSRF-Token`` header for scripts), compared in constant time; a POST whose
  ``Origin`` or ``Sec-Fetch-Site`` names another site is refused too. The
  sign-in form, before any session, uses a double-submit cookie.
* **Headers**: a strict Content-Security-Policy (scripts, styles and images
  from the console itself only: no inline script or style at all), no framing,
  no referrer, nothing cached.
* **Errors** are pages in plain words with the right status, never a traceback
  or a JSON body.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from gateway.admin import GATEWAY_KEY
from gateway.console.sessions import Session, Sessions
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = ["CONSOLE_KEY", "Console", "build_console_app", "officer_session", "require_step_up"]

PREFIX = "/console"
HERE = Path(__file__).parent
COOKIE = "portcullis_console"
SIGN_IN_COOKIE = "portcullis_console_sign_in"
MAX_TOKEN_CHARS = 16 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
ROLE = "compliance"
_SESSION: web.RequestKey[Session] = web.RequestKey("console_session", Session)
_SESSION_ID: web.RequestKey[str] = web.RequestKey("console_session_id", str)
_BACK: web.RequestKey[str] = web.RequestKey("console_back", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NAV = (("overview", "Overview", "/console/"), ("policies", "Policies", "/console/policies"),
       ("decisions", "Decisions", "/console/decisions"), ("audit", "Audit trail", "/console/audit"),
       ("freezes", "Frozen accounts", "/console/freezes"))


def when(epoch: float | None) -> str:
    """A time as officers read it: ``2026-12-03 09:41:07 UTC``."""
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def safe_next(value: str | None) -> str:
    """Where to go after sign-in or step-up: a console path only (never another site)."""
    if not value:
        return PREFIX + "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/") or "\\" in value:
        return PREFIX + "/"
    return value


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


class Console:
    """What the console's handlers share: the gateway, sessions and templates."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.cfg = gateway.config.console
        self.sessions = Sessions(gateway.state, idle_timeout=self.cfg.idle_timeout,
                                 max_session=self.cfg.max_session)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined,
                                      trim_blocks=True, lstrip_blocks=True)
        self.env.filters["when"] = when

    def render(self, request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
        session: Session | None = request.get(_SESSION)
        now = time.time()
        age = session.step_up_age(now) if session is not None else None
        page = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session is not None else "", nav=NAV,
            active=context.pop("active", ""), stepped_up=age is not None and age <= self.cfg.step_up_max_age,
            path=request.path_qs, **context)
        return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")

    def set_session_cookie(self, request: web.Request, response: web.StreamResponse, session_id: str,
                           session: Session) -> None:
        response.set_cookie(COOKIE, session_id, path=PREFIX + "/", httponly=True, samesite="Strict",
                            secure=request.secure, max_age=int(max(session.expires - time.time(), 1)))

    def audit(self, record: Mapping[str, Any]) -> None:
        self.gw.audit.enqueue({"type": "admin", "time": time.time(), **record})


CONSOLE_KEY: web.AppKey[Console] = web.AppKey("console")


def officer_session(request: web.Request) -> Session:
    """The signed-in officer's session (the guard let the request through only with one)."""
    return request[_SESSION]


def require_step_up(request: web.Request) -> web.Response | None:
    """None when the officer stepped up recently enough for a change; else where to send them."""
    console = request.app[CONSOLE_KEY]
    age = officer_session(request).step_up_age(time.time())
    if age is not None and age <= console.cfg.step_up_max_age:
        return None
    # The page the change was made on: the form's ``back`` field (read by the guard), or the header a
    # script sends it in (the Referer is never sent here: Referrer-Policy no-referrer).
    back = safe_next(request.headers.get("X-Console-Back") or request.get(_BACK))
    return redirect(f"{PREFIX}/step-up?next={quote(back, safe='/')}&why=change")


def _public(request: web.Request) -> bool:
    return request.path in (PREFIX + "/sign-in",) or request.path.startswith(PREFIX + "/static/")


def _same_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null" and site == "same-origin":
        return True
    return origin == f"{request.scheme}://{request.host}"


def _error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return request.app[CONSOLE_KEY].render(request, "error.html", status=status, title=title, message=message)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    try:
        response = await _guarded(request, handler, console)
    except GatewayError as exc:
        response = _error_page(request, exc.status, "That did not work", exc.message)
        for name, value in (exc.headers or {}).items():
            if name.lower() == "retry-after":
                response.headers[name] = value
    except web.HTTPException as exc:
        if exc.status == 404:
            response = _error_page(request, 404, "Page not found", "There is no such page in the console.")
        elif exc.status == 405:
            response = _error_page(request, 405, "Not here", "This page cannot be used that way.")
        elif exc.status == 413:
            response = _error_page(request, 413, "Too large", "What was sent is larger than the console accepts.")
        else:
            response = _error_page(request, exc.status, "That did not work", exc.reason)
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith(PREFIX + "/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def _guarded(request: web.Request, handler: Handler, console: Console) -> web.StreamResponse:
    if _public(request):
        return await handler(request)
    session_id = request.cookies.get(COOKIE, "")
    session = await console.sessions.load(session_id, time.time()) if session_id else None
    if session is None:
        if request.method in ("GET", "HEAD"):
            return redirect(f"{PREFIX}/sign-in?next={quote(safe_next(request.path_qs), safe='/')}")
        return _error_page(request, 401, "Please sign in again",
                           "Your session has ended. Sign in again, then repeat what you were doing.")
    request[_SESSION] = session
    request[_SESSION_ID] = session_id
    if request.method not in ("GET", "HEAD"):
        if not _same_origin(request):
            return _error_page(request, 403, "Refused", "This request did not come from the console's own pages.")
        sent = request.headers.get("X-CSRF-Token")
        if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            field = form.get("csrf")
            sent = field if isinstance(field, str) else None
            back = form.get("back")
            if isinstance(back, str):
                request[_BACK] = back
        if sent is None or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return _error_page(request, 403, "Refused",
                               "This form has expired (or did not come from the console). Reload the page and"
                               " try again.")
    return await handler(request)


# -- sign-in, step-up, sign-out ---------------------------------------------------------------


async def sign_in_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    nonce = secrets.token_urlsafe(24)
    response = console.render(request, "sign_in.html", nonce=nonce, error=None,
                              next=safe_next(request.query.get("next")))
    response.set_cookie(SIGN_IN_COOKIE, nonce, path=PREFIX + "/", httponly=True, samesite="Strict",
                        secure=request.secure, max_age=900)
    return response


async def sign_in(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    gw = console.gw
    form = await request.post()
    nonce, token, nxt = form.get("nonce"), form.get("token"), safe_next(_text(form.get("next")))

    def again(status: int, error: str) -> web.Response:
        fresh = secrets.token_urlsafe(24)
        response = console.render(request, "sign_in.html", status=status, nonce=fresh, error=error, next=nxt)
        response.set_cookie(SIGN_IN_COOKIE, fresh, path=PREFIX + "/", httponly=True, samesite="Strict",
                            secure=request.secure, max_age=900)
        return response

    cookie = request.cookies.get(SIGN_IN_COOKIE, "")
    if not _same_origin(request) or not isinstance(nonce, str) or not cookie \
            or not hmac.compare_digest(nonce.encode(), cookie.encode()):
        return again(403, "The sign-in form had expired. Please try again.")
    if not isinstance(token, str) or not token.strip():
        return again(400, "Paste your sign-in token.")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        return again(400, "That is not a sign-in token (it is far too long).")
    try:
        subject = await gw.verifier.verify(token)
    except GatewayError as exc:
        console.audit({"sub": None, "action": "console_sign_in", "outcome": exc.code})
        return again(401, f"That token was not accepted: {exc.message}")
    if ROLE not in subject.roles:
        console.audit({"sub": subject.sub, "action": "console_sign_in", "outcome": "role_forbidden"})
        return again(403, "This console is for compliance officers: your token does not carry the compliance role.")
    session_id, session = await console.sessions.create(subject.sub, subject.roles, float(subject.exp), time.time())
    console.audit({"sub": subject.sub, "action": "console_sign_in", "outcome": "ok"})
    response = redirect(nxt)
    console.set_session_cookie(request, response, session_id, session)
    response.del_cookie(SIGN_IN_COOKIE, path=PREFIX + "/")
    return response


async def step_up_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    return console.render(request, "step_up.html", next=safe_next(request.query.get("next")), error=None,
                          why=request.query.get("why"), available=console.gw.stepups is not None)


async def step_up(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    session = officer_session(request)
    form = await request.post()
    nxt = safe_next(_text(form.get("next")))
    code = _text(form.get("code")) or ""
    stepups = console.gw.stepups
    if stepups is None:
        return console.render(request, "step_up.html", status=503, next=nxt, why=None, available=False,
                              error="Authenticator codes are not set up on this gateway.")
    try:
        await stepups.totp.verify(session.sub, code.strip().replace(" ", ""))
    except GatewayError as exc:
        console.audit({"sub": session.sub, "action": "console_step_up", "outcome": exc.code})
        response = console.render(request, "step_up.html", status=exc.status if exc.status < 500 else 503,
                                  next=nxt, why=None, available=True, error=exc.message)
        if exc.headers and "Retry-After" in exc.headers:
            response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response
    new_id, fresh = await console.sessions.stepped_up(request[_SESSION_ID], session, time.time())
    console.audit({"sub": session.sub, "action": "console_step_up", "outcome": "ok"})
    response = redirect(nxt)
    console.set_session_cookie(request, response, new_id, fresh)
    return response


async def sign_out(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    await console.sessions.end(request[_SESSION_ID])
    console.audit({"sub": officer_session(request).sub, "action": "console_sign_out"})
    response = redirect(f"{PREFIX}/sign-in")
    response.del_cookie(COOKIE, path=PREFIX + "/")
    return response


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def overview(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    gw = console.gw
    freezes = await gw.freezes.all()
    proposals = [p for p in await gw.bundles.proposals() if p.status == "pending"]
    return console.render(request, "overview.html", active="overview", policy_version=gw.policy.version,
                          frozen=len(freezes), pending=len(proposals), audit_backlog=gw.audit.backlog)


def build_console_app(gateway: Gateway) -> web.Application:
    from gateway.console import audit, decisions, freezes, policies, release

    app = web.Application(middlewares=[guard])
    app[GATEWAY_KEY] = gateway
    app[CONSOLE_KEY] = Console(gateway)
    r = app.router
    r.add_get("/", overview)
    r.add_get("/sign-in", sign_in_page)
    r.add_post("/sign-in", sign_in)
    r.add_get("/step-up", step_up_page)
    r.add_post("/step-up", step_up)
    r.add_post("/sign-out", sign_out)
    for pages in (policies, release, decisions, audit, freezes):
        pages.add_routes(app)
    r.add_static("/static", HERE / "static", append_version=False)
    return app
