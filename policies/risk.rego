# Risk: the risk engine's level and top factors (docs/RISK.md) decide how much
# proof a request needs. Parameters: data/risk.json.
package gateway.risk

import rego.v1

# Required by package gateway (see gateway.rego).
# (A default with no other definition: the Rvm answers it without running a body.)
default loaded := true

# Scope (package gateway): a request scored above low, or any transfer (the
# factor rules below hold whatever the score). A known device doing a usual
# read or trade scores low and costs this package one comparison.
default applies := false

applies := true if input.risk.level != "low"

applies := true if input.request.tier == "transfer"

# Nothing here denies by itself: more risk asks for more proof.
default deny := set()

# The risk engine's level decides how much proof a request needs, per tier
# (data/risk.json level_step_up: tier -> level -> {acr, max_age}). A level
# with no entry needs nothing more; a known device doing a usual thing scores
# low and goes straight through. The max_age makes a step-up count for this
# request (and the next minutes), not for the whole session.
step_up contains {"acr": s.acr, "reason": concat("", ["risk_", input.risk.level]), "max_age": s.max_age} if {
	s := data.risk.level_step_up[input.request.tier][input.risk.level]
}

# RULES.md Fraud signals: "New device or remote location at login or before a
# transfer: step-up" (whatever the score), and "Transfer to a newly added bank
# account shortly after login: step-up (face)". Reason codes of the engine's
# top factors, mapped to the level they need (data/risk.json factor_step_up).
step_up contains {"acr": s.acr, "reason": f.code, "max_age": s.max_age} if {
	input.request.tier == "transfer"
	some f in input.risk.factors
	s := data.risk.factor_step_up[f.code]
}

# RULES.md Fraud signals: "Large deposit followed by a concentrated buy of an
# illiquid stock (a pig-butchering pattern): alert and require confirmation."
obligation contains {"alert": data.risk.pig_butchering_alert, "require_confirmation": true} if {
	input.request.tier == "trade"
	some f in input.risk.factors
	f.code == "deposit_then_illiquid_buy"
}

# Personal data in what a read returns (ID number, phone, address, bank account
# numbers: data/risk.json mask_personal_data.fields) is masked for a session
# scored above low, unless the customer proved themselves recently (a step-up
# to one of unmask_acrs within unmask_max_age seconds). The gateway masks the
# fields in the upstream's answer (the mask_fields obligation, docs/POLICIES.md).
obligation contains {"mask_fields": m.fields} if {
	input.request.tier == "read"
	m := data.risk.mask_personal_data
	input.risk.level in m.levels
	not recently_stepped_up(m)
}

recently_stepped_up(m) if {
	input.mfa.acr in m.unmask_acrs
	is_number(input.mfa.age_s)
	input.mfa.age_s <= m.unmask_max_age
}
