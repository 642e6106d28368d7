"""Prometheus metrics, on a registry of the gateway's own (one per Gateway).

Label values come only from configuration (route names, tiers) and the error
catalogue, so cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

from collections.abc import Callable

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
        self.gateway_seconds = Histogram(
            "portcullis_gateway_seconds", "Time spent in the gateway itself (excluding upstream)",
            ["tier"], buckets=_BUCKETS, registry=r)
        self.upstream_seconds = Histogram(
            "portcullis_upstream_seconds", "Upstream response time", ["route"],
            buckets=_BUCKETS, registry=r)
        self.audit_failures = Counter(
            "portcullis_audit_write_failures", "Queued audit records that failed to write",
            registry=r)
        self.in_flight = Gauge("portcullis_in_flight_requests", "Requests being handled", registry=r)
        self.audit_backlog = Gauge("portcullis_audit_backlog", "Audit records not yet durable",
                                   registry=r)

    def watch_audit_backlog(self, fn: Callable[[], float]) -> None:
        self.audit_backlog.set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
