"""``portcullis policy test`` and ``portcullis policy check``: the commands behind the CLI.

``test`` runs the bundle's own Rego tests (`gateway.policy.testing`).
``check`` is what a bundle must pass before it is deployed: it compiles the
bundle exactly as the gateway does (`RegoPolicy.from_directory`, Program +
Rvm), runs the bundle's tests, the gateway-owned invariant suite
(`gateway.policy.invariants`), and a fixed set of sample inputs through the
gateway path, checking that every decision parses and that no evaluation
exceeds the time bound.

Exit codes: 0 everything passed; 1 a failure (compile error, failing test,
broken invariant, bad sample); 2 nothing to run (no test, or none matching
``--run``) or a bad ``--run`` pattern.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gateway.policy.invariants import InvariantResult, Outcome, check_samples, run_invariants
from gateway.policy.rego import PolicyBundleError, RegoPolicy
from gateway.policy.testing import TestResult, format_result, run_tests, summarize

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOTHING = 2


def _print_test_results(results: list[TestResult], out: TextIO, *, verbose: bool) -> None:
    for result in results:
        print(format_result(result), file=out)
        if verbose:
            if result.detail and not result.passed:
                for line in result.detail.splitlines():
                    print(f"    {line}", file=out)
            for line in result.output:
                print(f"    print: {line}", file=out)


def _test_summary(results: list[TestResult]) -> str:
    passed, failed, skipped = summarize(results)
    return f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")


def policy_test(directory: Path, *, verbose: bool = False, run: str | None = None,
                out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``portcullis policy test``: one line per test, a summary; the exit code."""
    try:
        pattern = re.compile(run) if run is not None else None
    except re.error as exc:
        print(f"portcullis policy test: bad --run pattern {run!r}: {exc}", file=err)
        return EXIT_NOTHING
    try:
        results = run_tests(directory, run=pattern)
    except PolicyBundleError as exc:
        print(f"portcullis policy test: {exc.message}", file=err)
        return EXIT_FAILED
    _print_test_results(results, out, verbose=verbose)
    passed, failed, _ = summarize(results)
    if passed + failed == 0:
        what = f"matching --run {run!r} " if run is not None else ""
        print(f"portcullis policy test: no test {what}in {directory} (rules named test_* in *.rego)", file=err)
        return EXIT_NOTHING
    print(_test_summary(results), file=out)
    return EXIT_OK if failed == 0 else EXIT_FAILED


@dataclass
class CheckReport:
    directory: Path
    compile_error: PolicyBundleError | None = None
    test_error: PolicyBundleError | None = None
    tests: list[TestResult] = field(default_factory=list)
    invariants: list[InvariantResult] = field(default_factory=list)
    samples: list[Outcome] = field(default_factory=list)
    sample_problems: list[str] = field(default_factory=list)
    version: str | None = None

    @property
    def ok(self) -> bool:
        passed, failed, _ = summarize(self.tests)
        return (self.compile_error is None and self.test_error is None and passed > 0 and failed == 0
                and bool(self.invariants) and all(i.passed for i in self.invariants)
                and not self.sample_problems)


def check_bundle(directory: Path, *, bound: float | None = None, repeat: int = 5) -> CheckReport:
    """Compile, test, run the invariants and the samples; never raises for a bad bundle."""
    report = CheckReport(directory=directory)
    try:
        policy = RegoPolicy.from_directory(directory)
    except PolicyBundleError as exc:
        report.compile_error = exc
        return report
    report.version = policy.version
    try:
        report.tests = run_tests(directory)
    except PolicyBundleError as exc:
        report.test_error = exc
    report.invariants = run_invariants(policy)
    report.samples, report.sample_problems = check_samples(policy, bound=bound, repeat=repeat)
    return report


def policy_check(directory: Path, *, verbose: bool = False, bound: float | None = None,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``portcullis policy check``: the report, section by section; the exit code."""
    report = check_bundle(directory, bound=bound)
    if report.compile_error is not None:
        print(f"portcullis policy check: {report.compile_error.message}", file=err)
        print("FAIL compile", file=out)
        return EXIT_FAILED
    print(f"ok   compile: {directory} (version {report.version})", file=out)

    print("== tests", file=out)
    if report.test_error is not None:
        print(f"FAIL tests: {report.test_error.message}", file=out)
    else:
        _print_test_results(report.tests, out, verbose=verbose)
        passed, failed, _ = summarize(report.tests)
        if passed + failed == 0:
            print("FAIL tests: the bundle has no test_* rule", file=out)
        else:
            print(_test_summary(report.tests), file=out)

    print("== invariants", file=out)
    for inv in report.invariants:
        status = "PASS" if inv.passed else "FAIL"
        print(f"{status} {inv.name} ({inv.cases} cases): {inv.description}", file=out)
        for failure in inv.failures:
            print(f"    {failure}", file=out)
    broken = sum(1 for i in report.invariants if not i.passed)
    print(f"{len(report.invariants) - broken} passed, {broken} failed", file=out)

    print("== samples", file=out)
    slowest = max((o.elapsed for o in report.samples), default=0.0)
    if verbose:
        for outcome in report.samples:
            print(f"     {outcome.label}: {outcome.describe()} ({outcome.elapsed * 1000:.2f} ms)", file=out)
    for problem in report.sample_problems:
        print(f"FAIL {problem}", file=out)
    print(f"{len(report.samples)} samples, {len(report.sample_problems)} problems, "
          f"slowest {slowest * 1000:.2f} ms", file=out)

    print("policy check: " + ("OK" if report.ok else "FAILED"), file=out)
    return EXIT_OK if report.ok else EXIT_FAILED
