"""Freeze propagation: how long until a freeze made by one gateway process stops an account on another.

Starts two real gateways (``python -m gateway serve``: examples/portcullis.toml
with the broker bundle, the providers and the risk engine) in front of one demo
backend, sharing one Redis under a run-specific prefix
(loadtests/gateway_cluster.py). Then, ``--trials`` times:

1. ``--orders`` orders for A1 at process A, then ``cancel_burst_min_cancels - 1``
   (49) cancels at once: the day's counters are just below the broker bundle's
   cancel-burst rule (policies/data/programme.json, unchanged);
2. after a pause (``SETTLE``, well inside the rule's one-second window), a separate task starts
   a steady stream of small order attempts for A1 at
   process B, one every ``--gap-ms`` (each its own request, not waiting for
   the previous answer);
3. after a few stream requests, one more cancel at A: the policy returns
   ``freeze_account``, A records the freeze in Redis and answers 403
   ``account_frozen``; the stream stops once B has answered 403 ``account_frozen``;
4. compliance officer carol lifts the freeze through B's admin API, and the
   run's counters and rate-limit buckets for A1 are deleted, so the next trial
   starts from the same state.

Per trial:

* ``a_ms``: from the moment this client received A's answer to the tipping
  cancel to the moment it received B's first 403 ``account_frozen``
  (perf_counter). Negative when B refused before A had answered: A answers only
  after the freeze's notifications and its awaited audit record;
* ``b_ms``: from the freeze record's own ``time`` (written in Redis by A just
  before it stores the freeze) to the arrival time at B (B's audit record
  ``time``) of the earliest order B refused as frozen;
* ``passed_after_ms``: how long after the freeze's ``time`` the last stream
  request that B did NOT refuse as frozen arrived (negative: none arrived after it);
* ``b_latency_ms_before``: B's median answer time to the stream before the
  tipping cancel was sent (how loaded B was).

``resolution_ms`` is the stream's inter-request gap: a propagation shorter than
that cannot be seen. Prints one JSON line (per-trial values, median and max,
the machine); progress goes to stderr. Plain aiohttp clients only: nothing but
the gateways runs in the gateway processes.

Usage::

    .venv/bin/python loadtests/freeze_propagation.py [--trials 7] [--gap-ms 2] [--orders 20]

Needs Redis (``--redis-url``); the processes, the temporary folder and every
key under the run's prefix are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio
from gateway_cluster import ROOT, Cluster, GatewayProcess, gateway_cluster
from redis_keys import delete_matching

from gateway.bench import machine_info

MIN_CANCELS = json.loads((ROOT / "policies" / "data" / "programme.json").read_text())["cancel_burst_min_cancels"]
ORDER = {"symbol": "000001.SZ", "side": "buy", "qty": 100, "price": 11.0, "type": "limit"}
STREAM_WARMUP = 10  # stream requests sent before the tipping cancel
SETTLE = 0.2  # seconds between the burst's first cancels and the stream (well inside the rule's 1 s window)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Sent:
    sent: float
    received: float = 0.0
    status: int = 0
    error: str | None = None
    request_id: str = ""


@dataclass
class Stream:
    """Order attempts for A1 at B, one every ``gap`` seconds, until B refuses one as frozen."""

    s: aiohttp.ClientSession
    gw: GatewayProcess
    headers: dict[str, str]
    gap: float
    trial: int
    sent: list[Sent] = field(default_factory=list)
    frozen: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _one(self, n: int) -> None:
        item = Sent(sent=time.perf_counter())
        self.sent.append(item)
        body = {**ORDER, "client_order_id": f"stream-{self.trial}-{n}"}
        async with self.s.post(f"{self.gw.url}/api/accounts/A1/orders", json=body, headers=self.headers) as r:
            doc = await r.json(content_type=None)
        item.received = time.perf_counter()
        item.status, item.request_id = r.status, r.headers.get("X-Request-Id", "")
        item.error = doc.get("error") if isinstance(doc, dict) else None
        if item.error == "account_frozen":
            self.frozen.set()

    async def run(self, timeout: float) -> None:
        start = time.perf_counter()
        n = 0
        while not self.frozen.is_set():
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"B never refused A1 as frozen within {timeout} s")
            task = asyncio.create_task(self._one(n))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            n += 1
            # Absolute schedule: a late wake-up does not stretch every later gap.
            await asyncio.sleep(max(0.0, start + n * self.gap - time.perf_counter()))
        await asyncio.gather(*self.tasks)


async def call(s: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
               body: Any = None) -> tuple[int, dict[str, Any], str, float]:
    async with s.request(method, url, json=body, headers=headers) as r:
        doc = await r.json(content_type=None)
    return r.status, doc, r.headers.get("X-Request-Id", ""), time.perf_counter()


async def audit_times(gw: GatewayProcess, request_ids: set[str], timeout: float = 5.0) -> dict[str, float]:
    """Arrival time (the audit record's ``time``) of each request, once all are on disk."""
    deadline = time.monotonic() + timeout
    while True:
        found = {r["request_id"]: r["time"] for r in gw.audit()
                 if r.get("request_id") in request_ids and r.get("type") in ("decision", "denial")}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def reset(client: redis.asyncio.Redis, prefix: str) -> None:
    """The day's counters, seen client order ids and rate-limit buckets of this run: gone."""
    for pattern in ("ctr:*", "coid:*", "rl:*"):
        await delete_matching(client, prefix + pattern)


async def trial(n: int, s: aiohttp.ClientSession, stream_s: aiohttp.ClientSession, cluster: Cluster,
                client: redis.asyncio.Redis, args: argparse.Namespace) -> dict[str, Any]:
    a, b = cluster.gateways
    alice = cluster.auth("alice", "A1")
    # Half of the orders at B: its caches (the instrument, the quote, A1's facts) are warm, as in production.
    orders = [f"{(a, b)[i % 2].url}/api/accounts/A1/orders" for i in range(args.orders)]
    await asyncio.gather(*(call(s, "POST", url, alice, {**ORDER, "client_order_id": f"t{n}-o{i}"})
                           for i, url in enumerate(orders)))
    cancel = f"{a.url}/api/accounts/A1/orders/ord-t{n}-"
    first = await asyncio.gather(*(call(s, "DELETE", f"{cancel}{i}", alice) for i in range(MIN_CANCELS - 1)))
    if any(doc.get("error") == "account_frozen" for _, doc, _, _ in first):
        raise SystemExit("A1 froze before the burst reached its cancel count: counters not reset?")
    await asyncio.sleep(SETTLE)  # the burst's load on the machine passes before the stream starts
    stream = Stream(stream_s, b, alice, args.gap_ms / 1000, n)
    streaming = asyncio.create_task(stream.run(args.timeout))
    while len(stream.sent) < STREAM_WARMUP:
        await asyncio.sleep(args.gap_ms / 4000)
    tipping_sent = time.perf_counter()
    answers = {}
    for i in range(MIN_CANCELS - 1, MIN_CANCELS + 20):  # normally the first one tips it
        status, doc, rid, received = await call(s, "DELETE", f"{cancel}{i}", alice)
        answers[rid] = received
        if doc.get("error") == "account_frozen":
            break
    else:
        raise SystemExit("the cancel burst did not freeze A1")
    await streaming
    raw = await client.get(f"{cluster.prefix}freeze:A1")
    if raw is None:
        raise SystemExit("no freeze record in Redis")
    freeze = json.loads(raw)
    tipped_at = answers[freeze["request_id"]]
    refused = [x for x in stream.sent if x.error == "account_frozen"]
    first_refused = min(x.received for x in refused)
    arrivals = await audit_times(b, {x.request_id for x in stream.sent if x.request_id})
    refused_arrivals = [arrivals[x.request_id] for x in refused if x.request_id in arrivals]
    passed = [arrivals[x.request_id] for x in stream.sent
              if x.error != "account_frozen" and x.request_id in arrivals]
    status, lifted, _, _ = await call(s, "POST", f"{b.admin_url}/admin/freezes/A1/lift", cluster.officer(),
                                      {"reason": f"freeze propagation benchmark, trial {n}"})
    if status != 200:
        raise SystemExit(f"lift failed: {status} {lifted}")
    await reset(client, cluster.prefix)
    gaps = [y.sent - x.sent for x, y in zip(stream.sent, stream.sent[1:], strict=False)]
    return {
        "a_ms": round((first_refused - tipped_at) * 1000, 2),
        "b_ms": round((min(refused_arrivals) - freeze["time"]) * 1000, 2) if refused_arrivals else None,
        "passed_after_ms": round((max(passed) - freeze["time"]) * 1000, 2) if passed else None,
        "stream_sent": len(stream.sent),
        "stream_refused": len(refused),
        "stream_gap_ms_mean": round(statistics.fmean(gaps) * 1000, 3) if gaps else None,
        # B's own answer time for the stream before the tipping cancel was sent: its load, for reading a_ms.
        "b_latency_ms_before": round(statistics.median(
            x.received - x.sent for x in stream.sent if x.sent < tipping_sent) * 1000, 2),
        "tipping_cancel": MIN_CANCELS - 1 + len(answers),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2),
            "min": round(min(values), 2)}


