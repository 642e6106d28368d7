"""Milliseconds per face check on one core, and what face load does to the service's other routes.

    .venv/bin/python loadtests/face_cost.py [--n 15] [--vectors ../shared/vectors] [--no-service]

In-process, pinned to one core (``sched_setaffinity``), on a selfie-sized JPEG
(a shared photo re-encoded at 640x480-ish, quality 90; never written to disk):

* ``decode_only``: the same-run baseline, decoding the JPEG to the working size;
* ``verify``: one frame: decode, HOG detect, 5-point align, encode, compare;
* ``liveness5``: five frames: decode and detect all, 68 landmarks on each,
  EAR and tracking, one frame encoded. Still photos cannot blink, so this case
  runs with a blink rule relaxed to accept any middle frame: the work done is
  the same as for a real blink sequence.

Then, unless ``--no-service``: the face service (``python -m biometrics serve``,
one worker) answers ``/healthz`` at a fixed rate, first idle, then while
clients keep its face pool saturated with verifications; the ratio of the two
p99s is what face load costs requests that do not use it (the point of the
process pool). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from biometrics import faces, imaging, liveness, worker  # noqa: E402


def _ms(fn: Callable[[], object], n: int) -> dict[str, float]:
    fn()  # warm
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
            "min_ms": round(times[0], 1)}


def _selfie(path: Path, quality: int = 90, shift: int = 0) -> bytes:
    img = Image.open(path).convert("RGB")
    img.thumbnail((640, 640))
    if shift:
        img = img.crop((shift, 0, img.width, img.height))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def in_process(images: Path, n: int) -> dict[str, Any]:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    frame = _selfie(images / "img11.jpg")
    template = worker.analyse_frame(_selfie(images / "img10.jpg"))
    assert template.encoding is not None
    import numpy as np

    tpl = np.frombuffer(template.encoding, dtype=np.float64)
    frames = [_selfie(images / "img11.jpg", q, s) for q, s in ((92, 0), (88, 2), (84, 4), (80, 6), (76, 8))]
    relaxed = liveness.BlinkRule(open_min=0.0, closed_max=1.0, closed_ratio=10.0)

    def verify() -> None:
        r = worker.analyse_frame(frame)
        assert r.encoding is not None, r.error
        faces.matches(np.frombuffer(r.encoding, dtype=np.float64), tpl)

    def live() -> None:
        r = worker.analyse_sequence(frames, rule=relaxed)
        assert r.encoding is not None, r.error

    return {"frame_bytes": len(frame), "frame_size": list(Image.open(io.BytesIO(frame)).size),
            "decode_only": _ms(lambda: imaging.decode(frame), n * 3),
            "verify": _ms(verify, n), "liveness5": _ms(live, n)}


async def _p99(url: str, rate: float, seconds: float, headers: dict[str, str] | None = None) -> dict[str, float]:
    import aiohttp

    lat: list[float] = []
    statuses: set[int] = set()
    async with aiohttp.ClientSession(headers=headers) as s:
        async def one() -> None:
            t = time.perf_counter()
            async with s.get(url) as r:
                await r.read()
                statuses.add(r.status)
            lat.append((time.perf_counter() - t) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    assert statuses == {200}, statuses
    lat.sort()
    return {"p50_ms": round(statistics.median(lat), 2), "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 2)}


def _variants(frame: bytes, n: int = 60) -> list[bytes]:
    """Distinct re-encodings of one photo (a few pixel columns cropped): never a replay to the service."""
    out = []
    for i in range(n):
        img = Image.open(io.BytesIO(frame))
        img = img.crop((0, 0, img.width - 1 - i % 50, img.height))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90 - i % 7)
        out.append(buf.getvalue())
    return out


def _hammer_process(base: str, secret: bytes, frames: list[bytes], clients: int, stop: Any, done: Any,
                    cpu: int | None) -> None:
    """A separate process (on the face service's CPU) keeping its pool busy, so the measuring
    process's event loop never waits for the load generator's own work."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})

    async def run() -> None:
        from biometrics.client import BiometricsClient, FaceServiceError

        async with BiometricsClient(base, secret, timeout=30) as c:
            async def one(k: int) -> None:
                i = k
                while not stop.is_set():
                    try:
                        await c.verify("bench", frames[i % len(frames)])
                    except FaceServiceError:
                        pass
                    i += clients
                    with done.get_lock():
                        done.value += 1
            await asyncio.gather(*(one(k) for k in range(clients)))

    asyncio.run(run())


class Saturate:
    """Clients in another process keeping the face service's pool busy while the block runs."""

    def __init__(self, base: str, secret: bytes, frame: bytes, *, cpu: int | None = None, clients: int = 3) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._done = ctx.Value("i", 0)
        self._proc = ctx.Process(target=_hammer_process, daemon=True,
                                 args=(base, secret, _variants(frame), clients, self._stop, self._done, cpu))
        self.rate = 0.0
        """Face checks per second while the block ran."""

    async def __aenter__(self) -> Saturate:
        self._proc.start()
        await asyncio.sleep(3)  # the process up and the pool full before measuring
        self._t0, self._d0 = time.perf_counter(), self._done.value
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.rate = round((self._done.value - self._d0) / (time.perf_counter() - self._t0), 2)
        self._stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self._proc.join, 30)


