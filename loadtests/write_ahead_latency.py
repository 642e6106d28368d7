"""What the write-ahead adds to an order's latency, measured through real gateways.

    .venv/bin/python loadtests/write_ahead_latency.py [--n 1000] [--rounds 3] [--rate 80]

Two real gateway processes (``python -m gateway serve``: examples/portcullis.toml's routes,
risk engine, fact providers, rate limits and audit trail, shared state on Redis; see
gateway_cluster.py) in front of the demo backend, with a permissive one-rule Rego bundle so
every order is placed. They differ in one thing: where their audit folder is.

* **disk**: on the project's disk, as deployed: an order is forwarded only once its decision
  record is written and ``fdatasync``ed (group commit).
* **tmpfs**: on /dev/shm, where ``fdatasync`` returns at once: the same code, the same chain,
  the same executor hand-off, but no wait for the disk.

The difference between the two is what waiting for a durable record adds to an order (the
issue's budget: <= 2 ms at p99). This process is only the client: each round it sends ``n``
orders at a fixed ``rate`` to each gateway in turn (alternating which goes first), each with a
fresh DPoP proof, and times each HTTP exchange (not the proof's signing). Prints one JSON object:
per round and as medians, p50/p99 per gateway and their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from gateway.client import DeviceKey, HttpRequest, HttpResponse, StepUpClient, aiohttp_send  # noqa: E402

POLICY = """package gateway
import rego.v1
decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}}
"""
ORDER = {"symbol": "601318.SH", "side": "buy", "qty": 1, "price": 57.2, "type": "limit"}
TMPFS = Path("/dev/shm")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def phase(client: StepUpClient, send: Any, n: int, rate: float) -> dict[str, Any]:
    latencies: list[float] = []

    async def timed(req: HttpRequest) -> HttpResponse:
        t0 = time.perf_counter()
        answer: HttpResponse = await send(req)
        latencies.append((time.perf_counter() - t0) * 1000)
        return answer

    statuses: dict[int, int] = {}
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result = await client.request(timed, "POST", "/api/accounts/A1/orders", ORDER, expect=(201,))
        statuses[result.response.status] = statuses.get(result.response.status, 0) + 1
    return {"p50_ms": round(pct(latencies, 0.50), 3), "p99_ms": round(pct(latencies, 0.99), 3),
            "statuses": statuses}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-write-ahead-{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory() as tmp_dir, \
            tempfile.TemporaryDirectory(dir=TMPFS, prefix="portcullis-audit-") as shm_dir:
        tmp = Path(tmp_dir)
        bundle = tmp / "bundle"
        bundle.mkdir()
        (bundle / "policy.rego").write_text(POLICY)
        audit_dirs = [tmp / "disk-audit", Path(shm_dir) / "audit"]
        try:
            async with gateway_cluster(tmp, args.redis, prefix, processes=2, bundle=bundle,
                                       audit_dirs=audit_dirs) as cluster, aiohttp.ClientSession() as http:
                device = DeviceKey.generate()
                token = cluster.token("alice", "A1", extra={"cnf": {"jkt": device.thumbprint}})
                clients = {name: StepUpClient(gw.url, token, None, device=device)
                           for name, gw in zip(("disk", "tmpfs"), cluster.gateways, strict=True)}
                send = aiohttp_send(http)
                for client in clients.values():  # warm up: connections, caches, the bundle's first runs
                    await phase(client, send, 100, args.rate)
                rounds: list[dict[str, Any]] = []
                for r in range(args.rounds):
                    order = ("disk", "tmpfs") if r % 2 == 0 else ("tmpfs", "disk")
                    result = {name: await phase(clients[name], send, args.n, args.rate) for name in order}
                    result["added_p99_ms"] = round(result["disk"]["p99_ms"] - result["tmpfs"]["p99_ms"], 3)
                    result["added_p50_ms"] = round(result["disk"]["p50_ms"] - result["tmpfs"]["p50_ms"], 3)
                    rounds.append(result)
                    print(json.dumps(result), file=sys.stderr)
        finally:
            await drop_prefix(args.redis, prefix)

    def median(key: str, sub: str | None = None) -> float:
        return round(float(statistics.median(r[key][sub] if sub else r[key] for r in rounds)), 3)
    return {
        "n": args.n, "rate": args.rate, "rounds": rounds,
        "disk_p50_ms": median("disk", "p50_ms"), "disk_p99_ms": median("disk", "p99_ms"),
        "tmpfs_p50_ms": median("tmpfs", "p50_ms"), "tmpfs_p99_ms": median("tmpfs", "p99_ms"),
        "added_p50_ms_median": median("added_p50_ms"), "added_p99_ms_median": median("added_p99_ms"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="orders per gateway and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=80.0, help="orders per second (the route allows 100)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    print(json.dumps(asyncio.run(run(p.parse_args()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
