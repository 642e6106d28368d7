"""Crash safety of the audit trail (issue 7, item 7): a real gateway process is killed with SIGKILL while
orders are in flight, started again on the same audit directory, and then the trail verifies, and every
order that got a 2xx answer has its decision record, written before it was forwarded."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from audit.keys import AuditKeys
from audit.verify import verify_directory
from audit.witness import FileWitness
from gateway.demo_keys import ensure_demo_keys, mint_token
from tests.harness import audit_records, gateway_config, run_backend
from tests.test_cli import _write_toml

ROOT = Path(__file__).resolve().parents[1]
ORDER = {"symbol": "601318.SH", "side": "buy", "qty": 100, "price": 57.2, "type": "limit"}


@asynccontextmanager
async def gateway_process(config: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", "--config", str(config),
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"public :(\d+)", line)
        assert match, line
        yield proc, f"http://127.0.0.1:{match[1]}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _orders(http: aiohttp.ClientSession, url: str, token: str, placed: dict[str, int], tag: str,
                  n: int) -> None:
    """Send ``n`` orders one after another; remember the request id of each one answered 2xx."""
    for i in range(n):
        try:
            async with http.post(f"{url}/api/accounts/A1/orders", headers={"Authorization": f"Bearer {token}"},
                                 json={**ORDER, "client_order_id": f"{tag}-{i}"}) as r:
                await r.read()
                if 200 <= r.status < 300:
                    placed[r.headers["X-Request-Id"]] = r.status
        except aiohttp.ClientError:
            return  # the gateway died under us: what was answered before counts


async def test_sigkill_under_load_loses_no_acknowledged_trade_and_the_trail_verifies(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    audit_key = tmp_path / "audit-key.json"
    witness = tmp_path / "elsewhere" / "witness.jsonl"
    async with run_backend(keys) as backend:
        data = gateway_config(keys, tmp_path, backend, audit={
            "path": str(tmp_path / "audit"), "fsync_interval_ms": 5, "signing_key_file": str(audit_key),
            "checkpoint_every": 20, "checkpoint_interval": 0.2, "witness": "file", "witness_path": str(witness)})
        config = tmp_path / "gateway.toml"
        _write_toml(config, data)
        token = mint_token(keys, sub="alice", accounts=["A1"])
        placed: dict[str, int] = {}
        async with aiohttp.ClientSession() as http:
            async with gateway_process(config) as (proc, url):
                load = [asyncio.create_task(_orders(http, url, token, placed, f"w{w}", 400)) for w in range(8)]
                while len(placed) < 60:  # under load: orders being judged, audited and forwarded
                    await asyncio.sleep(0.01)
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
                await asyncio.gather(*load)
            before_restart = dict(placed)
            async with gateway_process(config) as (proc, url):
                await _orders(http, url, token, placed, "after", 10)
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
    assert len(before_restart) >= 60 and len(placed) == len(before_restart) + 10
    report = verify_directory(tmp_path / "audit", AuditKeys.from_file(audit_key).public_keys(),
                              FileWitness(witness).read())
    assert report.ok, [str(f) for f in report.breaks]
    assert len(report.chains) == 2  # the killed process's chain, and the restarted one's
    decided: dict[str, Any] = {r["request_id"]: r for r in audit_records(tmp_path / "audit")
                               if r.get("type") == "decision"}
    missing = [rid for rid in placed if rid not in decided]
    assert missing == [], f"{len(missing)} acknowledged orders have no decision record"
    assert all(decided[rid]["decision"] == "allow" and decided[rid]["tier"] == "trade" for rid in placed)
    # The restarted chain bound the end of the killed one (it never closed).
    starts = [r for r in audit_records(tmp_path / "audit") if r.get("type") == "chain_start"]
    assert any(p["status"] in ("open", "torn") for s in starts for p in s["previous"])
