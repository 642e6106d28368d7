"""Request bodies re-encrypted for the upstream (pure; docs/CRYPTO.md "Upstream envelopes").

A route with ``upstream_encryption = "sm4-gcm"`` forwards its body (whatever the
client sent: plaintext, or a client envelope the decrypt step already opened)
sealed with SM4-GCM under the *current* key of its upstream's payload key file,
a SecretBox-format key file (``{"current": kid, "keys": {kid: base64}}``, mode
0600) that the gateway and that backend alone hold. On the wire::

    Content-Type: application/sm4-gcm+json
    Portcullis-Upstream-Envelope: kid=<key id>; iv=<12 bytes, base64url>; type=<plaintext media type>

and the body is ``ciphertext || tag`` (16 bytes), raw. The associated data is
the lines (joined with ``\\n``, none of which can hold a newline)::

    portcullis-upstream-envelope-v1
    METHOD
    path?query          (the request target as the upstream receives it)
    request id          (the identity assertion's ``rid``)
    kid
    type

so the backend refuses a body moved to another route, another request (another
identity assertion) or relabelled as another media type. A request without a
body is forwarded as it is. The format depends on nothing of the gateway: the
demo backend opens it in a few lines of ``cryptography`` (demo_backend/sealed.py).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.crypto import sm4_gcm
from gateway.crypto.b64 import b64url_decode, b64url_encode
from gateway.crypto.keyfile import KeyFileError, read_private
from gateway.crypto.secretbox import SecretBoxError, parse_key_file

__all__ = [
    "UPSTREAM_ENVELOPE_HEADER", "UPSTREAM_ENVELOPE_TYPE", "PayloadKeys", "UpstreamEnvelope",
    "UpstreamEnvelopeError", "aad", "media_type", "open_body", "seal_body",
]

UPSTREAM_ENVELOPE_TYPE = "application/sm4-gcm+json"
UPSTREAM_ENVELOPE_HEADER = "Portcullis-Upstream-Envelope"
_VERSION = b"portcullis-upstream-envelope-v1"
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MEDIA = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,60}/[A-Za-z0-9!#$&^_.+-]{1,60}")
_FALLBACK_TYPE = "application/octet-stream"
MAX_HEADER = 256


class UpstreamEnvelopeError(ValueError):
    """A payload key file that cannot be used, or a malformed envelope header (never names a key)."""


class PayloadKeys:
    """An upstream's SM4 payload keys by id; seals under ``current``. Never printed."""

    __slots__ = ("_keys", "current")

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise UpstreamEnvelopeError(f"the current key id {current!r} is not one of the keys")
        for kid, key in keys.items():
            if not _KID.fullmatch(kid) or len(key) != sm4_gcm.KEY_SIZE:
                raise UpstreamEnvelopeError(f"key {kid!r} needs an id of A-Z a-z 0-9 . _ - and 16 bytes")
        self._keys = dict(keys)
        self.current = current

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PayloadKeys:
        """The keys of a SecretBox-format key file (mode 0600); UpstreamEnvelopeError naming the problem."""
        where = str(path)
        try:
            raw = read_private(Path(path), "payload key file")
        except KeyFileError as exc:
            raise UpstreamEnvelopeError(str(exc)) from None
        if raw is None:
            raise UpstreamEnvelopeError(f"payload key file {where!r} does not exist")
        try:
            keys, current = parse_key_file(raw, where)
        except SecretBoxError as exc:
            raise UpstreamEnvelopeError(f"payload {exc}") from None
        return cls(keys, current)

    def key(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return f"PayloadKeys(current={self.current!r}, key_ids={sorted(self._keys)!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("payload keys cannot be pickled")


@dataclass(frozen=True, slots=True)
class UpstreamEnvelope:
    kid: str
    iv: bytes
    type: str

    def render(self) -> str:
        return f"kid={self.kid}; iv={b64url_encode(self.iv)}; type={self.type}"

    @classmethod
    def parse(cls, value: str | None) -> UpstreamEnvelope:
        if not value or len(value) > MAX_HEADER:
            raise UpstreamEnvelopeError(f"the {UPSTREAM_ENVELOPE_HEADER} header is missing or too long")
        fields: dict[str, str] = {}
        for part in value.split(";"):
            name, sep, val = part.strip().partition("=")
            if not sep or name.lower() in fields:
                raise UpstreamEnvelopeError(f"the {UPSTREAM_ENVELOPE_HEADER} header is malformed")
            fields[name.lower()] = val.strip()
        if set(fields) != {"kid", "iv", "type"}:
            raise UpstreamEnvelopeError(f"the {UPSTREAM_ENVELOPE_HEADER} header needs exactly iv, kid, type")
        try:
            iv = b64url_decode(fields["iv"])
        except ValueError:
            iv = b""
        if len(iv) != sm4_gcm.IV_SIZE or not _KID.fullmatch(fields["kid"]) or not _MEDIA.fullmatch(fields["type"]):
            raise UpstreamEnvelopeError(f"the {UPSTREAM_ENVELOPE_HEADER} header is malformed")
        return cls(fields["kid"], iv, fields["type"])


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header (parameters dropped), lower case; octet-stream if none."""
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    return bare if _MEDIA.fullmatch(bare) else _FALLBACK_TYPE


def aad(method: str, target: str, request_id: str, kid: str, media: str) -> bytes:
    return b"\n".join((_VERSION, method.upper().encode(), target.encode(), request_id.encode(),
                       kid.encode(), media.encode()))


def seal_body(keys: PayloadKeys, method: str, target: str, request_id: str, content_type: str | None,
              body: bytes) -> tuple[UpstreamEnvelope, bytes]:
    """One SM4-GCM seal under the current key with a fresh IV: the header and ``ciphertext || tag``."""
    h = UpstreamEnvelope(keys.current, secrets.token_bytes(sm4_gcm.IV_SIZE), media_type(content_type))
    key = keys.key(h.kid)
    assert key is not None
    return h, sm4_gcm.encrypt(key, h.iv, body, aad(method, target, request_id, h.kid, h.type))


def open_body(keys: PayloadKeys, method: str, target: str, request_id: str, h: UpstreamEnvelope,
              sealed: bytes) -> bytes:
    """The plaintext; UpstreamEnvelopeError for an unknown key id, InvalidTag for anything altered."""
    key = keys.key(h.kid)
    if key is None:
        raise UpstreamEnvelopeError(f"no payload key {h.kid!r}")
    return sm4_gcm.decrypt(key, h.iv, sealed, aad(method, target, request_id, h.kid, h.type))