async def main(args: argparse.Namespace) -> None:
    prefix = f"pfreeze:{uuid.uuid4().hex[:12]}:"
    load = os.getloadavg()
    client = redis.asyncio.Redis.from_url(args.redis_url)
    try:
        with tempfile.TemporaryDirectory(prefix="portcullis-freeze-") as tmpdir:
            progress("starting the demo backend and two gateways ...")
            async with gateway_cluster(Path(tmpdir), args.redis_url, prefix) as cluster, \
                    aiohttp.ClientSession() as s, aiohttp.ClientSession() as stream_s:
                trials = []
                for n in range(args.trials):
                    r = await trial(n, s, stream_s, cluster, client, args)
                    progress(f"trial {n}: {r}")
                    trials.append(r)
                    await asyncio.sleep(args.pause)
    finally:
        await delete_matching(client, prefix + "*")
        await client.aclose()
    a = [t["a_ms"] for t in trials]
    b = [t["b_ms"] for t in trials if t["b_ms"] is not None]
    print(json.dumps({
        "processes": 2, "trials": trials, "a_ms": summary(a), "b_ms": summary(b) if b else None,
        "resolution_ms": args.gap_ms, "orders": args.orders, "machine": machine_info(),
        "loadavg_before": [round(x, 2) for x in load],
    }, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--gap-ms", type=float, default=2.0, help="the stream's gap between order attempts at B")
    p.add_argument("--orders", type=int, default=20, help="orders placed before each burst (at most 30: the "
                   "stream's orders count too, and cancels must stay >= 90%% of the day's orders)")
    p.add_argument("--redis-url", default=os.environ.get("PORTCULLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--pause", type=float, default=0.5, help="seconds between trials")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds the stream may wait for the freeze")
    asyncio.run(main(p.parse_args()))
