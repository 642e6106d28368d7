"""Searching the audit trail: filters, stable cursor pages, CSV export that a spreadsheet cannot run, the
admin API for compliance officers (itself audited) and `portcullis audit query`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from audit.keys import AuditKeys
from audit.query import Filter, FilterError, search, to_csv
from audit.sink import FileAuditSink
from gateway.demo_keys import mint_token
from tests.harness import audit_records, gateway_config, run_stack
from tests.test_cli import _write_toml

ROOT = Path(__file__).resolve().parents[1]
MFA = "urn:portcullis:acr:mfa"
T0 = 1_796_000_000.0


def _decision(i: int, **kw: Any) -> dict[str, Any]:
    return {"type": "decision", "time": T0 + i, "request_id": f"r{i}", "sub": "alice", "account": "A1",
            "route": "order_place", "decision": "allow", "reasons": [], **kw}


async def _trail(folder: Path) -> None:
    sink = FileAuditSink(folder, fsync_interval=0.0, keys=AuditKeys.generate(), checkpoint_every=4)
    await sink.start()
    for i in range(10):
        await sink.write(_decision(i))
    await sink.write(_decision(10, sub="bob", account="B9", decision="deny", reasons=["market_closed"]))
    await sink.write(_decision(11, route="quote", decision="deny", reasons=["rate_limited"]))
    await sink.write({"type": "denial", "time": T0 + 12, "request_id": "r12", "sub": "mallory",
                      "code": "envelope_replayed", "route": "order_place"})
    await sink.close()


async def test_filters_each_narrow_the_search(tmp_path: Path) -> None:
    await _trail(tmp_path)

    def ids(**params: Any) -> list[str]:
        return [r["request_id"] for r in search(tmp_path, Filter.parse(params), limit=100).records]

    assert ids() == [f"r{i}" for i in range(13)]  # the chain's own records are left out
    assert ids(sub="bob") == ["r10"] and ids(account="B9") == ["r10"]
    assert ids(decision="deny") == ["r10", "r11"]
    assert ids(reason="market_closed") == ["r10"] and ids(reason="envelope_replayed") == ["r12"]
    assert ids(route="quote") == ["r11"]
    assert ids(type="denial") == ["r12"]
    assert ids(**{"from": T0 + 3, "to": T0 + 5}) == ["r3", "r4", "r5"]
    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert ids(**{"from": iso(T0 + 3), "to": iso(T0 + 5)}) == ["r3", "r4", "r5"]  # ISO 8601 works as well
    assert search(tmp_path, Filter(type="checkpoint"), limit=100).records  # asked for: given
    for bad in ({"from": "yesterday"}, {"from": T0 + 5, "to": T0}, {"sub": "x" * 300}):
        with pytest.raises(FilterError):
            Filter.parse(bad)
    with pytest.raises(FilterError):
        search(tmp_path, Filter(), cursor="nonsense")


async def test_the_request_id_filter_finds_one_requests_records_exactly(tmp_path: Path) -> None:
    await _trail(tmp_path)
    sink = FileAuditSink(tmp_path, fsync_interval=0.0, keys=AuditKeys.generate(), checkpoint_every=4)
    await sink.start()  # another chain: the request's refusal, and ids that only look alike
    await sink.write({"type": "denial", "time": T0 + 20, "request_id": "r1", "sub": "alice", "code": "rate_limited"})
    for rid in ("r1x", "R1", "xr1", "r10:1"):
        await sink.write(_decision(21, request_id=rid))
    await sink.close()

    def found(rid: str, **params: Any) -> list[tuple[str, str]]:
        page = search(tmp_path, Filter.parse({"request_id": rid, **params}), limit=100)
        return [(r["request_id"], r["type"]) for r in page.records]

    assert sorted(found("r1")) == [("r1", "decision"), ("r1", "denial")]  # both of its records, both chains
    assert found("r1", type="denial") == [("r1", "denial")]
    assert found("r10:1") == [("r10:1", "decision")] and found("r10") == [("r10", "decision")]
    assert found("no-such.request_1") == []
    assert Filter.parse({"request_id": "r1"}).public() == {"request_id": "r1"}  # the audited search names it
    assert Filter.parse({"request_id": ""}).request_id is None  # empty: no filter
    for bad in ("r 1", "r1\n", "r/1", "r1'--", "r%31", "é", "r" * 129, ["r1"]):
        with pytest.raises(FilterError, match="request_id"):
            Filter.parse({"request_id": bad})
    assert Filter.parse({"request_id": "A.b_c:d-9" + "x" * 119}).request_id  # 128 characters of the set
    # A bound on the work: the page ends after `max_scanned` records, with a cursor to go on from.
    bounded = search(tmp_path, Filter(request_id="r11"), limit=100, max_scanned=5)
    assert bounded.records == [] and bounded.scanned == 5 and bounded.cursor
    rest = search(tmp_path, Filter(request_id="r11"), limit=100, cursor=bounded.cursor)
    assert [r["request_id"] for r in rest.records] == ["r11"] and rest.cursor is None
    assert search(tmp_path, Filter(request_id="r11"), limit=100, max_scanned=10_000).cursor is None


async def test_pages_follow_the_cursor_and_stay_stable_while_records_are_appended(tmp_path: Path) -> None:
    await _trail(tmp_path)
    first = search(tmp_path, Filter(), limit=5)
    assert [r["request_id"] for r in first.records] == ["r0", "r1", "r2", "r3", "r4"] and first.cursor
    await _trail(tmp_path)  # another process's chain arrives meanwhile (it sorts after this one)
    second = search(tmp_path, Filter(), limit=5, cursor=first.cursor)
    assert [r["request_id"] for r in second.records] == ["r5", "r6", "r7", "r8", "r9"]
    seen, cursor = [], None
    while True:
        page = search(tmp_path, Filter(decision="deny"), limit=1, cursor=cursor)
        seen += [r["request_id"] for r in page.records]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == ["r10", "r11", "r10", "r11"]  # both chains, each record once


def test_csv_cells_cannot_run_as_formulas() -> None:
    text = to_csv([{"time": T0, "request_id": "=HYPERLINK(\"http://evil\")", "sub": "+1", "reasons": ["a", "b"],
                    "path": "-2+3", "route": "@SUM(A1)", "account": "A1"}])
    [header, row] = list(csv.reader(io.StringIO(text)))
    cells = dict(zip(header, row, strict=True))
    assert cells["request_id"].startswith("'=") and cells["sub"] == "'+1" and cells["path"] == "'-2+3"
    assert cells["route"] == "'@SUM(A1)" and cells["reasons"] == "a;b" and cells["time"].endswith("Z")


# -- the admin API -----------------------------------------------------------------------------------


async def test_compliance_officers_search_and_verify_and_each_search_is_audited(tmp_path: Path) -> None:
    audit = {"signing_key_file": str(tmp_path / "audit-key.json")}
    async with run_stack(tmp_path, audit=audit) as st, aiohttp.ClientSession() as http:
        async with http.get(st.url + "/api/quotes/600519.SH", headers=st.auth()) as r:
            assert r.status == 200
            rid = r.headers["X-Request-Id"]
        await asyncio.sleep(0.1)  # the read's record is queued

        def officer(**kw: Any) -> dict[str, str]:
            token = mint_token(st.keys, sub=kw.pop("sub", "carol"), accounts=(),
                               roles=kw.pop("roles", ("compliance",)), acr=kw.pop("acr", MFA), **kw)
            return {"Authorization": f"Bearer {token}"}

        url = st.admin_url + "/admin/audit/records"
        async with http.get(url, params={"sub": "alice"}, headers=officer(roles=("client",))) as r:
            assert r.status == 403 and (await r.json())["error"] == "role_forbidden"
        async with http.get(url, params={"sub": "alice", "type": "decision"}, headers=officer()) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        assert [x["request_id"] for x in page["records"]] == [rid]
        async with http.get(url, params={"request_id": rid}, headers=officer()) as r:
            assert r.status == 200, await r.text()
            one = await r.json()
        assert [(x["request_id"], x["type"]) for x in one["records"]] == [(rid, "decision"), (rid, "outcome")]
        async with http.get(url, params={"request_id": "not an id"}, headers=officer()) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_request"
        async with http.get(url, params={"sub": "alice", "format": "csv"}, headers=officer()) as r:
            assert r.status == 200 and r.content_type == "text/csv"
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert any(row["request_id"] == rid for row in rows)
        async with http.get(url, params={"from": "not a time"}, headers=officer()) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_request"
        async with http.get(st.admin_url + "/admin/audit/verify", headers=officer()) as r:
            assert r.status == 200
            verified = await r.json()
    assert verified["ok"] is True and verified["breaks"] == []
    queries = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "audit_query"]
    assert [q["sub"] for q in queries] == ["carol", "carol", "carol"] and queries[0]["filters"]["sub"] == "alice"
    assert queries[0]["count"] == 1 and queries[1]["filters"] == {"request_id": rid} and queries[1]["count"] == 2


# -- the command -------------------------------------------------------------------------------------


def test_portcullis_audit_query_prints_the_page_and_records_the_query(tmp_path: Path) -> None:
    from gateway.demo_keys import ensure_demo_keys

    asyncio.run(_trail(tmp_path / "audit"))
    config = tmp_path / "gw.toml"
    data = gateway_config(ensure_demo_keys(tmp_path / "keys"), tmp_path, "http://127.0.0.1:9",
                          audit={"signing_key_file": str(tmp_path / "audit-key.json")})
    _write_toml(config, data)

    def query(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "audit", "query", "--config", str(config),
                               "--officer", "dave", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)

    out = query("--decision", "deny")
    assert out.returncode == 0, out.stderr
    assert [r["request_id"] for r in json.loads(out.stdout)["records"]] == ["r10", "r11"]
    paged = query("--limit", "2")
    assert paged.returncode == 0 and "more: --cursor" in paged.stderr
    one = query("--request-id", "r10")
    assert one.returncode == 0, one.stderr
    assert [r["request_id"] for r in json.loads(one.stdout)["records"]] == ["r10"]
    assert query("--from", "whenever").returncode == 2
    assert query("--request-id", "r 10").returncode == 2
    recorded = [r for r in audit_records(tmp_path / "audit") if r.get("action") == "audit_query"]
    # Each run writes its own chain (runs within one second may sort either way).
    assert sorted((r["sub"], r["via"], r["count"]) for r in recorded) == [("dave", "cli", 1), ("dave", "cli", 2),
                                                                          ("dave", "cli", 2)]
    assert [r["count"] for r in recorded if r["filters"] == {"request_id": "r10"}] == [1]
