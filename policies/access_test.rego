package gateway.access_test

import data.gateway.gateway_test.admin_input
import data.gateway.gateway_test.base_input
import data.gateway.gateway_test.read_input
import data.gateway.gateway_test.transfer_input
import rego.v1

codes(inp) := c if {
	ds := data.gateway.access.deny with input as inp
	c := {d.code | some d in ds}
}

ok(inp) if {
	data.gateway.access.ok with input as inp
}

test_own_account_read_ok if {
	ok(read_input)
	codes(read_input) == set()
}

test_own_account_order_ok if {
	ok(base_input)
	codes(base_input) == set()
}

test_foreign_path_account_denied if {
	inp := object.union(read_input, {"request": {"account": "B9"}})
	codes(inp) == {"account_forbidden"}
	not ok(inp)
}

test_foreign_query_account_denied if {
	codes(object.union(read_input, {"request": {"query_accounts": ["A1", "B9"]}})) == {"account_forbidden"}
}

test_foreign_body_account_denied if {
	codes(object.union(base_input, {"body_accounts": ["B9"]})) == {"account_forbidden"}
}

test_null_account_lists_ok if {
	inp := object.union(read_input, {"request": {"query_accounts": null}, "body_accounts": null})
	ok(inp)
}

test_non_string_account_denied if {
	codes(object.union(read_input, {"request": {"account": 1}})) == {"account_forbidden"}
}

test_missing_request_account_denied if {
	inp := json.remove(read_input, ["request/account"])
	codes(inp) == {"account_forbidden"}
}

test_no_subject_unauthenticated if {
	inp := object.union(read_input, {"subject": null})
	"unauthenticated" in codes(inp)
	not ok(inp)
}

test_advisor_read_ok if {
	ok(object.union(read_input, {"subject": {"roles": ["advisor"]}}))
}

test_advisor_trade_forbidden if {
	codes(object.union(base_input, {"subject": {"roles": ["advisor"]}})) == {"role_forbidden"}
}

test_client_admin_forbidden if {
	"role_forbidden" in codes(object.union(admin_input, {"subject": {"roles": ["client"]}}))
}

test_unknown_role_denied if {
	inp := object.union(read_input, {"subject": {"roles": ["superuser"]}})
	codes(inp) == {"unknown_role"}
	not ok(inp)
}

test_no_role_denied if {
	codes(object.union(read_input, {"subject": {"roles": []}})) == {"unknown_role"}
}

test_compliance_admin_needs_step_up if {
	ok(admin_input)
	steps := data.gateway.access.step_up with input as admin_input
	steps == {{"acr": "urn:portcullis:acr:mfa", "reason": "privileged_action", "max_age": 300}}
}

test_read_needs_no_step_up if {
	steps := data.gateway.access.step_up with input as read_input
	steps == set()
}

test_frozen_account_cannot_trade if {
	inp := object.union(base_input, {"account": {"frozen": true}})
	codes(inp) == {"account_frozen"}
	not ok(inp)
}

test_frozen_account_cannot_transfer if {
	codes(object.union(transfer_input, {"account": {"frozen": true}})) == {"account_frozen"}
}

test_frozen_account_can_read if {
	ok(object.union(read_input, {"account": {"frozen": true}}))
}

test_frozen_wrong_type_denied if {
	inp := object.union(base_input, {"account": {"frozen": "false"}})
	codes(inp) == {"account_facts_unavailable"}
	not ok(inp)
}

test_no_account_facts_on_trade_denied if {
	codes(object.union(base_input, {"account": null})) == {"account_facts_unavailable"}
}

# --- risk: the engine's level and top factors --------------------------------

risk(inp, level, factor_codes) := out if {
	factors := [{"code": c, "points": 10} | some c in factor_codes]
	out := object.union(inp, {"risk": {"score": 0, "level": level, "factors": factors}})
}

step_up_reasons(inp) := {r.reason | some r in data.gateway.access.step_up with input as inp}

test_low_risk_needs_nothing_more if {
	step_up_reasons(risk(read_input, "low", [])) == set()
	step_up_reasons(risk(base_input, "medium", [])) == set()
	step_up_reasons(risk(transfer_input, "low", [])) == set()
}

test_risk_level_thresholds_per_tier if {
	step_up_reasons(risk(read_input, "high", [])) == set()
	step_up_reasons(risk(read_input, "critical", [])) == {"risk_critical"}
	step_up_reasons(risk(base_input, "high", [])) == {"risk_high"}
	step_up_reasons(risk(transfer_input, "medium", [])) == {"risk_medium"}
}

test_critical_trade_asks_for_a_face_check if {
	some r in data.gateway.access.step_up with input as risk(base_input, "critical", [])
	r.acr == "urn:portcullis:acr:face"
	r.max_age == 300
}

test_new_device_or_place_before_a_transfer_steps_up_whatever_the_score if {
	step_up_reasons(risk(transfer_input, "low", ["new_device"])) == {"new_device"}
	step_up_reasons(risk(transfer_input, "low", ["new_region"])) == {"new_region"}
	step_up_reasons(risk(base_input, "low", ["new_region"])) == set() # trades: by level only
}

test_transfer_to_a_new_bank_account_needs_a_face_check if {
	some r in data.gateway.access.step_up with input as risk(transfer_input, "low", ["new_bank_account_transfer"])
	r.reason == "new_bank_account_transfer"
	r.acr == "urn:portcullis:acr:face"
}

test_pig_butchering_pattern_alerts_and_asks_for_confirmation if {
	obs := data.gateway.access.obligation with input as risk(base_input, "low", ["deposit_then_illiquid_buy"])
	some o in obs
	o.require_confirmation == true
	is_string(o.alert)
	quiet := data.gateway.access.obligation with input as risk(base_input, "low", [])
	count(quiet) == 0
}

test_a_risk_step_up_is_satisfied_by_a_fresh_mfa if {
	inp := object.union(risk(transfer_input, "medium", []), {"mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": 60}})
	d := data.gateway.decision with input as inp
	d.allow == true
	stale := object.union(inp, {"mfa": {"age_s": 301}})
	d2 := data.gateway.decision with input as stale
	d2.step_up.acr == "urn:portcullis:acr:mfa"
}
