"""JSON logs: one object per line with the request id; never tokens or bodies."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import aiohttp
from harness import run_stack

from gateway.logs import JsonFormatter


async def test_access_log_is_json_with_request_id_and_no_secrets(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("portcullis.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with run_stack(tmp_path, gateway={"access_log": True}) as st, aiohttp.ClientSession() as s:
            token = st.token()
            order = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0,
                     "type": "limit", "client_order_id": "secret-order-note"}
            async with s.post(st.url + "/api/accounts/A1/orders", json=order,
                              headers={"Authorization": f"Bearer {token}"}) as r:
                rid = r.headers["X-Request-Id"]
            async with s.get(st.url + "/api/accounts/B9", headers={"Authorization": f"Bearer {token}"}):
                pass
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["event"] == "request" and first["request_id"] == rid
    assert (first["route"], first["status"], first["outcome"]) == ("order_place", 201, "ok")
    assert lines[1]["outcome"] == "account_forbidden"
    text = stream.getvalue()
    assert token not in text and token.split(".")[1] not in text
    assert "secret-order-note" not in text