async def _service_run(base: str, secret: bytes, frame: bytes, enrol: bytes, seconds: float) -> dict[str, Any]:
    from biometrics.client import BiometricsClient

    async with BiometricsClient(base, secret, timeout=30) as c:
        await c.consent("bench", True, "bench")
        await c.enrol("bench", enrol)
        idle = await _p99(base + "/healthz", 100, seconds)
        async with Saturate(base, secret, frame) as load:
            busy = await _p99(base + "/healthz", 100, seconds)
        rate = load.rate
    return {"healthz_idle": idle, "healthz_under_face_load": busy, "face_checks_per_s": round(rate, 2),
            "p99_ratio": round(busy["p99_ms"] / idle["p99_ms"], 2)}


async def _gateway_run(base: str, secret: bytes, frame: bytes, enrol: bytes, gw_url: str,
                       headers: dict[str, str], seconds: float, rate: float, pinned: bool) -> dict[str, Any]:
    """The gateway's p99 on a read route, idle and while clients keep the face service saturated."""

    from biometrics.client import BiometricsClient

    async def gateway_p99() -> dict[str, float]:
        return await _p99(gw_url, rate, seconds, headers)

    async with BiometricsClient(base, secret, timeout=30) as c:
        await c.consent("bench", True, "bench")
        await c.enrol("bench", enrol)
        await gateway_p99()  # warm-up (connections, caches)
        idle = await gateway_p99()
        async with Saturate(base, secret, frame, cpu=1 if pinned else None) as load:
            busy = await gateway_p99()
        checks = load.rate
        idle_after = await gateway_p99()
    return {"gateway_idle": idle, "gateway_under_face_load": busy, "gateway_idle_after": idle_after,
            "face_checks_per_s": round(checks, 2), "rate_per_s": rate,
            "p99_ratio": round(busy["p99_ms"] / idle["p99_ms"], 2),
            "p99_ratio_vs_after": round(busy["p99_ms"] / idle_after["p99_ms"], 2)}


