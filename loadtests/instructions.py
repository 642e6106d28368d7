"""Instructions per request (callgrind) of the bare proxy and the gateway on the bench's read route.

    .venv/bin/python loadtests/instructions.py [--seconds 20] [--engine baseline] [--connections 8]

Wall-clock ratios on this shared VM move by +-0.1 between runs; instruction
counts do not depend on what else the machine runs. The bench's own stack
(gateway.bench: demo backend, bare proxy, gateway, the same configuration)
is started with both proxies under ``valgrind --tool=callgrind``; each proxy
is warmed up with wrk for 10 s, its counters are zeroed, wrk drives it for
``--seconds``, the counters are dumped, and the instructions are divided by
the requests wrk completed. Prints one JSON line: requests, instructions per
request for each proxy, and bare / gateway. Needs valgrind and wrk. Under
callgrind a proxy serves ~50 requests a second, so the event loop batches
little: the ratio is of per-request work, a little lower than the bench's.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import bench  # noqa: E402

PATH = "/api/quotes/600519.SH"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--engine", choices=("baseline", "rego"), default="baseline")
    p.add_argument("--connections", type=int, default=8)
    args = p.parse_args()
    os.environ.setdefault("PORTCULLIS_BACKEND_INTERNAL_TOKEN", secrets.token_urlsafe(32))
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-instructions-"))
    start = bench.Children.start

    def under_callgrind(self: bench.Children, name: str, cmd: Any, cpu: Any, env: Any = None) -> Any:
        if name in ("bare", "gateway"):
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.{name}.%p", *cmd]
        return start(self, name, cmd, cpu, env)

    bench.Children.start = under_callgrind  # type: ignore[method-assign]
    waited = bench.wait_port  # a proxy under callgrind starts in ~30-60 s, not 1

    def wait_longer(port: int, proc: Any, name: str, timeout: float = 30.0) -> None:
        waited(port, proc, name, timeout=max(timeout, 300.0))

    bench.wait_port = wait_longer
    children = bench.Children(pin=False, logs=tmp)
    out: dict[str, Any] = {"engine": args.engine, "seconds": args.seconds, "connections": args.connections}
    try:
        targets = bench._start_stack(tmp, children, 600 + 2 * args.seconds, PATH, engine=args.engine)
        for t in targets:
            if t.name == "direct":
                continue
            pid = t.pids["proxy"]
            wrk = ["wrk", "-t1", "-c", str(args.connections)]
            for k, v in t.headers.items():
                wrk += ["-H", f"{k}: {v}"]
            url = f"http://127.0.0.1:{t.port}{PATH}"
            subprocess.run([*wrk, "-d", "10s", url], capture_output=True, check=True)
            subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
            text = subprocess.run([*wrk, "-d", f"{args.seconds}s", url], capture_output=True, text=True,
                                  check=True).stdout
            time.sleep(2)
            subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
            time.sleep(1)
            requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
            dump = max(glob.glob(f"{tmp}/cg.{t.name}.{pid}.*"), key=os.path.getmtime)
            body = Path(dump).read_text(errors="replace")
            total = int(re.search(r"^(?:summary|totals):\s+(\d+)", body, re.M).group(1))  # type: ignore[union-attr]
            out[t.name] = {"requests": requests, "instructions_per_request": round(total / requests)}
        out["bare_over_gateway"] = round(out["bare"]["instructions_per_request"]
                                         / out["gateway"]["instructions_per_request"], 3)
    finally:
        children.stop_all()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
