"""The real broker bundle in policies/: one case per `test_*` rule, the invariant suite, the samples.

Skipped with a reason while policies/ holds no .rego file. A bundle that does not parse is one
failing case (`test_bundle_loads`), not a collection error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.policy.invariants import INVARIANTS, InvariantResult, check_samples, run_invariants
from gateway.policy.rego import PolicyBundleError, RegoPolicy
from gateway.policy.testing import TestCase, build_engine, discover_tests, load_test_bundle, run_test

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
HAS_REGO = any(p.is_file() for p in POLICY_DIR.rglob("*.rego")) if POLICY_DIR.is_dir() else False
NO_BUNDLE = pytest.mark.skipif(not HAS_REGO, reason=f"{POLICY_DIR} holds no .rego file yet "
                                                    "(the broker bundle is being written)")


def _discover() -> tuple[list[TestCase], str | None]:
    if not HAS_REGO:
        return [], None
    try:
        bundle = load_test_bundle(POLICY_DIR)
        return discover_tests(build_engine(bundle.modules, bundle.data)), None
    except PolicyBundleError as exc:
        return [], exc.message


CASES, LOAD_ERROR = _discover()


@pytest.fixture(scope="module")
def engine() -> Any:
    bundle = load_test_bundle(POLICY_DIR)
    eng = build_engine(bundle.modules, bundle.data)
    eng.set_gather_prints(True)
    return eng


@pytest.fixture(scope="module")
def policy() -> RegoPolicy:
    try:
        return RegoPolicy.from_directory(POLICY_DIR)
    except PolicyBundleError as exc:
        pytest.fail(f"the bundle does not compile: {exc.message}")


@pytest.fixture(scope="module")
def invariants(policy: RegoPolicy) -> dict[str, InvariantResult]:
    return {r.name: r for r in run_invariants(policy)}


@NO_BUNDLE
def test_bundle_loads() -> None:
    assert LOAD_ERROR is None, LOAD_ERROR
    RegoPolicy.from_directory(POLICY_DIR)  # compiles on the production path (Program + Rvm)


@NO_BUNDLE
def test_bundle_has_tests() -> None:
    assert LOAD_ERROR is None, LOAD_ERROR
    assert [c for c in CASES if not c.skip], f"no test_* rule in {POLICY_DIR}"


@NO_BUNDLE
@pytest.mark.parametrize("case", [pytest.param(c, id=c.path) for c in CASES if not c.skip] or [
    pytest.param(None, id="no-tests", marks=pytest.mark.skip(reason="no test_* rule discovered"))])
def test_rego(engine: Any, case: TestCase) -> None:
    result = run_test(engine, case)
    output = "".join(f"\n  print: {line}" for line in result.output)
    assert result.passed, f"{result.path} at {result.location}: {result.detail or result.error}{output}"


@NO_BUNDLE
@pytest.mark.parametrize("name", [name for name, _, _ in INVARIANTS])
def test_invariant(invariants: dict[str, InvariantResult], name: str) -> None:
    result = invariants[name]
    assert result.passed, f"{name}: {result.description}\n  " + "\n  ".join(result.failures)


@NO_BUNDLE
def test_samples_parse_within_time_bound(policy: RegoPolicy) -> None:
    _, problems = check_samples(policy, repeat=3)
    assert not problems, "\n".join(problems)
