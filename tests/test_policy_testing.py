"""The Rego test runner (gateway.policy.testing) and `portcullis policy test` / `check` on tiny bundles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy.rego import PolicyBundleError
from gateway.policy.testing import (
    TestResult,
    build_engine,
    discover_tests,
    format_result,
    load_test_bundle,
    run_modules,
    run_tests,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]

POLICY = """package gateway

import rego.v1

default decision := {"allow": false, "deny": [{"code": "no_decision", "message": "no rule decided"}]}

decision := {"allow": true} if allow

decision := {"allow": false, "deny": [{"code": "not_owner", "message": "not your account"}]} if not allow

allow if input.request.account in input.subject.accounts

limit := data.limits.max_qty
"""

TESTS = """package gateway.access_test

import rego.v1

import data.gateway

owner := {"request": {"account": "A1"}, "subject": {"accounts": ["A1"]}}

test_owner_allowed if gateway.decision.allow with input as owner

test_stranger_denied if {
	not gateway.decision.allow with input as {"request": {"account": "B9"}, "subject": {"accounts": ["A1"]}}
}

test_limit_from_data if gateway.limit == 1000

test_fails_undefined if gateway.decision.allow with input as {}

test_fails_false := false

test_fails_value := 3

test_errors if {
	x := 1 / 0
	x > 0
}

test_prints if {
	print("hello from", "test_prints")
}

todo_test_later if false

test_set contains 1

test_func(x) := x
"""

OTHER = """package other_test

import rego.v1

test_in_other_package if { 1 + 1 == 2 }

