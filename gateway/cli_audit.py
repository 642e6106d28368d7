"""``portcullis audit verify|query|public-key``: the audit trail (audit/) from the command line.

    portcullis audit verify [--config FILE]                       # [audit] path, witness, signing key
    portcullis audit verify --dir DIR --public-keys FILE [--witness FILE] [--json]
    portcullis audit query [--config FILE] [--sub S] [--account A] [--from T] [--to T] [--decision D]
                           [--reason CODE] [--route R] [--type T] [--request-id ID] [--limit N] [--cursor C]
                           [--format json|csv]
    portcullis audit public-key [--config FILE]                   # what a verifier is handed
    portcullis audit witness-serve --store FILE --keys PUBLIC_KEYS [--host H] [--port P] [--cert PEM --key PEM]

A query is itself audited (who ran it, the filters, how many records) in the
same trail before its results are printed: it needs the gateway's
configuration, for its audit key and witness.

Exit status: 0 when every chain verifies (notices are printed, they are not
breaks), 1 on any break, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


@dataclass(frozen=True, slots=True)
class _Trail:
    """What ``verify`` checks, from the flags or the configuration (read once)."""

    directory: Path
    witness: Any
    keys: Any
    archive: Path | None
    postgres: tuple[str, str] | None
    """``(dsn, schema)`` when the configuration keeps the trail in PostgreSQL."""


def _trail(args: argparse.Namespace) -> _Trail:
    from audit.keys import AuditKeys, load_public_keys
    from audit.witness import FileWitness
    from gateway.config import load
    from gateway.server import build_witness

    archive = Path(args.archive) if args.archive else None
    if args.dir is not None:
        if args.public_keys is None:
            raise SystemExit("portcullis audit verify: --dir needs --public-keys (the audit public keys)")
        given = FileWitness(Path(args.witness)) if args.witness else None
        return _Trail(Path(args.dir), given, load_public_keys(Path(args.public_keys)), archive, None)
    cfg = load(args.config).audit
    if cfg.signing_key_file is None:
        raise SystemExit(f"portcullis audit: {args.config} sets no [audit] signing_key_file: each process drew "
                         f"its own key, which nobody can verify against")
    keys = (load_public_keys(Path(args.public_keys)) if args.public_keys
            else AuditKeys.from_file(cfg.signing_key_file).public_keys())
    witness = FileWitness(Path(args.witness)) if args.witness else build_witness(cfg)
    postgres = (cfg.postgres_dsn, cfg.postgres_schema) if cfg.sink == "postgres" and cfg.postgres_dsn else None
    return _Trail(cfg.path, witness, keys, archive or cfg.archive_path, postgres)


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncio

    from audit.keys import AuditKeyError
    from audit.verify import verify_directory
    from audit.witness import FileWitness, WitnessError

    try:
        trail = _trail(args)
        if isinstance(trail.witness, FileWitness):
            statements: Any = trail.witness.read()
        else:
            statements = asyncio.run(trail.witness.statements()) if trail.witness is not None else None
    except (AuditKeyError, WitnessError) as exc:
        print(f"portcullis audit verify: {exc}", file=sys.stderr)
        return 2
    if trail.postgres is not None:
        from audit.postgres import verify_postgres

        report = asyncio.run(verify_postgres(*trail.postgres, trail.keys, statements))
    elif not trail.directory.is_dir():
        print(f"portcullis audit verify: {trail.directory} is not a directory", file=sys.stderr)
        return 2
    else:
        report = verify_directory(trail.directory, trail.keys, statements, archive=trail.archive)
    if args.json:
        print(json.dumps({
            "ok": report.ok, "witnessed": report.witnessed,
            "chains": {c: {"records": s.records, "files": s.files, "checkpoints": s.checkpoints,
                           "closed": s.closed, "broken": s.broken} for c, s in report.chains.items()},
            "findings": [{"severity": f.severity, "chain": f.chain, "where": f.where, "seq": f.seq,
                          "problem": f.problem} for f in report.findings]}, indent=1))
    else:
        for chain, s in report.chains.items():
            state = "BROKEN" if s.broken else ("closed" if s.closed else "open")
            print(f"chain {chain}: {s.records} records in {s.files} files, {s.checkpoints} checkpoints, {state}")
        for finding in report.findings:
            print(finding)
        witnessed = f"{report.witnessed} witnessed checkpoints checked" if statements is not None else "no witness"
        print(("OK: " if report.ok else "BROKEN: ") + f"{len(report.chains)} chains, {witnessed}")
    return 0 if report.ok else 1


def cmd_public_key(args: argparse.Namespace) -> int:
    from audit.keys import AuditKeyError, AuditKeys, public_keys_json
    from gateway.config import load

    cfg = load(args.config).audit
    if cfg.signing_key_file is None:
        print(f"portcullis audit public-key: {args.config} sets no [audit] signing_key_file", file=sys.stderr)
        return 2
    try:
        print(public_keys_json(AuditKeys.from_file(cfg.signing_key_file).public_keys()))
    except AuditKeyError as exc:
        print(f"portcullis audit public-key: {exc}", file=sys.stderr)
        return 2
    return 0


WITNESS_PORT = 8443
WITNESS_TOKEN_ENV = "PORTCULLIS_WITNESS_TOKEN"
"""Where ``witness-serve`` reads the bearer token from (never a flag: the process list shows flags)."""


def cmd_witness_serve(args: argparse.Namespace) -> int:
    """Run the reference witness (audit/witness_server.py) for a gateway whose public keys are ``--keys``."""
    import ssl

    from aiohttp import web

    from audit.keys import AuditKeyError, load_public_keys
    from audit.witness import is_loopback
    from audit.witness_server import witness_app

    if (args.cert is None) != (args.key is None):
        print("portcullis audit witness-serve: --cert and --key go together", file=sys.stderr)
        return 2
    if args.cert is None and not is_loopback(args.host):
        print("portcullis audit witness-serve: without --cert/--key it listens on loopback only", file=sys.stderr)
        return 2
    try:
        app = witness_app(Path(args.store), load_public_keys(Path(args.keys)),
                          os.environ.get(WITNESS_TOKEN_ENV) or None)
    except (AuditKeyError, OSError, ValueError) as exc:
        print(f"portcullis audit witness-serve: {exc}", file=sys.stderr)
        return 2
    tls = None
    if args.cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(args.cert, args.key)
    web.run_app(app, host=args.host, port=args.port, ssl_context=tls, print=None)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from audit.query import Filter, FilterError, search, to_csv, to_json
    from gateway.config import load

    cfg = load(args.config).audit
    try:
        flt = Filter.parse({"sub": args.sub, "account": args.account, "from": args.since, "to": args.until,
                            "decision": args.decision, "reason": args.reason, "route": args.route,
                            "type": args.type, "request_id": args.request_id})
        if cfg.sink == "postgres" and cfg.postgres_dsn:
            page = asyncio.run(_search_postgres(cfg.postgres_dsn, cfg.postgres_schema, flt, args.limit, args.cursor))
        else:
            page = search(cfg.path, flt, limit=args.limit, cursor=args.cursor)
    except FilterError as exc:
        print(f"portcullis audit query: {exc}", file=sys.stderr)
        return 2

    # Write-ahead: the query is in the trail before its answer is shown.
    record_in_trail(cfg, {"type": "admin", "time": time.time(), "sub": args.officer, "action": "audit_query",
                          "via": "cli", "filters": flt.public(), "format": args.format, "count": len(page.records),
                          "cursor": args.cursor})
    if args.format == "csv":
        sys.stdout.write(to_csv(page.records))
    else:
        sys.stdout.write(to_json(page).decode() + "\n")
    if page.cursor:
        print(f"more: --cursor {page.cursor}", file=sys.stderr)
    return 0


async def _search_postgres(dsn: str, schema: str, flt: Any, limit: int, cursor: str | None) -> Any:
    import asyncpg

    from audit.postgres import search_postgres

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await search_postgres(conn, schema, flt, limit=limit, cursor=cursor)
    finally:
        await conn.close()


def record_in_trail(cfg: Any, record: dict[str, Any]) -> None:
    """Write one record into the trail ``cfg`` ([audit]) describes, durably, in a chain of its own."""
    import asyncio

    from audit.sink import AuditWriteError
    from gateway.server import build_audit_sink

    async def write() -> None:
        sink = build_audit_sink(cfg)
        await sink.start()
        try:
            await sink.write(record)
        finally:
            await sink.close()

    try:
        asyncio.run(write())
    except AuditWriteError as exc:  # nothing is shown or moved that the trail does not hold first
        raise SystemExit(f"portcullis audit: the audit trail did not take the record ({exc}); "
                         "nothing was done") from None


def cmd_retain(args: argparse.Namespace) -> int:
    """Archive or delete chains past their retention, on the record (audit/retention.py; PostgreSQL:
    audit/postgres.py, into its archive table)."""
    import asyncio
    import time

    from audit.retention import apply, plan, record
    from audit.sink import AuditWriteError
    from gateway.config import load

    cfg = load(args.config).audit
    postgres = (cfg.postgres_dsn, cfg.postgres_schema) if cfg.sink == "postgres" and cfg.postgres_dsn else None
    if postgres is not None:
        import asyncpg

        from audit.postgres import apply_postgres, plan_postgres

        try:
            plans = asyncio.run(plan_postgres(*postgres, now=time.time(), retention_days=cfg.retention_days,
                                              archive_years=cfg.archive_years))
        except (OSError, TimeoutError, AuditWriteError, asyncpg.PostgresError) as exc:
            print(f"portcullis audit retain: the audit database: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    else:
        plans = plan(cfg.path, now=time.time(), retention_days=cfg.retention_days, archive=cfg.archive_path,
                     archive_years=cfg.archive_years)
    for p in plans:
        where = " (archived)" if p.archived else ""
        files = f"{len(p.files)} files, " if p.files else ""
        print(f"{p.action:<8} chain {p.chain}{where}: {files}{p.last_seq + 1} records, newest record "
              f"{time.strftime('%Y-%m-%d', time.gmtime(p.newest))}")
    if not plans:
        print("nothing is past its retention")
        return 0
    if args.dry_run:
        return 0

    record_in_trail(cfg, record(plans, by=args.officer, retention_days=cfg.retention_days))  # before anything moves
    if postgres is not None:
        try:
            asyncio.run(apply_postgres(*postgres, plans))
        except (OSError, TimeoutError, AuditWriteError) as exc:
            print(f"portcullis audit retain: {exc}; the chains before it were done, run it again for the rest",
                  file=sys.stderr)
            return 1
    else:
        apply(plans, cfg.archive_path)
    print(f"done: {sum(p.action == 'archive' for p in plans)} chains archived, "
          f"{sum(p.action == 'delete' for p in plans)} deleted")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], example_config: Path) -> None:
    a = sub.add_parser("audit", help="the tamper-evident audit trail: verify it, print its public keys")
    a_sub = a.add_subparsers(dest="audit_command", required=True)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=os.environ.get("PORTCULLIS_CONFIG", str(example_config)),
                        help="the gateway's TOML configuration: its [audit] path, witness and signing key")
    v = a_sub.add_parser("verify", parents=[config],
                         help="check every chain, checkpoint signature and the witness; name the first bad record")
    v.add_argument("--dir", help="the audit directory (instead of the config's [audit] path)")
    v.add_argument("--public-keys", help="the audit public keys (`portcullis audit public-key` output, or the "
                                         "key file itself)")
    v.add_argument("--witness", help="the witness file (instead of the config's)")
    v.add_argument("--archive", help="the archive directory of retained chains (instead of the config's)")
    v.add_argument("--json", action="store_true", help="a JSON report instead of text")
    v.set_defaults(func=cmd_verify)
    q = a_sub.add_parser("query", parents=[config], help="search the trail (the search is audited too)")
    for name in ("sub", "account", "decision", "reason", "route", "type"):
        q.add_argument(f"--{name}")
    q.add_argument("--request-id", help="one request's records (the id its response carried), matched exactly")
    q.add_argument("--from", dest="since", help="ISO 8601 time or epoch seconds")
    q.add_argument("--to", dest="until", help="ISO 8601 time or epoch seconds")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--cursor", help="the cursor a previous page printed")
    q.add_argument("--format", choices=("json", "csv"), default="json")
    q.add_argument("--officer", default=os.environ.get("USER") or "unknown",
                   help="who is asking (recorded; default $USER)")
    q.set_defaults(func=cmd_query)
    r = a_sub.add_parser("retain", parents=[config],
                         help="archive (money) or delete (the rest) chains past [audit] retention_days, on the record")
    r.add_argument("--dry-run", action="store_true", help="print what would happen, touch nothing")
    r.add_argument("--officer", default=os.environ.get("USER") or "unknown", help="who runs it (recorded)")
    r.set_defaults(func=cmd_retain)
    k = a_sub.add_parser("public-key", parents=[config], help="the audit public keys, for verifiers")
    k.set_defaults(func=cmd_public_key)
    w = a_sub.add_parser("witness-serve", help="run a witness for a gateway's checkpoints (the second party's "
                                              f"side of [audit] witness = \"https\"; bearer token from "
                                              f"${WITNESS_TOKEN_ENV} if set)")
    w.add_argument("--store", required=True, help="the append-only JSON Lines file of statements kept")
    w.add_argument("--keys", required=True, help="the gateway's audit public keys (`portcullis audit public-key`)")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=WITNESS_PORT)
    w.add_argument("--cert", help="the server's TLS certificate chain (PEM); required off loopback")
    w.add_argument("--key", help="its private key (PEM)")
    w.set_defaults(func=cmd_witness_serve)
