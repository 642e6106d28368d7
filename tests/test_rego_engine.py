"""The embedded Rego engine (regorus Program + Rvm) and the strict decision document."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import POLICY_UNAVAILABLE, GatewayError
from gateway.policy.decision import parse_decision
from gateway.policy.engine import Decision, PolicyEngine, Reason, StepUp
from gateway.policy.rego import PolicyBundleError, RegoPolicy

POLICY = """package gateway

import rego.v1

default decision := {
	"allow": false,
	"deny": [{"code": "no_rule", "message": "no rule admits this request"}],
	"step_up": null,
	"obligations": {},
}

roles := {r | some r in input.subject.roles}

amount := object.get(input, ["body", "amount"], 0)

# Positive check: Rego orders values across types (any number < any string), so
# `amount > data.limits.max_order` would be false for a string threshold.
within_limit if {
	is_number(amount)
	is_number(data.limits.max_order)
	amount <= data.limits.max_order
}

too_large if not within_limit

deny_reasons contains {"code": "order_too_large", "message": sprintf("amount %v over the limit", [amount])} if too_large

deny_reasons contains {"code": "frozen", "message": "the account is frozen"} if input.request.account in data.frozen

decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}} if {
	input.request.tier == "read"
	"client" in roles
}

decision := {"allow": false, "deny": deny_reasons, "step_up": null, "obligations": {"alert": "large order"}} if {
	input.request.tier == "trade"
	count(deny_reasons) > 0
}

decision := {
	"allow": false,
	"deny": [{"code": "step_up_required", "message": "trade needs a second factor"}],
	"step_up": {"acr": "urn:portcullis:acr:mfa", "methods": ["totp", "face"], "max_age": 300},
	"obligations": {},
} if {
	input.request.tier == "trade"
	count(deny_reasons) == 0
	not "mfa" in input.subject.amr
}

decision := {"allow": true, "deny": [], "step_up": null, "obligations": {"require_confirmation": true}} if {
	input.request.tier == "trade"
	within_limit
	count(deny_reasons) == 0
	"mfa" in input.subject.amr
}
"""

DATA: dict[str, Any] = {"limits": {"max_order": 10_000}, "frozen": ["Z9"]}


def make_input(tier: str = "read", roles: tuple[str, ...] = ("client",), amr: tuple[str, ...] = ("pwd",),
               account: str = "A1", body: Any = None) -> dict[str, Any]:
    return {
        "request": {"id": "r1", "method": "GET", "path": "/api/x", "route": "x", "tier": tier,
                    "roles": [], "account": account, "params": {}},
        "subject": {"sub": "alice", "roles": list(roles), "accounts": [account], "acr": "pwd",
                    "amr": list(amr), "auth_time": 1795600000},
        "device": {"id": None, "user_agent": "ua"},
        "network": {"ip": "198.51.100.7"},
        "risk": {"score": 10, "level": "low", "factors": []},
        "clock": {"epoch": 1795600000.5},
        "body": body,
    }


@pytest.fixture(scope="module")
def policy() -> RegoPolicy:
    return RegoPolicy.from_modules([("gateway.rego", POLICY)], DATA)


def run(policy: RegoPolicy, policy_input: dict[str, Any]) -> Decision:
    return asyncio.run(policy.evaluate(policy_input))


def test_is_a_policy_engine(policy: RegoPolicy) -> None:
    engine: PolicyEngine = policy
    assert engine.version == policy.digest[:16]
    assert len(policy.digest) == 64


def test_allow(policy: RegoPolicy) -> None:
    decision = run(policy, make_input())
    assert decision == Decision(allow=True, policy_version=policy.version)


def test_deny_with_reasons_and_obligations(policy: RegoPolicy) -> None:
    decision = run(policy, make_input("trade", account="Z9", body={"amount": 50_000}))
    assert decision.allow is False
    assert {r.code for r in decision.deny} == {"order_too_large", "frozen"}
    assert Reason("order_too_large", "amount 50000 over the limit") in decision.deny
    assert decision.obligations == {"alert": "large order"}
    assert decision.step_up is None


def test_step_up(policy: RegoPolicy) -> None:
    decision = run(policy, make_input("trade", body={"amount": 10}))
    assert decision.allow is False
    assert decision.step_up == StepUp("urn:portcullis:acr:mfa", ("totp", "face"), 300)
    assert [r.code for r in decision.deny] == ["step_up_required"]


def test_allow_with_obligation(policy: RegoPolicy) -> None:
    decision = run(policy, make_input("trade", amr=("pwd", "mfa"), body={"amount": 10}))
    assert decision.allow is True
    assert decision.obligations == {"require_confirmation": True}


def test_default_deny_when_nothing_matches(policy: RegoPolicy) -> None:
    for policy_input in (make_input("admin"), make_input("read", roles=()), {}):
        decision = run(policy, policy_input)
        assert decision.allow is False
        assert [r.code for r in decision.deny] == ["no_rule"]


def test_undefined_decision_without_default_is_no_decision() -> None:
    policy = RegoPolicy.from_modules([("p.rego", 'package gateway\n\ndecision := {"allow": true} if input.ok\n')])
    decision = run(policy, {"ok": False})
    assert decision.allow is False
    assert [r.code for r in decision.deny] == ["no_decision"]
    assert run(policy, {"ok": True}).allow is True


def test_rvm_reuse_is_consistent(policy: RegoPolicy) -> None:
    inputs = [make_input(), make_input("trade", account="Z9", body={"amount": 50_000}),
              make_input("trade", body={"amount": 10}), make_input("admin")]
    expected = [run(policy, i) for i in inputs]
    for n in range(1000):
        assert policy.evaluate_sync(inputs[n % len(inputs)]) == expected[n % len(inputs)]


CONFLICT = """package gateway

