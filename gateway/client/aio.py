"""The SDK over aiohttp: :class:`PortcullisClient`, one customer's session with the gateway.

It runs :class:`~gateway.client.stepup.StepUpClient`'s sans-I/O flows on an ``aiohttp.ClientSession``
it owns (or borrows): a DPoP proof on every request, a session key agreed on first use and every body
sealed with it (``encrypt=True``), step-ups answered with a TOTP authenticator or handed to the app
(``on_step_up``), and transport failures retried under one rule::

    async with PortcullisClient(url, token, device=key, encrypt=True, on_step_up=ask_user) as gw:
        placed = await gw.place_order("A1", {"symbol": "601318.SH", "side": "buy", "qty": 100,
                                             "price": 57.2, "type": "limit"})

**Retry rule.** A request is retried only if repeating it cannot do twice what it does once: GET
(HEAD, OPTIONS) always; anything else only when it carries an idempotency key the backend recognises
(``idempotent=True``; :meth:`PortcullisClient.place_order` makes the order's ``client_order_id`` that
key, drawing one with ``secrets`` when the caller gave none, and resends the very same body). What is
retried: a connection that failed or broke, a timeout, and the gateway's 502/503/504 with a code in
:data:`RETRYABLE_CODES`. A request without a key is retried only when it cannot have left the client
(the connection was never made); otherwise :class:`TransportError` says it may have reached the server.
Attempts are bounded (:class:`RetryPolicy`) with exponential backoff and full jitter; every attempt is a
new flow, so an encrypted body is sealed again under a fresh message id (the gateway refuses a replayed
one) and carries a fresh DPoP proof. When an order's first answer was lost and the retry meets the
backend's ``409 duplicate_order``, the order is looked up by its ``client_order_id`` and returned.

The gateway's answers, errors included, come back as :class:`Response`; exceptions are for no answer
(:class:`TransportError`), a step-up that could not be completed (``StepUpError``) and a session key the
gateway would not agree (``KeyAgreementError``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from gateway.client.device import DeviceKey
from gateway.client.stepup import (
    NAME_SESSION_KEY,
    NAME_TOTP,
    HttpRequest,
    HttpResponse,
    StepUpClient,
    StepUpError,
    StepUpRequired,
    TotpAuthenticator,
    encode_json,
)

__all__ = ["RETRYABLE_CODES", "Challenge", "PortcullisClient", "Response", "RetryPolicy", "StepUpHandler",
           "TransportError"]

T = TypeVar("T")

RETRYABLE_CODES = frozenset({
    "upstream_unreachable", "upstream_timeout", "shutting_down", "state_unavailable", "audit_unavailable",
    "policy_unavailable", "risk_unavailable", "provider_unavailable",
})
"""The gateway's 502/503/504 codes worth another attempt. Not ``upstream_bad_response``,
``response_unmaskable`` or ``response_unencryptable``: the upstream did answer; nor ``obligation_failed``."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NAME_REQUEST = "request"
_AUX_LEGS = frozenset({NAME_SESSION_KEY, NAME_TOTP})
"""Legs that are not the caller's request: a failure there never sent the request itself."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    """Attempts in all (1: never retry)."""
    backoff: float = 0.2
    """The first wait's upper bound in seconds, doubled after each attempt (full jitter: uniform below it)."""
    max_backoff: float = 3.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy: attempts >= 1, backoff and max_backoff >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        cap = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return secrets.SystemRandom().uniform(0, cap) if cap > 0 else 0.0


