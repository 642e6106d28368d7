# The broker bundle's decision: entry point data.gateway.decision.
#
# Assembly only: the rules live in the packages listed below. The decision
# allows a request only when
#   1. every rule package of the bundle is loaded,
#   2. the route's positive checks hold (route_checks_ok),
#   3. no rule package denies, and
#   4. no step-up is needed.
# Anything else, including a runtime error anywhere (the Rvm turns errors into
# "undefined"), ends in a deny or in the default deny below.
#
# REQUIREMENT on every rule package (gateway.access, gateway.suitability,
# gateway.limits, gateway.programme, gateway.ashare, gateway.hkconnect, gateway.risk):
#   loaded := true (the packages write `default loaded := true`: the same
#   value, which the Rvm answers without running a rule body)
#   applies, a boolean (`default applies := false` plus the package's scope):
#     true for every request that any rule of the package may judge
# plus `deny` (a set of {code, message}) and `obligation` (a set of objects,
# may be empty); `step_up` (a set of {acr, reason, max_age}) is optional, but a
# package without one (`default step_up := set()` says "none") never takes
# the fast plain-allow branch of the decision (see "the decision" below).
# A package that is missing, does not say `loaded := true` or has no boolean
# `applies` blocks every request with policy_bundle_incomplete: a missing
# package never allows.
#
# Scope (`applies`): the decision collects a package's deny, step_up and
# obligation only when its `applies` is true, so the Rvm skips every rule of
# a package that has nothing to say about this request (a read never runs
# the order rules). Every deny, step_up and obligation rule of a package must
# therefore require `applies` (or a condition that implies it), which the
# packages do by starting each such rule with their scope check; the package
# tests evaluate `deny` directly and do not depend on it.
package gateway

import rego.v1

default decision := {
	"allow": false,
	"deny": [{"code": "default_deny", "message": "No rule allowed this request."}],
	"step_up": null,
	"obligations": {},
}

# --- 1. the bundle is complete ---------------------------------------------------

packages_loaded if {
	data.gateway.access.loaded == true
	data.gateway.suitability.loaded == true
	data.gateway.limits.loaded == true
	data.gateway.programme.loaded == true
	data.gateway.ashare.loaded == true
	data.gateway.hkconnect.loaded == true
	data.gateway.risk.loaded == true
	is_boolean(data.gateway.access.applies)
	is_boolean(data.gateway.suitability.applies)
	is_boolean(data.gateway.limits.applies)
	is_boolean(data.gateway.programme.applies)
	is_boolean(data.gateway.ashare.applies)
	is_boolean(data.gateway.hkconnect.applies)
	is_boolean(data.gateway.risk.applies)
}

# --- 2. positive checks per route tier ----------------------------------------------

# An order with a known instrument and a computable notional (first: the
# busiest route the policy has to work for).
route_checks_ok if {
	input.request.tier == "trade"
	is_object(input.order)
	data.gateway.access.ok == true
	is_object(input.instrument)
	data.gateway.limits.order_ok == true
}

route_checks_ok if {
	input.request.tier in {"read", "admin"}
	data.gateway.access.ok == true
}

# A cancel of a known order of the request's account, with the order's
# instrument (the gateway fills input.instrument from the order, so the
# market packages judge the cancel: sessions, no-cancel windows).
route_checks_ok if {
	input.request.tier == "trade"
	is_object(input.cancel)
	data.gateway.access.ok == true
	not is_object(input.order)
	cancel_order_known
	is_object(input.instrument)
	input.instrument.symbol == input.cancel.symbol
}

# The order being cancelled is one of the request's account: the gateway's
# order provider found it (input.cancel.symbol, side, status and account are
# null when the account has no order by that id, whoever's it is).
cancel_order_known if {
	is_string(input.cancel.symbol)
	input.cancel.side in {"buy", "sell"}
	is_string(input.cancel.status)
	is_string(input.request.account)
	input.cancel.account == input.request.account
}

route_checks_ok if {
	input.request.tier == "transfer"
	data.gateway.access.ok == true
	data.gateway.limits.transfer_ok == true
}

# --- 3. denials from every rule package -------------------------------------------

# Each package only when it applies (see "Scope" at the top).
rule_denies contains d if {
	data.gateway.access.applies == true
	some d in data.gateway.access.deny
}

rule_denies contains d if {
	data.gateway.suitability.applies == true
	some d in data.gateway.suitability.deny
}

rule_denies contains d if {
	data.gateway.limits.applies == true
	some d in data.gateway.limits.deny
}

rule_denies contains d if {
	data.gateway.programme.applies == true
	some d in data.gateway.programme.deny
}

rule_denies contains d if {
	data.gateway.ashare.applies == true
	some d in data.gateway.ashare.deny
}

