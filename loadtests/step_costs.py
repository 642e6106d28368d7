"""Microseconds per request for each security step of the gateway, measured in isolation.

    .venv/bin/python loadtests/step_costs.py [--n 20000]

Builds a real Gateway (demo keys in a temporary folder, memory state, file
audit sink, the read-route pipeline) and runs each step, the identity-header
hook, the per-request bookkeeping (`_finish`: metrics, outcome audit record,
access log) and the ingress work (target normalisation + routing, header
filtering) N times on one hand-built request context, with a warm claims
cache. Prints one JSON object: step -> microseconds per call.

These are the steps' own CPU costs; under load the process also pays for
the event loop, aiohttp's server and client, system calls and GC, which
`portcullis bench` measures as a whole (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import gateway_config  # noqa: E402

from gateway.config import parse  # noqa: E402
from gateway.context import RequestContext  # noqa: E402
from gateway.demo_keys import ensure_demo_keys, mint_token  # noqa: E402
from gateway.headers import dropped_headers, upstream_headers  # noqa: E402
from gateway.logs import AccessLog  # noqa: E402
from gateway.paths import normalise_target  # noqa: E402
from gateway.server import Gateway  # noqa: E402

PATH = "/api/quotes/600519.SH"


async def _time_async(fn: Callable[[], Awaitable[None]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6


async def _maybe(pending: Awaitable[None] | None) -> None:
    """Like the pipeline: a step returns None, or an awaitable when it has to wait."""
    if pending is not None:
        await pending


def _time(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def measure(n: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-steps-"))
    keys = ensure_demo_keys(tmp / "keys")
    data = gateway_config(keys, tmp, "http://127.0.0.1:9")
    data["upstreams"]["trading"]["identity_hmac_key"] = str(keys.identity_hmac)
    data["gateway"]["access_log"] = True
    gw = Gateway(parse(data, tmp))
    await gw.verifier.start()
    gw.access_log = AccessLog(io.BytesIO())
    token = mint_token(keys, sub="alice", accounts=["A1"], ttl=3600)
    headers = CIMultiDictProxy(CIMultiDict({
        "Host": "gw", "Authorization": f"Bearer {token}", "Accept": "application/json",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0",
    }))
    route, params = gw.router.match("GET", PATH)

    def context() -> RequestContext:
        return RequestContext(
            request_id="0" * 24, method="GET", path=PATH, query="", route=route, params=params,
            headers=headers, client_ip="198.51.100.7", client_port=51000, scheme="https",
            started=time.perf_counter(), now=time.time(), peer_trusted=False)

    steps = {s.name: s for s in gw.pipelines["read"].steps}
    ctx = context()

    async def state_round() -> None:
        """The risk engine's reads and records, in the request's one round trip (a new batch each time)."""
        ctx.batch = ctx.round_checks = None
        steps["risk_state"](ctx)
        await _maybe(steps["state_round"](ctx))

    await _maybe(steps["authenticate"](ctx))  # fills the claims cache and the context the later steps read
    await state_round()
    for name in ("score", "decide"):
        await _maybe(steps[name](ctx))
    out: dict[str, float] = {}
    # Every step of the read pipeline but the I/O edges (body, provider facts, forwarding).
    for name, step in steps.items():
        if name in ("read_body", "facts", "forward", "state_round"):
            continue
        if name == "risk_state":
            out["risk_state + state_round"] = await _time_async(state_round, n)
            continue
        out[name] = await _time_async(lambda step=step: _maybe(step(ctx)), n)  # type: ignore[misc]
        await asyncio.sleep(0.05)  # let the audit sink drain
    out["identity_headers"] = _time(lambda: gw._identity_headers(ctx, {}), n)
    out["finish (metrics, outcome record, access log)"] = _time(
        lambda: gw._finish(ctx, 200, "ok", ctx.started), n)
    out["context"] = _time(context, n)
    out["normalise + route (bare too)"] = _time(
        lambda: (normalise_target(PATH), gw.router.match("GET", PATH)), n)
    prefixes = gw.config.gateway.identity_header_prefixes
    drop = dropped_headers(True)
    out["header filtering (bare too)"] = _time(
        lambda: upstream_headers(headers.items(), (), prefixes, drop), n)
    await asyncio.sleep(0.1)
    await gw.audit.close()
    return {k: round(v, 2) for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="calls per step")
    args = p.parse_args()
    try:
        import uvloop
        result = uvloop.run(measure(args.n))
    except ImportError:
        result = asyncio.run(measure(args.n))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
