# Programme (high-frequency) trading. Parameters: data/programme.json.
package gateway.programme

import rego.v1

# Required by package gateway (see gateway.rego).
loaded := true

is_trade if input.request.tier == "trade"

# Scope (package gateway): every rule below needs a trade route (is_trade,
# through high_frequency).
default applies := false

applies := true if is_trade

# RULES.md China A-shares: "an account at >= 300 orders+cancels in one second or
# >= 20,000 in one day is high-frequency". Positive check: the account is
# below both thresholds; missing or wrong-typed counters count as flagged.
below_thresholds if {
	is_number(input.counters.actions_last_second)
	is_number(input.counters.orders_today)
	is_number(input.counters.cancels_today)
	is_number(data.programme.high_frequency_actions_per_second)
	is_number(data.programme.high_frequency_actions_per_day)
	input.counters.actions_last_second < data.programme.high_frequency_actions_per_second
	input.counters.orders_today + input.counters.cancels_today < data.programme.high_frequency_actions_per_day
}

high_frequency if {
	not below_thresholds
	is_trade
}

# RULES.md China A-shares: "programme orders without a report on file are
# refused". Orders only: a cancel reduces exposure and stays possible.
deny contains {"code": "programme_trading_unreported", "message": "High-frequency trading needs a programme trading report on file."} if {
	high_frequency
	is_object(input.order)
	not input.account.programme_trading_report == true
}

# RULES.md China A-shares: abnormal patterns "are flagged": alert compliance.
obligation contains {"alert": data.programme.alert_message} if high_frequency
