"""The policy admin API end to end: real gateways on loopback, real Redis and PostgreSQL.

Each test gets its own PostgreSQL schema (the bundle repository) and Redis key
prefix (state and the ``policy:active`` channel). Officers are ``carol``,
``dave`` and ``erin`` (role compliance, acr mfa, fresh auth_time); the gateway
starts on `tests/bundles.py`'s tiny bundle, recorded as version 1 (bootstrap).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bundles import tiny_bundle, write_bundle
from harness import Stack, run_backend, run_stack

from gateway.bundles.files import BundleFiles, identity
from gateway.demo_keys import ensure_demo_keys, mint_token

MFA = "urn:portcullis:acr:mfa"
OFFICERS = ["carol", "dave", "erin"]


def version_of(files: dict[str, str]) -> str:
    return identity(BundleFiles(files)).version


def audit_records(tmp: Path) -> list[dict[str, Any]]:
    records = []
    for f in sorted((tmp / "audit").glob("*.jsonl")):
        records += [json.loads(line) for line in f.read_text().splitlines() if line]
    return records


async def settle_audit(stack: Stack) -> None:
    """Queued audit records reach the file within a few ms; wait for the backlog to drain."""
    for _ in range(200):
        if stack.gateway.audit.backlog == 0:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


class Officer:
    """A compliance officer talking to one gateway's admin listener."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession, sub: str, **token: Any) -> None:
        self.stack, self.s, self.sub = stack, session, sub
        self.headers = {"Authorization": "Bearer " + mint_token(
            stack.keys, sub=sub, accounts=(), roles=token.pop("roles", ("compliance",)),
            acr=token.pop("acr", MFA), **token)}

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.s.request(method, self.stack.admin_url + "/admin/policy" + path, json=body, data=raw,
                                  headers={**self.headers, **(headers or {})}) as r:
            return r.status, await r.json()

    async def upload(self, files: dict[str, str], description: str = "") -> tuple[int, Any]:
        return await self.call("POST", "/bundles", {"files": files, "description": description})

    async def ready(self, files: dict[str, str]) -> str:
        """Upload and validate; the version."""
        status, body = await self.upload(files)
        assert status == 201, body
        status, body = await self.call("POST", f"/bundles/{body['version']}/validate")
        assert status == 200, body
        return str(body["version"])

    async def propose(self, version: str) -> int:
        status, body = await self.call("POST", f"/bundles/{version}/propose", {"reason": "test"})
        assert status == 201, body
        return int(body["id"])

    async def serving(self) -> str:
        status, body = await self.call("GET", "")
        assert status == 200, body
        return str(body["serving"]["version"])


def policy_config(tmp: Path, postgres_dsn: str, schema: str, redis_url: str, prefix: str,
                  **admin: Any) -> dict[str, Any]:
    folder = write_bundle(tmp / "bundle-v1", tiny_bundle(rev=1))
    return {
        "policy": {"engine": "rego", "bundle": str(folder)},
        "policy_admin": {"repository": "postgres", "postgres_dsn": postgres_dsn, "postgres_schema": schema,
                         "officers": OFFICERS, "max_files": 16, "max_bundle_bytes": "64KiB", **admin},
        "state": {"backend": "redis", "url": redis_url, "prefix": prefix, "timeout": 2.0},
        "notifier": {"sink": "file", "path": str(tmp / "alerts.jsonl")},
    }


@asynccontextmanager
async def gateways(tmp: Path, postgres_dsn: str, schema: str, redis_url: str, prefix: str,
                   count: int = 1, prefixes: Sequence[str] | None = None,
                   **admin: Any) -> AsyncIterator[list[Stack]]:
    """`count` gateways sharing one backend, the repository schema and (by default) the Redis prefix."""
    keys = ensure_demo_keys(tmp / "keys")
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(run_backend(keys))
        out = []
        for i in range(count):
            own = tmp / f"gw{i}"
            own.mkdir()
            (own / "keys").symlink_to(tmp / "keys")
            p = prefixes[i] if prefixes else prefix
            out.append(await stack.enter_async_context(run_stack(
                own, backend_url=url, **policy_config(own, postgres_dsn, schema, redis_url, p, **admin))))
        yield out


