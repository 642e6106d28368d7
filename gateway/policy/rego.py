"""The embedded Rego engine: regorus `Program` + `Rvm` behind `PolicyEngine`.

A bundle (Rego modules + one data document) is compiled once into a regorus
`Program` with the single entry point ``data.gateway.decision``; one `Rvm`
holds the program and the data and is reused for every request. Per request
the input is serialised with orjson, `Rvm.set_input_json` + `Rvm.execute`
return the decision as JSON text, and `gateway.policy.decision.parse_decision`
validates it strictly.

Findings about gordon-to-regorus 0.13.0 (pinned exactly in pyproject.toml;
re-check every item below on an upgrade, tests/test_rego_engine.py and
tests/test_opa_conformance.py pin most of them):

* API: ``Program.compile_from_modules(data_json, [(name, src), ...], [entry])``
  (data must be a JSON *object*), ``Rvm()``, ``load_program``,
  ``set_data_json``, ``set_input_json``, ``execute() -> str`` (pretty JSON),
  ``execute_entry_point(name)``, ``set_execution_mode(0|1)`` (1 = suspendable,
  with ``resume``), ``get_execution_state()``. Errors are ``RuntimeError`` whose
  text is the message followed by ``"\\n\\nStack backtrace:"`` and a Rust
  backtrace; parse errors carry ``--> file:line:col``. A missing entry point or
  an unresolved variable both compile-fail with the location-less
  ``not a valid rule path``; we then ask `regorus.Engine` (the tree-walking
  interpreter) for a located message.
* An undefined result is returned as the JSON *string* ``"<undefined>"``.
* Reuse: one `Rvm` is reusable across calls (input is replaced by each
  ``set_input_json``; 1000s of evaluations give identical answers, see the
  tests). `Rvm` is not shared across threads here: `evaluate` is synchronous
  inside the event loop (no await between set_input and execute), so calls
  never interleave. Each gateway process (SO_REUSEPORT workers) has its own.
* Limits: the Rvm has a hard-coded limit of 25,000 executed instructions per
  evaluation ("exceeded maximum instruction limit of 25000") raised as an
  error; it is not configurable from Python. The native code also has an
  execution time limit, but Python cannot set it. So the time bound here is
  checked after the call (`time_budget`): an evaluation slower than the
  budget is refused (POLICY_UNAVAILABLE), never turned into an allow. A single
  builtin call (e.g. ``numbers.range(1, 1e9)``) is one instruction and is not
  preempted: policies must not build unbounded collections from input.
* A Rust panic inside a builtin (e.g. ``strings.count(s, "")``: "window size
  must be non-zero") surfaces as ``pyo3_runtime.PanicException``, which derives
  from BaseException, not Exception: `RvmProgram` converts it to RuntimeError
  (so POLICY_UNAVAILABLE). The same Rvm stays usable after a panic.
* Runtime errors are NOT raised by the Rvm. Builtin type errors, division by
  zero and conflicting rule outputs (``decision := 1`` and ``decision := 2``
  both true) make the expression/rule *undefined*, much like OPA without
  ``--strict-builtin-errors`` but also for conflicts, which OPA always
  raises. `regorus.Engine` raises all of these. Consequences for policy
  authors (docs/POLICIES.md): build ``allow`` from positive checks, never as
  "no deny rule fired", because an erroring deny rule is silently skipped.
* An element or member whose value is undefined (e.g. ``{"message":
  sprintf("%v", [data.missing])}`` inside a ``contains`` rule) is kept with
  the string ``"<undefined>"`` as its value, where OPA drops the element. We
  scan every result for that marker and refuse it (POLICY_UNAVAILABLE).
* Also observed: an assignment to a variable that the rule never uses
  (``x := input.missing``) does not make the body undefined in the Rvm
  (OPA and `regorus.Engine` do); only unused variables are affected.

Undefined decisions: if the bundle declares ``default decision``, an undefined
result can only come from a swallowed runtime error (e.g. a conflict), so it
raises POLICY_UNAVAILABLE. Without a default, `regorus.Engine` re-evaluates
the same input (slow path, only here) to tell a real error (POLICY_UNAVAILABLE
with its message) from a genuinely undefined decision, which is a deny with
reason ``no_decision``.

Bundle layout for `RegoPolicy.from_directory`: every ``*.rego`` below the
directory (recursively, except ``*_test.rego``), named by its POSIX path
relative to the directory; every ``data/*.json`` is one top-level member of
the data document named by the file stem (``data/limits.json`` ->
``data.limits``). A stem that is also the first segment of a package name
(e.g. ``data/gateway.json``) is refused.

Version: SM3 over the canonical bundle (sorted module names and contents,
each length-prefixed, then the data document as sorted-key JSON);
``digest`` is the full hex, ``version`` its first 16 characters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import regorus
from cryptography.hazmat.primitives import hashes

from gateway.errors import POLICY_UNAVAILABLE, GatewayError
from gateway.policy.decision import parse_decision
from gateway.policy.engine import Decision, Reason
from gateway.policy.input import InputShape, input_shape, members_read, projector

ENTRYPOINT = "data.gateway.decision"
UNDEFINED = "<undefined>"
DEFAULT_TIME_BUDGET = 0.050
"""Seconds; an evaluation that takes longer is refused (checked after the call)."""

NO_DECISION = Reason("no_decision", "the policy produced no decision for this request")

ERROR_LOCATION = re.compile(r"-->\s*(?P<file>[^\n]+?):(?P<line>\d+):(?P<column>\d+)")
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_DEFAULT_DECISION = re.compile(r"^\s*default\s+decision\b", re.MULTILINE)


class PolicyBundleError(Exception):
    """A bundle that cannot be loaded; the message names the file, line and column when known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column