test_in_other_package if { true }
"""


def _bundle(tmp_path: Path, *, with_failures: bool = True) -> Path:
    root = tmp_path / "bundle"
    if root.exists():
        return root
    (root / "data").mkdir(parents=True)
    (root / "policy.rego").write_text(POLICY)
    tests = TESTS
    if not with_failures:
        tests = "\n".join(line for line in TESTS.splitlines() if not line.startswith(("test_fails", "test_errors")))
        tests = tests.replace("\tx := 1 / 0\n\tx > 0\n}", "")
    (root / "sub").mkdir()
    (root / "sub" / "access_test.rego").write_text(tests)
    (root / "other_test.rego").write_text(OTHER)
    (root / "data" / "limits.json").write_text('{"max_qty": 1000}')
    return root


def _by_name(results: list[TestResult]) -> dict[str, TestResult]:
    return {r.name: r for r in results}


def test_discovery_lists_complete_test_rules_only(tmp_path: Path) -> None:
    bundle = load_test_bundle(_bundle(tmp_path))
    assert {name for name, _ in bundle.modules} == {"policy.rego", "sub/access_test.rego", "other_test.rego"}
    assert bundle.data == {"limits": {"max_qty": 1000}}
    tests = discover_tests(build_engine(bundle.modules, bundle.data))
    names = {(t.package, t.name) for t in tests}
    assert ("gateway.access_test", "test_owner_allowed") in names
    assert ("other_test", "test_in_other_package") in names
    assert ("gateway.access_test", "todo_test_later") in names
    assert not {n for _, n in names} & {"test_set", "test_func", "owner"}
    # a rule with two bodies is one test, at its first line
    other = [t for t in tests if t.package == "other_test"]
    assert len(other) == 1 and other[0].line == 5 and other[0].file == "other_test.rego"
    owner = next(t for t in tests if t.name == "test_owner_allowed")
    assert owner.file == "sub/access_test.rego" and owner.line == 9
    assert owner.path == "data.gateway.access_test.test_owner_allowed"


def test_results_pass_fail_error_skip(tmp_path: Path) -> None:
    results = run_tests(_bundle(tmp_path))
    by = _by_name(results)
    for name in ("test_owner_allowed", "test_stranger_denied", "test_limit_from_data", "test_prints",
                 "test_in_other_package"):
        assert by[name].passed and by[name].error is None and not by[name].skipped, name
    assert by["test_fails_undefined"].error == "undefined"
    assert by["test_fails_false"].error == "false"
    assert "value 3" in (by["test_fails_value"].error or "")
    err = by["test_errors"]
    assert not err.passed and err.error == "sub/access_test.rego:24:12: divide by zero"
    assert err.detail is not None and "1 / 0" in err.detail
    assert by["todo_test_later"].skipped
    assert any("hello from test_prints" in line for line in by["test_prints"].output)
    assert all(r.duration >= 0 for r in results)
    assert summarize(results) == (5, 4, 1)
    assert format_result(by["test_owner_allowed"]).startswith("PASS data.gateway.access_test.test_owner_allowed (")
    assert format_result(by["test_fails_false"]).endswith("at sub/access_test.rego:19: false")
    assert format_result(by["todo_test_later"]).startswith("SKIP ")


def test_run_filter(tmp_path: Path) -> None:
    results = run_tests(_bundle(tmp_path), run="stranger|other_test")
    assert sorted(r.name for r in results) == ["test_in_other_package", "test_stranger_denied"]
    assert run_tests(_bundle(tmp_path), run="nothing-matches") == []


def test_parse_error_names_file_line_column() -> None:
    with pytest.raises(PolicyBundleError) as info:
        run_modules([("p.rego", "package p\nimport rego.v1\ntest_a if { true \n")])
    assert info.value.file == "p.rego" and info.value.line == 4
    assert "p.rego:4:" in info.value.message


def test_unsafe_variable_fails_the_test_with_its_location() -> None:
    results = run_modules([("p_test.rego", "package p_test\nimport rego.v1\ntest_a if { x == 1 }\n")])
    assert len(results) == 1 and not results[0].passed
    assert results[0].error == "p_test.rego:3:13: use of undefined variable `x` is unsafe"


def test_data_collision_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (root / "data" / "gateway.json").write_text("{}")
    with pytest.raises(PolicyBundleError, match="collide"):
        load_test_bundle(root)


# -- the CLI ------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "policy", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ}, timeout=120)


def test_cli_test_failures_exit_1(tmp_path: Path) -> None:
    out = _cli("test", str(_bundle(tmp_path)))
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("PASS data.gateway.access_test.test_owner_allowed (") and line.endswith(" ms)")
               for line in lines)
    assert any(line.startswith("FAIL data.gateway.access_test.test_errors (") and "divide by zero" in line
               for line in lines)
    assert lines[-1] == "5 passed, 4 failed, 1 skipped"


def test_cli_test_all_passing_exit_0_and_verbose(tmp_path: Path) -> None:
    root = _bundle(tmp_path, with_failures=False)
    out = _cli("test", str(root), "--verbose")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "print: " in out.stdout and "hello from test_prints" in out.stdout
    assert out.stdout.splitlines()[-1] == "5 passed, 0 failed, 1 skipped"


def test_cli_test_run_filter(tmp_path: Path) -> None:
    out = _cli("test", str(_bundle(tmp_path)), "--run", "test_owner|test_stranger")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "2 passed, 0 failed"
    out = _cli("test", str(_bundle(tmp_path)), "--run", "errors$")
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1] == "0 passed, 1 failed"


def test_cli_no_tests_exit_2(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / "policy.rego").write_text(POLICY)
    out = _cli("test", str(root))
    assert out.returncode == 2
    assert "no test" in out.stderr
    out = _cli("test", str(_bundle(tmp_path)), "--run", "nothing-matches")
    assert out.returncode == 2 and "matching --run" in out.stderr
    out = _cli("test", str(_bundle(tmp_path)), "--run", "(")
    assert out.returncode == 2 and "bad --run pattern" in out.stderr


def test_cli_test_parse_error_exit_1(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (root / "broken_test.rego").write_text("package broken_test\nimport rego.v1\ntest_a if { true \n")
    out = _cli("test", str(root))
    assert out.returncode == 1
    assert "broken_test.rego:4:" in out.stderr


def test_cli_check_compile_error_exit_1(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "policy.rego").write_text("package gateway\nimport rego.v1\ndecision := {\"allow\": true\n")
    out = _cli("check", str(root))
    assert out.returncode == 1
    assert "policy.rego:" in out.stderr and "FAIL compile" in out.stdout


def test_cli_check_allow_everything_fails_invariants(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    (root / "policy.rego").write_text('package gateway\n\nimport rego.v1\n\ndecision := {"allow": true}\n')
    (root / "policy_test.rego").write_text(
        "package gateway_test\n\nimport rego.v1\n\nimport data.gateway\n\n"
        "test_allows if gateway.decision.allow\n")
    out = _cli("check", str(root))
    assert out.returncode == 1
    assert "PASS data.gateway_test.test_allows" in out.stdout
    assert "FAIL default_deny" in out.stdout and "FAIL frozen_account" in out.stdout
    assert out.stdout.splitlines()[-1] == "policy check: FAILED"


def test_cli_check_good_bundle_exit_0(tmp_path: Path) -> None:
    from test_policy_invariants import GOOD

    root = tmp_path / "good"
    root.mkdir()
    (root / "policy.rego").write_text(GOOD)
    (root / "policy_test.rego").write_text(
        "package gateway_test\n\nimport rego.v1\n\nimport data.gateway\n\n"
        "test_default_denies if not gateway.decision.allow with input as {}\n")
    out = _cli("check", str(root), "--verbose")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 passed, 0 failed" in out.stdout
    assert "PASS data.gateway_test.test_default_denies" in out.stdout
    assert out.stdout.splitlines()[-1] == "policy check: OK"
    # no tests at all: check fails even though the invariants pass
    (root / "policy_test.rego").unlink()
    out = _cli("check", str(root))
    assert out.returncode == 1 and "no test_* rule" in out.stdout