class TransportError(Exception):
    """No answer from the gateway: ``code`` is ``connect_failed``, ``connect_timeout``, ``tls_failed``,
    ``connection_lost`` or ``timeout``.

    ``may_have_reached`` is True when the request itself may have arrived (it was sent, or partly): for
    a request without an idempotency key (``retried`` False) check its effect before sending it again.
    """

    def __init__(self, code: str, method: str, path: str, *, attempts: int, may_have_reached: bool,
                 idempotent: bool, cause: BaseException) -> None:
        self.code = code
        self.method = method
        self.path = path
        self.attempts = attempts
        self.may_have_reached = may_have_reached
        self.idempotent = idempotent
        detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        if may_have_reached and not idempotent:
            why = ("not retried: it carries no idempotency key and may have reached the server; "
                   "check its effect before sending it again")
        else:
            why = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
        super().__init__(f"{method} {path}: {code} ({detail}); {why}")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    data: Any
    """The body as JSON (decrypted when the request was sealed); None when empty or not JSON."""
    raw: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 1
    challenge: StepUpRequired | None = None
    """The step-up the gateway asked for, when it asked (answered, unless the status is still 401)."""
    recovered: bool = False
    """An order whose first answer was lost: a retry met ``duplicate_order`` and ``data`` is the order
    as the backend lists it under its ``client_order_id`` (status 201, as the lost answer was)."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str | None:
        """The gateway's (or backend's) error code, when the body is the error shape."""
        code = self.data.get("error") if isinstance(self.data, dict) else None
        return code if isinstance(code, str) else None


class Challenge:
    """A step-up challenge handed to ``on_step_up``, with the calls that answer it.

    Each ``answer`` returns the step-up token once the level is reached, or None while the level needs
    another method too (202 ``more_needed``); a refusal raises ``StepUpError`` with the gateway's code.
    """

    def __init__(self, client: PortcullisClient, required: StepUpRequired) -> None:
        self._client = client
        self.required = required

    @property
    def methods(self) -> tuple[str, ...]:
        return self.required.methods

    async def answer(self, method: str, body: Any = None) -> str | None:
        """``POST /auth/mfa/challenges/{id}/{method}`` (``totp``, ``sms/verify``, ``face``) with ``body``."""
        status, doc = await self._post(method, body)
        if status == 200 and isinstance(doc.get("step_up_token"), str):
            return str(doc["step_up_token"])
        if status == 202:
            return None
        raise StepUpError(str(doc.get("error") or "unexpected_status"), status, doc)

    async def _post(self, method: str, body: Any) -> tuple[int, dict[str, Any]]:
        path = f"/auth/mfa/challenges/{quote(self.required.challenge_id, safe='')}/{method}"
        resp = await self._client._call(self._client.sdk.exchange("POST", path, encode_json(body),
                                                                    name=NAME_TOTP, expect=(200, 202)))
        doc = _json(resp.body)
        return resp.status, doc if isinstance(doc, dict) else {}

    async def totp(self, code: str) -> str | None:
        return await self.answer("totp", {"code": code})

    async def send_sms(self) -> None:
        """A code to the customer's phone on file (then :meth:`sms` with what the customer types)."""
        status, doc = await self._post("sms/send", None)
        if status != 200:
            raise StepUpError(str(doc.get("error") or "unexpected_status"), status, doc)

    async def sms(self, code: str) -> str | None:
        return await self.answer("sms/verify", {"code": code})


StepUpHandler = Callable[[Challenge], Awaitable[str | None]]
"""The app's step-up: given the challenge, answer it (usually asking the customer) and return the
step-up token, or None to give up (the request's 401 then comes back as the response)."""


class _Failed(Exception):
    """One attempt got no answer (internal: the retry loop decides what it means)."""

    def __init__(self, code: str, cause: BaseException, *, reached: bool, retryable: bool = True) -> None:
        super().__init__(code)
        self.code = code
        self.cause = cause
        self.reached = reached
        self.retryable = retryable


