# Decision-level tests for package gateway, and the base inputs shared by the
# other *_test.rego files (docs/POLICIES.md, input document v1).
#
# The market packages (gateway.ashare, gateway.hkconnect) belong to another
# module set: the tests only force their `loaded` flag (`with ... as true`),
# which is a no-op when they are in the bundle and a stub when they are not.
package gateway.gateway_test

import rego.v1

# The v1 contract example: a client's limit buy of 100 x 600519.SH at 1450 on a
# trading day in continuous trading.
base_input := {
	"request": {
		"id": "r1", "method": "POST", "path": "/api/accounts/A1/orders", "route": "order_place",
		"tier": "trade", "roles": [], "account": "A1", "params": {"account": "A1"},
		"query_accounts": ["A1"],
	},
	"subject": {
		"sub": "alice", "roles": ["client"], "accounts": ["A1"],
		"acr": "urn:portcullis:acr:pwd", "amr": ["pwd"], "auth_time": 1795600000,
	},
	"device": {"id": null, "user_agent": "test"},
	"network": {"ip": "198.51.100.7"},
	"risk": {"score": 25, "level": "low", "factors": []},
	"mfa": {"acr": "urn:portcullis:acr:pwd", "age_s": 1200},
	"clock": {
		"epoch": 1795600000.5, "tz": "Asia/Shanghai", "date": "2026-11-25", "weekday": 3,
		"time": "09:31:05", "second_of_day": 34265, "trading_day": true,
	},
	"order": {
		"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit",
		"client_order_id": "c1", "account": null,
	},
	"cancel": null,
	"transfer": null,
	"body_accounts": [],
	"instrument": {
		"symbol": "600519.SH", "market": "cn_a", "board": "main", "st": false,
		"board_lot": 100, "min_qty": 100, "prev_close": 1450.0, "limit_up": 1595.0,
		"limit_down": 1305.0, "tick_size": 0.01, "risk_level": "R3", "currency": "CNY",
	},
	"quote": {"bid": 1450.75, "ask": 1450.77, "last": 1450.76},
	"account": {
		"id": "A1", "investor_level": "C4", "lowest_category": false, "assets_cny": 1200000,
		"trading_months": 60, "programme_trading_report": false, "single_trade_limit": 200000,
		"daily_limit": 500000, "frozen": false, "cash": 300000.0, "buying_power": 300000.0,
	},
	"position": {"symbol": "600519.SH", "qty": 200, "today_bought": 0, "sellable": 200},
	"counters": {
		"orders_today": 3, "cancels_today": 1, "actions_last_second": 1,
		"notional_today": 145076.0, "duplicate_client_order_id": false,
	},
	"restricted": {"symbol": false, "person": false},
	"confirmation": {"risk_warning_acknowledged": false},
}

# A read of the client's own positions: no order, no instrument.
read_input := object.union(base_input, {
	"request": {"method": "GET", "path": "/api/accounts/A1/positions", "route": "positions", "tier": "read"},
	"order": null, "instrument": null, "quote": null, "position": null,
})

# A cancel of an order of the client's own account: the gateway's order
# provider found it (symbol, side, status, account) and filled the instrument
# from its symbol (09:31:05, continuous trading: cancels allowed).
cancel_input := object.union(base_input, {
	"request": {"method": "DELETE", "path": "/api/accounts/A1/orders/o1", "route": "order_cancel"},
	"order": null, "quote": null, "position": null,
	"cancel": {"order_id": "o1", "symbol": "600519.SH", "side": "buy", "status": "accepted", "account": "A1"},
})

transfer_input := object.union(base_input, {
	"request": {"path": "/api/accounts/A1/transfers", "route": "transfer", "tier": "transfer"},
	"order": null, "instrument": null, "quote": null, "position": null,
	"transfer": {"amount": 1000.0, "currency": "CNY"},
})

admin_input := object.union(read_input, {
	"request": {"path": "/admin/policies", "route": "admin_policies", "tier": "admin", "account": null,
	            "params": {}, "query_accounts": []},
	"subject": {"sub": "carol", "roles": ["compliance"], "accounts": []},
})

# The decision for an input, with the market packages marked loaded.
decide(inp) := d if {
	d := data.gateway.decision with input as inp
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
}

deny_codes(d) := {r.code | some r in d.deny}

# Every deny reason has a non-empty code and a message (parse_decision's contract).
well_formed(d) if {
	is_boolean(d.allow)
	every r in d.deny {
		is_string(r.code)
		r.code != ""
		is_string(r.message)
	}
}

test_empty_input_denied if {
	d := decide({})
	d.allow == false
	count(d.deny) > 0
	well_formed(d)
	d.step_up == null
}

test_normal_read_allowed if {
	d := decide(read_input)
	d.allow == true
	d.deny == []
	d.step_up == null
	d.obligations == {}
}

test_normal_order_allowed if {
	d := decide(base_input)
	d.allow == true
	d.deny == []
	d.step_up == null
}

test_cancel_allowed if {
	d := decide(cancel_input)
	d.allow == true
}

test_transfer_allowed if {
	d := decide(transfer_input)
	d.allow == true
}

test_foreign_account_read_denied if {
	d := decide(object.union(read_input, {"request": {"account": "B9"}}))
	d.allow == false
	"account_forbidden" in deny_codes(d)
	well_formed(d)
}

test_lowest_category_buy_denied if {
	d := decide(object.union(base_input, {
		"account": {"investor_level": "C1", "lowest_category": true},
		"confirmation": {"risk_warning_acknowledged": true},
	}))
	d.allow == false
	"suitability_lowest_category" in deny_codes(d)
	d.step_up == null
}

