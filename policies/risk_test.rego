package gateway.risk_test

import data.gateway.gateway_test.base_input
import data.gateway.gateway_test.read_input
import data.gateway.gateway_test.transfer_input
import rego.v1

risk(inp, level, factor_codes) := out if {
	factors := [{"code": c, "points": 10} | some c in factor_codes]
	out := object.union(inp, {"risk": {"score": 0, "level": level, "factors": factors}})
}

step_up_reasons(inp) := {r.reason | some r in data.gateway.risk.step_up with input as inp}

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
	some r in data.gateway.risk.step_up with input as risk(base_input, "critical", [])
	r.acr == "urn:portcullis:acr:face"
	r.max_age == 300
}

test_new_device_or_place_before_a_transfer_steps_up_whatever_the_score if {
	step_up_reasons(risk(transfer_input, "low", ["new_device"])) == {"new_device"}
	step_up_reasons(risk(transfer_input, "low", ["new_region"])) == {"new_region"}
	step_up_reasons(risk(base_input, "low", ["new_region"])) == set() # trades: by level only
}

test_transfer_to_a_new_bank_account_needs_a_face_check if {
	some r in data.gateway.risk.step_up with input as risk(transfer_input, "low", ["new_bank_account_transfer"])
	r.reason == "new_bank_account_transfer"
	r.acr == "urn:portcullis:acr:face"
}

test_pig_butchering_pattern_alerts_and_asks_for_confirmation if {
	obs := data.gateway.risk.obligation with input as risk(base_input, "low", ["deposit_then_illiquid_buy"])
	some o in obs
	o.require_confirmation == true
	is_string(o.alert)
	quiet := data.gateway.risk.obligation with input as risk(base_input, "low", [])
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


test_a_usual_read_or_order_is_out_of_scope if {
	not data.gateway.risk.applies with input as risk(read_input, "low", ["missing_device_proof"])
	not data.gateway.risk.applies with input as risk(base_input, "low", ["new_region"])
	data.gateway.risk.applies with input as risk(base_input, "medium", [])
	data.gateway.risk.applies with input as risk(transfer_input, "low", [])
}

masked_fields(inp) := {f | some o in data.gateway.risk.obligation with input as inp; some f in o.mask_fields}

test_personal_data_is_masked_in_reads_of_a_session_above_low_risk if {
	masked_fields(risk(read_input, "low", [])) == set()
	masked_fields(risk(read_input, "medium", [])) == {"id_number", "phone", "address", "bank_accounts.number"}
	masked_fields(risk(read_input, "high", [])) == masked_fields(risk(read_input, "medium", []))
	masked_fields(risk(base_input, "medium", [])) == set() # what a trade answers is not masked here
}

test_a_recent_step_up_unmasks_personal_data if {
	fresh := object.union(risk(read_input, "medium", []), {"mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": 60}})
	masked_fields(fresh) == set()
	stale := object.union(fresh, {"mfa": {"age_s": 901}})
	count(masked_fields(stale)) == 4
	password := object.union(fresh, {"mfa": {"acr": "urn:portcullis:acr:pwd"}})
	count(masked_fields(password)) == 4
}

test_the_whole_decision_carries_the_mask_for_a_medium_risk_read if {
	d := data.gateway.decision with input as risk(read_input, "medium", [])
	d.allow == true
	{f | some f in d.obligations.mask_fields} == {"id_number", "phone", "address", "bank_accounts.number"}
}
