"""Policies: bundles and their history, reading and editing Rego and data files as drafts, validation with
errors pinned to file, line and column, the bundle's own tests (docs/CONSOLE.md)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Nothing yet."""
