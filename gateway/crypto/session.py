"""Session keys and SM4-GCM envelopes between a client and the gateway (pure; docs/CRYPTO.md).

Key agreement (``/auth/session-key``): the client draws 32 random bytes, encrypts
them to the gateway's SM2 agreement key (SM2 public-key encryption, GM/T
0003.4), and sends the ciphertext with its access token and a DPoP proof of its
device key. The gateway decrypts, draws 32 random bytes of its own, and both
sides derive three 16-byte keys with the SM3 KDF (GM/T 0003.3)::

    c2s || s2c || confirm = KDF(client_random || server_random || SM3(transcript), 48)

The transcript binds what the keys belong to: the customer (``sub``), the device
key's thumbprint, the session key id, the agreement key id and the client's
nonce (:func:`transcript`). The gateway answers with
``HMAC-SM3(confirm, transcript)``, which only a holder of the agreement key's
private half can compute: a client that pinned the gateway's agreement public
key knows it is talking to the gateway, and the gateway knows, through the
token and the DPoP proof, which customer and device hold the keys.

Envelopes: a request body is ``SM4-GCM(c2s, iv, plaintext, aad)`` (ciphertext
then the 16-byte tag), sent with ``Content-Type: application/sm4-gcm+json``
(the plaintext is JSON) and the header ::

    Portcullis-Envelope: kid=<session key id>; iv=<12 bytes, base64url>; mid=<message id>; ts=<unix seconds>

The associated data binds the method, the request target (path and query), the
key id, the message id and the timestamp (:func:`request_aad`), so a body cannot
be moved to another route, replayed under another message id or aged. A
response is sealed under ``s2c`` with a fresh IV, its associated data binding
the status, the inner content type, the key id and the request's message id
(:func:`response_aad`), so it cannot be swapped with another response.

A request without a body (a GET of a profile, a DELETE) is sealed the same way
with an empty plaintext: its 16-byte tag (a GMAC over the same associated data)
travels in the header instead of a body, ``...; ts=<unix seconds>; tag=<16
bytes, base64url>``, and no ``Content-Type`` is sent (:func:`seal_bodiless`).
The gateway checks it like any envelope (replay, age, key) and seals the
response, so a read of personal data comes back encrypted too.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from gateway.crypto import sm3
from gateway.crypto.b64 import b64url_decode, b64url_encode
from gateway.crypto.sm4_gcm import IV_SIZE, TAG_SIZE, InvalidTag, decrypt, encrypt

__all__ = [
    "CLIENT_RANDOM_SIZE", "ENVELOPE_HEADER", "ENVELOPE_TYPE", "EnvelopeError", "EnvelopeHeader", "InvalidTag",
    "SessionKeys", "b64d", "b64e", "confirm_tag", "derive", "open_request", "open_response", "request_aad",
    "open_bodiless", "response_aad", "seal_bodiless", "seal_request", "seal_response", "transcript",
]

ENVELOPE_TYPE = "application/sm4-gcm+json"
ENVELOPE_HEADER = "Portcullis-Envelope"
CLIENT_RANDOM_SIZE = 32
SERVER_RANDOM_SIZE = 32
KEY_ID_BYTES = 16
_VERSION = b"portcullis-envelope-v1"
_MID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MEDIA = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,60}/[A-Za-z0-9!#$&^_.+-]{1,60}")
MAX_HEADER = 512


class EnvelopeError(ValueError):
    """A malformed envelope header or key-agreement field (the message names the part, never a key)."""


b64e = b64url_encode


def b64d(text: str, size: int | None = None, what: str = "value") -> bytes:
    """Strict unpadded base64url; ``size``: the exact number of bytes it must decode to."""
    try:
        raw = b64url_decode(text)
    except ValueError:
        raise EnvelopeError(f"{what} is not base64url") from None
    if size is not None and len(raw) != size:
        raise EnvelopeError(f"{what} must be {size} bytes (got {len(raw)})")
    return raw


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The three keys of one session key id. Never printed: ``repr`` shows no key."""

    c2s: bytes
    s2c: bytes
    confirm: bytes

    def __repr__(self) -> str:
        return "SessionKeys(<hidden>)"


def transcript(*, sub: str, jkt: str, key_id: str, agreement_kid: str, client_nonce: bytes) -> bytes:
    """What the session keys are bound to, unambiguously encoded (length-prefixed fields)."""
    out = bytearray(_VERSION + b"\x00session-key")
    for part in (sub.encode(), jkt.encode(), key_id.encode(), agreement_kid.encode(), client_nonce):
        out += len(part).to_bytes(2, "big") + part
    return bytes(out)


def derive(client_random: bytes, server_random: bytes, bound_to: bytes) -> SessionKeys:
    if len(client_random) != CLIENT_RANDOM_SIZE or len(server_random) != SERVER_RANDOM_SIZE:
        raise EnvelopeError("the key material has the wrong length")
    material = sm3.kdf(client_random + server_random + sm3.digest(bound_to), 48)
    return SessionKeys(material[:16], material[16:32], material[32:])


def confirm_tag(keys: SessionKeys, bound_to: bytes) -> bytes:
    return sm3.hmac_sm3(keys.confirm, bound_to)


