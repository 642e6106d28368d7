"""Latency of the whole policy step, in process: build the input, serialise, Program+Rvm, parse.

    .venv/bin/python loadtests/policy_latency.py [--bundle policies] [--n 20000] [--rounds 10]

What one sample times is exactly what the Decide step does per request:
`gateway.policy.input.build_input(ctx)` on a request context as the facts step
leaves it, then `RegoPolicy.evaluate_sync` (orjson, `Rvm.set_input_json` +
`execute`, undefined-marker scan, strict `parse_decision`). The request id and
the clock change on every sample, as they do per request.

Requests (the example configuration's routes, examples/portcullis.toml):

* ``quote``: ``GET /api/quotes/600519.SH``, the read the gateway bench uses
  (no account, so no facts);
* ``positions``: ``GET /api/accounts/A1/positions``, a read with the account facts;
* ``order``: ``POST /api/accounts/A1/orders``, a limit buy of 100 x 600519.SH
  in continuous trading with every fact (instrument, quote, account, position,
  counters, restricted lists);
* ``transfer``: ``POST /api/accounts/A1/transfers`` with the account facts.

Baselines measured in the same run, interleaved with the bundle in rounds so
that the noise of a shared machine falls on all of them alike:

* ``empty``: a one-rule policy (``decision := {"allow": true, ...}``) on the
  order's input: the floor of the step (build the input, execute, answer).
  It names no input member, so the engine loads none (docs/POLICIES.md,
  "What the embedded engine loads"); a bundle pays ~0.2 us more per object
  member it reads;
* ``reference``: the 123-line policy below on the order's input (plus the
  three members it reads that v1 lacks), the policy DESIGN.md's 64 us figure
  was measured with.

Prints one JSON document: per request p50/p99/mean in microseconds, the
decision, ``p50_vs_reference`` (ratio of medians) and whether the policy
issue's target (p50 <= 100 us, p99 <= 300 us) is met on this run. Judge by
several runs: the machine is shared.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authn.tokens import Subject
from gateway.config import RouteConfig, load
from gateway.context import RequestContext
from gateway.policy.facts import Facts
from gateway.policy.input import build_input
from gateway.policy.rego import RegoPolicy
from gateway.risk.scorer import Factor, RiskResult

TARGET_P50_US = 100.0
TARGET_P99_US = 300.0
ROOT = Path(__file__).resolve().parent.parent

POLICY = """package gateway

import rego.v1

default decision := {
	"allow": false,
	"deny": [{"code": "no_rule", "message": "no rule admits this request"}],
	"step_up": null,
	"obligations": {},
}

tier := input.request.tier

roles := {r | some r in input.subject.roles}

amr := {m | some m in input.subject.amr}

risk_score := object.get(input, ["risk", "score"], 100)

body := object.get(input, "body", {}) if is_object(input.body) else := {}

amount := a if {
	a := body.quantity * body.price
	is_number(a)
} else := 0

limits := data.limits[input.subject.level] if input.subject.level in object.keys(data.limits) else := data.limits.basic

strong_auth if {
	"mfa" in amr
	input.clock.epoch - input.subject.auth_time <= data.step_up.max_age
}

known_symbol if body.symbol in data.symbols

market_open if {
	[h, _, _] := time.clock([input.clock.epoch_ns, "Asia/Shanghai"])
	h >= 9
	h < 15
}

within_limit if {
	is_number(limits.max_order)
	amount <= limits.max_order
}

blocked_network if {
	some cidr in data.blocked_cidrs
	net.cidr_contains(cidr, input.network.ip)
}

deny_reasons contains {"code": "blocked_network", "message": "this network is blocked"} if blocked_network

deny_reasons contains {"code": "unknown_symbol", "message": sprintf("symbol %v is not tradable", [body.symbol])} if {
	tier == "trade"
	not known_symbol
}

deny_reasons contains {"code": "order_too_large", "message": "the order exceeds the customer's limit"} if {
	tier == "trade"
	not within_limit
}

deny_reasons contains {"code": "risk_too_high", "message": "the request's risk is too high"} if risk_score >= 90

deny_reasons contains {"code": "role_forbidden", "message": "admin role required"} if {
	tier == "admin"
	not "admin" in roles
}

deny_reasons contains {"code": "transfer_destination", "message": "unknown destination"} if {
	tier == "transfer"
	not body.destination in object.get(data.beneficiaries, input.request.account, [])
}

needs_step_up if {
	tier in {"trade", "transfer"}
	not strong_auth
}

needs_step_up if {
	tier == "read"
	risk_score >= 60
	not strong_auth
}

