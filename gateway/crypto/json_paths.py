"""Field paths into decoded JSON documents, shared by masking and field-level encryption (pure).

A field path names members from the document's root, separated by dots:
``id_number``, ``bank_accounts.number``, ``holder.phone``. An array on the way
applies the rest of the path to each of its elements (``bank_accounts.number``
names the number of every bank account; ``bank_accounts[].number`` and
``bank_accounts.*.number`` say the same explicitly), and ``*`` also matches
every member of an object. A path that matches nothing names nothing.

:func:`matches` yields each place a path names as ``(container, key, name)``:
``container[key]`` is the value, and ``name`` is where it is, with every
array element written as ``None`` (``("bank_accounts", None, "number")``).
The name is what field-level encryption binds a value to: it does not depend
on how the path was spelled, nor on an element's position in its array.

It lives in the leaf package ``gateway.crypto`` so that field encryption can
use it; ``gateway.masking`` imports it from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_PATHS", "MAX_PATH_LENGTH", "FieldName", "FieldPath", "matches", "parse_paths"]

FieldPath = tuple[str, ...]
FieldName = tuple[str | None, ...]

MAX_PATHS = 64
MAX_DEPTH = 16
MAX_PATH_LENGTH = 256


def parse_paths(fields: Sequence[str]) -> tuple[FieldPath, ...]:
    """Field paths as tuples of segments, duplicates dropped; ValueError names the first bad one."""
    if len(fields) > MAX_PATHS:
        raise ValueError(f"more than {MAX_PATHS} field paths")
    paths: list[FieldPath] = []
    for field in fields:
        if not isinstance(field, str) or not field or len(field) > MAX_PATH_LENGTH:
            raise ValueError(f"field path {field!r} is empty or too long")
        segments = tuple(seg for part in field.split(".")
                         for seg in ((part[:-2], "*") if part.endswith("[]") and part != "[]" else (part,)))
        if any(not seg or seg == "[]" for seg in segments) or len(segments) > MAX_DEPTH:
            raise ValueError(f"field path {field!r} is malformed")
        paths.append(segments)
    return tuple(dict.fromkeys(paths))


def matches(doc: Any, path: FieldPath) -> Iterator[tuple[Any, Any, FieldName]]:
    """Every ``(container, key, name)`` that ``path`` names in ``doc``.

    Places one path names never nest (the walk stops at a match), so a caller
    may replace ``container[key]`` while iterating.
    """
    if path:
        yield from _walk(doc, path, ())


def _walk(node: Any, path: FieldPath, name: FieldName) -> Iterator[tuple[Any, Any, FieldName]]:
    if isinstance(node, list):
        rest = path[1:] if path[0] == "*" else path
        inner = (*name, None)
        for index in range(len(node)):
            if rest:
                yield from _walk(node[index], rest, inner)
            else:
                yield node, index, inner
        return
    if not isinstance(node, dict):
        return
    head, rest = path[0], path[1:]
    keys = list(node) if head == "*" else ([head] if head in node else [])
    for key in keys:
        if rest:
            yield from _walk(node[key], rest, (*name, key))
        else:
            yield node, key, (*name, key)
