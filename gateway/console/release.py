"""Releasing a policy: what-if on a sample or a past request, shadow mode and its diff report, proposing,
four-eyes approval, rollback and the audited break-glass rollback (docs/CONSOLE.md)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Nothing yet."""
