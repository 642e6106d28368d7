"""`portcullis mfa enrol-officer`: a security engineer enrols an officer's authenticator where every
gateway's console checks it (real Redis, the gateways' secrets file), on the record.

The console of a real gateway sharing that configuration then accepts the officer's code.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from console_helpers import officer_browser, officer_token
from harness import audit_records, gateway_config, run_stack

from gateway.bench import toml_dumps
from gateway.demo_keys import ensure_demo_keys

OFFICER = "officer-zhou"
ROOT = Path(__file__).resolve().parents[1]


def _overrides(tmp: Path, redis_url: str, prefix: str) -> dict[str, Any]:
    return {"state": {"backend": "redis", "url": redis_url, "prefix": prefix, "timeout": 2.0},
            "step_up": {"secrets_file": str(tmp / "step-up-secrets.key"), "sms_file": str(tmp / "sms.log")},
            "policy_admin": {"officers": [OFFICER]}}


@dataclass
class Run:
    code: int
    out: str
    err: str


async def _enrol(config: Path, *extra: str) -> Run:
    """The command in its own process, as an engineer runs it (in a thread of this one, the gateway
    objects a test leaves to the garbage collector could be dropped on that thread)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "mfa", "enrol-officer", "--config", str(config), *extra,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def test_an_enrolled_officer_confirms_changes_in_the_console(tmp_path: Path, redis_url: str,
                                                                   redis_prefix: str) -> None:
    overrides = _overrides(tmp_path, redis_url, redis_prefix)
    keys = ensure_demo_keys(tmp_path / "keys")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_dumps(gateway_config(keys, tmp_path, "http://127.0.0.1:9", **overrides)), "utf-8")

    typo = await _enrol(config, "--sub", "officer-typo")  # not a configured officer
    done = await _enrol(config, "--sub", OFFICER)
    uri = done.out.strip()
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    again = await _enrol(config, "--sub", OFFICER)  # already enrolled: --replace needed
    assert typo.code == 2 and "[policy_admin] officers" in typo.err
    assert done.code == 0 and uri.startswith("otpauth://totp/") and "not shown again" in done.err
    assert again.code == 2 and "already has an authenticator" in again.err and again.out == ""

    async with run_stack(tmp_path, **overrides) as st, officer_browser(st) as officer:
        await officer.sign_in(officer_token(st, sub=OFFICER))
        page = await officer.step_up(secret, next_page="/console/freezes")
    assert page.status == 200 and page.url.endswith("/console/freezes") and "Changes allowed" in page.text
    enrolments = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "officer_totp_enrol"]
    assert [(r["officer"], r["replace"]) for r in enrolments] == [(OFFICER, False)]
    assert all(secret not in str(r) for r in audit_records(tmp_path / "audit"))


async def test_enrolment_needs_a_shared_secrets_file_and_a_shared_store(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_dumps(gateway_config(keys, tmp_path, "http://127.0.0.1:9",
                                                policy_admin={"officers": [OFFICER]})), "utf-8")
    run = await _enrol(config, "--sub", OFFICER)  # no [step_up] secrets_file, memory state
    assert run.code == 2 and "secrets_file" in run.err and run.out == ""
