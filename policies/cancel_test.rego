# Cancels through the whole bundle (data.gateway.decision): the gateway fills
# input.cancel (symbol, side, status, account) and input.instrument from the
# order being cancelled, so the market packages judge a cancel by the order's
# market: its sessions (RULES.md "Sessions: ... trading days only"; Stock
# Connect "Pre-opening 9:00-9:30 ..., closing auction 16:00-16:10") and its
# no-cancel windows (A-shares "No cancels 9:20-9:25 and 14:57-15:00"; Stock
# Connect "no cancels 9:15-9:20", "no cancels 16:06-16:10"). The windows'
# times come from policies/data/ashare.json and hkconnect.json.
#
# Seconds of day: 09:14:59 33299, 09:15:00 33300, 09:19:59 33599,
# 09:20:00 33600, 16:05:59 57959, 16:06:00 57960, 16:10:00 58200.

package gateway.cancel_test

import rego.v1

import data.gateway.gateway_test.cancel_input

decide(patch) := d if {
	d := data.gateway.decision with input as object.union(cancel_input, patch)
}

codes(patch) := {r.code | some r in decide(patch).deny}

at(second) := {"clock": {"second_of_day": second}}

# A Stock Connect order (Tencent) being cancelled.
hk := {
	"cancel": {"symbol": "00700.HK"},
	"instrument": {"symbol": "00700.HK", "market": "hk_connect", "board": null, "board_lot": 100, "currency": "HKD"},
}

hk_at(second) := object.union(hk, at(second))

# --- the order being cancelled -----------------------------------------------

test_cancel_own_order_allowed if decide({}).allow == true

# An unknown order id: the provider found nothing, every order field is null.
unknown := {"cancel": {"symbol": null, "side": null, "status": null, "account": null}, "instrument": null}

test_cancel_unknown_order_denied if {
	d := decide(unknown)
	d.allow == false
	codes(unknown) == {"order_not_found"}
}

# Another account's order (a provider that answered it anyway): the same answer.
test_cancel_other_accounts_order_denied if codes({"cancel": {"account": "B9"}}) == {"order_not_found"}

test_cancel_wrong_typed_fields_denied if {
	codes({"cancel": {"symbol": 600519}}) == {"order_not_found"}
	codes({"cancel": {"side": "short"}}) == {"order_not_found"}
	codes({"cancel": {"status": null}}) == {"order_not_found"}
	codes({"cancel": {"account": null}}) == {"order_not_found"}
}

# A known order whose instrument the reference data lacks, or a mismatch.
test_cancel_without_instrument_denied if {
	codes({"instrument": null}) == {"route_checks_failed"}
	codes({"instrument": {"symbol": "000001.SZ"}}) == {"route_checks_failed"}
}

# --- A-shares: sessions and no-cancel windows ----------------------------------

test_ashare_cancel_091459_closed if codes(at(33299)) == {"market_closed"}

test_ashare_cancel_091500_allowed if decide(at(33300)).allow == true

test_ashare_cancel_091959_allowed if decide(at(33599)).allow == true

test_ashare_cancel_092000_window_closed if codes(at(33600)) == {"cancel_window_closed"}

test_ashare_cancel_145700_window_closed if codes(at(53820)) == {"cancel_window_closed"}

test_ashare_cancel_lunch_closed if codes(at(43200)) == {"market_closed"}

test_ashare_cancel_150000_closed if codes(at(54000)) == {"market_closed"}

test_ashare_cancel_non_trading_day_closed if codes({"clock": {"trading_day": false}}) == {"market_closed"}

test_ashare_cancel_clock_missing_denied if codes({"clock": {"second_of_day": "09:31:05"}}) == {"market_closed"}

# --- Stock Connect: sessions and no-cancel windows -------------------------------

test_hk_cancel_085959_closed if codes(hk_at(32399)) == {"market_closed"}

test_hk_cancel_091459_allowed if decide(hk_at(33299)).allow == true

test_hk_cancel_091500_window_closed if codes(hk_at(33300)) == {"cancel_window_closed"}

test_hk_cancel_091959_window_closed if codes(hk_at(33599)) == {"cancel_window_closed"}

test_hk_cancel_092000_allowed if decide(hk_at(33600)).allow == true

test_hk_cancel_160559_allowed if decide(hk_at(57959)).allow == true

test_hk_cancel_160600_window_closed if codes(hk_at(57960)) == {"cancel_window_closed"}

test_hk_cancel_161000_closed if codes(hk_at(58200)) == {"market_closed"}

test_hk_cancel_lunch_closed if codes(hk_at(45000)) == {"market_closed"}

test_hk_cancel_non_trading_day_closed if codes(object.union(hk, {"clock": {"trading_day": false}})) == {"market_closed"}
