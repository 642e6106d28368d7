"""Session keys at ``/auth/session-key`` and the SM4-GCM envelopes they seal (docs/CRYPTO.md).

The cryptography is pure and lives in :mod:`gateway.crypto.session`; this module
holds the gateway's side: the session-key records in the shared state store, the
endpoint, and the two pipeline steps.

* :class:`~gateway.agreement_keys.AgreementKeys` (its own module): the gateway's SM2
  key-agreement key pairs by id; the newest is offered, the previous ones still open
  key material sent to them, and each process reloads the file within seconds of a
  rotation (docs/KEYS.md "Agreement keys").
* :class:`SessionKeys` records live in the state store as ``sk:<key id>``, sealed
  with SM4-GCM under the ``[envelope] key_file`` (a :class:`SecretBox`), so a
  Redis dump does not hold usable keys and every replica can open any session's
  envelopes. Each process keeps the records it has used in a bounded LRU: a
  session's first request on a process costs one state round trip more.
* Per message: the timestamp must be within ``window`` of the gateway's clock,
  ``env:<key id>:<mid>`` is set-if-absent in the shared store (a replay to any
  replica within the window is refused) and ``sk:n:<key id>`` counts the key's
  messages (``max_messages``); both are queued, only after the envelope's tag
  has been checked (forged envelopes cost the store nothing), on the request's
  next state round: the facts step's counters on a trade or transfer, so an
  encrypted order costs no more round trips than a plaintext one. The check
  runs before the decision, so a replay never reaches the policy, a step-up
  or an upstream.
* SM2 decryption (~0.5 ms of CPU) runs in a worker thread, behind the route's
  per-customer and per-IP token buckets and a small semaphore, so nobody can
  burn the event loop with key agreements.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.agreement_keys import AgreementKeys
from gateway.config import EnvelopeConfig, RateLimit, RouteConfig
from gateway.context import RequestContext
from gateway.crypto import SecretBox, SecretBoxError
from gateway.crypto.session import (
    CLIENT_RANDOM_SIZE,
    ENVELOPE_HEADER,
    ENVELOPE_TYPE,
    SERVER_RANDOM_SIZE,
    EnvelopeError,
    EnvelopeHeader,
    InvalidTag,
    SessionKeys,
    b64d,
    b64e,
    confirm_tag,
    derive,
    new_key_id,
    open_bodiless,
    open_request,
    seal_response,
    transcript,
)
from gateway.crypto.sm2 import Sm2Error
from gateway.errors import (
    AGREEMENT_KEY_UNKNOWN,
    BAD_REQUEST,
    DPOP_REQUIRED,
    ENCRYPTION_REQUIRED,
    ENVELOPE_INVALID,
    ENVELOPE_MALFORMED,
    ENVELOPE_REPLAYED,
    ENVELOPE_STALE,
    INVALID_JSON,
    KEY_AGREEMENT_FAILED,
    RESPONSE_UNENCRYPTABLE,
    SESSION_KEY_EXPIRED,
    SESSION_KEY_MISMATCH,
    SESSION_KEY_UNKNOWN,
    STATE_UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    ConfigError,
    GatewayError,
)
from gateway.headers import drop_body_digests
from gateway.proxy import is_envelope
from gateway.state.base import Pending, StateStore, StateUnavailable
from gateway.steps.state_round import after_round, state_batch

__all__ = ["PATH", "Decrypt", "EncryptResponse", "SessionKeyEndpoint", "SessionKeyService", "session_key_route"]

log = logging.getLogger("portcullis.envelope")

PATH = "/auth/session-key"
ROUTE_NAME = "session_key"
BODY_LIMIT = 4096
MAX_AGREEMENTS_IN_FLIGHT = 4
CACHE_SIZE = 10_000
_AAD = b"portcullis-session-key-record-v1:"

Audit = Callable[[dict[str, Any]], None]
Count = Callable[[str], None]


def _no_count(event: str) -> None:
    return None


def session_key_route(cfg: EnvelopeConfig) -> RouteConfig:
    """The route the gateway serves itself: buffered JSON body, fails closed, rate-limited."""
    limits = (RateLimit("account", cfg.per_minute / 60, cfg.burst), RateLimit("ip", cfg.per_minute / 15, cfg.burst * 4))
    return RouteConfig(name=ROUTE_NAME, methods=("GET", "POST"), path=PATH, upstream="", tier="admin",
                       fail_mode="closed", body_limit=BODY_LIMIT, json_body=True, roles=cfg.roles,
                       rate_limits=limits, encryption="off")


# -- session-key records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRecord:
    sub: str
    jkt: str
    keys: SessionKeys
    expires: float
    max_messages: int

    def to_bytes(self) -> bytes:
        k = self.keys
        return orjson.dumps({"sub": self.sub, "jkt": self.jkt, "c2s": b64e(k.c2s), "s2c": b64e(k.s2c),
                             "exp": self.expires, "max": self.max_messages})

    @classmethod
    def from_bytes(cls, raw: bytes) -> SessionRecord:
        d = orjson.loads(raw)
        return cls(d["sub"], d["jkt"], SessionKeys(b64d(d["c2s"], 16), b64d(d["s2c"], 16), b""),
                   float(d["exp"]), int(d["max"]))


def _record_key(kid: str) -> str:
    return f"sk:{kid}"


class SessionKeyService:
    """Agrees session keys and finds them again (see the module docstring)."""

    def __init__(self, cfg: EnvelopeConfig, state: StateStore, audit: Audit, *,
                 clock: Callable[[], float] = time.time, count: Count = _no_count) -> None:
        self.cfg = cfg
        self._state = state
        self._audit = audit
        self._clock = clock
        self._count = count
        # The file is looked at again every few seconds of ``clock`` (offer, agree): a rotation
        # reaches every process without a restart.
        self.agreement = (AgreementKeys.from_file(cfg.agreement_key_file, create=True, clock=clock)
                          if cfg.agreement_key_file is not None else AgreementKeys.generate())
        try:
            self._box = (SecretBox.from_file(cfg.key_file, create=True) if cfg.key_file is not None
                         else SecretBox.generate())
        except SecretBoxError as exc:
            raise ConfigError(f"envelope.key_file: {exc}") from None
        self._cache: OrderedDict[str, SessionRecord] = OrderedDict()
        self._busy = asyncio.Semaphore(MAX_AGREEMENTS_IN_FLIGHT)

    def offer(self) -> dict[str, Any]:
        self.agreement.refresh()
        cfg = self.cfg
        return {"alg": "SM2+SM3-KDF+SM4-GCM", "agreement_kid": self.agreement.current,
                "public_key": b64e(self.agreement.public()), "max_age": int(cfg.max_age),
                "max_messages": cfg.max_messages, "window": int(cfg.window), "content_type": ENVELOPE_TYPE,
                "header": ENVELOPE_HEADER}

    async def agree(self, ctx: RequestContext, doc: Any) -> dict[str, Any]:
        subject = ctx.subject
        assert subject is not None  # the pipeline authenticated the caller
        if not ctx.device_id:
            raise GatewayError(DPOP_REQUIRED, "a session key is bound to a device key: send a DPoP proof")
        if not isinstance(doc, dict):
            raise GatewayError(BAD_REQUEST, "expected a JSON object")
        akid, material, nonce = doc.get("agreement_kid"), doc.get("key_material"), doc.get("client_nonce")
        if not isinstance(akid, str) or not isinstance(material, str) or not isinstance(nonce, str):
            raise GatewayError(BAD_REQUEST, "agreement_kid, key_material and client_nonce are required strings")
        try:
            sealed = b64d(material, None, "key_material")
            client_nonce = b64d(nonce, 16, "client_nonce")
        except EnvelopeError as exc:
            raise GatewayError(BAD_REQUEST, str(exc)) from None
        self.agreement.refresh()
        private = self.agreement.get(akid)
        if private is None and self.agreement.refresh(force=True):  # rotated, and another process offered it
            private = self.agreement.get(akid)
        if private is None:
            raise GatewayError(AGREEMENT_KEY_UNKNOWN)
        if len(sealed) > 512:
            raise GatewayError(KEY_AGREEMENT_FAILED)
        async with self._busy:
            try:
                client_random = await asyncio.to_thread(private.decrypt, sealed)
            except Sm2Error:
                client_random = b""
        if len(client_random) != CLIENT_RANDOM_SIZE:
            self._count("agreement_failed")
            raise GatewayError(KEY_AGREEMENT_FAILED)
        kid = new_key_id()
        server_random = secrets.token_bytes(SERVER_RANDOM_SIZE)
        bound = transcript(sub=subject.sub, jkt=ctx.device_id, key_id=kid, agreement_kid=akid,
                           client_nonce=client_nonce)
        keys = derive(client_random, server_random, bound)
        now = self._clock()
        cfg = self.cfg
        record = SessionRecord(subject.sub, ctx.device_id, keys, now + cfg.max_age, cfg.max_messages)
        try:
            await self._state.set(_record_key(kid), self._box.seal(record.to_bytes(), _AAD + kid.encode()),
                                  cfg.max_age + cfg.window)
        except StateUnavailable:
            raise
        except Exception as exc:
            raise GatewayError(STATE_UNAVAILABLE) from exc
        self._remember(kid, record)
        self._count("session_key_issued")
        self._audit({"type": "session_key", "time": now, "request_id": ctx.request_id, "sub": subject.sub,
                     "device": ctx.device_id, "key_id": kid, "agreement_kid": akid, "outcome": "issued",
                     "expires": int(record.expires)})
        return {"key_id": kid, "server_random": b64e(server_random), "expires_at": int(record.expires),
                "max_messages": cfg.max_messages, "window": int(cfg.window),
                "confirm": b64e(confirm_tag(keys, bound))}

    def _remember(self, kid: str, record: SessionRecord) -> None:
        cache = self._cache
        cache[kid] = record
        cache.move_to_end(kid)
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)

    async def find(self, kid: str) -> SessionRecord | None:
        """The session key's record: this process's cache, else the shared store (one round trip)."""
        record = self._cache.get(kid)
        if record is not None:
            return record
        try:
            raw = await self._state.get(_record_key(kid))
        except StateUnavailable:
            raise
        except Exception as exc:
            raise GatewayError(STATE_UNAVAILABLE) from exc
        if raw is None:
            return None
        try:
            record = SessionRecord.from_bytes(self._box.open(raw, _AAD + kid.encode()))
        except (SecretBoxError, ValueError, KeyError, TypeError, EnvelopeError):
            log.warning("session key record %s does not open: ignored", kid)
            return None
        self._remember(kid, record)
        return record

    def admit(self, ctx: RequestContext, kid: str, mid: str, max_messages: int) -> None:
        """Queue the message id (set if absent: seen before?) and the key's message count on the request's
        next state round, and refuse the request there when either says no.

        On a trade or transfer route the facts step sends them with its counters (one round trip for
        both); elsewhere the :class:`~gateway.steps.state_round.StateRound` after this step does."""
        cfg = self.cfg
        batch = state_batch(ctx, self._state)
        fresh = batch.set_if_absent(f"env:{kid}:{mid}", b"1", 2 * cfg.window)
        used = batch.incr(f"sk:n:{kid}", 1, cfg.max_age + cfg.window)
        after_round(ctx, functools.partial(_admitted, fresh=fresh, used=used, max_messages=max_messages))


def _admitted(ctx: RequestContext, *, fresh: Pending[bool], used: Pending[int], max_messages: int) -> None:
    if not (fresh.done and used.done):  # the round failed open: a replay cannot be ruled out
        raise GatewayError(STATE_UNAVAILABLE)
    if not fresh.value:
        raise GatewayError(ENVELOPE_REPLAYED)
    if int(used.value) > max_messages:
        raise GatewayError(SESSION_KEY_EXPIRED)


# -- the endpoint --------------------------------------------------------------------------


class SessionKeyEndpoint:
    """``GET /auth/session-key``: the agreement key on offer; ``POST``: agree a session key."""

    name = "session_key"

    def __init__(self, service: SessionKeyService) -> None:
        self._s = service

    async def __call__(self, ctx: RequestContext) -> None:
        # The route allows GET and POST only (the server answers 405 to anything else).
        body = self._s.offer() if ctx.method == "GET" else await self._s.agree(ctx, ctx.json_body)
        ctx.response = web.Response(body=orjson.dumps(body), content_type="application/json",
                                    headers={"Cache-Control": "no-store"})


# -- the pipeline steps ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """What the decrypt step leaves for the response: the request's header and its session keys."""

    header: EnvelopeHeader
    keys: SessionKeys


