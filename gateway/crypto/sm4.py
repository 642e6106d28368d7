"""The SM4 block cipher (GB/T 32907) and its unauthenticated modes, via ``cryptography``.

For test vectors and interoperability only: secrets are sealed with
:mod:`gateway.crypto.sm4_gcm`, which authenticates. :func:`mode_cipher`
returns ``cryptography``'s cipher; the caller pads (ECB, CBC) itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.decrepit.ciphers import modes as _decrepit
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["BLOCK_SIZE", "KEY_SIZE", "block_decrypt", "block_encrypt", "mode_cipher"]

KEY_SIZE = 16
BLOCK_SIZE = 16

_MODES: dict[str, Callable[[bytes], modes.Mode]] = {
    "CBC": modes.CBC, "CFB": _decrepit.CFB, "OFB": _decrepit.OFB, "CTR": modes.CTR,
}


def _key(key: bytes) -> bytes:
    if len(key) != KEY_SIZE:
        raise ValueError(f"an SM4 key is {KEY_SIZE} bytes (got {len(key)})")
    return key


def mode_cipher(key: bytes, mode: str, iv: bytes | None) -> Cipher[Any]:
    """SM4 in ``mode`` (ECB, CBC, CFB, OFB or CTR); ``iv`` is the IV or initial counter block, None for ECB."""
    if mode == "ECB":
        if iv is not None:
            raise ValueError("ECB takes no IV")
        return Cipher(algorithms.SM4(_key(key)), modes.ECB())
    if mode not in _MODES:
        raise ValueError(f"unknown SM4 mode {mode!r} (ECB, CBC, CFB, OFB or CTR)")
    if iv is None or len(iv) != BLOCK_SIZE:
        raise ValueError(f"SM4-{mode} needs a {BLOCK_SIZE}-byte IV")
    return Cipher(algorithms.SM4(_key(key)), _MODES[mode](iv))


def block_encrypt(key: bytes, block: bytes) -> bytes:
    """One 16-byte block through SM4."""
    if len(block) != BLOCK_SIZE:
        raise ValueError(f"an SM4 block is {BLOCK_SIZE} bytes (got {len(block)})")
    enc = Cipher(algorithms.SM4(_key(key)), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def block_decrypt(key: bytes, block: bytes) -> bytes:
    """One 16-byte block through the SM4 inverse."""
    if len(block) != BLOCK_SIZE:
        raise ValueError(f"an SM4 block is {BLOCK_SIZE} bytes (got {len(block)})")
    dec = Cipher(algorithms.SM4(_key(key)), modes.ECB()).decryptor()
    return dec.update(block) + dec.finalize()
