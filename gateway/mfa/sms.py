"""One-time codes by text message: phone numbers, senders, and the code's life in the state store.

* :func:`normalise_phone` / :func:`mask_phone`: E.164 numbers, and the form
  that may appear in responses and logs (``+86 138****0001``).
* :class:`SmsSender`: the outbound interface (STYLE.md 3). :class:`FileSmsSender`
  is the demo's "phone" (a JSON line per message in a 0600 file: it is the
  delivery channel, so it carries the code); :class:`WebhookSmsSender` POSTs
  to a provider. Nothing else ever logs a code: the webhook sender's log lines
  name the masked number and the status only.
* :class:`SmsOtp`: send and verify a code for a *purpose* (``challenge:<id>``,
  ``enrol:<sub>``).

A code is 6 digits from ``secrets.randbelow``; the store keeps only
HMAC-SHA256(``hmac_key``, purpose NUL code), its expiry and a random id, so a
read of the store reveals no code, and a code sent for one purpose does not
verify for another. A new send replaces the purpose's previous code (once the
new one is delivered: a failed send leaves the old code as it was).

Sending, in order: ``phone_invalid``; ``sms_cooldown`` (429, Retry-After) for
``cooldown`` seconds after a send for the same purpose; ``sms_send_limited``
(429, Retry-After) past ``per_phone`` or ``per_ip`` sends per window (token
buckets of that burst refilling over the window, so Retry-After is exact);
``sms_unavailable`` (503) when the sender fails: then the cooldown is given
back and no code is kept (the rate-limit tokens stay spent: each try reached
the provider).

Verifying: ``otp_malformed`` unless exactly 6 ASCII digits (not counted as an
attempt: it cannot match); ``otp_expired`` when there is no live code; each
other try is counted (atomically, per code) before the comparison, a wrong
code is ``otp_invalid`` with ``attempts_left``, and after ``max_attempts``
tries the code is dead (``otp_expired``). The right code is taken with
``getdel``, so of two concurrent verifications exactly one succeeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import aiohttp

from gateway.errors import (
    OTP_EXPIRED,
    OTP_INVALID,
    OTP_MALFORMED,
    PHONE_INVALID,
    SMS_COOLDOWN,
    SMS_SEND_LIMITED,
    SMS_UNAVAILABLE,
    ErrorKind,
    GatewayError,
)
from gateway.state.base import StateStore, stored_float

__all__ = [
    "CODE_DIGITS",
    "FileSmsSender",
    "SentCode",
    "SmsOtp",
    "SmsSendError",
    "SmsSender",
    "WebhookSmsSender",
    "mask_phone",
    "normalise_phone",
]

log = logging.getLogger("portcullis.mfa.sms")

CODE_DIGITS = 6
_CODE = re.compile(r"[0-9]{6}")
_SEPARATORS = re.compile(r"[ \t\-.()]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")

# ITU-T E.164 country codes: 1 and 7 are one digit, these are two, all others three.
_CC_2 = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split())


# --------------------------------------------------------------------------
# Phone numbers


def normalise_phone(raw: str) -> str:
    """The E.164 form (``+8613800000001``) of a number written with spaces, dashes, dots or brackets.

    It must start with ``+`` (or ``00``) and have 8 to 15 ASCII digits, the first not 0;
    otherwise GatewayError ``phone_invalid``.
    """
    if not isinstance(raw, str) or len(raw) > 32:
        raise GatewayError(PHONE_INVALID)
    phone = _SEPARATORS.sub("", raw)
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.fullmatch(phone):
        raise GatewayError(PHONE_INVALID)
    return phone


def _country_code_length(digits: str) -> int:
    if digits[0] in "17":
        return 1
    return 2 if digits[:2] in _CC_2 else 3


def mask_phone(phone: str) -> str:
    """``+86 138****0001``: the country code, at most the first 3 and last 4 digits of the rest.

    At least a third of the national number (and all but 7 digits) is masked. Something that
    is not a phone number is shown as ``****``, never as written.
    """
    try:
        digits = normalise_phone(phone)[1:]
    except GatewayError:
        return "****"
    cc = _country_code_length(digits)
    national = digits[cc:]
    masked = max(len(national) - 7, math.ceil(len(national) / 3))
    shown = len(national) - masked
    last = min(4, shown)
    first = shown - last
    return f"+{digits[:cc]} {national[:first]}{'*' * masked}{national[len(national) - last:]}"


# --------------------------------------------------------------------------
# Senders


class SmsSendError(Exception):
    """A text message could not be delivered; the message never contains its text."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class SmsSender(Protocol):
    async def send(self, phone: str, text: str) -> None:
        """Deliver ``text`` to the E.164 ``phone``; SmsSendError on failure."""


