"""Masking JSON fields of a response for the ``mask_fields`` obligation (pure).

A field path (gateway/crypto/json_paths.py) names members from the document's root, separated by dots:
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

from gateway.crypto.json_paths import MAX_DEPTH, MAX_PATH_LENGTH, MAX_PATHS, FieldPath, matches, parse_paths

__all__ = ["MASK_RESPONSE_LIMIT", "MAX_DEPTH", "MAX_PATHS", "MAX_PATH_LENGTH", "MaskPath", "mask_document",
           "mask_scalar", "parse_paths"]

MaskPath = FieldPath

KEEP_LAST = 4
MIN_LENGTH_TO_KEEP = 8
MIN_DIGITS_TO_KEEP = 6
MASK_RESPONSE_LIMIT = 1024 * 1024
"""Bytes of upstream response a masked request buffers at most; a larger one fails closed."""


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


def mask_document(doc: Any, paths: Sequence[MaskPath]) -> int:
    """Mask every path in ``doc`` (a decoded JSON document, changed in place); how many values were masked."""
    total = 0
    for path in paths:  # one path after the other: a later path sees what an earlier one masked
        for container, key, _ in matches(doc, path):
            container[key], count = _mask_all(container[key])
            total += count
    return total
