"""JSON logs: one object per line with the request id; never tokens or bodies."""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest
from harness import run_stack


async def test_access_log_is_json_with_request_id_and_no_secrets(tmp_path: Path) -> None:
    stream = io.BytesIO()
    async with run_stack(tmp_path, gateway={"access_log": True}) as st, aiohttp.ClientSession() as s:
        assert st.gateway.access_log is not None
        st.gateway.access_log.stream = stream
        token = st.token()
        order = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0,
                 "type": "limit", "client_order_id": "secret-order-note"}
        async with s.post(st.url + "/api/accounts/A1/orders", json=order,
                          headers={"Authorization": f"Bearer {token}"}) as r:
            rid = r.headers["X-Request-Id"]
        async with s.get(st.url + "/api/accounts/B9", headers={"Authorization": f"Bearer {token}"}):
            pass
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert (first["logger"], first["event"], first["request_id"]) == ("portcullis.access", "request", rid)
    assert (first["route"], first["status"], first["outcome"]) == ("order_place", 201, "ok")
    assert lines[1]["outcome"] == "account_forbidden"
    text = stream.getvalue().decode()
    assert token not in text and token.split(".")[1] not in text
    assert "secret-order-note" not in text



def test_default_access_log_buffers_stderr_lines_until_flushed(capfd: pytest.CaptureFixture[str]) -> None:
    from gateway.logs import AccessLog

    log = AccessLog(flush_interval=3600)
    log.write(request_id="r1", route="quotes", status=200)
    assert capfd.readouterr().err == ""  # no system call per line
    log.flush()
    line = json.loads(capfd.readouterr().err)
    assert (line["request_id"], line["status"]) == ("r1", 200)
