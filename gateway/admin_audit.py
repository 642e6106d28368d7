"""The audit trail on the admin listener: ``/admin/audit/records`` and ``/admin/audit/verify``.

For compliance officers only (the ``compliance`` role and a recent step-up, as
the policy and freeze admin APIs). Every search is itself audited (who, the
filters, how many records came back) before its answer leaves.

* ``GET /admin/audit/records?sub=&account=&from=&to=&decision=&reason=&route=&type=&limit=&cursor=&format=``:
  a page of records (audit/query.py), ``format=json`` (default: ``{records, cursor, count}``) or ``csv``.
* ``GET /admin/audit/verify``: the whole trail checked (audit/verify.py) with the gateway's audit public
  keys and its witness: ``{ok, chains, breaks, notices}``.

``audited_search`` and ``audited_verify`` are shared with the console's audit pages (gateway/console/audit.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from audit.postgres import PostgresAuditSink
from audit.query import Filter, FilterError, Page, search, to_csv, to_json
from audit.sink import AuditWriteError, ChainedSink
from audit.verify import Report, verify_directory
from audit.witness import WitnessError
from gateway.admin import GATEWAY_KEY, audit_first
from gateway.admin_policy import compliance_officer, json_ok
from gateway.errors import AUDIT_UNAVAILABLE, BAD_REQUEST, GatewayError

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = ["add_audit_routes", "audited_search", "audited_verify"]


async def audited_search(gw: Gateway, officer: str, params: Mapping[str, str], *, output: str,
                         via: str | None = None) -> tuple[Filter, Page]:
    """One page of the trail for ``params`` (the Filter's, ``limit``, ``cursor``), audited write-ahead.

    The admin API and the console share it: the query's own record (who, the filters, how many came
    back) is durable before the page is returned. 400 bad_request for a filter or cursor that cannot
    be used, 503 audit_unavailable when the store cannot be read or the record not written."""
    cursor = params.get("cursor") or None
    try:
        flt = Filter.parse(params)
        limit = int(params.get("limit", "100"))
        if isinstance(gw.trail, PostgresAuditSink):
            page = await gw.trail.search(flt, limit=limit, cursor=cursor)
        else:
            page = await asyncio.to_thread(search, gw.config.audit.path, flt, limit=limit, cursor=cursor)
    except (FilterError, ValueError) as exc:
        raise GatewayError(BAD_REQUEST, str(exc)) from None
    except AuditWriteError as exc:
        raise GatewayError(AUDIT_UNAVAILABLE, str(exc)) from None
    await audit_first(gw, {"type": "admin", "time": time.time(), "sub": officer, "action": "audit_query",
                            "filters": flt.public(), "format": output, "count": len(page.records),
                            "cursor": cursor, **({"via": via} if via is not None else {})})
    return flt, page


async def audited_verify(gw: Gateway, officer: str, *, via: str | None = None) -> Report:
    """The whole trail checked with the gateway's audit public keys and its witness; the check audited."""
    trail = gw.trail
    keys = trail.keys if isinstance(trail, ChainedSink) else None
    if keys is None:
        raise GatewayError(BAD_REQUEST, "this gateway's audit trail has no signing key to verify against")
    witness = trail.witness if isinstance(trail, ChainedSink) else None
    try:
        statements = await witness.statements() if witness is not None else None
    except WitnessError as exc:
        raise GatewayError(AUDIT_UNAVAILABLE, str(exc)) from None
    if isinstance(trail, PostgresAuditSink):
        report = await trail.verify(keys.public_keys(), statements)
    else:
        report = await asyncio.to_thread(verify_directory, gw.config.audit.path, keys.public_keys(), statements)
    gw.audit.enqueue({"type": "admin", "time": time.time(), "sub": officer, "action": "audit_verify",
                      "ok": report.ok, "breaks": len(report.breaks), **({"via": via} if via is not None else {})})
    return report


async def search_records(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY_KEY]
    officer = await compliance_officer(request, "audit API")
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise GatewayError(BAD_REQUEST, "format: json or csv")
    _, page = await audited_search(gw, officer.sub, request.query, output=fmt)
    if fmt == "csv":
        return web.Response(text=to_csv(page.records), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": 'attachment; filename="audit.csv"',
                                     "Cache-Control": "no-store",
                                     **({"Portcullis-Next-Cursor": page.cursor} if page.cursor else {})})
    return web.Response(body=to_json(page), content_type="application/json", headers={"Cache-Control": "no-store"})


async def verify_trail(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    officer = await compliance_officer(request, "audit API")
    report = await audited_verify(gw, officer.sub)
    return json_ok({
        "ok": report.ok, "witnessed": report.witnessed,
        "chains": {c: {"records": s.records, "checkpoints": s.checkpoints, "closed": s.closed, "broken": s.broken}
                   for c, s in report.chains.items()},
        "breaks": [{"chain": f.chain, "where": f.where, "seq": f.seq, "problem": f.problem} for f in report.breaks],
        "notices": [{"chain": f.chain, "where": f.where, "seq": f.seq, "problem": f.problem}
                    for f in report.findings if f.severity == "notice"]})


def add_audit_routes(app: web.Application) -> None:
    app.router.add_get("/admin/audit/records", search_records)
    app.router.add_get("/admin/audit/verify", verify_trail)
