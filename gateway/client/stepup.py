"""Answering a step-up challenge (RFC 9470) from the client side, with TOTP.

When the policy wants a stronger authentication the gateway answers 401
``insufficient_user_authentication`` with a JSON body naming the challenge::

    {"error": "insufficient_user_authentication", "challenge_id": "...", "acr_values": "urn:...:mfa",
     "methods": ["totp", "sms"], "expires_at": 1767000000, "max_age": 300, "reasons": [...]}

The client answers it (``POST /auth/mfa/challenges/{id}/totp`` ``{"code": "123456"}``), gets a
step-up token (200 ``{step_up_token, header, ...}``) and sends the very same request again with
the token in ``X-Portcullis-Step-Up``. :class:`StepUpClient` does these three requests.

It is sans-I/O: :meth:`StepUpClient.flow` is a generator that yields each :class:`HttpRequest`
and is sent the :class:`HttpResponse`, so one flow serves asyncio (``await client.request(send,
...)`` with an async ``send``, e.g. :func:`aiohttp_send`), plain blocking code and locust
(``client.request_sync(send, ...)``). Nothing here imports aiohttp or the rest of the gateway.

TOTP codes are single-use per account: the gateway accepts each 30 s step's code once, and only
steps after the last one accepted (``otp_replayed`` otherwise), within +-1 step of its clock.
:class:`TotpAuthenticator` is the authenticator app: it remembers the last step it gave out, so
a second step-up in the same 30 s uses the next step's code (still within the drift), and after
an ``otp_replayed`` (another client of the same account got there first) it moves on to the
next step. Two step-ups per account per 30 s at most; a third raises :class:`StepUpError`
``totp_exhausted`` with ``retry_after``.

RFC 6238 is computed here (HMAC-SHA1, stdlib only), independently of the gateway's pyotp: the
tests compare the two.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.client.device import DeviceKey
from gateway.client.envelope import EnvelopeSession, agree

__all__ = [
    "CHALLENGE_ERROR",
    "STEP_UP_HEADER",
    "HttpRequest",
    "HttpResponse",
    "StepUpClient",
    "StepUpError",
    "StepUpRequired",
    "StepUpResult",
    "TotpAuthenticator",
    "aiohttp_send",
    "drive",
    "drive_sync",
    "encode_json",
    "totp_code",
]

STEP_UP_HEADER = "X-Portcullis-Step-Up"
CHALLENGE_ERROR = "insufficient_user_authentication"
NAME_CHALLENGE = "step-up: challenge"
NAME_TOTP = "step-up: totp"
NAME_RETRY = "step-up: retry"
NAME_SESSION_KEY = "session key"
REKEY_CODES = ("session_key_expired", "session_key_unknown")
"""Refusals of an envelope that the gateway gives before forwarding anything: agree a new key and resend."""


def totp_code(secret: str, at: float | None = None, *, digits: int = 6, step: int = 30) -> str:
    """The RFC 6238 code (HMAC-SHA1) of base32 ``secret`` for the time step containing ``at`` (default now)."""
    return _hotp(secret, int((time.time() if at is None else at) // step), digits)


def _hotp(secret: str, counter: int, digits: int) -> str:
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


class TotpAuthenticator:
    """One account's authenticator app: codes never reused by this client, within the gateway's drift.

    Thread-safe (locust users run as greenlets, tests as tasks); share one per account and process.
    """

    def __init__(self, secret: str, *, digits: int = 6, step: int = 30, drift: int = 1,
                 clock: Callable[[], float] = time.time) -> None:
        _hotp(secret, 0, digits)  # a bad secret fails here, not mid-flow
        self._secret = secret
        self._digits = digits
        self._step = step
        self._drift = drift
        self._clock = clock
        self._last = -1
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the secret
        return "TotpAuthenticator(<secret>)"

    def next_code(self) -> tuple[int, str]:
        """(step counter, code): this step's, or the next one's if this step's was given out already.

        Raises :class:`StepUpError` ``totp_exhausted`` when every step the gateway would accept is spent.
        """
        now = self._clock()
        current = int(now // self._step)
        with self._lock:
            counter = max(current, self._last + 1)
            if counter > current + self._drift:
                wait = (self._last + 1 - self._drift) * self._step - now
                raise StepUpError("totp_exhausted", 0, {"retry_after": max(1, int(wait) + 1)},
                                  f"this account's TOTP codes up to step {self._last} are spent; "
                                  f"retry in {max(1, int(wait) + 1)} s")
            self._last = counter
        return counter, _hotp(self._secret, counter, self._digits)

    def spent(self, counter: int) -> None:
        """The gateway said ``otp_replayed``: that step (and every earlier one) is used up."""
        with self._lock:
            self._last = max(self._last, counter)


@dataclass(frozen=True, slots=True)
class StepUpRequired:
    """The challenge in a 401 ``insufficient_user_authentication`` body."""

    challenge_id: str
    methods: tuple[str, ...]
    acr_values: str
    expires_at: float
    max_age: int | None = None
    reasons: tuple[str, ...] = ()

    @classmethod
    def parse(cls, status: int, body: bytes | str | Mapping[str, Any] | None) -> StepUpRequired | None:
        """The challenge if this response is one (401 with a challenge id), else None."""
        if status != 401 or body is None:
            return None
        doc: Any = body
        if isinstance(body, (bytes, str)):
            try:
                doc = json.loads(body)
            except ValueError:
                return None
        if not isinstance(doc, Mapping) or doc.get("error") != CHALLENGE_ERROR:
            return None
        cid, methods, acr = doc.get("challenge_id"), doc.get("methods"), doc.get("acr_values")
        if not isinstance(cid, str) or not cid or not isinstance(acr, str) or not isinstance(methods, list) \
                or not all(isinstance(m, str) for m in methods):
            return None  # e.g. the settings API's "recent step-up" refusal: no challenge to answer
        expires = doc.get("expires_at")
        max_age = doc.get("max_age")
        reasons = doc.get("reasons")
        return cls(challenge_id=cid, methods=tuple(methods), acr_values=acr,
                   expires_at=float(expires) if isinstance(expires, (int, float)) else 0.0,
                   max_age=max_age if isinstance(max_age, int) and not isinstance(max_age, bool) else None,
                   reasons=tuple(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else ())


class StepUpError(Exception):
    """The step-up could not be completed: ``code`` is the gateway's error code (or the client's own:
    ``no_totp_method``, ``more_needed``, ``totp_exhausted``), ``status`` the HTTP status (0: not sent)."""

    def __init__(self, code: str, status: int, body: Any = None, message: str = "") -> None:
        super().__init__(message or f"step-up failed: {status} {code}")
        self.code = code
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    """Absolute (what the DPoP proof names)."""
    path: str
    """The URL's path and query (for clients with a base URL, e.g. locust)."""
    headers: dict[str, str]
    body: bytes | None
    name: str
    """What the request is in the flow: "step-up: challenge", "step-up: totp", "step-up: retry"."""
    expect: tuple[int, ...]
    """The statuses the flow expects here (locust marks others as failures)."""
    sealed: Any = None
    """The envelope header the body was sealed under (encrypted sessions): the response opens with it."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class StepUpResult:
    response: HttpResponse
    """The last response: the retried request's, or the first one's when no step-up was asked."""
    challenge: StepUpRequired | None = None
    step_up_token: str | None = None
    replayed: int = 0
    """TOTP codes the gateway refused as already used (each followed by the next step's code)."""


T = TypeVar("T")
Flow = Generator[HttpRequest, HttpResponse, StepUpResult]
AsyncSend = Callable[[HttpRequest], Awaitable[HttpResponse]]
SyncSend = Callable[[HttpRequest], HttpResponse]


class StepUpClient:
    """One customer's session: an access token, optionally bound to a device key (DPoP), and a TOTP app.

    Every request carries a fresh DPoP proof for its own method and URL when ``device`` is given.
    """

    def __init__(self, base_url: str, access_token: str, totp: TotpAuthenticator | None, *,
                 device: DeviceKey | None = None, envelope: EnvelopeSession | None = None,
                 pinned: bytes | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.access_token = access_token
        self.totp = totp
        self.device = device
        self.envelope = envelope
        """An agreed session key (gateway/client/envelope.py): request bodies are sealed with it and
        encrypted responses opened, transparently; a spent or refused key is replaced by a new agreement."""
        self.pinned = pinned
        """The gateway's SM2 agreement public key, when the app pins it."""

    def headers(self, method: str, url: str, step_up: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"{'DPoP' if self.device is not None else 'Bearer'} {self.access_token}"}
        if self.device is not None:
            h["DPoP"] = self.device.proof(method, url, self.access_token)
        if step_up is not None:
            h[STEP_UP_HEADER] = step_up
        return h

    def _request(self, method: str, path: str, body: bytes | None, name: str, expect: tuple[int, ...],
                 step_up: str | None = None) -> HttpRequest:
        url = self.base_url + path
        headers = self.headers(method, url, step_up)  # the proof's htu leaves the query out
        sealed = None
        if self.envelope is not None and not path.startswith("/auth/"):  # bodiless requests too (a GET)
            extra, body, sealed = self.envelope.seal(method, path, body)
            headers.update(extra)
        elif body is not None:
            headers["Content-Type"] = "application/json"
        return HttpRequest(method, url, path, headers, body, name, expect, sealed)

    def opened(self, req: HttpRequest, resp: HttpResponse) -> HttpResponse:
        """The response with its body decrypted when the request was sealed."""
        if req.sealed is None or self.envelope is None:
            return resp
        plain = self.envelope.open(resp.status, resp.headers, resp.body, req.sealed)
        return HttpResponse(resp.status, plain, resp.headers)

    def answer_totp(self, challenge: StepUpRequired) -> Generator[HttpRequest, HttpResponse, tuple[str, int]]:
        """POST the TOTP code for ``challenge`` until accepted; return (step-up token, codes replayed)."""
        if "totp" not in challenge.methods:
            raise StepUpError("no_totp_method", 401, None, f"the challenge offers {list(challenge.methods)}, not totp")
        if self.totp is None:
            raise StepUpError("no_totp_method", 401, None, "no TOTP secret for this customer")
        path = f"/auth/mfa/challenges/{challenge.challenge_id}/totp"
        replayed = 0
        while True:
            counter, code = self.totp.next_code()
            body = json.dumps({"code": code}).encode()
            resp = yield self._request("POST", path, body, NAME_TOTP, (200,))
            doc = _doc(resp)
            if resp.status == 200 and isinstance(doc.get("step_up_token"), str):
                return doc["step_up_token"], replayed
            if resp.status == 202:
                raise StepUpError("more_needed", 202, doc, f"the level needs more methods: {doc.get('methods')}")
            if resp.status == 403 and doc.get("error") == "otp_replayed":
                self.totp.spent(counter)  # another client of this account used it: the next step's code
                replayed += 1
                continue
            raise StepUpError(str(doc.get("error", "unexpected_status")), resp.status, doc)

    def agree_session(self) -> Generator[HttpRequest, HttpResponse, EnvelopeSession]:
        """Agree a session key (bound to this token's customer and the device key) and use it from now on."""
        if self.device is None:
            raise StepUpError("no_device", 0, None, "a session key is bound to a device key")
        flow = agree(self.base_url, self.headers, sub=_token_sub(self.access_token), jkt=self.device.thumbprint,
                     pinned=self.pinned)
        try:
            method, url, headers, body = next(flow)
            while True:
                resp = yield HttpRequest(method, url, url[len(self.base_url):], headers, body, NAME_SESSION_KEY,
                                         (200,))
                method, url, headers, body = flow.send((resp.status, resp.body))
        except StopIteration as done:
            session: EnvelopeSession = done.value
            self.envelope = session
            return session

    def exchange(self, method: str, path: str, body: bytes | None, *, name: str, expect: tuple[int, ...],
                 step_up: str | None = None) -> Generator[HttpRequest, HttpResponse, HttpResponse]:
        """One request and its response, opened. Sealed in an encrypted session (a fresh message id each
        call): a spent key is replaced before it, and a key the gateway refuses as expired or unknown (it
        forwarded nothing) is replaced and the request sent once more."""
        if self.envelope is not None and self.envelope.spent:
            yield from self.agree_session()
        req = self._request(method, path, body, name, expect, step_up)
        resp = self.opened(req, (yield req))
        if req.sealed is not None and _doc(resp).get("error") in REKEY_CODES:
            yield from self.agree_session()
            req = self._request(method, path, body, name, expect, step_up)
            resp = self.opened(req, (yield req))
        return resp

    def flow(self, method: str, path: str, json_body: Any = None, *, expect: tuple[int, ...] = (200, 201),
             name: str | None = None) -> Flow:
        """The request; on a challenge, the TOTP answer and the same request again with the token.

        The first leg is named ``step-up: challenge`` and expects 401 (a flow that must step up), or
        with ``name`` is named so and expects ``expect`` or a challenge. Each leg is an :meth:`exchange`.
        """
        body = encode_json(json_body)
        first_name, first_expect = (NAME_CHALLENGE, (401,)) if name is None else (name, (*expect, 401))
        first = yield from self.exchange(method, path, body, name=first_name, expect=first_expect)
        challenge = StepUpRequired.parse(first.status, first.body)
        if challenge is None:
            return StepUpResult(first)
        token, replayed = yield from self.answer_totp(challenge)
        final = yield from self.exchange(method, path, body, name=NAME_RETRY, expect=expect, step_up=token)
        return StepUpResult(final, challenge, token, replayed)

    async def request(self, send: AsyncSend, method: str, path: str, json_body: Any = None,
                      *, expect: tuple[int, ...] = (200, 201), name: str | None = None) -> StepUpResult:
        return await drive(self.flow(method, path, json_body, expect=expect, name=name), send)

    def request_sync(self, send: SyncSend, method: str, path: str, json_body: Any = None,
                     *, expect: tuple[int, ...] = (200, 201), name: str | None = None) -> StepUpResult:
        return drive_sync(self.flow(method, path, json_body, expect=expect, name=name), send)


async def drive(flow: Generator[HttpRequest, HttpResponse, T], send: AsyncSend) -> T:
    """Run a sans-I/O flow (:meth:`StepUpClient.flow`, ``exchange``, ``agree_session``) over an async ``send``."""
    try:
        req = next(flow)
        while True:
            req = flow.send(await send(req))
    except StopIteration as done:
        result: T = done.value
        return result


def drive_sync(flow: Generator[HttpRequest, HttpResponse, T], send: SyncSend) -> T:
    """Run a sans-I/O flow over a blocking ``send`` (e.g. locust's client)."""
    try:
        req = next(flow)
        while True:
            req = flow.send(send(req))
    except StopIteration as done:
        result: T = done.value
        return result


def encode_json(value: Any) -> bytes | None:
    """A JSON body as the SDK sends it (compact; None for no body). A retry resends these very bytes."""
    return json.dumps(value, separators=(",", ":")).encode() if value is not None else None


def _token_sub(token: str) -> str:
    """The ``sub`` of our own access token (read, not verified: the gateway verifies it)."""
    try:
        payload = token.split(".")[1]
        sub = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("sub")
    except (IndexError, ValueError, AttributeError):
        sub = None
    if not isinstance(sub, str):
        raise StepUpError("token_malformed", 0, None, "the access token names no subject")
    return sub


def _doc(resp: HttpResponse) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def aiohttp_send(session: Any) -> AsyncSend:
    """An :data:`AsyncSend` over an ``aiohttp.ClientSession`` (aiohttp is the caller's, not imported here)."""
    async def send(req: HttpRequest) -> HttpResponse:
        async with session.request(req.method, req.url, headers=req.headers, data=req.body) as r:
            return HttpResponse(r.status, await r.read(), dict(r.headers))
    return send
