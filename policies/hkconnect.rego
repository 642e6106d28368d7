# Hong Kong Stock Connect (southbound) trading rules: RULES.md, section
# "Hong Kong Stock Connect (southbound)".
#
# Package gateway.hkconnect. policies/gateway.rego collects:
#   deny        a set of {"code": snake_case, "message": sentence}
#   obligation  a set of objects (always empty here)
#   loaded      true when this module is in the bundle
#
# Scope: a request whose instrument is a Connect security
# (input.instrument.market == "hk_connect") and that places a new order
# (input.order) or cancels one (input.cancel). On a cancel the gateway fills
# input.instrument from the order being cancelled (its order provider); an
# order it cannot find is denied by gateway.rego (order_not_found).
# input.clock.trading_day is
# taken to be the Connect calendar (both Hong Kong and the mainland open).
#
# Every figure lives in data.hkconnect (policies/data/hkconnect.json). The
# board lot comes from the instrument's reference data (it differs per stock).
#
# How the rules are written (docs/POLICIES.md, "Writing rules safely on
# regorus"): each denial fires when a POSITIVE check (the `..._ok` rules) is
# not true, so a missing, wrong-typed or erroring field denies.
#
# Time windows are HALF-OPEN, [start, end): the start second belongs to the
# window, the end second does not. Hong Kong time equals Asia/Shanghai time.
#   08:59:59 closed         09:00:00 pre-opening
#   09:14:59 may cancel     09:15:00 - 09:19:59 no cancels
#   09:30:00 - 11:59:59 continuous; 12:00:00 - 12:59:59 closed
#   13:00:00 - 15:59:59 continuous
#   16:00:00 - 16:09:59 closing auction (+-5% of the reference price)
#   16:06:00 - 16:09:59 no cancels
#   16:10:00 closed
# A cancel outside every session is refused as `market_closed`.

package gateway.hkconnect

import rego.v1

# (A default with no other definition: the Rvm answers it without running a body.)
default loaded := true

# No Connect rule creates an obligation or asks for a step-up; the sets are
# kept so gateway.rego can collect them like the other packages' (an empty
# step_up set lets its plain-allow branch answer without collecting).
default obligation := set()

default step_up := set()

cfg := data.hkconnect

# ---------------------------------------------------------------------------
# Scope
# ---------------------------------------------------------------------------

applies_order if {
	input.instrument.market == "hk_connect"
	is_object(input.order)
}

applies_cancel if {
	input.instrument.market == "hk_connect"
	is_object(input.cancel)
}

# Also the scope package gateway reads: every rule below needs applies,
# applies_order or applies_cancel. (Written out rather than calling them:
# gateway.rego reads `applies` on every request, most of them outside this
# market, and each rule call costs.)
default applies := false

applies := true if {
	input.instrument.market == "hk_connect"
	is_object(input.order)
}

applies := true if {
	input.instrument.market == "hk_connect"
	is_object(input.cancel)
}

# ---------------------------------------------------------------------------
# Clock and sessions
# ---------------------------------------------------------------------------

now := t if {
	t := input.clock.second_of_day
	is_number(t)
}

# The windows of the data file, in seconds since midnight ("start", "end";
# "hours" is the same window written HH:MM:SS for readers, and the tests
# check that both agree). A window whose start or end is not a number is
# dropped, and the *_ok rules below then refuse everything because the counts
# differ (a broken data file fails closed).
sessions := [{"start": s, "end": e, "closing_auction": w.closing_auction} |
	some w in cfg.sessions
	s := w.start
	e := w.end
	is_number(s)
	is_number(e)
]

no_cancel_windows := [{"start": s, "end": e} |
	some w in cfg.no_cancel_windows
	s := w.start
	e := w.end
	is_number(s)
	is_number(e)
]

sessions_ok if count(sessions) == count(cfg.sessions)

no_cancel_windows_ok if count(no_cancel_windows) == count(cfg.no_cancel_windows)

# Half-open window: start inclusive, end exclusive.
in_window(t, w) if {
	w.start <= t
	t < w.end
}

outside_window(t, w) if t < w.start

outside_window(t, w) if t >= w.end

# RULES.md: "Pre-opening 9:00-9:30 ..., continuous 9:30-12:00 and
# 13:00-16:00, closing auction 16:00-16:10".
market_open if {
	input.clock.trading_day == true
	sessions_ok
	some w in sessions
	in_window(now, w)
}

