"""Builds the one policy input document (v1, docs/POLICIES.md) from the request context.

Pure: the facts step has already put provider answers and counters on
``ctx.facts``; here they are only arranged. Every member of v1 is always
present (null when it does not apply), so a policy never has to guess whether
a fact was looked up.

* ``request.query_accounts``: every account the path parameter and the query
  name (what the bind-account step checked).
* ``clock``: exchange-local (Asia/Shanghai, `zoneinfo`) from ``ctx.now``;
  ``trading_day`` from the calendar provider (null without providers).
* ``order`` / ``cancel`` / ``transfer``: chosen by the route's ``body_kind``;
  fields keep the client's JSON types, absent ones are null.
* ``body_accounts``: every ``account`` / ``account_id`` value in the JSON body.
* ``mfa.age_s``: whole seconds since the subject's ``auth_time`` (null without it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.context import RequestContext
from gateway.policy.facts import Facts, body_accounts, cancel_doc, exchange_clock, order_doc, transfer_doc
from gateway.steps.bind_account import requested_accounts

INPUT_VERSION = 1
RISK_ACK_HEADER = "X-Portcullis-Risk-Acknowledged"

_NO_FACTS = Facts()


def risk_warning_acknowledged(headers: Mapping[str, str]) -> bool:
    """The client resent the request with ``X-Portcullis-Risk-Acknowledged: true``."""
    return headers.get(RISK_ACK_HEADER, "").strip().lower() == "true"


def build_input(ctx: RequestContext) -> dict[str, Any]:
    subject = ctx.subject
    risk = ctx.risk
    facts = ctx.facts or _NO_FACTS
    kind = ctx.route.body_kind
    body = ctx.json_body
    auth_time = subject.auth_time if subject is not None else None
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
            "query_accounts": requested_accounts(ctx),
        },
        "subject": None if subject is None else {
            "sub": subject.sub,
            "roles": list(subject.roles),
            "accounts": list(subject.accounts),
            "acr": subject.acr,
            "amr": list(subject.amr),
            "auth_time": auth_time,
        },
        "device": {"id": ctx.device_id, "user_agent": ctx.headers.get("User-Agent")},
        "network": {"ip": ctx.client_ip},
        "risk": None if risk is None else {
            "score": risk.score, "level": risk.level,
            "factors": [{"code": f.code, "points": f.points} for f in risk.factors],
        },
        "mfa": {
            "acr": subject.acr if subject is not None else None,
            "age_s": max(int(ctx.now - auth_time), 0) if isinstance(auth_time, (int, float)) else None,
        },
        "clock": exchange_clock(ctx.now, facts.trading_day),
        "order": order_doc(body) if kind == "order" else None,
        "cancel": cancel_doc(ctx.params) if kind == "cancel" else None,
        "transfer": transfer_doc(body) if kind == "transfer" else None,
        "body_accounts": body_accounts(body) if body is not None else [],
        "instrument": facts.instrument,
        "quote": facts.quote,
        "account": facts.account,
        "position": facts.position,
        "counters": facts.counters,
        "restricted": facts.restricted,
        "confirmation": {"risk_warning_acknowledged": risk_warning_acknowledged(ctx.headers)},
    }
