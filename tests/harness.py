"""A real stack on loopback for integration tests: demo backend + gateway.

Both run in the test's event loop on ephemeral ports (port 0), with demo keys
made fresh in the test's tmp folder. Tests talk to them over real sockets.
"""

from __future__ import annotations

import copy
import gc
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from demo_backend.app import create_app
from gateway.config import RouteConfig, parse
from gateway.demo_keys import DEMO_AUDIENCE, DEMO_ISSUER, DemoKeys, ensure_demo_keys, mint_token
from gateway.server import Gateway
from gateway.state.base import Batch, StateStore

ROUTES: list[dict[str, Any]] = [
    {"name": "quotes", "methods": ["GET"], "path": "/api/quotes/{symbol}", "upstream": "trading",
     "tier": "read", "fail_mode": "open"},
    {"name": "quotes_stream", "methods": ["GET"], "path": "/api/quotes/stream",
     "upstream": "trading", "tier": "read", "websocket": True},
    {"name": "account", "methods": ["GET"], "path": "/api/accounts/{account}",
     "upstream": "trading", "tier": "read", "account_param": "account"},
    {"name": "positions", "methods": ["GET"], "path": "/api/accounts/{account}/positions",
     "upstream": "trading", "tier": "read", "account_param": "account",
     "account_query": "account"},
    {"name": "orders_list", "methods": ["GET"], "path": "/api/accounts/{account}/orders",
     "upstream": "trading", "tier": "read", "account_param": "account"},
    {"name": "order_place", "methods": ["POST"], "path": "/api/accounts/{account}/orders",
     "upstream": "trading", "tier": "trade", "account_param": "account", "body_limit": "16KiB"},
    {"name": "order_cancel", "methods": ["DELETE"],
     "path": "/api/accounts/{account}/orders/{order_id}", "upstream": "trading", "tier": "trade",
     "account_param": "account"},
    {"name": "transfer", "methods": ["POST"], "path": "/api/accounts/{account}/transfers",
     "upstream": "trading", "tier": "transfer", "account_param": "account", "body_limit": "8KiB"},
    {"name": "echo", "methods": ["GET", "POST", "PUT"], "path": "/__debug/echo",
     "upstream": "trading", "tier": "read", "fail_mode": "open", "account_query": "account",
     "body_limit": "4KiB"},
    {"name": "echo_public", "methods": ["GET"], "path": "/__debug/echo/public",
     "upstream": "trading", "tier": "public"},
    {"name": "slow", "methods": ["GET"], "path": "/__debug/slow", "upstream": "trading",
     "tier": "read", "read_timeout": 1},
]


BODY_KINDS = {"order_place": "order", "order_cancel": "cancel", "transfer": "transfer"}


def route_config(**fields: Any) -> RouteConfig:
    """One route parsed by the real config loader (upstream ``t``), for tests of pure steps."""
    cfg = parse({"gateway": {"security": False}, "upstreams": {"t": {"url": "http://x"}},
                 "routes": [{"upstream": "t", **fields}]}, Path("."))
    return cfg.routes[0]


def routes_with_body_kinds() -> list[dict[str, Any]]:
    """ROUTES with ``body_kind`` on the order, cancel and transfer routes (policy input v1)."""
    routes = copy.deepcopy(ROUTES)
    for r in routes:
        if r["name"] in BODY_KINDS:
            r["body_kind"] = BODY_KINDS[r["name"]]
    return routes


