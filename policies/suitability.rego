# Investor suitability (China: 证券期货投资者适当性管理办法) and market access
# thresholds. Applies to BUY orders only. Parameters: data/suitability.json.
#
# Positive-check style: a missing or wrong-typed fact denies (docs/POLICIES.md).
package gateway.suitability

import rego.v1

# Required by package gateway (see gateway.rego).
# (A default with no other definition: the Rvm answers it without running a body.)
default loaded := true

is_buy if {
	input.request.tier == "trade"
	is_object(input.order)
	input.order.side == "buy"
}

# Scope (package gateway): every rule below needs a buy order (is_buy).
default applies := false

applies := true if {
	input.request.tier == "trade"
	is_object(input.order)
	input.order.side == "buy"
} # (is_buy, written out: on a usual order no other rule reaches it)

# No suitability rule asks for a step-up (an empty set lets gateway.rego's
# plain-allow branch answer without collecting).
default step_up := set()

# --- the usual buy: one guard for the denials below ------------------------------

# The denials of this package are written as `buy_deny` and reach `deny`
# only when `buy_checks_hold` is not true. It lists, one line each, the
# positive checks they test: every `buy_deny` rule has a condition that is
# the negation of one line here (`not levels_known` against `levels_known`;
# `input.account.lowest_category == true` and
# `not is_boolean(input.account.lowest_category)` against
# `input.account.lowest_category == false`), so while every line holds none
# of them can fire and the Rvm skips the whole group on a usual buy (a STAR
# or Connect buy, or one above the investor's level, takes the full path). A
# new rule in the group needs its check here too (tests/test_policy_guards.py
# fails otherwise); a rule written as `deny contains` is always evaluated.
buy_checks_hold if {
	levels_known
	input.account.lowest_category == false
	not data.suitability.product_levels[input.instrument.risk_level] > data.suitability.investor_levels[input.account.investor_level]
	not input.instrument.board == data.suitability.star.board
	not input.instrument.market == data.suitability.hk_connect.market
}

deny contains d if {
	not buy_checks_hold
	some d in buy_deny
}

# The investor's level (data.suitability.investor_levels[input.account.investor_level])
# and the product's (data.suitability.product_levels[input.instrument.risk_level]),
# read in place in the three rules below (a rule for each would cost a call).
levels_known if {
	is_number(data.suitability.investor_levels[input.account.investor_level])
	is_number(data.suitability.product_levels[input.instrument.risk_level])
}

buy_deny contains {"code": "suitability_unknown", "message": "The investor category or the product risk level is unknown."} if {
	not levels_known
	is_buy
}

buy_deny contains {"code": "suitability_facts_unavailable", "message": "The investor's suitability facts are missing or invalid."} if {
	not is_boolean(input.account.lowest_category)
	is_buy
}

# RULES.md Suitability: "Investors C1-C5, products R1-R5. Cn may buy up to Rn directly."
# Above the investor's level: levels_known, then
#   data.suitability.product_levels[input.instrument.risk_level] >
#   data.suitability.investor_levels[input.account.investor_level]
# on a buy, written out in the two rules below (a rule for it costs a call).

# RULES.md Suitability: "Above the investor's level: allowed only after a special
# risk warning is acknowledged (obligation require_confirmation)".
acknowledged if input.confirmation.risk_warning_acknowledged == true

obligation contains {"require_confirmation": true} if {
	levels_known
	data.suitability.product_levels[input.instrument.risk_level] > data.suitability.investor_levels[input.account.investor_level]
	is_buy
	input.account.lowest_category == false
}

buy_deny contains {"code": "risk_warning_required", "message": "This product is above your risk level: acknowledge the risk warning first."} if {
	levels_known
	data.suitability.product_levels[input.instrument.risk_level] > data.suitability.investor_levels[input.account.investor_level]
	is_buy
	input.account.lowest_category == false
	not acknowledged
}

# RULES.md Suitability: "never for an investor in the lowest category (C1
# "lowest"): deny." Whatever the acknowledgement.
lowest_within_limit if {
	levels_known
	max_level := data.suitability.lowest_category_max_product_level
	is_number(max_level)
	data.suitability.product_levels[input.instrument.risk_level] <= max_level
}

buy_deny contains {"code": "suitability_lowest_category", "message": "Investors in the lowest category may not buy this product."} if {
	input.account.lowest_category == true
	is_buy
	not lowest_within_limit
}

# RULES.md Suitability: "STAR market access: assets >= 500,000 CNY and >= 24
# months of trading." (A STAR buy: the board and market of data.suitability.star
# and is_buy, tested in the rule itself; a rule for it would cost a call.)

star_ok if {
	is_number(input.account.assets_cny)
	is_number(input.account.trading_months)
	is_number(data.suitability.star.min_assets_cny)
	is_number(data.suitability.star.min_trading_months)
	input.account.assets_cny >= data.suitability.star.min_assets_cny
	input.account.trading_months >= data.suitability.star.min_trading_months
}

buy_deny contains {"code": "star_not_eligible", "message": "STAR market buys need the required assets and trading experience."} if {
	input.instrument.board == data.suitability.star.board
	input.instrument.market == data.suitability.star.market
	is_buy
	not star_ok
}

# RULES.md Hong Kong Stock Connect: "Individual investors need >= 500,000 CNY
# in securities and cash." (A Connect buy: the market of
# data.suitability.hk_connect and is_buy, tested in the rule itself.)

hk_connect_ok if {
	is_number(input.account.assets_cny)
	is_number(data.suitability.hk_connect.min_assets_cny)
	input.account.assets_cny >= data.suitability.hk_connect.min_assets_cny
}

buy_deny contains {"code": "hk_connect_not_eligible", "message": "Hong Kong Stock Connect buys need the required assets."} if {
	input.instrument.market == data.suitability.hk_connect.market
	is_buy
	not hk_connect_ok
}
