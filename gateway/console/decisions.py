"""The decisions dashboard: decisions per minute by outcome, step-up rate, top deny reasons, risk score
distribution and the latest denials, refreshed live (docs/CONSOLE.md)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Nothing yet."""
