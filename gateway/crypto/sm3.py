"""SM3 (GB/T 32905) digests, HMAC-SM3 and the SM3 key derivation function of GM/T 0003, via ``cryptography``.

* :func:`digest`: the 32-byte SM3 hash.
* :func:`hmac_sm3`: HMAC (RFC 2104) with SM3, e.g. for blind indexes and key confirmation.
* :func:`kdf`: the KDF of GM/T 0003.3 / GB/T 32918.3 section 5.4.3:
  ``SM3(Z || ct_1) || SM3(Z || ct_2) || ...`` truncated to ``length`` bytes, with
  ``ct_i`` a 32-bit big-endian counter starting at 1. It is the KDF of SM2 key
  exchange and SM2 encryption; the session keys of the envelope are derived
  with it (gateway/crypto/session.py).
* :func:`equal`: constant-time comparison of digests and MACs.
"""

from __future__ import annotations

import hmac as _hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _chmac

__all__ = ["DIGEST_SIZE", "digest", "equal", "hmac_sm3", "kdf"]

DIGEST_SIZE = 32
MAX_KDF_LENGTH = 32 * 255
"""Far below the standard's (2**32 - 1) * 32 bytes; nothing here needs more than a few keys."""


def digest(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    if not key:
        raise ValueError("an HMAC key must not be empty")
    h = _chmac.HMAC(key, hashes.SM3())
    h.update(data)
    return h.finalize()


def kdf(z: bytes, length: int) -> bytes:
    """``length`` bytes derived from the shared secret ``z`` (GM/T 0003.3 KDF with SM3)."""
    if not 0 < length <= MAX_KDF_LENGTH:
        raise ValueError(f"KDF length must be 1..{MAX_KDF_LENGTH} bytes (got {length})")
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += digest(z + counter.to_bytes(4, "big"))
        counter += 1
    return bytes(out[:length])


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two byte strings (their lengths are not secret)."""
    return _hmac.compare_digest(a, b)
