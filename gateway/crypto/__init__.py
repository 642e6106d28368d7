"""Symmetric encryption of secrets at rest (SM4-GCM), a leaf package.

:class:`SecretBox` seals small secrets (TOTP seeds, phone numbers) under a
key id, so keys can rotate without re-encrypting what is stored. Nothing here
imports the rest of the gateway or aiohttp.

:class:`Sm2PrivateKey` / :class:`Sm2PublicKey` (``gateway.crypto.sm2``) sign,
verify, encrypt and decrypt with SM2 (GB/T 32918) on sm2p256v1.
"""

from gateway.crypto.secretbox import KEY_SIZE, SecretBox, SecretBoxError
from gateway.crypto.sm2 import Sm2Error, Sm2PrivateKey, Sm2PublicKey

__all__ = ["KEY_SIZE", "SecretBox", "SecretBoxError", "Sm2Error", "Sm2PrivateKey", "Sm2PublicKey"]
