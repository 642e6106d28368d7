"""Builds the one policy input document from the request context (pure).

The schema is documented in docs/POLICIES.md; the policy issue extends it with
order bodies, account facts, reference data and counters.
"""

from __future__ import annotations

from typing import Any

from gateway.context import RequestContext


def build_input(ctx: RequestContext) -> dict[str, Any]:
    subject = ctx.subject
    risk = ctx.risk
    return {
        "request": {
            "id": ctx.request_id,
            "method": ctx.method,
            "path": ctx.path,
            "route": ctx.route.name,
            "tier": ctx.route.tier,
            "roles": list(ctx.route.roles),
            "account": ctx.account,
            "params": ctx.params,
        },
        "subject": None if subject is None else {
            "sub": subject.sub,
            "roles": list(subject.roles),
            "accounts": list(subject.accounts),
            "acr": subject.acr,
            "amr": list(subject.amr),
            "auth_time": subject.auth_time,
        },
        "device": {"id": ctx.device_id, "user_agent": ctx.headers.get("User-Agent")},
        "network": {"ip": ctx.client_ip},
        "risk": None if risk is None else {
            "score": risk.score, "level": risk.level,
            "factors": [{"code": f.code, "points": f.points} for f in risk.factors],
        },
        "clock": {"epoch": ctx.now},
        "body": ctx.json_body,
    }