default decision := {"allow": false, "deny": [{"code": "d", "message": ""}]}

decision := {"allow": true} if input.a
decision := {"allow": false, "deny": [{"code": "x", "message": ""}]} if input.a
"""

TYPE_ERROR_NO_DEFAULT = """package gateway

decision := {"allow": true} if upper(input.name) == "ALICE"
"""


def test_conflicting_rule_outputs_are_policy_unavailable() -> None:
    policy = RegoPolicy.from_modules([("c.rego", CONFLICT)])
    with pytest.raises(GatewayError) as info:
        policy.evaluate_sync({"a": True})
    assert info.value.kind is POLICY_UNAVAILABLE
    assert "conflict" in info.value.message
    assert policy.evaluate_sync({"a": False}).deny[0].code == "d"


def test_builtin_type_error_is_policy_unavailable() -> None:
    policy = RegoPolicy.from_modules([("t.rego", TYPE_ERROR_NO_DEFAULT)])
    with pytest.raises(GatewayError) as info:
        policy.evaluate_sync({"name": 42})
    assert info.value.kind is POLICY_UNAVAILABLE
    assert "upper" in info.value.message
    assert policy.evaluate_sync({"name": "alice"}).allow is True


def test_instruction_limit_is_policy_unavailable() -> None:
    src = 'package gateway\n\ndecision := {"allow": count([x | some x in numbers.range(1, input.n)]) > 0}\n'
    policy = RegoPolicy.from_modules([("loop.rego", src)])
    assert policy.evaluate_sync({"n": 10}).allow is True
    with pytest.raises(GatewayError) as info:
        policy.evaluate_sync({"n": 1_000_000})
    assert info.value.kind is POLICY_UNAVAILABLE
    assert "instruction limit" in info.value.message


def test_time_budget_is_policy_unavailable() -> None:
    policy = RegoPolicy.from_modules([("gateway.rego", POLICY)], DATA, time_budget=0.0)
    with pytest.raises(GatewayError) as info:
        policy.evaluate_sync(make_input())
    assert info.value.kind is POLICY_UNAVAILABLE
    assert "budget" in info.value.message


def test_erroring_deny_rule_is_skipped_by_the_rvm() -> None:
    """Known engine behaviour (module docstring): builtin errors are undefined, not errors.

    If a regorus upgrade starts raising them, this test fails loudly and the
    docs (and the authoring rule "allow from positive checks") can be revisited.
    """
    src = """package gateway

deny contains "big" if input.amount / input.div > 10

