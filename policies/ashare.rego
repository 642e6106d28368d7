# China A-shares trading rules: RULES.md, section "China A-shares".
#
# Package gateway.ashare. policies/gateway.rego collects:
#   deny        a set of {"code": snake_case, "message": sentence}
#   obligation  a set of objects (always empty here)
#   loaded      true when this module is in the bundle
#
# Scope: a request whose instrument is on the A-share market
# (input.instrument.market == "cn_a") and that places a new order
# (input.order) or cancels one (input.cancel). On a cancel the gateway fills
# input.instrument from the order being cancelled (its order provider); an
# order it cannot find is denied by gateway.rego (order_not_found).
#
# Every figure (session times, lot sizes, order limits, bands, cage) lives in
# data.ashare (policies/data/ashare.json); compliance signs those off.
#
# How the rules are written (docs/POLICIES.md, "Writing rules safely on
# regorus"): each denial fires when a POSITIVE check (the `..._ok` rules) is
# not true. A missing, wrong-typed or erroring field leaves the check
# undefined, so the order is denied, never allowed by accident. Figures from
# the data file are checked with is_number before they are compared. In each
# deny rule the check that holds for a usual order comes first: the Rvm stops
# at the first condition that fails, and the order of a rule's conditions does
# not change its value.
#
# Time windows are HALF-OPEN, [start, end): the start second belongs to the
# window, the end second does not. With the data file as signed off:
#   09:14:59 closed        09:15:00 opening call (orders, cancels)
#   09:19:59 may cancel    09:20:00 - 09:24:59 no cancels
#   09:25:00 - 09:29:59 closed (RULES.md lists no session there)
#   09:30:00 - 11:29:59 continuous; 11:30:00 - 12:59:59 closed
#   13:00:00 - 14:56:59 continuous
#   14:57:00 - 14:59:59 closing call: no cancels, no market orders
#   15:00:00 closed
# A cancel outside every session is refused as `market_closed`.
#
# Prices are compared in whole ticks (integers), never as raw decimals, so
# that 1450 * 1.1 = 1595.0000000000002 cannot refuse a price of exactly +10%.

package gateway.ashare

import rego.v1

# (A default with no other definition: the Rvm answers it without running a body.)
default loaded := true

# No A-share rule creates an obligation or asks for a step-up; the sets are
# kept so gateway.rego can collect them like the other packages' (an empty
# step_up set lets its plain-allow branch answer without collecting).
default obligation := set()

default step_up := set()

# ---------------------------------------------------------------------------
# Scope
# ---------------------------------------------------------------------------

applies_order if {
	input.instrument.market == "cn_a"
	is_object(input.order)
}

applies_cancel if {
	input.instrument.market == "cn_a"
	is_object(input.cancel)
}

# Also the scope package gateway reads: every rule below needs applies,
# applies_order or applies_cancel. (Written out rather than calling them:
# gateway.rego reads `applies` on every request, and on a usual order no
# other rule reaches applies_order; each rule call costs.)
default applies := false

applies := true if {
	input.instrument.market == "cn_a"
	is_object(input.order)
}

applies := true if {
	input.instrument.market == "cn_a"
	is_object(input.cancel)
}

# ---------------------------------------------------------------------------
# The usual order: one guard for the denials below
# ---------------------------------------------------------------------------

# The denials of this package are written as `order_deny` (except
# insufficient_sellable, a sell-only check that a buy stops at once) and
# reach `deny` only when `order_checks_hold` is not true. It lists, one line
# each, the positive checks those denials test: every `order_deny` rule has a
# condition that is the negation of one line here (`not lot_ok` against
# `lot_ok`, `is_object(input.cancel)` against `not is_object(input.cancel)`),
# so while every line holds no `order_deny` rule can fire and the Rvm skips
# the whole group (~10 rule bodies) on a usual order. A new order_deny rule
# needs its check here too: tests/test_policy_guards.py fails otherwise. A
# rule written as `deny contains` is always evaluated.
order_checks_hold if {
	not is_object(input.cancel)
	not input.order.type == "market"
	market_open
	order_shape_ok
	instrument_ok
	is_number(price_ticks)
	lot_ok
	size_ok
	band_ok
	cage_ok
}

