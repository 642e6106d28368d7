"""The gateway-owned invariant suite every policy bundle must pass.

The suite is Python, outside the bundle: a bundle can neither override nor
delete it. It evaluates a `RegoPolicy` through the production path
(compiled `Program` on the `Rvm`, `RegoPolicy.evaluate_raw` and
`evaluate_sync`, i.e. the same strict `parse_decision` and undefined-marker
checks as a request) with inputs that follow the input document v1 of
docs/POLICIES.md, and asserts safety properties only: nothing here requires
an allow, so a bundle is free to deny more than the suite asks.

Invariants (`run_invariants` returns one `InvariantResult` each):

* ``default_deny``: an empty or minimal input (every member null, or a request
  with no subject, account or facts) is not allowed. For the two inputs the
  gateway can never send (``{}`` and all-null) an evaluation error counts as a
  deny (the gateway fails closed); for the others the decision must parse.
* ``foreign_account``: an account outside the token, in the path, the query or
  the body (order, transfer), or any account for a token with none, is denied
  with at least one reason code.
* ``lowest_category``: an investor of the lowest category (``account.lowest_category``
  true, ``investor_level`` C1) never gets an allow for a buy of an R2..R5
  instrument, with or without ``confirmation.risk_warning_acknowledged``.
* ``frozen_account``: a frozen account cannot trade: buy and sell orders and
  transfers are denied with a reason code.
* ``deny_codes``: every deny reason the bundle produced during the whole run
  (all inputs of all invariants and samples) has a non-empty string code, and
  a decision that does not allow says why (a reason or a step-up).
* ``decision_schema``: for varied samples, wrong-typed fields included (qty as
  a string, price null, missing instrument, ...), the decision always parses
  and is never an allow.

Every evaluation also has to stay within the policy's time budget (an
evaluation over it raises `POLICY_UNAVAILABLE` in `evaluate_raw` and is
reported as a failure where a decision is required).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError
from gateway.policy.decision import parse_decision
from gateway.policy.engine import Decision
from gateway.policy.rego import UNDEFINED, RegoPolicy

Input = dict[str, Any]

# -- inputs (docs/POLICIES.md, input document v1) --------------------------

_ROUTES: dict[str, tuple[str, str, str]] = {
    # name: (method, path template, tier)
    "account": ("GET", "/api/accounts/{account}", "read"),
    "positions": ("GET", "/api/accounts/{account}/positions", "read"),
    "orders_list": ("GET", "/api/accounts/{account}/orders", "read"),
    "order_place": ("POST", "/api/accounts/{account}/orders", "trade"),
    "order_cancel": ("DELETE", "/api/accounts/{account}/orders/{order_id}", "trade"),
    "transfer": ("POST", "/api/accounts/{account}/transfers", "transfer"),
}

TOP_LEVEL_MEMBERS = ("request", "subject", "device", "network", "risk", "mfa", "clock", "order", "cancel",
                     "transfer", "body_accounts", "instrument", "quote", "account", "position", "counters",
                     "restricted", "confirmation")


def _instrument(risk_level: str = "R3") -> dict[str, Any]:
    return {"symbol": "600519.SH", "market": "cn_a", "board": "main", "st": False, "board_lot": 100,
            "min_qty": 100, "prev_close": 1450.0, "limit_up": 1595.0, "limit_down": 1305.0,
            "tick_size": 0.01, "risk_level": risk_level, "currency": "CNY"}


def _account(account_id: str = "A1") -> dict[str, Any]:
    return {"id": account_id, "investor_level": "C4", "lowest_category": False, "assets_cny": 1200000,
            "trading_months": 60, "programme_trading_report": False, "single_trade_limit": 200000,
            "daily_limit": 500000, "frozen": False, "cash": 300000.0, "buying_power": 300000.0}


def base_input(route: str = "order_place", *, account: str = "A1", token_accounts: Sequence[str] = ("A1",),
               side: str = "buy") -> Input:
    """A well-formed input v1 for `route`, by client alice holding `token_accounts`, on `account`.

    The facts describe a plain, unremarkable request (C4 investor, R3 main-board stock, limit order
    inside the price band, a trading day at 09:31:05 Shanghai, low risk): a bundle may allow it.
    """
    method, template, tier = _ROUTES[route]
    params = {"account": account}
    if route == "order_cancel":
        params["order_id"] = "O123"
    path = template.format(**params)
    with_symbol = route in ("order_place", "positions")
    doc: Input = {
        "request": {"id": "req-invariant-0001", "method": method, "path": path, "route": route, "tier": tier,
                    "roles": [], "account": account, "params": params, "query_accounts": [account]},
        "subject": {"sub": "alice", "roles": ["client"], "accounts": list(token_accounts),
                    "acr": "urn:portcullis:acr:pwd", "amr": ["pwd"], "auth_time": 1795600000},
        "device": {"id": None, "user_agent": "portcullis-invariants/1"},
        "network": {"ip": "198.51.100.7"},
        "risk": {"score": 5, "level": "low", "factors": []},
        "mfa": {"acr": "urn:portcullis:acr:pwd", "age_s": 1200},
        "clock": {"epoch": 1795600265.5, "tz": "Asia/Shanghai", "date": "2026-11-25", "weekday": 3,
                  "time": "09:31:05", "second_of_day": 34265, "trading_day": True},
        "order": None,
        "cancel": None,
        "transfer": None,
        "body_accounts": [],
        "instrument": _instrument() if with_symbol else None,
        "quote": {"bid": 1450.75, "ask": 1450.77, "last": 1450.76} if with_symbol else None,
        "account": _account(account),
        "position": ({"symbol": "600519.SH", "qty": 200, "today_bought": 0, "sellable": 200}
                     if with_symbol else None),
        "counters": {"orders_today": 3, "cancels_today": 1, "actions_last_second": 1,
                     "notional_today": 145076.0, "duplicate_client_order_id": False},
        "restricted": {"symbol": False, "person": False},
        "confirmation": {"risk_warning_acknowledged": False},
    }
    if route == "order_place":
        doc["order"] = {"symbol": "600519.SH", "side": side, "qty": 100, "price": 1450.0, "type": "limit",
                        "client_order_id": "c1", "account": None}
    elif route == "order_cancel":
        # The order provider's answer for O123, and the order's instrument (docs/POLICIES.md).
        doc["cancel"] = {"order_id": "O123", "symbol": "600519.SH", "side": "buy", "status": "accepted",
                         "account": account}
        doc["instrument"] = _instrument()
    elif route == "transfer":
        doc["transfer"] = {"direction": "out", "amount": 10000.0, "currency": "CNY",
                           "bank_account_id": "BK-0001", "account": None}
    return doc


def _with(doc: Input, changes: Mapping[str, Any]) -> Input:
    """A deep copy of `doc` with dotted paths set (``"order.qty": "100"``); the value `_DELETE` removes a key."""
    out = copy.deepcopy(doc)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node[key]
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return out


class _Delete:
    def __repr__(self) -> str:
        return "<delete>"


_DELETE: Any = _Delete()


def sample_inputs() -> list[tuple[str, Input]]:
    """Well-formed requests on every route (allow or deny is the bundle's business)."""
    samples = [(f"{route}: owner", base_input(route)) for route in _ROUTES]
    samples += [
        ("order_place: sell of a held position", base_input("order_place", side="sell")),
        ("order_place: market order", _with(base_input(), {"order.type": "market", "order.price": None})),
        ("order_place: high risk score", _with(base_input(), {"risk": {"score": 80, "level": "high", "factors": [
            {"code": "new_device", "points": 40}, {"code": "geo_velocity", "points": 40}]}})),
        ("order_place: outside trading hours", _with(base_input(), {
            "clock.time": "03:00:00", "clock.second_of_day": 10800, "clock.trading_day": False,
            "clock.weekday": 7, "clock.date": "2026-11-29"})),
        ("order_place: restricted symbol", _with(base_input(), {"restricted.symbol": True})),
        ("order_place: ST board", _with(base_input(), {"instrument.st": True})),
        ("transfer: recent MFA", _with(base_input("transfer"), {
            "mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": 30}, "subject.amr": ["pwd", "otp"]})),
    ]
    return samples


