"""Builds the one policy input document (v1, docs/POLICIES.md) from the request context.

Pure: the facts step has already put provider answers and counters on
``ctx.facts``; here they are only arranged. Every member of v1 is always
present (null when it does not apply), so a policy never has to guess whether
a fact was looked up.

* ``request.query_accounts``: every account the path parameter and the query
  name (what the bind-account step checked).
* ``clock``: exchange-local (Asia/Shanghai, `zoneinfo`) from ``ctx.now``;
  ``trading_day`` from the calendar provider (null without providers).
* ``order`` / ``cancel`` / ``transfer``: chosen by the route's ``body_kind``;
  fields keep the client's JSON types, absent ones are null.
* ``body_accounts``: every ``account`` / ``account_id`` value in the JSON body.
* ``mfa.age_s``: whole seconds since the subject's ``auth_time`` (null without it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.context import RequestContext
from gateway.policy.facts import Facts, body_accounts, cancel_doc, exchange_clock, order_doc, transfer_doc
from gateway.steps.bind_account import requested_accounts

INPUT_VERSION = 1
RISK_ACK_HEADER = "X-Portcullis-Risk-Acknowledged"

_NO_FACTS = Facts()


def risk_warning_acknowledged(headers: Mapping[str, str]) -> bool:
    """The client resent the request with ``X-Portcullis-Risk-Acknowledged: true``."""
    return headers.get(RISK_ACK_HEADER, "").strip().lower() == "true"


# Each member of input v1 as one Python expression over `ctx`, `facts` (never None), `s` (the
# subject or None) and `body` (the parsed JSON body), in document order. `build_input` compiles one
# dict literal per member selection from these: a function call per member would cost a third more.
MEMBERS: dict[str, str] = {
    "request": """{
        "id": ctx.request_id, "method": ctx.method, "path": ctx.path, "route": ctx.route.name,
        "tier": ctx.route.tier, "roles": list(ctx.route.roles), "account": ctx.account,
        "params": ctx.params, "query_accounts": requested_accounts(ctx)}""",
    "subject": """None if s is None else {
        "sub": s.sub, "roles": list(s.roles), "accounts": list(s.accounts), "acr": s.acr,
        "amr": list(s.amr), "auth_time": s.auth_time}""",
    "device": """{"id": ctx.device_id, "user_agent": ctx.headers.get("User-Agent")}""",
    "network": """{"ip": ctx.client_ip}""",
    "risk": """None if ctx.risk is None else {
        "score": ctx.risk.score, "level": ctx.risk.level,
        "factors": [{"code": f.code, "points": f.points} for f in ctx.risk.factors]}""",
    "mfa": """{"acr": s.acr if s is not None else None, "age_s": mfa_age(s, ctx.now)}""",
    "clock": "exchange_clock(ctx.now, facts.trading_day)",
    "order": """order_doc(body) if ctx.route.body_kind == "order" else None""",
    "cancel": """cancel_doc(ctx.params, facts.cancelled) if ctx.route.body_kind == "cancel" else None""",
    "transfer": """transfer_doc(body) if ctx.route.body_kind == "transfer" else None""",
    "body_accounts": "body_accounts(body) if body is not None else []",
    "instrument": "facts.instrument",
    "quote": "facts.quote",
    "account": "facts.account",
    "position": "facts.position",
    "counters": "facts.counters",
    "restricted": "facts.restricted",
    "confirmation": """{"risk_warning_acknowledged": risk_warning_acknowledged(ctx.headers)}""",
}

ALL_MEMBERS: tuple[str, ...] = tuple(MEMBERS)


def mfa_age(subject: Any, now: float) -> int | None:
    """Whole seconds since the subject's ``auth_time`` (None without one)."""
    auth_time = subject.auth_time if subject is not None else None
    return max(int(now - auth_time), 0) if isinstance(auth_time, (int, float)) else None


_BUILDER_NAMES = {
    "_NO_FACTS": _NO_FACTS, "requested_accounts": requested_accounts, "mfa_age": mfa_age,
    "exchange_clock": exchange_clock, "order_doc": order_doc, "cancel_doc": cancel_doc,
    "transfer_doc": transfer_doc, "body_accounts": body_accounts,
    "risk_warning_acknowledged": risk_warning_acknowledged, "list": list, "isinstance": isinstance,
}


@functools.lru_cache(maxsize=64)
def builder(members: tuple[str, ...] | None = None) -> Callable[[RequestContext], dict[str, Any]]:
    """One function that builds the members named (None: all; unknown names are skipped)."""
    names = ALL_MEMBERS if members is None else tuple(n for n in members if n in MEMBERS)
    body = ", ".join(f"{name!r}: {MEMBERS[name]}" for name in names)
    source = (
        "def build(ctx):\n"
        "    facts = ctx.facts or _NO_FACTS\n"
        "    s = ctx.subject\n"
        "    body = ctx.json_body\n"
        f"    return {{{body}}}\n"
    )
    namespace: dict[str, Any] = dict(_BUILDER_NAMES)
    exec(compile(source, f"<policy input {'+'.join(names) or 'nothing'}>", "exec"), namespace)  # noqa: S102 - from MEMBERS only
    build: Callable[[RequestContext], dict[str, Any]] = namespace["build"]
    return build