deny contains d if {
	not order_checks_hold
	some d in order_deny
}

# ---------------------------------------------------------------------------
# Clock and sessions
# ---------------------------------------------------------------------------

# The request time (input.clock.second_of_day) is exchange-local
# (Asia/Shanghai), computed by the gateway. The windows of the data file are
# in seconds since midnight ("start", "end"; "hours" is the same window
# written HH:MM:SS for readers, and the tests check that both agree). The
# windows are used only when every start and end is a number: one broken
# window makes the rules below refuse everything (a broken data file fails
# closed). Windows are half-open, [start, end): inside when start <= t and
# t < end, written out in the loops below (the Rvm pays for every rule and
# function call, so the time and the window check are not rules of their own).

# RULES.md: "Sessions: opening call 9:15-9:25, continuous 9:30-11:30 and
# 13:00-14:57, closing call 14:57-15:00 (Asia/Shanghai, trading days only)."
# A window without a "continuous" member is skipped, as it always was.
market_open if {
	input.clock.trading_day == true
	t := input.clock.second_of_day
	is_number(t)
	sessions := data.ashare.sessions
	every w in sessions {
		is_number(w.start)
		is_number(w.end)
	}
	some w in sessions
	w.start <= t
	t < w.end
	_ = w.continuous
}

# The continuous-trading sessions (9:30-11:30 and 13:00-14:57). market_open
# holds whenever a continuous window is open, so it brings the trading day,
# the clock and the window check.
continuous_now if {
	market_open
	t := input.clock.second_of_day
	some w in data.ashare.sessions
	w.start <= t
	t < w.end
	w.continuous == true
}

# Cancels only (the cancel path is not the hot one; it keeps its helpers).
now := t if {
	t := input.clock.second_of_day
	is_number(t)
}

no_cancel_windows_ok if {
	every w in data.ashare.no_cancel_windows {
		is_number(w.start)
		is_number(w.end)
	}
}

outside_window(t, w) if t < w.start

outside_window(t, w) if t >= w.end

# RULES.md: "No cancels 9:20-9:25 and 14:57-15:00."
cancel_window_ok if {
	is_number(now)
	no_cancel_windows_ok
	every w in data.ashare.no_cancel_windows {
		outside_window(now, w)
	}
}

# RULES.md (Sessions): orders and cancels only during a session on a trading day.
order_deny contains {"code": "market_closed", "message": "The A-share market is not open for orders or cancels at this time (sessions 09:15-09:25, 09:30-11:30, 13:00-15:00 on trading days)."} if {
	not market_open
	applies
}

# RULES.md: "No cancels 9:20-9:25 and 14:57-15:00."
order_deny contains {"code": "cancel_window_closed", "message": "Cancels are not accepted from 09:20 to 09:25 and from 14:57 to 15:00."} if {
	is_object(input.cancel) # (in applies_cancel: an order stops here without calling it)
	applies_cancel
	market_open
	not cancel_window_ok
}

# RULES.md: "Market orders only in continuous trading."
order_deny contains {"code": "market_order_not_allowed_now", "message": "Market orders are accepted only during continuous trading (09:30-11:30 and 13:00-14:57)."} if {
	input.order.type == "market"
	applies_order
	not continuous_now
}

# ---------------------------------------------------------------------------
# The order itself
# ---------------------------------------------------------------------------

# A positive whole number of shares.
qty := q if {
	q := input.order.qty
	is_number(q)
	q > 0
	q == floor(q)
}

order_shape_ok if {
	input.order.side in {"buy", "sell"}
	input.order.type in {"limit", "market"}
	is_number(qty)
}