def malformed_inputs() -> list[tuple[str, Input]]:
    """Inputs with wrong-typed, missing or absurd fields: each one must be denied, never allowed."""
    order = base_input()
    transfer = base_input("transfer")
    return [
        ("qty as a string", _with(order, {"order.qty": "100"})),
        ("price null on a limit order", _with(order, {"order.price": None})),
        ("price as a string", _with(order, {"order.price": "1450.0"})),
        ("negative price", _with(order, {"order.price": -1450.0})),
        ("missing instrument (unknown symbol)", _with(order, {"instrument": None, "quote": None, "position": None})),
        ("order without a symbol (no instrument facts)", _with(order, {
            "order.symbol": _DELETE, "instrument": None, "quote": None, "position": None})),
        # The facts must be the order's own: a bundle that never ties input.instrument to
        # input.order.symbol judges an order by another instrument's risk level and price band.
        ("order without a symbol (instrument facts present)", _with(order, {"order.symbol": _DELETE})),
        ("symbol as a number", _with(order, {"order.symbol": 600519})),
        ("order symbol differs from the instrument's", _with(order, {"order.symbol": "000001.SZ"})),
        ("zero qty", _with(order, {"order.qty": 0})),
        ("negative qty", _with(order, {"order.qty": -100})),
        ("fractional qty", _with(order, {"order.qty": 100.5})),
        ("absurd qty", _with(order, {"order.qty": 10**12})),
        ("unknown side", _with(order, {"order.side": "short"})),
        ("missing side", _with(order, {"order.side": _DELETE})),
        ("order null on order_place", _with(order, {"order": None})),
        ("order as an array", _with(order, {"order": [order["order"]]})),
        ("no subject", _with(order, {"subject": None})),
        ("token accounts as a string", _with(order, {"subject.accounts": "A1"})),
        ("no account facts on order_place", _with(order, {"account": None})),
        ("investor level as a number", _with(order, {"account.investor_level": 4})),
        ("instrument without a risk level", _with(order, {"instrument.risk_level": _DELETE})),
        ("transfer amount as a string", _with(transfer, {"transfer.amount": "10000"})),
        ("negative transfer amount", _with(transfer, {"transfer.amount": -10000.0})),
        ("transfer null on the transfer route", _with(transfer, {"transfer": None})),
    ]


