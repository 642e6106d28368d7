"""What shadow mode costs the policy step, in process, against shadow off in the same run.

    .venv/bin/python loadtests/shadow_cost.py [--bundle policies] [--n 20000] [--rounds 10] [--redis URL]

One sample is what the Decide step does per request (`build_input` + the
`ActivePolicy` evaluation) on the example's requests (`policy_latency.py`'s
``quote`` and ``order``), then ``await asyncio.sleep(0)`` so the loop runs
whatever the request left behind (a deferred shadow evaluation). Two times
per sample: ``critical`` (build + evaluate: what the request waits for) and
``total`` (including the loop turn: the process's CPU per request).

Cases, interleaved in rounds so a shared machine's noise falls on all alike;
the candidate is the same bundle compiled a second time (every shadowed
request pays a full evaluation, and decisions are the same):

* ``off``: no shadow session (the baseline every ratio is against);
* ``deferred``: shadow on, ``shadow_mode = "deferred"`` (the default), rate 1;
* ``inline``: shadow on, evaluated at once, rate 1;
* ``deferred_10pct``: deferred with ``sample_rate = 0.1``;
* ``twice``: no shadow, the step evaluating the input twice on the *same*
  bundle (two serialisations, two evaluations on one warm Rvm);
* ``naive``: no shadow, the step evaluating the active bundle and then the
  candidate, each serialising the input itself, no bookkeeping: what a
  shadow evaluation costs at the least without reusing the JSON text.

With ``--redis`` it also times the per-second flush of a session's counts
(one pipelined round trip: 20 counters and 10 samples) on that Redis.
Prints one JSON document with p50s in microseconds and ratios to ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_latency import T_0931, contexts  # noqa: E402

from gateway.bundles.repository import ShadowSession  # noqa: E402
from gateway.bundles.runtime import ActivePolicy  # noqa: E402
from gateway.bundles.shadow import ShadowRunner, _Tally  # noqa: E402
from gateway.config import PolicyAdminConfig  # noqa: E402
from gateway.context import RequestContext  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.policy.input import build_input  # noqa: E402
from gateway.policy.rego import RegoPolicy  # noqa: E402
from gateway.state.memory import MemoryStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _active(bundle: RegoPolicy, candidate: RegoPolicy | None, *, mode: str, rate: float) -> ActivePolicy:
    active = ActivePolicy(bundle)
    if candidate is None:
        return active
    cfg = PolicyAdminConfig(shadow_mode=mode, shadow_queue=1_000_000)  # type: ignore[arg-type]
    runner = ShadowRunner(cfg, MemoryStore(), time_budget=0.05, metrics=Metrics())
    runner.begin(ShadowSession(id=1, version=candidate.version, sample_rate=rate, started_by="bench",
                               started_at=time.time()), candidate)
    active.shadow = runner
    return active


async def _sample(active: ActivePolicy | RegoPolicy | None, bundle: RegoPolicy, ctx: RequestContext, i: int,
                  out_critical: list[float], out_total: list[float]) -> None:
    clock = time.perf_counter_ns
    ctx.request_id = f"req-{i:08d}"
    ctx.now = T_0931 + (i & 1023) * 0.001
    start = clock()
    doc = build_input(ctx)
    if active is None:  # "twice"
        bundle.evaluate_sync(doc)
        bundle.evaluate_sync(doc)
    elif isinstance(active, RegoPolicy):  # "naive": active, then the candidate, no shared JSON
        bundle.evaluate_sync(doc)
        active.evaluate_sync(doc)
    else:
        await active.evaluate(doc)
    mid = clock()
    await asyncio.sleep(0)
    end = clock()
    out_critical.append((mid - start) / 1000)
    out_total.append((end - start) / 1000)


async def measure(bundle: RegoPolicy, candidate: RegoPolicy, n: int, rounds: int) -> dict[str, Any]:
    cases: dict[str, ActivePolicy | RegoPolicy | None] = {
        "off": _active(bundle, None, mode="deferred", rate=1.0),
        "deferred": _active(bundle, candidate, mode="deferred", rate=1.0),
        "inline": _active(bundle, candidate, mode="inline", rate=1.0),
        "deferred_10pct": _active(bundle, candidate, mode="deferred", rate=0.1),
        "twice": None,
        "naive": candidate,
    }
    results: dict[str, Any] = {}
    for request in ("quote", "order"):
        ctx = contexts()[request]
        crit: dict[str, list[float]] = {name: [] for name in cases}
        total: dict[str, list[float]] = {name: [] for name in cases}
        for active in cases.values():  # warm-up
            for i in range(300):
                await _sample(active, bundle, ctx, i, [], [])
        per_round = max(n // rounds, 1)
        gc.collect()
        gc.disable()
        try:
            for r in range(rounds):
                for name, active in cases.items():
                    for i in range(r * per_round, (r + 1) * per_round):
                        await _sample(active, bundle, ctx, i, crit[name], total[name])
        finally:
            gc.enable()
        off_c, off_t = statistics.median(crit["off"]), statistics.median(total["off"])
        results[request] = {name: {
            "critical_p50_us": round(statistics.median(crit[name]), 1),
            "total_p50_us": round(statistics.median(total[name]), 1),
            "critical_vs_off": round(statistics.median(crit[name]) / off_c, 2),
            "total_vs_off": round(statistics.median(total[name]) / off_t, 2),
        } for name in cases}
        for name, active in cases.items():
            if isinstance(active, ActivePolicy) and active.shadow is not None:
                counts = active.shadow._tally.counts if active.shadow._tally is not None else {}
                results[request][name]["shadowed"] = counts.get("evaluated", 0)
                results[request][name]["seen"] = counts.get("seen", 0)
                results[request][name]["differs"] = counts.get("differs", 0)
                active.shadow.begin(active.shadow.session, candidate)  # type: ignore[arg-type]  # fresh counts
    return results


async def flush_cost(url: str, trials: int = 200) -> dict[str, float]:
    from gateway.state.redis import RedisStore

    prefix = f"shadow-cost:{time.time_ns()}:"
    store = RedisStore(url, prefix, timeout=2.0)
    runner = ShadowRunner(PolicyAdminConfig(), store, time_budget=0.05)
    times = []
    try:
        for i in range(trials):
            tally = _Tally(1)
            for f in range(20):
                tally.add(f"field{f}", i + 1)
            for s in range(10):
                tally.sample(f"kind:k{s % 3}", b'{"request_id":"r","route":"quotes"}', 10)
            runner._retired.append(tally)
            start = time.perf_counter_ns()
            assert await runner.flush()
            times.append((time.perf_counter_ns() - start) / 1000)
    finally:
        from redis_keys import drop_prefix

        await drop_prefix(url, prefix)
        await store.close()
    return {"flush_p50_us": round(statistics.median(times), 1), "flush_max_us": round(max(times), 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "policies"))
    parser.add_argument("--n", type=int, default=20_000, help="samples per case and request")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--redis", help="also time the per-second flush on this Redis URL")
    args = parser.parse_args()
    # A generous budget: a scheduler stall on this shared machine must not abort the run.
    bundle = RegoPolicy.from_directory(args.bundle, time_budget=10.0)
    candidate = RegoPolicy.from_directory(args.bundle, time_budget=10.0)
    out: dict[str, Any] = {"bundle": args.bundle, "n": args.n, "rounds": args.rounds,
                           **await measure(bundle, candidate, args.n, args.rounds)}
    if args.redis:
        out["redis_flush"] = await flush_cost(args.redis)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
