"""A Rego test runner for policy bundles, in the manner of ``opa test``.

`load_test_bundle` reads a bundle directory the way `RegoPolicy.from_directory`
does (module names are POSIX paths relative to the directory, ``data/*.json``
is one member of the data document per file stem, a stem that collides with a
package is refused), but it also keeps the ``*_test.rego`` modules.

`discover_tests` asks regorus for the parsed modules (``Engine.get_ast_as_json``)
and lists every *complete* rule whose name starts with ``test_`` in every
package (``test_x if {...}``, ``test_x := v``, ``default test_x := ...``), with
its file and the line of its first definition. Rules named ``todo_test_*`` are
reported as skipped, as ``opa test`` does. Functions, partial set/object rules
and ref heads whose first segment is ``test_*`` are not tests.

`run_tests` evaluates each test with the tree-walking `regorus.Engine`
(``eval_rule``), with no input: a test passes only when its value is exactly
``true``; undefined, ``false``, any other value or an error (with the
engine's message) is a failure. Tests run on the Engine because it *raises*
runtime errors (division by zero, builtin type errors, conflicting outputs)
where the production `Rvm` silently makes the expression undefined: a test
that errors is reported as an error instead of quietly passing a ``not``.
The production path (Program + Rvm) is covered by the gateway-owned invariant
suite in `gateway.policy.invariants`, which every bundle must pass.

``print`` output of each test is gathered and returned with its result.
A test cannot be preempted: a test that never finishes blocks the runner.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
import regorus

from gateway.policy.rego import (
    ERROR_LOCATION,
    PolicyBundleError,
    as_runtime_error,
    bundle_error,
    engine_message,
    read_bundle,
)

TEST_PREFIX = "test_"
TODO_PREFIX = "todo_test_"



@dataclass(frozen=True)
class TestCase:
    """One discovered test rule."""

    __test__: ClassVar[bool] = False  # not a pytest class

    package: str
    """The package path without the ``data.`` prefix, e.g. ``gateway.access_test``."""
    name: str
    file: str
    line: int
    skip: bool = False
    """A ``todo_test_*`` rule: listed, never evaluated."""

    @property
    def path(self) -> str:
        """The full rule path, e.g. ``data.gateway.access_test.test_x``."""
        return f"data.{self.package}.{self.name}"


@dataclass(frozen=True)
class TestResult:
    __test__: ClassVar[bool] = False  # not a pytest class

    package: str
    name: str
    file: str
    line: int
    passed: bool
    error: str | None
    """Why it failed, one line: ``undefined``, ``false``, ``value 3 (...)`` or ``file:line:col: message``."""
    duration: float
    """Seconds."""
    skipped: bool = False
    detail: str | None = None
    """The engine's full error text (with the source excerpt) when the test raised."""
    output: tuple[str, ...] = ()
    """What the test printed (``print``), in order."""

    @property
    def path(self) -> str:
        return f"data.{self.package}.{self.name}"

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class TestBundle:
    """A bundle directory as the test runner sees it: every module, tests included, and the data."""

    __test__: ClassVar[bool] = False  # not a pytest class

    root: Path
    modules: tuple[tuple[str, str], ...]
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def test_modules(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.modules if name.endswith("_test.rego"))


def _as_exception(exc: BaseException) -> Exception:
    """regorus errors are RuntimeError; a Rust panic becomes one; anything else is re-raised."""
    converted = as_runtime_error(exc)
    if isinstance(converted, Exception):
        return converted
    raise converted


def load_test_bundle(path: str | Path) -> TestBundle:
    """Every ``*.rego`` below `path` (tests included) and the ``data/*.json`` document, as `RegoPolicy` loads it."""
    modules, data = read_bundle(path, include_tests=True)
    return TestBundle(root=Path(path), modules=tuple(modules), data=data)


def build_engine(modules: Iterable[tuple[str, str]], data: Mapping[str, Any]) -> regorus.Engine:
    """A `regorus.Engine` holding the modules and the data; parse errors become `PolicyBundleError`."""
    engine = regorus.Engine()
    for name, source in modules:
        try:
            engine.add_policy(name, source)
        except BaseException as raised:
            exc = _as_exception(raised)
            error = bundle_error(exc, "cannot parse the bundle", full_text=False)
            if error.file is None:
                error.file = name
                error.message = f"cannot parse the bundle: {name}: {engine_message(exc)}"
                error.args = (error.message,)
            raise error from None
    try:
        engine.add_data_json(orjson.dumps(dict(data)).decode())
    except BaseException as raised:
        raise PolicyBundleError(f"cannot load the data document: {engine_message(_as_exception(raised))}") from None
    return engine


def _ref_segments(ref: Any) -> list[str] | None:
    """``a.b["c"]`` (regorus AST) as ["a", "b", "c"]; None for anything that is not a plain dotted ref."""
    if not isinstance(ref, dict) or len(ref) != 1:
        return None
    kind, node = next(iter(ref.items()))
    if kind == "Var":
        return [str(node["value"])]
    if kind == "RefDot":
        head = _ref_segments(node["refr"])
        fld = node.get("field")
        if head is None or not isinstance(fld, list) or len(fld) != 2:
            return None
        return [*head, str(fld[1])]
    if kind == "RefBrack":
        head = _ref_segments(node["refr"])
        index = node.get("index")
        if head is None or not isinstance(index, dict) or "String" not in index:
            return None
        return [*head, str(index["String"]["value"])]
    return None