# -- evaluation --------------------------------------------------------------


@dataclass
class Outcome:
    """One evaluation: the raw document, the parsed decision or the error, and how long it took."""

    label: str
    raw: Any = None
    decision: Decision | None = None
    error: str | None = None
    elapsed: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.decision is not None and self.decision.allow

    def describe(self) -> str:
        if self.decision is None:
            return f"error: {self.error}"
        d = self.decision
        if d.allow:
            return "allow"
        codes = ", ".join(r.code for r in d.deny) or "none"
        return f"deny ({codes})" + (" with step_up" if d.step_up is not None else "")


class Evaluator:
    """Evaluates inputs through `RegoPolicy` (Program + Rvm) and remembers every outcome."""

    def __init__(self, policy: RegoPolicy) -> None:
        self.policy = policy
        self.outcomes: list[Outcome] = []

    def __call__(self, label: str, doc: Mapping[str, Any]) -> Outcome:
        outcome = Outcome(label)
        started = time.perf_counter()
        try:
            # The raw document for the code check (timed: one Rvm evaluation, as per request), then
            # the gateway's own path (strict parse, undefined-marker scan, undefined -> no_decision
            # or policy_unavailable).
            try:
                outcome.raw = self.policy.evaluate_raw(doc)
            finally:
                outcome.elapsed = time.perf_counter() - started
            outcome.decision = self.policy.evaluate_sync(doc)
        except GatewayError as exc:
            outcome.error = f"{exc.code}: {exc.message}"
        self.outcomes.append(outcome)
        return outcome


@dataclass(frozen=True)
class InvariantResult:
    name: str
    description: str
    passed: bool
    cases: int
    failures: tuple[str, ...] = field(default_factory=tuple)


Check = Callable[[Evaluator], tuple[int, list[str]]]


