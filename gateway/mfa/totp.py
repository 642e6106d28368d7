"""TOTP (RFC 6238) enrolment and verification, with its state in the shared store.

Secrets are 160 random bits (``secrets``), shown once as an ``otpauth://`` URI
and its QR code, and stored only sealed by the :class:`SecretBox`, with
associated data naming the account and whether the secret is pending or
active (a sealed secret copied to another account or state does not open).

Verifying a code, in order:

1. The code must be exactly ``digits`` ASCII digits, else ``otp_malformed``.
   A malformed code is **not** counted as a failure: it cannot match, so it
   tells an attacker nothing and spends none of the guessing budget, while a
   user's slip (a space, a 5-digit paste) does not bring the lockout closer.
2. ``otp_locked`` (429, Retry-After: the rest of the window) once
   ``max_failures`` wrong codes fell in the failure window (a fixed window of
   ``failure_window`` seconds from the first attempt counted in it; a success
   gives its attempt back but does not end the window); ``otp_throttled`` (429, Retry-After) while the
   backoff after the 3rd consecutive failure runs: 2**(n-3) seconds after the
   n-th, at most 60. An attempt is reserved atomically before the code is
   checked (``incr``), so concurrent guesses on several replicas cannot pass
   the lockout; a success or a refusal that is not a wrong code gives the
   reservation back.
3. The code is compared (``hmac.compare_digest``) with the code of each time
   step within ±``drift`` of now, every one of them, so the time taken does
   not depend on which step matched.
4. A wrong code is ``otp_invalid`` with ``attempts_left``; the one that
   exhausts the window is answered ``otp_locked`` at once.
5. A right code is accepted once per account: its time-step counter must be
   above the last accepted one, and is claimed with ``set_if_absent`` (two
   replicas verifying the same code at once: one wins), else
   ``otp_replayed`` (not counted as a failure: the code was right).
6. A success clears the consecutive-failure count (not the window's count).

Confirming an enrolment checks the code against the pending secret under the
same limits and marks its step as used, so that code cannot then be replayed.

Times come from the injected ``clock`` and are stored as values; store TTLs
(real seconds) only clean up. Secrets and codes are never logged.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import pyotp
import qrcode

from gateway.crypto import SecretBox, SecretBoxError
from gateway.errors import (
    ENROLMENT_NOT_FOUND,
    FACTOR_NOT_ENROLLED,
    OTP_INVALID,
    OTP_LOCKED,
    OTP_MALFORMED,
    OTP_REPLAYED,
    OTP_THROTTLED,
    ErrorKind,
    GatewayError,
)
from gateway.state.base import StateStore, stored_float

__all__ = ["BACKOFF_AFTER", "BACKOFF_CAP", "SECRET_BYTES", "Totp", "TotpEnrolment"]

SECRET_BYTES = 20
"""160 bits, the length RFC 4226 recommends (32 base32 characters, no padding)."""
BACKOFF_AFTER = 3
"""Consecutive failures after which each further attempt waits 2**(n - BACKOFF_AFTER) seconds."""
BACKOFF_CAP = 60.0

_PENDING = "pending"
_ACTIVE = "active"


@dataclass(frozen=True)
class TotpEnrolment:
    """What a user needs to set up an authenticator app; shown once, never stored in clear."""

    secret: str = field(repr=False)
    """Base32, no padding."""
    uri: str = field(repr=False)
    """``otpauth://totp/Issuer:label?secret=...&issuer=...``"""
    qr_png: bytes = field(repr=False)
    """The URI as a QR code, PNG bytes."""
    expires_at: float
    """Confirm before this time (the injected clock's), or start again."""


