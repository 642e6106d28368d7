"""Carry out a decision's obligations, refuse frozen accounts, and mask responses.

Three steps (docs/POLICIES.md, "Decision document"):

* `RefuseFrozen`, right after the facts step: a trade or transfer on a frozen
  account (a gateway freeze, or ``account.frozen`` from the broker's account
  facts) stops with 403 ``account_frozen`` in Python, before any policy, so no
  bundle edit can let a frozen account trade.
* `Obligations`, right after the decide step: for a decision that carries
  obligations (most carry none: the step then costs one attribute test),

  1. ``freeze_account``: records a freeze of the request's account in the
     shared state store (gateway/freezes.py), notifies the customer and the
     compliance officers, audits it (awaited); a trade or transfer that
     caused a freeze is refused at once (403 ``account_frozen``);
  2. ``alert``: notifies every compliance officer (``policy_admin.officers``,
     else the recipient ``compliance``) with reason codes and the request id
     only; undeliverable: 503 ``notify_unavailable``;
  3. ``require_confirmation``: without ``X-Portcullis-Risk-Acknowledged: true``
     the request is refused with 428 ``confirmation_required`` (the body names
     the header); the resend is judged afresh by the policy;
  4. a deny is then refused (403 ``policy_denied``) as the decide step would;
  5. ``mask_fields``: the paths are kept on the context; `Forward` buffers the
     response and `MaskResponse` masks it.

  Obligations are never degraded: one that cannot be carried out refuses the
  request whatever the route's fail mode (an obligation the gateway ignored
  would be a silent allow).
* `MaskResponse`, after the forward step: masks the buffered JSON response;
  a response that is not JSON (or is compressed, or exceeds
  ``MASK_RESPONSE_LIMIT``) fails closed with 502 ``response_unmaskable``.

Every obligation carried out is audited (``type: obligation``, with its
``outcome``) and counted (``portcullis_obligations_total{obligation, outcome}``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import (
    ACCOUNT_FROZEN,
    CONFIRMATION_REQUIRED,
    NOTIFY_UNAVAILABLE,
    OBLIGATION_FAILED,
    POLICY_DENIED,
    RESPONSE_UNMASKABLE,
    GatewayError,
)
from gateway.freezes import Freeze, FreezeStore
from gateway.headers import drop_body_digests
from gateway.masking import mask_document, parse_paths
from gateway.notify import Notifier
from gateway.policy.engine import Decision
from gateway.policy.input import RISK_ACK_HEADER, risk_warning_acknowledged
from gateway.settings import SettingsStore
from gateway.state.base import StateUnavailable
from gateway.steps.audit import AuditDecision

log = logging.getLogger("portcullis.obligations")

FROZEN_BLOCKED_TIERS = frozenset({"trade", "transfer"})
COMPLIANCE_RECIPIENT = "compliance"
"""Who alerts go to when ``policy_admin.officers`` is empty (the deployment's compliance mailbox)."""
NOTIFY_TIMEOUT = 5.0
_MAX_ALERT_LABELS = 10
_MAX_ALERT_LABEL = 200
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json", re.IGNORECASE)

Count = Callable[[str, str], None]


def _no_count(obligation: str, outcome: str) -> None:
    return None


class RefuseFrozen:
    """403 ``account_frozen`` for a trade or transfer on a frozen account, whatever the policy says."""

    name = "refuse_frozen"

    def __call__(self, ctx: RequestContext) -> None:
        facts = ctx.facts
        if facts is None or ctx.route.tier not in FROZEN_BLOCKED_TIERS:
            return
        if facts.freeze is not None or (facts.account is not None and facts.account.get("frozen") is True):
            raise GatewayError(ACCOUNT_FROZEN)


def alert_labels(value: Any, redact: tuple[str, ...] = ()) -> list[str]:
    """The alert's text labels (pure): a string, or the strings of ``{"alerts": [...]}`` /
    ``{"code", "message"}`` objects; at most 10 of 200 characters. Values of ``redact`` (the
    subject, account, IP, device of the request) are cut out, so a policy cannot put them in."""
    found: list[str] = []

    def walk(item: Any, depth: int) -> None:
        if len(found) >= _MAX_ALERT_LABELS or depth > 3:
            return
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, Mapping):
            for key in ("code", "message"):
                if isinstance(item.get(key), str):
                    found.append(item[key])
            if isinstance(item.get("alerts"), list):
                for inner in item["alerts"]:
                    walk(inner, depth + 1)

    walk(value, 0)
    labels = []
    for label in found[:_MAX_ALERT_LABELS]:
        for secret in redact:
            if secret:
                label = label.replace(secret, "[redacted]")
        labels.append(label[:_MAX_ALERT_LABEL])
    return labels or ["policy_alert"]


