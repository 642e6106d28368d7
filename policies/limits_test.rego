package gateway.limits_test

import data.gateway.gateway_test.base_input
import data.gateway.gateway_test.cancel_input
import data.gateway.gateway_test.transfer_input
import rego.v1

codes(inp) := c if {
	ds := data.gateway.limits.deny with input as inp
	c := {d.code | some d in ds}
}

step_ups(inp) := s if {
	rs := data.gateway.limits.step_up with input as inp
	s := {[r.reason, r.acr] | some r in rs}
}

order(o) := object.union(base_input, {"order": o})

mfa := "urn:portcullis:acr:mfa"

face := "urn:portcullis:acr:face"

test_base_order_clean if {
	codes(base_input) == set()
	step_ups(base_input) == set()
	data.gateway.limits.order_ok with input as base_input
}

# Customer-set limits (single-trade limit 200,000 in base_input).

test_exactly_single_trade_limit_no_step_up if {
	inp := order({"qty": 1, "price": 200000.0})
	step_ups(inp) == set()
	codes(inp) == set()
}

test_one_fen_above_single_trade_limit_step_up if {
	inp := order({"qty": 1, "price": 200000.01})
	step_ups(inp) == {["single_trade_limit", mfa]}
	codes(inp) == set()
}

test_notional_rounded_to_fen if {
	# 3 x 0.1 is 0.30000000000000004 in binary floating point.
	inp := object.union(order({"qty": 3, "price": 0.1}), {"account": {"single_trade_limit": 0.3}})
	step_ups(inp) == set()
}

test_null_single_trade_limit_means_none if {
	inp := object.union(order({"qty": 1, "price": 250000.0}), {"account": {"single_trade_limit": null}})
	step_ups(inp) == set()
}

test_single_trade_limit_wrong_type_denied if {
	inp := object.union(base_input, {"account": {"single_trade_limit": "200000"}})
	"account_facts_unavailable" in codes(inp)
	step_ups(inp) == {["single_trade_limit", mfa]}
}

test_exactly_daily_limit_no_step_up if {
	# 145,076 done today + 354,924 = 500,000.
	step_ups(order({"qty": 1, "price": 354924.0, "type": "limit"})) == {["single_trade_limit", mfa]}
	inp := object.union(order({"qty": 1, "price": 354924.0}), {"account": {"single_trade_limit": null}})
	step_ups(inp) == set()
}

test_one_fen_above_daily_limit_step_up if {
	inp := object.union(order({"qty": 1, "price": 354924.01}), {"account": {"single_trade_limit": null}})
	step_ups(inp) == {["daily_limit", mfa]}
}

test_notional_today_missing_denied if {
	inp := object.union(base_input, {"counters": {"notional_today": null}})
	"account_facts_unavailable" in codes(inp)
}

# Market orders are valued at the quote.

# A limit between the bid value (145,075) and the ask value (145,077) of 100 shares.
market(side) := object.union(order({"type": "market", "side": side, "price": null}),
	{"account": {"single_trade_limit": 145076}})

test_market_buy_valued_at_ask if {
	n := data.gateway.limits.notional with input as market("buy")
	n == 145077
	step_ups(market("buy")) == {["single_trade_limit", mfa]}
}

test_market_sell_valued_at_bid if {
	n := data.gateway.limits.notional with input as market("sell")
	n == 145075
	step_ups(market("sell")) == set()
}

test_market_order_without_quote_denied if {
	inp := object.union(order({"type": "market", "price": null}), {"quote": null})
	codes(inp) == {"price_unavailable"}
	not data.gateway.limits.order_ok with input as inp
}

test_limit_order_price_wrong_type_denied if {
	codes(order({"price": "1450"})) == {"price_unavailable"}
}

test_qty_wrong_type_denied if {
	codes(order({"qty": "100"})) == {"invalid_order"}
}

test_qty_zero_denied if {
	codes(order({"qty": 0})) == {"invalid_order"}
}

test_unknown_side_denied if {
	codes(order({"side": "short"})) == {"invalid_order"}
}

test_symbol_not_matching_instrument_denied if {
	"instrument_mismatch" in codes(order({"symbol": "601318.SH"}))
}

test_unknown_symbol_denied if {
	codes(object.union(base_input, {"instrument": null})) == {"unknown_symbol"}
}

# SEC 15c3-5 checks.

test_buy_within_buying_power_ok if {
	inp := object.union(order({"qty": 1, "price": 300000.0}), {"account": {"single_trade_limit": null, "daily_limit": null}})
	codes(inp) == set()
}

test_buy_above_buying_power_denied if {
	inp := object.union(order({"qty": 1, "price": 300000.01}), {"account": {"single_trade_limit": null, "daily_limit": null}})
	codes(inp) == {"insufficient_buying_power"}
}

test_sell_ignores_buying_power if {
	codes(object.union(order({"side": "sell"}), {"account": {"buying_power": 0}})) == set()
}

test_buying_power_wrong_type_denied if {
	codes(object.union(base_input, {"account": {"buying_power": "300000"}})) == {"insufficient_buying_power", "account_facts_unavailable"}
}

test_restricted_security_denied if {
	codes(object.union(base_input, {"restricted": {"symbol": true}})) == {"restricted_security"}
}

test_restricted_person_denied if {
	codes(object.union(base_input, {"restricted": {"person": true}})) == {"restricted_person"}
}

test_restricted_lists_missing_denied if {
	codes(object.union(base_input, {"restricted": null})) == {"restricted_list_unavailable"}
}

test_duplicate_order_denied if {
	codes(object.union(base_input, {"counters": {"duplicate_client_order_id": true}})) == {"duplicate_order"}
}

test_duplicate_flag_missing_denied if {
	codes(object.union(base_input, {"counters": {"duplicate_client_order_id": null}})) == {"counters_unavailable"}
}

test_cancel_not_subject_to_order_checks if {
	codes(object.union(cancel_input, {"restricted": {"symbol": true}})) == set()
	step_ups(cancel_input) == set()
}

# Transfers (single-trade limit 200,000 in base_input).

test_transfer_ok if {
	codes(transfer_input) == set()
	step_ups(transfer_input) == set()
	data.gateway.limits.transfer_ok with input as transfer_input
}

test_transfer_negative_denied if {
	codes(object.union(transfer_input, {"transfer": {"amount": -1}})) == {"invalid_transfer"}
}

test_transfer_zero_denied if {
	codes(object.union(transfer_input, {"transfer": {"amount": 0}})) == {"invalid_transfer"}
}

test_transfer_amount_string_denied if {
	inp := object.union(transfer_input, {"transfer": {"amount": "1000"}})
	codes(inp) == {"invalid_transfer"}
	not data.gateway.limits.transfer_ok with input as inp
}

test_transfer_missing_denied if {
	codes(object.union(transfer_input, {"transfer": null})) == {"invalid_transfer"}
}

test_transfer_exactly_limit_no_step_up if {
	step_ups(object.union(transfer_input, {"transfer": {"amount": 200000}})) == set()
}

test_transfer_one_fen_above_limit_face if {
	step_ups(object.union(transfer_input, {"transfer": {"amount": 200000.01}})) == {["large_transfer", face]}
}