class PortcullisClient:
    """One customer's session over aiohttp (an async context manager owning its ``ClientSession``).

    ``device`` signs a DPoP proof per request (the token must be bound to it); ``totp`` answers step-ups
    itself, ``on_step_up`` hands them to the app (it wins when both are given); ``encrypt=True`` agrees a
    session key on first use (``pinned``: the gateway's SM2 agreement public key) and seals every body.
    Pass ``session`` to borrow a ``ClientSession`` (not closed here; aiohttp's own resend on a dropped
    connection is turned off on it too). ``timeout``: seconds per request.
    """

    def __init__(self, base_url: str, access_token: str, *, device: DeviceKey | None = None,
                 totp: TotpAuthenticator | None = None, on_step_up: StepUpHandler | None = None,
                 encrypt: bool = False, pinned: bytes | None = None, retry: RetryPolicy | None = None,
                 timeout: float = 10.0, session: aiohttp.ClientSession | None = None) -> None:
        if encrypt and device is None:
            raise ValueError("encrypt=True needs a device key: session keys are bound to it")
        self.sdk = StepUpClient(base_url, access_token, totp, device=device, pinned=pinned)
        self.encrypt = encrypt
        self.on_step_up = on_step_up
        self.retry = retry or RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owned = session is None

    async def __aenter__(self) -> PortcullisClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        # aiohttp resends a GET, PUT or DELETE once by itself when the connection drops (3.14, not
        # configurable): same headers, so the same DPoP proof and envelope, and a DELETE resent without
        # our rule. Off, as aiohttp's own test client does; the retries here make fresh ones.
        self._session._retry_connection = False
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests -----------------------------------------------------------------------------

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post(self, path: str, json: Any = None, *, idempotent: bool = False) -> Response:
        """POST ``json``; ``idempotent=True`` only when the body carries a key the backend deduplicates on."""
        return await self.request("POST", path, json, idempotent=idempotent)

    async def put(self, path: str, json: Any = None, *, idempotent: bool = False) -> Response:
        return await self.request("PUT", path, json, idempotent=idempotent)

    async def delete(self, path: str, *, idempotent: bool = False) -> Response:
        return await self.request("DELETE", path, idempotent=idempotent)

    async def place_order(self, account: str, order: Mapping[str, Any]) -> Response:
        """Place ``order`` on ``account``, retried safely under its ``client_order_id`` (drawn if absent).

        ``data`` is the order (with its ``order_id``) on 201; the same ``client_order_id`` is in the body
        of every attempt, so the backend sees repeats as duplicates, never as a second order.
        """
        body = dict(order)
        if not body.get("client_order_id"):
            body["client_order_id"] = f"sdk-{secrets.token_hex(12)}"
        path = f"/api/accounts/{quote(account, safe='')}/orders"
        resp = await self.request("POST", path, body, idempotent=True)
        if resp.status == 409 and resp.error == "duplicate_order" and resp.attempts > 1:
            found = await self._find_order(path, str(body["client_order_id"]))
            if found is not None:
                return Response(201, found, json.dumps(found).encode(), resp.headers, resp.attempts,
                                resp.challenge, recovered=True)
        return resp

    async def request(self, method: str, path: str, json: Any = None, *, idempotent: bool | None = None,
                      expect: tuple[int, ...] = (200, 201)) -> Response:
        """One request, its step-up if asked and its retries (the module's rule); ``path`` with its query.

        ``idempotent``: default True for GET, HEAD and OPTIONS, else False.
        """
        method = method.upper()
        retry_ok = method in SAFE_METHODS if idempotent is None else idempotent
        body = encode_json(json)
        attempt = 0
        while True:
            attempt += 1
            try:
                final, challenge = await self._attempt(method, path, body, expect)
            except _Failed as failed:
                if not failed.retryable or attempt >= self.retry.attempts or (failed.reached and not retry_ok):
                    raise TransportError(failed.code, method, path, attempts=attempt, may_have_reached=failed.reached,
                                         idempotent=retry_ok, cause=failed.cause) from failed.cause
            else:
                if not (retry_ok and attempt < self.retry.attempts and _retryable_answer(final)):
                    return Response(final.status, _json(final.body), final.body, final.headers, attempt, challenge)
            await asyncio.sleep(self.retry.delay(attempt))

    # -- one attempt --------------------------------------------------------------------------

    async def _attempt(self, method: str, path: str, body: bytes | None, expect: tuple[int, ...],
                       ) -> tuple[HttpResponse, StepUpRequired | None]:
        sdk = self.sdk
        if self.encrypt and sdk.envelope is None:
            await self._call(sdk.agree_session())
        first = await self._call(sdk.exchange(method, path, body, name=NAME_REQUEST, expect=(*expect, 401)))
        challenge = StepUpRequired.parse(first.status, first.body)
        if challenge is None:
            return first, None
        token = await self._step_up(challenge)
        if token is None:
            return first, challenge
        final = await self._call(sdk.exchange(method, path, body, name=NAME_REQUEST, expect=expect, step_up=token))
        return final, challenge

    async def _step_up(self, challenge: StepUpRequired) -> str | None:
        if self.on_step_up is not None:
            return await self.on_step_up(Challenge(self, challenge))
        if self.sdk.totp is not None:
            token, _ = await self._call(self.sdk.answer_totp(challenge))
            return token
        return None  # nobody to ask: the 401 with its challenge is the answer

    async def _find_order(self, orders_path: str, client_order_id: str) -> dict[str, Any] | None:
        listed = await self.get(orders_path)
        orders = listed.data.get("orders") if listed.status == 200 and isinstance(listed.data, dict) else None
        for o in orders if isinstance(orders, list) else ():
            if isinstance(o, dict) and o.get("client_order_id") == client_order_id:
                return o
        return None

    async def _call(self, flow: Generator[HttpRequest, HttpResponse, T]) -> T:
        """Run a sans-I/O flow; a leg without an answer ends it with :class:`_Failed`."""
        try:
            req = next(flow)
            while True:
                req = flow.send(await self._send(req))
        except StopIteration as done:
            result: T = done.value
            return result
        finally:
            flow.close()

    async def _send(self, req: HttpRequest) -> HttpResponse:
        if self._session is None:
            raise RuntimeError("use PortcullisClient in `async with` (or pass session=)")
        reached = req.name not in _AUX_LEGS  # an agreement or a code may be lost: the request was not sent
        try:
            async with self._session.request(req.method, req.url, headers=req.headers, data=req.body,
                                             timeout=self._timeout) as r:
                return HttpResponse(r.status, await r.read(), dict(r.headers))
        except aiohttp.ClientSSLError as exc:  # a certificate will not fix itself on a retry
            raise _Failed("tls_failed", exc, reached=False, retryable=False) from exc
        except aiohttp.ConnectionTimeoutError as exc:  # before a connection: nothing was sent
            raise _Failed("connect_timeout", exc, reached=False) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _Failed("connect_failed", exc, reached=False) from exc
        except TimeoutError as exc:
            raise _Failed("timeout", exc, reached=reached) from exc
        except aiohttp.ClientError as exc:  # reset, disconnected, a broken payload
            raise _Failed("connection_lost", exc, reached=reached) from exc


def _retryable_answer(resp: HttpResponse) -> bool:
    if resp.status not in (502, 503, 504):
        return False
    doc = _json(resp.body)
    return isinstance(doc, dict) and doc.get("error") in RETRYABLE_CODES


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
