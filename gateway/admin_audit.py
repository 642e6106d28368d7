"""The audit trail on the admin listener: ``/admin/audit/records`` and ``/admin/audit/verify``.

For compliance officers only (the ``compliance`` role and a recent step-up, as
the policy and freeze admin APIs). Every search is itself audited (who, the
filters, how many records came back) before its answer leaves.

* ``GET /admin/audit/records?sub=&account=&from=&to=&decision=&reason=&route=&type=&limit=&cursor=&format=``:
  a page of records (audit/query.py), ``format=json`` (default: ``{records, cursor, count}``) or ``csv``.
* ``GET /admin/audit/verify``: the whole trail checked (audit/verify.py) with the gateway's audit public
  keys and its witness: ``{ok, chains, breaks, notices}``.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from audit.postgres import PostgresAuditSink
from audit.query import Filter, FilterError, search, to_csv, to_json
from audit.sink import AuditWriteError, ChainedSink
from audit.verify import verify_directory
from audit.witness import WitnessError
from gateway.admin import GATEWAY_KEY, _audit_first
from gateway.admin_policy import compliance_officer, json_ok
from gateway.errors import AUDIT_UNAVAILABLE, BAD_REQUEST, GatewayError

__all__ = ["add_audit_routes"]


async def search_records(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY_KEY]
    officer = await compliance_officer(request, "audit API")
    q = request.query
    fmt = q.get("format", "json")
    try:
        flt = Filter.parse(q)
        limit = int(q.get("limit", "100"))
        if fmt not in ("json", "csv"):
            raise FilterError("format: json or csv")
        if isinstance(gw.trail, PostgresAuditSink):
            page = await gw.trail.search(flt, limit=limit, cursor=q.get("cursor"))
        else:
            page = await asyncio.to_thread(search, gw.config.audit.path, flt, limit=limit, cursor=q.get("cursor"))
    except (FilterError, ValueError) as exc:
        raise GatewayError(BAD_REQUEST, str(exc)) from None
    except AuditWriteError as exc:
        raise GatewayError(AUDIT_UNAVAILABLE, str(exc)) from None
    await _audit_first(gw, {"type": "admin", "time": time.time(), "sub": officer.sub, "action": "audit_query",
                            "filters": flt.public(), "format": fmt, "count": len(page.records),
                            "cursor": q.get("cursor")})
    if fmt == "csv":
        return web.Response(text=to_csv(page.records), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": 'attachment; filename="audit.csv"',
                                     "Cache-Control": "no-store",
                                     **({"Portcullis-Next-Cursor": page.cursor} if page.cursor else {})})
    return web.Response(body=to_json(page), content_type="application/json", headers={"Cache-Control": "no-store"})


async def verify_trail(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    officer = await compliance_officer(request, "audit API")
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
    gw.audit.enqueue({"type": "admin", "time": time.time(), "sub": officer.sub, "action": "audit_verify",
                      "ok": report.ok, "breaks": len(report.breaks)})
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
