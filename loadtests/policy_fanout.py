"""Policy activation fan-out: how long until every gateway process serves a newly approved bundle.

Starts ``--processes`` real gateways (``python -m gateway serve``) sharing one
Redis (state + the ``policy:active`` channel) and one PostgreSQL schema (the
bundle repository), then, ``--trials`` times: officer carol uploads a new
version of the bundle (the ``--bundle`` folder plus ``data/fanout.json``
holding the trial number), validates and proposes it through process 0's
admin API; officer dave approves it (process 0), and every process's
``GET /admin/policy`` is polled (every ~2 ms) until it reports the new version
as served. Printed per trial: the approve round trip (it includes process 0's
own compile and the publish) and, per process, the time from sending the
approval to the first poll that saw the new version, with what triggered the
load there (``local``, ``message``, ``poll``).

``--poll-only`` gives every process its own Redis prefix, so no process hears
another's message: the numbers are then the periodic version check alone
(``--poll-interval``).

Usage::

    .venv/bin/python loadtests/policy_fanout.py [--processes 3] [--trials 5] [--poll-only]

Needs Redis and PostgreSQL (``--redis-url``, ``--postgres-dsn``); everything it
creates (schema, key prefix, temp folder, processes) is removed at the end.
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
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis_keys import drop_prefix

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.bundles.files import read_directory  # noqa: E402
from gateway.demo_keys import DEMO_AUDIENCE, DEMO_ISSUER, ensure_demo_keys, mint_token  # noqa: E402

MFA = "urn:portcullis:acr:mfa"


def config_text(tmp: Path, i: int, keys: Any, args: argparse.Namespace, schema: str, prefix: str) -> str:
    return f"""
[gateway]
name = "fanout-{i}"
access_log = false
shutdown_timeout = 2

[listeners.public]
host = "127.0.0.1"
port = 0

[listeners.admin]
host = "127.0.0.1"
port = 0

[[issuers]]
iss = "{DEMO_ISSUER}"
audience = ["{DEMO_AUDIENCE}"]
jwks_file = "{keys.issuer_jwks}"
algorithms = ["ES256"]

[identity]
signing_key = "{keys.identity_key}"

[upstreams.trading]
url = "http://127.0.0.1:9"

[[routes]]
name = "quotes"
methods = ["GET"]
path = "/api/quotes/{{symbol}}"
upstream = "trading"
tier = "read"

[state]
backend = "redis"
url = "{args.redis_url}"
prefix = "{prefix}"

[audit]
path = "{tmp / f'audit-{i}'}"

[policy]
engine = "rego"
bundle = "{args.bundle}"

[policy_admin]
repository = "postgres"
postgres_dsn = "{args.postgres_dsn}"
postgres_schema = "{schema}"
poll_interval = {args.poll_interval}
officers = ["carol", "dave"]

