"""The face service: consent, enrol, verify, liveness, delete over loopback HTTP.

Face computations run in a process pool, never on the event loop, so a
150-300 ms encoding does not stall other requests (the gateway calls this
process; see DESIGN.md). Every request but ``/healthz`` needs the shared
secret (``Authorization: Bearer ...``, compared in constant time).

Routes (JSON bodies; images are base64 JPEG or PNG)::

    GET    /healthz                  {"status", "face": "available"|"unavailable", "reason"?}
    POST   /v1/consent               {"customer", "granted", "text_version", "channel"}
    POST   /v1/enrol                 {"customer", "image"}            -> {"enrolled": true}
    POST   /v1/verify                {"customer", "image"}            -> {"match": bool}
    POST   /v1/liveness              {"customer", "frames": [3..5]}   -> {"live": true, "match": bool}
    DELETE /v1/templates/{customer}                                   -> {"deleted": bool}

Errors: ``{"error": code, "message": text}`` with the codes of biometrics.errors.
Nothing here logs an image, a template, a distance or a customer id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from biometrics import faces, imaging, liveness, worker
from biometrics.errors import BiometricError
from biometrics.store import (
    AesGcmTemplateCipher,
    Consent,
    ConsentStore,
    FileConsentStore,
    FileTemplateStore,
    MemoryReplayStore,
    ReplayStore,
    TemplateStore,
    check_customer,
)

log = logging.getLogger("biometrics.service")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    data_dir: Path
    secret: bytes
    key_file: Path | None = None  # default: data_dir / "template.key" (created if missing)
    workers: int = 1
    max_pending: int = 8  # queued + running face jobs before 503 busy
    threshold: float = faces.DEFAULT_THRESHOLD
    limits: imaging.Limits = field(default_factory=imaging.Limits)
    rule: liveness.BlinkRule = field(default_factory=liveness.BlinkRule)
    job_timeout: float = 10.0

    def __post_init__(self) -> None:
        if len(self.secret) < 32:
            raise ValueError("the service secret must be at least 32 bytes")

    @property
    def max_body(self) -> int:
        # Five frames at the byte cap, base64-inflated, plus the JSON around them.
        return liveness.MAX_FRAMES * (self.limits.max_bytes * 4 // 3 + 8) + 64 * 1024


class FaceService:
    """The checks themselves, independent of HTTP (the embedded demo can hold one directly)."""

    def __init__(self, config: ServiceConfig, *, templates: TemplateStore | None = None,
                 consents: ConsentStore | None = None, replays: ReplayStore | None = None) -> None:
        self.config = config
        key_file = config.key_file or config.data_dir / "template.key"
        cipher = AesGcmTemplateCipher.from_key_file(key_file, create=True)
        self.templates = templates or FileTemplateStore(config.data_dir / "templates", cipher)
        self.consents = consents or FileConsentStore(config.data_dir / "consent.jsonl")
        self.replays = replays or MemoryReplayStore()
        self.available = False
        self.reason: str | None = "not started"
        self._pool: ProcessPoolExecutor | None = None
        self._pending = 0

    # -- lifecycle

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(self.config.workers, mp_context=ctx, initializer=worker.warm)
        try:
            reason = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(self._pool, worker.self_check), 120)
        except (BrokenProcessPool, TimeoutError, OSError) as exc:
            reason = f"face worker pool failed: {type(exc).__name__}"
        self.available = reason is None
        self.reason = reason
        if reason:
            # Withdrawn, not fatal: /healthz says why and the gateway stops offering face.
            log.error("face stack unavailable: %s", reason)

    async def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def health(self) -> dict[str, Any]:
        if self.available:
            return {"status": "ok", "face": "available", "threshold": self.config.threshold}
        return {"status": "degraded", "face": "unavailable", "reason": self.reason}

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.available or self._pool is None:
            raise BiometricError("face_unavailable", self.reason)
        if self._pending >= self.config.max_pending:
            raise BiometricError("busy")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await asyncio.wait_for(loop.run_in_executor(self._pool, partial(fn, *args)),
                                          self.config.job_timeout)
        except BrokenProcessPool:
            self.available, self.reason = False, "a face worker died"
            raise BiometricError("face_unavailable", self.reason) from None
        except TimeoutError:
            raise BiometricError("busy", "the face check took too long") from None
        finally:
            self._pending -= 1

    # -- checks

    def _require_consent(self, customer: str) -> None:
        c = self.consents.current(customer)
        if c is None or not c.granted:
            raise BiometricError("consent_required")

    def _template(self, customer: str) -> np.ndarray:
        tpl = self.templates.get(customer)
        if tpl is None:
            raise BiometricError("not_enrolled")
        return tpl

    def _settle(self, customer: str, result: worker.Analysis) -> np.ndarray:
        """Replays first (a seen frame is refused whatever else is wrong), then the job's error."""
        if result.frame_hashes:
            replayed = self.replays.seen(customer, result.frame_hashes)
            self.replays.remember(customer, result.frame_hashes)
            if replayed:
                raise BiometricError("replayed_frame")
        if result.error is not None:
            raise BiometricError(result.error, result.message)
        assert result.encoding is not None
        return np.frombuffer(result.encoding, dtype=np.float64)

    def record_consent(self, customer: str, granted: bool, text_version: str, channel: str) -> None:
        check_customer(customer)
        self.consents.record(Consent(customer, granted, time.time(), text_version, channel))
        if not granted:
            # Withdrawal ends processing: the template and the frame hashes go with it.
            self.delete(customer)

    async def enrol(self, customer: str, image: bytes) -> None:
        check_customer(customer)
        self._require_consent(customer)
        result = await self._run(worker.analyse_frame, image, self.config.limits)
        self.templates.put(customer, self._settle(customer, result))

    async def verify(self, customer: str, image: bytes) -> bool:
        check_customer(customer)
        self._require_consent(customer)
        template = self._template(customer)
        result = await self._run(worker.analyse_frame, image, self.config.limits)
        return faces.matches(self._settle(customer, result), template, self.config.threshold)

    async def liveness(self, customer: str, frames: list[bytes]) -> bool:
        check_customer(customer)
        self._require_consent(customer)
        if not liveness.MIN_FRAMES <= len(frames) <= liveness.MAX_FRAMES:
            raise BiometricError("frames_invalid")
        if len({imaging.byte_digest(f) for f in frames}) != len(frames):
            raise BiometricError("replayed_frame", "the same frame twice in one sequence")
        template = self._template(customer)
        result = await self._run(worker.analyse_sequence, frames, self.config.limits, self.config.rule)
        return faces.matches(self._settle(customer, result), template, self.config.threshold)

    def delete(self, customer: str) -> bool:
        check_customer(customer)
        self.replays.forget(customer)
        return self.templates.delete(customer)


