"""The gateway-owned invariant suite against tiny bundles: a good one passes, each bad one fails its invariant."""

from __future__ import annotations

import pytest

from gateway.policy.invariants import (
    INVARIANTS,
    base_input,
    check_samples,
    malformed_inputs,
    run_invariants,
    sample_inputs,
)
from gateway.policy.rego import RegoPolicy

GOOD = """package gateway

import rego.v1

default decision := {"allow": false, "deny": [{"code": "no_decision", "message": "no rule decided"}]}

decision := {"allow": true} if allow

decision := {"allow": false, "deny": [r | some r in deny]} if not allow

allow if {
	checks_ok
	count(deny) == 0
}

checks_ok if {
	account_ok
	frozen_ok
	route_ok
}

deny contains {"code": "not_allowed", "message": "the request is not allowed"} if not checks_ok

deny contains {"code": "account_forbidden", "message": "an account outside the token"} if not account_ok

deny contains {"code": "account_frozen", "message": "the account is frozen"} if not frozen_ok

deny contains {"code": "suitability", "message": "the product is above the investor's level"} if {
	input.request.route == "order_place"
	not suitability_ok
}

deny contains {"code": "bad_order", "message": "the order is malformed"} if {
	input.request.route == "order_place"
	not order_ok
}

deny contains {"code": "bad_transfer", "message": "the transfer is malformed"} if {
	input.request.route == "transfer"
	not transfer_ok
}

account_ok if {
	is_array(input.subject.accounts)
	is_string(input.request.account)
	input.request.account in input.subject.accounts
	every a in input.request.query_accounts { a in input.subject.accounts }
	every a in input.body_accounts { a in input.subject.accounts }
}

frozen_ok if input.account.frozen == false

route_ok if input.request.route in {"account", "positions", "orders_list", "order_cancel"}

route_ok if {
	input.request.route == "order_place"
	order_ok
	suitability_ok
}

route_ok if {
	input.request.route == "transfer"
	transfer_ok
}

order_ok if {
	is_object(input.order)
	is_object(input.instrument)
	input.order.symbol == input.instrument.symbol
	is_number(input.order.qty)
	input.order.qty > 0
	input.order.qty <= 1000000
	input.order.qty % input.instrument.board_lot == 0
	input.order.side in {"buy", "sell"}
	price_ok
}

price_ok if input.order.type == "market"

price_ok if {
	input.order.type == "limit"
	is_number(input.order.price)
	input.order.price > 0
}

levels := {"C1": 1, "C2": 2, "C3": 3, "C4": 4, "C5": 5, "R1": 1, "R2": 2, "R3": 3, "R4": 4, "R5": 5}

suitability_ok if input.order.side == "sell"

suitability_ok if {
	input.order.side == "buy"
	levels[input.account.investor_level] >= levels[input.instrument.risk_level]
	input.account.lowest_category == false
}

suitability_ok if {
	input.order.side == "buy"
	input.account.lowest_category == true
	levels[input.instrument.risk_level] <= 1
}

transfer_ok if {
	is_object(input.transfer)
	is_number(input.transfer.amount)
	input.transfer.amount > 0
}
"""

NAMES = [name for name, _, _ in INVARIANTS]


def _policy(source: str) -> RegoPolicy:
    return RegoPolicy.from_modules([("policy.rego", source)])


def _bad(old: str, new: str) -> RegoPolicy:
    assert old in GOOD, old
    return _policy(GOOD.replace(old, new, 1))


def _failed(policy: RegoPolicy) -> set[str]:
    return {r.name for r in run_invariants(policy) if not r.passed}


def test_good_bundle_passes_every_invariant() -> None:
    results = run_invariants(_policy(GOOD))
    assert [r.name for r in results] == NAMES
    for result in results:
        assert result.passed, (result.name, result.failures)
        assert result.cases > 0


def test_good_bundle_allows_the_plain_samples() -> None:
    # The invariants ask for denials only; the samples prove the good bundle is not deny-all,
    # so each bad bundle below fails for the reason it was built for.
    policy = _policy(GOOD)
    for label, doc in sample_inputs():
        assert policy.evaluate_sync(doc).allow, label
    for label, doc in malformed_inputs():
        assert not policy.evaluate_sync(doc).allow, label


def test_allow_everything_fails() -> None:
    policy = _policy('package gateway\n\nimport rego.v1\n\ndecision := {"allow": true}\n')
    failed = _failed(policy)
    assert {"default_deny", "foreign_account", "lowest_category", "frozen_account", "decision_schema"} <= failed