# Order types (input document v1): side buy|sell, type limit|market, a
# positive whole quantity.
order_deny contains {"code": "invalid_order", "message": "An order needs side buy or sell, type limit or market, and a positive whole number of shares."} if {
	not order_shape_ok
	applies_order
}

# Instrument reference data the rules below depend on: a known board, an ST
# flag, a positive previous close and tick size.
board := b if {
	b := data.ashare.boards[input.instrument.board]
	is_object(b)
}

tick := t if {
	t := input.instrument.tick_size
	is_number(t)
	t > 0
}

prev_close := p if {
	p := input.instrument.prev_close
	is_number(p)
	p > 0
}

instrument_ok if {
	is_object(board)
	is_boolean(input.instrument.st)
	is_number(tick)
	is_number(prev_close)
}

order_deny contains {"code": "invalid_instrument", "message": "The instrument's reference data is incomplete or names an unknown board (main, star or chinext)."} if {
	not instrument_ok
	applies_order
}

# A limit order's price in whole ticks; undefined unless the price is a
# positive number on the tick grid (within the float tolerance of the data
# file: 1479.78 / 0.01 = 147977.99999999997 is still tick 147978).
price_ticks := n if {
	p := input.order.price
	is_number(p)
	p > 0
	tol := data.ashare.tick_tolerance
	is_number(tol)
	x := p / tick
	n := round(x)
	abs(x - n) <= tol
}

# Limit orders need a positive price that is a multiple of the tick size.
order_deny contains {"code": "invalid_order", "message": "A limit order needs a positive price that is a multiple of the tick size."} if {
	input.order.type == "limit"
	not is_number(price_ticks)
	applies_order
	instrument_ok
}

# ---------------------------------------------------------------------------
# Lots and order size
# ---------------------------------------------------------------------------

# Shares the customer may sell today: the provider's `sellable`, and never
# more than the holding minus today's buys (T+1, checked again here).
# (Members named one by one: the engine then loads only these of the
# position, docs/POLICIES.md "What the embedded engine loads".)
sellable := s if {
	is_object(input.position)
	n := input.position.sellable
	held := input.position.qty
	bought := input.position.today_bought
	is_number(n)
	is_number(held)
	is_number(bought)
	s := min([n, held - bought])
}

# RULES.md: "main board buys in multiples of 100"; "STAR: at least 200, then
# steps of 1" (buy_lot 1, min_qty 200 for STAR in the data file). Sells in
# the same normal steps (multiples of 100 on the main board and ChiNext, at
# least 200 then steps of 1 on STAR). (Rules used more than once in a body
# are bound to a local: each call costs the Rvm even when cached.)
lot_ok if {
	input.order.side in {"buy", "sell"}
	b := board
	min_qty := b.min_qty
	lot := b.buy_lot
	is_number(min_qty)
	is_number(lot)
	q := qty
	q >= min_qty
	q % lot == 0
}

# RULES.md: "an odd remainder is sold in one order". A holding that is not a
# multiple of 100 (after a bonus share issue, say 150 shares) has an odd
# remainder of 50. That remainder must leave in a single order: a sell that
# is not a multiple of 100 is allowed only if its odd part equals the odd
# part of the sellable shares (qty % 100 == sellable % 100) and it does not
# exceed them. So 50 or 150 of 150 may be sold, 30 of 150 may not.
lot_ok if {
	input.order.side == "sell"
	b := board
	b.odd_remainder_sell == true
	lot := b.buy_lot
	is_number(lot)
	s := sellable
	is_number(s)
	q := qty
	q % lot == s % lot
	q <= s
}

# STAR: a holding of fewer than 200 sellable shares is sold whole, in one order.
lot_ok if {
	input.order.side == "sell"
	min_qty := board.min_qty
	is_number(min_qty)
	s := sellable
	is_number(s)
	s < min_qty
	qty == s
}

order_deny contains {"code": "lot_size", "message": "The quantity does not fit the board's lot rules (main board and ChiNext: buys in multiples of 100, an odd remainder sold in one order; STAR: at least 200 shares)."} if {
	not lot_ok
	applies_order
	order_shape_ok
	instrument_ok
}

