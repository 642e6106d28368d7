"""SM2 (GB/T 32918 / GM/T 0003) signatures and public-key encryption on sm2p256v1, via ``gmssl-pyx``.

``gmssl-pyx`` binds GmSSL 3 (C); its nonces come from ``/dev/urandom`` (see
docs/CRYPTO.md for the comparison with ``gmssl`` and ``tongsuopy``).

* Signatures are the 64 bytes ``r || s`` over ``SM3(Z || data)``, ``Z`` the
  user-id hash of GM/T 0003.2 section 5.5. ``Z`` and the digest are computed
  here, so any user id works and GmSSL only signs a digest (its own
  message API precomputes 32 nonces per call, ten times slower).
* Ciphertexts are GM/T 0009 DER, ``SEQUENCE { x, y, C3 (SM3), C2 }`` (C1C3C2).
  GmSSL limits a plaintext to 1..255 bytes: SM2 encryption carries keys, not
  bodies.

Every failure (malformed key, bad signature, bad ciphertext) is
:class:`Sm2Error`, whose messages never contain key material. GmSSL itself
prints a short trace (source file and function, no data) to stderr when a
verification or decryption fails.
"""

from __future__ import annotations

from typing import NoReturn

import gmssl_pyx

from gateway.crypto import sm3

__all__ = [
    "DEFAULT_UID",
    "MAX_PLAINTEXT",
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Sm2Error",
    "Sm2PrivateKey",
    "Sm2PublicKey",
]

DEFAULT_UID = b"1234567812345678"
"""The default user id of GM/T 0009 section 10 (and of OpenSSL, Tongsuo and GmSSL)."""

PRIVATE_KEY_SIZE = 32
PUBLIC_KEY_SIZE = 65
SIGNATURE_SIZE = 64
MAX_PLAINTEXT = 255
"""GmSSL's limit for one SM2 encryption."""

# sm2p256v1, GM/T 0003.5 / GB/T 32918.5.
_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
_A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
_GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
_GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0
_CURVE_Z_PREFIX = b"".join(v.to_bytes(32, "big") for v in (_A, _B, _GX, _GY))
_MAX_UID_BITS = 0xFFFF  # ENTL is two bytes of bit length


class Sm2Error(Exception):
    """A malformed key, a signature that does not verify or a ciphertext that does not decrypt."""


def _fail(message: str) -> NoReturn:
    # ``from None``: no chained library exception, whose text could echo its inputs.
    raise Sm2Error(message) from None


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < _P and 0 <= y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


def _scalar_base_mult(k: int) -> tuple[int, int]:
    """``k * G`` in Jacobian coordinates; only used once per loaded key (public key from private)."""
    # A ladder (one double and one add per bit, whatever the bit) so the sequence of
    # operations does not follow the key's bits; Python integers are not constant-time.
    r0: tuple[int, int, int] = (1, 1, 0)  # infinity
    r1: tuple[int, int, int] = (_GX, _GY, 1)
    for i in reversed(range(256)):
        if (k >> i) & 1:
            r0, r1 = _jadd(r0, r1), _jdouble(r1)
        else:
            r1, r0 = _jadd(r0, r1), _jdouble(r0)
    x, y, z = r0
    if z == 0:
        _fail("the private key gives the point at infinity")
    zi = pow(z, -1, _P)
    zi2 = zi * zi % _P
    return x * zi2 % _P, y * zi2 * zi % _P


def _jdouble(p: tuple[int, int, int]) -> tuple[int, int, int]:
    x, y, z = p
    if z == 0 or y == 0:
        return (1, 1, 0)
    yy = y * y % _P
    s = 4 * x * yy % _P
    zz = z * z % _P
    m = (3 * x * x + _A * zz * zz) % _P
    x3 = (m * m - 2 * s) % _P
    y3 = (m * (s - x3) - 8 * yy * yy) % _P
    return x3, y3, 2 * y * z % _P


def _jadd(p: tuple[int, int, int], q: tuple[int, int, int]) -> tuple[int, int, int]:
    x1, y1, z1 = p
    x2, y2, z2 = q
    if z1 == 0:
        return q
    if z2 == 0:
        return p
    z1z1 = z1 * z1 % _P
    z2z2 = z2 * z2 % _P
    u1 = x1 * z2z2 % _P
    u2 = x2 * z1z1 % _P
    s1 = y1 * z2 * z2z2 % _P
    s2 = y2 * z1 * z1z1 % _P
    if u1 == u2:
        return _jdouble(p) if s1 == s2 else (1, 1, 0)
    h = (u2 - u1) % _P
    hh = h * h % _P
    hhh = h * hh % _P
    r = (s2 - s1) % _P
    v = u1 * hh % _P
    x3 = (r * r - hhh - 2 * v) % _P
    y3 = (r * (v - x3) - s1 * hhh) % _P
    return x3, y3, h * z1 * z2 % _P


