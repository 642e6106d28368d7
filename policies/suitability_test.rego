package gateway.suitability_test

import data.gateway.gateway_test.base_input
import rego.v1

codes(inp) := c if {
	ds := data.gateway.suitability.deny with input as inp
	c := {d.code | some d in ds}
}

obligations(inp) := o if {
	o := data.gateway.suitability.obligation with input as inp
}

buy(account, instrument) := object.union(base_input, {"account": account, "instrument": instrument})

acknowledged(inp) := object.union(inp, {"confirmation": {"risk_warning_acknowledged": true}})

test_c3_r3_ok if {
	inp := buy({"investor_level": "C3"}, {"risk_level": "R3"})
	codes(inp) == set()
	obligations(inp) == set()
}

test_c3_r4_needs_risk_warning if {
	inp := buy({"investor_level": "C3"}, {"risk_level": "R4"})
	codes(inp) == {"risk_warning_required"}
	obligations(inp) == {{"require_confirmation": true}}
}

test_c3_r4_acknowledged_ok if {
	inp := acknowledged(buy({"investor_level": "C3"}, {"risk_level": "R4"}))
	codes(inp) == set()
	obligations(inp) == {{"require_confirmation": true}}
}

test_acknowledgement_must_be_true if {
	inp := object.union(buy({"investor_level": "C3"}, {"risk_level": "R4"}),
		{"confirmation": {"risk_warning_acknowledged": "true"}})
	codes(inp) == {"risk_warning_required"}
}

test_lowest_category_r1_ok if {
	codes(buy({"investor_level": "C1", "lowest_category": true}, {"risk_level": "R1"})) == set()
}

test_lowest_category_r2_denied_even_acknowledged if {
	inp := acknowledged(buy({"investor_level": "C1", "lowest_category": true}, {"risk_level": "R2"}))
	codes(inp) == {"suitability_lowest_category"}
}

test_lowest_category_wrong_type_denied if {
	codes(buy({"lowest_category": "no"}, {})) == {"suitability_facts_unavailable"}
}

test_sell_not_checked if {
	inp := object.union(buy({"investor_level": "C1", "lowest_category": true}, {"risk_level": "R5"}),
		{"order": {"side": "sell"}})
	codes(inp) == set()
}

test_unknown_risk_level_denied if {
	codes(buy({}, {"risk_level": "R9"})) == {"suitability_unknown"}
}

test_missing_investor_level_denied if {
	codes(buy({"investor_level": null}, {})) == {"suitability_unknown"}
}

star(account) := buy(account, {"board": "star", "risk_level": "R3"})

test_star_assets_499999_denied if {
	codes(star({"assets_cny": 499999, "trading_months": 24})) == {"star_not_eligible"}
}

test_star_assets_500000_ok if {
	codes(star({"assets_cny": 500000, "trading_months": 24})) == set()
}

test_star_23_months_denied if {
	codes(star({"assets_cny": 500000, "trading_months": 23})) == {"star_not_eligible"}
}

test_star_24_months_ok if {
	codes(star({"assets_cny": 2000000, "trading_months": 24})) == set()
}

test_star_assets_wrong_type_denied if {
	codes(star({"assets_cny": "9999999", "trading_months": 60})) == {"star_not_eligible"}
}

test_main_board_needs_no_star_eligibility if {
	codes(buy({"assets_cny": 1000, "trading_months": 0}, {})) == set()
}

hk(account) := buy(account, {"market": "hk_connect", "board": "main", "risk_level": "R3", "currency": "HKD"})

test_hk_connect_499999_denied if {
	codes(hk({"assets_cny": 499999})) == {"hk_connect_not_eligible"}
}

test_hk_connect_500000_ok if {
	codes(hk({"assets_cny": 500000})) == set()
}

test_hk_connect_assets_null_denied if {
	codes(hk({"assets_cny": null})) == {"hk_connect_not_eligible"}
}
