"""Compare the active bundle's decision with a shadow candidate's (pure; docs/POLICIES.md "Shadow mode").

A decision's *effect* is ``step_up`` when it asks for a step-up, else
``allow`` or ``deny``. Kinds of change, a request counting once in each kind
that applies:

* ``allow_to_deny``, ``deny_to_allow``: the effect flips between allow and deny;
* ``step_up``: a step-up appears, disappears, or asks for another acr, methods or max_age;
* ``reasons``: same effect, another set of reason codes;
* ``obligations``: another set of obligations (or another value for one).

Reason codes that only one side gives are listed as ``added`` (the candidate
gives them) and ``removed`` (only the active bundle does): "by rule", since
each deny or step-up rule carries its code. Only codes, effects, acr and
obligation *names* leave this module: messages and obligation values can
quote the request (personal data), so they never reach a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.policy.engine import Decision

KINDS = ("allow_to_deny", "deny_to_allow", "step_up", "reasons", "obligations")
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
INVALID_CODE = "(invalid_code)"
"""What a reason code that is not a short identifier is reported as (it may carry request data)."""


def effect(d: Decision) -> str:
    if d.step_up is not None:
        return "step_up"
    return "allow" if d.allow else "deny"


def safe_code(code: str) -> str:
    return code if _CODE.fullmatch(code) else INVALID_CODE


@dataclass(frozen=True, slots=True)
class Difference:
    kinds: tuple[str, ...]
    added: tuple[str, ...] = ()
    """Reason codes only the candidate gives (safe codes, sorted)."""
    removed: tuple[str, ...] = ()
    """Reason codes only the active bundle gives."""
    obligations: tuple[str, ...] = ()
    """Names of obligations that differ (present on one side only, or with another value)."""


def compare(live: Decision, shadow: Decision) -> Difference | None:
    """None when both decisions are the same as far as the gateway acts on them."""
    if live.allow and shadow.allow and not live.obligations and not shadow.obligations:
        return None  # the usual case: two plain allows
    kinds: list[str] = []
    before, after = effect(live), effect(shadow)
    if before != after:
        if "step_up" in (before, after):
            kinds.append("step_up")
        else:
            kinds.append("allow_to_deny" if before == "allow" else "deny_to_allow")
    elif before == "step_up" and live.step_up != shadow.step_up:
        kinds.append("step_up")
    live_codes = {safe_code(r.code) for r in live.deny}
    shadow_codes = {safe_code(r.code) for r in shadow.deny}
    if before == after and live_codes != shadow_codes:
        kinds.append("reasons")
    names = sorted(k for k in live.obligations.keys() | shadow.obligations.keys()
                   if live.obligations.get(k) != shadow.obligations.get(k))
    if names:
        kinds.append("obligations")
    if not kinds:
        return None
    return Difference(kinds=tuple(kinds), added=tuple(sorted(shadow_codes - live_codes)),
                      removed=tuple(sorted(live_codes - shadow_codes)),
                      obligations=tuple(safe_code(str(n)) for n in names))


def brief(d: Decision) -> dict[str, Any]:
    """What a sample shows of one decision: no messages, no obligation values."""
    return {"effect": effect(d), "reasons": sorted({safe_code(r.code) for r in d.deny}),
            "step_up": None if d.step_up is None else {"acr": d.step_up.acr, "methods": list(d.step_up.methods),
                                                         "max_age": d.step_up.max_age},
            "obligations": sorted(safe_code(str(k)) for k in d.obligations)}