rule_denies contains d if {
	data.gateway.hkconnect.applies == true
	some d in data.gateway.hkconnect.deny
}

rule_denies contains d if {
	data.gateway.risk.applies == true
	some d in data.gateway.risk.deny
}

# RULES.md (A-shares, Stock Connect): cancels are judged by the order's market
# (sessions, no-cancel windows), so a cancel must name an order the gateway can
# find on the request's account. An unknown order id and another account's
# order get the same answer (nothing about the other account leaks). (Here,
# not in a package: the decision reads rule_denies only off the plain-allow
# branch, so an order pays nothing for it.)
rule_denies contains {"code": "order_not_found", "message": "No such order in this account."} if {
	is_object(input.cancel)
	not cancel_order_known
}

own_denies contains {"code": "policy_bundle_incomplete", "message": "The policy bundle is incomplete."} if {
	not packages_loaded
}

# The route's checks failed without any rule saying why.
own_denies contains {"code": "route_checks_failed", "message": "The request does not satisfy this route's checks."} if {
	not route_checks_ok
	count(rule_denies) == 0
}

own_denies contains {"code": "invalid_step_up", "message": "A rule requested an unknown authentication level."} if {
	some r in step_up_requests
	not is_number(acr_level(r.acr))
}

own_denies contains {"code": "step_up_unavailable", "message": "The required authentication level cannot be requested."} if {
	count(needed_step_ups) > 0
	not is_object(step_up_doc)
}

own_denies contains {"code": "unknown_obligation", "message": "A rule produced an obligation the gateway does not know."} if {
	some o in obligation_items
	some key, _ in o
	not key in known_obligations
}

own_denies contains {"code": "unknown_obligation", "message": "A rule produced an obligation the gateway does not know."} if {
	some o in obligation_items
	not is_object(o)
}

all_denies := rule_denies | own_denies

# --- 4. step-up ---------------------------------------------------------------------

step_up_requests contains r if {
	data.gateway.access.applies == true
	some r in data.gateway.access.step_up
}

step_up_requests contains r if {
	data.gateway.suitability.applies == true
	some r in data.gateway.suitability.step_up
}

step_up_requests contains r if {
	data.gateway.limits.applies == true
	some r in data.gateway.limits.step_up
}

step_up_requests contains r if {
	data.gateway.programme.applies == true
	some r in data.gateway.programme.step_up
}

step_up_requests contains r if {
	data.gateway.ashare.applies == true
	some r in data.gateway.ashare.step_up
}

step_up_requests contains r if {
	data.gateway.hkconnect.applies == true
	some r in data.gateway.hkconnect.step_up
}

step_up_requests contains r if {
	data.gateway.risk.applies == true
	some r in data.gateway.risk.step_up
}

# The acr ladder (data/access.json acr_ladder): a higher index is stronger.
acr_level(acr) := i if {
	some i, known in data.access.acr_ladder
	known == acr
}

default subject_level := -1

subject_level := acr_level(input.mfa.acr)

fresh_enough(max_age) if max_age == null

fresh_enough(max_age) if {
	is_number(max_age)
	is_number(input.mfa.age_s)
	input.mfa.age_s <= max_age
}

# A request is satisfied when the subject's current authentication is at
# least as strong as asked and recent enough.
satisfied(r) if {
	subject_level >= acr_level(r.acr)
	fresh_enough(r.max_age)
}

needed_step_ups contains r if {
	some r in step_up_requests
	not satisfied(r)
}

step_up_level := max({acr_level(r.acr) | some r in needed_step_ups})

step_up_acr := data.access.acr_ladder[step_up_level]

step_up_ages := {r.max_age | some r in needed_step_ups; is_number(r.max_age)}

default step_up_max_age := null

step_up_max_age := min(step_up_ages) if count(step_up_ages) > 0

step_up_doc := {
	"acr": step_up_acr,
	"methods": data.access.acr_methods[step_up_acr],
	"max_age": step_up_max_age,
} if {
	is_string(step_up_acr)
	is_array(data.access.acr_methods[step_up_acr])
}

step_up_reasons := [{"code": code, "message": "A stronger authentication is required."} |
	some code in {r.reason | some r in needed_step_ups}
]

# --- obligations ----------------------------------------------------------------------

obligation_items contains o if {
	data.gateway.access.applies == true
	some o in data.gateway.access.obligation
}

obligation_items contains o if {
	data.gateway.suitability.applies == true
	some o in data.gateway.suitability.obligation
}

obligation_items contains o if {
	data.gateway.limits.applies == true
	some o in data.gateway.limits.obligation
}

obligation_items contains o if {
	data.gateway.programme.applies == true
	some o in data.gateway.programme.obligation
}

