"""The embedded engine loads only the input members a bundle names (gateway.policy.input.input_shape).

The projection must never change a decision: every test here either pins what the scanner
finds in Rego source, or compares the projected evaluation with the full document's.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.input import input_shape, project, projector
from gateway.policy.invariants import base_input, malformed_inputs, sample_inputs
from gateway.policy.rego import RegoPolicy, read_bundle

BUNDLE = Path(__file__).resolve().parent.parent / "policies"


def _shape(source: str) -> Any:
    return input_shape([("p.rego", "package gateway\n\nimport rego.v1\n\n" + source)])


def test_members_named_by_path_are_loaded() -> None:
    assert _shape("decision := 1 if input.order.qty > 0\n") == {"order": {"qty": None}}


def test_a_member_used_as_a_value_is_loaded_whole() -> None:
    assert _shape("decision := q if {\n\tq := input.position\n\tinput.position.qty > 0\n}\n") == {
        "position": None}


def test_a_type_test_keeps_only_the_type_and_named_members() -> None:
    shape = _shape("decision := 1 if {\n\tis_object(input.order)\n\tinput.order.side == \"buy\"\n}\n")
    assert shape == {"order": {"side": None}}
    assert project({"order": {"side": "buy", "qty": 1}}, shape) == {"order": {"side": "buy"}}
    assert project({"order": "not an object"}, shape) == {"order": "not an object"}


def test_a_shadowed_type_test_is_not_trusted() -> None:
    source = "is_object(x) := x\n\ndecision := 1 if is_object(input.order)\n"
    assert _shape(source) == {"order": None}


def test_indexing_or_iterating_loads_the_whole_member() -> None:
    assert _shape('decision := 1 if input.order["qty"] > 0\n') == {"order": None}
    assert _shape("decision := 1 if {\n\tsome k, _ in input.order\n\tk == \"qty\"\n}\n") == {"order": None}


@pytest.mark.parametrize("source", [
    'decision := object.get(input, "order", null)\n',
    "decision := input\n",
    'decision := 1 if input["order"]\n',
    "import input.order\n\ndecision := order.qty\n",
    'decision := $"{input.order.qty}"\n',
])
def test_reading_the_input_itself_loads_everything(source: str) -> None:
    assert _shape(source) is None


def test_comments_and_strings_do_not_count() -> None:
    source = '# input.device.id is never read\ndecision := "input.risk" if input.request.tier == "read"\n'
    assert _shape(source) == {"request": {"tier": None}}


def test_the_bundle_reads_no_gateway_only_member() -> None:
    modules, _ = read_bundle(BUNDLE, include_tests=False)
    shape = input_shape(modules)
    assert shape is not None
    for member in ("device", "network"):  # the risk engine's summary stands for them
        assert member not in shape
    assert shape["risk"] == {"level": None, "factors": None}  # never the score's arithmetic
    assert shape["request"] == {"tier": None, "account": None, "query_accounts": None}
    assert shape["order"] is not None and "client_order_id" not in shape["order"]


def _mutations(doc: dict[str, Any], rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Copies of `doc` with members dropped, nulled or replaced by values of other types."""
    values: list[Any] = [None, 0, -1, 1.5, "x", "", True, False, [], {}, [1], {"a": 1}]
    out = []
    paths = [(k,) for k in doc] + [(k, m) for k, v in doc.items() if isinstance(v, dict) for m in v]
    for _ in range(n):
        d = copy.deepcopy(doc)
        for path in rng.sample(paths, rng.randint(1, 3)):
            node = d
            for key in path[:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                continue
            if rng.random() < 0.2:
                node.pop(path[-1], None)
            else:
                node[path[-1]] = rng.choice(values)
        out.append(d)
    return out


def test_compiled_projector_equals_project() -> None:
    modules, _ = read_bundle(BUNDLE, include_tests=False)
    shape = input_shape(modules)
    fast = projector(shape)
    rng = random.Random(7)
    docs: list[Any] = [{}, None, [], "x", base_input()] + _mutations(base_input(), rng, 300)
    for doc in docs:
        assert fast(doc) == project(doc, shape)


def test_projection_never_changes_a_decision() -> None:
    policy = RegoPolicy.from_directory(BUNDLE)
    rng = random.Random(11)
    docs = [doc for _, doc in sample_inputs() + malformed_inputs()]
    for route in ("order_place", "order_cancel", "transfer", "positions"):
        docs += _mutations(base_input(route), rng, 60)
    for doc in docs:
        full = policy._execute_text(policy.input_text(doc))  # every member, as before the projection
        assert policy._execute(doc) == full


def test_a_null_parent_keeps_the_projection_on_its_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """input.cancel is null on every request but a cancel: the compiled projector must not fall
    back to the generic walk for it (that fallback cost every order ~6 us)."""
    import gateway.policy.input as input_module

    calls: list[int] = []
    real = input_module.project
    monkeypatch.setattr(input_module, "project", lambda v, s: calls.append(1) or real(v, s))
    fast = input_module.projector({"cancel": {"status": {}, "symbol": None}, "request": {"tier": None}})
    usual = {"cancel": None, "request": {"tier": "trade", "x": 1}}
    assert fast(usual) == {"cancel": None, "request": {"tier": "trade"}}
    cancel = {"status": "open", "symbol": "600519.SH", "side": "buy"}
    assert fast({"cancel": cancel, "request": {"tier": "trade"}}) == {
        "cancel": {"status": "open", "symbol": "600519.SH"}, "request": {"tier": "trade"}}
    assert calls == []
    assert fast({"request": {"tier": "trade"}}) == {"request": {"tier": "trade"}}  # a member missing: the walk
    assert calls
