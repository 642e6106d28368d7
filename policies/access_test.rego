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
