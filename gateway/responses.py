"""The JSON error response every listener answers with.

`{"error": code, "message": text, "request_id": id}` plus the error's extra
members (deny reasons, step-up methods); the same code goes into the audit record.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError


def error_response(exc: GatewayError, request_id: str, rid_header: str) -> web.Response:
    body: dict[str, Any] = {"error": exc.code, "message": exc.message, "request_id": request_id}
    if exc.extra:
        body.update(exc.extra)
    headers = {rid_header: request_id, "Cache-Control": "no-store"}
    if exc.headers:
        headers.update(exc.headers)
    return web.Response(status=exc.status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)
