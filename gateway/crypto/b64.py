"""Unpadded base64url (RFC 7515 section 2, RFC 4648 section 5): one encoder and one strict decoder.

The decoder refuses what a lenient one would quietly repair: padding, characters outside
the URL-safe alphabet (the standard library's decoder drops them), and lengths no
encoder produces. Callers wrap :class:`ValueError` in their own error.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64url_decode", "b64url_encode"]

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or _ALPHABET.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not unpadded base64url") from None
