"""Real gateway processes sharing one Redis, in front of one demo backend.

For the freeze propagation test (tests/test_freeze_propagation.py) and
benchmark (loadtests/freeze_propagation.py): ``python -m demo_backend`` with
its ``/internal`` fact routes behind a token, and N ``python -m gateway
serve`` processes, each with its own configuration file built from
examples/portcullis.toml (the production-like routes, the risk engine, the
Rego bundle and the fact providers), its own audit folder and notification
file, and the same Redis under one key prefix. Nothing runs in the caller's
process but plain aiohttp clients.

    async with gateway_cluster(tmp, redis_url, prefix) as cluster:
        a, b = cluster.gateways
        await session.post(a.url + "/api/accounts/A1/orders", headers=cluster.auth("alice", "A1"), ...)

On exit every process is stopped (SIGTERM, then SIGKILL); the caller removes
the Redis keys under its prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sys
import tomllib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.bench import EXAMPLE_CONFIG, proxy_config, toml_dumps  # noqa: E402
from gateway.demo_keys import DemoKeys, ensure_demo_keys, mint_token  # noqa: E402

MFA = "urn:portcullis:acr:mfa"
OFFICER = "carol"
START_TIMEOUT = 60.0
_READY = re.compile(rb"public :(\d+), admin :(\d+)")
_BACKEND_READY = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


@dataclass
class GatewayProcess:
    name: str
    proc: asyncio.subprocess.Process
    port: int
    admin_port: int
    audit_dir: Path
    notifications: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def audit(self) -> list[dict[str, Any]]:
        """Every record in this process's audit segment files so far (a torn last line is skipped)."""
        out: list[dict[str, Any]] = []
        for f in sorted(self.audit_dir.glob("*.jsonl")):
            for line in f.read_text("utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out


@dataclass
class Cluster:
    keys: DemoKeys
    prefix: str
    backend_url: str
    gateways: list[GatewayProcess] = field(default_factory=list)

    def token(self, sub: str, *accounts: str, **kw: Any) -> str:
        return mint_token(self.keys, sub=sub, accounts=accounts, **kw)

    def auth(self, sub: str, *accounts: str, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, *accounts, **kw)}"}

    def officer(self) -> dict[str, str]:
        """A compliance officer just through a step-up (acr mfa, auth_time now): minted per call."""
        return self.auth(OFFICER, roles=("compliance",), acr=MFA, amr=("pwd", "otp"))


def gateway_config(tmp: Path, name: str, keys: DemoKeys, *, backend_url: str, internal_token: str,
                   redis_url: str, prefix: str, bundle: Path, audit_dir: Path | None = None) -> dict[str, Any]:
    """examples/portcullis.toml re-pointed at this cluster: ports chosen by the system, shared Redis."""
    example = tomllib.loads(EXAMPLE_CONFIG.read_text("utf-8"))
    audit_dir = audit_dir or tmp / name / "audit"
    cfg = proxy_config(example, security=True, port=0, backend_url=backend_url, issuer_jwks=keys.issuer_jwks,
                       identity_key=keys.identity_key, identity_hmac=keys.identity_hmac, audit_dir=audit_dir)
    cfg["gateway"].update({"name": name, "access_log": False, "shutdown_timeout": 2})
    cfg["state"] = {"backend": "redis", "url": redis_url, "prefix": prefix, "timeout": 2.0}
    cfg["providers"]["internal_token"] = internal_token
    cfg["policy"]["bundle"] = str(bundle)
    cfg["policy_admin"].update({"repository": "memory", "officers": [OFFICER]})
    cfg["notifier"] = {"sink": "file", "path": str(tmp / name / "notifications.jsonl")}
    cfg.setdefault("dpop", {})["origins"] = []  # DPoP proofs name the port the system chose
    # Key files every process of the cluster shares (session keys agreed on one open on the others).
    cfg["envelope"].update(agreement_key_file=str(tmp / "sm2-agreement.json"), key_file=str(tmp / "session-keys.key"))
    cfg["crypto"]["master_key_file"] = str(tmp / "master.key")
    return cfg


async def _ready_line(proc: asyncio.subprocess.Process, pattern: re.Pattern[bytes], what: str,
                      log: Path | None = None) -> re.Match[bytes]:
    assert proc.stdout is not None
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            line = await proc.stdout.readline()
            if not line:
                err = log.read_text("utf-8", errors="replace")[-2000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"{what} exited before it was ready: {err}")
            match = pattern.search(line)
            if match:
                return match


async def _stop(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            p.terminate()
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), 10)
        except TimeoutError:
            p.kill()
            await p.wait()


@contextlib.asynccontextmanager
async def gateway_cluster(tmp: Path, redis_url: str, prefix: str, *, processes: int = 2,
                          bundle: Path = ROOT / "policies",
                          audit_dirs: Sequence[Path] = ()) -> AsyncIterator[Cluster]:
    """``audit_dirs``: the processes' audit folders, in order (default: each in its own folder under ``tmp``)."""
    keys = ensure_demo_keys(tmp / "keys")
    internal_token = secrets.token_urlsafe(24)
    procs: list[asyncio.subprocess.Process] = []
    try:
        backend = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "demo_backend", "--host", "127.0.0.1", "--port", "0",
            "--identity-jwks", str(keys.identity_jwks), "--identity-hmac-key", str(keys.identity_hmac),
            "--internal-token", internal_token, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        procs.append(backend)
        backend_url = f"http://127.0.0.1:{int((await _ready_line(backend, _BACKEND_READY, 'demo backend'))[1])}"
        cluster = Cluster(keys=keys, prefix=prefix, backend_url=backend_url)
        starting = []
        for i in range(processes):
            name = f"gw-{chr(ord('a') + i)}"
            audit_dir = audit_dirs[i] if i < len(audit_dirs) else tmp / name / "audit"
            cfg = gateway_config(tmp, name, keys, backend_url=backend_url, internal_token=internal_token,
                                 redis_url=redis_url, prefix=prefix, bundle=bundle, audit_dir=audit_dir)
            path = tmp / f"{name}.toml"
            path.write_text(toml_dumps(cfg), "utf-8")
            (tmp / name).mkdir(parents=True, exist_ok=True)
            log = tmp / name / "stderr.log"
            with log.open("wb") as err:  # a file, not a pipe nobody reads (a full pipe would block the gateway)
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "serve", "--config", str(path), "--log-level", "WARNING",
                    cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err)
            procs.append(proc)
            starting.append((name, proc, log, audit_dir))
        # The processes compile the bundle at the same time.
        for name, proc, log, audit_dir in starting:
            match = await _ready_line(proc, _READY, name, log)
            cluster.gateways.append(GatewayProcess(
                name=name, proc=proc, port=int(match[1]), admin_port=int(match[2]),
                audit_dir=audit_dir, notifications=tmp / name / "notifications.jsonl"))
        yield cluster
    finally:
        await _stop(procs)