def _rule_name_and_line(rule: Any) -> tuple[str, int] | None:
    """The name and line of a complete rule (``name if``/``name := v``/``default name``), else None."""
    if not isinstance(rule, dict) or len(rule) != 1:
        return None
    kind, node = next(iter(rule.items()))
    if kind == "Default":
        segments = _ref_segments(node.get("refr"))
        if segments is None or len(segments) != 1 or node.get("args"):
            return None
        return segments[0], int(node["span"]["line"])
    if kind != "Spec":
        return None
    head = node.get("head")
    if not isinstance(head, dict) or "Compr" not in head:  # "Set" (contains) and "Func" are not tests
        return None
    compr = head["Compr"]
    refr = compr.get("refr")
    if not isinstance(refr, dict) or "Var" not in refr:  # test_p[x], test_x.y: not complete rules
        return None
    return str(refr["Var"]["value"]), int(compr["span"]["line"])


def discover_tests(engine: regorus.Engine) -> list[TestCase]:
    """Every ``test_*`` (and ``todo_test_*``) complete rule in every module the engine holds.

    A rule defined by several bodies (or in several files of the same package) is one test,
    located at its first definition; the result is sorted by file, then line.
    """
    modules = orjson.loads(engine.get_ast_as_json())
    found: dict[tuple[str, str], TestCase] = {}
    for module in modules:
        file = str(module["source"]["file"])
        ast = module["ast"]
        package_segments = _ref_segments(ast["package"]["refr"])
        if package_segments is None:
            continue
        package = ".".join(package_segments)
        for rule in ast.get("rules", []):
            named = _rule_name_and_line(rule)
            if named is None:
                continue
            name, line = named
            if name.startswith(TODO_PREFIX):
                skip = True
            elif name.startswith(TEST_PREFIX):
                skip = False
            else:
                continue
            key = (package, name)
            current = found.get(key)
            if current is None or (file, line) < (current.file, current.line):
                found[key] = TestCase(package=package, name=name, file=file, line=line, skip=skip)
    return sorted(found.values(), key=lambda t: (t.file, t.line, t.name))


def one_line_error(text: str) -> str:
    """``--> f.rego:5:23 ... error: divide by zero`` as ``f.rego:5:23: divide by zero``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    summary = next((ln.removeprefix("error:").strip() for ln in lines if ln.startswith("error:")),
                   lines[0] if lines else text)
    match = ERROR_LOCATION.search(text)
    if match is None:
        return summary
    return f"{match['file'].strip()}:{match['line']}:{match['column']}: {summary}"


def _describe(value: Any) -> str:
    if value is None:
        return "undefined"
    if value is False:
        return "false"
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"value {text} (a test must be exactly true)"


def run_test(engine: regorus.Engine, test: TestCase) -> TestResult:
    """Evaluate one test on the engine (no input); see the module docstring for what passes."""
    if test.skip:
        return TestResult(test.package, test.name, test.file, test.line, passed=True, error=None,
                          duration=0.0, skipped=True)
    error: str | None
    detail: str | None = None
    started = time.perf_counter()
    try:
        value = engine.eval_rule(test.path)
    except BaseException as raised:
        duration = time.perf_counter() - started
        detail = engine_message(_as_exception(raised)) or type(raised).__name__
        error = one_line_error(detail)
        passed = False
    else:
        duration = time.perf_counter() - started
        passed = value is True
        error = None if passed else _describe(value)
    try:
        output = tuple(str(line) for line in engine.take_prints())
    except Exception:  # the prints are a courtesy, never a failure
        output = ()
    return TestResult(test.package, test.name, test.file, test.line, passed=passed, error=error,
                      duration=duration, output=output, detail=detail)


def run_tests(bundle: TestBundle | str | Path, *, run: str | re.Pattern[str] | None = None) -> list[TestResult]:
    """Discover and run the bundle's tests; `run` keeps only tests whose full path matches (``re.search``).

    Raises `PolicyBundleError` when a module does not parse or the data is not JSON.
    """
    if not isinstance(bundle, TestBundle):
        bundle = load_test_bundle(bundle)
    pattern = re.compile(run) if isinstance(run, str) else run
    engine = build_engine(bundle.modules, bundle.data)
    engine.set_gather_prints(True)
    tests = discover_tests(engine)
    if pattern is not None:
        tests = [t for t in tests if pattern.search(t.path)]
    return [run_test(engine, t) for t in tests]


def run_modules(modules: Sequence[tuple[str, str]], data: Mapping[str, Any] | None = None, *,
                run: str | re.Pattern[str] | None = None) -> list[TestResult]:
    """`run_tests` on in-memory modules (name, source)."""
    return run_tests(TestBundle(root=Path("."), modules=tuple(modules), data=dict(data or {})), run=run)


def summarize(results: Sequence[TestResult]) -> tuple[int, int, int]:
    """(passed, failed, skipped)."""
    skipped = sum(1 for r in results if r.skipped)
    passed = sum(1 for r in results if r.passed and not r.skipped)
    return passed, len(results) - passed - skipped, skipped


def format_result(result: TestResult) -> str:
    """``PASS data.p.test_x (0.3 ms)`` / ``FAIL data.p.test_y (0.1 ms): undefined`` / ``SKIP ...``."""
    if result.skipped:
        return f"SKIP {result.path} ({result.location})"
    ms = f"({result.duration * 1000:.1f} ms)"
    if result.passed:
        return f"PASS {result.path} {ms}"
    return f"FAIL {result.path} {ms} at {result.location}: {result.error or 'failed'}"