def _der_int(v: int) -> bytes:
    body = v.to_bytes(v.bit_length() // 8 + 1, "big")
    return b"\x02" + bytes([len(body)]) + body


def _signature_to_der(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def _signature_from_der(der: bytes) -> bytes:
    """``r || s`` from GmSSL's ``SEQUENCE { INTEGER r, INTEGER s }`` (short lengths only: r, s < 2**256)."""
    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2:
        _fail("the signing library returned a malformed signature")
    out = b""
    i = 2
    for _ in range(2):
        if i + 2 > len(der) or der[i] != 0x02:
            _fail("the signing library returned a malformed signature")
        n = der[i + 1]
        out += int.from_bytes(der[i + 2 : i + 2 + n], "big").to_bytes(32, "big")
        i += 2 + n
    if i != len(der):
        _fail("the signing library returned a malformed signature")
    return out


class Sm2PublicKey:
    """A point of sm2p256v1, checked to be on the curve."""

    __slots__ = ("_xy",)

    def __init__(self, xy: bytes) -> None:
        # Private: use from_bytes, which checks the point.
        self._xy = xy

    @classmethod
    def from_bytes(cls, b: bytes) -> Sm2PublicKey:
        """From the 65-byte uncompressed point ``0x04 || x || y`` or the 64 bytes ``x || y``."""
        if len(b) == PUBLIC_KEY_SIZE and b[0] == 0x04:
            xy = bytes(b[1:])
        elif len(b) == PUBLIC_KEY_SIZE - 1:
            xy = bytes(b)
        else:
            _fail(f"an SM2 public key is 65 bytes 0x04||x||y or 64 bytes x||y (got {len(b)} bytes)")
        if not _on_curve(int.from_bytes(xy[:32], "big"), int.from_bytes(xy[32:], "big")):
            _fail("the SM2 public key is not a point on sm2p256v1")
        return cls(xy)

    def to_bytes(self) -> bytes:
        """The 65-byte uncompressed point ``0x04 || x || y``."""
        return b"\x04" + self._xy

    def z(self, uid: bytes = DEFAULT_UID) -> bytes:
        """``Z = SM3(ENTL || uid || a || b || xG || yG || x || y)`` (GM/T 0003.2 section 5.5)."""
        bits = len(uid) * 8
        if bits > _MAX_UID_BITS:
            _fail(f"an SM2 user id is at most {_MAX_UID_BITS // 8} bytes (got {len(uid)})")
        return sm3.digest(bits.to_bytes(2, "big") + uid + _CURVE_Z_PREFIX + self._xy)

    def verify(self, signature: bytes, data: bytes, uid: bytes = DEFAULT_UID) -> None:
        """Raise :class:`Sm2Error` unless ``signature`` (``r || s``) signs ``data`` under ``uid``."""
        if len(signature) != SIGNATURE_SIZE:
            _fail(f"an SM2 signature is {SIGNATURE_SIZE} bytes r||s (got {len(signature)})")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _N and 0 < s < _N):
            _fail("the SM2 signature does not verify")
        e = sm3.digest(self.z(uid) + data)
        try:
            ok = gmssl_pyx.sm2_verify_sm3_digest(self._xy, e, _signature_to_der(r, s))
        except gmssl_pyx.GmsslInnerError:
            ok = False
        if not ok:
            _fail("the SM2 signature does not verify")

    def encrypt(self, plaintext: bytes) -> bytes:
        """GM/T 0009 DER ciphertext (C1C3C2) of 1..255 bytes, under a fresh nonce."""
        if not 0 < len(plaintext) <= MAX_PLAINTEXT:
            _fail(f"SM2 encrypts 1..{MAX_PLAINTEXT} bytes (got {len(plaintext)})")
        try:
            return bytes(gmssl_pyx.sm2_encrypt(self._xy, bytes(plaintext)))
        except gmssl_pyx.GmsslInnerError:
            _fail("SM2 encryption failed")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sm2PublicKey) and other._xy == self._xy

    def __hash__(self) -> int:
        return hash(self._xy)

    def __repr__(self) -> str:
        return f"Sm2PublicKey({self.to_bytes().hex()})"


class Sm2PrivateKey:
    """A private key ``d`` in ``[1, n - 2]`` with its public key. Never printed, never pickled."""

    __slots__ = ("_d", "_public")

    def __init__(self, d: bytes, public: Sm2PublicKey) -> None:
        # Private: use generate or from_bytes.
        self._d = d
        self._public = public

    @classmethod
    def generate(cls) -> Sm2PrivateKey:
        try:
            pub, d = gmssl_pyx.sm2_key_generate()
        except gmssl_pyx.GmsslInnerError:
            _fail("SM2 key generation failed")
        return cls(d, Sm2PublicKey(pub))

    @classmethod
    def from_bytes(cls, d: bytes) -> Sm2PrivateKey:
        """From the 32-byte big-endian scalar ``d``; 0 and ``d >= n - 1`` are refused."""
        if len(d) != PRIVATE_KEY_SIZE:
            _fail(f"an SM2 private key is {PRIVATE_KEY_SIZE} bytes (got {len(d)})")
        k = int.from_bytes(d, "big")
        # n - 1 is refused too: signing divides by 1 + d (GB/T 32918.1 section 6.1).
        if not 0 < k < _N - 1:
            _fail("the SM2 private key is out of range [1, n-2]")
        x, y = _scalar_base_mult(k)
        return cls(bytes(d), Sm2PublicKey(x.to_bytes(32, "big") + y.to_bytes(32, "big")))

    def to_bytes(self) -> bytes:
        return self._d

    def public_key(self) -> Sm2PublicKey:
        return self._public

    def sign(self, data: bytes, uid: bytes = DEFAULT_UID) -> bytes:
        """The 64 bytes ``r || s`` over ``SM3(Z || data)``, with a fresh nonce from GmSSL (``/dev/urandom``)."""
        e = sm3.digest(self._public.z(uid) + data)
        try:
            der = gmssl_pyx.sm2_sign_sm3_digest(self._d, e)
        except gmssl_pyx.GmsslInnerError:
            _fail("SM2 signing failed")
        return _signature_from_der(der)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext of a GM/T 0009 DER ciphertext (C1C3C2); :class:`Sm2Error` if altered or malformed."""
        try:
            return bytes(gmssl_pyx.sm2_decrypt(self._d, bytes(ciphertext)))
        except gmssl_pyx.GmsslInnerError:
            _fail("the SM2 ciphertext does not decrypt")

    def __repr__(self) -> str:
        return f"Sm2PrivateKey(public={self._public.to_bytes().hex()})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an SM2 private key cannot be pickled")

