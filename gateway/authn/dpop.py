"""DPoP proofs (RFC 9449) at the gateway: device identity that a header copy cannot fake.

A client holds a device key pair and sends, with every request, a fresh
proof: a compact JWS whose header carries the public key (``jwk``) and whose
claims name this one request (``htm`` method, ``htu`` URL without query and
fragment, ``iat``, a unique ``jti``, and ``ath``, the access token's hash).
The device id is the key's RFC 7638 thumbprint; a token bound to a key names
that thumbprint in ``cnf.jkt``.

:class:`ProofVerifier` is the pure part: it parses strictly (bounded size,
canonical base64url, JSON objects without duplicate members), refuses any
algorithm outside the configured allow-list (ES256, optionally EdDSA with
Ed25519: never ``none``, never a symmetric or RSA algorithm), any private
member in the ``jwk``, unknown ``crit`` extensions, then checks the claims
against the request and the clock, and only then the signature. It returns
the :class:`Proof` (thumbprint, ``jti``, ``iat``); the caller checks ``jti``
for replays in the shared state store (gateway/steps/authenticate.py), and
:class:`ReplayCache` is this process's own memory of ``jti`` values for when
that store cannot answer.

Cost. A proof is new on every request, so its signature cannot be cached:
ES256 verification with ``cryptography`` is the floor (see
docs/PERFORMANCE.md, "DPoP proofs"). Everything else is made cheap: the
header segment of one device's proofs is the same on every request, so the
parsed header (algorithm, thumbprint, loaded public key) is cached by that
exact segment in a bounded LRU, and the signature is checked directly with
``cryptography`` (no pyjwt round of header parsing and key preparation).

Error messages never contain the proof, the key or any value taken from them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.errors import DPOP_INVALID, GatewayError
from gateway.jose import jwk_thumbprint, strict_json_object
from gateway.paths import normalise_target

__all__ = [
    "MAX_PROOF_BYTES",
    "SUPPORTED_ALGORITHMS",
    "Proof",
    "ProofVerifier",
    "ReplayCache",
    "normalise_origin",
]

MAX_PROOF_BYTES = 6 * 1024
"""Longest proof accepted: room for an ``htu`` with a 2,048-character path (the default
``max_path_length``), under aiohttp's 8,190-byte limit for one header line."""
MAX_JTI_LENGTH = 128
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset({"ES256", "EdDSA"})

_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
# Members that only a private or symmetric JWK has (RFC 7518 section 6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _invalid(message: str) -> GatewayError:
    return GatewayError(DPOP_INVALID, f"the DPoP proof is not valid: {message}")


@dataclass(frozen=True, slots=True)
class Proof:
    """A verified proof: who signed it (the device id) and what makes it unique."""

    jkt: str
    """RFC 7638 thumbprint (base64url SHA-256) of the proof's public key: the device id."""
    jti: str
    iat: float


# -- strict parsing ------------------------------------------------------------------


