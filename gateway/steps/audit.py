"""Audit the decision: write-ahead for money, queued for reads.

For trade, transfer and admin routes the request is forwarded only once its
decision record is durable; a slow or broken sink fails them closed with
503 audit_unavailable. Other routes queue the record and go on (the sink
group-commits within milliseconds); a failed queued write is counted
(portcullis_audit_write_failures).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from audit.sink import AuditSink, AuditWriteError
from gateway.config import GUARDED_TIERS
from gateway.context import RequestContext
from gateway.errors import AUDIT_UNAVAILABLE, POLICY_DENIED, GatewayError


def base_record(ctx: RequestContext, kind: str) -> dict[str, Any]:
    subject = ctx.subject
    return {
        "type": kind,
        "time": ctx.now,
        "request_id": ctx.request_id,
        "sub": subject.sub if subject else None,
        "account": ctx.account,
        "route": ctx.route.name,
        "tier": ctx.route.tier,
        "method": ctx.method,
        "path": ctx.path,
        "client_ip": ctx.client_ip,
        "device_id": ctx.device_id,
        # A policy denial is audited from here (not decision_record): it names its bundle too.
        "policy_version": ctx.decision.policy_version if ctx.decision is not None else None,
        "obligations": sorted(ctx.decision.obligations) if ctx.decision is not None else [],
    }


def decision_record(ctx: RequestContext) -> dict[str, Any]:
    # One literal rather than base_record() + update(): this runs on every request.
    subject = ctx.subject
    route = ctx.route
    d = ctx.decision
    risk = ctx.risk
    return {
        "type": "decision",
        "time": ctx.now,
        "request_id": ctx.request_id,
        "sub": subject.sub if subject else None,
        "account": ctx.account,
        "route": route.name,
        "tier": route.tier,
        "method": ctx.method,
        "path": ctx.path,
        "client_ip": ctx.client_ip,
        "device_id": ctx.device_id,
        "decision": "allow" if d is None or d.allow else ("step_up" if d.step_up else "deny"),
        "reasons": [r.code for r in d.deny] if d and d.deny else [],
        "policy_version": d.policy_version if d else None,
        "obligations": sorted(d.obligations) if d and d.obligations else [],
        "risk_score": risk.score if risk else None,
        "risk_level": risk.level if risk else None,
        "risk_factors": [f.code for f in risk.factors] if risk else [],
        "degraded": list(ctx.degraded),
    }


class AuditDecision:
    name = "audit"

    def __init__(self, sink: AuditSink, *, timeout: float) -> None:
        self._sink = sink
        self._timeout = timeout

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        d = ctx.decision
        if d is not None and not d.allow:
            # Never reached when the pipeline is whole (decide, obligations and step-up refuse
            # first); a deny that got this far is refused, never forwarded.
            raise GatewayError(POLICY_DENIED, extra={"reasons": [
                {"code": r.code, "message": r.message} for r in d.deny]})
        record = decision_record(ctx)
        if ctx.route.tier in GUARDED_TIERS or ctx.route.fail_mode == "closed":
            return self.write(record)  # write-ahead: the pipeline waits until it is durable
        self.queue(record)
        return None

    async def write(self, record: dict[str, Any]) -> None:
        """Submit and wait until durable (within the timeout), else 503 audit_unavailable."""
        try:
            await asyncio.wait_for(asyncio.shield(self._sink.submit(record)), self._timeout)
        except (TimeoutError, AuditWriteError):
            raise GatewayError(AUDIT_UNAVAILABLE) from None

    def queue(self, record: dict[str, Any]) -> None:
        """Submit without waiting; the sink counts failures, never raised into the request."""
        self._sink.enqueue(record)
