"""Opening request bodies the gateway sealed for this backend (docs/CRYPTO.md "Upstream envelopes").

Written against the wire format alone, with ``cryptography``'s SM4-GCM: this
backend never imports the gateway. A sealed request carries
``Content-Type: application/sm4-gcm+json``,
``Portcullis-Upstream-Envelope: kid=<key id>; iv=<12 bytes base64url>; type=<media type>``
and the body ``ciphertext || tag``; the associated data is the lines
``portcullis-upstream-envelope-v1``, the method, the path?query as received, the
request id (the identity assertion's ``rid``), the key id and the media type.

Failures are 400s with stable codes: ``upstream_envelope_malformed`` (the header),
``upstream_envelope_key_unknown`` (a key id this backend does not hold),
``upstream_envelope_invalid`` (tag or associated data: altered, or moved to another
route or request); a plaintext body where sealing is required is 415
``upstream_envelope_required``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import DemoError

CONTENT_TYPE = "application/sm4-gcm+json"
HEADER = "Portcullis-Upstream-Envelope"
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]{16}")  # 12 bytes, unpadded
_MEDIA = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,60}/[A-Za-z0-9!#$&^_.+-]{1,60}")
_TAG = 16


def load_keys(path: Path) -> dict[str, bytes]:
    """The SM4 keys by id of a SecretBox-format key file (``{"current", "keys": {kid: base64}}``, mode 0600)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read payload key file {str(path)!r}: {exc.strerror}") from None
    if os.name == "posix" and mode & 0o077:
        raise ValueError(f"payload key file {str(path)!r} is readable by group or others: chmod 600 it")
    try:
        keys = {kid: base64.b64decode(v, validate=True) for kid, v in json.loads(raw)["keys"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise ValueError(f"payload key file {str(path)!r} is not a key file") from None
    if not keys or any(not _KID.fullmatch(k) or len(v) != 16 for k, v in keys.items()):
        raise ValueError(f"payload key file {str(path)!r}: keys are 16 bytes under ids of A-Z a-z 0-9 . _ -")
    return keys


def _malformed() -> DemoError:
    return DemoError(400, "upstream_envelope_malformed", f"the {HEADER} header is missing or malformed")


def open_body(keys: dict[str, bytes], header: str | None, method: str, target: str, request_id: str,
              sealed: bytes) -> tuple[str, bytes]:
    """The plaintext's media type and bytes; DemoError (400) when it cannot be opened."""
    pairs = [p.strip().partition("=")[::2] for p in (header or "").split(";")]
    fields = dict(pairs)
    if len(pairs) != 3 or set(fields) != {"kid", "iv", "type"} or not _B64URL.fullmatch(fields["iv"]) \
            or not _MEDIA.fullmatch(fields["type"]) or not _KID.fullmatch(fields["kid"]):
        raise _malformed()
    key = keys.get(fields["kid"])
    if key is None:
        raise DemoError(400, "upstream_envelope_key_unknown", "the body is sealed under a key this backend lacks")
    if len(sealed) < _TAG:
        raise DemoError(400, "upstream_envelope_invalid", "the sealed body is truncated")
    aad = "\n".join(("portcullis-upstream-envelope-v1", method.upper(), target, request_id, fields["kid"],
                     fields["type"])).encode()
    iv = base64.urlsafe_b64decode(fields["iv"] + "==")
    dec = Cipher(algorithms.SM4(key), modes.GCM(iv, sealed[-_TAG:])).decryptor()
    dec.authenticate_additional_data(aad)
    try:
        return fields["type"], dec.update(sealed[:-_TAG]) + dec.finalize()
    except InvalidTag:
        raise DemoError(400, "upstream_envelope_invalid",
                        "the sealed body was altered or belongs to another route or request") from None
