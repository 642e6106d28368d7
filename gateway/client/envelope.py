"""The client's side of session keys and SM4-GCM envelopes (docs/CRYPTO.md "Session keys and envelopes").

:func:`agree` is a sans-I/O flow (like :class:`~gateway.client.stepup.StepUpClient`'s):
it yields the ``GET`` and ``POST /auth/session-key`` requests and returns an
:class:`EnvelopeSession`, after checking the gateway's key confirmation. Pin the
gateway's agreement public key (``pinned``: the bytes the operator published)
and a gateway without the private half cannot pass the confirmation; without a
pin the offered key is trusted on first use (the TLS connection authenticates
the gateway then).

:meth:`EnvelopeSession.seal` encrypts one request body and gives the headers to
send; :meth:`EnvelopeSession.open` decrypts the response. Each message gets a
fresh random IV and message id, and a session counts its messages: past
``max_messages`` or ``expires_at`` it reports :attr:`EnvelopeSession.spent` and
the caller agrees a new one.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.crypto.session import (
    CLIENT_RANDOM_SIZE,
    ENVELOPE_HEADER,
    ENVELOPE_TYPE,
    EnvelopeError,
    EnvelopeHeader,
    SessionKeys,
    b64d,
    b64e,
    confirm_tag,
    derive,
    open_response,
    seal_bodiless,
    seal_request,
    transcript,
)
from gateway.crypto.sm2 import Sm2PublicKey
from gateway.crypto.sm3 import equal

__all__ = ["ENVELOPE_HEADER", "ENVELOPE_TYPE", "EnvelopeSession", "KeyAgreementError", "agree"]

PATH = "/auth/session-key"


class KeyAgreementError(Exception):
    """The gateway refused the agreement, or its answer does not prove it holds the agreement key."""

    def __init__(self, code: str, status: int, message: str = "") -> None:
        super().__init__(f"{code} ({status}){': ' + message if message else ''}")
        self.code = code
        self.status = status


@dataclass(slots=True)
class EnvelopeSession:
    key_id: str
    keys: SessionKeys
    expires_at: float
    max_messages: int
    sent: int = 0
    margin: float = 30.0
    """Seconds before ``expires_at`` the session counts as spent (a request in flight must not outlive it)."""
    _clock: Any = field(default=time.time, repr=False)

    @property
    def spent(self) -> bool:
        return self.sent >= self.max_messages or self._clock() >= self.expires_at - self.margin

    def seal(self, method: str, target: str,
             body: bytes | None) -> tuple[dict[str, str], bytes | None, EnvelopeHeader]:
        """The headers and sealed body of one request to ``target`` (path and query, as sent).

        ``body`` None: a request without a body (a GET), sealed in the header alone; its answer comes
        back sealed all the same."""
        ts = int(self._clock())
        self.sent += 1
        if body is None:
            h = seal_bodiless(self.keys, self.key_id, method, target, ts=ts)
            return {ENVELOPE_HEADER: h.render()}, None, h
        h, sealed = seal_request(self.keys, self.key_id, method, target, body, ts=ts)
        return {"Content-Type": ENVELOPE_TYPE, ENVELOPE_HEADER: h.render()}, sealed, h

    def open(self, status: int, headers: Mapping[str, str], body: bytes, request: EnvelopeHeader) -> bytes:
        """The plaintext of an encrypted response; an error response of the gateway comes back as sent."""
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if ctype.split(";", 1)[0].strip().lower() != ENVELOPE_TYPE:
            return body  # the gateway's own errors (and nothing else) are not encrypted
        value = next((v for k, v in headers.items() if k.lower() == ENVELOPE_HEADER.lower()), None)
        h = EnvelopeHeader.parse(value, response=True)
        if h.kid != self.key_id or h.mid != request.mid:
            raise EnvelopeError("the response was sealed for another request")
        return open_response(self.keys, status, h, body)


def agree(base_url: str, headers_for: Any, *, sub: str, jkt: str, pinned: bytes | None = None,
          clock: Any = time.time) -> Generator[tuple[str, str, dict[str, str], bytes | None],
                                               tuple[int, bytes], EnvelopeSession]:
    """Agree a session key. Yields ``(method, url, headers, body)``; is sent ``(status, body)``.

    ``headers_for(method, url)`` gives the authentication headers of one request (the access
    token and a fresh DPoP proof of the device key the session is bound to); ``sub`` is the
    customer the token names and ``jkt`` the device key's thumbprint (the keys are bound to both).
    """
    url = base_url.rstrip("/") + PATH
    status, raw = yield "GET", url, headers_for("GET", url), None
    offer = _answer(status, raw, 200)
    public = b64d(str(offer.get("public_key", "")), None, "public_key")
    if pinned is not None and not equal(public, Sm2PublicKey.from_bytes(pinned).to_bytes()):
        raise KeyAgreementError("agreement_key_not_pinned", status, "the gateway offered another agreement key")
    akid = str(offer["agreement_kid"])
    client_random = secrets.token_bytes(CLIENT_RANDOM_SIZE)
    nonce = secrets.token_bytes(16)
    body = json.dumps({"agreement_kid": akid, "client_nonce": b64e(nonce),
                       "key_material": b64e(Sm2PublicKey.from_bytes(public).encrypt(client_random))}).encode()
    h = {**headers_for("POST", url), "Content-Type": "application/json"}
    status, raw = yield "POST", url, h, body
    doc = _answer(status, raw, 200)
    kid = str(doc["key_id"])
    bound = transcript(sub=sub, jkt=jkt, key_id=kid, agreement_kid=akid, client_nonce=nonce)
    keys = derive(client_random, b64d(str(doc["server_random"]), 32, "server_random"), bound)
    if not equal(confirm_tag(keys, bound), b64d(str(doc.get("confirm", "")), 32, "confirm")):
        raise KeyAgreementError("confirmation_failed", status, "the gateway did not prove the agreement key")
    expires = float(doc["expires_at"])
    # Stop using the key a little before it expires (a request in flight must not outlive it): 30 s,
    # or a tenth of a short lifetime.
    margin = min(30.0, max(0.0, (expires - clock()) / 10))
    return EnvelopeSession(kid, keys, expires, int(doc["max_messages"]), margin=margin, _clock=clock)


def _answer(status: int, raw: bytes, expect: int) -> dict[str, Any]:
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {}
    if status != expect or not isinstance(doc, dict):
        code = doc.get("error", "unexpected_status") if isinstance(doc, dict) else "unexpected_status"
        raise KeyAgreementError(str(code), status, str(doc.get("message", "")) if isinstance(doc, dict) else "")
    return doc