def gateway(images: Path, seconds: float, rate: float) -> dict[str, Any]:
    """The gateway and the demo backend on CPU 0 (with this load generator), the face service on CPU 1.

    A deployment gives the face service its own cores; this is the two-core version of that. The
    gateway serves ``GET /api/quotes/600519.SH`` with the example configuration (security on, the
    Rego bundle, memory state) at a fixed rate while three clients keep the face pool busy.
    """
    from gateway.bench import Children, free_port, proxy_config, toml_dumps, wait_port
    from gateway.demo_keys import ensure_demo_keys, mint_token

    pin = hasattr(os, "sched_setaffinity") and {0, 1} <= os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys = ensure_demo_keys(tmp / "keys")
        secret = secrets.token_urlsafe(32).encode()
        (tmp / "secret").write_bytes(secret)
        ports = {"backend": free_port(), "gateway": free_port(), "face": free_port()}
        example = tomllib.loads((REPO / "examples" / "portcullis.toml").read_text())
        cfg = proxy_config(example, security=True, port=ports["gateway"],
                           backend_url=f"http://127.0.0.1:{ports['backend']}", issuer_jwks=keys.issuer_jwks,
                           identity_key=keys.identity_key, identity_hmac=keys.identity_hmac,
                           audit_dir=tmp / "audit")
        cfg.pop("providers", None)  # no internal token here: the read route needs no account facts
        (tmp / "gw.toml").write_text(toml_dumps(cfg))
        children = Children(pin=pin and shutil.which("taskset") is not None, logs=tmp)
        try:
            cpu0, cpu1 = "0", "1"
            backend = children.start("backend", [
                sys.executable, "-m", "demo_backend", "--host", "127.0.0.1", "--port", str(ports["backend"]),
                "--identity-jwks", str(keys.identity_jwks), "--identity-hmac-key", str(keys.identity_hmac)], cpu0)
            gw = children.start("gateway", [sys.executable, "-m", "gateway", "serve", "--config",
                                            str(tmp / "gw.toml"), "--log-level", "WARNING", "--quiet"], cpu0)
            face = children.start("face", [
                sys.executable, "-m", "biometrics", "serve", "--port", str(ports["face"]), "--secret-file",
                str(tmp / "secret"), "--data-dir", str(tmp / "data"), "--log-level", "WARNING"], cpu1)
            for name, proc in (("backend", backend), ("gateway", gw), ("face", face)):
                wait_port(ports[name], proc, name, timeout=120)
            if pin:
                os.sched_setaffinity(0, {0})
            token = mint_token(keys, sub="alice", accounts=("A1",), ttl=3600)
            return asyncio.run(_gateway_run(
                f"http://127.0.0.1:{ports['face']}", secret, _selfie(images / "img11.jpg"),
                _selfie(images / "img10.jpg"), f"http://127.0.0.1:{ports['gateway']}/api/quotes/600519.SH",
                {"Authorization": f"Bearer {token}"}, seconds, rate, pin)) | {"pinned": pin}
        finally:
            children.stop_all()


def service(images: Path, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        secret = secrets.token_urlsafe(32).encode()
        Path(tmp, "secret").write_bytes(secret)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "biometrics", "serve", "--port", str(port), "--secret-file",
                                 str(Path(tmp, "secret")), "--data-dir", str(Path(tmp, "data")),
                                 "--log-level", "WARNING"], cwd=REPO, stdout=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            return asyncio.run(_service_run(f"http://127.0.0.1:{port}", secret, _selfie(images / "img11.jpg"),
                                            _selfie(images / "img10.jpg"), seconds))
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=15)
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per /healthz latency run")
    p.add_argument("--vectors", default=str(REPO.parent / "shared" / "vectors"))
    p.add_argument("--no-service", action="store_true")
    p.add_argument("--gateway", action="store_true",
                   help="also the gateway's p99 on a read route while face checks run (face service on CPU 1)")
    p.add_argument("--rate", type=float, default=200.0, help="gateway requests/s in the --gateway run")
    args = p.parse_args()
    images = Path(args.vectors) / "face" / "deepface" / "images"
    out: dict[str, Any] = {}
    if args.gateway:
        out["gateway"] = gateway(images, args.seconds, args.rate)
    if not args.no_service:
        out["service"] = service(images, args.seconds)  # before pinning this process to one core
    out = {"one_core": in_process(images, args.n), **out, "load_avg": os.getloadavg()[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
