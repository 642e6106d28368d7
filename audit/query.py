"""Search the audit trail: filters, cursor pagination, CSV and JSON export (the file store).

Records come in the trail's own order: chain by chain (chain ids sort by the
start of their process), then by ``seq``. A page ends with a cursor
(``<chain>:<seq>`` of its last record) that the next page starts after, so
pages stay stable while new records are appended. The chain's own records
(``chain_start``, ``checkpoint``) are left out unless ``type`` asks for them.

Scanning reads every segment from the first one the cursor allows: fine for a
file store of one machine; the PostgreSQL store (issue 7) indexes the same
filters.

CSV cells that a spreadsheet would run as a formula (starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return) are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from audit.sink import read_records, segment_files

__all__ = ["COLUMNS", "MAX_LIMIT", "Filter", "FilterError", "Page", "parse_cursor", "search", "to_csv", "to_json"]

MAX_LIMIT = 1000
COLUMNS = ("time", "type", "request_id", "sub", "account", "route", "method", "path", "decision", "reasons",
           "risk_score", "risk_level", "policy_version", "client_ip", "device_id", "status", "code", "action",
           "chain", "seq")
_CURSOR = re.compile(r"(?P<chain>\d{8}T\d{6}Z-[0-9a-f]{8}):(?P<seq>\d{1,18})")
_CHAIN_TYPES = frozenset({"chain_start", "checkpoint"})
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A ``request_id`` filter: what the gateway's request ids are made of."""


class FilterError(ValueError):
    """A filter or cursor that cannot be used (the message names it)."""


def _time(value: str | float | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{name}: not a time (ISO 8601, e.g. 2026-12-03T09:30:00Z, or epoch seconds)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Filter:
    sub: str | None = None
    account: str | None = None
    since: float | None = None
    until: float | None = None
    decision: str | None = None
    reason: str | None = None
    """A reason code among the decision's ``reasons``, or a refusal's ``code``."""
    route: str | None = None
    type: str | None = None
    request_id: str | None = None
    """One request's records, matched exactly (1-128 characters of ``A-Za-z0-9._:-``)."""

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Filter:
        """From query parameters or command-line options (``from``/``since``, ``to``/``until``)."""
        def text(name: str) -> str | None:
            value = params.get(name)
            if value is None or value == "":
                return None
            if not isinstance(value, str) or len(value) > 256:
                raise FilterError(f"{name}: at most 256 characters")
            return value
        since = _time(params.get("from", params.get("since")), "from")
        until = _time(params.get("to", params.get("until")), "to")
        if since is not None and until is not None and until < since:
            raise FilterError("to: before from")
        request_id = text("request_id")
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            raise FilterError("request_id: 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'")
        return cls(sub=text("sub"), account=text("account"), since=since, until=until,
                   decision=text("decision"), reason=text("reason"), route=text("route"), type=text("type"),
                   request_id=request_id)

    def matches(self, r: Mapping[str, Any]) -> bool:
        kind = r.get("type")
        if self.type is not None:
            if kind != self.type:
                return False
        elif kind in _CHAIN_TYPES:
            return False
        if self.request_id is not None and r.get("request_id") != self.request_id:
            return False
        if self.sub is not None and r.get("sub") != self.sub:
            return False
        if self.account is not None and r.get("account") != self.account:
            return False
        if self.route is not None and r.get("route") != self.route:
            return False
        if self.decision is not None and r.get("decision") != self.decision:
            return False
        if self.reason is not None:
            reasons = r.get("reasons")
            if r.get("code") != self.reason and not (isinstance(reasons, list) and self.reason in reasons):
                return False
        t = r.get("time")
        if self.since is not None or self.until is not None:
            if not isinstance(t, (int, float)):
                return False
            if self.since is not None and t < self.since:
                return False
            if self.until is not None and t > self.until:
                return False
        return True

    def public(self) -> dict[str, Any]:
        """What was asked, for the query's own audit record."""
        return {k: v for k, v in (("sub", self.sub), ("account", self.account), ("from", self.since),
                                  ("to", self.until), ("decision", self.decision), ("reason", self.reason),
                                  ("route", self.route), ("type", self.type),
                                  ("request_id", self.request_id)) if v is not None}


@dataclass(frozen=True, slots=True)
class Page:
    records: list[dict[str, Any]]
    cursor: str | None
    """Pass it back as ``cursor`` for the next page; None: this was the last one."""
    scanned: int


def _records(directory: Path, after: tuple[str, int] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    for chain, files in segment_files(directory).items():
        if after is not None and chain < after[0]:
            continue
        for doc in read_records(files):
            if after is not None and chain == after[0] and int(doc.get("seq", -1)) <= after[1]:
                continue
            yield chain, doc


def parse_cursor(cursor: str) -> tuple[str, int]:
    """``(chain, seq)`` of a cursor a page gave out; FilterError otherwise."""
    m = _CURSOR.fullmatch(cursor)
    if m is None:
        raise FilterError("cursor: not one this API gave out")
    return m["chain"], int(m["seq"])


def search(directory: Path, flt: Filter, *, limit: int = 100, cursor: str | None = None,
           max_scanned: int | None = None) -> Page:
    """A page of the records ``flt`` matches, from ``cursor`` on.

    ``max_scanned`` bounds the work: once that many records are read and more remain, the page ends
    there, possibly short or empty, with a cursor to go on from (the last record read)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit: 1 to {MAX_LIMIT}")
    after = parse_cursor(cursor) if cursor else None
    out: list[dict[str, Any]] = []
    scanned = 0
    position: str | None = None
    for chain, doc in _records(directory, after):
        if max_scanned is not None and scanned >= max_scanned and position is not None:  # one more exists
            return Page(out, position, scanned)
        scanned += 1
        if flt.matches(doc):
            if len(out) == limit:  # one more exists: this page ends at the last one kept
                last = out[-1]
                return Page(out, f"{last['chain']}:{last['seq']}", scanned)
            out.append(doc)
        if max_scanned is not None and isinstance(seq := doc.get("seq"), int) and 0 <= seq < 10**18:
            position = f"{chain}:{seq}"
    return Page(out, None, scanned)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = ";".join(str(v) for v in value)
    elif isinstance(value, float) and value > 1e9:  # epoch seconds
        value = datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(records: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for r in records:
        w.writerow([_cell(r.get(c)) for c in COLUMNS])
    return buf.getvalue()


def to_json(page: Page) -> bytes:
    return orjson.dumps({"records": page.records, "cursor": page.cursor, "count": len(page.records)},
                        default=str)
