"""The policy admin API on the admin listener: ``/admin/policy/...`` (docs/POLICIES.md).

Every call needs a token from a configured issuer with the ``compliance``
role (else 403 ``role_forbidden``) and a recent step-up: an ``acr`` at or
above ``policy_admin.min_acr`` in ``policy_admin.acr_levels`` and an
``auth_time`` at most ``policy_admin.max_auth_age`` seconds old (else 401
``insufficient_user_authentication`` with an RFC 9470 challenge naming the
acr and max_age to obtain). The handlers only parse and answer; the workflow
and its audit live in `gateway.bundles.service.PolicyAdmin`.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.admin import GATEWAY_KEY
from gateway.authn.tokens import Subject
from gateway.bundles.service import PolicyAdmin, reason_text
from gateway.errors import (
    BAD_REQUEST,
    BUNDLE_NOT_FOUND,
    BUNDLE_TOO_LARGE,
    INVALID_JSON,
    PROPOSAL_NOT_FOUND,
    ROLE_FORBIDDEN,
    SHADOW_NOT_FOUND,
    STEP_UP_REQUIRED,
    UNSUPPORTED_MEDIA_TYPE,
    GatewayError,
)
from gateway.steps.authenticate import bearer_token, refuse_device_bound

ROLE = "compliance"
AUTH_TIME_LEEWAY = 60
"""Seconds an auth_time may lie in the future (clock skew with the identity provider)."""
VERSION_ID = re.compile(r"[0-9a-f]{16}")
PROPOSAL_ID = re.compile(r"[0-9]{1,18}")
_SESSION_ID = PROPOSAL_ID


class StepUpRequirement(Protocol):
    """Which step-up a caller needs (``[policy_admin]``, ``[customer_settings]``)."""

    @property
    def acr_levels(self) -> tuple[str, ...]: ...
    @property
    def min_acr(self) -> str: ...
    @property
    def max_auth_age(self) -> float: ...


def require_recent_step_up(subject: Subject, cfg: StepUpRequirement, now: float, *,
                           what: str = "policy changes") -> None:
    """The caller authenticated recently enough and strongly enough (pure); ``what`` names the action
    in the refusal's message."""
    levels = cfg.acr_levels
    strong = subject.acr in levels and levels.index(subject.acr) >= levels.index(cfg.min_acr)
    auth_time = subject.auth_time
    max_age = int(cfg.max_auth_age)
    if not strong:
        why = f"the authentication ({subject.acr or 'no acr'}) is weaker than {cfg.min_acr}"
    elif auth_time is None:
        why = "the token has no auth_time"
    elif now - auth_time > cfg.max_auth_age:
        why = f"the authentication is {int(now - auth_time)} s old, more than {max_age} s"
    elif auth_time > now + AUTH_TIME_LEEWAY:
        why = "the token's auth_time is in the future"
    else:
        return
    challenge = (f'Bearer error="insufficient_user_authentication", '
                 f'error_description="A recent step-up is required", acr_values="{cfg.min_acr}", max_age={max_age}')
    raise GatewayError(STEP_UP_REQUIRED, f"{what} need a recent step-up: {why}",
                       headers={"WWW-Authenticate": challenge},
                       extra={"acr_values": cfg.min_acr, "max_age": max_age})


async def compliance_officer(request: web.Request, api: str) -> Subject:
    """The caller of a compliance API (``api`` names it in the refusal): role and recent step-up."""
    gw = request.app[GATEWAY_KEY]
    subject = await gw.verifier.verify(bearer_token(request.headers.getall("Authorization", [])))
    refuse_device_bound(subject)
    if ROLE not in subject.roles:
        raise GatewayError(ROLE_FORBIDDEN, f"the {api} requires the compliance role")
    require_recent_step_up(subject, gw.config.policy_admin, time.time())
    return subject


async def _officer(request: web.Request) -> tuple[PolicyAdmin, Subject]:
    subject = await compliance_officer(request, "policy admin API")
    return request.app[GATEWAY_KEY].bundles, subject


def _version(request: web.Request) -> str:
    version = request.match_info["version"]
    if not VERSION_ID.fullmatch(version):
        raise GatewayError(BUNDLE_NOT_FOUND, "a version is 16 lower-case hex characters")
    return version


async def small_json(request: web.Request) -> dict[str, Any]:
    """An optional JSON object body (the listener caps it at 64 KiB); {} when there is none."""
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise GatewayError(INVALID_JSON) from None
    if not isinstance(body, dict):
        raise GatewayError(BAD_REQUEST, "the body must be a JSON object")
    return body


def json_ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def overview(request: web.Request) -> web.Response:
    admin, _ = await _officer(request)
    history = await admin.history()
    return json_ok({"serving": admin.active.status(), "active": history[0].public() if history else None,
                "history": [a.public() for a in history]})


async def list_bundles(request: web.Request) -> web.Response:
    admin, _ = await _officer(request)
    return json_ok({"bundles": [i.public() for i in await admin.bundles()]})


