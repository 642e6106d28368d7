# Tests for policies/hkconnect.rego (RULES.md, "Hong Kong Stock Connect").
#
# Every test starts from base_order_input (a valid limit buy of one board
# lot of 00700.HK at 10:00:00 on a Connect trading day) and changes only what
# it tests with object.union (a deep merge).
#
# Seconds of day used below:
#   08:59:59 32399  09:00:00 32400  09:14:59 33299  09:15:00 33300
#   09:19:59 33599  09:20:00 33600  09:29:59 34199  09:30:00 34200
#   10:00:00 36000  11:59:59 43199  12:00:00 43200  13:00:00 46800
#   15:59:59 57599  16:00:00 57600  16:05:59 57959  16:06:00 57960
#   16:09:59 58199  16:10:00 58200

package gateway.hkconnect_test

import rego.v1

import data.gateway.hkconnect

base_order_input := {
	"request": {"route": "order_place", "tier": "trade", "account": "A1"},
	"clock": {"tz": "Asia/Shanghai", "date": "2026-11-25", "weekday": 3, "time": "10:00:00", "second_of_day": 36000, "trading_day": true},
	"order": {"symbol": "00700.HK", "side": "buy", "qty": 100, "price": 380.0, "type": "limit", "client_order_id": "c1", "account": null},
	"cancel": null,
	"transfer": null,
	"instrument": {
		"symbol": "00700.HK", "market": "hk_connect", "board": "main", "st": false,
		"board_lot": 100, "min_qty": 100, "prev_close": 380.0, "limit_up": null,
		"limit_down": null, "tick_size": 0.2, "risk_level": "R4", "currency": "HKD",
	},
	"quote": {"bid": 379.8, "ask": 380.0, "last": 380.0},
	"position": {"symbol": "00700.HK", "qty": 250, "today_bought": 0, "sellable": 250},
}

codes(patch) := {d.code | some d in denies} if {
	denies := hkconnect.deny with input as object.union(base_order_input, patch)
}

at(second) := {"clock": {"second_of_day": second}}

cancel_at(second) := {"clock": {"second_of_day": second}, "order": null, "cancel": {"order_id": "o1"}}

# A closing-auction order at 16:00:00 against a last price of 380.00.
auction(price) := {"clock": {"second_of_day": 57600}, "order": {"price": price}}

# --- scope ------------------------------------------------------------------

test_loaded if hkconnect.loaded == true

test_obligation_empty if count(hkconnect.obligation) == 0

test_valid_buy if codes({}) == set()

test_other_market_ignored if codes({"instrument": {"market": "cn_a"}, "order": {"type": "market"}}) == set()

# --- sessions (half-open: start inclusive, end exclusive) -------------------

test_non_trading_day_closed if codes({"clock": {"trading_day": false}}) == {"market_closed"}

test_clock_missing_closed if codes({"clock": {"second_of_day": null}}) == {"market_closed"}

test_085959_closed if codes(at(32399)) == {"market_closed"}

test_090000_pre_opening if codes(at(32400)) == set()

test_092959_pre_opening if codes(at(34199)) == set()

test_093000_continuous if codes(at(34200)) == set()

test_115959_continuous if codes(at(43199)) == set()

test_120000_closed if codes(at(43200)) == {"market_closed"}

test_130000_continuous if codes(at(46800)) == set()

test_155959_continuous if codes(at(57599)) == set()

test_160000_closing_auction if codes(at(57600)) == set()

test_160959_closing_auction if codes(at(58199)) == set()

test_161000_closed if codes(at(58200)) == {"market_closed"}

# --- cancels ----------------------------------------------------------------

test_cancel_091459_allowed if codes(cancel_at(33299)) == set()

test_cancel_091500_refused if codes(cancel_at(33300)) == {"cancel_window_closed"}

test_cancel_091959_refused if codes(cancel_at(33599)) == {"cancel_window_closed"}

test_cancel_092000_allowed if codes(cancel_at(33600)) == set()

test_cancel_160559_allowed if codes(cancel_at(57959)) == set()

test_cancel_160600_refused if codes(cancel_at(57960)) == {"cancel_window_closed"}

test_cancel_160959_refused if codes(cancel_at(58199)) == {"cancel_window_closed"}

test_cancel_161000_closed if codes(cancel_at(58200)) == {"market_closed"}

test_cancel_non_trading_day_closed if codes(object.union(cancel_at(36000), {"clock": {"trading_day": false}})) == {"market_closed"}

# --- order shape and type ---------------------------------------------------

test_market_order_refused if codes({"order": {"type": "market", "price": null}}) == {"market_order_not_allowed"}

test_unknown_type_invalid if codes({"order": {"type": "stop"}}) == {"invalid_order"}