@pytest.fixture
def env(tmp_path: Path, postgres_dsn: str, pg_schema: str, redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"tmp": tmp_path, "postgres_dsn": postgres_dsn, "schema": pg_schema, "redis_url": redis_url,
            "prefix": redis_prefix}


def run(env: dict[str, Any], **kw: Any) -> Any:
    return gateways(env["tmp"], env["postgres_dsn"], env["schema"], env["redis_url"], env["prefix"], **kw)


# -- access -----------------------------------------------------------------------------------


async def test_a_role_other_than_compliance_is_refused_with_403(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        for roles in (("admin",), ("client",), ("advisor",)):
            status, body = await Officer(gw, s, "mallory", roles=roles).call("GET", "/bundles")
            assert (status, body["error"]) == (403, "role_forbidden")


async def test_a_stale_auth_time_needs_a_step_up(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        stale = Officer(gw, s, "carol", extra={"auth_time": int(time.time()) - 301})
        async with s.get(gw.admin_url + "/admin/policy/bundles", headers=stale.headers) as r:
            body = await r.json()
            challenge = r.headers["WWW-Authenticate"]
    assert (r.status, body["error"]) == (401, "insufficient_user_authentication")
    assert "300 s" in body["message"] and body["max_age"] == 300 and body["acr_values"] == MFA
    assert 'acr_values="urn:portcullis:acr:mfa"' in challenge and "max_age=300" in challenge


async def test_a_password_only_authentication_needs_a_step_up(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        for acr in ("urn:portcullis:acr:pwd", None, "urn:other"):
            status, body = await Officer(gw, s, "carol", acr=acr).call("GET", "/bundles")
            assert (status, body["error"]) == (401, "insufficient_user_authentication"), acr


async def test_a_face_authentication_is_strong_enough(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        status, _ = await Officer(gw, s, "carol", acr="urn:portcullis:acr:face").call("GET", "/bundles")
    assert status == 200


async def test_no_token_is_401(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/admin/policy") as r:
            assert (r.status, (await r.json())["error"]) == (401, "token_missing")


# -- upload and validation --------------------------------------------------------------------


async def test_the_configured_bundle_is_recorded_as_the_first_version(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        status, body = await Officer(gw, s, "carol").call("GET", "")
    assert status == 200
    assert body["serving"]["version"] == version_of(tiny_bundle(rev=1)) == gw.gateway.policy.version
    assert body["active"]["kind"] == "bootstrap" and body["active"]["generation"] == 1


async def test_a_compile_error_names_file_line_and_column_and_the_bundle_never_activates(
        env: dict[str, Any]) -> None:
    files = tiny_bundle(rev=2)
    files["gateway.rego"] = files["gateway.rego"].replace("quotes if {", "quotes if {{")
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol, dave = Officer(gw, s, "carol"), Officer(gw, s, "dave")
        status, up = await carol.upload(files)
        assert (status, up["status"]) == (201, "uploaded")
        status, body = await carol.call("POST", f"/bundles/{up['version']}/validate")
        assert (status, body["error"]) == (422, "bundle_invalid")
        first = body["problems"][0]
        assert (first["stage"], first["file"], first["line"], first["column"]) == ("compile", "gateway.rego", 19, 6)
        assert body["message"].startswith("gateway.rego:19:6: ")
        status, shown = await dave.call("GET", f"/bundles/{up['version']}")
        assert shown["status"] == "invalid" and shown["report"]["ok"] is False
        status, body = await carol.call("POST", f"/bundles/{up['version']}/propose")
        assert (status, body["error"]) == (409, "bundle_not_validated")
        assert await dave.serving() == version_of(tiny_bundle(rev=1))


async def test_a_failing_bundle_test_is_reported_with_its_location(env: dict[str, Any]) -> None:
    files = tiny_bundle(rev=3)
    files["gateway_test.rego"] += '\ntest_wrong if {\n\tdata.settings.rev == 99\n}\n'
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        _, up = await carol.upload(files)
        status, body = await carol.call("POST", f"/bundles/{up['version']}/validate")
    assert (status, body["error"]) == (422, "bundle_invalid")
    failing = [p for p in body["problems"] if p["stage"] == "test"]
    line = files["gateway_test.rego"].splitlines().index("test_wrong if {") + 1
    assert failing and (failing[0]["file"], failing[0]["line"]) == ("gateway_test.rego", line)
    assert "test_wrong" in failing[0]["message"]


async def test_a_bundle_breaking_a_gateway_invariant_is_invalid(env: dict[str, Any]) -> None:
    files = tiny_bundle(rev=4)
    files["gateway.rego"] = files["gateway.rego"].replace('\tinput.request.route == "quotes"\n', "")
    files["gateway_test.rego"] = files["gateway_test.rego"].replace(
        '\td.allow == false\n\td.deny[0].code == "default_deny"\n', "\ttrue\n")
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        _, up = await carol.upload(files)
        status, body = await carol.call("POST", f"/bundles/{up['version']}/validate")
    assert (status, body["error"]) == (422, "bundle_invalid")
    assert {p["invariant"] for p in body["problems"] if p["stage"] == "invariant"} >= {"foreign_account"}


async def test_malformed_data_json_is_refused_at_upload_with_line_and_column(env: dict[str, Any]) -> None:
    files = tiny_bundle()
    files["data/settings.json"] = '{\n  "quotes_open": true,\n  oops\n}'
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        status, body = await Officer(gw, s, "carol").upload(files)
    assert (status, body["error"]) == (422, "bundle_invalid")
    assert (body["problems"][0]["file"], body["problems"][0]["line"], body["problems"][0]["column"]) == (
        "data/settings.json", 3, 3)


@pytest.mark.parametrize("path", ["../evil.rego", "a/../../evil.rego", "/etc/evil.rego", "..\\evil.rego",
                                  "c:/evil.rego", ".hidden.rego", "data/../x.rego", "a//b.rego", "notes.txt",
                                  "data/x.rego", "data/sub/x.json", "./x.rego"])
async def test_a_path_outside_the_bundle_layout_is_refused(env: dict[str, Any], path: str) -> None:
    files = {**tiny_bundle(), path: "package gateway.x\n"}
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        status, body = await Officer(gw, s, "carol").upload(files)
    assert (status, body["error"]) == (400, "bundle_path_forbidden"), body
    assert not (env["tmp"] / "evil.rego").exists()


async def test_upload_limits_and_envelope_errors(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol = Officer(gw, s, "carol")
        many = {**tiny_bundle(), **{f"extra/m{i}.rego": f"package extra.m{i}\n" for i in range(16)}}
        assert (await carol.upload(many))[1]["error"] == "bundle_too_large"
        big = {**tiny_bundle(), "big.rego": "package big\n# " + "x" * 70_000}
        status, body = await carol.upload(big)
        assert (status, body["error"]) == (413, "bundle_too_large")
        status, body = await carol.call("POST", "/bundles", raw=b"{not json", headers={
            "Content-Type": "application/json"})
        assert (status, body["error"]) == (400, "invalid_json")
        status, body = await carol.call("POST", "/bundles", raw=b"a=b", headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        assert (status, body["error"]) == (415, "unsupported_media_type")
        for envelope in ({"files": []}, {"files": {}}, {"files": {"a.rego": 1}}, {"files": tiny_bundle(), "x": 1},
                         {"files": {"gateway_test.rego": "package t\n"}}, [1]):
            status, body = await carol.call("POST", "/bundles", envelope)
            assert (status, body["error"]) == (400, "bundle_malformed"), envelope
        assert (await carol.upload({**tiny_bundle(), "A.rego": "package a\n", "a.rego": "package a\n"})
                )[1]["error"] == "bundle_path_forbidden"
        status, body = await carol.upload(tiny_bundle(rev=1))  # the bootstrap version, again
        assert (status, body["error"], body["version"]) == (409, "bundle_exists", version_of(tiny_bundle(rev=1)))
        status, body = await carol.call("GET", "/bundles/zzzz")
        assert (status, body["error"]) == (404, "bundle_not_found")
        status, body = await carol.call("POST", "/proposals/12345/approve")
        assert (status, body["error"]) == (404, "proposal_not_found")


# -- four eyes -------------------------------------------------------------------------------


async def test_the_proposer_cannot_approve_their_own_change(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol, dave, erin = (Officer(gw, s, n) for n in OFFICERS)
        version = await carol.ready(tiny_bundle(rev=2))
        proposal = await dave.propose(version)  # carol uploaded, dave proposes
        for who in (dave, carol):  # the proposer, then the uploader
            status, body = await who.call("POST", f"/proposals/{proposal}/approve")
            assert (status, body["error"]) == (403, "self_approval")
        assert await erin.serving() == version_of(tiny_bundle(rev=1))
        await settle_audit(gw)
    refused = [r for r in audit_records(env["tmp"] / "gw0") if r.get("action") == "policy_approve"]
    assert [(r["sub"], r["outcome"]) for r in refused] == [("dave", "self_approval"), ("carol", "self_approval")]


async def test_two_officers_activate_and_decisions_carry_the_new_version(env: dict[str, Any]) -> None:
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol, dave = Officer(gw, s, "carol"), Officer(gw, s, "dave")
        client = gw.auth()
        async with s.get(gw.url + "/api/quotes/600519.SH", headers=client) as r:
            assert r.status == 200
        closed = tiny_bundle(rev=2, quotes_open=False)
        version = await carol.ready(closed)
        proposal = await carol.propose(version)
        status, body = await dave.call("POST", f"/proposals/{proposal}/approve")
        assert status == 200, body
        assert body["activation"] == {**body["activation"], "version": version, "kind": "activate",
                                      "generation": 2, "activated_by": "carol", "approved_by": "dave"}
        assert body["serving"]["version"] == version and gw.gateway.policy.version == version
        async with s.get(gw.url + "/api/quotes/600519.SH", headers=client) as r:
            denied = await r.json()
        assert (r.status, denied["error"], denied["reasons"][0]["code"]) == (403, "policy_denied", "maintenance")
        status, again = await dave.call("POST", f"/proposals/{proposal}/approve")
        assert (status, again["error"]) == (409, "proposal_not_pending")
        await settle_audit(gw)
    records = audit_records(env["tmp"] / "gw0")
    judged = [(r["type"], r["decision"], r["policy_version"]) for r in records
              if r["type"] in ("decision", "denial") and r.get("route") == "quotes"]
    assert judged == [("decision", "allow", version_of(tiny_bundle(rev=1))), ("denial", "deny", version)]
    steps = [(r["action"], r.get("outcome")) for r in records if r["type"] == "admin"
             and r.get("action", "").startswith("policy_") and r["action"] != "policy_loaded"]
    assert steps[:2] == [("policy_activate", "ok")] * 1 + [("policy_upload", None)]  # bootstrap, then ahead
    for action in ("policy_upload", "policy_validate", "policy_propose", "policy_approve", "policy_activate"):
        ahead = [i for i, st in enumerate(steps) if st == (action, None)]
        assert ahead, f"{action} was not audited ahead"
    approve_at = steps.index(("policy_approve", None))
    assert steps[approve_at + 1] == ("policy_activate", None)  # both durable before the switch


async def test_a_rollback_needs_a_second_officer(env: dict[str, Any]) -> None:
    v1 = version_of(tiny_bundle(rev=1))
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol, dave = Officer(gw, s, "carol"), Officer(gw, s, "dave")
        v2 = await carol.ready(tiny_bundle(rev=2))
        status, _ = await dave.call("POST", f"/proposals/{await carol.propose(v2)}/approve")
        assert status == 200 and await carol.serving() == v2
        status, body = await carol.call("POST", "/rollback", {"version": v1, "reason": "v2 misbehaves"})
        assert (status, body["kind"], body["status"]) == (201, "rollback", "pending")
        status, refused = await carol.call("POST", f"/proposals/{body['id']}/approve")
        assert (status, refused["error"]) == (403, "self_approval")
        assert await carol.serving() == v2
        status, done = await dave.call("POST", f"/proposals/{body['id']}/approve")
        assert status == 200 and done["activation"]["kind"] == "rollback"
        assert await carol.serving() == v1
        v3 = await carol.ready(tiny_bundle(rev=3))  # never active: not a rollback target
        status, body = await carol.call("POST", "/rollback", {"version": v3})
        assert (status, body["error"]) == (409, "bundle_never_active")
        status, body = await carol.call("POST", "/rollback", {"version": v1})
        assert (status, body["error"]) == (409, "bundle_already_active")


async def test_break_glass_rolls_back_alone_and_alerts_every_officer(env: dict[str, Any]) -> None:
    v1 = version_of(tiny_bundle(rev=1))
    async with run(env) as [gw], aiohttp.ClientSession() as s:
        carol, dave = Officer(gw, s, "carol"), Officer(gw, s, "dave")
        v2 = await carol.ready(tiny_bundle(rev=2))
        await dave.call("POST", f"/proposals/{await carol.propose(v2)}/approve")
        status, body = await carol.call("POST", "/break-glass", {"version": v1})
        assert (status, body["error"]) == (400, "bad_request")  # a reason is required
        v3 = await carol.ready(tiny_bundle(rev=3))
        status, body = await carol.call("POST", "/break-glass", {"version": v3, "reason": "x"})
        assert (status, body["error"]) == (409, "bundle_never_active")
        status, body = await carol.call("POST", "/break-glass", {"version": v1, "reason": "orders rejected"})
        assert status == 200, body
        assert (body["activation"]["kind"], body["activation"]["activated_by"]) == ("break_glass", "carol")
        assert body["activation"]["approved_by"] is None and body["alerted"] == OFFICERS
        assert await dave.serving() == v1
        await settle_audit(gw)
    alerts = [json.loads(line) for line in (env["tmp"] / "gw0" / "alerts.jsonl").read_text().splitlines()]
    assert sorted(a["recipient"] for a in alerts) == OFFICERS
    assert all(a["kind"] == "policy_break_glass" and a["fields"]["to_version"] == v1
               and a["fields"]["from_version"] == v2 and a["fields"]["by"] == "carol" for a in alerts)
    records = [r for r in audit_records(env["tmp"] / "gw0") if r.get("action") in (
        "policy_break_glass", "policy_activate") and r.get("kind") == "break_glass"]
    assert [(r["action"], r.get("outcome")) for r in records if not r.get("refused")] == [
        ("policy_break_glass", None), ("policy_activate", None), ("policy_activate", "ok")]
    assert records[-1]["reason"] == "orders rejected" and records[-1]["alerted"] == OFFICERS


async def test_break_glass_without_officers_to_alert_is_unavailable(env: dict[str, Any]) -> None:
    async with run(env, officers=[]) as [gw], aiohttp.ClientSession() as s:
        status, body = await Officer(gw, s, "carol").call(
            "POST", "/break-glass", {"version": version_of(tiny_bundle(rev=1)), "reason": "x"})
    assert (status, body["error"]) == (503, "break_glass_unavailable")


# -- fan-out ----------------------------------------------------------------------------------


async def wait_for_version(officer: Officer, version: str, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if officer.stack.gateway.policy.version == version:
            return time.perf_counter() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"{officer.stack.admin_url} still serves {officer.stack.gateway.policy.version}")


async def test_a_second_gateway_picks_up_the_activation_through_pubsub(env: dict[str, Any]) -> None:
    async with run(env, count=2, poll_interval=3600) as [one, two], aiohttp.ClientSession() as s:
        assert await two.gateway.bundles.watcher.subscribed.wait()
        carol, dave = Officer(one, s, "carol"), Officer(one, s, "dave")
        v2 = await carol.ready(tiny_bundle(rev=2))
        status, body = await dave.call("POST", f"/proposals/{await carol.propose(v2)}/approve")
        assert status == 200 and body["notified_processes"] == 2
        took = await wait_for_version(Officer(two, s, "erin"), v2, timeout=5.0)
        assert two.gateway.policy.trigger == "message" and took < 2.0
        async with s.get(two.url + "/api/quotes/600519.SH", headers=two.auth()) as r:
            assert r.status == 200


async def test_a_gateway_that_missed_the_message_heals_by_polling(env: dict[str, Any]) -> None:
    # The second gateway uses another Redis prefix: it never hears the message, only the repository.
    prefixes = [env["prefix"], env["prefix"] + "deaf:"]
    async with run(env, count=2, poll_interval=0.2, prefixes=prefixes) as [one, two], aiohttp.ClientSession() as s:
        carol, dave = Officer(one, s, "carol"), Officer(one, s, "dave")
        v2 = await carol.ready(tiny_bundle(rev=2))
        status, body = await dave.call("POST", f"/proposals/{await carol.propose(v2)}/approve")
        assert status == 200 and body["notified_processes"] == 1
        await wait_for_version(Officer(two, s, "erin"), v2, timeout=5.0)
        assert two.gateway.policy.trigger == "poll"


async def test_a_gateway_started_later_serves_the_active_version(env: dict[str, Any]) -> None:
    async with run(env) as [one], aiohttp.ClientSession() as s:
        carol, dave = Officer(one, s, "carol"), Officer(one, s, "dave")
        v2 = await carol.ready(tiny_bundle(rev=2))
        await dave.call("POST", f"/proposals/{await carol.propose(v2)}/approve")
    later = env["tmp"] / "later"
    later.mkdir()
    async with gateways(later, env["postgres_dsn"], env["schema"], env["redis_url"], env["prefix"]) as [two]:
        assert two.gateway.policy.version == v2 and two.gateway.policy.trigger == "start"


async def test_postgres_down_at_startup_refuses_to_start(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="policy_admin.repository"):
        async with gateways(tmp_path, "postgresql://postgres@127.0.0.1:9/none", "x", redis_url, redis_prefix,
                            postgres_timeout=0.5):
            pass


# -- the in-memory repository through the same API -----------------------------------------------


async def test_the_memory_repository_runs_the_same_workflow(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "bundle-v1", tiny_bundle(rev=1))
    async with run_stack(tmp_path, policy={"engine": "rego", "bundle": str(folder)},
                         policy_admin={"officers": ["carol", "dave"]}) as gw, aiohttp.ClientSession() as s:
        carol, dave = Officer(gw, s, "carol"), Officer(gw, s, "dave")
        v2 = await carol.ready(tiny_bundle(rev=2, quotes_open=False))
        proposal = await carol.propose(v2)
        assert (await carol.call("POST", f"/proposals/{proposal}/approve"))[1]["error"] == "self_approval"
        status, _ = await dave.call("POST", f"/proposals/{proposal}/approve")
        assert status == 200 and await carol.serving() == v2
        async with s.get(gw.url + "/api/quotes/600519.SH", headers=gw.auth()) as r:
            assert r.status == 403