def test_ignoring_accounts_fails_only_foreign_account() -> None:
    policy = _bad("account_ok if {\n\tis_array(input.subject.accounts)",
                  "account_ok if {\n\ttrue\n}\n\nunused if {\n\tis_array(input.subject.accounts)")
    failed = _failed(policy)
    assert "foreign_account" in failed  # (no subject at all is let through too: default_deny, decision_schema)
    assert not failed & {"lowest_category", "frozen_account", "deny_codes"}
    result = next(r for r in run_invariants(policy) if r.name == "foreign_account")
    assert any("B9 in the path" in f for f in result.failures)
    assert any("in the query" in f for f in result.failures)
    assert any("in the body" in f for f in result.failures)


def test_c1_buying_r3_after_acknowledgement_fails_lowest_category() -> None:
    policy = _bad("suitability_ok if input.order.side == \"sell\"",
                  "suitability_ok if input.order.side == \"sell\"\n\n"
                  "suitability_ok if input.confirmation.risk_warning_acknowledged == true")
    assert _failed(policy) == {"lowest_category"}
    result = next(r for r in run_invariants(policy) if r.name == "lowest_category")
    assert result.failures
    assert all("risk warning acknowledged" in f for f in result.failures)
    assert any("buys R3" in f for f in result.failures)


def test_frozen_account_trading_fails_frozen_account() -> None:
    policy = _bad("frozen_ok if input.account.frozen == false", "frozen_ok if true")
    assert _failed(policy) == {"frozen_account"}
    result = next(r for r in run_invariants(policy) if r.name == "frozen_account")
    assert any("transfer" in f for f in result.failures)
    assert any("sell order" in f for f in result.failures)


def test_deny_without_code_fails_deny_codes() -> None:
    policy = _bad('{"code": "account_frozen", "message": "the account is frozen"}',
                  '{"code": "", "message": "the account is frozen"}')
    failed = _failed(policy)
    assert "deny_codes" in failed
    result = next(r for r in run_invariants(policy) if r.name == "deny_codes")
    assert any("frozen account" in f and "has no code" in f for f in result.failures)


def test_deny_with_no_reason_fails_deny_codes() -> None:
    policy = _policy('package gateway\n\nimport rego.v1\n\ndecision := {"allow": false, "deny": []}\n')
    failed = _failed(policy)
    assert "deny_codes" in failed
    assert "foreign_account" in failed  # a deny without a reason is not "denied with a reason"


def test_allowing_wrong_types_fails_decision_schema() -> None:
    # qty as a string compares greater than any number in Rego: an unchecked `qty > 0` lets it through.
    policy = _bad("\tis_number(input.order.qty)\n\tinput.order.qty > 0\n\tinput.order.qty <= 1000000\n"
                  "\tinput.order.qty % input.instrument.board_lot == 0\n",
                  "\tinput.order.qty > 0\n")
    assert _failed(policy) == {"decision_schema"}
    result = next(r for r in run_invariants(policy) if r.name == "decision_schema")
    assert any(f.startswith("qty as a string: allowed") for f in result.failures)


def test_a_runtime_conflict_is_reported_not_raised() -> None:
    # Two complete definitions that disagree: undefined on the Rvm despite `default decision`,
    # which the gateway refuses (policy_unavailable); the suite reports it.
    source = GOOD.replace('decision := {"allow": true} if allow',
                          'decision := {"allow": true} if allow\n\n'
                          'decision := {"allow": false, "deny": [{"code": "x", "message": "y"}]} if {\n'
                          '\tinput.request.route == "transfer"\n}', 1)
    results = {r.name: r for r in run_invariants(_policy(source))}
    schema = results["decision_schema"]
    assert not schema.passed
    assert any(f.startswith("transfer amount as a string: the decision does not parse: policy_unavailable")
               for f in schema.failures), schema.failures
    _, problems = check_samples(_policy(source), repeat=1)
    assert any(p.startswith("transfer: owner: policy_unavailable") for p in problems), problems


def test_samples_parse_and_stay_in_bound() -> None:
    policy = _policy(GOOD)
    outcomes, problems = check_samples(policy, repeat=2)
    assert problems == []
    assert len(outcomes) == len(sample_inputs()) + len(malformed_inputs())
    _, problems = check_samples(policy, repeat=1, bound=0.0)
    assert problems and all("over the 0 ms bound" in p for p in problems)


def test_base_input_has_every_member_of_v1() -> None:
    doc = base_input()
    assert set(doc) == {"request", "subject", "device", "network", "risk", "mfa", "clock", "order", "cancel",
                        "transfer", "body_accounts", "instrument", "quote", "account", "position", "counters",
                        "restricted", "confirmation"}
    assert base_input("transfer")["order"] is None and base_input("transfer")["transfer"] is not None


@pytest.mark.parametrize("name", NAMES)
def test_every_invariant_is_described(name: str) -> None:
    description = next(d for n, d, _ in INVARIANTS if n == name)
    assert description
