"""The audit trail in the console: search, one record, whether the chain verifies, CSV export
(docs/CONSOLE.md)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Nothing yet."""