def obligation_record(ctx: RequestContext, decision: Decision, obligation: str, outcome: str,
                      **detail: Any) -> dict[str, Any]:
    subject = ctx.subject
    return {
        "type": "obligation", "time": time.time(), "request_id": ctx.request_id,
        "sub": subject.sub if subject is not None else None, "account": ctx.account,
        "route": ctx.route.name, "tier": ctx.route.tier, "policy_version": decision.policy_version,
        "obligation": obligation, "outcome": outcome, **detail,
    }


class Obligations:
    name = "obligations"

    def __init__(self, freezes: FreezeStore, notifier: Notifier, auditor: AuditDecision, *,
                 officers: tuple[str, ...] = (), count: Count | None = None,
                 notify_timeout: float = NOTIFY_TIMEOUT) -> None:
        self._freezes = freezes
        self._notifier = notifier
        self._auditor = auditor
        self._officers = officers or (COMPLIANCE_RECIPIENT,)
        self._count = count or _no_count
        self._notify_timeout = notify_timeout

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        d = ctx.decision
        if d is None or not d.obligations:
            return None
        return self._carry_out(ctx, d)

    async def _carry_out(self, ctx: RequestContext, d: Decision) -> None:
        ob = d.obligations
        reasons = [r.code for r in d.deny]
        froze = ob.get("freeze_account") is True
        if froze:
            await self._freeze(ctx, d, reasons)
        if "alert" in ob:
            await self._alert(ctx, d, ob["alert"], reasons)
        if froze and ctx.route.tier in FROZEN_BLOCKED_TIERS:
            raise GatewayError(ACCOUNT_FROZEN)  # the request that caused the freeze goes no further
        if ob.get("require_confirmation") is True:
            self._confirmation(ctx, d, reasons)
        if not d.allow and d.step_up is None:
            raise GatewayError(POLICY_DENIED, extra={"reasons": [
                {"code": r.code, "message": r.message} for r in d.deny]})
        fields = ob.get("mask_fields")
        if fields:
            self._mask(ctx, d, fields)

    # -- freeze_account ---------------------------------------------------

    async def _freeze(self, ctx: RequestContext, d: Decision, reasons: list[str]) -> None:
        account = ctx.account
        if account is None:
            self._failed(ctx, d, "freeze_account", "the route names no account")
            raise GatewayError(OBLIGATION_FAILED, "the policy asked to freeze an account, but this route names none")
        subject = ctx.subject
        freeze = Freeze(account=account, time=time.time(), reasons=tuple(reasons) or ("policy_obligation",),
                        by="policy", request_id=ctx.request_id, sub=subject.sub if subject else None,
                        route=ctx.route.name, policy_version=d.policy_version)
        try:
            created = await self._freezes.freeze(freeze)
        except StateUnavailable:
            self._failed(ctx, d, "freeze_account", "state store unavailable")
            raise
        outcome = "applied" if created else "already_frozen"
        tell_customer = await self._customer_wants_freeze_notice(ctx, freeze)
        notified = await self._notify_freeze(freeze, tell_customer) if created else None
        self._count("freeze_account", outcome)
        # Awaited: the freeze is in force already (freezing is never held back by the trail),
        # and the request does not go on until its record is durable.
        await self._auditor.write(obligation_record(ctx, d, "freeze_account", outcome,
                                                    reasons=list(freeze.reasons), notified=notified))

    async def _customer_wants_freeze_notice(self, ctx: RequestContext, freeze: Freeze) -> bool:
        """The customer's own choice (alerts.freezes, docs/RISK.md): from the facts step when it read
        the settings, else one read now (a freeze is rare); unknown or unreadable: they are told."""
        settings = ctx.facts.settings if ctx.facts is not None else None
        if settings is None and freeze.sub:
            try:
                settings = (await SettingsStore(self._freezes.state).get(freeze.sub)).effective(ctx.now)
            except StateUnavailable:
                return True
        return settings is None or settings.freezes

    async def _notify_freeze(self, freeze: Freeze, tell_customer: bool = True) -> bool:
        fields = {"request_id": freeze.request_id or "", "reasons": ",".join(freeze.reasons)}
        sends = [self._notifier.notify("account_frozen", officer, "An account was frozen by policy",
                                       {**fields, "account": freeze.account}) for officer in self._officers]
        if freeze.sub and tell_customer:
            sends.append(self._notifier.notify(
                "account_frozen", freeze.sub,
                "Your account is frozen: trading and transfers are suspended pending a compliance review",
                {"account": freeze.account, "request_id": freeze.request_id or ""}))
        try:
            async with asyncio.timeout(self._notify_timeout):
                await asyncio.gather(*sends)
        except Exception:
            log.warning("freeze notification failed", exc_info=True)
            return False
        return True

    # -- alert --------------------------------------------------------------

    async def _alert(self, ctx: RequestContext, d: Decision, value: Any, reasons: list[str]) -> None:
        s = ctx.subject
        redact = tuple(v for v in (s.sub if s else None, ctx.account, ctx.client_ip, ctx.device_id) if v)
        labels = alert_labels(value, redact)
        fields = {"request_id": ctx.request_id, "route": ctx.route.name, "tier": ctx.route.tier,
                  "policy_version": d.policy_version, "reasons": ",".join(reasons), "alert": "; ".join(labels)}
        try:
            async with asyncio.timeout(self._notify_timeout):
                await asyncio.gather(*(self._notifier.notify("policy_alert", officer, "A policy raised an alert",
                                                             fields) for officer in self._officers))
        except Exception as exc:
            self._failed(ctx, d, "alert", "notifier unavailable")
            raise GatewayError(NOTIFY_UNAVAILABLE) from exc
        self._count("alert", "applied")
        self._auditor.queue(obligation_record(ctx, d, "alert", "applied", alert=labels, reasons=reasons,
                                              recipients=list(self._officers)))

    # -- require_confirmation -----------------------------------------------

    def _confirmation(self, ctx: RequestContext, d: Decision, reasons: list[str]) -> None:
        if risk_warning_acknowledged(ctx.headers):
            self._count("require_confirmation", "acknowledged")
            self._auditor.queue(obligation_record(ctx, d, "require_confirmation", "acknowledged"))
            return
        self._count("require_confirmation", "requested")
        self._auditor.queue(obligation_record(ctx, d, "require_confirmation", "requested", reasons=reasons))
        raise GatewayError(CONFIRMATION_REQUIRED, extra={
            "confirm_header": RISK_ACK_HEADER, "confirm_value": "true", "reasons": reasons})

    # -- mask_fields ----------------------------------------------------------

    def _mask(self, ctx: RequestContext, d: Decision, fields: Any) -> None:
        try:
            ctx.mask_fields = parse_paths(fields)
        except ValueError as exc:
            self._failed(ctx, d, "mask_fields", str(exc))
            raise GatewayError(OBLIGATION_FAILED, f"mask_fields: {exc}") from None

    def _failed(self, ctx: RequestContext, d: Decision, obligation: str, why: str) -> None:
        self._count(obligation, "failed")
        self._auditor.queue(obligation_record(ctx, d, obligation, "failed", error=why))


