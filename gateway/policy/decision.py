"""Strict parsing of the decision document a policy engine returns (pure).

Every engine (embedded Rego, a future OPA server) hands its raw decision
document to `parse_decision`, which either returns a `Decision` or raises
`GatewayError(POLICY_UNAVAILABLE)` naming what is wrong. A malformed decision
never becomes an allow: the pipeline fails closed on trade/transfer/admin.

The document (docs/POLICIES.md, "Decision document")::

    {
      "allow": bool,                                   # required
      "deny": [{"code": str (non-empty), "message": str}, ...],        # default []
      "step_up": null | {"acr": str (non-empty),
                         "methods": [str in {"totp", "sms", "face"}, ...] (non-empty),
                         "max_age": int >= 0 | null},                   # default null
      "obligations": {"freeze_account": bool, "alert": str | object,
                      "require_confirmation": bool, "mask_fields": [str, ...]}  # default {}
    }

Invariants checked beyond the shapes:

* no member other than the four above (a typo such as ``"stepup"`` is an error,
  not a silently ignored field);
* ``allow: true`` carries no deny reason and no step-up;
* ``allow: false`` carries at least one deny reason or a step-up: a deny always
  says why.

Malformed obligations raise `ObligationError` (a POLICY_UNAVAILABLE), which
fails closed on every route, fail-open reads included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import POLICY_UNAVAILABLE, GatewayError
from gateway.policy.engine import Decision, Reason, StepUp

STEP_UP_METHODS = frozenset({"totp", "sms", "face"})
OBLIGATIONS = frozenset({"freeze_account", "alert", "require_confirmation", "mask_fields"})
_TOP_LEVEL = frozenset({"allow", "deny", "step_up", "obligations"})


class ObligationError(GatewayError):
    """The decision's obligations are malformed (POLICY_UNAVAILABLE).

    Its own class because the decide step fails it closed on *every* route,
    fail-open reads included: degrading would forward the request without an
    obligation the policy meant (an unmasked profile, a missing freeze).
    """

    def __init__(self, message: str) -> None:
        super().__init__(POLICY_UNAVAILABLE, message)


def _fail(problem: str) -> GatewayError:
    return GatewayError(POLICY_UNAVAILABLE, f"malformed policy decision: {problem}")


def _bad_obligation(problem: str) -> ObligationError:
    return ObligationError(f"malformed policy decision: {problem}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _parse_reason(index: int, item: Any) -> Reason:
    where = f"deny[{index}]"
    if not isinstance(item, Mapping):
        raise _fail(f"{where} must be an object {{code, message}}, got {_type_name(item)}")
    unknown = set(item) - {"code", "message"}
    if unknown:
        raise _fail(f"{where} has unknown members: {', '.join(sorted(map(str, unknown)))}")
    code = item.get("code")
    if not isinstance(code, str) or not code:
        raise _fail(f"{where}.code must be a non-empty string")
    message = item.get("message")
    if not isinstance(message, str):
        raise _fail(f"{where}.message must be a string, got {_type_name(message)}")
    return Reason(code=code, message=message)


def _parse_step_up(value: Any) -> StepUp | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail(f"step_up must be null or an object, got {_type_name(value)}")
    unknown = set(value) - {"acr", "methods", "max_age"}
    if unknown:
        raise _fail(f"step_up has unknown members: {', '.join(sorted(map(str, unknown)))}")
    acr = value.get("acr")
    if not isinstance(acr, str) or not acr:
        raise _fail("step_up.acr must be a non-empty string")
    methods = value.get("methods")
    if not isinstance(methods, list) or not methods:
        raise _fail("step_up.methods must be a non-empty array")
    for method in methods:
        if not isinstance(method, str) or method not in STEP_UP_METHODS:
            raise _fail(f"step_up.methods: {method!r} is not one of {', '.join(sorted(STEP_UP_METHODS))}")
    if len(set(methods)) != len(methods):
        raise _fail("step_up.methods has duplicates")
    max_age = value.get("max_age")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
        raise _fail(f"step_up.max_age must be a non-negative integer or null, got {max_age!r}")
    return StepUp(acr=acr, methods=tuple(methods), max_age=max_age)


def _parse_obligations(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad_obligation(f"obligations must be an object, got {_type_name(value)}")
    unknown = set(value) - OBLIGATIONS
    if unknown:
        raise _bad_obligation(f"unknown obligations: {', '.join(sorted(map(str, unknown)))}")
    for key in ("freeze_account", "require_confirmation"):
        if key in value and not isinstance(value[key], bool):
            raise _bad_obligation(f"obligations.{key} must be a boolean, got {_type_name(value[key])}")
    if "alert" in value and not isinstance(value["alert"], (str, Mapping)):
        raise _bad_obligation(f"obligations.alert must be a string or an object, got {_type_name(value['alert'])}")
    if "mask_fields" in value:
        fields = value["mask_fields"]
        if not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields):
            raise _bad_obligation("obligations.mask_fields must be an array of non-empty strings")
    return dict(value)


def parse_decision(doc: Any, version: str) -> Decision:
    """Validate one decision document; raise GatewayError(POLICY_UNAVAILABLE) if it is malformed."""
    if not isinstance(doc, Mapping):
        raise _fail(f"the decision must be an object, got {_type_name(doc)}")
    unknown = set(doc) - _TOP_LEVEL
    if unknown:
        raise _fail(f"unknown members: {', '.join(sorted(map(str, unknown)))}")
    if "allow" not in doc:
        raise _fail("allow is missing")
    allow = doc["allow"]
    if not isinstance(allow, bool):
        raise _fail(f"allow must be a boolean, got {_type_name(allow)}")
    # Obligations first: a malformed one fails closed everywhere, whatever else is wrong.
    obligations = _parse_obligations(doc.get("obligations"))
    deny_doc = doc.get("deny", [])
    if deny_doc is None:
        deny_doc = []
    if not isinstance(deny_doc, list):
        raise _fail(f"deny must be an array, got {_type_name(deny_doc)}")
    deny = tuple(_parse_reason(i, item) for i, item in enumerate(deny_doc))
    step_up = _parse_step_up(doc.get("step_up"))
    if allow and deny:
        raise _fail(f"allow is true but deny lists {', '.join(r.code for r in deny)}")
    if allow and step_up is not None:
        raise _fail("allow is true but a step_up is requested")
    if not allow and not deny and step_up is None:
        raise _fail("allow is false with no deny reason and no step_up (a deny must carry a reason code)")
    return Decision(allow=allow, deny=deny, step_up=step_up, obligations=obligations, policy_version=version)
