"""The policy-engine interface and the decision document every engine returns.

The embedded Rego engine (policy issue) and an OPA-server backend plug in
behind `PolicyEngine`. Until the broker's Rego bundle lands, `BaselinePolicy`
enforces the route's role list in Python, so the decide step is real today.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class StepUp:
    acr: str
    methods: tuple[str, ...]
    max_age: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    deny: tuple[Reason, ...] = ()
    step_up: StepUp | None = None
    obligations: Mapping[str, Any] = field(default_factory=dict)
    policy_version: str = ""


def required_roles(tier: str, roles: Sequence[str]) -> frozenset[str]:
    """Roles a route admits: its own list; admin routes without one admit only `admin`."""
    if roles:
        return frozenset(roles)
    return frozenset({"admin"}) if tier == "admin" else frozenset()


class PolicyEngine(Protocol):
    """An engine may also name the members of input v1 it reads (``input_members``, a tuple of
    top-level names; None or absent: all of them): the decide step builds only those."""

    version: str

    async def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        """Judge one request. Raises GatewayError(POLICY_UNAVAILABLE) if it cannot."""
        ...


class BaselinePolicy:
    """Role-based allow/deny from the route configuration.

    A route with `roles` admits only callers holding one of them; admin-tier
    routes with no roles listed admit only `admin`. The pipeline enforces the
    same rule in Python first (RequireRole), so a degraded policy engine never
    widens access; here it keeps the engine's answer complete for what-if use.
    """

    version = "baseline-1"
    input_members: tuple[str, ...] | None = ("request", "subject")

    async def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        return self.evaluate_sync(policy_input)

    def evaluate_sync(self, policy_input: Mapping[str, Any]) -> Decision:
        request = policy_input["request"]
        subject = policy_input.get("subject") or {}
        roles = set(subject.get("roles", ()))
        needed = required_roles(request["tier"], request.get("roles") or ())
        if needed and not roles & needed:
            reason = Reason("role_forbidden", f"requires one of the roles: {', '.join(sorted(needed))}")
            return Decision(allow=False, deny=(reason,), policy_version=self.version)
        return _BASELINE_ALLOW  # frozen: one shared instance


# Shared by every baseline allow: frozen, and its obligations map is read-only.
_BASELINE_ALLOW = Decision(allow=True, obligations=MappingProxyType({}), policy_version=BaselinePolicy.version)
