"""`portcullis mfa enrol-officer`: a security engineer enrols an officer's authenticator where every
gateway's console checks it (real Redis, the gateways' secrets file), on the record.

The console of a real gateway sharing that configuration then accepts the officer's code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from console_helpers import officer_browser, officer_token
from harness import audit_records, gateway_config, run_stack

from gateway.bench import toml_dumps
from gateway.cli import main
from gateway.demo_keys import ensure_demo_keys

OFFICER = "officer-zhou"


def _overrides(tmp: Path, redis_url: str, prefix: str) -> dict[str, Any]:
    return {"state": {"backend": "redis", "url": redis_url, "prefix": prefix, "timeout": 2.0},
            "step_up": {"secrets_file": str(tmp / "step-up-secrets.key"), "sms_file": str(tmp / "sms.log")},
            "policy_admin": {"officers": [OFFICER]}}


async def _enrol(config: Path, *extra: str) -> int:
    result: int = await asyncio.to_thread(main, ["mfa", "enrol-officer", "--config", str(config), *extra])
    return result


async def test_an_enrolled_officer_confirms_changes_in_the_console(tmp_path: Path, redis_url: str, redis_prefix: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    overrides = _overrides(tmp_path, redis_url, redis_prefix)
    keys = ensure_demo_keys(tmp_path / "keys")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_dumps(gateway_config(keys, tmp_path, "http://127.0.0.1:9", **overrides)), "utf-8")

    assert await _enrol(config, "--sub", "officer-typo") == 2  # not a configured officer
    refused = capsys.readouterr().err
    assert await _enrol(config, "--sub", OFFICER) == 0
    out = capsys.readouterr()
    uri = out.out.strip()
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    assert uri.startswith("otpauth://totp/") and "not shown again" in out.err
    assert await _enrol(config, "--sub", OFFICER) == 2  # already enrolled: --replace needed
    again = capsys.readouterr()
    assert "already has an authenticator" in again.err and again.out == ""

    async with run_stack(tmp_path, **overrides) as st, officer_browser(st) as officer:
        await officer.sign_in(officer_token(st, sub=OFFICER))
        page = await officer.step_up(secret, next_page="/console/freezes")
    assert "[policy_admin] officers" in refused
    assert page.status == 200 and page.url.endswith("/console/freezes") and "Changes allowed" in page.text
    enrolments = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "officer_totp_enrol"]
    assert [(r["officer"], r["replace"]) for r in enrolments] == [(OFFICER, False)]
    assert all(secret not in str(r) for r in audit_records(tmp_path / "audit"))


async def test_enrolment_needs_a_shared_secrets_file_and_a_shared_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_dumps(gateway_config(keys, tmp_path, "http://127.0.0.1:9",
                                                policy_admin={"officers": [OFFICER]})), "utf-8")
    assert await _enrol(config, "--sub", OFFICER) == 2  # no [step_up] secrets_file, memory state
    out = capsys.readouterr()
    assert "secrets_file" in out.err and out.out == ""
