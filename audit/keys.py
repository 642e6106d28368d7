"""The gateway's SM2 audit signing keys: a JSON file, mode 0600, used for nothing but checkpoints.

    {"current": "<key id>", "keys": {"<key id>": "<hex of the 32-byte private key>"}}

The ``current`` key signs new checkpoints; the others stay so older checkpoints
still verify (rotation: add a key, make it current). Verification needs only the
public keys (:meth:`AuditKeys.public_keys`, ``portcullis audit public-key``): a
regulator's verifier holds those, never the private ones.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from gateway.crypto.b64 import b64url_decode, b64url_encode
from gateway.crypto.keyfile import KeyFileError, create_private, read_private
from gateway.crypto.sm2 import Sm2Error, Sm2PrivateKey, Sm2PublicKey

__all__ = ["AuditKeyError", "AuditKeys", "load_public_keys", "public_keys_json"]


class AuditKeyError(Exception):
    """The audit key file is missing, unreadable, readable by others or malformed (no key material said)."""


class AuditKeys:
    __slots__ = ("_keys", "current")

    def __init__(self, keys: dict[str, Sm2PrivateKey], current: str) -> None:
        if current not in keys:
            raise AuditKeyError("the current audit key id is not among the keys")
        self._keys = dict(keys)
        self.current = current

    @classmethod
    def generate(cls) -> AuditKeys:
        kid = "audit-" + secrets.token_hex(4)
        return cls({kid: Sm2PrivateKey.generate()}, kid)

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False) -> AuditKeys:
        """The keys in ``path``; with ``create``, a fresh file when absent (one process wins a race)."""
        if create and not path.exists():
            fresh = cls.generate()
            doc = {"current": fresh.current, "keys": {k: v.to_bytes().hex() for k, v in fresh._keys.items()}}
            if create_private(path, (json.dumps(doc, indent=1) + "\n").encode()):
                return fresh
        try:
            raw = read_private(path, "audit key file")
        except KeyFileError as exc:
            raise AuditKeyError(str(exc)) from None
        if raw is None:
            raise AuditKeyError(f"audit key file {str(path)!r} does not exist")
        try:
            doc = json.loads(raw)
            keys = {str(k): Sm2PrivateKey.from_bytes(bytes.fromhex(v)) for k, v in doc["keys"].items()}
            return cls(keys, str(doc["current"]))
        except (ValueError, KeyError, TypeError, AttributeError, Sm2Error):
            raise AuditKeyError(f"audit key file {str(path)!r} is malformed") from None

    @property
    def signing_key(self) -> Sm2PrivateKey:
        return self._keys[self.current]

    def public_keys(self) -> dict[str, Sm2PublicKey]:
        return {kid: k.public_key() for kid, k in self._keys.items()}

    def __repr__(self) -> str:
        return f"AuditKeys(current={self.current!r}, ids={sorted(self._keys)!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("audit keys cannot be pickled")


def public_keys_json(keys: dict[str, Sm2PublicKey]) -> str:
    """``{key id: base64url of the 65-byte public key}``: what a verifier is given."""
    return json.dumps({kid: b64url_encode(k.to_bytes()) for kid, k in sorted(keys.items())}, indent=1)


def load_public_keys(path: Path) -> dict[str, Sm2PublicKey]:
    """Public keys from :func:`public_keys_json`'s format, or the private key file itself."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AuditKeyError(f"audit public keys {str(path)!r} cannot be read: {exc}") from None
    if isinstance(doc, dict) and "keys" in doc and "current" in doc:
        return AuditKeys.from_file(path).public_keys()
    try:
        return {str(kid): Sm2PublicKey.from_bytes(b64url_decode(v)) for kid, v in doc.items()}
    except (ValueError, TypeError, AttributeError, Sm2Error):
        raise AuditKeyError(f"audit public keys {str(path)!r} are malformed") from None
