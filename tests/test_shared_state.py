"""Two gateway processes' worth of state through real Redis: a revocation on one holds on both."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import jwt
from harness import run_backend, run_stack

from gateway.demo_keys import ensure_demo_keys


async def test_revocation_through_one_gateway_is_honoured_by_another(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    keys = ensure_demo_keys(tmp_path / "keys")
    state = {"backend": "redis", "url": redis_url, "prefix": redis_prefix, "timeout": 2.0}
    async with run_backend(keys) as url, \
            run_stack(tmp_path, backend_url=url, state=state) as first, \
            run_stack(tmp_path, backend_url=url, state=state) as second, \
            aiohttp.ClientSession() as s:
        token = first.token()
        auth = {"Authorization": f"Bearer {token}"}
        for gw in (first, second):  # both have the token verified and cached
            async with s.get(gw.url + "/api/quotes/600519.SH", headers=auth) as r:
                assert r.status == 200
        claims = jwt.decode(token, options={"verify_signature": False})
        admin = first.auth(sub="ops", accounts=(), roles=("admin",))
        async with s.post(first.admin_url + "/admin/revocations", headers=admin,
                          json={"jti": claims["jti"], "exp": claims["exp"]}) as r:
            assert r.status == 201
        await asyncio.sleep(1.1)  # the other process trusts its "not revoked" answer for 1 s
        async with s.get(second.url + "/api/quotes/600519.SH", headers=auth) as r:
            body = await r.json()
    assert (r.status, body["error"]) == (401, "token_revoked")


async def test_redis_down_fails_closed_for_auth(tmp_path: Path) -> None:
    # A closed port: the revocation check cannot be answered, so the token is not accepted.
    state = {"backend": "redis", "url": "redis://127.0.0.1:9/0", "prefix": "ptest:down:", "timeout": 0.3}
    async with run_stack(tmp_path, state=state) as st, aiohttp.ClientSession() as s:
        async with s.get(st.url + "/api/quotes/600519.SH", headers=st.auth()) as r:
            body = await r.json()
        async with s.get(st.url + "/readyz") as ready:
            checks = (await ready.json())["checks"]
    assert (r.status, body["error"]) == (503, "state_unavailable")
    assert checks["state"] is False and ready.status == 503
