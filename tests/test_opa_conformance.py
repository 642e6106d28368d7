"""OPA conformance cases for the builtin categories our policies use, run through regorus Program + Rvm.

Source: ../shared/vectors/opa-compliance (OPA's v1 test cases as converted by
swift-opa, see SOURCE.txt there); override the location with PORTCULLIS_VECTORS.

How a case runs (the same path the gateway uses, `gateway.policy.rego.RvmProgram`):
an `Rvm` program can only have rule paths as entry points, not arbitrary
queries, so each case's query is wrapped in one extra module::

    package portcullis_conformance
    results contains {"x": x, ...} if { <query> }

compiled together with the case's modules and data, entry point
``data.portcullis_conformance.results``. OPA's `want_result` (a list of
bindings of the query's variables) is compared with that set; with
`sort_bindings`, array values are compared as multisets. A case with
`want_error`/`want_error_code` passes when compilation or execution raises.

Known differences are listed in KNOWN_DIFFERENCES below, each with its
reason, and run as `xfail(strict=True)`: if an engine upgrade fixes one, the
suite fails until the entry is removed; if it breaks a passing case, it fails.

Per-category table for docs/POLICIES.md::

    .venv/bin/python tests/test_opa_conformance.py
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.rego import UNDEFINED, RvmProgram

VECTORS = Path(os.environ.get("PORTCULLIS_VECTORS")
               or Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "opa-compliance")

WRAPPER_PACKAGE = "portcullis_conformance"
ENTRYPOINT = f"data.{WRAPPER_PACKAGE}.results"

# Category (as reported in docs/POLICIES.md) -> the vector folders (under v1/) it covers.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "comparisons/equality": ("comparisonexpr", "eqexpr"),
    "arithmetic/numbers": ("arithmetic", "numbersrange"),
    "aggregates": ("aggregates",),
    "sets": ("sets", "union", "intersection"),
    "arrays": ("array",),
    "objects": ("objectget", "objectkeys", "objectunion", "objectremove", "objectfilter"),
    "strings": ("strings", "sprintf", "trim", "trimprefix", "trimsuffix", "trimspace"),
    "time": ("time",),
    "in/every/comprehensions": ("containskeyword", "every", "comprehensions"),
    "default/else": ("defaultkeyword", "elsekeyword"),
    "functions": ("functions",),
    "partial objects/sets": ("partialobjectdoc", "partialsetdoc"),
    "negation": ("negation",),
    "glob.match": ("globmatch",),
    "regex.match": ("regexmatch",),
    "net.cidr_contains": ("netcidrcontains",),
    "type checks": ("typebuiltin", "typenamebuiltin"),
    "json/units": ("jsonbuiltins", "units"),
}

# Cases that need the wall clock or cannot be expressed through JSON input.
_QUERY_SKIP = re.compile(r"time\.now_ns")

# Known differences between regorus 0.13.0 (Rvm) and OPA: case id -> reason.
# Filled from running this suite; every entry is xfail(strict=True).
KNOWN_DIFFERENCES: dict[str, str] = {
    'arithmetic/test-arithmetic-0814.json::arithmetic/divide+error':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'arithmetic/test-arithmetic-0817.json::arithmetic/remainder+error':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'arithmetic/test-arithmetic-0818.json::arithmetic/remainder+error+floating':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'arithmetic/test-arithmetic-minus-type-error.json::arithmetic/minus/type error':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'arithmetic/test-arithmetic-minus-type-error.json::arithmetic/minus/type error#2':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'numbersrange/test-numbersrange-0260.json::numbersrange/error: floating-point number pos 1':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'numbersrange/test-numbersrange-0261.json::numbersrange/error: floating-point number pos 2':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'aggregates/test-aggregates-0028.json::aggregates/count error null':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'aggregates/test-aggregates-0028.json::aggregates/count error number':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'aggregates/test-membership.json::aggregates/member+some+key+ref with other variable':
        'Rvm compiler: `some k, {pattern} in x[i]` unsupported',
    'aggregates/test-membership.json::aggregates/member+some+with':
        'Rvm compiler does not support `with`',
    'array/flatten.json::array/flatten empty array':
        'builtin array.flatten missing in regorus 0.13.0',
    'array/flatten.json::array/flatten only arrays':
        'builtin array.flatten missing in regorus 0.13.0',
    'array/flatten.json::array/flatten single item array in array':
        'builtin array.flatten missing in regorus 0.13.0',
    'array/flatten.json::array/flatten has nesting depth 1':
        'builtin array.flatten missing in regorus 0.13.0',
    'array/flatten.json::array/flatten mixed types':
        'builtin array.flatten missing in regorus 0.13.0',
    'array/test-array-0042.json::array/concat: err':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'array/test-array-0043.json::array/concat: err rhs':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'array/test-array-0052.json::array/reverse_object_error':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectget/test-objectget-path.json::objectget/get_for_non_object':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectkeys/test-objectkeys.json::objectkeys/error_on_non_object':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectunion/test-objectunion-0277.json::objectunion/error wrong lhs type input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectunion/test-objectunion-0278.json::objectunion/error wrong rhs type input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0289.json::objectremove/error invalid object param type array input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0290.json::objectremove/error invalid object param type bool input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0291.json::objectremove/error invalid object param type number input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0292.json::objectremove/error invalid object param type string input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0293.json::objectremove/error invalid object param type nil input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0294.json::objectremove/error invalid key param type string input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0295.json::objectremove/error invalid key param type boolean input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0296.json::objectremove/error invalid key param type number input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectremove/test-objectremove-0297.json::objectremove/error invalid key param type nil input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0309.json::objectfilter/error invalid object param type array input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0310.json::objectfilter/error invalid object param type bool input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0311.json::objectfilter/error invalid object param type number input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0312.json::objectfilter/error invalid object param type string input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0313.json::objectfilter/error invalid object param type nil input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0314.json::objectfilter/error invalid key param type string input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0315.json::objectfilter/error invalid key param type boolean input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0316.json::objectfilter/error invalid key param type number input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'objectfilter/test-objectfilter-0317.json::objectfilter/error invalid key param type nil input':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anyprefixmatch.json::strings/any_prefix_match/type_error_strict':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anyprefixmatch.json::strings/any_prefix_match/type_error_strict#2':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anyprefixmatch.json::strings/any_prefix_match/type_error_strict#3':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anyprefixmatch.json::strings/any_prefix_match/type_error_strict#4':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anysuffixmatch.json::strings/any_suffix_match/type_error_strict':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anysuffixmatch.json::strings/any_suffix_match/type_error_strict#2':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anysuffixmatch.json::strings/any_suffix_match/type_error_strict#3':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-anysuffixmatch.json::strings/any_suffix_match/type_error_strict#4':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-strings-0881.json::strings/format_int: err: bad base':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-strings-0892.json::strings/substring: offset negative':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-strings-0892.json::strings/substring: offset negative unicode':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-strings-0921.json::strings/sprintf: float too big':
        'number literal 2e308 rejected at compile (out of range)',
    'strings/test-strings-0924.json::strings/reverse_number_error':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-strings-0924.json::strings/reverse_object_error':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'strings/test-strings-0926.json::strings/count_empty_string':
        'regorus panics on strings.count(s, "") (window size must be non-zero)',
    'strings/test-strings-0926.json::strings/count_empty_string_twice':
        'regorus panics on strings.count(s, "") (window size must be non-zero)',
    'strings/test-strings-0926.json::strings/count_odd_even_case':
        'strings.count result differs from OPA (counts overlapping matches)',
    'time/test-time-0947.json::time/time caching':
        'test.sleep (OPA test-only builtin) not implemented',
    'time/test-time-0948.json::time/parse_nanos_too_small':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0948.json::time/parse_nanos_too_large':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0949.json::time/parse_rfc3339_nanos_too_small':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0949.json::time/parse_rfc3339_nanos_too_large':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0955.json::time/date too big':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0959.json::time/clock too big':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0967.json::time/weekday too big':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0968.json::time/add_date too large result':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0969.json::time/add_date too small result':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'time/test-time-0971.json::time/format too big':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'every/every.json::every/with: domain':
        'Rvm compiler does not support `with`',
    'every/every.json::every/with: body':
        'Rvm compiler does not support `with`',
    'comprehensions/test-comprehensions-0796.json::comprehensions/object conflict':
        'Rvm does not raise conflict errors (multiple outputs / duplicate keys)',
    'defaultkeyword/test-default-functions.json::defaultkeyword/function with var arg':
        'Rvm leaks the "<undefined>" marker into values (default functions)',
    'defaultkeyword/test-default-functions.json::defaultkeyword/function with var arg, ref head':
        'Rvm leaks the "<undefined>" marker into values (default functions)',
    'defaultkeyword/test-default-functions.json::defaultkeyword/function with var arg, ref head query':
        'Rvm: default function values / skipped packages differ from OPA',
    'defaultkeyword/test-defaultkeyword-0807.json::defaultkeyword/array comprehension':
        'Rvm: default rule with a comprehension value gives an empty collection',
    'defaultkeyword/test-defaultkeyword-0808.json::defaultkeyword/object comprehension':
        'Rvm: default rule with a comprehension value gives an empty collection',
    'defaultkeyword/test-defaultkeyword-0809.json::defaultkeyword/set comprehension':
        'Rvm: default rule with a comprehension value gives an empty collection',
    'elsekeyword/test-elsekeyword-1065.json::elsekeyword/conflict-1':
        'Rvm does not raise conflict errors (multiple outputs / duplicate keys)',
    'elsekeyword/test-elsekeyword-1066.json::elsekeyword/conflict-2':
        'Rvm does not raise conflict errors (multiple outputs / duplicate keys)',
    'functions/test-functions-1010.json::functions/skip-functions':
        'Rvm: default function values / skipped packages differ from OPA',
    'functions/test-functions-default.json::functions/default':
        'Rvm: default function values / skipped packages differ from OPA',
    'functions/test-functions-default.json::functions/only default':
        'function defined only by `default f(_)` is unknown to the Rvm compiler',
    'functions/test-functions-default.json::functions/comprehensions':
        'Rvm leaks the "<undefined>" marker into values (default functions)',
    'functions/test-functions-nested-with-early-exit.json::functions/nested complete doc with conflict':
        'Rvm does not raise conflict errors (multiple outputs / duplicate keys)',
    'functions/test-functions-nested-with-early-exit.json::functions/nested complete doc with conflict, else':
        'Rvm does not raise conflict errors (multiple outputs / duplicate keys)',
    'functions/test-functions-nested-with-early-exit.json::functions/nested function with conflict':
        'Rvm does not raise conflict errors (multiple outputs / duplicate keys)',
    'functions/test-functions-nested-with-early-exit.json::functions/nested function with conflict, else':
        'Rvm does not raise conflict errors (multiple outputs / duplicate keys)',
    'partialobjectdoc/test-partialobjectdoc-ref.json::partialobjectdoc/ref':
        'Rvm compiler: partial object ref p[y][x] inside the same package unsupported',
    'partialobjectdoc/test-wasm-cases.json::wasm/additive':
        'Rvm compiler: partial object rules with constant keys unsupported',
    'partialobjectdoc/test-wasm-cases.json::wasm/additive (negative)':
        'Rvm compiler: partial object rules with constant keys unsupported',
    'partialobjectdoc/test-wasm-cases.json::wasm/input':
        'Rvm compiler: partial object rules with constant keys unsupported',
    'partialobjectdoc/test-wasm-cases.json::wasm/input (negative)':
        'Rvm compiler: partial object rules with constant keys unsupported',
    'partialobjectdoc/test-wasm-cases.json::wasm/object dereference':
        'Rvm compiler: partial object rules with constant keys unsupported',
    'partialobjectdoc/test-wasm-cases.json::wasm/object dereference (negative)':
        'Rvm compiler: partial object rules with constant keys unsupported',
    'netcidrcontains/test-netcidrcontains-0100.json::netcidrcontains/cidr subnet overlap malformed cidr a':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'netcidrcontains/test-netcidrcontains-0101.json::netcidrcontains/cidr subnet overlap malformed cidr b':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'jsonbuiltins/test-is-valid.json::jsonbuiltins/json is_valid not string':
        'json/yaml.is_valid on a non-string is undefined (OPA: false)',
    'jsonbuiltins/test-is-valid.json::jsonbuiltins/yaml is_valid not string':
        'json/yaml.is_valid on a non-string is undefined (OPA: false)',
    'jsonbuiltins/test-json-marshal-with-options.json::jsonbuiltins/marshal_with_options-invalid-key':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'jsonbuiltins/test-jsonbuiltins-0926.json::jsonbuiltins/unmarshal-non-string':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'jsonbuiltins/test-jsonbuiltins-0928.json::jsonbuiltins/yaml unmarshal error':
        'yaml.unmarshal accepts input OPA rejects as invalid YAML',
    'units/test-parse-bytes-errors.json::units_parse_bytes/failure':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-bytes-errors.json::units_parse_bytes/failure#2':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-bytes-errors.json::units_parse_bytes/failure#3':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-bytes-errors.json::units_parse_bytes/failure#4':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-bytes-errors.json::units_parse_bytes/failure#5':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-bytes-errors.json::units_parse_bytes/failure#6':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-bytes-errors.json::units_parse_bytes/failure#7':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-units-errors.json::units_parse/failure':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-units-errors.json::units_parse/failure#2':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-units-errors.json::units_parse/failure#3':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-units-errors.json::units_parse/failure#4':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-units-errors.json::units_parse/failure#5':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-units-errors.json::units_parse/failure#6':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
    'units/test-parse-units-errors.json::units_parse/failure#7':
        'Rvm: builtin/type errors evaluate to undefined instead of raising',
}


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    spec: dict[str, Any]


def _load_cases() -> list[Case]:
    cases: list[Case] = []
    root = VECTORS / "v1"
    if not root.is_dir():
        return cases
    for category, folders in CATEGORIES.items():
        for folder in folders:
            for file in sorted((root / folder).glob("*.json")):
                doc = json.loads(file.read_text(encoding="utf-8"))
                seen: Counter[str] = Counter()
                for spec in doc.get("cases", []):
                    base = f"{folder}/{file.name}::{spec['note']}"
                    seen[base] += 1
                    case_id = base if seen[base] == 1 else f"{base}#{seen[base]}"
                    cases.append(Case(case_id, category, spec))
    return cases


CASES = _load_cases()

_BINDING = re.compile(r"=\s*([A-Za-z_]\w*)\s*$")


def _query_vars(spec: dict[str, Any]) -> list[str]:
    want = spec.get("want_result")
    if want:
        return sorted({k for binding in want for k in binding})
    names: set[str] = set()
    for part in re.split(r"[;\n]", spec["query"]):
        match = _BINDING.search(part.strip())
        if match:
            names.add(match.group(1))
    return sorted(names)


def _wrapper(spec: dict[str, Any]) -> str:
    names = _query_vars(spec)
    binding = "{" + ", ".join(f'"{n}": {n}' for n in names) + "}"
    query = spec["query"].strip()
    return f"package {WRAPPER_PACKAGE}\n\nresults contains {binding} if {{\n{query}\n}}\n"


def _norm(value: Any, as_set: bool = False) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_norm(v) for v in value]
        if as_set:
            items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return items
    return value


def _canonical_bindings(bindings: list[Any], sort_values: bool) -> list[str]:
    out = []
    for binding in bindings:
        if isinstance(binding, dict):
            binding = {k: _norm(v, as_set=sort_values) for k, v in binding.items()}
        out.append(json.dumps(_norm(binding), sort_keys=True))
    return sorted(out)


def _input_json(spec: dict[str, Any]) -> str | None:
    if "input_term" in spec:
        try:
            return json.dumps(json.loads(spec["input_term"]))
        except json.JSONDecodeError:
            return None
    return json.dumps(spec.get("input"))


class Outcome:
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


def run_case(spec: dict[str, Any]) -> tuple[str, str]:
    """(outcome, detail) for one case."""
    if _QUERY_SKIP.search(spec["query"]):
        return Outcome.SKIP, "needs the wall clock (time.now_ns)"
    input_json = _input_json(spec)
    if input_json is None:
        return Outcome.SKIP, "input_term is not JSON (Rvm input is JSON only)"
    modules = [(f"mod{i}.rego", src) for i, src in enumerate(spec.get("modules") or [])]
    modules.append(("query.rego", _wrapper(spec)))
    data_json = json.dumps(spec.get("data") or {})
    expect_error = bool(spec.get("want_error") or spec.get("want_error_code"))
    try:
        program = RvmProgram(modules, data_json, ENTRYPOINT)
        raw = program.execute(input_json)
    except RuntimeError as exc:
        text = str(exc).split("\n\nStack backtrace:", 1)[0].strip()
        if expect_error:
            return Outcome.PASS, text
        return Outcome.FAIL, f"unexpected error: {text}"
    if expect_error:
        return Outcome.FAIL, f"expected error {spec.get('want_error_code')!r} {spec.get('want_error')!r}, got {raw}"
    result = json.loads(raw)
    got: list[Any] = [] if result == UNDEFINED else result
    if not isinstance(got, list):
        return Outcome.FAIL, f"unexpected result shape: {raw}"
    want = spec.get("want_result") or []
    sort_values = bool(spec.get("sort_bindings"))
    if _canonical_bindings(got, sort_values) == _canonical_bindings(want, sort_values):
        return Outcome.PASS, ""
    return Outcome.FAIL, f"want {json.dumps(want)[:300]}, got {json.dumps(got)[:300]}"


def _params() -> list[Any]:
    params = []
    for case in CASES:
        marks = []
        if case.id in KNOWN_DIFFERENCES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[case.id]))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.skipif(not CASES, reason=f"OPA conformance vectors not found at {VECTORS} (set PORTCULLIS_VECTORS)")
@pytest.mark.parametrize("case", _params())
def test_opa_case(case: Case) -> None:
    outcome, detail = run_case(case.spec)
    if outcome == Outcome.SKIP:
        pytest.skip(detail)
    assert outcome == Outcome.PASS, detail


def test_known_differences_are_real_case_ids() -> None:
    if not CASES:
        pytest.skip(f"OPA conformance vectors not found at {VECTORS}")
    ids = {case.id for case in CASES}
    assert not set(KNOWN_DIFFERENCES) - ids


def summary() -> list[dict[str, Any]]:
    rows = []
    for category in CATEGORIES:
        counts: Counter[str] = Counter()
        for case in CASES:
            if case.category != category:
                continue
            outcome, _ = run_case(case.spec)
            if outcome == Outcome.SKIP:
                counts["skipped"] += 1
                continue
            counts["run"] += 1
            if outcome == Outcome.PASS:
                counts["xpass" if case.id in KNOWN_DIFFERENCES else "passed"] += 1
            else:
                counts["xfail" if case.id in KNOWN_DIFFERENCES else "failed"] += 1
        rows.append({"category": category, **counts})
    return rows


def main(argv: list[str]) -> int:
    if not CASES:
        print(f"no vectors at {VECTORS}", file=sys.stderr)
        return 1
    if "--failures" in argv:
        for case in CASES:
            outcome, detail = run_case(case.spec)
            if outcome == Outcome.FAIL:
                print(f"{case.id}\t{detail[:200]!r}")
        return 0
    print("| category | cases run | passed | xfail (known differences) | skipped | pass rate |")
    print("|---|---:|---:|---:|---:|---:|")
    total: Counter[str] = Counter()
    for row in summary():
        run, passed = row.get("run", 0), row.get("passed", 0)
        total.update({k: v for k, v in row.items() if k != "category"})
        rate = f"{100 * passed / run:.1f}%" if run else "n/a"
        extra = f" (+{row['failed']} unexpected failures)" if row.get("failed") else ""
        print(f"| {row['category']} | {run} | {passed} | {row.get('xfail', 0)}{extra} "
              f"| {row.get('skipped', 0)} | {rate} |")
    rate = f"{100 * total['passed'] / total['run']:.1f}%" if total["run"] else "n/a"
    print(f"| **total** | {total['run']} | {total['passed']} | {total['xfail']} | {total['skipped']} | {rate} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(sys.argv[1:]))
