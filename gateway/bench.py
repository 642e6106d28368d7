"""``portcullis bench``: the same load against the backend, a bare proxy and the gateway.

Three targets, each in its own process (never in the bench's own process, so
the load generator and the measured code never share an interpreter):

- ``direct``: the demo backend itself;
- ``bare``: ``portcullis serve`` with ``[gateway] security = false`` and no
  access log, i.e. the same proxy code with the security pipeline switched off;
- ``gateway``: ``portcullis serve`` as in production: security on, memory
  state, file audit sink, access log on at INFO, written to a file.

``direct`` and ``bare`` get a pre-minted identity assertion (the header the
backend trusts, signed with the gateway's identity key); ``gateway`` gets a
demo bearer token and signs a fresh assertion per request itself.

Each target gets two phases after a short warm-up: a throughput run (closed
loop, ``connections`` concurrent requests) and a fixed-load run at ``rate``
requests/s that saturates none of them, for latency. Where ``taskset`` exists
and two CPUs are available, the proxies run on CPU 0 and the backend and the
load generator on CPU 1, so runs are repeatable.

The result is ONE JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import io
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "portcullis.toml"
LOADTESTS = REPO_ROOT / "loadtests"
FIXED_RATE_SCRIPT = LOADTESTS / "fixed_rate.lua"
LOCUSTFILE = LOADTESTS / "locustfile.py"
LOCUST_BIN = REPO_ROOT / ".venv-load" / "bin" / "locust"

TARGETS: tuple[str, ...] = ("direct", "bare", "gateway")
WARMUP_SECONDS = 2
BENCH_SUB = "alice"
BENCH_ACCOUNTS = ("A1",)
PROXY_CPU = "0"
LOAD_CPU = "1"  # the backend and the load generator


class BenchError(Exception):
    """The benchmark could not run (a process died, a target answered non-200, ...)."""


# --------------------------------------------------------------------------
# Results and their parsing (pure)


@dataclass(frozen=True, slots=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    errors: int = 0  # non-2xx/3xx responses plus socket errors (or locust failures)


_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|m|h)\s*$")
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([0-9]+(?:\.[0-9]+)?)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*([0-9]+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+([0-9]+)")
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)")


def parse_time_ms(text: str) -> float:
    """A wrk duration (``850.00us``, ``1.23ms``, ``1.20s``, ``2.00m``) in milliseconds."""
    m = _TIME.match(text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _TIME_UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> LoadResult:
    """Requests/sec, p50 and p99 from ``wrk --latency`` output; ValueError if absent."""
    rps = _RPS.search(output)
    if rps is None:
        raise ValueError("wrk output has no 'Requests/sec:' line")
    percentiles = {m.group(1): parse_time_ms(m.group(2)) for m in _PERCENTILE.finditer(output)}
    missing = [p for p in ("50", "99") if p not in percentiles]
    if missing:
        raise ValueError(f"wrk output has no {missing[0]}% latency line (was --latency given?)")
    requests = _REQUESTS.search(output)
    errors = 0
    non_2xx = _NON_2XX.search(output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sock = _SOCKET_ERRORS.search(output)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return LoadResult(rps=float(rps.group(1)), p50_ms=percentiles["50"],
                      p99_ms=percentiles["99"],
                      requests=int(requests.group(1)) if requests else 0, errors=errors)


def parse_locust_stats(text: str) -> LoadResult:
    """The ``Aggregated`` row of locust's ``--csv`` ``*_stats.csv`` (times already in ms)."""
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("Name") == "Aggregated":
            return LoadResult(rps=float(row["Requests/s"]), p50_ms=float(row["50%"]),
                              p99_ms=float(row["99%"]), requests=int(row["Request Count"]),
                              errors=int(row["Failure Count"]))
    raise ValueError("locust stats have no 'Aggregated' row")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def compute_ratios(targets: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The headline ratios from the per-target summaries (``None`` when undefined)."""
    rps = {name: t.get("rps") for name, t in targets.items()}
    fixed_p50 = {name: (t.get("fixed") or {}).get("p50_ms") for name, t in targets.items()}
    g, b = fixed_p50.get("gateway"), fixed_p50.get("bare")
    return {
        "gateway_over_bare_rps": _ratio(rps.get("gateway"), rps.get("bare")),
        "gateway_over_direct_rps": _ratio(rps.get("gateway"), rps.get("direct")),
        "bare_over_direct_rps": _ratio(rps.get("bare"), rps.get("direct")),
        "gateway_minus_bare_p50_ms_fixed": None if g is None or b is None else round(g - b, 3),
    }


def target_summary(throughput: LoadResult, fixed: LoadResult, rate: int,
                   cpu_us_per_req: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rps": round(throughput.rps, 1), "p50_ms": round(throughput.p50_ms, 3),
        "p99_ms": round(throughput.p99_ms, 3), "errors": throughput.errors,
        "fixed": {"rate": rate, "rps": round(fixed.rps, 1), "p50_ms": round(fixed.p50_ms, 3),
                  "p99_ms": round(fixed.p99_ms, 3), "errors": fixed.errors},
    }
    if cpu_us_per_req is not None:
        out["cpu_us_per_req"] = dict(cpu_us_per_req)
    return out


def summary(*, tool: str, path: str, duration_s: float, connections: int,
            machine: Mapping[str, Any], targets: Mapping[str, Mapping[str, Any]],
            pinned: bool, rounds: Sequence[Mapping[str, Mapping[str, Any]]] = ()) -> dict[str, Any]:
    """The JSON line. With several rounds, `targets` and `ratios` are medians over rounds and
    `rounds_ratios` lists each round's ratios (a round measures the targets back to back, so
    its ratios share the machine's conditions)."""
    out = {"tool": tool, "path": path, "duration_s": duration_s, "connections": connections,
           "machine": dict(machine), "pinned": pinned, "targets": dict(targets),
           "ratios": compute_ratios(targets)}
    if len(rounds) > 1:
        per_round = [compute_ratios(r) for r in rounds]
        out["rounds"] = len(rounds)
        out["rounds_ratios"] = per_round
        out["ratios"] = median_tree(per_round)
    return out


def median_tree(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Field-wise median of equally shaped nested dicts of numbers (errors are summed)."""
    out: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, Mapping):
            out[key] = median_tree(values)
        elif key == "errors":
            out[key] = sum(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = round(statistics.median(values), 3)
        else:
            out[key] = first
    return out


def machine_info() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "model": model}


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Enough TOML for a gateway configuration: scalars, lists, tables, arrays of tables."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | Path):
            return json.dumps(str(v))  # JSON string escapes are valid TOML basic strings
        if isinstance(v, list | tuple):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def table(prefix: str, t: Mapping[str, Any]) -> None:
        nested = []
        for k, v in t.items():
            if isinstance(v, Mapping) or (isinstance(v, list) and v and
                                          all(isinstance(x, Mapping) for x in v)):
                nested.append((k, v))
            else:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in nested:
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, Mapping):
                lines.extend(["", f"[{name}]"])
                table(name, v)
            else:
                for item in v:
                    lines.extend(["", f"[[{name}]]"])
                    table(name, item)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def proxy_config(example: Mapping[str, Any], *, security: bool, port: int, backend_url: str,
                 issuer_jwks: Path, identity_key: Path, identity_hmac: Path,
                 audit_dir: Path, engine: str | None = None) -> dict[str, Any]:
    """The example (production-like) configuration, re-pointed at the bench's ports and keys.

    ``engine`` overrides ``[policy] engine`` (None keeps the example's choice).
    """
    cfg: dict[str, Any] = json.loads(json.dumps(example))  # a deep copy of plain data
    cfg.setdefault("gateway", {}).update({"security": security, "access_log": security})
    cfg.setdefault("listeners", {})
    cfg["listeners"]["public"] = {"host": "127.0.0.1", "port": port}
    cfg["listeners"]["admin"] = {"host": "127.0.0.1", "port": 0}
    for issuer in cfg.get("issuers", []):
        issuer.pop("jwks_url", None)
        issuer["jwks_file"] = str(issuer_jwks)
    cfg.setdefault("identity", {})["signing_key"] = str(identity_key)
    for upstream in cfg.get("upstreams", {}).values():
        upstream["url"] = backend_url
        if "identity_hmac_key" in upstream:
            upstream["identity_hmac_key"] = str(identity_hmac)
    policy = cfg.setdefault("policy", {})
    if engine is not None:
        policy["engine"] = engine
    if "bundle" in policy:  # relative to the example's folder, not the bench's temporary one
        policy["bundle"] = str((EXAMPLE_CONFIG.parent / policy["bundle"]).resolve())
    net = cfg.get("risk", {}).get("network", {})
    for key in ("regions_file", "mmdb_file"):
        if key in net:
            net[key] = str((EXAMPLE_CONFIG.parent / net[key]).resolve())
    if "hosting_files" in net:
        net["hosting_files"] = [str((EXAMPLE_CONFIG.parent / f).resolve()) for f in net["hosting_files"]]
    for name, f in net.get("blocklist_files", {}).items():
        net["blocklist_files"][name] = str((EXAMPLE_CONFIG.parent / f).resolve())
    step_up = cfg.get("step_up", {})
    for key in ("key_file", "secrets_file", "sms_key_file", "sms_file"):  # the bench's own, in its folder
        if key in step_up:
            step_up[key] = str(audit_dir.parent / Path(step_up[key]).name)
    step_up.pop("demo_totp_file", None)  # no demo customer's TOTP in a benchmark
    for section, keys in (("envelope", ("agreement_key_file", "key_file")), ("crypto", ("master_key_file",)),
                          ("audit", ("signing_key_file", "witness_path", "spool_path", "archive_path"))):
        for key in keys:  # key files in the bench's folder, never beside the example's relative paths
            if key in cfg.get(section, {}):
                cfg[section][key] = str(audit_dir.parent / Path(cfg[section][key]).name)
    cfg["state"] = {**cfg.get("state", {}), "backend": "memory"}
    cfg["audit"] = {**cfg.get("audit", {}), "sink": "file", "path": str(audit_dir)}
    cfg["notifier"] = {"sink": "file", "path": str(audit_dir.parent / "notifications.log")}
    return cfg


# --------------------------------------------------------------------------
# Child processes


def can_pin() -> bool:
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False
    return shutil.which("taskset") is not None and {0, 1} <= cpus


@dataclass
class Children:
    """Every process the bench starts; ``stop_all`` ends them (terminate, then kill)."""

    pin: bool
    logs: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, cmd: Sequence[str], cpu: str | None,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        full = ["taskset", "-c", cpu, *cmd] if self.pin and cpu is not None else list(cmd)
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        try:
            proc = subprocess.Popen(full, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        finally:
            log.close()
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.logs / f"{name}.log").read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self, timeout: float = 10.0) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + timeout
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode} before listening "
                             f"on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name}: nothing listening on port {port} after {timeout:.0f}s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc (None where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_ok(name: str, port: int, path: str, headers: Mapping[str, str]) -> None:
    """Fail loudly unless the target answers 200 to the bench's request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers))
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise BenchError(f"{name}: GET {path} failed: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise BenchError(f"{name}: GET {path} answered {resp.status}, expected 200: "
                         f"{body[:500].decode('utf-8', 'replace')}")


# --------------------------------------------------------------------------
# Load generators


@dataclass(frozen=True, slots=True)
class Load:
    """One run: where, with which headers, for how long, how hard."""

    url: str
    headers: Mapping[str, str]
    duration: int
    connections: int
    rate: int | None = None  # None: as fast as possible (closed loop)


def _run_child(cmd: Sequence[str], env: Mapping[str, str] | None = None,
               timeout: float | None = None) -> str:
    """Run a load generator in our process group (Ctrl-C reaches it) and return stdout."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"{cmd[0]} exited with status {proc.returncode}: "
                         f"{err.decode('utf-8', 'replace')[-1000:]}")
    return out.decode("utf-8", "replace")


class WrkRunner:
    name = "wrk"

    def __init__(self, pin: bool) -> None:
        self._prefix = ["taskset", "-c", LOAD_CPU] if pin else []

    def run(self, load: Load) -> LoadResult:
        cmd = [*self._prefix, "wrk", "-t1", f"-c{load.connections}", f"-d{load.duration}s",
               "--latency", "--timeout", "5s"]
        for k, v in load.headers.items():
            cmd += ["-H", f"{k}: {v}"]
        if load.rate is not None:
            cmd += ["-s", str(FIXED_RATE_SCRIPT), load.url, "--", str(load.rate),
                    str(load.connections)]
        else:
            cmd.append(load.url)
        out = _run_child(cmd, timeout=load.duration + 30)
        try:
            return parse_wrk(out)
        except ValueError as exc:
            raise BenchError(f"cannot read wrk's output ({exc}):\n{out}") from None


class LocustRunner:
    name = "locust"

    def __init__(self, pin: bool, workdir: Path) -> None:
        self._prefix = ["taskset", "-c", LOAD_CPU] if pin else []
        self._workdir = workdir
        self._runs = 0

    def run(self, load: Load) -> LoadResult:
        self._runs += 1
        prefix = self._workdir / f"locust-{self._runs}"
        base, _, path = load.url.partition("://")[2].partition("/")
        env = {"PORTCULLIS_BENCH_PATH": "/" + path,
               "PORTCULLIS_BENCH_HEADERS": json.dumps(dict(load.headers))}
        if load.rate is not None:
            env["PORTCULLIS_BENCH_RATE"] = str(load.rate)
        cmd = [*self._prefix, str(LOCUST_BIN), "-f", str(LOCUSTFILE), "--headless",
               "-u", str(load.connections), "-r", str(load.connections),
               "-t", f"{load.duration}s", "--host", f"http://{base}", "--csv", str(prefix),
               "--only-summary", "--stop-timeout", "2", "--exit-code-on-error", "0",
               "BenchUser"]
        _run_child(cmd, env=env, timeout=load.duration + 60)
        return parse_locust_stats(Path(f"{prefix}_stats.csv").read_text())


def pick_tool(choice: str, pin: bool, workdir: Path) -> WrkRunner | LocustRunner:
    if choice in ("auto", "wrk") and shutil.which("wrk"):
        return WrkRunner(pin)
    if choice == "wrk":
        raise BenchError("wrk is not installed (apt-get install wrk), or use --tool locust")
    if not LOCUST_BIN.exists():
        raise BenchError("neither wrk nor locust is available: install wrk, or run "
                         "`make loadtest-deps` to create .venv-load with locust")
    if choice == "auto":
        _progress("wrk not found; falling back to locust (its own venv, .venv-load)")
    return LocustRunner(pin, workdir)


# --------------------------------------------------------------------------
# The benchmark


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    port: int
    headers: Mapping[str, str]
    pids: Mapping[str, int]  # role ("proxy", "backend") -> pid, for CPU accounting


def _start_stack(tmp: Path, children: Children, total_seconds: float, path: str,
                 engine: str | None = None) -> list[Target]:
    from gateway.config import parse
    from gateway.demo_keys import ensure_demo_keys, mint_token
    from gateway.routing import Router
    from gateway.server import build_signers

    keys = ensure_demo_keys(tmp / "keys")
    example = tomllib.loads(EXAMPLE_CONFIG.read_text("utf-8"))
    ports = {"backend": free_port(), "bare": free_port(), "gateway": free_port()}
    backend = children.start("backend", [
        sys.executable, "-m", "demo_backend", "--host", "127.0.0.1",
        "--port", str(ports["backend"]), "--identity-jwks", str(keys.identity_jwks),
        "--identity-hmac-key", str(keys.identity_hmac)], LOAD_CPU)
    backend_url = f"http://127.0.0.1:{ports['backend']}"
    procs = {"backend": backend}
    configs: dict[str, dict[str, Any]] = {}
    for name, security in (("bare", False), ("gateway", True)):
        cfg = proxy_config(example, security=security, port=ports[name], backend_url=backend_url,
                           issuer_jwks=keys.issuer_jwks, identity_key=keys.identity_key,
                           identity_hmac=keys.identity_hmac, audit_dir=tmp / f"audit-{name}",
                           engine=engine)
        configs[name] = cfg
        cfg_path = tmp / f"{name}.toml"
        cfg_path.write_text(toml_dumps(cfg), "utf-8")
        # INFO: the gateway's access log lines are formatted and written (to the log file),
        # as in production; the bare proxy has no access log, so INFO costs it nothing.
        procs[name] = children.start(name, [
            sys.executable, "-m", "gateway", "serve", "--config", str(cfg_path),
            "--log-level", "INFO", "--quiet"], PROXY_CPU)
    for name, proc in procs.items():
        wait_port(ports[name], proc, name)

    ttl = int(total_seconds) + 600
    # The direct and bare targets get an assertion signed with the very scheme and key the
    # gateway uses for this route's upstream, so the backend does the same work for all three.
    gw_cfg = configs["gateway"]
    gw_cfg["identity"] = {**gw_cfg.get("identity", {}), "ttl": min(ttl, 3600)}
    parsed = parse(gw_cfg, tmp)
    route, _ = Router(parsed.routes).match("GET", path.split("?")[0])
    signer = build_signers(parsed)[route.upstream]
    header = parsed.identity.header
    assertion = signer.sign(sub=BENCH_SUB, accounts=BENCH_ACCOUNTS, roles=("client",),
                            acr="urn:portcullis:acr:pwd", risk="low",
                            request_id=secrets.token_hex(12), now=int(time.time()))
    token = mint_token(keys, sub=BENCH_SUB, accounts=BENCH_ACCOUNTS, ttl=ttl)
    ids = {n: p.pid for n, p in procs.items()}
    direct_headers = {header: assertion}
    return [
        Target("direct", ports["backend"], direct_headers, {"backend": ids["backend"]}),
        Target("bare", ports["bare"], direct_headers,
               {"proxy": ids["bare"], "backend": ids["backend"]}),
        Target("gateway", ports["gateway"], {"Authorization": f"Bearer {token}"},
               {"proxy": ids["gateway"], "backend": ids["backend"]}),
    ]


def _measure(tool: WrkRunner | LocustRunner, target: Target, path: str, duration: int,
             connections: int, rate: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{target.port}{path}"
    check_ok(target.name, target.port, path, target.headers)
    _progress(f"{target.name}: warming up ({WARMUP_SECONDS}s)")
    tool.run(Load(url, target.headers, WARMUP_SECONDS, connections))
    before = {role: cpu_seconds(pid) for role, pid in target.pids.items()}
    throughput = tool.run(Load(url, target.headers, duration, connections))
    after = {role: cpu_seconds(pid) for role, pid in target.pids.items()}
    cpu: dict[str, float | None] = {}
    for role in target.pids:
        b, a = before[role], after[role]
        served = throughput.requests
        cpu[role] = (round((a - b) / served * 1e6, 1)
                     if a is not None and b is not None and served else None)
    _progress(f"{target.name}: {throughput.rps:.0f} rps, p50 {throughput.p50_ms:.2f} ms, "
              f"p99 {throughput.p99_ms:.2f} ms, cpu/req {cpu}")
    fixed = tool.run(Load(url, target.headers, duration, connections, rate))
    _progress(f"{target.name} at {rate}/s: {fixed.rps:.0f} rps, p50 {fixed.p50_ms:.2f} ms, "
              f"p99 {fixed.p99_ms:.2f} ms")
    for phase, r in (("throughput", throughput), ("fixed-load", fixed)):
        if r.errors:
            _progress(f"WARNING {target.name} {phase}: {r.errors} errors (non-2xx or socket)")
    return target_summary(throughput, fixed, rate, cpu)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    duration = max(1, math.ceil(float(args.duration)))  # wrk takes whole seconds
    connections = max(1, int(args.connections))
    rate = max(1, int(args.rate))
    path = args.path if args.path.startswith("/") else "/" + args.path
    # The example's [providers] reads the backend's internal token from the environment;
    # every child (backend, proxies) inherits it.
    os.environ.setdefault("PORTCULLIS_BACKEND_INTERNAL_TOKEN", secrets.token_urlsafe(32))
    pin = can_pin()
    _progress("CPU pinning: proxies on CPU 0, backend and load generator on CPU 1" if pin
              else "CPU pinning unavailable (needs taskset and 2 CPUs): runs are noisier")
    n_rounds = max(1, int(getattr(args, "rounds", 1)))
    # Each target: warm-up + two phases, per round; plus start-up. Bounds the assertion's lifetime.
    total = n_rounds * len(TARGETS) * (WARMUP_SECONDS + 2 * duration + 5) + 60
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "logs").mkdir()
        tool = pick_tool(getattr(args, "tool", "auto"), pin, tmp)
        _progress(f"load generator: {tool.name}")
        children = Children(pin, tmp / "logs")
        try:
            targets = _start_stack(tmp, children, total, path, getattr(args, "engine", None))
            rounds = []
            for i in range(n_rounds):
                _progress(f"round {i + 1} of {n_rounds}")
                rounds.append({t.name: _measure(tool, t, path, duration, connections, rate)
                               for t in targets})
            results = {t.name: median_tree([r[t.name] for r in rounds]) for t in targets}
        except BenchError:
            for name, _ in children.procs:
                tail = children.log_tail(name)
                if tail:
                    _progress(f"last lines of {name}'s log:\n{tail}")
            raise
        finally:
            children.stop_all()
    out = summary(tool=tool.name, path=path, duration_s=duration, connections=connections,
                  machine=machine_info(), targets=results, pinned=pin, rounds=rounds)
    example_engine = tomllib.loads(EXAMPLE_CONFIG.read_text("utf-8")).get("policy", {}).get("engine")
    out["engine"] = getattr(args, "engine", None) or example_engine or "baseline"
    return out


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop every child."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the benchmark and print one JSON line; 0 on success, 1 on failure."""
    try:
        with _sigterm_as_interrupt():
            result = run_bench(args)
    except BenchError as exc:
        print(f"portcullis bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("portcullis bench: interrupted; all child processes stopped", file=sys.stderr)
        return 130
    print(json.dumps(result, separators=(",", ":")), file=out or sys.stdout, flush=True)
    r = result["ratios"]
    _progress(f"gateway/bare rps {r['gateway_over_bare_rps']}, gateway/direct "
              f"{r['gateway_over_direct_rps']}, bare/direct {r['bare_over_direct_rps']}, "
              f"gateway-bare p50 at fixed load {r['gateway_minus_bare_p50_ms_fixed']} ms")
    return 0