def _default_deny(ev: Evaluator) -> tuple[int, list[str]]:
    failures: list[str] = []
    all_null: Input = dict.fromkeys(TOP_LEVEL_MEMBERS)
    unreachable = [("empty input {}", {}), ("every member null", all_null)]
    for label, doc in unreachable:
        outcome = ev(label, doc)
        if outcome.allowed:
            failures.append(f"{label}: allowed")
    minimal = base_input()
    bare_request: Input = {**all_null, "request": minimal["request"], "body_accounts": []}
    reachable = [
        ("a request and nothing else", bare_request),
        ("no subject (unauthenticated)", _with(minimal, {"subject": None})),
        ("subject with no accounts and no roles", _with(minimal, {"subject.accounts": [], "subject.roles": []})),
    ]
    for label, doc in reachable:
        outcome = ev(label, doc)
        if outcome.decision is None:
            failures.append(f"{label}: no decision: {outcome.error}")
        elif outcome.allowed:
            failures.append(f"{label}: allowed")
    return len(unreachable) + len(reachable), failures


def _denied_with_reason(outcome: Outcome) -> str | None:
    """None when denied with at least one reason code; else what went wrong."""
    if outcome.decision is None:
        return f"no decision: {outcome.error}"
    if outcome.decision.allow:
        return "allowed"
    if not outcome.decision.deny:
        return "not allowed but without a deny reason (step-up only)"
    return None


def _foreign_account(ev: Evaluator) -> tuple[int, list[str]]:
    cases: list[tuple[str, Input]] = []
    for route in _ROUTES:
        cases.append((f"{route}: account B9 in the path", base_input(route, account="B9")))
    for route in ("account", "positions", "orders_list"):
        doc = base_input(route)
        doc["request"]["query_accounts"] = ["B9"]
        cases.append((f"{route}: only account B9 in the query accounts", doc))
        doc = base_input(route)
        doc["request"]["query_accounts"] = ["A1", "B9"]
        cases.append((f"{route}: accounts A1 and B9 in the query", doc))
    cases.append(("order_place: account B9 in the body", _with(base_input(), {
        "order.account": "B9", "body_accounts": ["B9"]})))
    cases.append(("order_place: body_accounts lists B9", _with(base_input(), {"body_accounts": ["A1", "B9"]})))
    cases.append(("transfer: account B9 in the body", _with(base_input("transfer"), {
        "transfer.account": "B9", "body_accounts": ["B9"]})))
    cases.append(("transfer: body_accounts lists B9", _with(base_input("transfer"), {
        "body_accounts": ["B9"]})))
    cases.append(("order_cancel: body_accounts lists B9", _with(base_input("order_cancel"), {
        "body_accounts": ["B9"]})))
    for route in _ROUTES:
        cases.append((f"{route}: token with no account", base_input(route, token_accounts=())))
    cases.append(("order_place: B9 in path and body, A1 in token", _with(base_input(account="B9"), {
        "order.account": "B9", "body_accounts": ["B9"]})))
    return _expect_denied(ev, cases)


def _expect_denied(ev: Evaluator, cases: list[tuple[str, dict[str, Any]]]) -> tuple[int, list[str]]:
    """Each case must be denied with a reason code; returns (cases, failures)."""
    failures = []
    for label, doc in cases:
        problem = _denied_with_reason(ev(label, doc))
        if problem is not None:
            failures.append(f"{label}: {problem}")
    return len(cases), failures


def _lowest_category(ev: Evaluator) -> tuple[int, list[str]]:
    failures = []
    count = 0
    for level in ("R2", "R3", "R4", "R5"):
        for acknowledged in (False, True):
            for order_type, price in (("limit", 1450.0), ("market", None)):
                doc = _with(base_input(), {
                    "account.investor_level": "C1", "account.lowest_category": True,
                    "account.assets_cny": 20000, "account.trading_months": 0,
                    "instrument.risk_level": level, "order.type": order_type, "order.price": price,
                    "confirmation.risk_warning_acknowledged": acknowledged})
                label = (f"C1 lowest category buys {level} ({order_type}, "
                         f"risk warning {'acknowledged' if acknowledged else 'not acknowledged'})")
                outcome = ev(label, doc)
                count += 1
                if outcome.allowed:
                    failures.append(f"{label}: allowed")
    return count, failures


def _frozen_account(ev: Evaluator) -> tuple[int, list[str]]:
    cases = [
        ("frozen account: buy order", _with(base_input(), {"account.frozen": True})),
        ("frozen account: sell order", _with(base_input(side="sell"), {"account.frozen": True})),
        ("frozen account: market buy", _with(base_input(), {"account.frozen": True, "order.type": "market",
                                                           "order.price": None})),
        ("frozen account: buy after risk acknowledgement", _with(base_input(), {
            "account.frozen": True, "confirmation.risk_warning_acknowledged": True})),
        ("frozen account: transfer", _with(base_input("transfer"), {"account.frozen": True})),
        ("frozen account: transfer with fresh MFA", _with(base_input("transfer"), {
            "account.frozen": True, "mfa": {"acr": "urn:portcullis:acr:mfa", "age_s": 10}})),
    ]
    return _expect_denied(ev, cases)


