"""Customer security settings, the pure core and its storage: validation, the cooling-off plan,
promotion of pending changes, the limits merged into the policy input, memory and real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse
from gateway.errors import ConfigError, GatewayError
from gateway.settings import (
    UNREADABLE,
    SecuritySettings,
    SettingsRecord,
    SettingsStore,
    lowers_protection,
    merge_limits,
    parse_record,
    parse_update,
    plan,
    settings_key,
)
from gateway.state.base import StateStore
from gateway.state.memory import MemoryStore

CAP = 100_000_000.0
T0 = 1_800_000_000.0
COOL = 3600.0

# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "update"), [
    ({"single_trade_limit": 50000}, {"single_trade_limit": 50000.0}),
    ({"daily_limit": 12.34}, {"daily_limit": 12.34}),
    ({"daily_limit": 0}, {"daily_limit": 0.0}),
    ({"single_trade_limit": None}, {"single_trade_limit": None}),
    ({"alerts": {"transfers": False, "freezes": True}}, {"alerts.transfers": False, "alerts.freezes": True}),
    ({"single_trade_limit": CAP}, {"single_trade_limit": CAP}),
], ids=["int", "fen", "zero", "null", "alerts", "cap"])
def test_a_valid_update_names_exactly_what_it_changes(body: dict[str, Any], update: dict[str, Any]) -> None:
    assert parse_update(body, CAP) == update


@pytest.mark.parametrize(("body", "message"), [
    ([], "the body must be a JSON object"),
    ({}, "nothing to change: name at least one setting"),
    ({"alerts": {}}, "nothing to change: name at least one setting"),
    ({"limit": 5}, "limit: unknown setting (expected single_trade_limit, daily_limit, alerts)"),
    ({"single_trade_limit": "50000"}, "single_trade_limit: must be a number of CNY or null (got a string)"),
    ({"single_trade_limit": True}, "single_trade_limit: must be a number of CNY or null (got a boolean)"),
    ({"daily_limit": -1}, "daily_limit: must be a finite number >= 0"),
    ({"daily_limit": float("inf")}, "daily_limit: must be a finite number >= 0"),
    ({"daily_limit": float("nan")}, "daily_limit: must be a finite number >= 0"),
    ({"daily_limit": CAP + 1}, "daily_limit: at most 100000000 CNY"),
    ({"daily_limit": 1.005}, "daily_limit: at most two decimals (fen)"),
    ({"alerts": []}, "alerts: must be an object of booleans (got an array)"),
    ({"alerts": {"sms": True}}, "alerts.sms: unknown alert (expected new_device_login, transfers, freezes)"),
    ({"alerts": {"transfers": 0}}, "alerts.transfers: must be true or false (got a number)"),
    ({"alerts": {"freezes": None}}, "alerts.freezes: must be true or false (got null)"),
], ids=["array", "empty", "empty-alerts", "unknown", "string", "bool", "negative", "inf", "nan", "cap",
        "fractions", "alerts-array", "unknown-alert", "alert-int", "alert-null"])
def test_an_invalid_update_is_settings_invalid_naming_the_member(body: Any, message: str) -> None:
    with pytest.raises(GatewayError) as err:
        parse_update(body, CAP)
    assert (err.value.status, err.value.code, err.value.message) == (400, "settings_invalid", message)


@pytest.mark.parametrize(("name", "old", "new", "weaker"), [
    ("single_trade_limit", 100.0, 200.0, True), ("single_trade_limit", 200.0, 100.0, False),
    ("single_trade_limit", None, 100.0, False), ("single_trade_limit", 100.0, None, True),
    ("alerts.transfers", True, False, True), ("alerts.transfers", False, True, False),
])
def test_which_changes_lower_protection(name: str, old: Any, new: Any, weaker: bool) -> None:
    assert lowers_protection(name, old, new) is weaker


# -- the plan: stronger at once, weaker after the cooling-off -----------------------------------


def test_a_stronger_setting_applies_at_once() -> None:
    record, changes = plan(SettingsRecord(), {"single_trade_limit": 50000.0, "alerts.transfers": True}, T0, COOL)
    assert record.settings.single_trade_limit == 50000.0 and record.pending == ()
    assert [(c.field, c.kind, c.effective_at) for c in changes] == [("single_trade_limit", "applied", T0)]


def test_a_weaker_setting_waits_for_the_cooling_off_then_applies() -> None:
    start = SettingsRecord(SecuritySettings(single_trade_limit=50000.0))
    record, changes = plan(start, {"single_trade_limit": 150000.0, "alerts.freezes": False}, T0, COOL, "r1")
    assert [(c.field, c.kind, c.effective_at) for c in changes] == [
        ("single_trade_limit", "scheduled", T0 + COOL), ("alerts.freezes", "scheduled", T0 + COOL)]
    assert record.effective(T0 + COOL - 0.001) == SecuritySettings(single_trade_limit=50000.0)
    assert record.effective(T0 + COOL) == SecuritySettings(single_trade_limit=150000.0, freezes=False)
    assert record.at(T0 + COOL).pending == ()
    assert record.public(T0)["pending"][1] == {"field": "alerts.freezes", "value": False,
                                               "requested_at": T0, "effective_at": T0 + COOL}


def test_asking_again_for_the_pending_value_keeps_its_time() -> None:
    start = SettingsRecord(SecuritySettings(daily_limit=1000.0))
    first, _ = plan(start, {"daily_limit": 2000.0}, T0, COOL)
    again, changes = plan(first, {"daily_limit": 2000.0}, T0 + 60, COOL)
    assert changes == [] and again.pending[0].effective_at == T0 + COOL


def test_a_stronger_value_cancels_a_pending_weaker_one() -> None:
    start = SettingsRecord(SecuritySettings(daily_limit=1000.0))
    pending, _ = plan(start, {"daily_limit": 5000.0}, T0, COOL)
    lower, changes = plan(pending, {"daily_limit": 500.0}, T0 + 10, COOL)
    assert lower.pending == () and lower.settings.daily_limit == 500.0
    assert [(c.kind, c.old, c.new) for c in changes] == [("applied", 1000.0, 500.0)]
    kept, changes = plan(pending, {"daily_limit": 1000.0}, T0 + 10, COOL)  # back to the value in force
    assert kept.pending == () and kept.effective(T0 + COOL) == start.settings
    assert [(c.kind, c.old, c.new) for c in changes] == [("cancelled", 5000.0, 1000.0)]


def test_removing_a_limit_is_weaker_and_waits() -> None:
    start = SettingsRecord(SecuritySettings(single_trade_limit=1000.0))
    record, changes = plan(start, {"single_trade_limit": None}, T0, COOL)
    assert changes[0].kind == "scheduled" and record.effective(T0).single_trade_limit == 1000.0
    assert record.effective(T0 + COOL).single_trade_limit is None


# -- records ------------------------------------------------------------------------------


def test_a_record_round_trips_through_json() -> None:
    record, _ = plan(SettingsRecord(SecuritySettings(single_trade_limit=1.5, new_device_login=False)),
                     {"single_trade_limit": 99.99, "alerts.transfers": False}, T0, COOL, "r9")
    assert parse_record(record.to_json()) == record


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"v":1}', b'{"settings":{"single_trade_limit":"x"}}',
                                 b'{"settings":{"single_trade_limit":null,"daily_limit":null,'
                                 b'"alerts":{"new_device_login":1,"transfers":true,"freezes":true}},"pending":[]}'])
def test_an_unreadable_record_steps_up_every_order(raw: bytes) -> None:
    assert parse_record(raw).settings == UNREADABLE
    assert UNREADABLE.single_trade_limit == 0.0 and UNREADABLE.transfers is True


def test_no_record_means_the_defaults() -> None:
    assert parse_record(None).effective(T0) == SecuritySettings()
    assert SecuritySettings().public() == {"single_trade_limit": None, "daily_limit": None, "alerts": {
        "new_device_login": True, "transfers": True, "freezes": True}}


# -- the policy input ---------------------------------------------------------------------

BROKER = {"id": "A1", "single_trade_limit": 200000, "daily_limit": 500000, "frozen": False}


@pytest.mark.parametrize(("mine", "single", "daily"), [
    (SecuritySettings(), 200000, 500000),
    (SecuritySettings(single_trade_limit=50000.0), 50000, 500000),
    (SecuritySettings(single_trade_limit=300000.0, daily_limit=0.0), 200000, 0),
    (SecuritySettings(daily_limit=1234.5), 200000, 1234.5),
])
def test_the_input_holds_the_stricter_of_the_brokers_and_the_customers_limit(
        mine: SecuritySettings, single: float, daily: float) -> None:
    merged = merge_limits(BROKER, mine)
    assert (merged["single_trade_limit"], merged["daily_limit"]) == (single, daily)
    assert BROKER["single_trade_limit"] == 200000  # never modified in place


def test_the_customers_limit_applies_where_the_broker_has_none() -> None:
    merged = merge_limits({**BROKER, "single_trade_limit": None}, SecuritySettings(single_trade_limit=7.0))
    assert merged["single_trade_limit"] == 7
    broken = {**BROKER, "daily_limit": "lots"}  # the policy denies account_facts_unavailable for it
    assert merge_limits(broken, SecuritySettings(daily_limit=1.0))["daily_limit"] == "lots"


# -- storage on memory and real Redis ---------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        return MemoryStore()
    redis: StateStore = request.getfixturevalue("redis_store")
    return redis


async def test_settings_are_stored_per_customer(store: StateStore) -> None:
    settings = SettingsStore(store)
    record, _ = plan(SettingsRecord(), {"daily_limit": 100.0}, T0, COOL)
    await settings.put("alice", record)
    assert (await settings.get("alice")).settings.daily_limit == 100.0
    assert (await settings.get("bob")) == SettingsRecord()
    assert await store.get(settings_key("alice")) == record.to_json()


async def test_one_writer_at_a_time_per_customer(store: StateStore) -> None:
    settings = SettingsStore(store, lock_ttl=5)
    assert await settings.lock("alice", "r1") is True
    assert await settings.lock("alice", "r2") is False
    assert await settings.lock("bob", "r3") is True
    await settings.unlock("alice")
    assert await settings.lock("alice", "r4") is True


# -- configuration ------------------------------------------------------------------------


def _cfg(**section: Any) -> Any:
    return parse({"gateway": {"security": False}, "customer_settings": section}, Path(".")).customer_settings


def test_customer_settings_defaults() -> None:
    cfg = _cfg()
    assert (cfg.enabled, cfg.cooling_off, cfg.min_acr, cfg.max_auth_age, cfg.max_limit, cfg.roles) == (
        True, 86_400.0, "urn:portcullis:acr:mfa", 300.0, 100_000_000.0, ("client",))


@pytest.mark.parametrize(("section", "message"), [
    ({"cooling_off": -1}, "customer_settings.cooling_off: must be >= 0 (got -1)"),
    ({"cooling_off": "1d"}, "customer_settings.cooling_off: expected integer or number, got str"),
    ({"min_acr": "urn:x"}, "customer_settings.min_acr: 'urn:x' is not one of acr_levels"),
    ({"max_limit": 1e16}, "customer_settings.max_limit: at most 1e15 CNY"),
    ({"roles": []}, "customer_settings.roles: name at least one role"),
    ({"colling_off": 5}, "customer_settings.colling_off: unknown key"),
])
def test_bad_customer_settings_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(**section)
    assert str(err.value).startswith(message)