decision := {"allow": false, "deny": [{"code": c, "message": ""} | some c in deny]} if count(deny) > 0
decision := {"allow": true} if count(deny) == 0
"""
    policy = RegoPolicy.from_modules([("d.rego", src)])
    assert policy.evaluate_sync({"amount": 100, "div": 1}).allow is False
    assert policy.evaluate_sync({"amount": 100, "div": 0}).allow is True


def _with_decision(doc: Any) -> RegoPolicy:
    src = f"package gateway\n\ndecision := {json.dumps(doc)}\n"
    return RegoPolicy.from_modules([("m.rego", src)])


MALFORMED: list[Any] = [
    True,
    "allow",
    [],
    {},
    {"allow": "yes"},
    {"allow": 1},
    {"allow": True, "deny": [{"code": "x", "message": "m"}]},
    {"allow": True, "step_up": {"acr": "a", "methods": ["totp"], "max_age": None}},
    {"allow": False},
    {"allow": False, "deny": []},
    {"allow": False, "deny": "nope"},
    {"allow": False, "deny": [{"code": "", "message": "m"}]},
    {"allow": False, "deny": [{"code": "x"}]},
    {"allow": False, "deny": [{"code": "x", "message": 3}]},
    {"allow": False, "deny": [{"code": "x", "message": "m", "extra": 1}]},
    {"allow": False, "deny": ["x"]},
    {"allow": False, "step_up": {"acr": "a", "methods": [], "max_age": None}},
    {"allow": False, "step_up": {"acr": "a", "methods": ["password"], "max_age": None}},
    {"allow": False, "step_up": {"acr": "", "methods": ["totp"], "max_age": None}},
    {"allow": False, "step_up": {"acr": "a", "methods": ["totp"], "max_age": "300"}},
    {"allow": False, "step_up": {"acr": "a", "methods": ["totp"], "max_age": -1}},
    {"allow": False, "step_up": {"acr": "a", "methods": ["totp"], "max_age": 1.5}},
    {"allow": False, "step_up": "totp"},
    {"allow": True, "obligations": {"launch_missiles": True}},
    {"allow": True, "obligations": []},
    {"allow": True, "obligations": {"freeze_account": "yes"}},
    {"allow": True, "obligations": {"mask_fields": "ssn"}},
    {"allow": True, "stepup": None},
]


@pytest.mark.parametrize("doc", MALFORMED, ids=[json.dumps(d)[:60] for d in MALFORMED])
def test_malformed_decision_is_policy_unavailable(doc: Any) -> None:
    policy = _with_decision(doc)
    with pytest.raises(GatewayError) as info:
        policy.evaluate_sync({})
    assert info.value.kind is POLICY_UNAVAILABLE
    assert info.value.message.startswith("malformed policy decision")


def test_wellformed_variants_parse() -> None:
    decision = parse_decision({"allow": True}, "v")
    assert decision == Decision(allow=True, policy_version="v")
    decision = parse_decision({"allow": False, "deny": [], "obligations": {"freeze_account": True},
                               "step_up": {"acr": "a", "methods": ["sms"]}}, "v")
    assert decision.step_up == StepUp("a", ("sms",), None)
    assert decision.obligations == {"freeze_account": True}


def test_compile_error_names_file_and_line() -> None:
    bad = "package gateway\n\ndecision := {\"allow\": true} if {\n\tinput.x ==\n}\n"
    with pytest.raises(PolicyBundleError) as info:
        RegoPolicy.from_modules([("ok.rego", "package gateway\n\nx := 1\n"), ("broken.rego", bad)])
    err = info.value
    assert err.file == "broken.rego"
    assert err.line == 5
    assert "broken.rego:5:" in str(err)


def test_unsafe_variable_is_located() -> None:
    with pytest.raises(PolicyBundleError) as info:
        RegoPolicy.from_modules([("u.rego", "package gateway\n\ndecision := y\n")])
    assert (info.value.file, info.value.line) == ("u.rego", 3)


def test_missing_entry_point_is_a_bundle_error() -> None:
    with pytest.raises(PolicyBundleError, match="data.gateway.decision"):
        RegoPolicy.from_modules([("o.rego", "package other\n\ndecision := 1\n")])


def test_data_of_the_wrong_type() -> None:
    with pytest.raises(PolicyBundleError, match="JSON object"):
        RegoPolicy.from_modules([("gateway.rego", POLICY)], [1, 2])  # type: ignore[arg-type]
    # A threshold of the wrong type never lets a large order through (the policy checks types:
    # in Rego 50000 > "10000" is simply false, in OPA as in regorus).
    policy = RegoPolicy.from_modules([("gateway.rego", POLICY)], {"limits": {"max_order": "10000"}, "frozen": []})
    decision = policy.evaluate_sync(make_input("trade", amr=("mfa",), body={"amount": 50_000}))
    assert decision.allow is False
    # Missing threshold, a `frozen` list that is a number: fails closed too.
    policy = RegoPolicy.from_modules([("gateway.rego", POLICY)], {"limits": {}, "frozen": 7})
    assert policy.evaluate_sync(make_input("trade", amr=("mfa",), body={"amount": 5})).allow is False


def test_undefined_value_leaking_into_the_decision_is_policy_unavailable() -> None:
    """Rvm 0.13.0 puts the string "<undefined>" where an element's value is undefined
    (OPA and regorus.Engine drop the element); it must never pass as a value."""
    src = """package gateway

