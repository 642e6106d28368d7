"""The alerts a customer chose in their security settings: a transfer made, a new device seen.

A customer switches these on or off at ``/api/me/security`` (gateway/settings.py,
``alerts.transfers``, ``alerts.new_device_login``; both on by default). They are
sent here, off the request's path: the request schedules a task and goes on, so
a slow or failing webhook never delays or fails the response. The tasks in
flight are bounded (``max_pending``): a burst beyond it drops the alert, counts
it (``dropped``) and audits it (``outcome: dropped``); every alert is audited
as ``queued``, then ``sent`` or ``failed`` (``type: customer_alert``).

What an alert carries is only what it needs (docs/RISK.md "Customer security
settings"): the customer's ``sub`` as recipient, the time, the request id, and

* ``transfer_made``: amount, currency, direction and the bank account id's last
  4 characters, masked (``****1234``);
* ``new_device_seen``: the device id's first 8 characters and the coarse region
  of the network tables (never the IP, never a city or coordinates).

Where the request already read the customer's settings (the facts step on a
transfer) they are passed in; otherwise (a device's first sight, which is rare)
the task reads them itself, so the usual request pays nothing.

The builders (:func:`transfer_fields`, :func:`new_device_fields`) are pure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.context import RequestContext
from gateway.notify import Notifier
from gateway.settings import SecuritySettings, SettingsStore

__all__ = ["CustomerAlerts", "TransferAlert", "mask_tail", "new_device_fields", "transfer_fields"]

log = logging.getLogger("portcullis.customer_alerts")

MAX_PENDING = 256
NOTIFY_TIMEOUT = 30.0
"""Seconds one alert may take, retries included (the webhook retries with backoff)."""

Audit = Callable[[dict[str, Any]], None]
Observe = Callable[[str, str], None]
"""Told each alert's kind and outcome (the gateway counts them in its metrics)."""


def _ignore(kind: str, outcome: str) -> None:
    return None


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def mask_tail(value: Any, keep: int = 4) -> str:
    """``****`` and the last ``keep`` characters (fewer of a short value: never the whole of it)."""
    if not isinstance(value, str) or not value:
        return ""
    shown = min(keep, len(value) // 2)
    return "****" + (value[-shown:] if shown else "")


def _amount(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    return f"{value:.2f}"


def transfer_fields(body: Any, now: float, request_id: str) -> dict[str, str]:
    """What a ``transfer_made`` alert says (pure): no names, no account numbers in full."""
    doc = body if isinstance(body, Mapping) else {}
    currency = doc.get("currency")
    direction = doc.get("direction")
    return {"amount": _amount(doc.get("amount")),
            "currency": currency[:8] if isinstance(currency, str) else "",
            "direction": direction[:8] if isinstance(direction, str) else "",
            "bank_account": mask_tail(doc.get("bank_account_id")),
            "time": _stamp(now), "request_id": request_id}


def new_device_fields(device_id: str, region: str | None, now: float, request_id: str) -> dict[str, str]:
    """What a ``new_device_seen`` alert says (pure): the device's first 8 characters, the region."""
    return {"device": device_id[:8], "region": region or "unknown", "time": _stamp(now),
            "request_id": request_id}


class CustomerAlerts:
    """Sends the customer's chosen alerts as bounded background tasks (see the module docstring)."""

    def __init__(self, notifier: Notifier, settings: SettingsStore, audit: Audit, *,
                 max_pending: int = MAX_PENDING, timeout: float = NOTIFY_TIMEOUT,
                 clock: Callable[[], float] = time.time, observe: Observe = _ignore) -> None:
        self._notifier = notifier
        self._observe = observe
        self._settings = settings
        self._audit = audit
        self._max_pending = max_pending
        self._timeout = timeout
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self.sent = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def transfer_made(self, sub: str, settings: SecuritySettings | None, body: Any, now: float,
                      request_id: str) -> None:
        """A transfer went through (the upstream answered 2xx); ``settings`` None: read them first."""
        if settings is not None and not settings.transfers:
            return
        fields = transfer_fields(body, now, request_id)
        self._schedule("transfer_made", sub, request_id, "transfers", settings,
                       "A transfer was made from your account", fields)

    def new_device_seen(self, sub: str, device_id: str, region: str | None, now: float,
                        request_id: str) -> None:
        """The risk engine saw this device for this customer for the first time."""
        fields = new_device_fields(device_id, region, now, request_id)
        self._schedule("new_device_seen", sub, request_id, "new_device_login", None,
                       "Your account was used from a new device", fields)

    def _schedule(self, kind: str, sub: str, request_id: str, alert: str,
                  settings: SecuritySettings | None, message: str, fields: dict[str, str]) -> None:
        record = {"type": "customer_alert", "time": self._clock(), "request_id": request_id, "sub": sub,
                  "kind": kind}
        if len(self._tasks) >= self._max_pending:
            self.dropped += 1
            self._outcome(record, "dropped")
            return
        task = asyncio.get_running_loop().create_task(
            self._send(record, alert, settings, sub, message, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._outcome(record, "queued")

    def _outcome(self, record: dict[str, Any], outcome: str, **extra: Any) -> None:
        self._observe(record["kind"], outcome)
        self._audit({**record, **extra, "outcome": outcome})

    async def _send(self, record: dict[str, Any], alert: str, settings: SecuritySettings | None,
                    sub: str, message: str, fields: dict[str, str]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                if settings is None:
                    settings = (await self._settings.get(sub)).effective(self._clock())
                if not settings.value(f"alerts.{alert}"):
                    self._outcome(record, "off", time=self._clock())
                    return
                await self._notifier.notify(record["kind"], sub, message, fields)
        except Exception as exc:
            self.failed += 1
            log.warning("customer alert not delivered: %s", type(exc).__name__)
            self._outcome(record, "failed", time=self._clock(), error=type(exc).__name__)
            return
        self.sent += 1
        self._outcome(record, "sent", time=self._clock())

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for the alerts in flight (at shutdown, before the notifier closes; tests)."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)


class TransferAlert:
    """After the forward step: a transfer the upstream accepted (2xx) alerts the customer."""

    name = "transfer_alert"

    def __init__(self, alerts: CustomerAlerts) -> None:
        self._alerts = alerts

    def __call__(self, ctx: RequestContext) -> None:
        if ctx.route.body_kind != "transfer" or ctx.subject is None:
            return
        status = getattr(ctx.response, "status", 0)
        if not 200 <= status < 300:
            return
        facts = ctx.facts
        settings = facts.settings if facts is not None else None
        self._alerts.transfer_made(ctx.subject.sub, settings, ctx.json_body, ctx.now, ctx.request_id)