# --------------------------------------------------------------------------
# HTTP

SERVICE = web.AppKey("service", FaceService)
SECRET = web.AppKey("secret", bytes)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc: BiometricError) -> web.Response:
    return web.json_response(exc.to_json(), status=exc.status)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), request.app[SECRET]):
                raise BiometricError("unauthorized")
        return await handler(request)
    except BiometricError as exc:
        log.info("refused: %s", exc.code)
        return _error(exc)
    except web.HTTPRequestEntityTooLarge:
        return _error(BiometricError("body_too_large"))


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BiometricError("bad_request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise BiometricError("bad_request", "the body must be a JSON object")
    return body


def _image(value: object, limits: imaging.Limits) -> bytes:
    if not isinstance(value, str):
        raise BiometricError("bad_request", "an image is a base64 string")
    # Checked before decoding base64, so an oversized upload costs no copy.
    if len(value) > (limits.max_bytes * 4 // 3) + 8:
        raise BiometricError("image_too_large", f"image over {limits.max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BiometricError("image_invalid", "the image is not valid base64") from None


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].health())


async def _consent(request: web.Request) -> web.Response:
    body = await _json(request)
    granted = body.get("granted")
    text_version, channel = body.get("text_version"), body.get("channel", "unspecified")
    if not isinstance(granted, bool) or not isinstance(text_version, str) or not isinstance(channel, str) \
            or not text_version or len(text_version) > 64 or len(channel) > 64:
        raise BiometricError("bad_request", "consent needs granted (bool), text_version and channel (strings)")
    request.app[SERVICE].record_consent(check_customer(body.get("customer")), granted, text_version, channel)
    return web.json_response({"recorded": True, "granted": granted})


async def _enrol(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    body = await _json(request)
    customer = check_customer(body.get("customer"))
    await svc.enrol(customer, _image(body.get("image"), svc.config.limits))
    return web.json_response({"enrolled": True})


async def _verify(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    body = await _json(request)
    customer = check_customer(body.get("customer"))
    return web.json_response({"match": await svc.verify(customer, _image(body.get("image"), svc.config.limits))})


async def _liveness(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    body = await _json(request)
    customer = check_customer(body.get("customer"))
    frames = body.get("frames")
    if not isinstance(frames, list) or not liveness.MIN_FRAMES <= len(frames) <= liveness.MAX_FRAMES:
        raise BiometricError("frames_invalid")
    images = [_image(f, svc.config.limits) for f in frames]
    return web.json_response({"live": True, "match": await svc.liveness(customer, images)})


async def _delete(request: web.Request) -> web.Response:
    return web.json_response({"deleted": request.app[SERVICE].delete(request.match_info["customer"])})


def make_app(service: FaceService) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=service.config.max_body)
    app[SERVICE] = service
    app[SECRET] = service.config.secret
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/v1/consent", _consent)
    app.router.add_post("/v1/enrol", _enrol)
    app.router.add_post("/v1/verify", _verify)
    app.router.add_post("/v1/liveness", _liveness)
    app.router.add_delete("/v1/templates/{customer}", _delete)

    async def lifecycle(app: web.Application) -> Any:
        await service.start()
        yield
        await service.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise ValueError(f"{path}: the service secret must be at least 32 bytes")
    return secret