closing_auction_now if {
	input.clock.trading_day == true
	sessions_ok
	some w in sessions
	w.closing_auction == true
	in_window(now, w)
}

# RULES.md: "(no cancels 9:15-9:20)", "no cancels 16:06-16:10".
cancel_window_ok if {
	is_number(now)
	no_cancel_windows_ok
	every w in no_cancel_windows {
		outside_window(now, w)
	}
}

# RULES.md (sessions): orders and cancels only during a session on a trading day.
deny contains {"code": "market_closed", "message": "Stock Connect is not open for orders or cancels at this time (sessions 09:00-12:00 and 13:00-16:10 on Connect trading days)."} if {
	applies
	not market_open
}

# RULES.md: "no cancels 9:15-9:20", "no cancels 16:06-16:10".
deny contains {"code": "cancel_window_closed", "message": "Cancels are not accepted from 09:15 to 09:20 and from 16:06 to 16:10."} if {
	applies_cancel
	market_open
	not cancel_window_ok
}

# ---------------------------------------------------------------------------
# The order itself
# ---------------------------------------------------------------------------

side_ok if input.order.side in {"buy", "sell"}

# A positive whole number of shares.
qty := q if {
	q := input.order.qty
	is_number(q)
	q > 0
	q == floor(q)
}

# Limit orders with a positive price (market orders are refused below).
price_ok if {
	input.order.type == "limit"
	p := input.order.price
	is_number(p)
	p > 0
}

order_shape_ok if {
	side_ok
	input.order.type in {"limit", "market"}
	is_number(qty)
}

deny contains {"code": "invalid_order", "message": "An order needs side buy or sell, type limit, and a positive whole number of shares."} if {
	applies_order
	not order_shape_ok
}

deny contains {"code": "invalid_order", "message": "A limit order needs a positive price."} if {
	applies_order
	input.order.type == "limit"
	not price_ok
}

# RULES.md: "No market orders."
deny contains {"code": "market_order_not_allowed", "message": "Stock Connect accepts limit orders only."} if {
	applies_order
	input.order.type == "market"
}

# The instrument's board lot: a positive whole number of shares.
board_lot := n if {
	n := input.instrument.board_lot
	is_number(n)
	n > 0
	n == floor(n)
}

deny contains {"code": "invalid_instrument", "message": "The instrument's reference data has no valid board lot."} if {
	applies_order
	not is_number(board_lot)
}

# ---------------------------------------------------------------------------
# Lots and order size
# ---------------------------------------------------------------------------

# RULES.md: "Buy whole board lots only; odd lots may be sold, never bought."
lot_ok if {
	input.order.side == "buy"
	qty % board_lot == 0
}

lot_ok if {
	input.order.side == "sell"
	is_number(qty)
}

deny contains {"code": "lot_size", "message": "Stock Connect buys must be whole board lots (odd lots may only be sold)."} if {
	applies_order
	order_shape_ok
	is_number(board_lot)
	not lot_ok
}

# RULES.md: "At most 3,000 lots per order."
size_ok if {
	m := cfg.max_lots_per_order
	is_number(m)
	qty <= m * board_lot
}

deny contains {"code": "order_too_large", "message": "A Stock Connect order may not exceed 3,000 board lots."} if {
	applies_order
	order_shape_ok
	is_number(board_lot)
	not size_ok
}

# ---------------------------------------------------------------------------
# Closing auction price limit
# ---------------------------------------------------------------------------

# The closing auction reference price. Input v1 has no field for it, so the
# last trade price (quote.last) stands in; without it the order is refused.
reference := r if {
	r := input.quote.last
	is_number(r)
	r > 0
}

# RULES.md: "closing auction 16:00-16:10 (+-5% of the reference price)".
# Compared as price x 10000 against reference x (10000 +- 500) with a tiny
# relative slack for binary floating point (data: float_tolerance).
closing_price_ok if {
	bp := cfg.closing_auction_band_bp
	tol := cfg.float_tolerance
	is_number(bp)
	is_number(tol)
	p := input.order.price
	is_number(p)
	p * 10000 <= (reference * (10000 + bp)) * (1 + tol)
	p * 10000 >= (reference * (10000 - bp)) * (1 - tol)
}

deny contains {"code": "price_outside_band", "message": "In the closing auction the limit price must be within 5% of the reference price."} if {
	applies_order
	closing_auction_now
	price_ok
	not closing_price_ok
}