def engine_message(exc: BaseException) -> str:
    """The regorus error text without the Rust backtrace."""
    text = str(exc)
    return text.split("\n\nStack backtrace:", 1)[0].strip()


def bundle_error(exc: BaseException, prefix: str, *, full_text: bool = True) -> PolicyBundleError:
    """A located `PolicyBundleError` from a regorus error (file:line:col when regorus gives one)."""
    text = engine_message(exc)
    match = ERROR_LOCATION.search(text)
    if match is None:
        return PolicyBundleError(f"{prefix}: {text}")
    file, line, column = match["file"].strip(), int(match["line"]), int(match["column"])
    summary = next((ln for ln in text.splitlines() if ln.startswith("error:")), text.splitlines()[-1])
    message = f"{prefix}: {file}:{line}:{column}: {summary.removeprefix('error:').strip()}"
    return PolicyBundleError(f"{message}\n{text}" if full_text else message, file=file, line=line, column=column)


def bundle_digest(modules: Sequence[tuple[str, str]], data_json: bytes) -> str:
    """SM3 (hex) of the canonical bundle: sorted modules, length-prefixed, then the data JSON."""
    h = hashes.Hash(hashes.SM3())
    h.update(b"portcullis-rego-bundle-v1\0")
    for name, source in sorted(modules):
        for part in (name.encode(), source.encode()):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    h.update(len(data_json).to_bytes(8, "big"))
    h.update(data_json)
    return h.finalize().hex()


PLAIN_ALLOW_TEXTS = frozenset({
    '{\n  "allow": true,\n  "deny": [],\n  "obligations": {},\n  "step_up": null\n}',
    '{"allow":true,"deny":[],"obligations":{},"step_up":null}',
})
"""The decision text of a plain allow (no reason, no step-up, no obligation) as the Rvm prints it
(pretty, sorted keys) and compact; `evaluate_sync` answers it without decoding and parsing. A text
that differs in any byte (another engine version's layout, say) takes the full path."""


def _decode(result: str) -> Any:
    try:
        return orjson.loads(result)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(POLICY_UNAVAILABLE, f"the engine returned invalid JSON: {exc}") from exc


