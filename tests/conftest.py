"""Shared fixtures: real Redis and PostgreSQL, and the shared test vectors.

Integration tests run against the real services the product uses (STYLE.md 7).
When a service is not reachable, its tests are skipped with a message that
says how to start it, so a newcomer's ``pytest`` still passes; CI sets
``REQUIRE_REDIS=1`` / ``REQUIRE_POSTGRES=1`` to turn those skips into failures,
so a broken service never passes silently.

Environment:

* ``PORTCULLIS_TEST_REDIS_URL``     default ``redis://127.0.0.1:6379/0``
* ``PORTCULLIS_TEST_POSTGRES_DSN``  default ``postgresql://postgres@127.0.0.1:5432/test``
* ``PORTCULLIS_VECTORS``            default ``../shared/vectors`` next to the repository
* ``REQUIRE_REDIS=1``, ``REQUIRE_POSTGRES=1``  fail instead of skip

The face service (``python -m biometrics serve``) runs once per session (``face_service``).

Every test gets its own key prefix or schema and removes it afterwards, so
tests, parallel runs and CI jobs can share one server. Add new fixtures in the
section of the service they use.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio

from gateway.state.base import StateStore
from gateway.state.memory import MemoryStore
from gateway.state.redis import RedisStore

# --------------------------------------------------------------------------
# Service availability


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


def service_unavailable(require_env: str, message: str) -> NoReturn:
    """Skip the test, or fail it when ``require_env`` is set to 1 (as in CI)."""
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{message} [{require_env}=1, so this is a failure]", pytrace=False)
    pytest.skip(message)


def _run(step: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run async code from a sync fixture: on its own thread and event loop,
    because the fixture may be set up while a test's loop is already running."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, step()).result()


def _probe(check: Callable[[], Coroutine[Any, Any, object]]) -> str | None:
    """None when ``check`` succeeds, else why it failed."""
    try:
        _run(check)
    except Exception as exc:  # any failure means "not usable"
        return str(exc) or type(exc).__name__
    return None


# --------------------------------------------------------------------------
# Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis; checked once per session."""
    url = os.environ.get("PORTCULLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

    async def check() -> None:
        client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            await client.ping()
        finally:
            await client.aclose()

    error = _probe(check)
    if error is not None:
        service_unavailable(
            "REQUIRE_REDIS",
            f"Redis not reachable at {_redacted(url)} ({error}): start it with "
            "`redis-server --daemonize yes` or set PORTCULLIS_TEST_REDIS_URL; "
            "CI sets REQUIRE_REDIS=1",
        )
    return url


async def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (which must not contain glob characters)."""
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete keys under prefix {prefix!r}")
    client = redis.asyncio.Redis.from_url(url, socket_timeout=5.0)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test, ``ptest:<uuid>:``; its keys go afterwards.

    Use it for any Redis client a test builds itself, so nothing is left behind.
    (A sync fixture, so other fixtures may request it with ``getfixturevalue``.)
    """
    prefix = f"ptest:{uuid.uuid4().hex}:"
    yield prefix
    _run(lambda: delete_redis_prefix(redis_url, prefix))


@pytest.fixture(params=["memory", "redis"])
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """Each test twice: on a MemoryStore and on a RedisStore under the test's own prefix."""
    if request.param == "memory":
        yield MemoryStore()
        return
    store = RedisStore(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"), timeout=2.0)
    yield store
    await store.close()


@pytest.fixture
async def redis_store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    """A RedisStore on the test Redis under ``redis_prefix``."""
    store = RedisStore(redis_url, redis_prefix, timeout=2.0)
    yield store
    await store.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A ``redis-server`` of this test's own on a free loopback port, which the test may stop.

    For degraded-mode tests: stopping the shared server would break every
    other test. Skipped (failed with REQUIRE_REDIS=1) without ``redis-server``.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        service_unavailable("REQUIRE_REDIS", "redis-server is not installed (needed to start a private one)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = PrivateRedis(binary, port, tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class PrivateRedis:
    """A redis-server process of one test (see the ``private_redis`` fixture)."""

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.url = f"redis://127.0.0.1:{port}/0"
        self._cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(directory)]
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or start again, empty, on the same port) and wait until it answers PING."""
        self._proc = proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                service_unavailable("REQUIRE_REDIS", f"a private redis-server did not start on port {self._port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (idempotent); clients see refused connections from now on."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


# --------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of a reachable PostgreSQL database; checked once per session."""
    import asyncpg

    dsn = os.environ.get(
        "PORTCULLIS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
    )

    async def check() -> None:
        conn = await asyncpg.connect(dsn, timeout=3.0)
        await conn.close()

    error = _probe(check)
    if error is not None:
        service_unavailable(
            "REQUIRE_POSTGRES",
            f"PostgreSQL not reachable at {_redacted(dsn)} ({error}): start it "
            "(e.g. `pg_ctlcluster <version> main start`) and create the database "
            "(`createdb -U postgres test`), or set PORTCULLIS_TEST_POSTGRES_DSN; "
            "CI sets REQUIRE_POSTGRES=1",
        )
    return dsn


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh schema ``ptest_<uuid>``, dropped with everything in it afterwards.

    Connect with ``asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})``
    so unqualified table names land in it.
    """
    import asyncpg

    name = f"ptest_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(postgres_dsn, timeout=5.0)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


@pytest.fixture(params=["memory", "postgres"])
async def repo(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A policy bundle repository, started: in memory, then in real PostgreSQL (a schema of its own,
    created by the repository and dropped here)."""
    from gateway.bundles.postgres import PostgresBundleRepository
    from gateway.bundles.repository import MemoryBundleRepository

    if request.param == "memory":
        memory = MemoryBundleRepository()
        await memory.start()
        yield memory
        return
    import asyncpg

    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"ptest_{uuid.uuid4().hex}"
    r = PostgresBundleRepository(dsn, schema)
    await r.start()
    try:
        yield r
    finally:
        await r.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


