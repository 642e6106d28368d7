"""Validating an uploaded bundle: exactly ``portcullis policy check`` (`gateway.policy.check.check_bundle`).

A bundle passes when it compiles as the gateway compiles it (Program + Rvm),
its own ``test_*`` rules all pass (and it has some), the gateway-owned
invariant suite passes, every fixed sample input gives a decision that parses
(the decision schema) and no sample evaluation exceeds the time bound.

The check runs in a worker thread: it takes ~0.5 s of CPU for the broker
bundle and the event loop keeps serving meanwhile. regorus objects are
unsendable between threads (pyo3), so everything regorus stays inside the
thread: only plain data (`Validation`) comes back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.bundles.files import BundleFiles, materialized, problem
from gateway.policy.check import CheckReport, check_bundle
from gateway.policy.rego import ERROR_LOCATION, PolicyBundleError
from gateway.policy.testing import summarize

MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Validation:
    ok: bool
    version: str | None
    """The version the compiled policy reports (None when it does not compile)."""
    problems: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"ok": self.ok, "version": self.version, "problems": self.problems, "summary": self.summary}


def _located(stage: str, exc: PolicyBundleError) -> dict[str, Any]:
    lines = exc.message.splitlines()
    return problem(stage, lines[0] if lines else "cannot load the bundle", file=exc.file, line=exc.line,
                   column=exc.column, detail=exc.message if len(lines) > 1 else None)


def _problems(report: CheckReport) -> list[dict[str, Any]]:
    if report.compile_error is not None:
        return [_located("compile", report.compile_error)]
    found: list[dict[str, Any]] = []
    if report.test_error is not None:
        found.append(_located("test", report.test_error))
    for result in report.tests:
        if result.passed:
            continue
        match = ERROR_LOCATION.search(result.detail or "")
        if match is not None:  # the test raised: where it raised
            file, line, column = match["file"].strip(), int(match["line"]), int(match["column"])
        else:  # the test was false or undefined: where it is defined
            file, line, column = result.file, result.line, None
        found.append(problem("test", f"{result.path}: {result.error or 'failed'}", file=file, line=line,
                             column=column, test=result.path))
    passed, failed, _ = summarize(report.tests)
    if report.test_error is None and passed + failed == 0:
        found.append(problem("test", "the bundle has no test_* rule (its own tests are required)"))
    for inv in report.invariants:
        for failure in inv.failures:
            found.append(problem("invariant", f"{inv.name}: {failure}", invariant=inv.name))
    if not report.invariants:
        found.append(problem("invariant", "the invariant suite did not run"))
    for text in report.sample_problems:
        found.append(problem("sample", text))
    return found


def _summary(report: CheckReport) -> dict[str, Any]:
    passed, failed, skipped = summarize(report.tests)
    return {
        "tests": {"passed": passed, "failed": failed, "skipped": skipped},
        "invariants": {"passed": sum(1 for i in report.invariants if i.passed),
                       "failed": sum(1 for i in report.invariants if not i.passed)},
        "samples": {"count": len(report.samples), "problems": len(report.sample_problems),
                    "slowest_ms": round(max((o.elapsed for o in report.samples), default=0.0) * 1000, 3)},
    }


def validate_sync(bundle: BundleFiles, *, bound: float) -> Validation:
    """Run the full check on a private copy of the files (any thread; regorus never leaves it)."""
    with materialized(bundle) as root:
        report = check_bundle(root, bound=bound)
        problems = _problems(report)
        result = Validation(ok=report.ok and not problems, version=report.version,
                            problems=problems[:MAX_PROBLEMS], summary=_summary(report))
        if len(problems) > MAX_PROBLEMS:
            result.summary["problems_not_shown"] = len(problems) - MAX_PROBLEMS
        del report  # drop every regorus object in this thread
    return result


async def validate(bundle: BundleFiles, *, bound: float) -> Validation:
    """`validate_sync` in a worker thread."""
    return await asyncio.to_thread(validate_sync, bundle, bound=bound)