def _decision_schema(ev: Evaluator) -> tuple[int, list[str]]:
    failures = []
    samples = malformed_inputs()
    for label, doc in samples:
        outcome = ev(label, doc)
        if outcome.decision is None:
            failures.append(f"{label}: the decision does not parse: {outcome.error}")
        elif outcome.allowed:
            failures.append(f"{label}: allowed")
    return len(samples), failures


def _deny_codes(ev: Evaluator) -> tuple[int, list[str]]:
    """Over every outcome recorded so far: each deny entry has a non-empty string code."""
    failures = []
    for outcome in ev.outcomes:
        raw = outcome.raw
        if not isinstance(raw, Mapping):
            continue
        deny = raw.get("deny")
        if isinstance(deny, Mapping):  # a set serialised as an object would be a schema error; parse reports it
            continue
        if isinstance(deny, list):
            for index, item in enumerate(deny):
                code = item.get("code") if isinstance(item, Mapping) else None
                if not isinstance(code, str) or not code.strip():
                    failures.append(f"{outcome.label}: deny[{index}] has no code: {item!r}")
        if raw.get("allow") is False and not deny and raw.get("step_up") is None:
            failures.append(f"{outcome.label}: not allowed, but with no deny reason and no step-up")
    return len(ev.outcomes), failures


INVARIANTS: tuple[tuple[str, str, Check], ...] = (
    ("default_deny", "an empty or minimal input is not allowed", _default_deny),
    ("foreign_account", "an account outside the token (path, query or body) is denied with a reason",
     _foreign_account),
    ("lowest_category", "a lowest-category (C1) investor never buys above R1, acknowledged or not",
     _lowest_category),
    ("frozen_account", "a frozen account cannot place orders or transfer", _frozen_account),
    ("decision_schema", "wrong-typed and missing fields: the decision parses and is never an allow",
     _decision_schema),
    ("deny_codes", "every deny carries a non-empty code (over every evaluation of the run)", _deny_codes),
)
"""Run in this order: ``deny_codes`` comes last because it checks every evaluation made before it."""


def run_invariants(policy: RegoPolicy) -> list[InvariantResult]:
    """Run the whole suite against `policy`; never raises for a bad bundle (failures are results)."""
    ev = Evaluator(policy)
    results = []
    for name, description, check in INVARIANTS:
        cases, failures = check(ev)
        results.append(InvariantResult(name=name, description=description, passed=not failures, cases=cases,
                                       failures=tuple(failures)))
    return results


def check_samples(policy: RegoPolicy, *, repeat: int = 5,
                  bound: float | None = None) -> tuple[list[Outcome], list[str]]:
    """Evaluate every sample (well-formed and malformed) `repeat` times through the gateway path.

    Returns the outcomes (the slowest run of each) and the problems: a decision that does not parse
    (schema), an evaluation slower than `bound` seconds (default: the policy's own time budget).
    """
    limit = policy.time_budget if bound is None else bound
    ev = Evaluator(policy)
    worst: list[Outcome] = []
    problems: list[str] = []
    for label, doc in [*sample_inputs(), *[(f"malformed: {lbl}", d) for lbl, d in malformed_inputs()]]:
        runs = [ev(label, doc) for _ in range(max(1, repeat))]
        slowest = max(runs, key=lambda o: o.elapsed)
        worst.append(slowest)
        if slowest.decision is None:
            problems.append(f"{label}: {slowest.error}")
        elif slowest.raw != UNDEFINED:
            try:
                parse_decision(slowest.raw, policy.version)
            except GatewayError as exc:  # pragma: no cover - evaluate_sync parsed it already
                problems.append(f"{label}: {exc}")
        if slowest.elapsed > limit:
            problems.append(f"{label}: {slowest.elapsed * 1000:.1f} ms, over the {limit * 1000:.0f} ms bound")
    return worst, problems
