"""What the audit trail costs: CPU per record, sustained records/s, and the write-ahead's latency.

    .venv/bin/python loadtests/audit_cost.py [--records 50000] [--writers 32] [--seconds 5] [--rounds 3]

All against the real FileAuditSink (SM3 chain, SM2 checkpoints every 1000 records, a file witness) in
a temporary directory on the same disk as the project, with a baseline measured in the same run:

* **append**: ``--records`` decision-shaped records queued as fast as the loop takes them (500 per
  tick), then the sink closed (everything fsynced). CPU is the process's (all threads: the fsyncs
  run in the executor); records/s is records over wall time. Baseline: the same records dumped with
  orjson and written in the same batches with one fsync per batch (what an unchained log costs).
* **write-ahead**: ``--writers`` coroutines each awaiting ``sink.write(record)`` every ~5 ms for
  ``--seconds``; the latency of each await (record durable) against the baseline of the same
  writers making each record durable on its own (write + fdatasync in the executor, no chain, no
  batching) in the same run: the issue's budget is <= 2 ms added at p99.

Prints one JSON object (medians over the rounds, each round's numbers too).
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
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.keys import AuditKeys  # noqa: E402
from audit.sink import FileAuditSink  # noqa: E402
from audit.witness import FileWitness  # noqa: E402


def record(i: int) -> dict[str, Any]:
    """A decision record as the gateway writes one (audit step, gateway/steps/audit.py)."""
    return {"type": "decision", "time": 1796283214.123 + i, "request_id": f"{i:024x}", "sub": "alice",
            "account": "A1", "route": "order_place", "tier": "trade", "method": "POST",
            "path": "/api/accounts/A1/orders", "client_ip": "203.0.113.7", "device_id": "5DKg_UTTx" * 4,
            "decision": "allow", "reasons": [], "policy_version": "v12", "obligations": [],
            "risk_score": 15, "risk_level": "low", "risk_factors": ["missing_device_proof"], "degraded": []}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def append_round(folder: Path, keys: AuditKeys, n: int) -> dict[str, float]:
    records = [record(i) for i in range(n)]
    sink = FileAuditSink(folder / "chained", fsync_interval=0.005, keys=keys,
                         witness=FileWitness(folder / "witness.jsonl"))
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, n, 500):
        for r in records[start:start + 500]:
            sink.enqueue(r)
        await asyncio.sleep(0)
    await sink.close()
    chained_cpu, chained_wall = time.process_time() - cpu, time.perf_counter() - wall
    # Baseline: the same records, dumped and written in the same batches, one fsync per batch.
    (folder / "plain").mkdir()
    fd = os.open(folder / "plain" / "log.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    loop = asyncio.get_running_loop()
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, n, 500):
        data = b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
                        for r in records[start:start + 500])
        os.write(fd, data)
        await loop.run_in_executor(None, os.fsync, fd)
    plain_cpu, plain_wall = time.process_time() - cpu, time.perf_counter() - wall
    os.close(fd)
    return {"chained_cpu_us": chained_cpu / n * 1e6, "chained_rps": n / chained_wall,
            "plain_cpu_us": plain_cpu / n * 1e6, "plain_rps": n / plain_wall,
            "cpu_ratio": chained_cpu / plain_cpu}


async def _paced(writers: int, seconds: float, write: Any) -> list[float]:
    """``writers`` coroutines awaiting ``write(i)`` every ~5 ms each for ``seconds``: their latencies (ms)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await write(w * 1_000_000 + i)
            latencies.append((time.perf_counter() - t) * 1e3)
            i += 1
            await asyncio.sleep(0.005)  # a trade request every ~5 ms per writer

    await asyncio.gather(*(writer(w) for w in range(writers)))
    return latencies


async def write_ahead_round(folder: Path, keys: AuditKeys, writers: int, seconds: float) -> dict[str, float]:
    sink = FileAuditSink(folder / "wa", fsync_interval=0.005, keys=keys, witness=FileWitness(folder / "w2.jsonl"))
    chained = await _paced(writers, seconds, lambda i: sink.write(record(i)))
    await sink.close()
    # Baseline, same pacing: each record made durable on its own (write + fdatasync in the executor).
    fd = os.open(folder / "naive.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    loop = asyncio.get_running_loop()

    def durable(data: bytes) -> None:
        os.write(fd, data)
        os.fdatasync(fd)

    naive = await _paced(writers, seconds, lambda i: loop.run_in_executor(None, durable, orjson.dumps(record(i))))
    os.close(fd)
    return {"writes": len(chained), "writes_per_s": len(chained) / seconds,
            "p50_ms": pct(chained, 0.5), "p99_ms": pct(chained, 0.99),
            "naive_p50_ms": pct(naive, 0.5), "naive_p99_ms": pct(naive, 0.99),
            "added_p99_ms": pct(chained, 0.99) - pct(naive, 0.99)}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--writers", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="audit-bench-") as tmp:
            folder = Path(tmp)
            keys = AuditKeys.generate()
            appended = await append_round(folder, keys, args.records)
            wa = await write_ahead_round(folder, keys, args.writers, args.seconds)
            rounds.append({"append": appended, "write_ahead": wa})

    def median(section: str, key: str) -> float:
        return round(statistics.median(r[section][key] for r in rounds), 3)

    print(json.dumps({
        "records": args.records, "writers": args.writers, "cpus": os.cpu_count(),
        "append_cpu_us_per_record": median("append", "chained_cpu_us"),
        "append_records_per_s": median("append", "chained_rps"),
        "baseline_cpu_us_per_record": median("append", "plain_cpu_us"),
        "cpu_over_baseline": median("append", "cpu_ratio"),
        "write_ahead_p50_ms": median("write_ahead", "p50_ms"), "write_ahead_p99_ms": median("write_ahead", "p99_ms"),
        "naive_p50_ms": median("write_ahead", "naive_p50_ms"), "naive_p99_ms": median("write_ahead", "naive_p99_ms"),
        "write_ahead_added_p99_ms": median("write_ahead", "added_p99_ms"),
        "rounds": rounds}, indent=None))


if __name__ == "__main__":
    asyncio.run(main())
