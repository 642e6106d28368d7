"""The audit trail in the console: search, one record, whether the chain verifies, CSV export
(docs/CONSOLE.md).

The same search and verification as ``/admin/audit`` (gateway/admin_audit.py ``audited_search``,
``audited_verify``): every search, every record opened and every export is itself audited, write-ahead,
before the page is shown. A record opens by its place in the trail (``chain`` and ``seq``: the search's
cursor one before it). Sealed personal data is shown as "encrypted": the console never opens it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from audit.query import COLUMNS, MAX_LIMIT, Page, to_csv
from gateway.admin_audit import audited_search, audited_verify
from gateway.console.app import CONSOLE_KEY, officer_session, when
from gateway.crypto.fields import is_sealed
from gateway.errors import BAD_REQUEST, GatewayError

PAGE_SIZE = 50
FILTERS = ("sub", "account", "from", "to", "decision", "reason", "route", "type")
DECISIONS = (("", "Any"), ("allow", "Allowed"), ("deny", "Denied"), ("step_up", "Step-up asked"))
_CHAIN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
_SEQ = re.compile(r"[1-9]\d{0,17}")
SEALED = "encrypted"
NAMES = {"time": "Time", "type": "Record type", "request_id": "Request id", "sub": "Customer", "account": "Account",
         "route": "Route", "tier": "Route tier", "method": "HTTP method", "path": "Path", "decision": "Decision",
         "reasons": "Reasons", "code": "Refusal code", "status": "HTTP status", "risk_score": "Risk score",
         "risk_level": "Risk level", "risk_factors": "Risk factors", "policy_version": "Policy version",
         "obligations": "Obligations", "client_ip": "Client IP address", "device_id": "Device id",
         "action": "Action", "input": "Policy input", "input_sm3": "Policy input digest (SM3)",
         "chain": "Chain", "seq": "Place in chain", "prev": "Previous record's digest", "degraded": "Degraded checks"}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    text: str
    label: str
    sealed: bool = False
    block: bool = False
    """Shown as preformatted text (a nested document)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One record in the results table (a missing field is empty, a sealed one says so)."""
    time: float | None
    type: str
    action: str
    sub: str
    account: str
    route: str
    decision: str
    reasons: list[str]
    risk: str
    link: str | None


def _cell(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    return SEALED if is_sealed(value) else str(value)


def row(record: Mapping[str, Any]) -> Row:
    t = record.get("time")
    reasons = record.get("reasons")
    codes = [str(r) for r in reasons] if isinstance(reasons, list) else []
    if record.get("code") is not None:
        codes.append(_cell(record, "code"))
    return Row(time=float(t) if isinstance(t, (int, float)) else None, type=_cell(record, "type"),
               action=_cell(record, "action"), sub=_cell(record, "sub"), account=_cell(record, "account"),
               route=_cell(record, "route"), decision=_cell(record, "decision"), reasons=codes,
               risk=_cell(record, "risk_score"), link=record_link(record))


def _unsealed(value: Any) -> Any:
    """``value`` with every sealed part replaced by the word the page shows."""
    if is_sealed(value):
        return f"({SEALED})"
    if isinstance(value, dict):
        return {k: _unsealed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsealed(v) for v in value]
    return value


def readable(record: Mapping[str, Any]) -> list[Field]:
    """Every field of a record as officers read it: the usual columns first, then the rest by name."""
    names = [c for c in COLUMNS if c in record] + sorted(k for k in record if k not in COLUMNS)
    out: list[Field] = []
    for name in names:
        value = record[name]
        label = NAMES.get(name, name.replace("_", " ").capitalize())
        if is_sealed(value):
            out.append(Field(name, label=label, text=SEALED, sealed=True))
        elif name == "time" and isinstance(value, (int, float)):
            out.append(Field(name, label=label, text=f"{when(value)} ({value})"))
        elif value is None:
            out.append(Field(name, label=label, text="(none)"))
        elif isinstance(value, bool):
            out.append(Field(name, label=label, text="yes" if value else "no"))
        elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            out.append(Field(name, label=label, text=", ".join(str(v) for v in value) if value else "(none)"))
        elif isinstance(value, (dict, list)):
            text = orjson.dumps(_unsealed(value), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)
            out.append(Field(name, label=label, text=text.decode(), block=True))
        else:
            out.append(Field(name, label=label, text=str(value)))
    return out


def _params(query: Mapping[str, str]) -> dict[str, str]:
    """The search's filters as sent (empty ones dropped), for the form, the links and the export."""
    return {k: query[k] for k in FILTERS if query.get(k)}


