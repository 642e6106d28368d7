"""Latency of one policy decision on the hot path: build input, serialise, Program+Rvm, parse.

    .venv/bin/python loadtests/policy_latency.py [--n 20000]

Prints {"n", "p50_us", "p99_us", "mean_us", "policy_lines", "version"} as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from gateway.policy.rego import RegoPolicy

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


def build_input(i: int) -> dict[str, Any]:
    """Shaped like gateway/policy/input.py:build_input, with a trade body."""
    now = 1795600000.0 + i
    return {
        "request": {"id": f"req-{i}", "method": "POST", "path": "/api/accounts/A1/orders", "route": "orders",
                    "tier": "trade", "roles": [], "account": "A1", "params": {"account": "A1"}},
        "subject": {"sub": "alice", "roles": ["client"], "accounts": ["A1"], "acr": "urn:portcullis:acr:mfa",
                    "amr": ["pwd", "mfa"], "auth_time": int(now) - 60, "level": "basic"},
        "device": {"id": "dev-thumbprint", "user_agent": "PortcullisDemo/1.0"},
        "network": {"ip": "198.51.100.7"},
        "risk": {"score": 25, "level": "low", "factors": [{"code": "missing_device_proof", "points": 15}]},
        "clock": {"epoch": now, "epoch_ns": int(now * 1e9)},
        "body": {"symbol": "600519", "side": "buy", "quantity": 10, "price": 1500.0 + (i % 7)},
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {"p50_us": round(statistics.median(samples), 1),
            "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1),
            "mean_us": round(statistics.fmean(samples), 1)}


def measure_bundle(path: str, n: int) -> dict[str, Any]:
    """The real bundle on the Rvm, for a read and an order (inputs from the invariant suite)."""
    from gateway.policy.invariants import base_input

    policy = RegoPolicy.from_directory(path)
    out: dict[str, Any] = {"bundle": path, "version": policy.version, "n": n}
    for route in ("positions", "order_place"):
        doc = base_input(route)
        for _ in range(200):  # warm-up
            policy.evaluate_sync(doc)
        samples: list[float] = []
        for _ in range(n):
            start = time.perf_counter_ns()
            policy.evaluate_sync(doc)
            samples.append((time.perf_counter_ns() - start) / 1000)
        out[route] = {**_percentiles(samples), "allow": policy.evaluate_sync(doc).allow}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--bundle", help="measure this bundle directory (e.g. policies) instead")
    args = parser.parse_args()
    if args.bundle:
        print(json.dumps(measure_bundle(args.bundle, args.n)))
        return
    policy = RegoPolicy.from_modules([("gateway.rego", POLICY)], DATA)
    first = policy.evaluate_sync(build_input(0))
    assert first.allow, first  # the sample trade is allowed (mfa, within limits)
    for i in range(500):  # warm-up
        policy.evaluate_sync(build_input(i))
    samples: list[float] = []
    clock = time.perf_counter_ns
    for i in range(args.n):
        start = clock()
        policy_input = build_input(i)
        policy.evaluate_sync(policy_input)
        samples.append((clock() - start) / 1000)
    print(json.dumps({
        "n": args.n,
        **_percentiles(samples),
        "policy_lines": POLICY.count("\n"),
        "version": policy.version,
        "decision": {"allow": first.allow, "obligations": dict(first.obligations)},
    }))


if __name__ == "__main__":
    main()
