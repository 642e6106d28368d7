"""The policy admin's parts without HTTP: path rules, step-up check, config keys, the hot swap,
the CLI token flags, and one repository suite run on memory and on real PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import jwt
import pytest
from bundles import tiny_bundle

from gateway.admin_policy import require_recent_step_up
from gateway.authn.tokens import Subject
from gateway.bundles.files import BundleFiles, check_path, identity
from gateway.bundles.postgres import PostgresBundleRepository
from gateway.bundles.repository import BundleRepository, NewBundle
from gateway.bundles.runtime import ActivePolicy
from gateway.cli import main as cli_main
from gateway.config import PolicyAdminConfig, parse
from gateway.errors import ConfigError, GatewayError
from gateway.policy.invariants import base_input
from gateway.policy.rego import RegoPolicy

# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["gateway.rego", "a/b/c.rego", "x_test.rego", "data/limits.json",
                                  "data/a_b.json", "v1.2/x.rego"])
def test_bundle_paths_that_are_allowed(path: str) -> None:
    assert check_path(path) is None


@pytest.mark.parametrize("path", ["", "../x.rego", "a/../x.rego", "/x.rego", "x\\y.rego", "c:x.rego", ".x.rego",
                                  "a/.git/x.rego", "a//x.rego", "./x.rego", "x.txt", "data/x.rego", "data/a/b.json",
                                  "data/1x.json", "x.json", "a/" * 8 + "x.rego", "x" * 256 + ".rego", "a b.rego",
                                  "é.rego", "x.rego/"])
def test_bundle_paths_that_are_refused(path: str) -> None:
    assert check_path(path) is not None


def test_the_identity_is_the_compiled_policy_version(tmp_path: Path) -> None:
    files = tiny_bundle(rev=7)
    modules = [(p, t) for p, t in files.items() if p.endswith(".rego") and not p.endswith("_test.rego")]
    compiled = RegoPolicy.from_modules(modules, {"settings": {"quotes_open": True, "rev": 7}})
    ident = identity(BundleFiles(files))
    assert (ident.version, ident.digest) == (compiled.version, compiled.digest)
    assert ident.files_digest != ident.digest and len(ident.files_digest) == 64


# -- step-up ----------------------------------------------------------------------------------


def officer(acr: str | None, auth_time: int | None) -> Subject:
    return Subject(sub="carol", iss="i", accounts=(), roles=("compliance",), acr=acr, amr=(), auth_time=auth_time,
                   jti=None, exp=0, iat=None, kid=None, cnf_jkt=None, token_digest=b"", claims={})


@pytest.mark.parametrize(("acr", "age", "ok"), [
    ("urn:portcullis:acr:mfa", 0, True), ("urn:portcullis:acr:face", 299, True),
    ("urn:portcullis:acr:mfa", 301, False), ("urn:portcullis:acr:pwd", 0, False), (None, 0, False),
    ("urn:portcullis:acr:unknown", 0, False), ("urn:portcullis:acr:mfa", -61, False),
    ("urn:portcullis:acr:mfa", -59, True)])
def test_recent_step_up(acr: str | None, age: int, ok: bool) -> None:
    now = 1_800_000_000
    call = lambda: require_recent_step_up(officer(acr, now - age), PolicyAdminConfig(), now)  # noqa: E731
    if ok:
        call()
    else:
        with pytest.raises(GatewayError) as err:
            call()
        assert (err.value.status, err.value.code) == (401, "insufficient_user_authentication")


def test_no_auth_time_needs_a_step_up() -> None:
    with pytest.raises(GatewayError, match="no auth_time"):
        require_recent_step_up(officer("urn:portcullis:acr:mfa", None), PolicyAdminConfig(), time.time())


# -- config -----------------------------------------------------------------------------------


def _cfg(**policy_admin: Any) -> PolicyAdminConfig:
    return parse({"gateway": {"security": False}, "policy_admin": policy_admin}, Path(".")).policy_admin


def test_policy_admin_defaults() -> None:
    cfg = _cfg()
    assert (cfg.repository, cfg.min_acr, cfg.max_auth_age, cfg.poll_interval) == (
        "memory", "urn:portcullis:acr:mfa", 300.0, 5.0)


@pytest.mark.parametrize(("keys", "named"), [
    ({"repository": "postgres"}, "policy_admin.postgres_dsn"),
    ({"repository": "mysql"}, "policy_admin.repository"),
    ({"postgres_dsn": "mysql://x"}, "policy_admin.postgres_dsn"),
    ({"postgres_schema": "a;drop"}, "policy_admin.postgres_schema"),
    ({"min_acr": "x"}, "policy_admin.min_acr"),
    ({"acr_levels": []}, "policy_admin.acr_levels"),
    ({"max_auth_age": 0}, "policy_admin.max_auth_age"),
    ({"max_bundle_bytes": "100MiB"}, "policy_admin.max_bundle_bytes"),
    ({"max_files": 0}, "policy_admin.max_files"),
    ({"poll_interval": 0}, "policy_admin.poll_interval"),
    ({"officers": ["a", "a"]}, "policy_admin.officers"),
    ({"officer": ["a"]}, "policy_admin.officer"),
])
def test_policy_admin_config_errors_name_the_key(keys: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        _cfg(**keys)


def test_the_example_configuration_documents_every_policy_admin_key() -> None:
    text = (Path(__file__).resolve().parents[1] / "examples" / "portcullis.toml").read_text()
    section = text.split("[policy_admin]", 1)[1].split("\n[", 1)[0]
    for key in PolicyAdminConfig.__dataclass_fields__:
        assert f"{key} =" in section or f"# {key} =" in section, key


# -- the hot swap -----------------------------------------------------------------------------


async def test_a_request_in_flight_keeps_the_bundle_it_started_with() -> None:
    def compiled(rev: int) -> RegoPolicy:
        files = tiny_bundle(rev=rev)
        return RegoPolicy.from_modules([("gateway.rego", files["gateway.rego"])],
                                       {"settings": {"quotes_open": True, "rev": rev}})

    old, new = compiled(1), compiled(2)
    active = ActivePolicy(old)
    doc = base_input("account")
    in_flight = active.evaluate(doc)  # the request has picked its engine
    active.swap(new, 2, "test")
    after = await active.evaluate(doc)
    assert (await in_flight).policy_version == old.version
    assert after.policy_version == new.version == active.version


# -- portcullis token ---------------------------------------------------------------------------


def _token(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        assert cli_main(["token", "--sub", "carol", "--role", "compliance", "--keys-dir", str(tmp_path), *args]) == 0
    claims: dict[str, Any] = jwt.decode(out.getvalue().splitlines()[-1], options={"verify_signature": False})
    return claims


def test_token_acr_and_fresh_auth_time(tmp_path: Path) -> None:
    claims = _token(tmp_path, "--acr", "urn:portcullis:acr:mfa")
    assert claims["acr"] == "urn:portcullis:acr:mfa" and abs(claims["auth_time"] - time.time()) < 5


def test_token_auth_age_and_auth_time(tmp_path: Path) -> None:
    assert abs(_token(tmp_path, "--auth-age", "600")["auth_time"] - (time.time() - 600)) < 5
    assert _token(tmp_path, "--auth-time", "1700000000")["auth_time"] == 1700000000


# -- one repository suite, memory and PostgreSQL ----------------------------------------------------


def new_bundle(rev: int, by: str = "carol") -> NewBundle:
    files = tiny_bundle(rev=rev)
    ident = identity(BundleFiles(files))
    return NewBundle(version=ident.version, digest=ident.digest, files_digest=ident.files_digest, files=files,
                     description=f"rev {rev}", uploaded_by=by, uploaded_at=1000.0 + rev)


async def _validated(repo: BundleRepository, rev: int, by: str = "carol") -> str:
    b = new_bundle(rev, by)
    await repo.add(b)
    await repo.record_validation(b.version, ok=True, report={"ok": True}, by=by, at=2000.0)
    return b.version


async def test_repo_stores_files_byte_for_byte(repo: BundleRepository) -> None:
    b = new_bundle(1)
    info = await repo.add(b)
    got = await repo.get(b.version)
    assert dict(got.files) == dict(b.files) and info.status == "uploaded" and info.file_count == 3
    assert BundleFiles(got.files).files_digest() == got.info.files_digest
    with pytest.raises(GatewayError, match="already stored"):
        await repo.add(b)


async def test_repo_four_eyes_and_generations(repo: BundleRepository) -> None:
    assert await repo.bootstrap(new_bundle(1, "config"), at=1.0) is not None
    assert await repo.bootstrap(new_bundle(9, "config"), at=2.0) is None  # only while nothing is active
    v2 = await _validated(repo, 2)
    p = await repo.propose("activate", v2, by="dave", at=3000.0, reason="r", ttl=60)
    for who in ("dave", "carol"):
        with pytest.raises(GatewayError) as err:
            await repo.approve(p.id, by=who, at=3001.0, ttl=60)
        assert err.value.code == "self_approval"
    activation = await repo.approve(p.id, by="erin", at=3002.0, ttl=60)
    assert (activation.generation, activation.version, activation.approved_by) == (2, v2, "erin")
    assert (await repo.active()) == activation
    assert [a.generation for a in await repo.history()] == [2, 1]


async def test_repo_refuses_unvalidated_duplicate_and_expired_proposals(repo: BundleRepository) -> None:
    await repo.bootstrap(new_bundle(1, "config"), at=1.0)
    b = new_bundle(2)
    await repo.add(b)
    with pytest.raises(GatewayError, match="validate it first"):
        await repo.propose("activate", b.version, by="carol", at=10.0, reason="", ttl=60)
    await repo.record_validation(b.version, ok=True, report={}, by="carol", at=11.0)
    first = await repo.propose("activate", b.version, by="carol", at=12.0, reason="", ttl=60)
    with pytest.raises(GatewayError) as err:
        await repo.propose("activate", b.version, by="dave", at=13.0, reason="", ttl=60)
    assert err.value.code == "proposal_exists"
    with pytest.raises(GatewayError) as err:
        await repo.approve(first.id, by="dave", at=100.0, ttl=60)
    assert err.value.code == "proposal_expired"
    again = await repo.propose("activate", b.version, by="dave", at=101.0, reason="", ttl=60)  # the old one expired
    assert again.id != first.id and (await repo.proposal(first.id)).status == "expired"


async def test_repo_rollback_and_break_glass_only_to_earlier_active_versions(repo: BundleRepository) -> None:
    v1 = (await repo.bootstrap(new_bundle(1, "config"), at=1.0)).version  # type: ignore[union-attr]
    v2 = await _validated(repo, 2)
    await repo.approve((await repo.propose("activate", v2, by="carol", at=5.0, reason="", ttl=60)).id,
                       by="dave", at=6.0, ttl=60)
    v3 = await _validated(repo, 3)
    for call in (lambda: repo.propose("rollback", v3, by="carol", at=7.0, reason="", ttl=60),
                 lambda: repo.break_glass(v3, by="carol", at=7.0, reason="x")):
        with pytest.raises(GatewayError) as err:
            await call()
        assert err.value.code == "bundle_never_active"
    back = await repo.break_glass(v1, by="carol", at=8.0, reason="outage")
    assert (back.kind, back.version, back.approved_by, back.generation) == ("break_glass", v1, None, 3)
    p = await repo.propose("rollback", v2, by="carol", at=9.0, reason="", ttl=60)
    assert (await repo.approve(p.id, by="dave", at=10.0, ttl=60)).kind == "rollback"


async def test_postgres_enforces_four_eyes_in_the_schema(postgres_dsn: str, pg_schema: str) -> None:
    import asyncpg

    repo = PostgresBundleRepository(postgres_dsn, pg_schema)
    await repo.start()
    try:
        v = await _validated(repo, 2)
        p = await repo.propose("activate", v, by="carol", at=1.0, reason="", ttl=60)
    finally:
        await repo.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(f'UPDATE "{pg_schema}".policy_proposals SET status = \'approved\', '
                               "decided_by = proposed_by WHERE id = $1", p.id)
    finally:
        await conn.close()


async def test_postgres_concurrent_approvals_activate_once(postgres_dsn: str, pg_schema: str) -> None:
    repos = [PostgresBundleRepository(postgres_dsn, pg_schema) for _ in range(2)]
    for r in repos:
        await r.start()
    try:
        v = await _validated(repos[0], 2)
        p = await repos[0].propose("activate", v, by="carol", at=1.0, reason="", ttl=60)
        results = await asyncio.gather(*(r.approve(p.id, by=who, at=2.0, ttl=60)
                                         for r, who in zip(repos, ("dave", "erin"), strict=True)),
                                       return_exceptions=True)
        codes = sorted(r.code if isinstance(r, GatewayError) else "ok" for r in results)
        assert codes == ["ok", "proposal_not_pending"]
        assert [a.generation for a in await repos[1].history()] == [1]
    finally:
        for r in repos:
            await r.close()


async def test_repo_shadow_sessions_one_at_a_time_and_only_validated(repo: BundleRepository) -> None:
    active = await _validated(repo, 1)
    await repo.bootstrap(new_bundle(1), at=1.0)
    candidate = await _validated(repo, 2)
    unvalidated = new_bundle(3)
    await repo.add(unvalidated)
    assert await repo.shadow() is None
    for version, code in ((unvalidated.version, "bundle_not_validated"), (active, "bundle_already_active")):
        with pytest.raises(GatewayError) as refused:
            await repo.start_shadow(version, by="carol", at=5.0, sample_rate=1.0, reason="")
        assert refused.value.code == code
    with pytest.raises(GatewayError) as none_running:
        await repo.stop_shadow(by="carol", at=5.0)
    assert none_running.value.code == "shadow_not_running"
    session = await repo.start_shadow(candidate, by="carol", at=6.0, sample_rate=0.5, reason="try")
    assert (session.version, session.sample_rate, session.running) == (candidate, 0.5, True)
    with pytest.raises(GatewayError) as twice:
        await repo.start_shadow(candidate, by="dave", at=7.0, sample_rate=1.0, reason="")
    assert twice.value.code == "shadow_running"
    stopped = await repo.stop_shadow(by="dave", at=8.0)
    assert (stopped.id, stopped.stopped_by, stopped.stopped_at, stopped.running) == (session.id, "dave", 8.0, False)
    again = await repo.start_shadow(candidate, by="dave", at=9.0, sample_rate=1.0, reason="")
    assert await repo.shadow() == again and await repo.shadow(session.id) == stopped
    with pytest.raises(GatewayError) as missing:
        await repo.shadow(999)
    assert missing.value.code == "shadow_not_found"