def record_link(record: Mapping[str, Any]) -> str | None:
    chain, seq = record.get("chain"), record.get("seq")
    if not isinstance(chain, str) or not _CHAIN.fullmatch(chain) or not isinstance(seq, int) or seq < 1:
        return None
    kind = record.get("type")
    tail = "?" + urlencode({"type": kind}) if kind in ("chain_start", "checkpoint") else ""
    return f"/console/audit/records/{chain}/{seq}{tail}"


async def audit_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    params = _params(request.query)
    searched = "search" in request.query or bool(params)
    page: Page | None = None
    error: str | None = None
    cursor = request.query.get("cursor") or None
    if searched:
        query = {**params, "limit": str(PAGE_SIZE), **({"cursor": cursor} if cursor else {})}
        try:
            _, page = await audited_search(console.gw, officer_session(request).sub, query, output="console",
                                           via="console")
        except GatewayError as exc:
            if exc.code != BAD_REQUEST.code:
                raise
            error = f"That search cannot be run: {exc.message}."
    base = {**params, "search": "1"}
    return console.render(
        request, "audit.html", active="audit", params=params, decisions=DECISIONS, searched=searched, page=page,
        error=error, status=400 if error else 200, page_size=PAGE_SIZE, cursor=cursor, max_export=MAX_LIMIT,
        routes=sorted(r.name for r in console.gw.config.routes), rows=[row(r) for r in page.records] if page else [],
        first_link="/console/audit?" + urlencode(base),
        next_link=("/console/audit?" + urlencode({**base, "cursor": page.cursor})) if page and page.cursor else None,
        export_link="/console/audit/export.csv?" + urlencode({**params, **({"cursor": cursor} if cursor else {})}))


async def export_csv(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    params = _params(request.query)
    cursor = request.query.get("cursor")
    _, page = await audited_search(console.gw, officer_session(request).sub,
                                   {**params, "limit": str(MAX_LIMIT), **({"cursor": cursor} if cursor else {})},
                                   output="csv", via="console")
    headers = {"Content-Disposition": 'attachment; filename="audit.csv"'}
    if page.cursor:
        headers["Portcullis-Next-Cursor"] = page.cursor
    return web.Response(text=to_csv(page.records), content_type="text/csv", charset="utf-8", headers=headers)


async def record_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    chain, seq = request.match_info["chain"], request.match_info["seq"]
    if not _CHAIN.fullmatch(chain) or not _SEQ.fullmatch(seq):
        raise web.HTTPNotFound()
    kind = request.query.get("type")
    query = {"cursor": f"{chain}:{int(seq) - 1}", "limit": "1", **({"type": kind} if kind else {})}
    _, page = await audited_search(console.gw, officer_session(request).sub, query, output="record", via="console")
    found = page.records[0] if page.records else None
    if found is None or found.get("chain") != chain or found.get("seq") != int(seq):
        return console.render(request, "error.html", status=404, title="No such record",
                              message=f"The audit trail has no record {seq} in chain {chain}.")
    return console.render(request, "audit_record.html", active="audit", record=found, fields=readable(found),
                          chain=chain, seq=int(seq))


async def verify_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    report = await audited_verify(console.gw, officer_session(request).sub, via="console")
    records = sum(s.records for s in report.chains.values())
    checkpoints = sum(s.checkpoints for s in report.chains.values())
    notices = [f for f in report.findings if f.severity == "notice"]
    return console.render(request, "audit_verify.html", active="audit", report=report, breaks=report.breaks,
                          first=report.breaks[0] if report.breaks else None, notices=notices, records=records,
                          checkpoints=checkpoints, chains=len(report.chains))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/audit", audit_page)
    app.router.add_get("/audit/export.csv", export_csv)
    app.router.add_get("/audit/verify", verify_page)
    app.router.add_get("/audit/records/{chain}/{seq}", record_page)