def new_key_id() -> str:
    return b64e(secrets.token_bytes(KEY_ID_BYTES))


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    kid: str
    iv: bytes
    mid: str
    ts: int
    type: str | None = None
    """Responses: the media type of the plaintext."""
    tag: bytes | None = None
    """Requests without a body: the tag of the sealed empty plaintext (:func:`seal_bodiless`)."""

    def render(self) -> str:
        parts = [f"kid={self.kid}", f"iv={b64e(self.iv)}", f"mid={self.mid}"]
        if self.type is not None:
            parts.append(f"type={self.type}")
        else:
            parts.append(f"ts={self.ts}")
        if self.tag is not None:
            parts.append(f"tag={b64e(self.tag)}")
        return "; ".join(parts)

    @classmethod
    def parse(cls, value: str | None, *, response: bool = False) -> EnvelopeHeader:
        if not value:
            raise EnvelopeError(f"the {ENVELOPE_HEADER} header is missing")
        if len(value) > MAX_HEADER:
            raise EnvelopeError(f"the {ENVELOPE_HEADER} header is too long")
        fields: dict[str, str] = {}
        for part in value.split(";"):
            name, sep, val = part.strip().partition("=")
            if not sep or not name or name in fields:
                raise EnvelopeError(f"the {ENVELOPE_HEADER} header is malformed")
            fields[name.lower()] = val.strip()
        wanted = {"kid", "iv", "mid", "type"} if response else {"kid", "iv", "mid", "ts"}
        if not response and "tag" in fields:
            wanted.add("tag")
        if set(fields) != wanted:
            raise EnvelopeError(f"the {ENVELOPE_HEADER} header needs exactly {', '.join(sorted(wanted))}"
                                + ("" if response else " (and tag, on a request without a body)"))
        if _KID.fullmatch(fields["kid"]) is None:
            raise EnvelopeError("kid is malformed")
        if _MID.fullmatch(fields["mid"]) is None:
            raise EnvelopeError("mid must be 1-64 characters of A-Z a-z 0-9 _ -")
        iv = b64d(fields["iv"], IV_SIZE, "iv")
        if response:
            if _MEDIA.fullmatch(fields["type"]) is None:
                raise EnvelopeError("type must be a media type")
            return cls(fields["kid"], iv, fields["mid"], 0, fields["type"])
        ts = fields["ts"]
        if not ts.isdigit() or len(ts) > 12:
            raise EnvelopeError("ts must be whole seconds since the epoch")
        tag = b64d(fields["tag"], TAG_SIZE, "tag") if "tag" in fields else None
        return cls(fields["kid"], iv, fields["mid"], int(ts), tag=tag)


def _lines(*parts: bytes) -> bytes:
    return b"\n".join((_VERSION, *parts))


def request_aad(method: str, target: str, h: EnvelopeHeader) -> bytes:
    return _lines(b"request", method.upper().encode(), target.encode(), h.kid.encode(), h.mid.encode(),
                  str(h.ts).encode())


def response_aad(status: int, h: EnvelopeHeader) -> bytes:
    return _lines(b"response", str(status).encode(), (h.type or "").encode(), h.kid.encode(), h.mid.encode())


def seal_request(keys: SessionKeys, kid: str, method: str, target: str, body: bytes, *,
                 mid: str | None = None, ts: int) -> tuple[EnvelopeHeader, bytes]:
    h = EnvelopeHeader(kid, secrets.token_bytes(IV_SIZE), mid or b64e(secrets.token_bytes(12)), ts)
    return h, encrypt(keys.c2s, h.iv, body, request_aad(method, target, h))


def open_request(keys: SessionKeys, method: str, target: str, h: EnvelopeHeader, sealed: bytes) -> bytes:
    """The plaintext; :class:`InvalidTag` when the body, the key or anything bound was altered."""
    if len(sealed) < TAG_SIZE:
        raise InvalidTag()
    return decrypt(keys.c2s, h.iv, sealed, request_aad(method, target, h))


def seal_bodiless(keys: SessionKeys, kid: str, method: str, target: str, *, mid: str | None = None,
                  ts: int) -> EnvelopeHeader:
    """The header of a request without a body: the tag of an empty plaintext, carried in the header."""
    h, tag = seal_request(keys, kid, method, target, b"", mid=mid, ts=ts)
    return EnvelopeHeader(h.kid, h.iv, h.mid, h.ts, tag=tag)


def open_bodiless(keys: SessionKeys, method: str, target: str, h: EnvelopeHeader) -> None:
    """Check the header's tag; :class:`InvalidTag` when it is missing, or the key or anything bound differs."""
    if h.tag is None:
        raise InvalidTag()
    decrypt(keys.c2s, h.iv, h.tag, request_aad(method, target, h))


def seal_response(keys: SessionKeys, request: EnvelopeHeader, status: int, media_type: str,
                  body: bytes) -> tuple[EnvelopeHeader, bytes]:
    h = EnvelopeHeader(request.kid, secrets.token_bytes(IV_SIZE), request.mid, 0, media_type)
    return h, encrypt(keys.s2c, h.iv, body, response_aad(status, h))


def open_response(keys: SessionKeys, status: int, h: EnvelopeHeader, sealed: bytes) -> bytes:
    return decrypt(keys.s2c, h.iv, sealed, response_aad(status, h))
