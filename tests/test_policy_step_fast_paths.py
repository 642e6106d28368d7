"""The shortcuts of the policy step give exactly what the full path gives (no timing here)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.policy.decision import parse_decision
from gateway.policy.engine import Decision
from gateway.policy.facts import EXCHANGE_TZ, body_accounts, exchange_clock
from gateway.policy.invariants import base_input
from gateway.policy.rego import PLAIN_ALLOW_TEXTS, RegoPolicy, read_bundle

BUNDLE = Path(__file__).resolve().parent.parent / "policies"


@pytest.fixture(scope="module")
def bundle() -> RegoPolicy:
    return RegoPolicy.from_directory(BUNDLE)


@pytest.mark.parametrize("text", sorted(PLAIN_ALLOW_TEXTS))
def test_plain_allow_texts_parse_to_a_plain_allow(text: str) -> None:
    assert parse_decision(orjson.loads(text), "v") == Decision(allow=True, policy_version="v")


def test_the_rvm_prints_a_plain_allow_as_one_of_the_known_texts() -> None:
    # If an engine upgrade changes the layout the shortcut only stops being taken; this test says so.
    policy = RegoPolicy.from_modules([("p.rego", 'package gateway\n\ndecision := {"allow": true, "deny": [], '
                                                 '"step_up": null, "obligations": {}}\n')])
    assert policy._execute({}) in PLAIN_ALLOW_TEXTS


@pytest.mark.parametrize("route", ["account", "positions", "orders_list", "order_place", "order_cancel", "transfer"])
@pytest.mark.parametrize("side", ["buy", "sell"])
def test_bundle_decision_equals_the_full_parse(bundle: RegoPolicy, route: str, side: str) -> None:
    doc = base_input(route, side=side)
    assert bundle.evaluate_sync(doc) == parse_decision(bundle.evaluate_raw(doc), bundle.version)


@pytest.mark.parametrize("changes", [
    {"account": {"single_trade_limit": 1}},            # step-up
    {"account": {"frozen": True}},                     # deny
    {"counters": {"actions_last_second": 1000}},       # deny with an alert obligation
    {"instrument": {"risk_level": "R5"}},              # deny with require_confirmation
])
def test_decisions_other_than_a_plain_allow_take_the_full_path(bundle: RegoPolicy, changes: dict[str, Any]) -> None:
    doc = base_input()
    for member, patch in changes.items():
        doc[member] = {**doc[member], **patch}
    decision = bundle.evaluate_sync(doc)
    assert not decision.allow
    assert decision == parse_decision(bundle.evaluate_raw(doc), bundle.version)


@pytest.mark.parametrize(("package", "changes", "code"), [
    ("programme", {"counters": {"actions_last_second": 1000}}, "programme_trading_unreported"),
    ("ashare", {"order": {"qty": 150}}, "lot_size"),
    ("suitability", {"account": {"lowest_category": "no"}}, "suitability_facts_unavailable"),
])
def test_a_package_without_step_up_is_still_collected(package: str, changes: dict[str, Any], code: str) -> None:
    # gateway.rego's plain-allow branch counts each applying package's deny, step_up and obligation
    # on the Rvm; a package without `default step_up := set()` must send it to the collecting
    # branches, never past its denials.
    modules, data = read_bundle(BUNDLE, include_tests=False)
    edited = [(name, source.replace("\ndefault step_up := set()\n", "\n") if name == f"{package}.rego" else source)
              for name, source in modules]
    assert edited != modules
    policy = RegoPolicy.from_modules(edited, data)
    assert policy.evaluate_sync(base_input()).allow
    doc = base_input()
    for member, patch in changes.items():
        doc[member] = {**doc[member], **patch}
    decision = policy.evaluate_sync(doc)
    assert not decision.allow and code in {r.code for r in decision.deny}


def test_an_allow_with_an_obligation_is_not_a_plain_allow() -> None:
    policy = RegoPolicy.from_modules([("p.rego", 'package gateway\n\ndecision := {"allow": true, "deny": [], '
                                                 '"step_up": null, "obligations": {"mask_fields": ["cash"]}}\n')])
    assert policy.evaluate_sync({}).obligations == {"mask_fields": ["cash"]}


@pytest.mark.parametrize("moment", [
    datetime(2026, 11, 25, 0, 0, 0, tzinfo=EXCHANGE_TZ),
    datetime(2026, 11, 25, 9, 5, 7, 999999, tzinfo=EXCHANGE_TZ),
    datetime(2026, 11, 25, 23, 59, 59, 500000, tzinfo=EXCHANGE_TZ),
    datetime(2026, 1, 1, 13, 0, 0, tzinfo=UTC),
])
def test_clock_time_is_strftime(moment: datetime) -> None:
    now = moment.timestamp()
    t = datetime.fromtimestamp(now, EXCHANGE_TZ)
    clock = exchange_clock(now, True)
    assert clock["time"] == t.strftime("%H:%M:%S")
    assert clock["second_of_day"] == t.hour * 3600 + t.minute * 60 + t.second


@pytest.mark.parametrize(("body", "expected"), [
    ({"symbol": "X", "account": "A1", "qty": 1, "account_id": "B9"}, ["A1", "B9"]),
    ({"account_id": "B9", "account": "A1"}, ["B9", "A1"]),
    ({"symbol": "X"}, []),
    ({}, []),
    ({"account": {"id": "A1"}}, []),                   # an object is not an account id
    ({"account": "A1", "legs": [{"account": "B9"}]}, ["A1", "B9"]),
    ([{"account": "A1"}, {"account_id": "B9"}], ["A1", "B9"]),
    ("A1", []),
    (None, []),
])
def test_body_accounts_flat_and_nested(body: Any, expected: list[Any]) -> None:
    assert body_accounts(body) == expected