class MaskResponse:
    """Masks the buffered upstream response of a request with a mask_fields obligation."""

    name = "mask_response"

    def __init__(self, auditor: AuditDecision, *, count: Count | None = None) -> None:
        self._auditor = auditor
        self._count = count or _no_count

    def __call__(self, ctx: RequestContext) -> None:
        paths = ctx.mask_fields
        if paths is None:
            return
        d = ctx.decision
        assert d is not None  # mask_fields is set only from a decision
        resp = ctx.response
        try:
            masked = self._mask(resp, paths)
        except ValueError as exc:
            self._count("mask_fields", "failed")
            self._auditor.queue(obligation_record(ctx, d, "mask_fields", "failed", error=str(exc),
                                                  status=getattr(resp, "status", None)))
            raise GatewayError(RESPONSE_UNMASKABLE, f"the response cannot be masked: {exc}") from None
        self._count("mask_fields", "applied")
        self._auditor.queue(obligation_record(ctx, d, "mask_fields", "applied",
                                              fields=[".".join(p) for p in paths], masked=masked))

    @staticmethod
    def _mask(resp: Any, paths: tuple[tuple[str, ...], ...]) -> int:
        if not isinstance(resp, web.Response) or resp.prepared:
            raise ValueError("the response was not buffered")
        body = resp.body
        if body is None or body == b"":
            return 0
        if not isinstance(body, bytes):
            raise ValueError("the response body is not bytes")
        if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ValueError("the response is compressed")
        if _JSON_TYPE.fullmatch(resp.content_type) is None:
            raise ValueError(f"the response is {resp.content_type or 'untyped'}, not JSON")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("the response is not valid JSON") from None
        masked = mask_document(doc, paths)
        resp.body = orjson.dumps(doc)
        drop_body_digests(resp.headers)  # they described the unmasked body
        return masked
