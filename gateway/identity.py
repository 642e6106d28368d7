"""The gateway-signed identity assertion and the terminal-information header.

The backend trusts only this assertion, never client headers. It is signed
on every forwarded request, so the scheme is chosen by cost: HS256 with a key
per upstream (~3 us) where the backend is ours, ES256 (~90 us here; RS256 far
more) where others must verify it with a public key. The JWS is assembled by hand (header pre-encoded,
compact JSON payload) to keep pyjwt's per-call overhead off the hot path; the
format is a plain RFC 7515 compact JWS that any JWT library verifies.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.headers import sanitise_value
from gateway.jose import b64url, ec_public_jwk, jwk_thumbprint


class AssertionSigner:
    """Claims and compact-JWS assembly shared by both schemes; subclasses sign."""

    alg = ""

    def __init__(self, kid: str, *, issuer: str, audience: str, ttl: int) -> None:
        self.kid = kid
        header = {"alg": self.alg, "typ": "JWT", "kid": kid}
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode())
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl

    def _signature(self, signing_input: bytes) -> bytes:
        raise NotImplementedError

    def sign(self, *, sub: str, accounts: Sequence[str], roles: Sequence[str],
             acr: str | None, risk: str, request_id: str, now: int) -> str:
        claims = {
            "iss": self._issuer, "aud": self._audience, "sub": sub,
            "accounts": list(accounts), "roles": list(roles), "acr": acr, "risk": risk,
            "rid": request_id, "iat": now, "exp": now + self._ttl,
        }
        signing_input = f"{self._header}.{b64url(orjson.dumps(claims))}"
        return f"{signing_input}.{b64url(self._signature(signing_input.encode('ascii')))}"


class IdentitySigner(AssertionSigner):
    """ES256 with the gateway's own P-256 key: any holder of the public key can verify."""

    alg = "ES256"

    def __init__(self, key_pem: bytes, *, issuer: str, audience: str, ttl: int) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the identity signing key must be an EC P-256 private key")
        self._key = key
        self._algo = ec.ECDSA(hashes.SHA256())
        super().__init__(jwk_thumbprint(ec_public_jwk(key.public_key())),
                         issuer=issuer, audience=audience, ttl=ttl)

    @classmethod
    def from_file(cls, path: Path, *, issuer: str, audience: str, ttl: int) -> IdentitySigner:
        return cls(path.read_bytes(), issuer=issuer, audience=audience, ttl=ttl)

    def _signature(self, signing_input: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(signing_input, self._algo))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


MIN_HMAC_KEY_BYTES = 32


def load_hmac_key(path: Path) -> bytes:
    """A per-upstream HMAC key: base64url text of at least 32 random bytes."""
    text = path.read_text("ascii").strip()
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise ValueError("the HMAC key file must hold base64url text") from None
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise ValueError(f"the HMAC key must have at least {MIN_HMAC_KEY_BYTES} bytes")
    return key


class HmacIdentitySigner(AssertionSigner):
    """HS256 with a key shared with one upstream only.

    ~3 us a request against ~90 us for ES256 on this machine kind. Each
    upstream has its own key, so a compromised backend can forge assertions
    only to itself; what it loses against ES256 is that third parties cannot
    verify the assertion (no non-repudiation).
    """

    alg = "HS256"

    def __init__(self, key: bytes, *, issuer: str, audience: str, ttl: int) -> None:
        if len(key) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"the HMAC key must have at least {MIN_HMAC_KEY_BYTES} bytes")
        # RFC 2104 with the padded key's inner and outer SHA-256 states computed once:
        # a copy of each per request costs half of hmac.digest's one-shot (~0.7 vs 1.5 us).
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        # The kid names the key without revealing it: a truncated hash of a 256-bit secret.
        super().__init__("hs-" + b64url(hashlib.sha256(b"portcullis-kid:" + key).digest()[:12]),
                         issuer=issuer, audience=audience, ttl=ttl)

    @classmethod
    def from_file(cls, path: Path, *, issuer: str, audience: str, ttl: int) -> HmacIdentitySigner:
        return cls(load_hmac_key(path), issuer=issuer, audience=audience, ttl=ttl)

    def _signature(self, signing_input: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(signing_input)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()



def terminal_info(*, client_ip: str, client_port: int | None, device_id: str | None,
                  user_agent: str | None) -> str:
    """Terminal information (CSRC 2013 No.30, revised 2022 No.43) in one fixed header.

    Format: ``TYPE=API;IIP=<ip>;IPORT=<port>;DEVID=<device id>;UA=<user agent>``;
    values are sanitised (no ';', '=', control or non-ASCII bytes) so the
    backend can split it safely. Missing values are empty, never omitted.
    """
    return (
        f"TYPE=API;IIP={sanitise_value(client_ip, 64)};IPORT={client_port or ''};"
        f"DEVID={sanitise_value(device_id or '', 128)};UA={_sanitised_agent(user_agent or '')}"
    )


# A few user agents carry nearly all traffic: sanitise each once (bounded: client-chosen).
@functools.lru_cache(maxsize=4096)
def _sanitised_agent(ua: str) -> str:
    return sanitise_value(ua, 160)
