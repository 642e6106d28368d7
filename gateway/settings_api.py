"""The customer security settings API on the public listener: ``GET|PUT /api/me/security``.

Served by the gateway itself (no upstream), behind the same authentication as
every route: a JWT from a configured issuer, a DPoP proof when the token is
bound to a device key, and one of ``[customer_settings] roles``. The token's
``sub`` is the customer; nobody reads or changes another customer's settings.

* ``GET``: the settings in force and the pending changes with their times.
* ``PUT``: a JSON object naming the settings to change (gateway/settings.py
  ``parse_update``). Stronger settings apply at once; weaker ones need a recent
  step-up (401 ``insufficient_user_authentication`` with the RFC 9470
  challenge otherwise) and wait for the cooling-off. Every change is audited
  write-ahead and announced to the customer through the notifier
  (``kind: security_settings_changed``): what changed and when it takes
  effect, nothing else. An announcement that cannot be delivered refuses a
  weakening change (503 ``notify_unavailable``, nothing stored): a change the
  customer is not told about is exactly what the cooling-off exists to expose.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.admin_policy import require_recent_step_up
from gateway.config import CustomerSettingsConfig, RouteConfig
from gateway.context import RequestContext
from gateway.errors import (
    INVALID_JSON,
    NOTIFY_UNAVAILABLE,
    SETTINGS_BUSY,
    STATE_UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    GatewayError,
)
from gateway.notify import Notifier
from gateway.settings import Change, SettingsStore, parse_update, plan
from gateway.state.base import StateUnavailable
from gateway.steps.audit import AuditDecision, base_record

log = logging.getLogger("portcullis.settings")

PATH = "/api/me/security"
ROUTE_NAME = "customer_security"
ALERT_KIND = "security_settings_changed"
NOTIFY_TIMEOUT = 30.0
"""Seconds an announcement may take (a webhook's retries included) before the change is refused."""
BODY_LIMIT = 4096


def settings_route(cfg: CustomerSettingsConfig) -> RouteConfig:
    """The route the gateway serves itself: buffered body, fails closed, the configured roles."""
    return RouteConfig(name=ROUTE_NAME, methods=("GET", "PUT"), path=PATH, upstream="", tier="admin",
                       fail_mode="closed", body_limit=BODY_LIMIT, json_body=True, roles=cfg.roles)


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def alert_fields(changes: list[Change], request_id: str) -> dict[str, str]:
    """What the customer is told: each change and when it takes effect (no account, IP or device)."""
    lines = []
    for c in changes:
        if c.kind == "cancelled":
            lines.append(f"{c.field}: pending {_text(c.old)} cancelled, stays {_text(c.new)}")
        else:
            when = "now" if c.kind == "applied" else _stamp(c.effective_at)
            lines.append(f"{c.field}: {_text(c.old)} -> {_text(c.new)} from {when}")
    scheduled = [c.effective_at for c in changes if c.kind == "scheduled"]
    return {"changes": "; ".join(lines), "takes_effect": _stamp(max(scheduled)) if scheduled else "now",
            "request_id": request_id}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


class CustomerSettingsEndpoint:
    """The last step of the settings route's pipeline: answers GET and PUT (sets ``ctx.response``)."""

    name = "customer_settings"

    def __init__(self, cfg: CustomerSettingsConfig, store: SettingsStore, notifier: Notifier,
                 auditor: AuditDecision) -> None:
        self._cfg = cfg
        self._store = store
        self._notifier = notifier
        self._auditor = auditor

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.subject is not None  # authenticated by the steps before
        sub = ctx.subject.sub
        if ctx.method == "GET":
            record = await self._store.get(sub)
            ctx.response = _json(self._view(record.public(ctx.now)))
            return
        ctx.response = await self._put(ctx, sub)

    def _view(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "cooling_off": self._cfg.cooling_off}

    async def _put(self, ctx: RequestContext, sub: str) -> web.Response:
        if ctx.body and ctx.json_body is None:
            # ReadBody parses application/json only (an SM4 envelope is not for this route).
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "expected application/json")
        if not ctx.body:
            raise GatewayError(INVALID_JSON, "a JSON object body is required")
        update = parse_update(ctx.json_body, self._cfg.max_limit)
        if not await self._store.lock(sub, ctx.request_id):
            raise GatewayError(SETTINGS_BUSY)
        try:
            record = await self._store.get(sub)
            new_record, changes = plan(record, update, ctx.now, self._cfg.cooling_off, ctx.request_id)
            if not changes:
                return _json({**self._view(new_record.public(ctx.now)), "changes": []})
            weakening = any(c.lowers_protection for c in changes)
            if weakening:
                assert ctx.subject is not None
                require_recent_step_up(ctx.subject, self._cfg, ctx.now,
                                       what="changes that lower your protection")
            audit = base_record(ctx, "settings")
            audit.update({"action": "customer_settings_change", "changes": [c.public() for c in changes],
                          "lowers_protection": weakening})
            await self._auditor.write(audit)  # write-ahead: 503 audit_unavailable and nothing changes
            fields = alert_fields(changes, ctx.request_id)
            if weakening:
                # Told first: if the customer cannot be told, the weaker setting is not scheduled.
                if not await self._announce(sub, fields):
                    self._outcome(ctx, "notify_unavailable", notified=False)
                    raise GatewayError(NOTIFY_UNAVAILABLE, "the change could not be announced to you: "
                                       "nothing was changed, try again later")
                await self._store.put(sub, new_record)
                notified = True
            else:
                # Stronger settings are stored first: an alert that cannot go out must not keep them off.
                await self._store.put(sub, new_record)
                notified = await self._announce(sub, fields)
            self._outcome(ctx, "ok", notified=notified)
        except StateUnavailable:
            raise
        except GatewayError:
            raise
        except Exception as exc:
            raise GatewayError(STATE_UNAVAILABLE) from exc
        finally:
            try:
                await self._store.unlock(sub)
            except Exception:  # the lock's TTL frees it
                log.warning("customer_settings_unlock_failed")
        return _json({**self._view(new_record.public(ctx.now)), "changes": [c.public() for c in changes],
                      "notified": notified})

    async def _announce(self, sub: str, fields: dict[str, str]) -> bool:
        try:
            await asyncio.wait_for(self._notifier.notify(
                ALERT_KIND, sub, "Your security settings were changed", fields), NOTIFY_TIMEOUT)
        except Exception as exc:
            log.warning("customer_settings_notify_failed: %s", type(exc).__name__)
            return False
        return True

    def _outcome(self, ctx: RequestContext, outcome: str, *, notified: bool) -> None:
        record = base_record(ctx, "settings")
        record.update({"action": "customer_settings_outcome", "outcome": outcome, "notified": notified})
        self._auditor.queue(record)
