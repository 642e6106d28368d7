"""How fast the compliance console's pages load, on demo-like data, against a baseline in the same run.

    .venv/bin/python loadtests/console_pages.py [--requests 400] [--repeat 20] [--browser]

One real gateway process (``python -m gateway serve``: examples/portcullis.toml with the broker's
bundle, shared state on Redis; gateway_cluster.py) in front of the demo backend. First ``--requests``
customer requests go through its public listener (quotes, positions, orders, a foreign account:
allowed, denied and stepped-up decisions for the dashboard and the audit trail). Then an officer
signs in and each console page is fetched ``--repeat`` times over loopback: the time to the last
byte of the HTML, p50 and p95. Baseline: the console's own stylesheet (a static file through the
same listener, middleware and headers), fetched the same way in the same run. With ``--browser``,
Debian's Chromium (Playwright) also opens each page and reports the browser's own load time
(navigation start to the load event: HTML, stylesheet, scripts and layout).

The issue's bar: every page under 300 ms on the demo data. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
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

from gateway_cluster import Cluster, gateway_cluster  # noqa: E402
from redis_keys import drop_prefix  # noqa: E402

OFFICER = "carol"  # gateway_cluster's [policy_admin] officer
PAGES = ("/console/", "/console/policies", "/console/policies/{active}", "/console/policies/{active}?file=gateway.rego",
         "/console/policies/{active}/what-if", "/console/decisions", "/console/audit", "/console/audit?sub=alice",
         "/console/audit/verify", "/console/freezes", "/console/shadow", "/console/proposals", "/console/rollback")
BASELINE = "/console/static/console.css"
ORDER = {"symbol": "601318.SH", "side": "buy", "qty": 100, "price": 57.2, "type": "limit"}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def traffic(http: aiohttp.ClientSession, cluster: Cluster, n: int) -> dict[int, int]:
    """Customer requests of every kind, so the pages have decisions and records to show."""
    gw = cluster.gateways[0]
    alice = cluster.auth("alice", "A1")
    statuses: dict[int, int] = {}
    for i in range(n):
        kind = i % 4
        if kind == 0:
            req = http.get(gw.url + "/api/quotes/600519.SH", headers=alice)
        elif kind == 1:
            req = http.get(gw.url + "/api/accounts/A1/positions", headers=alice)
        elif kind == 2:
            req = http.get(gw.url + "/api/accounts/B9", headers=alice)  # not alice's: denied
        else:
            req = http.post(gw.url + "/api/accounts/A1/orders", json=ORDER, headers=alice)
        async with req as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
    return statuses


async def sign_in(http: aiohttp.ClientSession, base: str, token: str) -> None:
    async with http.get(base + "/console/sign-in") as r:
        nonce = re.search(r'name="nonce" value="([^"]+)"', await r.text())
    assert nonce is not None, "no sign-in form"
    async with http.post(base + "/console/sign-in", data={"nonce": nonce[1], "token": token, "next": "/console/"},
                         headers={"Origin": base}) as r:
        if not r.url.path.endswith("/console/"):
            raise RuntimeError(f"sign-in failed: {r.status} {r.url}")


async def timed(http: aiohttp.ClientSession, url: str, repeat: int) -> dict[str, Any]:
    times: list[float] = []
    status = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        async with http.get(url, allow_redirects=False) as r:
            await r.read()
            status = r.status
        times.append((time.perf_counter() - t0) * 1000)
    return {"status": status, "p50_ms": round(pct(times, 0.5), 2), "p95_ms": round(pct(times, 0.95), 2)}


async def browser_times(base: str, token: str, paths: list[str], repeat: int) -> dict[str, float]:
    from playwright.async_api import async_playwright

    out: dict[str, float] = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
            await page.goto(base + "/console/sign-in")
            await page.get_by_label("Sign-in token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            for path in paths:
                loads = []
                for _ in range(repeat):
                    await page.goto(base + path, wait_until="load")
                    loads.append(await page.evaluate(
                        "(() => { const n = performance.getEntriesByType('navigation')[0];"
                        " return n.loadEventEnd - n.startTime; })()"))
                out[path] = round(statistics.median(loads), 1)
        finally:
            await browser.close()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-console-{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory() as tmp_dir:
        try:
            async with gateway_cluster(Path(tmp_dir), args.redis, prefix, processes=1) as cluster, \
                    aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                statuses = await traffic(http, cluster, args.requests)
                base = cluster.gateways[0].admin_url
                token = cluster.token(OFFICER, roles=("compliance",))
                await sign_in(http, base, token)
                async with http.get(base + "/console/") as r:  # the overview names the version in force
                    active = re.search(r'class="value mono">([0-9a-f]{16})<', await r.text())
                assert active is not None, "no active version on the overview"
                pages_here = [path.format(active=active[1]) for path in PAGES]
                for path in pages_here:  # warm up: templates compiled, caches filled
                    await timed(http, base + path, 2)
                baseline = await timed(http, base + BASELINE, args.repeat)
                pages = {path: await timed(http, base + path, args.repeat) for path in pages_here}
                browser = await browser_times(base, token, pages_here, 5) if args.browser else None
        finally:
            await drop_prefix(args.redis, prefix)
    for row in pages.values():
        row["p50_vs_baseline"] = round(row["p50_ms"] / baseline["p50_ms"], 1)
    return {"requests": args.requests, "statuses": statuses, "repeat": args.repeat, "baseline": baseline,
            "pages": pages, "browser_load_ms": browser,
            "slowest_p95_ms": max(row["p95_ms"] for row in pages.values())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=400, help="customer requests before the pages are timed")
    p.add_argument("--repeat", type=int, default=20, help="fetches per page")
    p.add_argument("--browser", action="store_true", help="also time each page's load in Chromium")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    print(json.dumps(asyncio.run(run(p.parse_args()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
