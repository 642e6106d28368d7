"""The webhook notifier against a real aiohttp receiver on loopback that records what it got."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import NotifierConfig, parse
from gateway.errors import ConfigError
from gateway.notify import build_notifier
from gateway.notify_webhook import DELIVERY_HEADER, SIGNATURE_HEADER, WebhookError, WebhookNotifier

SECRET = b"webhook-secret-0123456789abcdef"


class Receiver:
    """Answers with the scripted statuses in turn (then 204), recording each request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 204
        if status in (301, 302, 307):
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status)


@asynccontextmanager
async def receiving(statuses: list[int]) -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver(statuses)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    app.router.add_post("/elsewhere", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield receiver, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


class Sleeps:
    """Records the backoff instead of waiting."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def _notifier(url: str, sleeps: Sleeps, **kw: Any) -> WebhookNotifier:
    return WebhookNotifier(url, SECRET, clock=lambda: 0.0, sleep=sleeps, backoff=0.1, **kw)


async def test_a_notification_is_posted_once_signed_over_its_body() -> None:
    sleeps = Sleeps()
    async with receiving([]) as (receiver, url):
        notifier = _notifier(url, sleeps)
        try:
            await notifier.notify("security_settings_changed", "alice", "changed", {"changes": "x"})
        finally:
            await notifier.close()
    [(headers, body)] = receiver.received
    assert json.loads(body) == {"ts": "1970-01-01T00:00:00.000Z", "kind": "security_settings_changed",
                                "recipient": "alice", "message": "changed", "fields": {"changes": "x"}}
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected and headers["Content-Type"] == "application/json"
    assert sleeps.slept == []


async def test_a_5xx_is_retried_with_backoff_under_one_delivery_id() -> None:
    sleeps = Sleeps()
    async with receiving([503, 500]) as (receiver, url):
        notifier = _notifier(url, sleeps)
        try:
            await notifier.notify("k", "alice", "m")
        finally:
            await notifier.close()
    assert len(receiver.received) == 3 and sleeps.slept == [0.1, 0.2]
    assert len({h[DELIVERY_HEADER] for h, _ in receiver.received}) == 1
    assert len({b for _, b in receiver.received}) == 1  # the same signed body each time


async def test_giving_up_after_the_retries_raises() -> None:
    sleeps = Sleeps()
    async with receiving([502, 502, 502]) as (receiver, url):
        notifier = _notifier(url, sleeps, retries=2)
        try:
            with pytest.raises(WebhookError) as err:
                await notifier.notify("k", "alice", "m")
        finally:
            await notifier.close()
    assert err.value.status == 502 and len(receiver.received) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 302])
async def test_a_4xx_or_a_redirect_is_not_retried(status: int) -> None:
    sleeps = Sleeps()
    async with receiving([status]) as (receiver, url):
        notifier = _notifier(url, sleeps)
        try:
            with pytest.raises(WebhookError) as err:
                await notifier.notify("k", "alice", "m")
        finally:
            await notifier.close()
    assert err.value.status == status and len(receiver.received) == 1 and sleeps.slept == []


async def test_connection_errors_are_retried_then_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    sleeps = Sleeps()
    notifier = _notifier(f"http://127.0.0.1:{port}/hook", sleeps, retries=2)
    try:
        with pytest.raises(WebhookError, match="not reachable"):
            await notifier.notify("k", "alice", "m")
    finally:
        await notifier.close()
    assert sleeps.slept == [0.1, 0.2]


async def test_a_slow_receiver_times_out_and_is_retried() -> None:
    import asyncio

    calls = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1.0)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sleeps = Sleeps()
    notifier = _notifier(f"http://127.0.0.1:{runner.addresses[0][1]}/hook", sleeps, timeout=0.2)
    try:
        await notifier.notify("k", "alice", "m")
    finally:
        await notifier.close()
        await runner.cleanup()
    assert calls == 2 and sleeps.slept == [0.1]


# -- configuration ------------------------------------------------------------------------


def _cfg(tmp: Path, **notifier: Any) -> NotifierConfig:
    return parse({"gateway": {"security": False}, "notifier": notifier}, tmp).notifier


def test_the_webhook_sink_is_configured_with_its_secret_file(tmp_path: Path) -> None:
    (tmp_path / "hook.key").write_bytes(SECRET + b"\n")
    cfg = _cfg(tmp_path, sink="webhook", url="https://hooks.example/p", secret_file="hook.key",
               timeout=2, retries=5, backoff=0.5)
    assert (cfg.url, cfg.secret_file, cfg.timeout, cfg.retries, cfg.backoff) == (
        "https://hooks.example/p", tmp_path / "hook.key", 2.0, 5, 0.5)
    notifier = build_notifier(cfg)
    assert isinstance(notifier, WebhookNotifier) and notifier.url == "https://hooks.example/p"


@pytest.mark.parametrize(("notifier", "message"), [
    ({"sink": "webhook", "secret_file": "hook.key"}, "notifier.url: required when notifier.sink = \"webhook\""),
    ({"sink": "webhook", "url": "ftp://x", "secret_file": "hook.key"}, "notifier.url: must start with http://"),
    ({"sink": "webhook", "url": "http://x"}, "notifier.secret_file: required when notifier.sink = \"webhook\""),
    ({"sink": "webhook", "url": "http://x", "secret_file": "missing.key"}, "notifier.secret_file: file"),
    ({"sink": "webhook", "url": "http://x", "secret_file": "hook.key", "retries": 99},
     "notifier.retries: must be between 0 and 20"),
    ({"sink": "sms"}, "notifier.sink: must be one of console, file, webhook"),
])
def test_bad_webhook_settings_name_the_key(tmp_path: Path, notifier: dict[str, Any], message: str) -> None:
    (tmp_path / "hook.key").write_bytes(SECRET)
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, **notifier)
    assert str(err.value).startswith(message)


def test_a_short_secret_stops_startup(tmp_path: Path) -> None:
    (tmp_path / "hook.key").write_bytes(b"short")
    cfg = _cfg(tmp_path, sink="webhook", url="http://x", secret_file="hook.key")
    with pytest.raises(ConfigError, match="notifier.secret_file: .*shorter than 16 bytes"):
        build_notifier(cfg)
