"""The ``/auth/mfa/...`` endpoints on the public listener (served by the gateway itself).

Behind the same authentication as every route (a JWT, the DPoP proof of a
bound token, one of ``[step_up] roles``); the token's ``sub`` is the customer.

Answering a challenge (docs/STEP_UP.md "Answering")::

    GET  /auth/mfa/challenges/{id}               what is left: methods, done, expires_at
    POST /auth/mfa/challenges/{id}/totp          {"code": "123456"}
    POST /auth/mfa/challenges/{id}/sms/send      (no body) a code to the customer's phone
    POST /auth/mfa/challenges/{id}/sms/verify    {"code": "123456"}
    POST /auth/mfa/challenges/{id}/face          {"frames": [base64 JPEG/PNG x 3-5]} (or {"image": ...}
                                                 when [step_up] face_liveness = false)

200 with ``{step_up_token, header, expires_in, acr, amr, binding}`` when the
level is reached; 202 ``{status: "more_needed", methods}`` when the level needs
another method too (e.g. TOTP and SMS for the face level).

Managing factors (each change needs a step-up bound to that very change, with
factors the customer already has; a first enrolment, a code to the phone on
file; every change is audited write-ahead and announced to the customer)::

    GET    /auth/mfa/factors                     enrolled factors, masked phone, cooling-off ends
    POST   /auth/mfa/factors/totp                new secret: otpauth URI and QR code (PNG, base64)
    POST   /auth/mfa/factors/totp/confirm        {"code"}: the first code from the app activates it
    DELETE /auth/mfa/factors/totp
    PUT    /auth/mfa/factors/phone               {"phone"}: a code goes to the new phone
    POST   /auth/mfa/factors/phone/confirm       {"code"}
    POST   /auth/mfa/factors/face/consent        {"granted": true, "text_version": "..."} (PIPL art. 29)
    PUT    /auth/mfa/factors/face                {"image": base64}
    DELETE /auth/mfa/factors/face                the template is deleted by the face service
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from biometrics.client import FaceServiceError, FaceServiceUnavailable
from gateway.config import RateLimit, RouteConfig, StepUpConfig
from gateway.context import RequestContext
from gateway.errors import (
    BAD_REQUEST,
    ENROLMENT_NOT_FOUND,
    FACE_CONSENT_REQUIRED,
    FACE_FRAMES_INVALID,
    FACE_IDENTITY_MISMATCH,
    FACE_IMAGE_INVALID,
    FACE_IMAGE_TOO_LARGE,
    FACE_LIVENESS_FAILED,
    FACE_MISMATCH,
    FACE_MULTIPLE,
    FACE_NOT_ENROLLED,
    FACE_NOT_FOUND,
    FACE_REPLAYED,
    FACE_TOO_SMALL,
    FACE_UNAVAILABLE,
    FACTOR_NOT_ENROLLED,
    INVALID_JSON,
    ROUTE_NOT_FOUND,
    ErrorKind,
    GatewayError,
)
from gateway.mfa.challenges import Challenge
from gateway.mfa.levels import METHODS
from gateway.mfa.service import FACTOR_LEVEL, StepUps
from gateway.mfa.sms import mask_phone, normalise_phone
from gateway.notify import Notifier
from gateway.policy.engine import StepUp
from gateway.routing import MethodNotAllowed
from gateway.steps.audit import AuditDecision, base_record

log = logging.getLogger("portcullis.mfa")

PREFIX = "/auth/mfa/"
ROUTE_NAME = "mfa"
FACE_ROUTE_NAME = "mfa_face"
BODY_LIMIT = 4096
FACE_BODY_LIMIT = 8 * 1024 * 1024
"""Five frames of up to ~1.2 MiB each, base64: the face service enforces its own pixel limits too."""
MAX_IMAGE = 2 * 1024 * 1024
ALERT_KIND = "mfa_factor_changed"
NOTIFY_TIMEOUT = 30.0

_FACE_ERRORS: dict[str, ErrorKind] = {
    "bad_request": FACE_IMAGE_INVALID, "image_invalid": FACE_IMAGE_INVALID, "frames_invalid": FACE_FRAMES_INVALID,
    "consent_required": FACE_CONSENT_REQUIRED, "not_enrolled": FACE_NOT_ENROLLED, "replayed_frame": FACE_REPLAYED,
    "image_too_large": FACE_IMAGE_TOO_LARGE, "body_too_large": FACE_IMAGE_TOO_LARGE, "no_face": FACE_NOT_FOUND,
    "multiple_faces": FACE_MULTIPLE, "face_too_small": FACE_TOO_SMALL,
    "identity_mismatch": FACE_IDENTITY_MISMATCH, "liveness_failed": FACE_LIVENESS_FAILED,
}


def mfa_routes(cfg: StepUpConfig) -> tuple[RouteConfig, RouteConfig]:
    """The routes the gateway serves itself: (code and factor endpoints, face endpoints)."""
    common: dict[str, Any] = {"upstream": "", "tier": "admin", "fail_mode": "closed", "json_body": True,
                              "roles": cfg.roles}
    # Token buckets in the shared store, before any code or image is looked at: per customer and
    # per client IP (the attempt limits and lockouts of each factor come on top).
    codes = (RateLimit("account", cfg.per_minute / 60, cfg.burst), RateLimit("ip", cfg.per_minute / 15, cfg.burst * 4))
    faces = (RateLimit("account", cfg.face_per_minute / 60, cfg.face_burst),
             RateLimit("ip", cfg.face_per_minute / 20, cfg.face_burst * 3))
    return (RouteConfig(name=ROUTE_NAME, methods=("GET", "POST", "PUT", "DELETE"), path=PREFIX + "*",
                        body_limit=BODY_LIMIT, rate_limits=codes, **common),
            RouteConfig(name=FACE_ROUTE_NAME, methods=("POST", "PUT", "DELETE"), path=PREFIX + "*",
                        body_limit=FACE_BODY_LIMIT, rate_limits=faces, **common))


def is_face_path(path: str) -> bool:
    return path.endswith("/face")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _body(ctx: RequestContext) -> dict[str, Any]:
    if ctx.body and ctx.json_body is None:
        raise GatewayError(INVALID_JSON, "expected a JSON object")
    doc = ctx.json_body if ctx.body else {}
    if not isinstance(doc, dict):
        raise GatewayError(INVALID_JSON, "expected a JSON object")
    return doc


def _code(doc: dict[str, Any]) -> str:
    code = doc.get("code")
    if not isinstance(code, str):
        raise GatewayError(BAD_REQUEST, "the body must be {\"code\": \"123456\"}")
    return code


def _image(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise GatewayError(FACE_IMAGE_INVALID, f"{what} must be a base64 string")
    if len(value) > MAX_IMAGE * 4 // 3 + 4:
        raise GatewayError(FACE_IMAGE_TOO_LARGE)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(FACE_IMAGE_INVALID, f"{what} is not valid base64") from None


def _face_error(exc: FaceServiceError) -> GatewayError:
    return GatewayError(_FACE_ERRORS.get(exc.code, FACE_UNAVAILABLE))


class MfaEndpoint:
    """The last step of the MFA routes' pipeline: dispatches on method and path (sets ``ctx.response``)."""

    name = "mfa"

    def __init__(self, cfg: StepUpConfig, stepups: StepUps, notifier: Notifier, auditor: AuditDecision) -> None:
        self._cfg = cfg
        self._s = stepups
        self._notifier = notifier
        self._auditor = auditor
        Handler = Callable[[RequestContext, str], Awaitable[web.Response]]
        self._challenge_routes: dict[tuple[str, str], Handler] = {
            ("GET", ""): self._challenge_status, ("POST", "totp"): self._answer_totp,
            ("POST", "sms/send"): self._sms_send, ("POST", "sms/verify"): self._answer_sms,
            ("POST", "face"): self._answer_face,
        }
        FactorHandler = Callable[[RequestContext], Awaitable[web.Response]]
        self._factor_routes: dict[tuple[str, str], FactorHandler] = {
            ("GET", ""): self._factors, ("POST", "totp"): self._totp_begin,
            ("POST", "totp/confirm"): self._totp_confirm, ("DELETE", "totp"): self._totp_delete,
            ("PUT", "phone"): self._phone_begin, ("POST", "phone/confirm"): self._phone_confirm,
            ("POST", "face/consent"): self._face_consent, ("PUT", "face"): self._face_enrol,
            ("DELETE", "face"): self._face_delete,
        }

    async def __call__(self, ctx: RequestContext) -> None:
        rest = ctx.path[len(PREFIX):]
        head, _, tail = rest.partition("/")
        if head == "challenges":
            cid, _, action = tail.partition("/")
            handler = self._challenge_routes.get((ctx.method, action))
            if cid and handler is not None:
                ctx.response = await handler(ctx, cid)
                return
            self._not_allowed(ctx.method, [m for (m, a) in self._challenge_routes if a == action] if cid else [])
        elif head == "factors":
            factor_handler = self._factor_routes.get((ctx.method, tail))
            if factor_handler is not None:
                ctx.response = await factor_handler(ctx)
                return
            self._not_allowed(ctx.method, [m for (m, a) in self._factor_routes if a == tail])
        raise GatewayError(ROUTE_NOT_FOUND)

    @staticmethod
    def _not_allowed(method: str, allowed: list[str]) -> None:
        if allowed:
            raise MethodNotAllowed(tuple(allowed))
        raise GatewayError(ROUTE_NOT_FOUND)

    # -- answering challenges ---------------------------------------------------

    async def _challenge_status(self, ctx: RequestContext, cid: str) -> web.Response:
        ch = await self._s.load(ctx, cid)
        methods, done, _ = await self._s.open_methods(ctx, ch)
        return _json({"challenge_id": ch.id, "acr_values": ch.acr, "methods": methods, "done": done,
                      "expires_at": int(ch.expires_at), "reasons": list(ch.reasons)})

    async def _finish(self, ctx: RequestContext, cid: str, method: str,
                      check: Callable[[Challenge], Awaitable[None]]) -> web.Response:
        status, doc = await self._s.answer(ctx, cid, method, check)
        return _json(doc, status)

    async def _answer_totp(self, ctx: RequestContext, cid: str) -> web.Response:
        code = _code(_body(ctx))
        assert ctx.subject is not None
        sub = ctx.subject.sub

        async def check(ch: Challenge) -> None:
            await self._s.totp.verify(sub, code)
        return await self._finish(ctx, cid, "totp", check)

    async def _sms_send(self, ctx: RequestContext, cid: str) -> web.Response:
        return _json(await self._s.send_sms(ctx, cid))

    async def _answer_sms(self, ctx: RequestContext, cid: str) -> web.Response:
        code = _code(_body(ctx))

        async def check(ch: Challenge) -> None:
            await self._s.sms.verify(f"challenge:{ch.id}", code)
        return await self._finish(ctx, cid, "sms", check)

    async def _answer_face(self, ctx: RequestContext, cid: str) -> web.Response:
        if self._s.face is None or not await self._s.face_state.available():
            # Withdrawn (the service missing or broken): 503 with the methods left, not a bare
            # "method not offered", so the client switches at once. Nothing is sent, nothing counted.
            raise await self._face_unavailable(ctx, cid)
        doc = _body(ctx)
        frames_raw = doc.get("frames")
        if self._cfg.face_liveness or frames_raw is not None:
            if not isinstance(frames_raw, list) or not 3 <= len(frames_raw) <= 5:
                raise GatewayError(FACE_FRAMES_INVALID)
            frames = [_image(f, f"frames[{i}]") for i, f in enumerate(frames_raw)]
        else:
            frames = [_image(doc.get("image"), "image")]
        assert ctx.subject is not None
        sub = ctx.subject.sub
        face = self._s.face
        assert face is not None  # checked on entry

        async def check(ch: Challenge) -> None:
            try:
                ok = await (face.liveness(sub, frames) if len(frames) > 1 else face.verify(sub, frames[0]))
            except FaceServiceError as exc:
                if exc.code == "not_enrolled":  # the service lost or deleted it: stop offering face
                    await self._s.records.set_face(sub, None)
                raise self._face_service_error(exc) from None
            if not ok:
                raise GatewayError(FACE_MISMATCH)
        try:
            return await self._finish(ctx, cid, "face", check)
        except GatewayError as exc:
            if exc.code == FACE_UNAVAILABLE.code:
                raise await self._face_unavailable(ctx, cid) from None
            raise

    async def _face_unavailable(self, ctx: RequestContext, cid: str) -> GatewayError:
        """503 face_unavailable with the other methods that still reach the level (the challenge checked first)."""
        ch = await self._s.load(ctx, cid)
        methods, _, _ = await self._s.open_methods(ctx, ch)
        return GatewayError(FACE_UNAVAILABLE, extra={"methods": methods})

    # -- factors -----------------------------------------------------------------

    async def _factors(self, ctx: RequestContext) -> web.Response:
        assert ctx.subject is not None
        sub = ctx.subject.sub
        account = ctx.subject.accounts[0] if ctx.subject.accounts else None
        f = await self._s.factors(sub, account)
        cooling = self._s.cooling_off

        def view(method: str) -> dict[str, Any]:
            at = f.enrolled.get(method)
            if at is None:
                return {"enrolled": False}
            out: dict[str, Any] = {"enrolled": True, "enrolled_at": _stamp(at) if at else None,
                                   "usable_for_transfers_from": _stamp(at + cooling) if at else None}
            return out
        doc = {m: view(m) for m in METHODS}
        if f.phone is not None:
            doc["sms"].update({"phone": mask_phone(f.phone), "source": f.phone_source})
        doc["face"]["available"] = await self._s.face_state.available()
        return _json(doc)

    async def _protect(self, ctx: RequestContext, factor: str) -> None:
        """A change of ``factor`` needs a step-up bound to this very request, by factors the customer has.

        The level is the factor's own (face: the face level); a customer with no factor of their
        own yet proves the phone on file instead (an SMS code reaches the mfa level).
        """
        assert ctx.subject is not None
        claims = ctx.step_up
        sub = ctx.subject.sub
        account = ctx.subject.accounts[0] if ctx.subject.accounts else None
        factors = await self._s.factors(sub, account)
        own = {m for m, at in factors.enrolled.items() if not (m == "sms" and factors.phone_source == "on_file")}
        level = FACTOR_LEVEL[factor] if own else FACTOR_LEVEL["sms"]
        if claims is not None and claims.txn is not None and self._s.ladder.satisfies(claims.acr, level):
            return
        raise await self._s.challenge(ctx, StepUp(acr=level, methods=(), max_age=None),
                                      reasons=["factor_change"], tier="factor", factors=factors,
                                      description="Changing a sign-in factor needs a step-up")

    async def _changed(self, ctx: RequestContext, factor: str, action: str, **fields: Any) -> None:
        """Audit (write-ahead: 503 audit_unavailable and nothing changes) and tell the customer."""
        record = base_record(ctx, "mfa")
        record.update({"action": f"mfa_{factor}_{action}", **fields})
        await self._auditor.write(record)

    async def _announce(self, ctx: RequestContext, factor: str, action: str) -> bool:
        assert ctx.subject is not None
        what = {"totp": "authenticator app", "sms": "phone number for codes", "face": "face"}[factor]
        try:
            await asyncio.wait_for(self._notifier.notify(
                ALERT_KIND, ctx.subject.sub, f"Your {what} was {action}",
                {"factor": factor, "change": action, "when": _stamp(ctx.now), "request_id": ctx.request_id,
                 "usable_for_transfers_from": _stamp(ctx.now + self._s.cooling_off)}), NOTIFY_TIMEOUT)
        except Exception as exc:
            log.warning("mfa_notify_failed: %s", type(exc).__name__)
            return False
        return True

    async def _totp_begin(self, ctx: RequestContext) -> web.Response:
        await self._protect(ctx, "totp")
        assert ctx.subject is not None
        enrolment = await self._s.totp.begin_enrolment(ctx.subject.sub, ctx.subject.sub)
        self._audit(ctx, "mfa_totp_enrolment_started")
        return _json({"otpauth_uri": enrolment.uri, "qr_png": base64.b64encode(enrolment.qr_png).decode(),
                      "expires_at": int(enrolment.expires_at),
                      "next": "POST /auth/mfa/factors/totp/confirm with the first code from the app"}, 201)

    async def _totp_confirm(self, ctx: RequestContext) -> web.Response:
        code = _code(_body(ctx))
        assert ctx.subject is not None
        sub = ctx.subject.sub
        enrolled_at = await self._change(ctx, "totp", "enrolled", lambda: self._s.totp.confirm_enrolment(sub, code))
        notified = await self._announce(ctx, "totp", "added")
        return _json({"enrolled": True, "enrolled_at": _stamp(enrolled_at), "notified": notified,
                      "usable_for_transfers_from": _stamp(enrolled_at + self._s.cooling_off)})

    async def _totp_delete(self, ctx: RequestContext) -> web.Response:
        assert ctx.subject is not None
        if await self._s.totp.enrolled_at(ctx.subject.sub) is None:
            raise GatewayError(FACTOR_NOT_ENROLLED)
        await self._protect(ctx, "totp")
        await self._changed(ctx, "totp", "removed")
        await self._s.totp.remove(ctx.subject.sub)
        return _json({"removed": True, "notified": await self._announce(ctx, "totp", "removed")})

    async def _phone_begin(self, ctx: RequestContext) -> web.Response:
        doc = _body(ctx)
        raw = doc.get("phone")
        phone = normalise_phone(raw if isinstance(raw, str) else "")
        await self._protect(ctx, "sms")
        assert ctx.subject is not None
        sub = ctx.subject.sub
        sent = await self._s.sms.send(f"enrol-phone:{sub}", phone, ip=ctx.client_ip)
        await self._s.records.set_pending_phone(sub, phone, ctx.now)
        self._audit(ctx, "mfa_phone_change_started", to=sent.to)
        return _json({"sent_to": sent.to, "expires_at": int(sent.expires_at),
                      "next": "POST /auth/mfa/factors/phone/confirm with the code sent to the new phone"}, 202)

    async def _phone_confirm(self, ctx: RequestContext) -> web.Response:
        code = _code(_body(ctx))
        assert ctx.subject is not None
        sub = ctx.subject.sub
        phone = await self._s.records.pending_phone(sub)
        if phone is None:
            raise GatewayError(ENROLMENT_NOT_FOUND)
        await self._s.sms.verify(f"enrol-phone:{sub}", code)
        await self._changed(ctx, "sms", "enrolled", to=mask_phone(phone))
        await self._s.records.set_phone(sub, phone, ctx.now)
        await self._s.records.clear_pending_phone(sub)
        return _json({"phone": mask_phone(phone), "enrolled_at": _stamp(ctx.now),
                      "notified": await self._announce(ctx, "sms", "changed"),
                      "usable_for_transfers_from": _stamp(ctx.now + self._s.cooling_off)})

    def _face(self) -> Any:
        if self._s.face is None:
            raise GatewayError(FACE_UNAVAILABLE)
        return self._s.face

    def _face_service_error(self, exc: FaceServiceError) -> GatewayError:
        """The gateway's error for a face service failure; face is withdrawn when the service is unusable.

        Unreachable, refusing our secret (401) or broken (5xx other than ``busy``, which is only a full
        queue): withdrawn until the next health check finds it well. Everything else is about the
        customer's pictures and maps to its own stable code.
        """
        if isinstance(exc, FaceServiceUnavailable) or exc.status == 401 or (exc.status >= 500 and exc.code != "busy"):
            log.warning("face_service_failed: %s %s", exc.status, exc.code)
            self._s.face_state.withdraw()
            return GatewayError(FACE_UNAVAILABLE)
        return _face_error(exc)

    async def _face_call(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except FaceServiceError as exc:
            raise self._face_service_error(exc) from None

    async def _change(self, ctx: RequestContext, factor: str, action: str, op: Callable[[], Awaitable[Any]],
                      **fields: Any) -> Any:
        """Audit the change write-ahead, run it, and audit its failure if it fails (then re-raise)."""
        await self._changed(ctx, factor, action, **fields)
        try:
            return await op()
        except GatewayError as exc:
            self._audit(ctx, f"mfa_{factor}_{action}_failed", code=exc.code)
            raise

    async def _face_consent(self, ctx: RequestContext) -> web.Response:
        doc = _body(ctx)
        granted, version = doc.get("granted"), doc.get("text_version")
        if not isinstance(granted, bool) or not isinstance(version, str) or not 0 < len(version) <= 64:
            raise GatewayError(BAD_REQUEST, 'the body must be {"granted": true|false, "text_version": "..."}')
        assert ctx.subject is not None
        sub = ctx.subject.sub
        await self._change(ctx, "face", "consent_granted" if granted else "consent_withdrawn",
                           lambda: self._face_call(self._face().consent(sub, granted, version)),
                           text_version=version)
        out: dict[str, Any] = {"granted": granted, "text_version": version}
        if not granted and await self._s.records.face(ctx.subject.sub) is not None:
            # Withdrawing consent deletes the template (no step-up: withdrawal stays easy), so the
            # face factor is gone: announced like any other removal.
            await self._s.records.set_face(ctx.subject.sub, None)
            out["notified"] = await self._announce(ctx, "face", "removed")
        return _json(out)

    async def _face_enrol(self, ctx: RequestContext) -> web.Response:
        image = _image(_body(ctx).get("image"), "image")
        await self._protect(ctx, "face")
        assert ctx.subject is not None
        sub = ctx.subject.sub
        await self._change(ctx, "face", "enrolled", lambda: self._face_call(self._face().enrol(sub, image)))
        await self._s.records.set_face(ctx.subject.sub, ctx.now)
        return _json({"enrolled": True, "notified": await self._announce(ctx, "face", "added"),
                      "usable_for_transfers_from": _stamp(ctx.now + self._s.cooling_off)})

    async def _face_delete(self, ctx: RequestContext) -> web.Response:
        assert ctx.subject is not None
        if await self._s.records.face(ctx.subject.sub) is None:
            raise GatewayError(FACE_NOT_ENROLLED)
        await self._protect(ctx, "face")
        sub = ctx.subject.sub
        await self._change(ctx, "face", "removed", lambda: self._face_call(self._face().delete(sub)))
        await self._s.records.set_face(ctx.subject.sub, None)
        return _json({"removed": True, "notified": await self._announce(ctx, "face", "removed")})

    def _audit(self, ctx: RequestContext, action: str, **fields: Any) -> None:
        record = base_record(ctx, "mfa")
        record.update({"action": action, **fields})
        self._auditor.queue(record)
