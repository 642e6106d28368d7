"""The bundle's guard rules cover their groups: while a guard holds, no rule of its group can fire.

A package may write a group of its denials (or step-ups) as a set of their own
(`order_deny`, `order_step_up`, `buy_deny`) that reaches `deny` (or
`step_up`) only when a guard does not hold::

    deny contains d if {
        not order_checks_hold
        some d in order_deny
    }

The guard lists positive checks, one line each. It is sound when every rule of
the group has a condition that is the negation of one of its lines: then the
group is empty whenever the guard holds, and skipping it changes no decision.
A group rule without such a condition would be skipped on requests it should
deny (fail open), so these tests read the modules' text and refuse it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parent.parent / "policies"

_FORWARD = re.compile(r"^(\w+) contains (\w+) if \{\n((?:\t[^\n]*\n)*?)\tnot (\w+)\n\tsome \2 in (\w+)\n\}", re.M)
_IDENT = re.compile(r"[A-Za-z_]\w*")


def _bodies(source: str, head: str) -> list[list[str]]:
    """The body lines (one tab deep, comments dropped) of every definition whose first line matches `head`."""
    bodies: list[list[str]] = []
    lines = source.split("\n")
    for i, line in enumerate(lines):
        if re.match(head, line) and line.endswith("{"):
            body: list[str] = []
            for inner in lines[i + 1:]:
                if inner == "}":
                    break
                if inner.startswith("\t") and not inner.startswith("\t\t"):
                    text = inner.strip().split(" #", 1)[0].strip()
                    if text and not text.startswith("#"):
                        body.append(text)
            bodies.append(body)
    return bodies


def _negates(line: str, guard: set[str]) -> bool:
    """Whether `line` cannot hold while every line of `guard` holds, judged on the text alone."""
    if line.startswith("not ") and line[4:] in guard:
        return True
    if f"not {line}" in guard:
        return True
    # A boolean member: `x == false` in the guard excludes `x == true` and `not is_boolean(x)`.
    for pattern in (r"^(.+) == true$", r"^not is_boolean\((.+)\)$"):
        m = re.match(pattern, line)
        if m and f"{m.group(1)} == false" in guard:
            return True
    return False


def _implies(line: str, scope: str, source: str, depth: int = 3) -> bool:
    """Whether a body line implies a scope line: the same text, or a rule every definition of which implies it."""
    if line == scope:
        return True
    if depth == 0 or not re.fullmatch(r"\w+", line):
        return False
    definitions = _bodies(source, rf"^{line} if \{{")
    return bool(definitions) and all(any(_implies(inner, scope, source, depth - 1) for inner in body)
                                     for body in definitions)


def guard_problems(source: str) -> list[str]:
    """What makes a module's guards unsound (empty when every guarded rule is covered)."""
    problems: list[str] = []
    for _, _, scope_text, guard_name, group in _FORWARD.findall(source):
        # Conditions before `not guard` only narrow the group when every rule of it implies them.
        scopes = [line.strip().split(" #", 1)[0].strip() for line in scope_text.splitlines() if line.strip()]
        guards = _bodies(source, rf"^{guard_name} if \{{")
        if len(guards) != 1 or re.search(rf"^(default )?{guard_name}\b(?! if \{{)", source, re.M):
            problems.append(f"{guard_name}: a guard must have exactly one definition, `{guard_name} if {{...}}`")
            continue
        guard = set(guards[0])
        for line in guard:
            if re.search(r":=|(?<![=!<>])=(?!=)|^some |^every ", line):
                problems.append(f"{guard_name}: `{line}` binds a variable; guard lines must be closed checks")
        definitions = _bodies(source, rf"^{group} contains ")
        if not definitions:
            problems.append(f"{group}: guarded by {guard_name} but has no definition")
        for body in definitions:
            assigned = {m.group(1) for line in body if (m := re.match(r"^(\w+) :?=", line))}
            covered = [line for line in body
                       if _negates(line, guard) and not assigned & set(_IDENT.findall(line))]
            if not covered:
                problems.append(f"{group}: a definition with the body {body} has no condition that "
                                f"negates a line of {guard_name}")
            for scope in scopes:
                if not any(_implies(line, scope, source) for line in body):
                    problems.append(f"{group}: a definition with the body {body} does not imply `{scope}`, "
                                    "which the rule collecting the group requires")
    return problems


MODULES = sorted(p for p in BUNDLE.glob("*.rego") if not p.name.endswith("_test.rego"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_every_guarded_rule_negates_a_line_of_its_guard(module: Path) -> None:
    assert guard_problems(module.read_text(encoding="utf-8")) == []


def test_the_bundle_has_guarded_groups() -> None:
    # If the groups are renamed the test above would pass vacuously: it must find them.
    groups = {m[-1] for p in MODULES for m in _FORWARD.findall(p.read_text(encoding="utf-8"))}
    assert {"order_deny", "order_step_up", "buy_deny"} <= groups


GUARDED = """package p

check_ok if input.x == 1

order_checks_hold if {
\tcheck_ok
\tinput.flag == false
}

deny contains d if {
\tnot order_checks_hold
\tsome d in order_deny
}

order_deny contains "a" if {
\tnot check_ok
}

order_deny contains "b" if {
\tinput.flag == true
}

order_deny contains "c" if {
\tnot is_boolean(input.flag)
}
"""


def test_a_covered_group_passes() -> None:
    assert guard_problems(GUARDED) == []


def test_a_rule_whose_check_is_missing_from_the_guard_is_refused() -> None:
    source = GUARDED + '\norder_deny contains "d" if {\n\tinput.y == 2\n}\n'
    assert len(guard_problems(source)) == 1


def test_a_guard_line_removed_is_refused() -> None:
    assert len(guard_problems(GUARDED.replace("\tinput.flag == false\n", ""))) == 2


def test_a_second_guard_definition_is_refused() -> None:
    assert guard_problems(GUARDED + "\norder_checks_hold if input.z\n") != []


def test_a_scope_every_rule_implies_passes() -> None:
    source = GUARDED.replace("\tnot order_checks_hold\n", "\tin_scope\n\tnot order_checks_hold\n")
    source = source.replace("order_deny contains \"a\" if {\n", "order_deny contains \"a\" if {\n\tin_scope\n")
    source = source.replace("order_deny contains \"b\" if {\n", "order_deny contains \"b\" if {\n\tscoped\n")
    source += "\nscoped if {\n\tin_scope\n}\n"
    assert len(guard_problems(source)) == 1  # "c" does not imply in_scope
    source = source.replace("order_deny contains \"c\" if {\n", "order_deny contains \"c\" if {\n\tscoped\n")
    assert guard_problems(source) == []


def test_a_negation_of_a_local_does_not_count() -> None:
    source = GUARDED + '\norder_deny contains "d" if {\n\tcheck_ok := input.y\n\tnot check_ok\n}\n'
    assert len(guard_problems(source)) == 1