test_side_unknown_invalid if codes({"order": {"side": "short"}}) == {"invalid_order"}

test_qty_fraction_invalid if codes({"order": {"qty": 100.5}}) == {"invalid_order"}

test_qty_string_invalid if codes({"order": {"qty": "100"}}) == {"invalid_order"}

test_price_missing_invalid if codes({"order": {"price": null}}) == {"invalid_order"}

test_price_string_invalid if codes({"order": {"price": "380"}}) == {"invalid_order"}

test_board_lot_missing_invalid_instrument if codes({"instrument": {"board_lot": null}}) == {"invalid_instrument"}

test_board_lot_string_invalid_instrument if codes({"instrument": {"board_lot": "100"}}) == {"invalid_instrument"}

# --- lots and size ----------------------------------------------------------

test_buy_99_refused if codes({"order": {"qty": 99}}) == {"lot_size"}

test_buy_100_allowed if codes({"order": {"qty": 100}}) == set()

test_buy_150_odd_lot_refused if codes({"order": {"qty": 150}}) == {"lot_size"}

test_sell_odd_lot_allowed if codes({"order": {"side": "sell", "qty": 50}}) == set()

test_sell_150_allowed if codes({"order": {"side": "sell", "qty": 150}}) == set()

# A 500-share lot: 3,000 lots = 1,500,000 shares.
test_buy_lot_of_500 if {
	codes({"instrument": {"board_lot": 500}, "order": {"qty": 500}}) == set()
	codes({"instrument": {"board_lot": 500}, "order": {"qty": 600}}) == {"lot_size"}
}

test_3000_lots_allowed if codes({"order": {"qty": 300000}}) == set()

test_3001_lots_too_large if codes({"order": {"qty": 300100}}) == {"order_too_large"}

test_sell_above_3000_lots_too_large if codes({"order": {"side": "sell", "qty": 300050}}) == {"order_too_large"}

test_3000_lots_of_500_allowed if codes({"instrument": {"board_lot": 500}, "order": {"qty": 1500000}}) == set()

test_3001_lots_of_500_too_large if codes({"instrument": {"board_lot": 500}, "order": {"qty": 1500500}}) == {"order_too_large"}

# --- closing auction +-5% ---------------------------------------------------

test_auction_plus_5_percent_allowed if codes(auction(399.0)) == set()

test_auction_above_5_percent_refused if codes(auction(399.2)) == {"price_outside_band"}

test_auction_minus_5_percent_allowed if codes(auction(361.0)) == set()

test_auction_below_5_percent_refused if codes(auction(360.8)) == {"price_outside_band"}

# 3.00 x 1.05 = 3.1500000000000004 in binary floating point.
test_auction_band_float_edges if {
	codes(object.union(auction(3.15), {"quote": {"last": 3.0}})) == set()
	codes(object.union(auction(3.16), {"quote": {"last": 3.0}})) == {"price_outside_band"}
	codes(object.union(auction(2.85), {"quote": {"last": 3.0}})) == set()
	codes(object.union(auction(2.84), {"quote": {"last": 3.0}})) == {"price_outside_band"}
}

test_auction_without_reference_refused if codes(object.union(auction(380.0), {"quote": {"last": null}})) == {"price_outside_band"}

test_auction_without_quote_refused if codes(object.union(auction(380.0), {"quote": null})) == {"price_outside_band"}

# The +-5% limit applies in the closing auction only.
test_no_band_in_continuous if codes({"order": {"price": 420.0}}) == set()

test_155959_no_band if codes(object.union(at(57599), {"order": {"price": 420.0}})) == set()

test_160000_band if codes(object.union(at(57600), {"order": {"price": 420.0}})) == {"price_outside_band"}

# --- the data file: readable hours agree with the seconds the policy reads --

hms_seconds(hms) := ((to_number(concat("", ["1", p[0]])) - 100) * 3600 + (to_number(concat("", ["1", p[1]])) - 100) * 60) + (to_number(concat("", ["1", p[2]])) - 100) if {
	regex.match(`^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$`, hms)
	p := split(hms, ":")
}

window_matches_hours(w) if {
	parts := split(w.hours, "-")
	count(parts) == 2
	hms_seconds(parts[0]) == w.start
	hms_seconds(parts[1]) == w.end
	w.start < w.end
}

test_data_session_hours_match_seconds if {
	every w in data.hkconnect.sessions {
		window_matches_hours(w)
	}
}

test_data_no_cancel_hours_match_seconds if {
	every w in data.hkconnect.no_cancel_windows {
		window_matches_hours(w)
	}
}

test_data_broken_window_closes_market if codes({}) == {"market_closed"} with data.hkconnect.sessions as [{"hours": "09:00:00-16:10:00", "start": "32400", "end": 58200, "continuous": true, "closing_auction": false}]
