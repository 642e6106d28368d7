# Pre-trade limits (SEC 15c3-5 market access, customer-set limits) and
# transfers. Parameters: data/limits.json; the limits themselves are account
# facts (input.account).
#
# Positive-check style: a missing or wrong-typed fact denies (docs/POLICIES.md).
#
# Condition order: each deny and step-up rule starts with the check that
# fails on a usual order (the Rvm stops a body at its first failing
# condition; the order of a body's conditions does not change its value),
# then its scope (order_present, is_buy, the transfer tier). Where that check
# is a rule that would run through on a transfer (`not daily_ok`), the rule
# starts with `is_object(input.order)` (part of order_present), which stops a
# transfer at once and costs an order less than a rule call.
package gateway.limits

import rego.v1

# Required by package gateway (see gateway.rego).
# (A default with no other definition: the Rvm answers it without running a body.)
default loaded := true

order_present if {
	input.request.tier == "trade"
	is_object(input.order)
}

# Scope (package gateway): every rule below needs an order (order_present,
# is_buy) or a transfer (input.request.tier == "transfer", tested in place:
# a rule for it would cost every order a rule call); order_ok and
# transfer_ok are read by package gateway directly.
default applies := false

applies := true if {
	input.request.tier == "trade"
	is_object(input.order)
} # (order_present, written out: on a usual order no other rule reaches it)

applies := true if input.request.tier == "transfer"

is_buy if {
	order_present
	input.order.side == "buy"
}

# --- the usual order: one guard for the order's denials and step-ups --------------

# The order's denials and step-ups below are written as `order_deny` and
# `order_step_up` and reach `deny` and `step_up` only when
# `order_checks_hold` is not true. It lists, one line each, the positive
# checks they test: every `order_deny` and `order_step_up` rule has a
# condition that is the negation of one line here (`not symbol_ok` against
# `symbol_ok`; `input.restricted.symbol == true` and
# `not is_boolean(input.restricted.symbol)` against
# `input.restricted.symbol == false`), so while every line holds none of them
# can fire and the Rvm skips the whole group on a usual order. A new order
# rule in the group needs its check here too (tests/test_policy_guards.py
# fails otherwise); a rule written as `deny contains` is always evaluated.
order_checks_hold if {
	order_shape_ok
	is_object(input.instrument)
	is_number(notional)
	symbol_ok
	limit_facts_ok
	is_number(input.account.buying_power)
	notional <= input.account.buying_power
	input.restricted.symbol == false
	input.restricted.person == false
	input.counters.duplicate_client_order_id == false
	single_trade_ok
	daily_ok
}

deny contains d if {
	is_object(input.order) # (every rule of the group needs it: a transfer stops here)
	not order_checks_hold
	some d in order_deny
}

step_up contains r if {
	is_object(input.order) # (every rule of the group needs it: a transfer stops here)
	not order_checks_hold
	some r in order_step_up
}

# --- the order itself ----------------------------------------------------------

order_shape_ok if {
	input.order.side in data.limits.order_sides
	input.order.type in data.limits.order_types
	is_number(input.order.qty)
	input.order.qty > 0
}

order_deny contains {"code": "invalid_order", "message": "The order needs a valid side, type and a positive quantity."} if {
	not order_shape_ok
	order_present
}

# docs/POLICIES.md: instrument is null for a symbol not in the reference data.
order_deny contains {"code": "unknown_symbol", "message": "The symbol is not in the reference data."} if {
	not is_object(input.instrument)
	order_present
}

# Notional in the instrument's currency, rounded to the cent (fen), from the
# unit price: the limit price; for market orders the quote a buy would pay
# (ask) or a sell would receive (bid). The unit price must be a number > 0.
# (An `else` chain of exclusive branches, one per unit price: the Rvm stops at
# the first true one, and no rule of its own for the unit price.)
# TODO: HK Connect notional is in HKD while account limits are in CNY; convert
# once an exchange-rate fact is part of the input.
notional := round((input.order.qty * p) * 100) / 100 if {
	input.order.type == "limit"
	p := input.order.price
	is_number(p)
	p > 0
	order_shape_ok
} else := round((input.order.qty * p) * 100) / 100 if {
	input.order.type == "market"
	input.order.side == "buy"
	p := input.quote.ask
	is_number(p)
	p > 0
	order_shape_ok
} else := round((input.order.qty * p) * 100) / 100 if {
	input.order.type == "market"
	input.order.side == "sell"
	p := input.quote.bid
	is_number(p)
	p > 0
	order_shape_ok
}

order_deny contains {"code": "price_unavailable", "message": "The order has no valid price or market quote."} if {
	not is_number(notional)
	order_present
	order_shape_ok
}

# The facts must describe the symbol ordered, not some other one.
symbol_ok if {
	is_string(input.order.symbol)
	input.order.symbol == input.instrument.symbol
}

order_deny contains {"code": "instrument_mismatch", "message": "The reference data does not match the ordered symbol."} if {
	is_object(input.order) # (in order_present: a transfer stops here)
	not symbol_ok
	order_present
	is_object(input.instrument)
}

# Positive check used by package gateway for order routes.
order_ok if {
	symbol_ok
	order_shape_ok
	is_number(notional)
	is_object(input.instrument)
}

