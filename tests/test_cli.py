"""The portcullis command as a user runs it: token, serve, configuration errors, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import jwt
from harness import gateway_config

from gateway.demo_keys import DEMO_AUDIENCE, ensure_demo_keys

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=60)


def test_token_prints_token_alone_on_last_line(tmp_path: Path) -> None:
    out = _run("token", "--sub", "alice", "--accounts", "A1", "--role", "client", "--ttl", "120",
               env={"PORTCULLIS_DEMO_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    keys = ensure_demo_keys(tmp_path)
    jwk = json.loads(keys.issuer_jwks.read_text())["keys"][0]
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=DEMO_AUDIENCE)
    assert claims["sub"] == "alice" and claims["accounts"] == ["A1"] and claims["roles"] == ["client"]
    assert claims["exp"] - claims["iat"] == 120


def test_invalid_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nsecurity = "yes"\n')
    out = _run("serve", "--config", str(bad))
    assert out.returncode == 2
    assert "gateway.security: expected boolean" in out.stderr
    assert "Traceback" not in out.stderr


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def _write_toml(path: Path, data: dict[str, object]) -> None:
    """Just enough TOML for the harness config (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, object]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)
                   and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in scalars.items())
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(name, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{name}]]")
                    lines.extend(f"{ik} = {_toml(iv)}" for ik, iv in item.items())

    table("", data)
    path.write_text("\n".join(lines) + "\n")


def test_serve_starts_answers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    cfg = tmp_path / "gw.toml"
    _write_toml(cfg, gateway_config(keys, tmp_path, "http://127.0.0.1:9"))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"public :(\d+), admin :(\d+)", line)
        assert match, line
        with urllib.request.urlopen(f"http://127.0.0.1:{match[1]}/healthz", timeout=5) as r:
            assert json.load(r) == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_device_key_and_a_bound_token(tmp_path: Path) -> None:
    key_file = tmp_path / "device.pem"
    made = _run("device-key", "--out", str(key_file))
    again = _run("device-key", "--out", str(key_file))
    assert made.returncode == 0 and again.returncode == 0, made.stderr
    jkt = made.stdout.strip().splitlines()[-1]
    assert again.stdout.strip().splitlines()[-1] == jkt and len(jkt) == 43
    assert key_file.stat().st_mode & 0o777 == 0o600
    out = _run("token", "--sub", "alice", "--accounts", "A1", "--dpop-jkt", jkt,
               env={"PORTCULLIS_DEMO_DIR": str(tmp_path / "demo")})
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip().splitlines()[-1], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": jkt}
    proof = _run("dpop-proof", "--key", str(key_file), "--url", "http://127.0.0.1:8080/api/quotes/X", "--token", "t")
    header = jwt.get_unverified_header(proof.stdout.strip())
    assert header["typ"] == "dpop+jwt" and "d" not in header["jwk"]
    assert _run("token", "--sub", "alice", "--dpop-jkt", "not-a-thumbprint").returncode == 2