def _b64decode(segment: str, what: str) -> bytes:
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise _invalid(f"its {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(f"its {what} is not base64url") from None
    # Non-zero unused bits spell the same bytes a second way: refuse them.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise _invalid(f"its {what} is not canonical base64url")
    return raw


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    obj = strict_json_object(data)
    if obj is None:
        raise _invalid(f"its {what} is not a JSON object")
    return obj


def _coordinate(jwk: Mapping[str, Any], name: str, size: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise _invalid(f"its jwk has no {name}")
    raw = _b64decode(value, f"jwk {name}")
    if len(raw) != size:
        raise _invalid(f"its jwk {name} has the wrong length")
    return raw


# -- keys ----------------------------------------------------------------------------

Verify = Callable[[bytes, bytes], None]
"""``verify(signature, signing_input)``; raises InvalidSignature."""


def _es256(jwk: Mapping[str, Any]) -> Verify:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise _invalid("ES256 needs an EC P-256 jwk")
    x = _coordinate(jwk, "x", 32)
    y = _coordinate(jwk, "y", 32)
    try:
        key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                            ec.SECP256R1()).public_key()
    except ValueError:
        raise _invalid("its jwk is not a point on P-256") from None

    def verify(signature: bytes, data: bytes) -> None:
        if len(signature) != 64:
            raise InvalidSignature
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        key.verify(der, data, _ECDSA_SHA256)

    return verify


def _eddsa(jwk: Mapping[str, Any]) -> Verify:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise _invalid("EdDSA needs an OKP Ed25519 jwk")
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(_coordinate(jwk, "x", 32))
    except ValueError:
        raise _invalid("its jwk is not an Ed25519 key") from None

    def verify(signature: bytes, data: bytes) -> None:
        if len(signature) != 64:
            raise InvalidSignature
        key.verify(signature, data)

    return verify


_KEY_LOADERS: dict[str, Callable[[Mapping[str, Any]], Verify]] = {"ES256": _es256, "EdDSA": _eddsa}


@dataclass(frozen=True, slots=True)
class _Header:
    jkt: str
    verify: Verify


# -- origins ---------------------------------------------------------------------------


def normalise_origin(scheme: str, netloc: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port; None if not http(s) or with userinfo."""
    scheme = scheme.lower()
    netloc = netloc.lower()
    if scheme not in _DEFAULT_PORTS or not netloc or "@" in netloc:
        return None
    if netloc.endswith(_DEFAULT_PORTS[scheme]):
        netloc = netloc[: -len(_DEFAULT_PORTS[scheme])]
    return f"{scheme}://{netloc}"


def _split_htu(htu: str) -> tuple[str | None, str]:
    """(origin, path) of an absolute http(s) URL; query and fragment are ignored (RFC 9449 4.3)."""
    scheme, sep, rest = htu.partition("://")
    if not sep:
        return None, ""
    end = len(rest)
    for mark in "/?#":
        at = rest.find(mark)
        if at != -1 and at < end:
            end = at
    netloc, tail = rest[:end], rest[end:]
    path = tail.split("#", 1)[0].split("?", 1)[0] or "/"
    return normalise_origin(scheme, netloc), path


# -- the verifier ----------------------------------------------------------------------


class ProofVerifier:
    """Verifies DPoP proofs against one request; caches parsed proof headers per device."""

    def __init__(self, *, algorithms: Iterable[str] = ("ES256",), iat_window: float = 60.0,
                 key_cache_size: int = 10_000, max_path_length: int = 2048) -> None:
        self.algorithms = tuple(algorithms)
        unknown = [a for a in self.algorithms if a not in SUPPORTED_ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"DPoP algorithms must be some of {sorted(SUPPORTED_ALGORITHMS)}")
        if not math.isfinite(iat_window) or iat_window <= 0:
            raise ValueError("iat_window must be a positive number of seconds")
        self.iat_window = iat_window
        self._headers: OrderedDict[str, _Header] = OrderedDict()
        self._cache_size = key_cache_size
        self._max_path = max_path_length

    @property
    def cached_keys(self) -> int:
        return len(self._headers)

    def verify(self, proof: str, *, method: str, path: str, origins: Collection[str],
               ath: str | None, now: float) -> Proof:
        """The verified proof for this request; raises GatewayError(dpop_invalid).

        ``path`` is the request's canonical path (gateway/paths.py), ``origins``
        the normalised ``scheme://host[:port]`` values the client may have used,
        ``ath`` the expected access-token hash (None: no token on the request).
        Nothing is remembered about ``jti`` here: replay is the caller's check.
        """
        if not isinstance(proof, str) or len(proof) > MAX_PROOF_BYTES:
            raise _invalid(f"it is larger than {MAX_PROOF_BYTES} bytes")
        if not proof.isascii():
            raise _invalid("it is not ASCII")
        parts = proof.split(".")
        if len(parts) != 3 or not parts[0]:
            raise _invalid("it is not a compact JWS")
        header = self._header(parts[0])
        claims = _json_object(_b64decode(parts[1], "payload"), "payload")
        jti, iat = self._check_claims(claims, method, path, origins, ath, now)
        signature = _b64decode(parts[2], "signature")
        try:
            header.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
        except InvalidSignature:
            raise _invalid("its signature does not verify") from None
        return Proof(jkt=header.jkt, jti=jti, iat=iat)

    def _header(self, segment: str) -> _Header:
        cached = self._headers.get(segment)
        if cached is not None:
            self._headers.move_to_end(segment)
            return cached
        header = _json_object(_b64decode(segment, "header"), "header")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != "dpop+jwt":
            raise _invalid("its typ is not dpop+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _invalid(f"its algorithm is not one of {', '.join(self.algorithms)}")
        if "crit" in header or "b64" in header:
            raise _invalid("it has header extensions we do not support")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise _invalid("its header has no jwk")
        if _PRIVATE_MEMBERS.intersection(jwk):
            raise _invalid("its jwk holds private key material")
        verify = _KEY_LOADERS[alg](jwk)
        # The loader checked kty, crv and the coordinates: the thumbprint's members are sound.
        parsed = _Header(jkt=jwk_thumbprint(jwk), verify=verify)
        if self._cache_size > 0:
            self._headers[segment] = parsed
            if len(self._headers) > self._cache_size:
                self._headers.popitem(last=False)
        return parsed

    def _check_claims(self, claims: Mapping[str, Any], method: str, path: str,
                      origins: Collection[str], ath: str | None, now: float) -> tuple[str, float]:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise _invalid(f"its jti is missing or longer than {MAX_JTI_LENGTH} characters")
        if claims.get("htm") != method:
            raise _invalid("its htm is not this request's method")
        htu = claims.get("htu")
        if not isinstance(htu, str):
            raise _invalid("it has no htu")
        origin, htu_path = _split_htu(htu)
        if origin is None or origin not in origins:
            raise _invalid("its htu is not this gateway's URL")
        try:
            canonical, _ = normalise_target(htu_path, self._max_path)
        except GatewayError:
            raise _invalid("its htu path is malformed") from None
        if canonical != path:
            raise _invalid("its htu is not this request's URL")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat):
            raise _invalid("its iat is not a number")
        if iat < now - self.iat_window:
            raise _invalid("it is too old (iat)")
        if iat > now + self.iat_window:
            raise _invalid("it is issued in the future (iat)")
        if ath is not None:
            got = claims.get("ath")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode("ascii", "replace"),
                                                                   ath.encode("ascii")):
                raise _invalid("its ath does not match the access token")
        return jti, float(iat)


# -- this process's replay memory --------------------------------------------------------


class ReplayCache:
    """The ``jti`` values this process has accepted, bounded, for when the state store is down.

    Every accepted proof is remembered here as well as in the shared store,
    so a replay to this process is caught even while the store cannot answer.
    When full, the oldest entry goes and its ``iat`` raises the *horizon*:
    a proof whose ``iat`` is at or below the horizon may have been forgotten,
    so :meth:`add` refuses it rather than guess (honest clients make a fresh
    proof per request, whose ``iat`` is newer). Entries expire ``ttl`` seconds
    after they were added, by which time their proofs are too old anyway.
    """

    def __init__(self, size: int, ttl: float) -> None:
        if size < 1:
            raise ValueError("the replay cache needs room for at least one entry")
        self._size = size
        self._ttl = ttl
        self._entries: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (expires, iat)
        self._horizon = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, key: str, now: float) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry[0] > now

    def remember(self, key: str, iat: float, now: float) -> None:
        """Record an accepted proof (the shared store has vouched for it)."""
        self._expire(now)
        self._entries[key] = (now + self._ttl, iat)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            _, (_, old_iat) = self._entries.popitem(last=False)
            self._horizon = max(self._horizon, old_iat)

    def add(self, key: str, iat: float, now: float) -> bool:
        """Record a proof only this process can vouch for; False if it may be a replay."""
        if self.seen(key, now) or iat <= self._horizon:
            return False
        self.remember(key, iat, now)
        return True

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (expires, _) = next(iter(entries.items()))
            if expires > now:
                return
            del entries[key]