# RULES.md: "at most 1,000,000 shares per order" (main board); "STAR: limit
# orders <= 100,000, market orders <= 50,000"; "ChiNext: limit orders
# <= 300,000, market orders <= 150,000 (unconfirmed)".
size_ok if {
	m := board.max_qty[input.order.type]
	is_number(m)
	qty <= m
}

order_deny contains {"code": "order_too_large", "message": "The quantity is above the per-order maximum for this board and order type."} if {
	not size_ok
	applies_order
	order_shape_ok
	instrument_ok
}

# ---------------------------------------------------------------------------
# Price band (daily limit) vs the previous close
# ---------------------------------------------------------------------------

# RULES.md: "main board +-10%, STAR and ChiNext +-20%, ST +-5%" (ST +-5% is
# applied to the main board; STAR and ChiNext ST stocks keep +-20%, see the
# data file).
#
# Limit prices in ticks: previous close x (1 +- band), rounded half up to the
# tick as the exchanges publish them (10.05 +10% = 11.055 -> 11.06). Integer
# arithmetic: ticks x (10000 +- basis points), + 5000, / 10000, floor.
# One definition per ST flag (the band in basis points is board.band_bp for
# a non-ST stock, board.st_band_bp for an ST one), written out rather than
# as a rule of its own.
band_ok if {
	input.instrument.st == false
	b := board.band_bp
	is_number(b)
	prev_close_ticks := round(prev_close / tick)
	p := price_ticks
	p <= floor(((prev_close_ticks * (10000 + b)) + 5000) / 10000)
	p >= floor(((prev_close_ticks * (10000 - b)) + 5000) / 10000)
}

band_ok if {
	input.instrument.st == true
	b := board.st_band_bp
	is_number(b)
	prev_close_ticks := round(prev_close / tick)
	p := price_ticks
	p <= floor(((prev_close_ticks * (10000 + b)) + 5000) / 10000)
	p >= floor(((prev_close_ticks * (10000 - b)) + 5000) / 10000)
}

# Market orders carry no price and are not checked against the band here.
order_deny contains {"code": "price_outside_band", "message": "The limit price is outside the daily price band around the previous close."} if {
	input.order.type == "limit"
	not band_ok
	applies_order
	is_number(price_ticks)
}

# ---------------------------------------------------------------------------
# Price cage (continuous trading, limit orders)
# ---------------------------------------------------------------------------

# The reference price (STAR/ChiNext rules, applied to every board because
# RULES.md names no other): for a buy the best ask; without an ask the best
# bid; without either the last price; before any trade the previous close.
# For a sell the best bid first, then the best ask, last, previous close.
# A missing quote (null) or a zero price counts as absent; a quote of any
# other type or a negative one makes the reference undefined (order denied).
#
# The quote as an object: {} when there is none (null); undefined for any
# other type, which leaves the reference undefined.
#
# Rules with several exclusive definitions are written as `else` chains: the
# Rvm evaluates every definition of a rule with a computed value (to detect
# conflicts), but stops at the first true branch of a chain.
quote_obj := input.quote if is_object(input.quote) else := {} if input.quote == null

# The candidates in order: the quote's first and second side for the order's
# side, then last, then the previous close.
reference_sides := ["ask", "bid"] if input.order.side == "buy" else := ["bid", "ask"] if input.order.side == "sell"

# A usable price is a number > 0; an absent one is null or 0.
absent_price(v) if v == null

absent_price(v) if v == 0