class Decrypt:
    """Opens an SM4-GCM request envelope so later steps (risk, policy, step-up) see the plaintext."""

    name = "decrypt"

    def __init__(self, service: SessionKeyService | None, *, clock: Callable[[], float] = time.time,
                 count: Count = _no_count) -> None:
        self._s = service
        self._clock = clock
        self._count = count

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        if not is_envelope(ctx.headers.get("Content-Type", "")):
            if ENVELOPE_HEADER not in ctx.headers:
                if ctx.route.encryption == "required" and ctx.body:
                    raise GatewayError(ENCRYPTION_REQUIRED)
                return None
            # A request without a body, sealed in the header (a GET of personal data): its answer is sealed.
            if self._s is None or ctx.route.encryption == "off":
                raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "encrypted requests are not accepted here")
            if ctx.body or ctx.stream is not None:
                raise GatewayError(ENVELOPE_MALFORMED, f"a body is sent sealed as {ENVELOPE_TYPE}")
            return self._open(ctx, self._s, bodiless=True)
        if self._s is None or ctx.route.encryption == "off":
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "encrypted payloads are not accepted here")
        if ctx.body is None:
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "encrypted bodies are accepted on trade, transfer and"
                                                       " admin routes")
        return self._open(ctx, self._s, bodiless=False)

    async def _open(self, ctx: RequestContext, service: SessionKeyService, *, bodiless: bool) -> None:
        try:
            h = EnvelopeHeader.parse(ctx.headers.get(ENVELOPE_HEADER))
        except EnvelopeError as exc:
            raise GatewayError(ENVELOPE_MALFORMED, str(exc)) from None
        if (h.tag is None) == bodiless:
            raise GatewayError(ENVELOPE_MALFORMED, "tag= goes in the header of a request without a body, and"
                                                   " only there")
        now = self._clock()
        if abs(now - h.ts) > service.cfg.window:
            raise GatewayError(ENVELOPE_STALE)
        record = await service.find(h.kid)
        if record is None:
            raise GatewayError(SESSION_KEY_UNKNOWN)
        if record.expires < now:
            raise GatewayError(SESSION_KEY_EXPIRED)
        subject = ctx.subject
        if subject is None or subject.sub != record.sub or ctx.device_id != record.jkt:
            raise GatewayError(SESSION_KEY_MISMATCH)
        target = ctx.path + ("?" + ctx.query if ctx.query else "")
        plaintext = b""
        try:
            if bodiless:
                open_bodiless(record.keys, ctx.method, target, h)
            else:
                plaintext = open_request(record.keys, ctx.method, target, h, ctx.body or b"")
        except InvalidTag:
            self._count("invalid")
            raise GatewayError(ENVELOPE_INVALID) from None
        service.admit(ctx, h.kid, h.mid, record.max_messages)  # checked at the next state round
        if not bodiless:
            self._use(ctx, plaintext)
        ctx.envelope = Opened(h, record.keys)
        self._count("decrypted")

    @staticmethod
    def _use(ctx: RequestContext, plaintext: bytes) -> None:
        if ctx.route.json_body and plaintext:
            try:
                ctx.json_body = orjson.loads(plaintext)
            except orjson.JSONDecodeError:
                raise GatewayError(INVALID_JSON, "the decrypted body is not valid JSON") from None
        ctx.body = plaintext


class EncryptResponse:
    """Seals the (buffered) upstream response of an encrypted request under the session's s2c key."""

    name = "encrypt_response"

    def __init__(self, count: Count = _no_count) -> None:
        self._count = count

    def __call__(self, ctx: RequestContext) -> None:
        opened: Opened | None = ctx.envelope
        if opened is None:
            return
        resp = ctx.response
        if not isinstance(resp, web.Response) or resp.prepared or not isinstance(resp.body, (bytes, type(None))):
            raise GatewayError(RESPONSE_UNENCRYPTABLE, "the response was not buffered")
        if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise GatewayError(RESPONSE_UNENCRYPTABLE, "the response is compressed")
        media = resp.content_type or "application/octet-stream"
        try:
            h, sealed = seal_response(opened.keys, opened.header, resp.status, media, resp.body or b"")
        except EnvelopeError:
            raise GatewayError(RESPONSE_UNENCRYPTABLE) from None
        drop_body_digests(resp.headers)  # they described the plaintext
        resp.body = sealed
        resp.content_type = ENVELOPE_TYPE
        resp.headers[ENVELOPE_HEADER] = h.render()
        self._count("encrypted")
