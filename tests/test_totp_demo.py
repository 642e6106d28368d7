"""The demo's known TOTP secrets: Totp.enrol_known, the demo TOTP file, `portcullis mfa totp-code`."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pyotp
import pytest

from gateway.cli import main as cli_main
from gateway.client import totp_code
from gateway.crypto import SecretBox
from gateway.demo_keys import ensure_demo_totp, read_demo_totp
from gateway.errors import GatewayError
from gateway.mfa.totp import Totp
from gateway.state.memory import MemoryStore


async def test_enrol_known_stores_an_active_secret_that_verifies_once() -> None:
    totp = Totp(MemoryStore(), SecretBox.generate())
    secret = pyotp.random_base32()
    assert await totp.enrolled_at("alice") is None
    await totp.enrol_known("alice", secret, 0.0)
    assert await totp.enrolled_at("alice") == 0.0  # long ago: no cooling-off
    code = pyotp.TOTP(secret).now()
    await totp.verify("alice", code)
    with pytest.raises(GatewayError) as replay:
        await totp.verify("alice", code)
    assert replay.value.code == "otp_replayed"
    with pytest.raises(GatewayError) as other:  # bound to its account
        await totp.verify("bob", code)
    assert other.value.code == "factor_not_enrolled"


async def test_enrol_known_refuses_what_is_not_a_secret() -> None:
    totp = Totp(MemoryStore(), SecretBox.generate())
    for bad in ("not base32!", "AAAA"):
        with pytest.raises(ValueError):
            await totp.enrol_known("alice", bad, 0.0)
    assert await totp.enrolled_at("alice") is None


def test_the_demo_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "demo" / "totp.json"
    first = ensure_demo_totp(path)
    assert set(first) == {"alice", "bob", "officer-li", "officer-wang"} and first["alice"] != first["bob"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_demo_totp(path) == first == read_demo_totp(path)
    more = ensure_demo_totp(path, ["alice", "carol"])  # a new customer gets one; the others keep theirs
    assert more["alice"] == first["alice"] and "carol" in more
    path.write_text(json.dumps({"alice": "!!"}))
    with pytest.raises(ValueError):
        read_demo_totp(path)


def test_totp_code_command_prints_the_current_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "totp.json"
    secrets = ensure_demo_totp(path)
    assert cli_main(["mfa", "totp-code", "--secret-file", str(path), "--sub", "alice"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed in {pyotp.TOTP(secrets["alice"]).at(t) for t in (time.time() - 1, time.time())}
    assert totp_code(secrets["alice"], 1111111109) == pyotp.TOTP(secrets["alice"]).at(1111111109)
    assert cli_main(["mfa", "totp-code", "--secret-file", str(path), "--sub", "mallory"]) == 2