async def upload(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    limit = admin.cfg.max_bundle_bytes
    if request.content_type != "application/json":
        raise GatewayError(UNSUPPORTED_MEDIA_TYPE, 'upload the bundle as application/json: {"files": {path: text}}')
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(BUNDLE_TOO_LARGE, f"the upload exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):  # past the listener's 64 KiB cap, to our own
        size += len(chunk)
        if size > limit:
            raise GatewayError(BUNDLE_TOO_LARGE, f"the upload exceeds {limit} bytes")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise GatewayError(INVALID_JSON, f"the upload is not valid JSON: line {exc.lineno}, column {exc.colno}: "
                                         f"{exc.msg}") from None
    info = await admin.upload(subject.sub, body)
    return json_ok(info.public(), status=201)


async def show_bundle(request: web.Request) -> web.Response:
    admin, _ = await _officer(request)
    bundle = await admin.bundle(_version(request))
    data = {**bundle.info.public(), "report": bundle.info.report}
    if request.query.get("files") in ("1", "true"):
        data["files"] = dict(bundle.files)
    else:
        data["paths"] = sorted(bundle.files)
    return json_ok(data)


async def validate(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    info, result = await admin.validate(subject.sub, _version(request))
    return json_ok({**info.public(), "report": result.report()})


async def propose(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    version = _version(request)
    body = await small_json(request)
    proposal = await admin.propose(subject.sub, version, reason_text(body.get("reason"), required=False))
    return json_ok(proposal.public(), status=201)


async def list_proposals(request: web.Request) -> web.Response:
    admin, _ = await _officer(request)
    return json_ok({"proposals": [p.public() for p in await admin.proposals()]})


async def approve(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    raw = request.match_info["proposal"]
    if not PROPOSAL_ID.fullmatch(raw):
        raise GatewayError(PROPOSAL_NOT_FOUND, "a proposal id is a number")
    activation, published = await admin.approve(subject.sub, int(raw))
    return json_ok({"activation": activation.public(), "notified_processes": published,
                "serving": admin.active.status()})


def _target(body: dict[str, Any]) -> str:
    version = body.get("version")
    if not isinstance(version, str) or not VERSION_ID.fullmatch(version):
        raise GatewayError(BAD_REQUEST, 'expected {"version": "<16 hex characters>", "reason": text}')
    return version


async def rollback(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    body = await small_json(request)
    version = _target(body)
    proposal = await admin.propose_rollback(subject.sub, version, reason_text(body.get("reason"), required=False))
    return json_ok(proposal.public(), status=201)


async def break_glass(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    body = await small_json(request)
    version = _target(body)
    activation, published = await admin.break_glass(subject.sub, version,
                                                    reason_text(body.get("reason"), required=True))
    return json_ok({"activation": activation.public(), "notified_processes": published,
                "alerted": list(admin.cfg.officers), "serving": admin.active.status()})


def sample_rate_of(body: dict[str, Any]) -> float | None:
    rate = body.get("sample_rate")
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise GatewayError(BAD_REQUEST, "sample_rate must be a number in (0, 1]")
    return float(rate)


async def shadow_start(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    body = await small_json(request)
    version = _target(body)
    session, published = await admin.start_shadow(subject.sub, version, sample_rate_of(body),
                                                  reason_text(body.get("reason"), required=False))
    return json_ok({"session": session.public(), "notified_processes": published}, status=201)


async def shadow_stop(request: web.Request) -> web.Response:
    admin, subject = await _officer(request)
    body = await small_json(request)
    session, published = await admin.stop_shadow(subject.sub, reason_text(body.get("reason"), required=False))
    return json_ok({"session": session.public(), "notified_processes": published})


async def shadow_report(request: web.Request) -> web.Response:
    admin, _ = await _officer(request)
    raw = request.match_info.get("session")
    if raw is not None and not _SESSION_ID.fullmatch(raw):
        raise GatewayError(SHADOW_NOT_FOUND, "a shadow session id is a number")
    return json_ok(await admin.shadow_report(int(raw) if raw is not None else None))


def add_policy_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/policy", overview)
    r.add_get("/admin/policy/bundles", list_bundles)
    r.add_post("/admin/policy/bundles", upload)
    r.add_get("/admin/policy/bundles/{version}", show_bundle)
    r.add_post("/admin/policy/bundles/{version}/validate", validate)
    r.add_post("/admin/policy/bundles/{version}/propose", propose)
    r.add_get("/admin/policy/proposals", list_proposals)
    r.add_post("/admin/policy/proposals/{proposal}/approve", approve)
    r.add_post("/admin/policy/rollback", rollback)
    r.add_post("/admin/policy/break-glass", break_glass)
    r.add_get("/admin/policy/shadow", shadow_report)
    r.add_post("/admin/policy/shadow", shadow_start)
    r.add_post("/admin/policy/shadow/stop", shadow_stop)
    r.add_get("/admin/policy/shadow/{session}", shadow_report)