obligation_items contains o if {
	data.gateway.ashare.applies == true
	some o in data.gateway.ashare.obligation
}

obligation_items contains o if {
	data.gateway.hkconnect.applies == true
	some o in data.gateway.hkconnect.obligation
}

obligation_items contains o if {
	data.gateway.risk.applies == true
	some o in data.gateway.risk.obligation
}

# A package that applies has something to collect: its deny, step_up and
# obligation do not all count 0. A set that is undefined (a package without
# step_up) or not a collection makes the count undefined, so `not ... == 0`
# holds too: the decision then takes its slow branches, which collect. One
# definition per package instead of the 18 collecting ones on the plain allow.
collected if {
	data.gateway.access.applies == true
	not count(data.gateway.access.deny) + count(data.gateway.access.step_up) + count(data.gateway.access.obligation) == 0
}

collected if {
	data.gateway.suitability.applies == true
	not count(data.gateway.suitability.deny) + count(data.gateway.suitability.step_up) + count(data.gateway.suitability.obligation) == 0
}

collected if {
	data.gateway.limits.applies == true
	not count(data.gateway.limits.deny) + count(data.gateway.limits.step_up) + count(data.gateway.limits.obligation) == 0
}

collected if {
	data.gateway.programme.applies == true
	not count(data.gateway.programme.deny) + count(data.gateway.programme.step_up) + count(data.gateway.programme.obligation) == 0
}

collected if {
	data.gateway.ashare.applies == true
	not count(data.gateway.ashare.deny) + count(data.gateway.ashare.step_up) + count(data.gateway.ashare.obligation) == 0
}

collected if {
	data.gateway.hkconnect.applies == true
	not count(data.gateway.hkconnect.deny) + count(data.gateway.hkconnect.step_up) + count(data.gateway.hkconnect.obligation) == 0
}

collected if {
	data.gateway.risk.applies == true
	not count(data.gateway.risk.deny) + count(data.gateway.risk.step_up) + count(data.gateway.risk.obligation) == 0
}

known_obligations := {"freeze_account", "alert", "require_confirmation", "mask_fields"}

default freeze_part := {}

freeze_part := {"freeze_account": true} if {
	some o in obligation_items
	o.freeze_account == true
}

default confirm_part := {}

confirm_part := {"require_confirmation": true} if {
	some o in obligation_items
	o.require_confirmation == true
}

alerts := {o.alert | some o in obligation_items; is_string(o.alert)} | {o.alert | some o in obligation_items; is_object(o.alert)}

default alert_part := {}

alert_part := {"alert": a} if {
	count(alerts) == 1
	some a in alerts
}

alert_part := {"alert": {"alerts": [a | some a in alerts]}} if count(alerts) > 1

mask_set := {f | some o in obligation_items; is_array(o.mask_fields); some f in o.mask_fields; is_string(f)}

default mask_part := {}

mask_part := {"mask_fields": [f | some f in mask_set]} if count(mask_set) > 0

# Most requests carry no obligation: skip the merge (its value would be {}).
obligations := {} if {
	count(obligation_items) == 0
} else := object.union(object.union(freeze_part, confirm_part), object.union(alert_part, mask_part))

# --- the decision -----------------------------------------------------------------------

# (count(rule_denies) == 0 and count(own_denies) == 0 is count(all_denies) == 0
# without building the union on every request.)
allow if {
	packages_loaded
	route_checks_ok
	count(rule_denies) == 0
	count(own_denies) == 0
	count(needed_step_ups) == 0
}

# One else chain, the usual answer first. When nothing was collected (no deny,
# no step-up request, no obligation from any applying package), the bundle is
# complete and the route's checks hold, no own denial can fire and `allow`
# holds with obligations {}: the first branch is that decision without
# evaluating own_denies, needed_step_ups and the obligation merge. The other
# branches are exclusive (allow; not allow with denials; not allow without
# any), so the chain decides as three separate definitions would.
#
# The first branch tests "nothing collected" as `not collected` (below): when
# it holds, rule_denies, step_up_requests and obligation_items are empty, so
# the branch answers what the next ones would; when it does not (something
# to collect, or a set that is not there), the next branches decide.
decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}} if {
	packages_loaded
	route_checks_ok
	not collected
} else := {"allow": true, "deny": [], "step_up": null, "obligations": obligations} if {
	allow
} else := {"allow": false, "deny": [d | some d in all_denies], "step_up": null, "obligations": obligations} if {
	# A hard denial wins over a step-up: stepping up would not help.
	count(all_denies) > 0
} else := {"allow": false, "deny": step_up_reasons, "step_up": step_up_doc, "obligations": obligations} if {
	is_object(step_up_doc)
}
