"""A device key pair and the DPoP proofs it signs (RFC 9449, RFC 7638).

The device keeps an EC P-256 private key (ES256) that never leaves it; every
request carries a fresh proof, a small JWT signed with that key, naming the
method and URL of this one request (``htm``, ``htu``), when it was made
(``iat``), a unique id (``jti``) and, with an access token, the token's hash
(``ath``). The device id the gateway sees is the key's RFC 7638 thumbprint,
which an access token binds with ``cnf.jkt``.

Kept independent of the gateway's verifier on purpose (its own base64url and
thumbprint code): the tests check each side against the RFCs' values, so
both cannot drift together.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.crypto.b64 import b64url_encode

__all__ = ["DeviceKey", "access_token_hash", "thumbprint"]

_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the key type's required members."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in members}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url SHA-256 of the access token's ASCII bytes (RFC 9449 section 4.2)."""
    return b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def _htu(url: str) -> str:
    """The URL without query and fragment (RFC 9449 section 4.2)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("the URL must be absolute http(s)")
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


class DeviceKey:
    """One device's EC P-256 key: its public JWK, thumbprint and DPoP proofs."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
                private_key.curve, ec.SECP256R1):
            raise ValueError("a device key must be an EC P-256 private key")
        self._key = private_key
        nums = private_key.public_key().public_numbers()
        self.public_jwk: dict[str, str] = {
            "kty": "EC", "crv": "P-256",
            "x": b64url_encode(nums.x.to_bytes(32, "big")), "y": b64url_encode(nums.y.to_bytes(32, "big")),
        }
        self.thumbprint = thumbprint(self.public_jwk)
        """The device id: RFC 7638 thumbprint of the public key (what ``cnf.jkt`` names)."""
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.public_jwk}
        self._header = b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))
        self._ecdsa = ec.ECDSA(hashes.SHA256())

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> DeviceKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an EC private key")
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceKey:
        """Read an unencrypted PKCS#8 PEM key file (as :meth:`save` writes it)."""
        return cls.from_pem(Path(path).read_bytes())

    def private_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key to a new file readable by its owner only (never overwrites)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.private_pem())

    def proof(self, method: str, url: str, access_token: str | None = None, *,
              now: float | None = None, jti: str | None = None, nonce: str | None = None) -> str:
        """A fresh DPoP proof for one request (send it as the ``DPoP`` header).

        ``url`` is the URL as the client calls it (scheme and host included);
        its query and fragment are left out of ``htu``. With ``access_token``
        the proof carries its hash (``ath``), as RFC 9449 requires at a
        resource server. Each call makes a new ``jti``: never reuse a proof.
        """
        claims: dict[str, object] = {
            "jti": jti or secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": _htu(url),
            "iat": int(time.time() if now is None else now),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        payload = b64url_encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        signing_input = f"{self._header}.{payload}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode("ascii"), self._ecdsa))
        return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def __repr__(self) -> str:  # never the private key
        return f"DeviceKey(thumbprint={self.thumbprint!r})"
