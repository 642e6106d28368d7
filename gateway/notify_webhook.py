"""The production notifier: each notification POSTed to the broker's messaging webhook.

The body is the same JSON document the file sink writes (``ts``, ``kind``,
``recipient``, ``message``, ``fields``): whatever a caller puts in it is all
that leaves the gateway, so callers keep it to what the alert needs (the
customer's ``sub`` as recipient, what happened, when; never tokens, bodies,
IPs or device ids unless the alert is about them).

Each request carries ``X-Portcullis-Signature: sha256=<hex>``, HMAC-SHA256 of
the exact body bytes with the configured secret (the body's ``ts`` is inside
what is signed, so a receiver can refuse stale replays), and
``X-Portcullis-Delivery``, one id per notification that stays the same across
retries (a receiver de-duplicates on it).

Delivery: a 2xx answer is success. A 5xx answer, a connection error or a
timeout is retried up to ``retries`` more times, after ``backoff`` seconds,
doubling each time. A 4xx (the receiver refuses this notification: a bad
signature, an unknown recipient) is not retried, and neither is a redirect
(never followed: the signed body goes to the configured URL only). A
notification that cannot be delivered raises :class:`WebhookError` to the
caller, who decides whether the request fails (as with the other sinks).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp

from gateway.notify import Notification

SIGNATURE_HEADER = "X-Portcullis-Signature"
DELIVERY_HEADER = "X-Portcullis-Delivery"


class WebhookError(Exception):
    """A notification could not be delivered (``status`` is the last answer's, None without one)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(path: str | Path) -> bytes:
    """The HMAC key from a file (surrounding whitespace stripped); at least 16 bytes."""
    secret = Path(path).read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"the webhook secret in {str(path)!r} is shorter than 16 bytes")
    return secret


class WebhookNotifier:
    """POSTs signed notifications to one URL, retrying transient failures (see the module docstring)."""

    def __init__(self, url: str, secret: bytes, *, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.2, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty")
        self.url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def notify(self, kind: str, recipient: str, message: str,
                     fields: Mapping[str, str] | None = None) -> None:
        body = Notification(self._clock(), kind, recipient, message, dict(fields or {})).to_json().encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body),
                   DELIVERY_HEADER: secrets.token_hex(12)}
        last: WebhookError | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                await self._sleep(self._backoff * 2 ** (attempt - 1))
            try:
                async with self._client().post(self.url, data=body, headers=headers,
                                               allow_redirects=False) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = WebhookError(f"webhook not reachable: {type(exc).__name__}")
                continue
            if 200 <= status < 300:
                return
            if status < 500:  # refused (4xx) or redirected (3xx): the same request will not do better
                raise WebhookError(f"webhook refused the notification with status {status}", status)
            last = WebhookError(f"webhook answered {status}", status)
        assert last is not None
        raise last

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