def build_input(ctx: RequestContext, members: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The input document, or only `members` of it (an engine that reads only those names them
    in its ``input_members``). None builds every member."""
    return builder(members)(ctx)


def members_read(shape: InputShape | None) -> tuple[str, ...] | None:
    """The top-level members of input v1 a shape names, in document order (None: every member)."""
    if shape is None:
        return None
    return tuple(name for name in ALL_MEMBERS if name in shape)


# -- what the bundle reads: the members the embedded engine loads --------------

InputShape = dict[str, "InputShape | None"]
"""Which members of the input a bundle names: a member maps to None (its whole value) or to the
shape of the members named below it ({}: only its type is tested, e.g. ``is_object(input.order)``)."""

_TYPE_TESTS = ("is_object", "is_array", "is_string", "is_number", "is_boolean", "is_null", "is_set")
_TYPE_TEST = re.compile(r"\b(?:" + "|".join(_TYPE_TESTS) + r")\s*\(\s*$")
_TYPE_TEST_NAME = re.compile(r"\s*(?:default\s+)?(?:" + "|".join(_TYPE_TESTS) + r")\b")
_INPUT_REF = re.compile(r"(?<![\w.])input(?P<path>(?:\s*\.\s*[A-Za-z_]\w*)*)(?!\w)")
_IMPORT_INPUT = re.compile(r"^\s*import\s+input\b", re.MULTILINE)
_CODE_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|#[^\n]*')


def _code_only(source: str) -> str:
    """The source with comments and string literals blanked (a string may hold '#' or 'input.')."""
    return _CODE_TOKENS.sub(lambda m: " " * len(m.group()) if m.group()[0] == "#" else '""', source)


def input_shape(modules: Sequence[tuple[str, str]]) -> InputShape | None:
    """The members of the input the modules name (`input.a.b`), or None when a module may read any.

    A module reads "any member" when it names ``input`` itself (``object.get(input, k, d)``,
    ``input[k]``, ``some k, v in input``), imports it, or uses template strings (``$"..."``).
    A member named only as the argument of a type test keeps its type and only the members named
    below it; any other use of ``input.a.b`` (indexing, iterating, comparing, passing it on) keeps
    the whole value. Comments and string literals do not count.
    """
    shape: InputShape = {}
    for _, source in modules:
        if "$\"" in source or "$`" in source:
            return None
        code = _code_only(source)
        if _IMPORT_INPUT.search(code):
            return None
        type_tests_are_builtins = not _defines_type_test(code)
        for ref in _INPUT_REF.finditer(code):
            names = [n.strip() for n in ref["path"].split(".")[1:]]
            if not names:
                return None
            rest = code[ref.end():].lstrip()
            type_only = (type_tests_are_builtins and rest.startswith(")")
                         and _TYPE_TEST.search(code, max(ref.start() - 80, 0), ref.start()) is not None)
            _add_path(shape, names, whole=not type_only)
    return shape


def _defines_type_test(code: str) -> bool:
    """Whether a line outside every bracket starts with a type test's name (a rule shadowing it)."""
    depth = 0
    for line in code.splitlines():
        if depth == 0 and _TYPE_TEST_NAME.match(line):
            return True
        depth += sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
    return False


def _add_path(shape: InputShape, names: list[str], *, whole: bool) -> None:
    node: InputShape = shape
    for i, name in enumerate(names):
        last = i == len(names) - 1
        if name in node and node[name] is None:
            return  # the whole value is loaded already
        if last and whole:
            node[name] = None
            return
        child = node.setdefault(name, {})
        assert child is not None
        node = child


_MISSING = object()


def project(value: Any, shape: InputShape | None) -> Any:
    """`value` with, in each object, only the members `shape` names (types and values unchanged)."""
    if shape is None or type(value) is not dict:
        return value
    return {name: (v if sub is None or type(v) is not dict else project(v, sub))
            for name, sub in shape.items() if (v := value.get(name, _MISSING)) is not _MISSING}


def projector(shape: InputShape | None) -> Callable[[Any], Any]:
    """`project` for one shape, as a function compiled for it (the policy step runs it per request).

    The compiled function builds each object as one literal, which assumes every named member is
    present and every object read is a dict (build_input's documents); on any other input it falls
    back to `project`. The source is made of member names only (Rego identifiers, quoted by repr).
    """
    if shape is None:
        return _identity
    lines: list[str] = []
    counter = iter(range(1_000_000))

    def literal(var: str, node: InputShape) -> str:
        members = []
        for name, sub in node.items():
            if sub is None:
                members.append(f"{name!r}: {var}[{name!r}]")
            else:
                child = f"v{next(counter)}"
                # Below the root, the parent may be null (input.cancel on an order): look down only
                # into a dict, or every such request would fall back to the slow `project`.
                guard = "" if var == "doc" else f" if type({var}) is dict else None"
                lines.append(f"        {child} = {var}[{name!r}]{guard}")
                members.append(f"{name!r}: ({literal(child, sub)} if type({child}) is dict else {child})")
        return "{" + ", ".join(members) + "}"

    body = literal("doc", shape)
    source = "\n".join([
        "def fast(doc):",
        "    if type(doc) is not dict:",
        "        return doc",
        "    try:",
        *lines,
        f"        return {body}",
        "    except (KeyError, TypeError):  # a member missing, or not an object where one is read",
        "        return project(doc, shape)",
        "",
    ])
    namespace: dict[str, Any] = {"project": project, "shape": shape, "dict": dict, "type": type}
    exec(compile(source, "<input projector>", "exec"), namespace)  # noqa: S102 - built from member names above
    fast: Callable[[Any], Any] = namespace["fast"]
    return fast


def _identity(value: Any) -> Any:
    return value
