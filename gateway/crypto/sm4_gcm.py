"""SM4-GCM (GB/T 32907 block cipher in the GCM mode of NIST SP 800-38D), via ``cryptography``.

Only the parameters :class:`~gateway.crypto.secretbox.SecretBox` uses are
accepted: a 16-byte key, a 12-byte IV and a 16-byte tag. Other IV lengths are
refused rather than supported, because an IV that is not 96 bits goes through
GHASH first, which is where GCM implementations have gone wrong.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["IV_SIZE", "KEY_SIZE", "TAG_SIZE", "InvalidTag", "decrypt", "encrypt"]

KEY_SIZE = 16
IV_SIZE = 12
TAG_SIZE = 16


def _check(key: bytes, iv: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"an SM4 key is {KEY_SIZE} bytes (got {len(key)})")
    if len(iv) != IV_SIZE:
        raise ValueError(f"the IV must be {IV_SIZE} bytes (got {len(iv)})")


def encrypt(key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """The ciphertext followed by the 16-byte tag."""
    _check(key, iv)
    enc = Cipher(algorithms.SM4(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    return enc.update(plaintext) + enc.finalize() + enc.tag


def decrypt(key: bytes, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of ``ciphertext || tag``; :class:`InvalidTag` if anything was altered."""
    _check(key, iv)
    if len(sealed) < TAG_SIZE:
        raise InvalidTag()
    ciphertext, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    dec = Cipher(algorithms.SM4(key), modes.GCM(iv, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(ciphertext) + dec.finalize()
