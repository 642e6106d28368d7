"""A reference witness server a second party runs for :class:`audit.witness.HttpWitness`.

    POST /statements   a signed checkpoint statement (JSON): kept once verified, 201 (200 if already held)
    GET  /statements   ?after=N&limit=M: {"statements": [...], "next": N+M or null}, oldest first

It holds only the gateway's audit *public* keys (``portcullis audit public-key``)
and keeps a statement only if its SM2 signature verifies under one of them, so
whoever gets hold of the bearer token still cannot plant a head. It refuses a
statement that would rewrite what it holds: for one chain, a ``seq`` below the
highest it holds, or that ``seq`` with another head (409 ``conflict``): a
gateway whose store was cut and rewritten cannot make the witness forget. Kept
statements go to an append-only JSON Lines file, fsynced before the answer.

Errors are ``{"error": code, "message": text}`` like the gateway's own
(gateway/responses.py): 400 ``invalid_json``, ``invalid_statement``,
``bad_signature``; 401 ``unauthorized``; 404 ``route_not_found``; 405
``method_not_allowed``; 409 ``conflict``; 413 ``body_too_large`` (over 64 KiB).

Run it with ``portcullis audit witness-serve`` (gateway/cli_audit.py).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from audit.chain import ChainBreak, verify_statement
from audit.witness import HTTP_PAGE, append_synced
from gateway.crypto.sm2 import Sm2PublicKey

__all__ = ["MAX_BODY", "witness_app"]

MAX_BODY = 64 * 1024
"""Bytes a pushed statement may take (one is ~300)."""
KEPT = ("chain", "seq", "head", "count", "time", "key_id", "sig")
"""What is kept of a statement: what its signature covers (audit/chain.py) and the signature; anything else
a caller adds is unsigned and dropped."""
_STATUS_CODES = {404: "route_not_found", 405: "method_not_allowed", 413: "body_too_large"}


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == web.HTTPUnauthorized.status_code:
        headers["WWW-Authenticate"] = "Bearer"
    return web.Response(status=status, body=orjson.dumps({"error": code, "message": message}),
                        content_type="application/json", headers=headers)


def _json(status: int, doc: Mapping[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


class _Store:
    """The statements held, in the order taken, and what a new one is checked against."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.statements: list[dict[str, Any]] = []
        self._seen: set[tuple[str, int, str]] = set()
        self._heads: dict[str, tuple[int, str]] = {}  # chain -> (highest seq held, its head)
        self._lock = asyncio.Lock()
        self._load()

    def _load(self) -> None:
        """Read the file; cut a torn last line (a push that crashed mid-write was never acknowledged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            os.truncate(self.path, len(complete))
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            if not _well_formed(doc):
                raise ValueError(f"witness store {str(self.path)!r} line {number} is not a statement")
            self._note(doc)

    def _note(self, statement: dict[str, Any]) -> None:
        self.statements.append(statement)
        self._seen.add((statement["chain"], statement["seq"], statement["sig"]))
        held = self._heads.get(statement["chain"])
        if held is None or statement["seq"] >= held[0]:
            self._heads[statement["chain"]] = (statement["seq"], statement["head"])

    def conflict(self, statement: Mapping[str, Any]) -> str | None:
        """Why ``statement`` would rewrite what is held for its chain, if it would."""
        held = self._heads.get(statement["chain"])
        if held is None:
            return None
        seq, head = held
        if statement["seq"] < seq:
            return f"the witness holds chain {statement['chain']} up to seq {seq}: the statement goes back"
        if statement["seq"] == seq and statement["head"] != head:
            return f"the witness holds another head for chain {statement['chain']} at seq {seq}"
        return None

    def holds(self, statement: Mapping[str, Any]) -> bool:
        return (statement["chain"], statement["seq"], statement["sig"]) in self._seen

    async def add(self, statement: dict[str, Any]) -> web.Response:
        """Keep ``statement`` (already verified) unless held or conflicting; the answer says which."""
        async with self._lock:  # one append at a time, checked against what the previous one left
            if self.holds(statement):
                return _json(200, {"stored": False})
            why = self.conflict(statement)
            if why is not None:
                return _error(409, "conflict", why)
            line = orjson.dumps(statement, option=orjson.OPT_SORT_KEYS) + b"\n"
            await asyncio.to_thread(append_synced, self.path, line)
            self._note(statement)
        return _json(201, {"stored": True})


def _well_formed(doc: Any) -> bool:
    if not isinstance(doc, dict) or any(k not in doc for k in KEPT):
        return False
    seq = doc["seq"]
    return isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 \
        and all(isinstance(doc[k], str) for k in ("chain", "head", "key_id", "sig"))


def witness_app(store_path: Path, public_keys: Mapping[str, Sm2PublicKey], token: str | None) -> web.Application:
    """The witness over ``store_path`` (created if absent), keeping statements signed by ``public_keys``;
    with a ``token``, every request must carry it as a bearer token."""
    store = _Store(store_path)
    keys = dict(public_keys)
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> web.StreamResponse:
        if expected is not None and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), expected):
            return _error(401, "unauthorized", "a valid bearer token is required")
        try:
            return await handler(request)
        except web.HTTPException as exc:  # aiohttp's own (no route, method, body too large): JSON too
            if exc.status < 400:
                raise
            return _error(exc.status, _STATUS_CODES.get(exc.status, "bad_request"), exc.reason)

    async def push(request: web.Request) -> web.Response:
        body = await request.read()  # over client_max_size: 413 from aiohttp, JSON from the guard
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "invalid_json", "the body is not JSON")
        if not _well_formed(doc):
            return _error(400, "invalid_statement", f"a statement is a JSON object with {', '.join(KEPT)}")
        statement = {k: doc[k] for k in KEPT}
        try:
            verify_statement(statement, keys)
        except ChainBreak as exc:
            return _error(400, "bad_signature", str(exc))
        return await store.add(statement)

    async def statements(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", str(HTTP_PAGE)))
        except ValueError:
            return _error(400, "bad_request", "after and limit must be integers")
        if after < 0 or not 0 < limit <= HTTP_PAGE:
            return _error(400, "bad_request", f"after must be >= 0 and limit between 1 and {HTTP_PAGE}")
        page = store.statements[after:after + limit]
        more = after + len(page) < len(store.statements)
        return _json(200, {"statements": page, "next": after + len(page) if more else None})

    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard])
    app.router.add_post("/statements", push)
    app.router.add_get("/statements", statements)
    return app
