"""The national (SM) cryptography, a leaf package: nothing here imports the rest of the gateway or aiohttp.

* :class:`SecretBox` seals small secrets (TOTP seeds, phone numbers, session keys) under a key id, so
  keys can rotate without re-encrypting what is stored.
* :class:`Sm2PrivateKey` / :class:`Sm2PublicKey` (``sm2``) sign, verify, encrypt and decrypt with SM2
  (GB/T 32918) on sm2p256v1; ``sm3`` (digest, HMAC-SM3, the GM/T 0003 KDF); ``sm4_gcm`` and ``sm4``.
* ``session``: session keys and SM4-GCM envelopes between client and gateway (docs/CRYPTO.md).
* ``keyring``, ``keystore``, ``fields``: data keys under a master key, per-customer keys and erasure,
  field-level encryption of personal data (docs/KEYS.md).
"""

from gateway.crypto.secretbox import KEY_SIZE, SecretBox, SecretBoxError
from gateway.crypto.sm2 import Sm2Error, Sm2PrivateKey, Sm2PublicKey

__all__ = ["KEY_SIZE", "SecretBox", "SecretBoxError", "Sm2Error", "Sm2PrivateKey", "Sm2PublicKey"]