def _find_undefined(value: Any, path: str) -> str | None:
    """Where the Rvm's undefined marker sits inside a result, if anywhere (it leaks into collections)."""
    if value == UNDEFINED:
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            if key == UNDEFINED:
                return f"{path} (a key)"
            found = _find_undefined(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_undefined(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


class RvmProgram:
    """One compiled regorus Program and the Rvm that runs it: the hot path, shared with the conformance suite.

    Raises `RuntimeError` (regorus) on compile and execution errors; callers translate them.
    """

    def __init__(self, modules: Sequence[tuple[str, str]], data_json: str, entrypoint: str) -> None:
        self.entrypoint = entrypoint
        try:
            self.program = regorus.Program.compile_from_modules(data_json, list(modules), [entrypoint])
        except BaseException as exc:
            raise as_runtime_error(exc) from None
        self.vm = regorus.Rvm()
        self.vm.load_program(self.program)
        self.vm.set_data_json(data_json)

    def execute(self, input_json: str) -> str:
        """Run once with this input; returns the result JSON text (`"<undefined>"` when undefined)."""
        vm = self.vm
        try:
            vm.set_input_json(input_json)
            result: str = vm.execute()
        except BaseException as exc:
            raise as_runtime_error(exc) from None
        return result


def as_runtime_error(exc: BaseException) -> BaseException:
    """A Rust panic arrives as pyo3's PanicException, a *BaseException*: turn it into a RuntimeError.

    Anything else (RuntimeError from regorus, KeyboardInterrupt, ...) is returned unchanged to be re-raised.
    """
    if type(exc).__name__ == "PanicException":
        return RuntimeError(f"regorus panicked: {exc}")
    return exc


def read_bundle(path: str | Path, *, include_tests: bool) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The ``*.rego`` modules below `path` (named by relative path) and the data document.

    Each ``data/<stem>.json`` becomes ``data.<stem>``; a stem that names a package
    is refused. ``*_test.rego`` files are included only for the test runner.
    """
    root = Path(path)
    if not root.is_dir():
        raise PolicyBundleError(f"{root}: not a directory")
    modules: list[tuple[str, str]] = []
    for file in sorted(root.rglob("*.rego")):
        if not file.is_file() or (not include_tests and file.name.endswith("_test.rego")):
            continue
        rel = file.relative_to(root).as_posix()
        try:
            modules.append((rel, file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyBundleError(f"{rel}: cannot read: {exc}", file=rel) from exc
    packages = {pkg.split(".", 1)[0] for _, src in modules for pkg in _PACKAGE.findall(src)}
    data: dict[str, Any] = {}
    data_dir = root / "data"
    if data_dir.is_dir():
        for file in sorted(data_dir.glob("*.json")):
            rel = file.relative_to(root).as_posix()
            if file.stem in packages:
                raise PolicyBundleError(f"{rel}: data.{file.stem} would collide with package {file.stem}",
                                        file=rel)
            try:
                data[file.stem] = orjson.loads(file.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise PolicyBundleError(f"{rel}: not valid JSON: {exc}", file=rel) from exc
    return modules, data


class RegoPolicy:
    """A compiled Rego bundle evaluated with regorus Program + Rvm; implements `PolicyEngine`."""

    version: str

    def __init__(self, modules: Sequence[tuple[str, str]], data: Mapping[str, Any], *,
                 time_budget: float = DEFAULT_TIME_BUDGET) -> None:
        if not isinstance(data, Mapping):
            raise PolicyBundleError(f"the data document must be a JSON object, got {type(data).__name__}")
        names = [name for name, _ in modules]
        if not modules:
            raise PolicyBundleError("the bundle has no Rego module")
        if len(set(names)) != len(names):
            raise PolicyBundleError("the bundle has two modules with the same name")
        self.modules: tuple[tuple[str, str], ...] = tuple((str(n), str(s)) for n, s in modules)
        try:
            self.data_json: bytes = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise PolicyBundleError(f"the data document is not JSON: {exc}") from exc
        self._data_text = self.data_json.decode()
        self.digest: str = bundle_digest(self.modules, self.data_json)
        self.version = self.digest[:16]
        self.time_budget = time_budget
        self.has_default = any(_DEFAULT_DECISION.search(src) and "gateway" in _PACKAGE.findall(src)
                               for _, src in self.modules)
        self.input_shape: InputShape | None = input_shape(self.modules)
        self._project = projector(self.input_shape)
        self.input_members: tuple[str, ...] | None = members_read(self.input_shape)
        """The top-level members the bundle reads: the decide step builds only these."""
        self._engine: regorus.Engine | None = None
        try:
            self._rvm = RvmProgram(self.modules, self._data_text, ENTRYPOINT)
        except RuntimeError as exc:
            raise self._diagnose_compile(exc) from None

    # -- construction -----------------------------------------------------

    @classmethod
    def from_modules(cls, modules: Sequence[tuple[str, str]], data: Mapping[str, Any] | None = None, *,
                     time_budget: float = DEFAULT_TIME_BUDGET) -> RegoPolicy:
        return cls(modules, {} if data is None else data, time_budget=time_budget)

    @classmethod
    def from_directory(cls, path: str | Path, *, time_budget: float = DEFAULT_TIME_BUDGET) -> RegoPolicy:
        modules, data = read_bundle(path, include_tests=False)
        return cls(modules, data, time_budget=time_budget)

    def _interpreter(self) -> regorus.Engine:
        """The tree-walking regorus Engine on the same bundle: diagnostics only, never the hot path."""
        if self._engine is None:
            engine = regorus.Engine()
            for name, source in self.modules:
                engine.add_policy(name, source)
            engine.add_data_json(self._data_text)
            self._engine = engine
        return self._engine

    def _diagnose_compile(self, exc: RuntimeError) -> PolicyBundleError:
        if ERROR_LOCATION.search(engine_message(exc)):
            return bundle_error(exc, "cannot compile the policy bundle")
        # "not a valid rule path" has no location: the interpreter usually says more.
        try:
            engine = self._interpreter()
            engine.set_input_json("{}")
            engine.eval_rule(ENTRYPOINT)
        except BaseException as raised:
            detail = as_runtime_error(raised)
            if not isinstance(detail, RuntimeError):
                raise
            if ERROR_LOCATION.search(engine_message(detail)):
                return bundle_error(detail, "cannot compile the policy bundle")
        if "gateway" not in {pkg for _, src in self.modules for pkg in _PACKAGE.findall(src)}:
            return PolicyBundleError(f"cannot compile the policy bundle: no module declares package gateway "
                                     f"(the entry point is {ENTRYPOINT})")
        return PolicyBundleError(f"cannot compile the policy bundle: {engine_message(exc)} "
                                 f"(is {ENTRYPOINT} defined as a rule?)")

    # -- evaluation -------------------------------------------------------

    @staticmethod
    def input_text(policy_input: Mapping[str, Any]) -> str:
        """The input document as the JSON text the Rvm reads (shadow mode reuses it for the candidate)."""
        try:
            return orjson.dumps(policy_input).decode()
        except TypeError as exc:
            raise GatewayError(POLICY_UNAVAILABLE, f"the policy input is not JSON: {exc}") from exc

    def _execute(self, policy_input: Mapping[str, Any]) -> str:
        """Serialise the members the bundle reads, run on the Rvm within the time budget; the result text."""
        return self._execute_text(self.input_text(self._project(policy_input)))

    def _execute_text(self, input_json: str) -> str:
        started = time.perf_counter()
        try:
            result = self._rvm.execute(input_json)
        except RuntimeError as exc:
            raise GatewayError(POLICY_UNAVAILABLE, f"policy evaluation failed: {engine_message(exc)}") from exc
        elapsed = time.perf_counter() - started
        if elapsed > self.time_budget:
            raise GatewayError(POLICY_UNAVAILABLE, f"policy evaluation took {elapsed * 1000:.1f} ms, "
                                                   f"over the {self.time_budget * 1000:.0f} ms budget")
        return result

    def evaluate_raw(self, policy_input: Mapping[str, Any]) -> Any:
        """The decision document as JSON-decoded Python, or `UNDEFINED` (the string) when undefined."""
        return _decode(self._execute(policy_input))

    def _undefined(self, input_json: bytes, *, diagnose: bool = True) -> Decision:
        if self.has_default:
            detail = self._interpreter_error(input_json) if diagnose else None
            raise GatewayError(POLICY_UNAVAILABLE, "the decision is undefined despite `default decision`: "
                               + (detail or "a runtime error (e.g. conflicting rule outputs)"))
        detail = self._interpreter_error(input_json) if diagnose else None
        if detail is not None:
            raise GatewayError(POLICY_UNAVAILABLE, f"policy evaluation failed: {detail}")
        return Decision(allow=False, deny=(NO_DECISION,), policy_version=self.version)

    def _interpreter_error(self, input_json: bytes) -> str | None:
        """Re-run with regorus.Engine: its error text, or None if it succeeds (engines may disagree)."""
        engine = self._interpreter()
        try:
            engine.set_input_json(input_json.decode())
            value = engine.eval_rule(ENTRYPOINT)
        except BaseException as raised:
            exc = as_runtime_error(raised)
            if not isinstance(exc, RuntimeError):
                raise
            return engine_message(exc)
        if value is not None:
            return "the Rvm result is undefined but regorus.Engine produced a decision (engine disagreement)"
        return None

    def evaluate_sync(self, policy_input: Mapping[str, Any]) -> Decision:
        # Only the members this bundle names are loaded (`input_shape`); the Rvm pays per member.
        return self.evaluate_text(self.input_text(self._project(policy_input)))

    def evaluate_text(self, input_json: str, *, diagnose: bool = True) -> Decision:
        """`evaluate_sync` on an input already serialised by `input_text`.

        ``diagnose=False`` (shadow mode) never re-runs an undefined decision on `regorus.Engine`:
        it is an error with a default decision, else ``no_decision``, at the cost of one evaluation.
        """
        result = self._execute_text(input_json)
        if result in PLAIN_ALLOW_TEXTS:
            # The usual answer, recognised by its exact text: what the full path below would return.
            return Decision(allow=True, policy_version=self.version)
        doc = _decode(result)
        if doc == UNDEFINED:
            return self._undefined(input_json.encode(), diagnose=diagnose)
        leak = _find_undefined(doc, "decision")
        if leak is not None:
            raise GatewayError(POLICY_UNAVAILABLE, f"the engine left an undefined value at {leak} "
                                                   "(a term in the policy is undefined)")
        return parse_decision(doc, self.version)

    async def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        return self.evaluate_sync(policy_input)

    def __repr__(self) -> str:
        return f"RegoPolicy(version={self.version!r}, modules={[n for n, _ in self.modules]!r})"
