"""Audit the decision: write-ahead for money, queued for reads.

For trade, transfer and admin routes the request is forwarded only once its
decision record is durable; a slow or broken sink fails them closed with
503 audit_unavailable. Other routes queue the record and go on (the sink
group-commits within milliseconds); a failed queued write is counted
(portcullis_audit_write_failures).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from audit.chain import canonical
from audit.sink import AuditSink, AuditWriteError
from gateway.background import Background
from gateway.config import GUARDED_TIERS
from gateway.context import RequestContext
from gateway.crypto import sm3
from gateway.crypto.key_errors import KeyErased
from gateway.errors import AUDIT_UNAVAILABLE, POLICY_DENIED, GatewayError

if TYPE_CHECKING:
    from gateway.decision_stats import DecisionStats
    from gateway.personal_data import PersonalData

log = logging.getLogger("portcullis.audit")

INPUT_FIELD = "policy_input"
"""The field name the sealed policy input is bound to (its AAD), for ``PersonalData.open``."""


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
    """Writes decision records; with ``inputs`` (``[crypto]`` on), the policy input sealed in them.

    Every record of a judged request (a decision, or a denial after the policy ran) carries
    ``input_sm3``: the SM3 of the canonical JSON of the input document the policy judged (the members
    the bundle reads). With ``inputs``, ``input`` holds that very JSON sealed under the customer's data
    key, so compliance can replay the decision exactly (``PersonalData.open(sub, "policy_input", ...)``
    gives the document; its canonical JSON hashes to ``input_sm3``), and an erasure makes it unreadable
    while the chain over it still verifies. A key in this process's cache seals at once (~5 us); a
    miss fetches it first (one state round trip, once per customer per ``cache_ttl``).
    """

    name = "audit"

    def __init__(self, sink: AuditSink, *, timeout: float, inputs: PersonalData | None = None) -> None:
        self._sink = sink
        self._timeout = timeout
        self._inputs = inputs
        self._sealing = Background()
        self.stats: DecisionStats | None = None
        """Counts every decision and denial of a judged request for the console's dashboard (in memory)."""

    def _input(self, ctx: RequestContext, record: dict[str, Any]) -> bytes | None:
        """Add the input's digest (and its sealed copy when the key is at hand); the JSON still to seal."""
        doc = ctx.policy_input
        if doc is None:
            return None
        text = canonical(doc)
        record["input_sm3"] = sm3.digest(text).hex()
        sub = record.get("sub")
        if self._inputs is None or not isinstance(sub, str) or not sub:
            return None
        sealed = self._inputs.seal_json_now(sub, INPUT_FIELD, text)
        if sealed is None:
            return text
        record["input"] = sealed
        return None

    async def _seal(self, record: dict[str, Any], text: bytes) -> None:
        assert self._inputs is not None
        try:
            record["input"] = await self._inputs.seal_json(record["sub"], INPUT_FIELD, text)
        except KeyErased:
            pass  # an erased customer: the digest alone
        except Exception as exc:  # the key store down: the digest alone; the record is never held back
            log.warning("policy input not sealed into its audit record: %s", type(exc).__name__)

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        d = ctx.decision
        if d is not None and not d.allow:
            # Never reached when the pipeline is whole (decide, obligations and step-up refuse
            # first); a deny that got this far is refused, never forwarded.
            raise GatewayError(POLICY_DENIED, extra={"reasons": [
                {"code": r.code, "message": r.message} for r in d.deny]})
        record = decision_record(ctx)
        if self.stats is not None:
            self.stats.observe(ctx, record)
        unsealed = self._input(ctx, record)
        if ctx.route.tier in GUARDED_TIERS or ctx.route.fail_mode == "closed":
            return self.write(record, unsealed)  # write-ahead: the pipeline waits until it is durable
        self._queue(record, unsealed)
        return None

    async def write(self, record: dict[str, Any], unsealed: bytes | None = None) -> None:
        """Submit and wait until durable (within the timeout), else 503 audit_unavailable."""
        if unsealed is not None:
            await self._seal(record, unsealed)
        try:
            await asyncio.wait_for(asyncio.shield(self._sink.submit(record)), self._timeout)
        except (TimeoutError, AuditWriteError):
            raise GatewayError(AUDIT_UNAVAILABLE) from None

    def queue(self, record: dict[str, Any], ctx: RequestContext | None = None) -> None:
        """Submit without waiting; the sink counts failures, never raised into the request.

        With ``ctx`` (a refusal of a judged request), the policy input goes in as in a decision record."""
        if ctx is not None and self.stats is not None:
            self.stats.observe(ctx, record)
        self._queue(record, self._input(ctx, record) if ctx is not None else None)

    def _queue(self, record: dict[str, Any], unsealed: bytes | None) -> None:
        if unsealed is None:
            self._sink.enqueue(record)
            return
        self._sealing.spawn(self._seal_then_enqueue(record, unsealed))

    async def _seal_then_enqueue(self, record: dict[str, Any], unsealed: bytes) -> None:
        await self._seal(record, unsealed)
        self._sink.enqueue(record)

    async def drain(self) -> None:
        """Wait for records whose input is being sealed (before the sink closes)."""
        await self._sealing.drain()
