"""The one object that travels through the decision pipeline.

Steps read what earlier steps wrote and add their own part; nothing else is
shared between them. The aiohttp request is carried opaquely for the two
edge steps that do I/O on it (body reading and forwarding): pure steps never
touch it, so they can be tested with a context built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import RouteConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from gateway.authn.tokens import Subject
    from gateway.mfa.tokens import StepUpClaims
    from gateway.policy.engine import Decision
    from gateway.policy.facts import Facts
    from gateway.proxy import BoundedBody
    from gateway.risk.scorer import RiskResult
    from gateway.risk.signals import RiskView
    from gateway.state.base import Batch


@dataclass(slots=True, eq=False)
class RequestContext:
    request_id: str
    method: str
    path: str
    query: str
    route: RouteConfig
    params: dict[str, str]
    headers: Mapping[str, str]
    client_ip: str
    client_port: int | None
    scheme: str
    started: float
    """perf_counter() at arrival, for the gateway's own latency."""
    now: float
    """Wall-clock time at arrival (seconds since the epoch)."""
    peer_trusted: bool = False
    body: bytes | None = None
    """The buffered body (trade, transfer and admin tiers)."""
    stream: BoundedBody | None = None
    """The bounded body stream (public and read tiers)."""
    json_body: Any = None
    subject: Subject | None = None
    device_id: str | None = None
    risk: RiskResult | None = None
    risk_view: RiskView | None = None
    """What the state round and network tables said for the risk signals (gateway/risk/engine.py)."""
    decision: Decision | None = None
    policy_input: dict[str, Any] | None = None
    """The input document the policy judged (the audit record keeps its SM3 and, sealed, the document)."""
    facts: Facts | None = None
    """Provider facts and counters for the policy input (the facts step)."""
    degraded: list[str] = field(default_factory=list)
    """Dependencies that failed open on this request (read routes only)."""
    step_up: StepUpClaims | None = None
    """The step-up token the request was retried with, once checked (gateway/steps/step_up.py)."""
    mask_fields: tuple[tuple[str, ...], ...] | None = None
    """JSON field paths to mask in the upstream's response (the mask_fields obligation)."""
    batch: Batch | None = None
    """State-store operations queued for the request's state round (gateway/steps/state_round.py)."""
    round_checks: list[Callable[[RequestContext], None]] | None = None
    """Checks run once the state round has run; they read the batch's results."""
    login_account: str | None = None
    """On a login route: the account logging in, normalised (gateway/steps/rate_limit.py)."""
    request: Any = None
    response: Any = None
    envelope: Any = None
    """An opened SM4-GCM envelope (gateway/envelope.py): the response is sealed with its session keys."""
    upstream_seconds: float | None = None

    @property
    def account(self) -> str | None:
        if self.route.account_param:
            return self.params.get(self.route.account_param)
        return None