reasons contains {"code": "x", "message": sprintf("%v", [data.nope])} if input.deny

decision := {"allow": false, "deny": reasons} if input.deny
"""
    policy = RegoPolicy.from_modules([("leak.rego", src)])
    with pytest.raises(GatewayError) as info:
        policy.evaluate_sync({"deny": True})
    assert info.value.kind is POLICY_UNAVAILABLE
    assert "undefined" in info.value.message


def test_version_tracks_the_bundle() -> None:
    a = RegoPolicy.from_modules([("gateway.rego", POLICY)], DATA)
    b = RegoPolicy.from_modules([("gateway.rego", POLICY)], {"frozen": ["Z9"], "limits": {"max_order": 10_000}})
    c = RegoPolicy.from_modules([("gateway.rego", POLICY)], {**DATA, "limits": {"max_order": 10_001}})
    d = RegoPolicy.from_modules([("gateway.rego", POLICY + "\n")], DATA)
    assert a.version == b.version and a.digest == b.digest
    assert len({a.version, c.version, d.version}) == 3
    assert run(a, make_input()).policy_version == a.version


def test_from_directory(tmp_path: Path) -> None:
    (tmp_path / "gateway.rego").write_text(POLICY)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helpers.rego").write_text("package lib\n\nhello := \"hi\"\n")
    (tmp_path / "gateway_test.rego").write_text("package gateway_test\n\nthis is not even rego\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "limits.json").write_text(json.dumps(DATA["limits"]))
    (tmp_path / "data" / "frozen.json").write_text(json.dumps(DATA["frozen"]))
    policy = RegoPolicy.from_directory(tmp_path)
    assert [name for name, _ in policy.modules] == ["gateway.rego", "lib/helpers.rego"]
    assert policy.evaluate_sync(make_input("trade", account="Z9", body={"amount": 5})).deny[0].code == "frozen"
    assert RegoPolicy.from_directory(tmp_path).version == policy.version

    (tmp_path / "data" / "limits.json").write_text("{not json")
    with pytest.raises(PolicyBundleError, match="data/limits.json"):
        RegoPolicy.from_directory(tmp_path)
    (tmp_path / "data" / "limits.json").write_text(json.dumps({"max_order": 1}))
    assert RegoPolicy.from_directory(tmp_path).version != policy.version
    (tmp_path / "data" / "gateway.json").write_text("{}")
    with pytest.raises(PolicyBundleError, match="collide"):
        RegoPolicy.from_directory(tmp_path)


def test_engine_panic_is_policy_unavailable() -> None:
    """strings.count(s, "") panics inside regorus 0.13.0 (pyo3 PanicException is a BaseException)."""
    src = 'package gateway\n\ndecision := {"allow": strings.count(input.s, input.t) > 0}\n'
    policy = RegoPolicy.from_modules([("panic.rego", src)])
    with pytest.raises(GatewayError) as info:
        policy.evaluate_sync({"s": "abc", "t": ""})
    assert info.value.kind is POLICY_UNAVAILABLE
    assert "panicked" in info.value.message
    assert policy.evaluate_sync({"s": "abc", "t": "b"}).allow is True