class Totp:
    """TOTP factor: enrolment, verification, removal; state in ``store``, secrets sealed by ``box``.

    ``rng`` (bytes of randomness, ``secrets.token_bytes``) is there for tests that need a known secret.
    """

    def __init__(self, store: StateStore, box: SecretBox, *, issuer: str = "Portcullis", digits: int = 6,
                 step: int = 30, drift: int = 1, max_failures: int = 10, failure_window: float = 900.0,
                 pending_ttl: float = 600.0, clock: Callable[[], float] = time.time,
                 rng: Callable[[int], bytes] = secrets.token_bytes) -> None:
        if not 6 <= digits <= 10:
            raise ValueError(f"digits must be 6 to 10 (got {digits!r})")
        if step <= 0 or drift < 0 or max_failures < 1 or failure_window <= 0 or pending_ttl <= 0:
            raise ValueError("step, max_failures, failure_window and pending_ttl must be positive, drift >= 0")
        self._store = store
        self._box = box
        self._issuer = issuer
        self._digits = digits
        self._step = step
        self._drift = drift
        self._max_failures = max_failures
        self._window = float(failure_window)
        self._pending_ttl = float(pending_ttl)
        self._clock = clock
        self._rng = rng
        self._code = re.compile(f"[0-9]{{{digits}}}")

    # -- keys and sealing ------------------------------------------------------

    @staticmethod
    def _key(kind: str, sub: str) -> str:
        return f"mfa:totp:{kind}:{sub}"

    def _used_key(self, sub: str, counter: int) -> str:
        return f"mfa:totp:used:{sub}:{counter}"

    @staticmethod
    def _aad(sub: str, state: str) -> bytes:
        return b"portcullis.mfa.totp\x00" + state.encode() + b"\x00" + sub.encode()

    def _seal(self, sub: str, state: str, record: dict[str, object]) -> bytes:
        return self._box.seal(json.dumps(record).encode(), self._aad(sub, state))

    def _open(self, sub: str, state: str, sealed: bytes) -> dict[str, object] | None:
        """The record, or None if it does not open (another key, tampered): treated as absent."""
        try:
            record = json.loads(self._box.open(sealed, self._aad(sub, state)))
        except (SecretBoxError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    # -- enrolment ---------------------------------------------------------------

    async def begin_enrolment(self, sub: str, label: str) -> TotpEnrolment:
        """A fresh secret for ``sub``, pending until confirmed (replaces any pending one)."""
        secret = base64.b32encode(self._rng(SECRET_BYTES)).decode("ascii")
        now = self._clock()
        expires_at = now + self._pending_ttl
        await self._store.set(self._key(_PENDING, sub),
                              self._seal(sub, _PENDING, {"secret": secret, "expires_at": expires_at}),
                              ttl=self._pending_ttl)
        uri = self._totp(secret).provisioning_uri(name=label, issuer_name=self._issuer)
        return TotpEnrolment(secret=secret, uri=uri, qr_png=_qr_png(uri), expires_at=expires_at)

    async def confirm_enrolment(self, sub: str, code: str) -> float:
        """Make the pending secret active once ``code`` matches it; return the enrolment time."""
        self._check_format(code)
        pending_key = self._key(_PENDING, sub)
        raw = await self._store.get(pending_key)
        record = self._open(sub, _PENDING, raw) if raw is not None else None
        now = self._clock()
        expires_at = _number(record.get("expires_at")) if record is not None else None
        if record is None or not isinstance(record.get("secret"), str) or expires_at is None or now >= expires_at:
            raise GatewayError(ENROLMENT_NOT_FOUND)
        secret = str(record["secret"])
        counter = await self._check_code(sub, secret, code, now)
        # getdel: of two concurrent confirmations only one activates the secret.
        if await self._store.getdel(pending_key) is None:
            await self._give_back(sub)
            raise GatewayError(ENROLMENT_NOT_FOUND)
        async with self._store.batch() as b:
            b.set(self._used_key(sub, counter), b"1", ttl=self._used_ttl)
            b.set(self._key(_ACTIVE, sub), self._seal(sub, _ACTIVE, {"secret": secret, "enrolled_at": now}))
        await self._succeeded(sub, last_counter=counter)
        return now

    async def enrol_known(self, sub: str, secret: str, enrolled_at: float) -> None:
        """Store ``secret`` as ``sub``'s active secret, enrolled at ``enrolled_at`` (the demo's known secrets).

        The same record as :meth:`confirm_enrolment` stores, without a pending secret or a first code:
        for ``portcullis demo`` (``[step_up] demo_totp_file``), never for customers' own secrets.
        """
        try:
            raw = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=False)
        except (ValueError, TypeError):
            raise ValueError("the TOTP secret must be base32") from None
        if len(raw) < 10 or not math.isfinite(enrolled_at):
            raise ValueError("the TOTP secret must be at least 80 bits and enrolled_at a finite time")
        await self._store.set(self._key(_ACTIVE, sub),
                              self._seal(sub, _ACTIVE, {"secret": secret, "enrolled_at": enrolled_at}))

    async def enrolled_at(self, sub: str) -> float | None:
        """When the active secret was confirmed, or None if there is none."""
        record = await self._active(sub)
        if record is None:
            return None
        return _number(record.get("enrolled_at"))

    async def remove(self, sub: str) -> bool:
        """Forget the active and any pending secret; True if there was an active one.

        The failure counters stay, so removing and re-enrolling does not reset a lockout.
        """
        async with self._store.batch() as b:
            active = b.delete(self._key(_ACTIVE, sub))
            b.delete(self._key(_PENDING, sub), self._key("last", sub))
        return active.value > 0

    # -- verification --------------------------------------------------------------

    async def verify(self, sub: str, code: str) -> None:
        """Accept ``code`` once for ``sub``'s active secret, or raise GatewayError."""
        self._check_format(code)
        record = await self._active(sub)
        secret = record.get("secret") if record is not None else None
        if not isinstance(secret, str):
            raise GatewayError(FACTOR_NOT_ENROLLED)
        now = self._clock()
        counter = await self._check_code(sub, secret, code, now)
        async with self._store.batch() as b:
            last = b.get(self._key("last", sub))
            claimed = b.set_if_absent(self._used_key(sub, counter), b"1", ttl=self._used_ttl)
        last_counter = int(last.value) if last.value is not None and last.value.isdigit() else -1
        if counter <= last_counter or not claimed.value:
            await self._give_back(sub)
            raise GatewayError(OTP_REPLAYED)
        await self._succeeded(sub, last_counter=counter)

    async def _active(self, sub: str) -> dict[str, object] | None:
        raw = await self._store.get(self._key(_ACTIVE, sub))
        return self._open(sub, _ACTIVE, raw) if raw is not None else None

    @property
    def _used_ttl(self) -> float:
        # A step's code verifies for 2 * drift + 1 steps; remember it a step longer.
        return float((2 * self._drift + 2) * self._step)

    def _totp(self, secret: str) -> pyotp.TOTP:
        return pyotp.TOTP(secret, digits=self._digits, interval=self._step)

    def _check_format(self, code: str) -> None:
        if not isinstance(code, str) or not self._code.fullmatch(code):
            raise GatewayError(OTP_MALFORMED, f"the one-time code must be {self._digits} digits")

    async def _check_code(self, sub: str, secret: str, code: str, now: float) -> int:
        """The time-step counter ``code`` matches, within the limits; raises for a wrong code."""
        await self._reserve(sub, now)
        totp = self._totp(secret)
        current = int(now // self._step)
        matched: int | None = None
        for counter in range(current - self._drift, current + self._drift + 1):
            # Every candidate is compared, and each comparison is constant-time.
            if hmac.compare_digest(totp.generate_otp(counter).encode(), code.encode()):
                matched = counter
        if matched is None:
            await self._failed(sub, now)
        return matched

    async def _reserve(self, sub: str, now: float) -> None:
        """Count an attempt in the window, or raise OTP_LOCKED / OTP_THROTTLED (the attempt not counted)."""
        count_key, start_key = self._key("fail", sub), self._key("fail_start", sub)
        for _ in range(2):
            async with self._store.batch() as b:
                wait_until = b.get(self._key("next", sub))
                count = b.incr(count_key, 1, ttl=self._window)
                b.set_if_absent(start_key, repr(now).encode(), ttl=self._window)
                start = b.get(start_key)
            window_start = stored_float(start.value)
            if window_start is not None and now >= window_start + self._window:
                # The window is over by our clock, though the keys live on (TTLs run on the store's clock).
                await self._store.delete(count_key, start_key)
                continue
            break
        window_end = (window_start if window_start is not None else now) + self._window
        if count.value > self._max_failures:
            await self._give_back(sub)
            raise _retry_after(OTP_LOCKED, window_end - now)
        next_at = stored_float(wait_until.value)
        if next_at is not None and now < next_at:
            await self._give_back(sub)
            raise _retry_after(OTP_THROTTLED, next_at - now)

    async def _give_back(self, sub: str) -> None:
        """Undo the attempt's reservation (it was not a wrong code)."""
        await self._store.incr(self._key("fail", sub), -1, ttl=self._window)

    async def _succeeded(self, sub: str, last_counter: int) -> None:
        async with self._store.batch() as b:
            b.set(self._key("last", sub), str(last_counter).encode())
            b.incr(self._key("fail", sub), -1, ttl=self._window)
            b.delete(self._key("consecutive", sub), self._key("next", sub))

    async def _failed(self, sub: str, now: float) -> NoReturn:
        """Record a wrong code (its attempt is already counted in the window) and raise."""
        async with self._store.batch() as b:
            consecutive = b.incr(self._key("consecutive", sub), 1, ttl=self._window)
            count = b.get(self._key("fail", sub))
            start = b.get(self._key("fail_start", sub))
        n = consecutive.value
        failures = int(count.value) if count.value is not None and count.value.lstrip(b"-").isdigit() else 0
        left = max(0, self._max_failures - failures)
        if left == 0:
            window_start = stored_float(start.value)
            window_end = (window_start if window_start is not None else now) + self._window
            raise _retry_after(OTP_LOCKED, window_end - now, attempts_left=0)
        headers = None
        if n >= BACKOFF_AFTER:
            wait = min(2.0 ** (n - BACKOFF_AFTER), BACKOFF_CAP)
            await self._store.set(self._key("next", sub), repr(now + wait).encode(), ttl=wait)
            headers = {"Retry-After": str(math.ceil(wait))}
        raise GatewayError(OTP_INVALID, extra={"attempts_left": left}, headers=headers)


def _retry_after(kind: ErrorKind, seconds: float, **extra: object) -> GatewayError:
    return GatewayError(kind, extra=extra or None, headers={"Retry-After": str(max(1, math.ceil(seconds)))})


def _number(value: object) -> float | None:
    """A finite number read from a record, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _qr_png(text: str) -> bytes:
    image = qrcode.make(text)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
