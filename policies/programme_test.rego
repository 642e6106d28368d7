package gateway.programme_test

import data.gateway.gateway_test.base_input
import data.gateway.gateway_test.cancel_input
import data.gateway.gateway_test.read_input
import rego.v1

codes(inp) := c if {
	ds := data.gateway.programme.deny with input as inp
	c := {d.code | some d in ds}
}

obligations(inp) := o if {
	o := data.gateway.programme.obligation with input as inp
}

alert := {{"alert": "high-frequency trading pattern"}}

with_counters(inp, counters) := object.union(inp, {"counters": counters})

test_299_per_second_not_flagged if {
	inp := with_counters(base_input, {"actions_last_second": 299})
	codes(inp) == set()
	obligations(inp) == set()
}

test_300_per_second_unreported_denied if {
	inp := with_counters(base_input, {"actions_last_second": 300})
	codes(inp) == {"programme_trading_unreported"}
	obligations(inp) == alert
}

test_300_per_second_reported_alert_only if {
	inp := object.union(with_counters(base_input, {"actions_last_second": 300}),
		{"account": {"programme_trading_report": true}})
	codes(inp) == set()
	obligations(inp) == alert
}

test_19999_per_day_not_flagged if {
	codes(with_counters(base_input, {"orders_today": 15000, "cancels_today": 4999})) == set()
}

test_20000_per_day_flagged if {
	inp := with_counters(base_input, {"orders_today": 15000, "cancels_today": 5000})
	codes(inp) == {"programme_trading_unreported"}
	obligations(inp) == alert
}

test_counters_wrong_type_flagged if {
	codes(with_counters(base_input, {"actions_last_second": "1"})) == {"programme_trading_unreported"}
}

test_report_wrong_type_counts_as_unreported if {
	inp := object.union(with_counters(base_input, {"actions_last_second": 300}),
		{"account": {"programme_trading_report": "yes"}})
	codes(inp) == {"programme_trading_unreported"}
}

test_cancel_alerted_not_denied if {
	inp := with_counters(cancel_input, {"actions_last_second": 300})
	codes(inp) == set()
	obligations(inp) == alert
}

test_read_not_flagged if {
	inp := with_counters(read_input, {"actions_last_second": 1000})
	codes(inp) == set()
	obligations(inp) == set()
}

# --- cancel bursts: freeze and alert ----------------------------------------

freeze := {{"freeze_account": true, "alert": "cancel burst: account frozen"}}

burst(per_second, cancels, orders) := with_counters(cancel_input, {
	"actions_last_second": per_second, "cancels_today": cancels, "orders_today": orders,
})

test_cancel_burst_freezes if {
	obligations(burst(20, 50, 55)) == freeze
}

test_cancel_burst_boundaries if {
	obligations(burst(19, 50, 55)) == set()  # slower than 20 a second
	obligations(burst(20, 49, 50)) == set()  # fewer than 50 cancels today
	obligations(burst(20, 50, 56)) == set()  # 50 of 56 orders cancelled: below 90%
	obligations(burst(20, 90, 100)) == freeze # exactly 90%
}

test_cancel_burst_only_on_cancels if {
	inp := with_counters(base_input, {"actions_last_second": 20, "cancels_today": 50, "orders_today": 55})
	obligations(inp) == set()
}