class FileSmsSender:
    """The demo's phone: one JSON line ``{"time", "to", "text"}`` per message, in a 0600 file."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self._path = Path(path)
        self._clock = clock

    @property
    def path(self) -> Path:
        return self._path

    def _append(self, line: bytes) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    async def send(self, phone: str, text: str) -> None:
        line = json.dumps({"time": self._clock(), "to": phone, "text": text}, ensure_ascii=False) + "\n"
        try:
            await asyncio.to_thread(self._append, line.encode())
        except OSError as exc:
            raise SmsSendError(f"cannot write to {str(self._path)!r}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"FileSmsSender({str(self._path)!r})"


class WebhookSmsSender:
    """POSTs ``{"to", "text"}`` as JSON with a bearer token to an SMS provider's webhook.

    An empty ``token`` sends no Authorization header. A 2xx answer is delivery.
    A 5xx answer, a connection error or a timeout (``timeout`` seconds per
    try) is retried up to ``retries`` more times after ``backoff`` seconds,
    doubling; a 4xx or a redirect (never followed: the token goes to the
    configured URL only) is not. Log lines name the masked
    number and the status, never the text.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 5.0, retries: int = 2, backoff: float = 0.5,
                 session: aiohttp.ClientSession | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("timeout must be positive, retries and backoff at least 0")
        self._url = url
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._backoff = backoff
        self._session = session
        self._own_session = session is None
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"WebhookSmsSender({self._url!r})"

    async def close(self) -> None:
        """Close the session this sender opened itself (not one it was given)."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, phone: str, text: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        to = mask_phone(phone)
        body = json.dumps({"to": phone, "text": text}).encode()
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        delay = self._backoff
        problem, status = "no attempt", None
        for attempt in range(self._retries + 1):
            if attempt:
                await self._sleep(delay)
                delay *= 2
            try:
                async with self._session.post(self._url, data=body, headers=headers, timeout=self._timeout,
                                              allow_redirects=False) as response:
                    status = response.status
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem, status = type(exc).__name__, None
                log.warning("sms webhook to %s: try %d failed (%s)", to, attempt + 1, problem)
                continue
            if 200 <= status < 300:
                log.info("sms webhook to %s: delivered (%d)", to, status)
                return
            problem = f"status {status}"
            log.warning("sms webhook to %s: try %d answered %d", to, attempt + 1, status)
            if status < 500:
                break
        raise SmsSendError(f"the SMS webhook did not deliver to {to}: {problem}", status)


# --------------------------------------------------------------------------
# Codes


@dataclass(frozen=True)
class SentCode:
    """A code was sent: until when it verifies, when the next may be sent, to which (masked) number."""

    expires_at: float
    resend_after: float
    to: str


class SmsOtp:
    """Text-message codes per purpose, in ``store``, delivered by ``sender``."""

    def __init__(self, store: StateStore, sender: SmsSender, *, hmac_key: bytes, ttl: float = 300.0,
                 max_attempts: int = 5, cooldown: float = 60.0, per_phone: tuple[int, float] = (5, 3600.0),
                 per_ip: tuple[int, float] = (20, 3600.0),
                 text: str = "Portcullis code: {code}. Valid 5 minutes. Never share it.",
                 clock: Callable[[], float] = time.time) -> None:
        if len(hmac_key) < 16:
            raise ValueError("hmac_key must be at least 16 bytes")
        if "{code}" not in text:
            raise ValueError("text must contain {code}")
        if ttl <= 0 or cooldown <= 0 or max_attempts < 1:
            raise ValueError("ttl and cooldown must be positive, max_attempts at least 1")
        for name, (count, window) in (("per_phone", per_phone), ("per_ip", per_ip)):
            if count < 1 or window <= 0:
                raise ValueError(f"{name} must be (sends >= 1, window seconds > 0)")
        self._store = store
        self._sender = sender
        self._key = bytes(hmac_key)
        self._ttl = float(ttl)
        self._max_attempts = max_attempts
        self._cooldown = float(cooldown)
        self._per_phone = per_phone
        self._per_ip = per_ip
        self._text = text
        self._clock = clock

    def __repr__(self) -> str:
        return f"SmsOtp(sender={self._sender!r}, ttl={self._ttl}, max_attempts={self._max_attempts})"

    def _digest(self, purpose: str, code: str) -> str:
        return hmac.new(self._key, purpose.encode() + b"\x00" + code.encode(), hashlib.sha256).hexdigest()

    def _phone_tag(self, phone: str) -> str:
        """The phone's name in the state store's keys: a keyed hash, never the number (personal data)."""
        return hmac.new(self._key, b"phone\x00" + phone.encode(), hashlib.sha256).hexdigest()[:32]

    async def send(self, purpose: str, phone: str, *, ip: str) -> SentCode:
        """Send a fresh code for ``purpose`` to ``phone``, replacing the purpose's previous code."""
        phone = normalise_phone(phone)
        now = self._clock()
        cooldown_key = f"mfa:sms:cooldown:{purpose}"
        resend_after = now + self._cooldown
        if not await self._store.set_if_absent(cooldown_key, repr(resend_after).encode(), ttl=self._cooldown):
            until = stored_float(await self._store.get(cooldown_key))
            if until is not None and until > now:
                raise _retry_after(SMS_COOLDOWN, until - now)
            # Over by our clock though the key lives on (its TTL runs on the store's clock): take it.
            await self._store.set(cooldown_key, repr(resend_after).encode(), ttl=self._cooldown)
        async with self._store.batch() as b:
            by_phone = b.token_bucket(f"mfa:sms:phone:{self._phone_tag(phone)}",
                                      self._per_phone[0] / self._per_phone[1],
                                      self._per_phone[0], now)
            by_ip = b.token_bucket(f"mfa:sms:ip:{ip}", self._per_ip[0] / self._per_ip[1], self._per_ip[0], now)
        refused = [wait for allowed, wait in (by_phone.value, by_ip.value) if not allowed]
        if refused:
            await self._store.delete(cooldown_key)
            raise _retry_after(SMS_SEND_LIMITED, max(refused))
        code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
        try:
            await self._sender.send(phone, self._text.format(code=code))
        except SmsSendError as exc:
            log.warning("sms code for %s to %s not sent: %s", purpose, mask_phone(phone), exc)
            await self._store.delete(cooldown_key)
            raise GatewayError(SMS_UNAVAILABLE) from None
        expires_at = now + self._ttl
        record = f"{secrets.token_hex(8)}:{self._digest(purpose, code)}:{expires_at!r}"
        await self._store.set(f"mfa:sms:code:{purpose}", record.encode(), ttl=self._ttl)
        return SentCode(expires_at=expires_at, resend_after=resend_after, to=mask_phone(phone))

    async def verify(self, purpose: str, code: str) -> None:
        """Accept ``code`` once if it is the live code for ``purpose``, or raise GatewayError."""
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise GatewayError(OTP_MALFORMED)
        code_key = f"mfa:sms:code:{purpose}"
        raw = await self._store.get(code_key)
        parsed = _parse(raw)
        now = self._clock()
        if parsed is None or now >= parsed[2]:
            raise GatewayError(OTP_EXPIRED)
        nonce, digest, expires_at = parsed
        tries = await self._store.incr(f"mfa:sms:tries:{purpose}:{nonce}", 1, ttl=self._ttl)
        if tries > self._max_attempts:
            raise GatewayError(OTP_EXPIRED)
        if not hmac.compare_digest(self._digest(purpose, code).encode(), digest.encode()):
            raise GatewayError(OTP_INVALID, extra={"attempts_left": self._max_attempts - tries})
        taken = await self._store.getdel(code_key)
        if taken != raw:
            if taken is not None:  # a new code replaced ours meanwhile: put it back, ours is gone
                remaining = _parse(taken)
                if remaining is not None and remaining[2] > now:
                    await self._store.set_if_absent(code_key, taken, ttl=remaining[2] - now)
            raise GatewayError(OTP_EXPIRED)


def _parse(raw: bytes | None) -> tuple[str, str, float] | None:
    """(id, digest, expires_at) of a stored code, or None."""
    if raw is None:
        return None
    parts = raw.decode("ascii", "replace").split(":")
    if len(parts) != 3:
        return None
    expires_at = stored_float(parts[2].encode())
    return (parts[0], parts[1], expires_at) if expires_at is not None else None


def _retry_after(kind: ErrorKind, seconds: float) -> GatewayError:
    return GatewayError(kind, headers={"Retry-After": str(max(1, math.ceil(seconds)))})
