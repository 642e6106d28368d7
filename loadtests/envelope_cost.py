"""Gateway CPU per order: SM4-GCM encrypted against plaintext, in the same run.

    .venv/bin/python loadtests/envelope_cost.py [--n 600] [--rounds 3] [--rate 80] [--redis redis://127.0.0.1:6379/0]

One real gateway process (``python -m gateway serve``, examples/portcullis.toml's
routes, risk engine, fact providers and rate limits, shared state on Redis) in
front of the demo backend (gateway_cluster.py), and a permissive one-rule Rego
bundle so every order is placed (the policy's own cost is the same for both
cases). This process is only the client: it agrees a session key with the SDK,
then sends ``n`` orders in plaintext and ``n`` encrypted, alternating the two
each round, at a fixed ``rate`` per second (the order route allows 100 per
second per account) with a fresh DPoP proof each. The gateway's CPU time
(``/proc/<pid>/stat`` user + system) over each phase, divided by the orders,
is its CPU per order; the ratio encrypted / plaintext is the envelope's cost
(the issue's budget: at most 1.15). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtests"))

from gateway_cluster import gateway_cluster  # noqa: E402
from redis_keys import drop_prefix  # noqa: E402

from gateway.client import DeviceKey, StepUpClient, aiohttp_send  # noqa: E402
from gateway.client.envelope import agree  # noqa: E402

POLICY = """package gateway
import rego.v1
decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}}
"""
ORDER = {"symbol": "601318.SH", "side": "buy", "qty": 1, "price": 57.2, "type": "limit"}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def phase(client: StepUpClient, send: Any, pid: int, n: int, rate: float) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    start_cpu, start = cpu_seconds(pid), time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result = await client.request(send, "POST", "/api/accounts/A1/orders", ORDER, expect=(201,))
        statuses[result.response.status] = statuses.get(result.response.status, 0) + 1
    await asyncio.sleep(0.2)  # the gateway's background work for the last orders (audit, learning)
    return {"cpu_us_per_order": (cpu_seconds(pid) - start_cpu) / n * 1e6, "statuses": statuses}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-envelope-{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        bundle = tmp / "bundle"
        bundle.mkdir()
        (bundle / "policy.rego").write_text(POLICY)
        try:
            async with gateway_cluster(tmp, args.redis, prefix, processes=1, bundle=bundle) as cluster, \
                    aiohttp.ClientSession() as http:
                gw = cluster.gateways[0]
                device = DeviceKey.generate()
                token = cluster.token("alice", "A1", extra={"cnf": {"jkt": device.thumbprint}})
                plain = StepUpClient(gw.url, token, None, device=device)
                sealed = StepUpClient(gw.url, token, None, device=device)
                flow = agree(gw.url, plain.headers, sub="alice", jkt=device.thumbprint)
                try:
                    method, url, headers, body = next(flow)
                    while True:
                        async with http.request(method, url, headers=headers, data=body) as r:
                            answer = (r.status, await r.read())
                        method, url, headers, body = flow.send(answer)
                except StopIteration as done:
                    sealed.envelope = done.value
                send = aiohttp_send(http)
                await phase(plain, send, gw.proc.pid, 50, args.rate)  # warm up both paths
                await phase(sealed, send, gw.proc.pid, 50, args.rate)
                rounds: list[dict[str, Any]] = []
                for _ in range(args.rounds):
                    p = await phase(plain, send, gw.proc.pid, args.n, args.rate)
                    e = await phase(sealed, send, gw.proc.pid, args.n, args.rate)
                    rounds.append({"plaintext": p, "encrypted": e,
                                   "ratio": e["cpu_us_per_order"] / p["cpu_us_per_order"]})
        finally:
            await drop_prefix(args.redis, prefix)
    return {
        "n": args.n, "rounds": rounds, "rate": args.rate,
        "plaintext_cpu_us_median": round(statistics.median(r["plaintext"]["cpu_us_per_order"] for r in rounds), 1),
        "encrypted_cpu_us_median": round(statistics.median(r["encrypted"]["cpu_us_per_order"] for r in rounds), 1),
        "ratio_median": round(statistics.median(r["ratio"] for r in rounds), 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600, help="orders per case and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=80.0, help="orders per second (the route allows 100)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    print(json.dumps(asyncio.run(run(p.parse_args()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
