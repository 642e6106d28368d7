# Tests for policies/ashare.rego (RULES.md, "China A-shares").
#
# Every test starts from base_order_input (a valid main-board limit buy at
# 09:31:05 on a trading day) and changes only what it tests with object.union
# (a deep merge: {"order": {"qty": 150}} replaces the quantity only).
# codes(patch) is the set of deny codes for that input; most tests compare
# it with the exact expected set.
#
# Seconds of day used below:
#   09:14:59 33299  09:15:00 33300  09:16:00 33360  09:19:59 33599
#   09:20:00 33600  09:24:59 33899  09:25:00 33900  09:29:59 34199
#   09:30:00 34200  09:31:05 34265  11:29:59 41399  11:30:00 41400
#   13:00:00 46800  14:56:59 53819  14:57:00 53820  14:59:59 53999
#   15:00:00 54000

package gateway.ashare_test

import rego.v1

import data.gateway.ashare

base_order_input := {
	"request": {"route": "order_place", "tier": "trade", "account": "A1"},
	"clock": {"tz": "Asia/Shanghai", "date": "2026-11-25", "weekday": 3, "time": "09:31:05", "second_of_day": 34265, "trading_day": true},
	"order": {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit", "client_order_id": "c1", "account": null},
	"cancel": null,
	"transfer": null,
	"instrument": {
		"symbol": "600519.SH", "market": "cn_a", "board": "main", "st": false,
		"board_lot": 100, "min_qty": 100, "prev_close": 1450.0, "limit_up": 1595.0,
		"limit_down": 1305.0, "tick_size": 0.01, "risk_level": "R3", "currency": "CNY",
	},
	"quote": {"bid": 1450.75, "ask": 1450.77, "last": 1450.76},
	"position": {"symbol": "600519.SH", "qty": 200, "today_bought": 0, "sellable": 200},
}

codes(patch) := {d.code | some d in denies} if {
	denies := ashare.deny with input as object.union(base_order_input, patch)
}

at(second) := {"clock": {"second_of_day": second}}

cancel_at(second) := {"clock": {"second_of_day": second}, "order": null, "cancel": {"order_id": "o1"}}

sell(qty, price) := {"order": {"side": "sell", "qty": qty, "price": price}}

# A STAR stock at 30.00 (tick 0.01): min 200 shares, +-20% band.
star := {"instrument": {"symbol": "688001.SH", "board": "star", "board_lot": 1, "min_qty": 200, "prev_close": 30.0}, "quote": {"bid": 30.0, "ask": 30.0, "last": 30.0}, "order": {"price": 30.0, "qty": 200}}

# A ChiNext stock at 30.00.
chinext := {"instrument": {"symbol": "300001.SZ", "board": "chinext", "prev_close": 30.0}, "quote": {"bid": 30.0, "ask": 30.0, "last": 30.0}, "order": {"price": 30.0}}

# A low-priced main-board stock at 3.00, where 10 ticks (0.10) exceed 2% (0.06).
cheap := {"instrument": {"prev_close": 3.0}, "quote": {"bid": 3.0, "ask": 3.0, "last": 3.0}, "order": {"price": 3.0}}

# --- scope ------------------------------------------------------------------

test_loaded if ashare.loaded == true

test_obligation_empty if count(ashare.obligation) == 0

test_valid_main_board_buy if codes({}) == set()

test_other_market_ignored if codes({"instrument": {"market": "hk_connect"}, "order": {"qty": 150}}) == set()

test_no_order_no_cancel_ignored if codes({"order": null, "clock": {"trading_day": false}}) == set()

# --- sessions (boundaries are half-open: start inclusive, end exclusive) ----

test_non_trading_day_closed if codes({"clock": {"trading_day": false}}) == {"market_closed"}

test_trading_day_not_boolean_closed if codes({"clock": {"trading_day": "true"}}) == {"market_closed"}

test_clock_missing_closed if codes({"clock": {"second_of_day": null}}) == {"market_closed"}

test_clock_string_closed if codes({"clock": {"second_of_day": "34265"}}) == {"market_closed"}

test_091459_closed if codes(at(33299)) == {"market_closed"}

test_091500_opening_call if codes(at(33300)) == set()

test_092459_opening_call if codes(at(33899)) == set()

test_092500_closed if codes(at(33900)) == {"market_closed"}

test_092959_closed if codes(at(34199)) == {"market_closed"}

test_093000_continuous if codes(at(34200)) == set()

test_112959_continuous if codes(at(41399)) == set()

test_113000_closed if codes(at(41400)) == {"market_closed"}

test_130000_continuous if codes(at(46800)) == set()

test_145659_continuous if codes(at(53819)) == set()

test_145700_closing_call if codes(at(53820)) == set()

test_145959_closing_call if codes(at(53999)) == set()

test_150000_closed if codes(at(54000)) == {"market_closed"}

# --- cancels ----------------------------------------------------------------

test_cancel_091459_closed if codes(cancel_at(33299)) == {"market_closed"}

test_cancel_091500_allowed if codes(cancel_at(33300)) == set()

test_cancel_091959_allowed if codes(cancel_at(33599)) == set()

test_cancel_092000_refused if codes(cancel_at(33600)) == {"cancel_window_closed"}

test_cancel_092200_refused if codes(cancel_at(33720)) == {"cancel_window_closed"}

test_cancel_092459_refused if codes(cancel_at(33899)) == {"cancel_window_closed"}

test_cancel_092500_closed if codes(cancel_at(33900)) == {"market_closed"}

test_cancel_093000_allowed if codes(cancel_at(34200)) == set()

test_cancel_145659_allowed if codes(cancel_at(53819)) == set()

test_cancel_145700_refused if codes(cancel_at(53820)) == {"cancel_window_closed"}

test_cancel_150000_closed if codes(cancel_at(54000)) == {"market_closed"}

test_cancel_non_trading_day_closed if codes(object.union(cancel_at(34200), {"clock": {"trading_day": false}})) == {"market_closed"}

# --- market orders ----------------------------------------------------------

test_market_order_continuous_allowed if codes({"order": {"type": "market", "price": null}}) == set()

test_market_order_opening_call_refused if codes(object.union(at(33360), {"order": {"type": "market", "price": null}})) == {"market_order_not_allowed_now"}

test_market_order_145659_allowed if codes(object.union(at(53819), {"order": {"type": "market", "price": null}})) == set()

test_market_order_145700_refused if codes(object.union(at(53820), {"order": {"type": "market", "price": null}})) == {"market_order_not_allowed_now"}

# --- order shape ------------------------------------------------------------

test_side_unknown_invalid if "invalid_order" in codes({"order": {"side": "short"}})

test_type_unknown_invalid if "invalid_order" in codes({"order": {"type": "stop"}})

test_qty_zero_invalid if codes({"order": {"qty": 0}}) == {"invalid_order"}

test_qty_negative_invalid if codes({"order": {"qty": -100}}) == {"invalid_order"}

test_qty_fraction_invalid if codes({"order": {"qty": 100.5}}) == {"invalid_order"}

test_qty_string_invalid if codes({"order": {"qty": "100"}}) == {"invalid_order"}

test_limit_price_missing_invalid if codes({"order": {"price": null}}) == {"invalid_order"}

test_limit_price_string_invalid if codes({"order": {"price": "1450.00"}}) == {"invalid_order"}

test_limit_price_zero_invalid if codes({"order": {"price": 0}}) == {"invalid_order"}

test_limit_price_off_tick_invalid if codes({"order": {"price": 1450.005}}) == {"invalid_order"}

test_unknown_board_invalid_instrument if "invalid_instrument" in codes({"instrument": {"board": "beijing"}})

test_st_flag_missing_invalid_instrument if "invalid_instrument" in codes({"instrument": {"st": null}})

test_tick_missing_invalid_instrument if "invalid_instrument" in codes({"instrument": {"tick_size": null}})

# --- lots -------------------------------------------------------------------

test_main_buy_99_refused if codes({"order": {"qty": 99}}) == {"lot_size"}

test_main_buy_100_allowed if codes({"order": {"qty": 100}}) == set()

test_main_buy_150_refused if codes({"order": {"qty": 150}}) == {"lot_size"}

test_main_buy_200_allowed if codes({"order": {"qty": 200}}) == set()

test_main_sell_100_allowed if codes(sell(100, 1450.0)) == set()

# Holding 150 (odd remainder 50): the remainder goes in one order.
test_main_sell_whole_odd_holding_allowed if codes(object.union(sell(150, 1450.0), {"position": {"qty": 150, "sellable": 150}})) == set()

test_main_sell_odd_remainder_alone_allowed if codes(object.union(sell(50, 1450.0), {"position": {"qty": 150, "sellable": 150}})) == set()

test_main_sell_part_of_odd_remainder_refused if codes(object.union(sell(30, 1450.0), {"position": {"qty": 150, "sellable": 150}})) == {"lot_size"}

test_main_sell_odd_without_remainder_refused if codes(sell(150, 1450.0)) == {"lot_size"}

test_main_sell_1000000_allowed if codes(object.union(sell(1000000, 1450.0), {"position": {"qty": 2000000, "sellable": 2000000}})) == set()

test_main_buy_1000000_allowed if codes({"order": {"qty": 1000000}}) == set()

test_main_buy_1000100_too_large if codes({"order": {"qty": 1000100}}) == {"order_too_large"}

test_main_market_1000100_too_large if codes({"order": {"qty": 1000100, "type": "market", "price": null}}) == {"order_too_large"}

test_star_buy_199_refused if codes(object.union(star, {"order": {"qty": 199}})) == {"lot_size"}

test_star_buy_200_allowed if codes(star) == set()

test_star_buy_201_allowed if codes(object.union(star, {"order": {"qty": 201}})) == set()

test_star_sell_150_of_1000_refused if codes(object.union(star, {"order": {"side": "sell", "qty": 150}, "position": {"qty": 1000, "sellable": 1000}})) == {"lot_size"}

test_star_sell_whole_holding_below_200_allowed if codes(object.union(star, {"order": {"side": "sell", "qty": 150}, "position": {"qty": 150, "sellable": 150}})) == set()

test_star_limit_100000_allowed if codes(object.union(star, {"order": {"qty": 100000}})) == set()

test_star_limit_100001_too_large if codes(object.union(star, {"order": {"qty": 100001}})) == {"order_too_large"}

test_star_market_50000_allowed if codes(object.union(star, {"order": {"qty": 50000, "type": "market", "price": null}})) == set()

test_star_market_50001_too_large if codes(object.union(star, {"order": {"qty": 50001, "type": "market", "price": null}})) == {"order_too_large"}

test_chinext_buy_150_refused if codes(object.union(chinext, {"order": {"qty": 150}})) == {"lot_size"}

test_chinext_limit_300000_allowed if codes(object.union(chinext, {"order": {"qty": 300000}})) == set()

test_chinext_limit_300100_too_large if codes(object.union(chinext, {"order": {"qty": 300100}})) == {"order_too_large"}

test_chinext_market_150000_allowed if codes(object.union(chinext, {"order": {"qty": 150000, "type": "market", "price": null}})) == set()

test_chinext_market_150100_too_large if codes(object.union(chinext, {"order": {"qty": 150100, "type": "market", "price": null}})) == {"order_too_large"}

# --- price bands (tested at 09:16:00, opening call: no cage) ---------------

test_main_band_plus_10_percent_allowed if codes(object.union(at(33360), {"order": {"price": 1595.0}})) == set()

test_main_band_one_tick_above_refused if codes(object.union(at(33360), {"order": {"price": 1595.01}})) == {"price_outside_band"}

test_main_band_minus_10_percent_allowed if codes(object.union(at(33360), {"order": {"price": 1305.0}})) == set()

test_main_band_one_tick_below_refused if codes(object.union(at(33360), {"order": {"price": 1304.99}})) == {"price_outside_band"}

# 10.05 x 1.1 = 11.055, rounded half up to 11.06; 10.05 x 0.9 = 9.045 -> 9.05.
test_band_rounds_half_up if {
	codes(object.union(at(33360), {"instrument": {"prev_close": 10.05}, "order": {"price": 11.06}})) == set()
	codes(object.union(at(33360), {"instrument": {"prev_close": 10.05}, "order": {"price": 11.07}})) == {"price_outside_band"}
	codes(object.union(at(33360), {"instrument": {"prev_close": 10.05}, "order": {"price": 9.05}})) == set()
	codes(object.union(at(33360), {"instrument": {"prev_close": 10.05}, "order": {"price": 9.04}})) == {"price_outside_band"}
}

test_st_band_plus_5_percent_allowed if codes(object.union(at(33360), {"instrument": {"st": true}, "order": {"price": 1522.5}})) == set()

test_st_band_one_tick_above_refused if codes(object.union(at(33360), {"instrument": {"st": true}, "order": {"price": 1522.51}})) == {"price_outside_band"}

test_star_band_plus_20_percent_allowed if codes(object.union(star, object.union(at(33360), {"order": {"price": 36.0}}))) == set()

test_star_band_one_tick_above_refused if codes(object.union(star, object.union(at(33360), {"order": {"price": 36.01}}))) == {"price_outside_band"}

test_chinext_band_minus_20_percent_allowed if codes(object.union(chinext, object.union(at(33360), {"order": {"price": 24.0}}))) == set()

test_chinext_band_one_tick_below_refused if codes(object.union(chinext, object.union(at(33360), {"order": {"price": 23.99}}))) == {"price_outside_band"}

test_band_prev_close_missing_refused if "invalid_instrument" in codes({"instrument": {"prev_close": null}})

# --- price cage (continuous trading) ----------------------------------------

# Main board, ask 1450.77: 102% = 1479.7854, so 1479.78 is the highest buy.
test_cage_buy_102_percent_allowed if codes({"order": {"price": 1479.78}}) == set()

test_cage_buy_above_102_percent_refused if codes({"order": {"price": 1479.79}}) == {"price_cage"}

# Bid 1450.75: 98% = 1421.735, so 1421.74 is the lowest sell.
test_cage_sell_98_percent_allowed if codes(sell(100, 1421.74)) == set()

test_cage_sell_below_98_percent_refused if codes(sell(100, 1421.73)) == {"price_cage"}

# At 3.00, reference + 10 ticks (3.10) is above 102% (3.06) and wins.
test_cage_buy_10_ticks_allowed if codes(object.union(cheap, {"order": {"price": 3.1}})) == set()

test_cage_buy_11_ticks_refused if codes(object.union(cheap, {"order": {"price": 3.11}})) == {"price_cage"}

test_cage_sell_10_ticks_allowed if codes(object.union(cheap, sell(100, 2.9))) == set()

test_cage_sell_11_ticks_refused if codes(object.union(cheap, sell(100, 2.89))) == {"price_cage"}

# STAR: 102% only, no 10-tick arm (30.00 -> 30.60).
test_star_cage_buy_102_percent_allowed if codes(object.union(star, {"order": {"price": 30.6}})) == set()

test_star_cage_buy_above_102_percent_refused if codes(object.union(star, {"order": {"price": 30.61}})) == {"price_cage"}

test_star_cage_sell_98_percent_allowed if codes(object.union(star, {"order": {"side": "sell", "price": 29.4}, "position": {"qty": 200, "sellable": 200}})) == set()

test_star_cage_sell_below_98_percent_refused if codes(object.union(star, {"order": {"side": "sell", "price": 29.39}, "position": {"qty": 200, "sellable": 200}})) == {"price_cage"}

# No cage in the auctions: 1590 is within the band and refused only at 09:31.
test_cage_not_in_opening_call if codes(object.union(at(33360), {"order": {"price": 1590.0}})) == set()

test_cage_in_continuous if codes({"order": {"price": 1590.0}}) == {"price_cage"}

# Reference fallbacks: no ask -> bid; no quote at all -> previous close.
test_cage_reference_bid_without_ask if {
	codes({"quote": {"ask": null, "bid": 1400.0}, "order": {"price": 1428.0}}) == set()
	codes({"quote": {"ask": null, "bid": 1400.0}, "order": {"price": 1428.01}}) == {"price_cage"}
}

test_cage_reference_prev_close_without_quote if {
	codes({"quote": null, "order": {"price": 1479.0}}) == set()
	codes({"quote": null, "order": {"price": 1479.01}}) == {"price_cage"}
}

test_cage_wrong_typed_quote_refused if codes({"quote": {"ask": "1450.77"}}) == {"price_cage"}

test_market_order_no_cage if codes({"order": {"type": "market", "price": null}, "quote": null}) == set()

# --- T+1 --------------------------------------------------------------------

test_sell_within_sellable_allowed if codes(sell(200, 1450.0)) == set()

test_sell_above_sellable_refused if codes(sell(300, 1450.0)) == {"insufficient_sellable"}

# Bought 100 today, none held before: nothing is sellable today.
test_sell_todays_shares_refused if codes(object.union(sell(100, 1450.0), {"position": {"qty": 100, "today_bought": 100, "sellable": 0}})) == {"insufficient_sellable"}

# A provider that forgot today's buys: qty - today_bought still caps the sell.
test_sell_todays_shares_despite_provider_refused if codes(object.union(sell(200, 1450.0), {"position": {"qty": 200, "today_bought": 100, "sellable": 200}})) == {"insufficient_sellable"}

test_sell_without_position_refused if "insufficient_sellable" in codes(object.union(sell(100, 1450.0), {"position": null}))

test_sell_position_string_refused if "insufficient_sellable" in codes(object.union(sell(100, 1450.0), {"position": {"sellable": "200"}}))

test_buy_without_position_allowed if codes({"position": null}) == set()

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
	every w in data.ashare.sessions {
		window_matches_hours(w)
	}
}

test_data_no_cancel_hours_match_seconds if {
	every w in data.ashare.no_cancel_windows {
		window_matches_hours(w)
	}
}

test_data_broken_window_closes_market if codes({}) == {"market_closed"} with data.ashare.sessions as [{"hours": "09:00:00-16:10:00", "start": "32400", "end": 58200, "continuous": true, "closing_auction": false}]
