# Programme (high-frequency) trading. Parameters: data/programme.json.
package gateway.programme

import rego.v1

# Required by package gateway (see gateway.rego).
# (A default with no other definition: the Rvm answers it without running a body.)
default loaded := true

# Scope (package gateway): every rule below needs a trade route
# (input.request.tier == "trade", tested in place: each rule call costs).
default applies := false

applies := true if input.request.tier == "trade"

# No programme rule asks for a step-up (an empty set lets gateway.rego's
# plain-allow branch answer without collecting).
default step_up := set()

# RULES.md China A-shares: "an account at >= 300 orders+cancels in one second or
# >= 20,000 in one day is high-frequency". Positive check: the account is
# below both thresholds; missing or wrong-typed counters count as flagged.
# (Each member is read once into a local.)
below_thresholds if {
	c := input.counters
	per_second := c.actions_last_second
	orders := c.orders_today
	cancels := c.cancels_today
	is_number(per_second)
	is_number(orders)
	is_number(cancels)
	p := data.programme
	max_per_second := p.high_frequency_actions_per_second
	max_per_day := p.high_frequency_actions_per_day
	is_number(max_per_second)
	is_number(max_per_day)
	per_second < max_per_second
	orders + cancels < max_per_day
}

# High frequency: not below_thresholds on a trade route (written out in both
# rules below rather than as a rule of its own).

# RULES.md China A-shares: "programme orders without a report on file are
# refused". Orders only: a cancel reduces exposure and stays possible.
deny contains {"code": "programme_trading_unreported", "message": "High-frequency trading needs a programme trading report on file."} if {
	not below_thresholds
	input.request.tier == "trade"
	is_object(input.order)
	not input.account.programme_trading_report == true
}

# RULES.md China A-shares: abnormal patterns "are flagged": alert compliance.
obligation contains {"alert": data.programme.alert_message} if {
	not below_thresholds
	input.request.tier == "trade"
}

# RULES.md China A-shares: "frequent cancels within 1 s with a high daily cancel
# ratio" are abnormal. Cancelling at that pace with nearly every order of the
# day cancelled is layering or spoofing, or a runaway bot: the account is
# frozen at once in every gateway process (obligation freeze_account; the
# cancel that tipped it is refused too) and compliance is alerted. Thresholds:
# data/programme.json (the exchanges do not publish theirs).
obligation contains {"freeze_account": true, "alert": data.programme.cancel_burst_alert} if {
	is_object(input.cancel)
	c := input.counters
	p := data.programme
	c.actions_last_second >= p.cancel_burst_actions_per_second
	c.cancels_today >= p.cancel_burst_min_cancels
	c.cancels_today >= p.cancel_burst_ratio * c.orders_today
}
