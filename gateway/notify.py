"""Security notifications to customers and staff ("a new factor was enrolled",
"account frozen").

They sit behind the small :class:`Notifier` interface because the real
channel (e-mail, SMS, the broker's messaging service) belongs to the
deployment; this module ships the sinks a single machine and the demo need:
JSON lines on the console or in a file, plus :class:`MemoryNotifier` for tests,
and the production one, an HTTP webhook with signed bodies and retries
(gateway/notify_webhook.py, ``sink = "webhook"``).

Notifications carry personal data (names, accounts, devices), so they go only
to their own sink, never to the application log: this module does not log
their content, the file is created owner-only (0600, folders 0700), and a
write failure propagates to the caller, who decides whether a missing alert
fails the request.

Each notification is one line written with one ``write`` on an ``O_APPEND``
descriptor, so several gateway processes can share a file without
interleaving. The file write runs in a worker thread to keep the event loop
free; a lock keeps lines in call order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable

from gateway.config import NotifierConfig
from gateway.errors import ConfigError

__all__ = [
    "ConsoleNotifier",
    "FileNotifier",
    "MemoryNotifier",
    "Notification",
    "Notifier",
    "build_notifier",
]


@runtime_checkable
class Notifier(Protocol):
    """Delivers one security notification to ``recipient``."""

    async def notify(
        self,
        kind: str,
        recipient: str,
        message: str,
        fields: Mapping[str, str] | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification as recorded: what the sinks serialise."""

    ts: float
    kind: str
    recipient: str
    message: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line (no trailing newline), UTC timestamp in ISO 8601."""
        stamp = datetime.fromtimestamp(self.ts, UTC).isoformat(timespec="milliseconds")
        record = {
            "ts": stamp.replace("+00:00", "Z"),
            "kind": self.kind,
            "recipient": self.recipient,
            "message": self.message,
            "fields": dict(self.fields),
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _notification(
    clock: Callable[[], float],
    kind: str,
    recipient: str,
    message: str,
    fields: Mapping[str, str] | None,
) -> Notification:
    return Notification(clock(), kind, recipient, message, dict(fields or {}))


class ConsoleNotifier:
    """Writes one JSON line per notification to ``stream`` (stderr by default).

    The default is looked up at each call, so a redirected ``sys.stderr`` is
    honoured. Writing a short line to a console is cheap enough to do inline.
    """

    def __init__(
        self, stream: TextIO | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._stream = stream
        self._clock = clock

    async def notify(
        self,
        kind: str,
        recipient: str,
        message: str,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        line = _notification(self._clock, kind, recipient, message, fields).to_json()
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()


class FileNotifier:
    """Appends one JSON line per notification to ``path``, creating its folders."""

    def __init__(
        self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = asyncio.Lock()

    async def notify(
        self,
        kind: str,
        recipient: str,
        message: str,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        line = _notification(self._clock, kind, recipient, message, fields).to_json()
        data = (line + "\n").encode("utf-8")
        async with self._lock:
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; loop for safety
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


class MemoryNotifier:
    """Keeps notifications in a list: the fake other modules' tests hand in."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.sent: list[Notification] = []
        self._clock = clock

    async def notify(
        self,
        kind: str,
        recipient: str,
        message: str,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self.sent.append(_notification(self._clock, kind, recipient, message, fields))


def build_notifier(cfg: NotifierConfig) -> Notifier:
    """The notifier ``cfg.sink`` names."""
    if cfg.sink == "console":
        return ConsoleNotifier()
    if cfg.sink == "file":
        if cfg.path is None:
            raise ValueError("notifier.path is required when notifier.sink = \"file\"")
        return FileNotifier(cfg.path)
    if cfg.sink == "webhook":
        from gateway.notify_webhook import WebhookNotifier, read_secret  # imports this module

        if cfg.url is None or cfg.secret_file is None:
            raise ValueError("notifier.url and notifier.secret_file are required when notifier.sink = \"webhook\"")
        try:
            secret = read_secret(cfg.secret_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"notifier.secret_file: {exc}") from None
        return WebhookNotifier(cfg.url, secret, timeout=cfg.timeout,
                               retries=cfg.retries, backoff=cfg.backoff)
    raise ValueError(f"unknown notifier sink {cfg.sink!r}")