test_trade_without_order_or_cancel_denied if {
	d := decide(object.union(base_input, {"order": null}))
	d.allow == false
	deny_codes(d) == {"route_checks_failed"}
}

test_wrong_typed_qty_denied if {
	d := decide(object.union(base_input, {"order": {"qty": "100"}}))
	d.allow == false
	"invalid_order" in deny_codes(d)
	well_formed(d)
}

test_missing_package_denied if {
	d := data.gateway.decision with input as read_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect as {}
	d.allow == false
	"policy_bundle_incomplete" in deny_codes(d)
}

test_package_not_saying_loaded_denied if {
	d := data.gateway.decision with input as read_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.programme.loaded as false
	d.allow == false
	"policy_bundle_incomplete" in deny_codes(d)
}

# Scope: every package says whether it applies (a boolean); one that does not
# blocks every request, and one that applies is always collected.

test_package_without_boolean_applies_denied if {
	d := data.gateway.decision with input as read_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.suitability.applies as "yes"
	d.allow == false
	"policy_bundle_incomplete" in deny_codes(d)
}

test_read_collects_only_access if {
	d := data.gateway.decision with input as read_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.limits.deny as {{"code": "not_in_scope", "message": "x"}}
	d.allow == true
}

test_applying_package_is_collected if {
	d := data.gateway.decision with input as base_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.programme.deny as {{"code": "in_scope", "message": "x"}}
	d.allow == false
	deny_codes(d) == {"in_scope"}
}

test_scopes_of_an_order if {
	data.gateway.access.applies with input as base_input
	data.gateway.suitability.applies with input as base_input
	data.gateway.limits.applies with input as base_input
	data.gateway.programme.applies with input as base_input
	data.gateway.ashare.applies with input as base_input
	data.gateway.hkconnect.applies == false with input as base_input
}

test_scopes_of_a_read if {
	data.gateway.access.applies with input as read_input
	data.gateway.suitability.applies == false with input as read_input
	data.gateway.limits.applies == false with input as read_input
	data.gateway.programme.applies == false with input as read_input
	data.gateway.ashare.applies == false with input as read_input
	data.gateway.hkconnect.applies == false with input as read_input
}

# Step-up: shape and selection.

# The base order's notional (145,000.00) is one fen above this limit.
big_order := object.union(base_input, {"account": {"single_trade_limit": 144999.99}})

test_step_up_shape if {
	d := decide(big_order)
	d.allow == false
	d.step_up == {"acr": "urn:portcullis:acr:mfa", "methods": ["totp", "sms"], "max_age": 300}
	deny_codes(d) == {"single_trade_limit"}
	well_formed(d)
}

test_step_up_satisfied_by_recent_mfa if {
	d := decide(object.union(big_order, {"mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": 300}}))
	d.allow == true
}

test_step_up_stale_mfa if {
	d := decide(object.union(big_order, {"mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": 301}}))
	d.allow == false
	d.step_up.acr == "urn:portcullis:acr:mfa"
}

test_step_up_age_wrong_type if {
	d := decide(object.union(big_order, {"mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": "1"}}))
	d.allow == false
	d.step_up.acr == "urn:portcullis:acr:mfa"
}

test_step_up_face_outranks_mfa if {
	d := decide(object.union(transfer_input, {"transfer": {"amount": 200000.01}}))
	d.allow == false
	d.step_up == {"acr": "urn:portcullis:acr:face", "methods": ["face", "totp", "sms"], "max_age": 120}
}

test_strongest_and_strictest_of_two_step_ups if {
	d := data.gateway.decision with input as big_order
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.access.step_up as {{"acr": "urn:portcullis:acr:face", "reason": "test_face", "max_age": 600}}
	d.step_up == {"acr": "urn:portcullis:acr:face", "methods": ["face", "totp", "sms"], "max_age": 300}
	deny_codes(d) == {"single_trade_limit", "test_face"}
}

test_unknown_step_up_acr_denied if {
	d := data.gateway.decision with input as read_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.access.step_up as {{"acr": "urn:example:unknown", "reason": "x", "max_age": null}}
	d.allow == false
	"invalid_step_up" in deny_codes(d)
	d.step_up == null
}

test_hard_deny_wins_over_step_up if {
	d := decide(object.union(big_order, {"request": {"account": "B9"}}))
	d.allow == false
	d.step_up == null
	"account_forbidden" in deny_codes(d)
}

test_admin_needs_recent_step_up if {
	d := decide(admin_input)
	d.allow == false
	d.step_up.acr == "urn:portcullis:acr:mfa"
	deny_codes(d) == {"privileged_action"}
}

test_admin_with_recent_mfa_allowed if {
	d := decide(object.union(admin_input, {"mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": 60}}))
	d.allow == true
}

# Obligations are merged across packages.

test_obligations_merged if {
	d := decide(object.union(base_input, {
		"account": {"investor_level": "C3", "programme_trading_report": true},
		"instrument": {"risk_level": "R4"},
		"confirmation": {"risk_warning_acknowledged": true},
		"counters": {"actions_last_second": 300},
	}))
	d.allow == true
	d.obligations == {"require_confirmation": true, "alert": "high-frequency trading pattern"}
}

test_two_alerts_become_a_list if {
	d := data.gateway.decision with input as read_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.access.obligation as {{"alert": "b"}, {"alert": "a", "mask_fields": ["cash"]}}
	d.allow == true
	d.obligations == {"alert": {"alerts": ["a", "b"]}, "mask_fields": ["cash"]}
}

test_unknown_obligation_denied if {
	d := data.gateway.decision with input as read_input
		with data.gateway.ashare.loaded as true
		with data.gateway.hkconnect.loaded as true
		with data.gateway.access.obligation as {{"block_everything": true}}
	d.allow == false
	"unknown_obligation" in deny_codes(d)
}
