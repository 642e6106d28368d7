"""Symmetric encryption of secrets at rest (SM4-GCM), a leaf package.

:class:`SecretBox` seals small secrets (TOTP seeds, phone numbers) under a
key id, so keys can rotate without re-encrypting what is stored. Nothing here
imports the rest of the gateway or aiohttp.
"""

from gateway.crypto.secretbox import KEY_SIZE, SecretBox, SecretBoxError

__all__ = ["KEY_SIZE", "SecretBox", "SecretBoxError"]