# A number or null: `type_name(x) in {"number", "null"}`, one builtin call and
# a literal (a function with two definitions, or a rule holding the set,
# costs the Rvm more).
order_deny contains {"code": "account_facts_unavailable", "message": "The account's limits are missing or invalid."} if {
	is_object(input.order) # (in order_present: a transfer stops here)
	not limit_facts_ok
	order_present
}

limit_facts_ok if {
	type_name(input.account.single_trade_limit) in {"number", "null"}
	type_name(input.account.daily_limit) in {"number", "null"}
	is_number(input.counters.notional_today)
}

# --- customer-set limits: step-up, not denial -------------------------------------

# RULES.md Customer-set limits: "A single-trade notional limit and a daily
# notional limit the customer sets; above them: step-up, not silent denial."
# A null limit means the customer set none.
single_trade_ok if {
	limit := input.account.single_trade_limit
	is_number(limit)
	n := notional
	is_number(n)
	n <= limit
}

single_trade_ok if input.account.single_trade_limit == null

order_step_up contains {
	"acr": data.limits.notional_step_up_acr,
	"reason": "single_trade_limit",
	"max_age": data.limits.notional_step_up_max_age_s,
} if {
	is_object(input.order) # (in order_present: a transfer stops here)
	not single_trade_ok
	order_present
}

daily_ok if {
	limit := input.account.daily_limit
	is_number(limit)
	today := input.counters.notional_today
	is_number(today)
	n := notional
	is_number(n)
	round((today + n) * 100) / 100 <= limit
}

daily_ok if input.account.daily_limit == null

order_step_up contains {
	"acr": data.limits.notional_step_up_acr,
	"reason": "daily_limit",
	"max_age": data.limits.notional_step_up_max_age_s,
} if {
	is_object(input.order) # (in order_present: a transfer stops here)
	not daily_ok
	order_present
}

# --- SEC 15c3-5 pre-trade checks ------------------------------------------------

# RULES.md United States: "credit limits per customer" (buying power): the
# notional is at most the account's buying power, a number (the two denials
# below, one per condition).
# Two definitions: a buying power that is not a number (it is also
# account_facts_unavailable below), or a notional above it.
order_deny contains {"code": "insufficient_buying_power", "message": "The order exceeds your buying power."} if {
	not is_number(input.account.buying_power)
	is_buy
	is_number(notional)
}

order_deny contains {"code": "insufficient_buying_power", "message": "The order exceeds your buying power."} if {
	is_object(input.order) # (in is_buy: a transfer stops here)
	not notional <= input.account.buying_power
	is_buy
	is_number(notional)
}

order_deny contains {"code": "account_facts_unavailable", "message": "The account's limits are missing or invalid."} if {
	not is_number(input.account.buying_power)
	is_buy
}

# RULES.md United States: "restricted securities and persons".
order_deny contains {"code": "restricted_security", "message": "This security is on the restricted list."} if {
	input.restricted.symbol == true
	order_present
}

order_deny contains {"code": "restricted_person", "message": "You are restricted from trading."} if {
	input.restricted.person == true
	order_present
}

# Both lists must be booleans: one definition per list (the same denial).
order_deny contains {"code": "restricted_list_unavailable", "message": "The restricted lists could not be checked."} if {
	not is_boolean(input.restricted.symbol)
	order_present
}

order_deny contains {"code": "restricted_list_unavailable", "message": "The restricted lists could not be checked."} if {
	not is_boolean(input.restricted.person)
	order_present
}

# RULES.md United States: "duplicate-order rejection".
order_deny contains {"code": "duplicate_order", "message": "An order with this client order id was already placed."} if {
	input.counters.duplicate_client_order_id == true
	order_present
}

order_deny contains {"code": "counters_unavailable", "message": "The order counters could not be checked."} if {
	not is_boolean(input.counters.duplicate_client_order_id)
	order_present
}

# --- transfers ---------------------------------------------------------------------

transfer_ok if {
	is_object(input.transfer)
	is_number(input.transfer.amount)
	input.transfer.amount > 0
}

deny contains {"code": "invalid_transfer", "message": "The transfer amount must be a positive number."} if {
	input.request.tier == "transfer"
	not transfer_ok
}

# A transfer above the customer's single-trade limit needs a face step-up.
# TODO(RULES.md Fraud signals): "Transfer to a newly added bank account shortly
# after login: step-up (face)" needs bank-account age and login time in the
# input; not expressible yet, so no stand-in signal is used here.
transfer_within_limit if input.account.single_trade_limit == null

transfer_within_limit if {
	is_number(input.account.single_trade_limit)
	transfer_ok
	input.transfer.amount <= input.account.single_trade_limit
}

step_up contains {
	"acr": data.limits.transfer_step_up_acr,
	"reason": "large_transfer",
	"max_age": data.limits.transfer_step_up_max_age_s,
} if {
	input.request.tier == "transfer"
	transfer_ok
	not transfer_within_limit
}

deny contains {"code": "account_facts_unavailable", "message": "The account's limits are missing or invalid."} if {
	input.request.tier == "transfer"
	not type_name(input.account.single_trade_limit) in {"number", "null"}
}

default obligation := set()
