"""Validating an uploaded bundle: exactly ``portcullis policy check`` (`gateway.policy.check.check_bundle`).

A bundle passes when it compiles as the gateway compiles it (Program + Rvm),
its own ``test_*`` rules all pass (and it has some), the gateway-owned
invariant suite passes, every fixed sample input gives a decision that parses
(the decision schema) and no sample evaluation exceeds the time bound.

The check runs in a child process (``python -m gateway.bundles.validate``,
the files as JSON on stdin, the report as JSON on stdout): it takes ~0.5 s of
CPU for the broker bundle while the event loop keeps serving, a bundle that
never finishes (a Rego test cannot be preempted) is killed after
``timeout`` seconds, and no regorus object of an untrusted bundle ever lives
in the gateway process (regorus objects are also unsendable between threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

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
    """Run the full check on a private copy of the files (in the validator child process)."""
    with materialized(bundle) as root:
        report = check_bundle(root, bound=bound)
        problems = _problems(report)
        result = Validation(ok=report.ok and not problems, version=report.version,
                            problems=problems[:MAX_PROBLEMS], summary=_summary(report))
        if len(problems) > MAX_PROBLEMS:
            result.summary["problems_not_shown"] = len(problems) - MAX_PROBLEMS
    return result


def _failed(message: str) -> Validation:
    return Validation(ok=False, version=None, problems=[problem("validate", message)])


async def validate(bundle: BundleFiles, *, bound: float, timeout: float = 60.0) -> Validation:
    """`validate_sync` in a child process, killed after `timeout` seconds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.bundles.validate", "--bound", repr(bound),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(orjson.dumps({"files": dict(bundle.files)})), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return _failed(f"validation did not finish within {timeout:g} s (a test or rule that never ends?)")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return _failed(f"the validator exited with status {proc.returncode}: {tail[0][:300]}")
    try:
        doc = orjson.loads(out)
        return Validation(ok=bool(doc["ok"]), version=doc["version"], problems=list(doc["problems"]),
                          summary=dict(doc["summary"]))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return _failed(f"the validator's report is unreadable: {exc}")


def main() -> int:
    """Child process: {"files": {...}} on stdin, the `Validation` report on stdout."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gateway.bundles.validate")
    parser.add_argument("--bound", type=float, required=True, help="seconds per sample evaluation")
    args = parser.parse_args()
    files = orjson.loads(sys.stdin.buffer.read())["files"]
    result = validate_sync(BundleFiles(files=files), bound=args.bound)
    sys.stdout.buffer.write(orjson.dumps(result.report()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
