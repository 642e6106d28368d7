"""Deleting a benchmark's Redis keys (everything under its random prefix) when it ends."""

from __future__ import annotations

import redis.asyncio


async def delete_matching(client: redis.asyncio.Redis, pattern: str) -> None:
    """Delete every key matching ``pattern`` (SCAN, so the shared Redis is never blocked)."""
    keys = [k async for k in client.scan_iter(match=pattern, count=500)]
    if keys:
        await client.delete(*keys)


async def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` on the Redis at ``url``."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await delete_matching(client, prefix + "*")
    finally:
        await client.aclose()
