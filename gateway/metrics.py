"""Prometheus metrics, on a registry of the gateway's own (one per Gateway).

Label values come only from configuration (route names, tiers) and the error
catalogue, so cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "portcullis_requests", "Requests by route, tier, outcome code and status",
            ["route", "tier", "outcome", "status"], registry=r)
        self.decisions = Counter(
            "portcullis_decisions", "Policy decisions by route, tier and decision",
            ["route", "tier", "decision"], registry=r)
        self.shadow_decisions = Counter(
            "portcullis_shadow_decisions", "Shadow-mode evaluations of a candidate bundle by outcome "
            "(same, differs, error: docs/POLICIES.md 'Shadow mode')", ["outcome"], registry=r)
        self.gateway_seconds = Histogram(
            "portcullis_gateway_seconds", "Time spent in the gateway itself (excluding upstream)",
            ["tier"], buckets=_BUCKETS, registry=r)
        self.upstream_seconds = Histogram(
            "portcullis_upstream_seconds", "Upstream response time", ["route"],
            buckets=_BUCKETS, registry=r)
        self.audit_failures = Gauge(
            "portcullis_audit_write_failures", "Queued audit records lost: past max_retained while the store"
            " refused writes, or held at shutdown without a spool (count)",
            registry=r)
        self.policy_errors = Counter(
            "portcullis_policy_errors",
            "Policy evaluations that failed, by reason (runtime_error, timeout, unavailable) and tier",
            ["reason", "tier"], registry=r)
        self.obligations = Counter(
            "portcullis_obligations", "Obligations of policy decisions by obligation and outcome",
            ["obligation", "outcome"], registry=r)
        self.step_ups = Counter(
            "portcullis_step_up_events",
            "Step-up events (docs/STEP_UP.md) by event (challenge, impossible, sms_sent, failed, progress, passed)"
            " and method",
            ["event", "method"], registry=r)
        self.customer_alerts = Counter(
            "portcullis_customer_alerts",
            "Customer alerts (docs/RISK.md 'Customer security settings') by kind and outcome"
            " (queued, sent, failed, off, dropped)", ["kind", "outcome"], registry=r)
        self.customer_alerts_pending = Gauge(
            "portcullis_customer_alerts_pending", "Customer alerts being sent", registry=r)
        self.envelopes = Counter(
            "portcullis_envelope_events", "SM4-GCM envelopes and session keys (docs/CRYPTO.md) by event"
            " (session_key_issued, agreement_failed, decrypted, invalid, encrypted)", ["event"], registry=r)
        self.personal_data = Counter(
            "portcullis_personal_data_events", "Personal data at rest (docs/KEYS.md) by event: sealed (audit"
            " records with personal data sealed under the customer's key), masked (could not be sealed: no"
            " customer, an erased key, the key store down), erased (customer keys destroyed here)", ["event"],
            registry=r)
        self.in_flight = Gauge("portcullis_in_flight_requests", "Requests being handled", registry=r)
        self.audit_backlog = Gauge("portcullis_audit_backlog", "Audit records not yet durable",
                                   registry=r)
        self.decision_stats_failures = Gauge(
            "portcullis_decision_stats_flush_failures", "Flushes of this process's decision counts (the console's"
            " dashboard) the state store refused (count; each retried on the next flush)", registry=r)
        self.audit_witness_backlog = Gauge(
            "portcullis_audit_witness_backlog", "Signed audit checkpoints the witness has not taken yet", registry=r)
        self.audit_witness_failures = Gauge(
            "portcullis_audit_witness_failures", "Pushes of audit checkpoints to the witness that failed (count;"
            " each is retried)", registry=r)

        # Children by label values: `labels()` costs ~4 us a call, a dict lookup ~0.1 us.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_request(self, route: str, tier: str, outcome: str, status: int,
                        gateway_s: float, upstream_s: float | None, decision: str | None) -> None:
        """Everything the server records about one finished request."""
        self._child(self.requests, route, tier, outcome, str(status)).inc()
        self._child(self.gateway_seconds, tier).observe(gateway_s)
        if upstream_s is not None:
            self._child(self.upstream_seconds, route).observe(upstream_s)
        if decision is not None:
            self._child(self.decisions, route, tier, decision).inc()

    def observe_rejected(self, code: str, status: int) -> None:
        """A request refused before it matched a route (bad path, unknown route...)."""
        self._child(self.requests, "-", "-", code, str(status)).inc()

    def policy_error(self, reason: str, tier: str) -> None:
        """A policy evaluation that failed (the request failed closed or degraded by its fail mode)."""
        self._child(self.policy_errors, reason, tier).inc()

    def obligation(self, obligation: str, outcome: str) -> None:
        """One obligation of a decision and what became of it (gateway/steps/obligations.py)."""
        self._child(self.obligations, obligation, outcome).inc()

    def step_up(self, event: str, method: str) -> None:
        """One step-up event: a challenge issued or impossible, a code sent, an answer failed or passed."""
        self._child(self.step_ups, event, method).inc()

    def customer_alert(self, kind: str, outcome: str) -> None:
        """One customer alert's outcome (gateway/customer_alerts.py)."""
        self._child(self.customer_alerts, kind, outcome).inc()

    def envelope(self, event: str) -> None:
        self._child(self.envelopes, event).inc()

    def personal(self, event: str) -> None:
        self._child(self.personal_data, event).inc()

    def watch_audit(self, backlog: Callable[[], float], failures: Callable[[], float]) -> None:
        self.audit_backlog.set_function(backlog)
        self.audit_failures.set_function(failures)

    def watch_witness(self, backlog: Callable[[], float], failures: Callable[[], float]) -> None:
        self.audit_witness_backlog.set_function(backlog)
        self.audit_witness_failures.set_function(failures)

    def watch_decision_stats(self, failures: Callable[[], float]) -> None:
        self.decision_stats_failures.set_function(failures)

    def render(self) -> bytes:
        return generate_latest(self.registry)