obligations := o if {
	tier == "read"
	glob.match("/api/accounts/*", ["/"], input.request.path)
	not "advisor" in roles
	o := {"mask_fields": ["id_number", "phone"]}
} else := {"require_confirmation": true} if {
	tier == "trade"
	amount > limits.confirm_above
} else := {}

decision := {"allow": false, "deny": [r | some r in deny_reasons], "step_up": null, "obligations": {"alert": "x"}} if {
	count(deny_reasons) > 0
}

decision := {
	"allow": false,
	"deny": [{"code": "step_up_required", "message": "a second factor is required"}],
	"step_up": {"acr": data.step_up.acr, "methods": data.step_up.methods, "max_age": data.step_up.max_age},
	"obligations": {},
} if {
	count(deny_reasons) == 0
	needs_step_up
}

decision := {"allow": true, "deny": [], "step_up": null, "obligations": obligations} if {
	count(deny_reasons) == 0
	not needs_step_up
	tier in {"public", "read", "trade", "transfer"}
	"client" in roles
}

decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}} if {
	count(deny_reasons) == 0
	not needs_step_up
	tier == "admin"
	"admin" in roles
}
"""

DATA: dict[str, Any] = {
    "limits": {"basic": {"max_order": 50_000, "confirm_above": 20_000},
               "professional": {"max_order": 5_000_000, "confirm_above": 1_000_000}},
    "symbols": ["600519", "000001", "AAPL", "TSLA", "0700.HK"],
    "blocked_cidrs": ["203.0.113.0/24", "2001:db8::/32"],
    "beneficiaries": {"A1": ["BANK-1"]},
    "step_up": {"acr": "urn:portcullis:acr:mfa", "methods": ["totp", "sms", "face"], "max_age": 300},
}

EMPTY_POLICY = """package gateway

import rego.v1

decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}}
"""

# 2026-11-25 09:31:05 in Shanghai: a trading day, continuous trading.
T_0931 = datetime(2026, 11, 25, 1, 31, 5, tzinfo=UTC).timestamp()

INSTRUMENT = {"symbol": "600519.SH", "market": "cn_a", "board": "main", "st": False, "board_lot": 100,
              "min_qty": 100, "prev_close": 1450.0, "limit_up": 1595.0, "limit_down": 1305.0,
              "tick_size": 0.01, "risk_level": "R3", "currency": "CNY"}
ACCOUNT = {"id": "A1", "investor_level": "C4", "lowest_category": False, "assets_cny": 1200000,
           "trading_months": 60, "programme_trading_report": False, "single_trade_limit": 200000,
           "daily_limit": 500000, "frozen": False, "cash": 300000.0, "buying_power": 300000.0}


def _routes() -> dict[str, RouteConfig]:
    """The example configuration's routes (its provider token comes from the environment)."""
    os.environ.setdefault("PORTCULLIS_BACKEND_INTERNAL_TOKEN", "policy-latency")
    return {r.name: r for r in load(ROOT / "examples" / "portcullis.toml").routes}


def _subject() -> Subject:
    return Subject(sub="alice", iss="demo", accounts=("A1",), roles=("client",), acr="urn:portcullis:acr:pwd",
                   amr=("pwd",), auth_time=int(T_0931) - 1200, jti="j", exp=2**31, iat=None, kid=None,
                   cnf_jkt=None, token_digest=b"d", claims={})


def contexts() -> dict[str, RequestContext]:
    """One request context per measured request, as the steps before Decide leave it."""
    routes = _routes()
    subject = _subject()
    risk = RiskResult(score=15, level="low", factors=(Factor("missing_device_proof", 15),))
    headers = CIMultiDictProxy(CIMultiDict({"User-Agent": "PortcullisDemo/1.0", "Accept": "application/json"}))

    def ctx(route: str, method: str, path: str, params: dict[str, str], body: Any,
            facts: Facts | None) -> RequestContext:
        return RequestContext(
            request_id="req-0", method=method, path=path, query="", route=routes[route], params=params,
            headers=headers, client_ip="198.51.100.7", client_port=50000, scheme="https", started=0.0,
            now=T_0931, body=orjson.dumps(body) if body is not None else None, json_body=body,
            subject=subject, device_id="dev-thumbprint", risk=risk, facts=facts)

    order = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit",
             "client_order_id": "c1"}
    transfer = {"direction": "out", "amount": 10000.0, "currency": "CNY", "bank_account_id": "BK-0001"}
    return {
        "quote": ctx("quotes", "GET", "/api/quotes/600519.SH", {"symbol": "600519.SH"}, None, None),
        "positions": ctx("positions", "GET", "/api/accounts/A1/positions", {"account": "A1"}, None,
                         Facts(account=dict(ACCOUNT))),
        "order": ctx("order_place", "POST", "/api/accounts/A1/orders", {"account": "A1"}, order, Facts(
            instrument=dict(INSTRUMENT), quote={"bid": 1450.75, "ask": 1450.77, "last": 1450.76},
            account=dict(ACCOUNT), position={"symbol": "600519.SH", "qty": 200, "today_bought": 0, "sellable": 200},
            restricted={"symbol": False, "person": False}, trading_day=True,
            counters={"orders_today": 3, "cancels_today": 1, "actions_last_second": 1,
                      "notional_today": 145076.0, "duplicate_client_order_id": False})),
        "transfer": ctx("transfer", "POST", "/api/accounts/A1/transfers", {"account": "A1"}, transfer, Facts(
            account=dict(ACCOUNT), restricted={"symbol": False, "person": False}, trading_day=True)),
    }