[notifier]
sink = "file"
path = "{tmp / 'alerts.jsonl'}"
"""


async def start_process(cfg: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--log-level", "WARNING",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    if "admin :" not in line:
        raise SystemExit(f"gateway did not start: {line!r}")
    return proc, int(line.rsplit("admin :", 1)[1].strip())


async def call(s: aiohttp.ClientSession, port: int, token: str, method: str, path: str,
               body: Any = None) -> tuple[int, Any]:
    async with s.request(method, f"http://127.0.0.1:{port}/admin/policy{path}", json=body,
                         headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def watch(s: aiohttp.ClientSession, port: int, token: str, version: str, t0: float,
                timeout: float) -> tuple[float, str]:
    while time.perf_counter() - t0 < timeout:
        status, body = await call(s, port, token, "GET", "")
        if status == 200 and body["serving"]["version"] == version:
            return time.perf_counter() - t0, body["serving"]["trigger"]
        await asyncio.sleep(0.002)
    raise SystemExit(f"process on admin port {port} did not serve {version} within {timeout} s")


async def trial(s: aiohttp.ClientSession, ports: list[int], carol: str, dave: str, base: dict[str, str], n: int,
                timeout: float) -> dict[str, Any]:
    files = {**base, "data/fanout.json": json.dumps({"trial": n, "nonce": uuid.uuid4().hex})}
    status, up = await call(s, ports[0], carol, "POST", "/bundles", {"files": files, "description": f"trial {n}"})
    assert status == 201, up
    version = up["version"]
    status, body = await call(s, ports[0], carol, "POST", f"/bundles/{version}/validate")
    assert status == 200, body
    status, proposal = await call(s, ports[0], carol, "POST", f"/bundles/{version}/propose")
    assert status == 201, proposal
    t0 = time.perf_counter()
    watchers = [asyncio.create_task(watch(s, p, carol, version, t0, timeout)) for p in ports]
    status, approved = await call(s, ports[0], dave, "POST", f"/proposals/{proposal['id']}/approve")
    ack = time.perf_counter() - t0
    assert status == 200, approved
    seen = await asyncio.gather(*watchers)
    return {"version": version, "approve_ms": ack * 1000, "seen_ms": [t * 1000 for t, _ in seen],
            "triggers": [trig for _, trig in seen], "notified": approved["notified_processes"]}


async def main(args: argparse.Namespace) -> None:
    run_id = uuid.uuid4().hex[:12]
    schema, prefix = f"pfanout_{run_id}", f"pfanout:{run_id}:"
    base = dict(read_directory(Path(args.bundle)).files)
    procs: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="portcullis-fanout-") as tmpdir:
        tmp = Path(tmpdir)
        keys = ensure_demo_keys(tmp / "keys")
        try:
            ports = []
            for i in range(args.processes):
                own_prefix = prefix + (f"p{i}:" if args.poll_only else "")
                cfg = tmp / f"gw{i}.toml"
                cfg.write_text(config_text(tmp, i, keys, args, schema, own_prefix))
                proc, port = await start_process(cfg)
                procs.append(proc)
                ports.append(port)
            carol = mint_token(keys, sub="carol", accounts=(), roles=("compliance",), acr=MFA, ttl=3600)
            dave = mint_token(keys, sub="dave", accounts=(), roles=("compliance",), acr=MFA, ttl=3600)
            await asyncio.sleep(1.0)  # every process has subscribed
            results = []
            async with aiohttp.ClientSession() as s:
                for n in range(args.trials):
                    r = await trial(s, ports, carol, dave, base, n, args.timeout)
                    results.append(r)
                    others = r["seen_ms"][1:]
                    print(f"trial {n}: approve {r['approve_ms']:.1f} ms; all served after {max(r['seen_ms']):.1f} ms; "
                          f"per process " + ", ".join(f"{t:.1f} ms ({trig})" for t, trig in
                                                        zip(r["seen_ms"], r["triggers"], strict=True))
                          + f"; other processes max {max(others) if others else 0:.1f} ms", flush=True)
                    await asyncio.sleep(args.pause)
            alls = [max(r["seen_ms"]) for r in results]
            approves = [r["approve_ms"] for r in results]
            print(f"\n{args.processes} processes, {args.trials} trials, "
                  f"{'poll only (interval ' + str(args.poll_interval) + ' s)' if args.poll_only else 'pub/sub + poll'}:"
                  f" approve round trip median {statistics.median(approves):.1f} ms (max {max(approves):.1f}); "
                  f"every process serving the new version: median {statistics.median(alls):.1f} ms, "
                  f"max {max(alls):.1f} ms")
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
            conn = await asyncpg.connect(args.postgres_dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
            await drop_prefix(args.redis_url, prefix)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--bundle", default=str(ROOT / "policies"), help="base bundle folder (default: policies/)")
    p.add_argument("--redis-url", default=os.environ.get("PORTCULLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--postgres-dsn", default=os.environ.get("PORTCULLIS_TEST_POSTGRES_DSN",
                                                            "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--poll-interval", type=float, default=5.0)
    p.add_argument("--poll-only", action="store_true", help="separate Redis prefixes: no pub/sub between processes")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between trials")
    p.add_argument("--timeout", type=float, default=30.0)
    asyncio.run(main(p.parse_args()))