def gateway_config(keys: DemoKeys, tmp: Path, backend_url: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "gateway": {"name": "test", "access_log": False, "shutdown_timeout": 5},
        "listeners": {"public": {"host": "127.0.0.1", "port": 0},
                      "admin": {"host": "127.0.0.1", "port": 0}},
        "network": {"trusted_proxies": ["10.9.9.0/24"]},
        "issuers": [{"iss": DEMO_ISSUER, "audience": [DEMO_AUDIENCE],
                     "jwks_file": str(keys.issuer_jwks), "algorithms": ["ES256"]}],
        "identity": {"signing_key": str(keys.identity_key)},
        "upstreams": {"trading": {"url": backend_url, "connect_timeout": 1, "read_timeout": 5}},
        "routes": copy.deepcopy(ROUTES),
        "state": {"backend": "memory"},
        "audit": {"path": str(tmp / "audit"), "fsync_interval_ms": 1},
        # The demo's "phone": step-up codes go to the phone on file (with [providers]).
        "step_up": {"sms_file": str(tmp / "sms.log")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@dataclass
class Stack:
    gateway: Gateway
    keys: DemoKeys
    backend_url: str
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.public_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.admin_port}"

    def token(self, sub: str = "alice", accounts: Sequence[str] = ("A1",),
              roles: Sequence[str] = ("client",), **kw: Any) -> str:
        return mint_token(self.keys, sub=sub, accounts=accounts, roles=roles, **kw)

    def auth(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kw)}"}


@asynccontextmanager
async def run_backend(keys: DemoKeys, *, internal_token: str | None = None, payload_key_file: Path | None = None,
                      require_sealed: Sequence[str] = ()) -> AsyncIterator[str]:
    """The demo backend on loopback; ``internal_token`` also serves its /internal fact routes,
    ``payload_key_file`` opens bodies the gateway sealed (``require_sealed``: routes refusing plaintext)."""
    runner = web.AppRunner(create_app(keys.identity_jwks, identity_hmac_key=keys.identity_hmac,
                                      debug_routes=True, stream_interval=0.05,
                                      internal_token=internal_token, payload_key_file=payload_key_file,
                                      require_sealed=require_sealed))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def run_stack(tmp: Path, *, backend_url: str | None = None, gateway_kwargs: dict[str, Any] | None = None,
                    internal_token: str | None = None, **overrides: Any) -> AsyncIterator[Stack]:
    """Backend + gateway. With ``internal_token`` the backend requires it (and serves
    /internal) and the gateway gets a ``[providers]`` section using it (unless overridden)."""
    keys = ensure_demo_keys(tmp / "keys")
    if internal_token is not None:
        overrides.setdefault("providers", {"upstream": "trading", "internal_token": internal_token})
    if backend_url is None:
        async with run_backend(keys, internal_token=internal_token) as url:
            async with _gateway(keys, tmp, url, gateway_kwargs or {}, overrides) as stack:
                yield stack
    else:
        async with _gateway(keys, tmp, backend_url, gateway_kwargs or {}, overrides) as stack:
            yield stack


@asynccontextmanager
async def _gateway(keys: DemoKeys, tmp: Path, backend_url: str, gateway_kwargs: dict[str, Any],
                   overrides: dict[str, Any]) -> AsyncIterator[Stack]:
    cfg = parse(gateway_config(keys, tmp, backend_url, **overrides), tmp)
    gw = Gateway(cfg, **gateway_kwargs)
    try:
        await gw.start()
    except BaseException:
        await gw.stop()  # what started (connections) is closed
        # The gateway that failed is garbage now: collect it on this thread. The Rego engine's objects
        # refuse to be dropped on another one, which the cycle collector may otherwise pick (a worker
        # thread that happens to allocate), printing "Rvm is unsendable" warnings.
        del gw
        gc.collect()
        raise
    try:
        yield Stack(gw, keys, backend_url, tmp)
    finally:
        await gw.stop()


class BatchCountingStore:
    """The real store, counting the batches it runs (one per round trip)."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.batches = 0

    def batch(self) -> Batch:
        self.batches += 1
        return self.inner.batch()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class OffsetClock:
    """A gateway's wall clock for tests: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def audit_records(folder: Path) -> list[dict[str, Any]]:
    """Every record in the audit segment files under ``folder`` so far (a torn last line is skipped)."""
    out: list[dict[str, Any]] = []
    for f in sorted(folder.rglob("*.jsonl")):
        for line in f.read_text("utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