# --------------------------------------------------------------------------
# Test vectors


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The shared test vectors folder (``../shared/vectors`` or ``$PORTCULLIS_VECTORS``)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
    path = Path(os.environ.get("PORTCULLIS_VECTORS", default))
    if not path.is_dir():
        pytest.skip(
            f"test vectors not found at {path}: check out the shared vectors next to "
            "the repository or set PORTCULLIS_VECTORS"
        )
    return path


# --------------------------------------------------------------------------
# The face service


@dataclass(frozen=True)
class FaceServiceProcess:
    """A running ``python -m biometrics serve`` (see the ``face_service`` fixture)."""

    url: str
    secret: bytes
    secret_file: Path
    log_file: Path
    """The service's own output (never a pipe nobody reads: it would fill and block the service)."""


@pytest.fixture(scope="session")
def face_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaceServiceProcess]:
    """The real face service in its own process on a free loopback port, once per session.

    Yielded when ``/healthz`` says face is available (the start-up self-check has run), so a
    gateway started against it never sees it half-ready. Tests share it: each uses customer
    ids of its own, or withdraws consent first (which deletes the template and the replay memory).
    """
    tmp = tmp_path_factory.mktemp("biometrics")
    secret = secrets.token_urlsafe(32).encode()
    secret_file = tmp / "secret"
    secret_file.write_bytes(secret)
    secret_file.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    log_file = tmp / "service.log"
    repo = Path(__file__).resolve().parents[1]
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "biometrics", "serve", "--port", str(port), "--secret-file", str(secret_file),
             "--data-dir", str(tmp / "data")], cwd=repo, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        health: dict[str, Any] = {}
        while health.get("face") != "available":
            if proc.poll() is not None:
                pytest.fail(f"face service exited: {log_file.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"face service not available after 90 s: {health} {log_file.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:  # noqa: S310 (loopback)
                    health = json.loads(r.read())
            except OSError:
                pass
            if health.get("face") == "unavailable":  # it listens only after its self-check
                pytest.fail(f"the face stack is broken: {health.get('reason')}")
            if health.get("face") != "available":
                time.sleep(0.1)
        yield FaceServiceProcess(url, secret, secret_file, log_file)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