def _for_reference(doc: dict[str, Any]) -> dict[str, Any]:
    """The members the reference policy reads besides input v1 (its own order body and level)."""
    order = doc["order"]
    doc["body"] = {"symbol": "600519", "side": order["side"], "quantity": order["qty"] // 10,
                   "price": order["price"]}
    doc["subject"]["level"] = "basic"
    doc["clock"]["epoch_ns"] = int(doc["clock"]["epoch"] * 1e9)
    return doc


def step(policy: RegoPolicy, ctx: RequestContext,
         adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Callable[[int], bool]:
    """The policy step for sample i: a new request id and clock, then build, evaluate, parse."""
    ids = [f"req-{i:08d}" for i in range(1024)]

    def run(i: int) -> bool:
        ctx.request_id = ids[i & 1023]
        ctx.now = T_0931 + (i & 1023) * 0.001
        doc = build_input(ctx, policy.input_members if adapt is None else None)
        if adapt is not None:
            doc = adapt(doc)
        return policy.evaluate_sync(doc).allow

    return run


def _summary(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {"p50_us": round(statistics.median(samples), 1),
            "p99_us": round(samples[max(int(len(samples) * 0.99) - 1, 0)], 1),
            "mean_us": round(statistics.fmean(samples), 1)}


def measure(cases: dict[str, Callable[[int], bool]], n: int, rounds: int) -> dict[str, dict[str, Any]]:
    """n samples per case, taken in `rounds` interleaved slices (case A, B, C, A, B, C, ...)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    clock = time.perf_counter_ns
    for run in cases.values():  # warm-up
        for i in range(300):
            run(i)
    per_round = max(n // rounds, 1)
    gc.collect()
    gc.disable()  # the gateway freezes its heap after start-up; a collection here is not the step's cost
    try:
        for r in range(rounds):
            for name, run in cases.items():
                out = samples[name]
                base = r * per_round
                for i in range(base, base + per_round):
                    start = clock()
                    run(i)
                    out.append((clock() - start) / 1000)
    finally:
        gc.enable()
    return {name: {**_summary(s), "allow": cases[name](0)} for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "policies"), help="policy bundle directory")
    parser.add_argument("--n", type=int, default=20_000, help="samples per request")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved slices")
    args = parser.parse_args()

    bundle = RegoPolicy.from_directory(args.bundle)
    reference = RegoPolicy.from_modules([("reference.rego", POLICY)], DATA)
    empty = RegoPolicy.from_modules([("empty.rego", EMPTY_POLICY)])
    ctxs = contexts()
    cases = {name: step(bundle, ctx) for name, ctx in ctxs.items()}
    cases["baseline_empty"] = step(empty, ctxs["order"])
    cases["baseline_reference"] = step(reference, ctxs["order"], _for_reference)
    results = measure(cases, args.n, args.rounds)
    ref = results["baseline_reference"]["p50_us"]
    for name in ctxs:
        r = results[name]
        r["p50_vs_reference"] = round(r["p50_us"] / ref, 2)
        r["meets_target"] = r["p50_us"] <= TARGET_P50_US and r["p99_us"] <= TARGET_P99_US
    print(json.dumps({
        "bundle": str(args.bundle), "version": bundle.version, "n": args.n, "rounds": args.rounds,
        "target_us": {"p50": TARGET_P50_US, "p99": TARGET_P99_US},
        "reference_policy_lines": POLICY.count("\n"),
        **results,
    }, indent=1))


if __name__ == "__main__":
    main()