# The first usable candidate, provided every candidate before it is absent
# (the four branches exclude each other; the first one is the usual case).
# Every branch needs the previous close (the last candidate) to be valid, as
# the reference is only defined with a complete list of candidates.
reference := v if {
	# The usual case, written out: a buy's ask (a sell's bid) in a quote object.
	# It is the next branch's value whenever it holds.
	input.order.side == "buy"
	prev_close > 0
	v := input.quote.ask
	is_number(v)
	v > 0
} else := v if {
	input.order.side == "sell"
	prev_close > 0
	v := input.quote.bid
	is_number(v)
	v > 0
} else := v if {
	prev_close > 0
	sides := reference_sides
	v := object.get(quote_obj, sides[0], null)
	is_number(v)
	v > 0
} else := v if {
	prev_close > 0
	sides := reference_sides
	q := quote_obj
	absent_price(object.get(q, sides[0], null))
	v := object.get(q, sides[1], null)
	is_number(v)
	v > 0
} else := v if {
	prev_close > 0
	sides := reference_sides
	q := quote_obj
	absent_price(object.get(q, sides[0], null))
	absent_price(object.get(q, sides[1], null))
	v := object.get(q, "last", null)
	is_number(v)
	v > 0
} else := prev_close if {
	prev_close > 0
	sides := reference_sides
	q := quote_obj
	absent_price(object.get(q, sides[0], null))
	absent_price(object.get(q, sides[1], null))
	absent_price(object.get(q, "last", null))
}

# The reference in whole ticks is round(reference / tick).
#
# The usual case first, written out: a buy within 102% of the best ask (a
# sell within 98% of the best bid). The best ask (bid) is then the reference
# (the first branch of its chain), so each of these two definitions holds
# only when the 102% (98%) definition below holds too: they change no
# answer, they only spare the reference's rule on the usual order.
cage_ok if {
	input.order.side == "buy"
	prev_close > 0
	ask := input.quote.ask
	is_number(ask)
	ask > 0
	bp := board.cage_bp
	is_number(bp)
	price_ticks * 10000 <= round(ask / tick) * (10000 + bp)
}

cage_ok if {
	input.order.side == "sell"
	prev_close > 0
	bid := input.quote.bid
	is_number(bid)
	bid > 0
	bp := board.cage_bp
	is_number(bp)
	price_ticks * 10000 >= round(bid / tick) * (10000 - bp)
}

# RULES.md: "buy <= max(102% of reference, reference + 10 ticks)".
# 102%: price x 10000 <= reference x 10200, compared in whole ticks.
cage_ok if {
	input.order.side == "buy"
	bp := board.cage_bp
	is_number(bp)
	price_ticks * 10000 <= round(reference / tick) * (10000 + bp)
}

# The "+10 ticks" arm; STAR has none (cage_ticks null: "STAR 102%/98% only").
cage_ok if {
	input.order.side == "buy"
	ticks := board.cage_ticks
	is_number(ticks)
	price_ticks <= round(reference / tick) + ticks
}

# RULES.md: "sell >= min(98%, reference - 10 ticks)".
cage_ok if {
	input.order.side == "sell"
	bp := board.cage_bp
	is_number(bp)
	price_ticks * 10000 >= round(reference / tick) * (10000 - bp)
}

cage_ok if {
	input.order.side == "sell"
	ticks := board.cage_ticks
	is_number(ticks)
	price_ticks >= round(reference / tick) - ticks
}

order_deny contains {"code": "price_cage", "message": "During continuous trading a limit price must stay within the price cage: buys at most 2% (or 10 ticks) above the best ask, sells at most 2% (or 10 ticks) below the best bid."} if {
	input.order.type == "limit"
	not cage_ok
	continuous_now
	applies_order
	is_number(price_ticks)
}

# ---------------------------------------------------------------------------
# T+1
# ---------------------------------------------------------------------------

# RULES.md: "T+1: shares bought today are not sellable today." A sell needs
# a position whose sellable shares cover the quantity; no position denies
# (an undefined quantity or sellable count makes the comparison undefined).
deny contains {"code": "insufficient_sellable", "message": "The sell quantity is more than the shares sellable today (shares bought today can be sold from the next trading day)."} if {
	input.order.side == "sell"
	not qty <= sellable
	applies_order
}
