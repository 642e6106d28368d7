"""Masking JSON fields of a response for the ``mask_fields`` obligation (pure).

A field path names members from the document's root, separated by dots:
``id_number``, ``bank_accounts.number``, ``holder.phone``. An array on the way
applies the rest of the path to each of its elements (``bank_accounts.number``
masks the number of every bank account; ``bank_accounts[].number`` and
``bank_accounts.*.number`` say the same explicitly), and ``*`` also matches
every member of an object. A path that matches nothing masks nothing.

A matched value that looks like a number or an identifier (at least 8
characters, at least 6 of them digits: an ID number, a phone number, a bank
account) keeps its last 4 characters: ``*******5678``. Anything else (a name,
an address, a short code) becomes ``"****"``, which hides its length too; a
number is masked as its decimal text, a boolean becomes ``"****"``, null
stays null. A matched object or array has every value inside it masked the
same way (its keys are kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MaskPath = tuple[str, ...]

KEEP_LAST = 4
MIN_LENGTH_TO_KEEP = 8
MIN_DIGITS_TO_KEEP = 6
MAX_PATHS = 64
MAX_DEPTH = 16
MAX_PATH_LENGTH = 256
MASK_RESPONSE_LIMIT = 1024 * 1024
"""Bytes of upstream response a masked request buffers at most; a larger one fails closed."""


def parse_paths(fields: Sequence[str]) -> tuple[MaskPath, ...]:
    """Field paths as tuples of segments; ValueError names the first bad one."""
    if len(fields) > MAX_PATHS:
        raise ValueError(f"more than {MAX_PATHS} fields to mask")
    paths: list[MaskPath] = []
    for field in fields:
        if not isinstance(field, str) or not field or len(field) > MAX_PATH_LENGTH:
            raise ValueError(f"field path {field!r} is empty or too long")
        segments = tuple(seg for part in field.split(".")
                         for seg in ((part[:-2], "*") if part.endswith("[]") and part != "[]" else (part,)))
        if any(not seg or seg == "[]" for seg in segments) or len(segments) > MAX_DEPTH:
            raise ValueError(f"field path {field!r} is malformed")
        paths.append(segments)
    return tuple(dict.fromkeys(paths))


def mask_scalar(value: Any) -> Any:
    """One masked value (see the module docstring); null stays null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "****"
    text = value if isinstance(value, str) else str(value)
    if len(text) >= MIN_LENGTH_TO_KEEP and sum(c.isdigit() for c in text) >= MIN_DIGITS_TO_KEEP:
        return "*" * (len(text) - KEEP_LAST) + text[-KEEP_LAST:]
    return "****"


def _mask_all(value: Any) -> tuple[Any, int]:
    if isinstance(value, dict):
        total = 0
        for key, item in value.items():
            value[key], n = _mask_all(item)
            total += n
        return value, total
    if isinstance(value, list):
        total = 0
        for index, item in enumerate(value):
            value[index], n = _mask_all(item)
            total += n
        return value, total
    return mask_scalar(value), int(value is not None)


def _apply(node: Any, path: MaskPath) -> int:
    """Mask what ``path`` names below ``node`` (in place); how many values were masked."""
    if isinstance(node, list):
        rest = path[1:] if path[0] == "*" else path
        if not rest:
            return sum(_replace(node, i) for i in range(len(node)))
        return sum(_apply(item, rest) for item in node)
    if not isinstance(node, dict):
        return 0
    head, rest = path[0], path[1:]
    keys = list(node) if head == "*" else ([head] if head in node else [])
    if not rest:
        return sum(_replace(node, k) for k in keys)
    return sum(_apply(node[k], rest) for k in keys)


def _replace(container: Any, key: Any) -> int:
    container[key], count = _mask_all(container[key])
    return count


def mask_document(doc: Any, paths: Sequence[MaskPath]) -> int:
    """Mask every path in ``doc`` (a decoded JSON document, changed in place); how many values were masked."""
    return sum(_apply(doc, path) for path in paths)
