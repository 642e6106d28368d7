"""Rate limits (token buckets per route, account and client IP) and the failed-login lockout.

Configuration and the pure parts first; then real loopback stacks (demo
backend + gateway) on the memory store and on real Redis, with the gateway's
clock moved by hand (no timing assertions); then degraded mode on a private
redis-server that the test stops.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo_backend.app import DEMO_PASSWORD
from gateway.config import LoginLockoutConfig, RateLimit, parse
from gateway.errors import ConfigError
from gateway.steps.rate_limit import LocalBuckets, LocalLockouts, ip_bucket, login_name, retry_after
from tests.conftest import PrivateRedis
from tests.harness import ROUTES, Stack, route_config, run_stack

# --------------------------------------------------------------------------
# Configuration


def _parse(routes: list[dict[str, Any]], **top: Any) -> Any:
    return parse({"gateway": {"security": False}, "upstreams": {"t": {"url": "http://x"}},
                  "routes": [{"upstream": "t", **r} for r in routes], **top}, Path("."))


def test_route_rate_limits_are_parsed_as_tokens_a_second() -> None:
    route = route_config(path="/a/{account}", tier="read", account_param="account", rate_limits=[
        {"by": "ip", "rate": 10, "burst": 20}, {"by": "account", "rate": 5, "per": 60}, {"by": "route", "rate": 100}])
    assert route.rate_limits == (RateLimit("ip", 10.0, 20.0), RateLimit("account", 5 / 60, 5.0),
                                 RateLimit("route", 100.0, 100.0))


def test_routes_without_their_own_limits_take_the_default() -> None:
    cfg = _parse([{"path": "/a", "tier": "read"}, {"path": "/b", "tier": "read", "rate_limits": []}],
                 rate_limits={"default": [{"by": "ip", "rate": 50, "burst": 100}]})
    assert cfg.routes[0].rate_limits == (RateLimit("ip", 50.0, 100.0),)
    assert cfg.routes[1].rate_limits == ()


def test_login_lockout_settings_have_the_rules_defaults() -> None:
    assert _parse([]).rate_limits.login == LoginLockoutConfig(5, 900.0, 900.0, (401, 403))


@pytest.mark.parametrize(
    ("routes", "top", "message"),
    [
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "device", "rate": 1}]}], {},
                     "routes[0].rate_limits[0].by: must be one of route, account, ip", id="by-unknown"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": 0}]}], {},
                     "routes[0].rate_limits[0].rate: rate and per must be positive", id="rate-zero"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": -5}]}], {},
                     "routes[0].rate_limits[0].rate: must be >= 0", id="rate-negative"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": "fast"}]}], {},
                     "routes[0].rate_limits[0].rate: expected integer or number", id="rate-text"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": float("inf")}]}], {},
                     "routes[0].rate_limits[0].rate: rate must be a finite number", id="rate-inf"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": 1e-300}]}], {},
                     "routes[0].rate_limits[0].rate: burst / rate must be at most", id="rate-absurd"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": 1, "burst": 0.5}]}],
                     {}, "routes[0].rate_limits[0].burst: must be >= 1", id="burst-below-one"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": 1, "per": 0}]}], {},
                     "routes[0].rate_limits[0].rate: rate and per must be positive", id="per-zero"),
        pytest.param([{"path": "/a", "tier": "read", "rate_limits": [{"by": "ip", "rate": 1, "cap": 3}]}], {},
                     "routes[0].rate_limits[0].cap: unknown key", id="unknown-key"),
        pytest.param([{"path": "/a", "tier": "public", "rate_limits": [{"by": "account", "rate": 1}]}], {},
                     "routes[0].rate_limits[0].by: this route names no account", id="account-on-public"),
        pytest.param([], {"rate_limits": {"default": [{"by": "account", "rate": 1}]}},
                     "rate_limits.default[0].by: this route names no account", id="account-in-default"),
        pytest.param([{"path": "/login", "tier": "read", "login": True, "login_field": "u"}], {},
                     "routes[0].login: login routes are public", id="login-not-public"),
        pytest.param([{"path": "/login", "tier": "public", "login": True}], {},
                     "routes[0].login_field: a login route names its account with exactly one", id="login-no-name"),
        pytest.param([{"path": "/login/{u}", "tier": "public", "login": True, "login_field": "u",
                       "login_param": "u"}], {}, "routes[0].login_field: a login route names", id="login-two-names"),
        pytest.param([{"path": "/login", "tier": "public", "login": True, "login_param": "u"}], {},
                     "routes[0].login_param: 'u' is not a parameter", id="login-param-missing"),
        pytest.param([{"path": "/login", "tier": "public", "login_field": "u"}], {},
                     "routes[0].login: login_field and login_param need login = true", id="field-without-login"),
        pytest.param([], {"rate_limits": {"login": {"max_failures": 0}}},
                     "rate_limits.login.max_failures: must be between 1 and 1000", id="max-failures-zero"),
        pytest.param([], {"rate_limits": {"login": {"lock_time": 1e12}}},
                     "rate_limits.login.lock_time: at most 30 days", id="lock-time-absurd"),
        pytest.param([], {"rate_limits": {"login": {"failure_statuses": [200]}}},
                     "rate_limits.login.failure_statuses: a list of HTTP error statuses", id="status-success"),
        pytest.param([], {"rate_limits": {"fallback_size": 0}},
                     "rate_limits.fallback_size: must be between 1 and", id="fallback-zero"),
    ],
)
def test_bad_rate_limit_configuration_stops_startup_naming_the_key(
        routes: list[dict[str, Any]], top: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(routes, **top)
    assert str(info.value).startswith(message), str(info.value)


def test_the_example_configuration_has_a_public_login_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_BACKEND_INTERNAL_TOKEN", "t" * 32)
    from gateway.config import load

    cfg = load(Path(__file__).parent.parent / "examples" / "portcullis.toml")
    login = [r for r in cfg.routes if r.login]
    assert login and all(r.tier == "public" and r.rate_limits for r in login)


# --------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"),
                                                 (59.5, "60"), (float("inf"), "2592000"), (1e18, "2592000")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    assert retry_after(seconds) == header


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert ip_bucket("2001:db8:1:2:aaaa::1") == ip_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert ip_bucket("2001:db8:1:3::1") != ip_bucket("2001:db8:1:2::1")
    assert ip_bucket("203.0.113.7") == "203.0.113.7"


@pytest.mark.parametrize(("value", "name"), [("Alice", "alice"), ("  alice ", "alice"), ("", None), (" ", None),
                                             (None, None), (7, None), (["alice"], None), ("a" * 257, None),
                                             ("ali\nce", None), ("a" * 256, "a" * 256)])
def test_login_names_are_normalised_or_refused(value: Any, name: str | None) -> None:
    assert login_name(value) == name


def test_local_buckets_refill_and_stay_bounded() -> None:
    local = LocalBuckets(size=3)
    assert [local.take("k", 1.0, 2, 100.0)[0] for _ in range(3)] == [True, True, False]
    assert local.take("k", 1.0, 2, 101.0) == (True, 0.0)
    for i in range(10):
        local.take(f"other{i}", 1.0, 2, 100.0)
    assert len(local) == 3


def test_local_lockouts_count_failures_inside_the_window() -> None:
    local = LocalLockouts(LoginLockoutConfig(max_failures=3, window=10.0), size=10)
    assert [local.fail("k", t) for t in (0.0, 1.0, 20.0)] == [1, 2, 1]
    local.lock("k", 50.0)
    local.lock("k", 40.0)  # an earlier unlock time never shortens a lock
    assert local.locked_until("k") == 50.0


# --------------------------------------------------------------------------
# Through the gateway


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


LOGIN = {"name": "login", "methods": ["POST"], "path": "/auth/login", "upstream": "trading", "tier": "public",
         "login": True, "login_field": "username"}


def _routes(limits: dict[str, list[dict[str, Any]]], *extra: dict[str, Any]) -> list[dict[str, Any]]:
    routes = copy.deepcopy(ROUTES) + [copy.deepcopy(r) for r in extra]
    for r in routes:
        if r["name"] in limits:
            r["rate_limits"] = limits[r["name"]]
    return routes


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {"backend": "memory"}
    return {"backend": "redis", "url": request.getfixturevalue("redis_url"),
            "prefix": request.getfixturevalue("redis_prefix"), "timeout": 2.0}


@asynccontextmanager
async def _stack(tmp: Path, state: dict[str, Any], routes: list[dict[str, Any]], clock: Clock,
                 **overrides: Any) -> AsyncIterator[tuple[Stack, aiohttp.ClientSession]]:
    async with run_stack(tmp, state=state, routes=routes, gateway_kwargs={"clock": clock}, **overrides) as st, \
            aiohttp.ClientSession() as session:
        yield st, session


async def _get(s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, Any], str | None]:
    async with s.get(url, headers=headers) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def _login(s: aiohttp.ClientSession, st: Stack, username: str, password: str,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str | None]:
    async with s.post(st.url + "/auth/login", json={"username": username, "password": password},
                      headers=headers) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


def _audit(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


async def test_burst_then_429_with_retry_after_then_refill(tmp_path: Path, state: dict[str, Any]) -> None:
    clock = Clock()
    # The echo route: its backend handler does not check the identity assertion, which is stamped
    # with the gateway's (moved) clock.
    routes = _routes({"echo": [{"by": "ip", "rate": 1, "per": 10, "burst": 3}]})
    async with _stack(tmp_path, state, routes, clock) as (st, s):
        url, auth = st.url + "/__debug/echo", st.auth()
        statuses = [(await _get(s, url, auth))[0] for _ in range(3)]
        status, body, after = await _get(s, url, auth)
        clock.now += 10
        refilled = (await _get(s, url, auth))[0]
        again = (await _get(s, url, auth))[0]
    assert statuses == [200, 200, 200]
    assert (status, body["error"], after) == (429, "rate_limited", "10")
    assert set(body) == {"error", "message", "request_id"}
    assert (refilled, again) == (200, 429)
    denials = [r for r in _audit(tmp_path / "audit") if r.get("code") == "rate_limited"]
    assert len(denials) == 2 and denials[0]["request_id"] == body["request_id"]
    assert (denials[0]["type"], denials[0]["sub"], denials[0]["status"]) == ("denial", "alice", 429)


async def test_rate_limited_requests_are_never_forwarded(tmp_path: Path, state: dict[str, Any]) -> None:
    clock = Clock()
    routes = _routes({"echo": [{"by": "route", "rate": 1, "per": 60, "burst": 1}]})
    async with _stack(tmp_path, state, routes, clock) as (st, s):
        first = await s.post(st.url + "/__debug/echo", data=b"one", headers=st.auth())
        second = await s.post(st.url + "/__debug/echo", data=b"two", headers=st.auth())
        echoed, refused = await first.json(), await second.json()
    assert echoed["body"] == "one"
    assert (second.status, refused["error"]) == (429, "rate_limited")
    assert "body" not in refused


async def test_account_buckets_are_per_account_and_ip_buckets_per_client(tmp_path: Path,
                                                                        state: dict[str, Any]) -> None:
    clock = Clock()
    routes = _routes({"account": [{"by": "account", "rate": 1, "per": 60, "burst": 2}],
                      "quotes": [{"by": "ip", "rate": 1, "per": 60, "burst": 2}]})
    # The test client connects from 127.0.0.1: trusting it makes X-Forwarded-For name the client.
    async with _stack(tmp_path, state, routes, clock, network={"trusted_proxies": ["127.0.0.1/32"]}) as (st, s):
        alice = st.auth(sub="alice", accounts=("A1",))
        bob = st.auth(sub="bob", accounts=("B9",))
        a1 = [(await _get(s, st.url + "/api/accounts/A1", alice))[0] for _ in range(3)]
        b9 = (await _get(s, st.url + "/api/accounts/B9", bob))[0]
        quote = st.url + "/api/quotes/600519.SH"
        one = [(await _get(s, quote, {**alice, "X-Forwarded-For": "198.51.100.1"}))[0] for _ in range(3)]
        other = (await _get(s, quote, {**alice, "X-Forwarded-For": "198.51.100.2"}))[0]
    assert a1 == [200, 200, 429]
    assert b9 == 200                  # another account, same IP: its own bucket
    assert one == [200, 200, 429]
    assert other == 200               # another client IP, same account: its own bucket


async def test_spoofed_forwarded_for_from_an_untrusted_peer_keeps_its_bucket(tmp_path: Path,
                                                                            state: dict[str, Any]) -> None:
    clock = Clock()
    routes = _routes({"quotes": [{"by": "ip", "rate": 1, "per": 60, "burst": 2}]})
    async with _stack(tmp_path, state, routes, clock) as (st, s):  # 127.0.0.1 is not a trusted proxy here
        quote = st.url + "/api/quotes/600519.SH"
        got = [(await _get(s, quote, {**st.auth(), "X-Forwarded-For": f"203.0.113.{i}"}))[0] for i in range(3)]
    assert got == [200, 200, 429]


async def test_bad_input_never_crashes_the_limit(tmp_path: Path, state: dict[str, Any]) -> None:
    clock = Clock()
    routes = _routes({"account": [{"by": "account", "rate": 1, "per": 60, "burst": 1}]})
    async with _stack(tmp_path, state, routes, clock) as (st, s):
        odd = "A" * 300
        auth = st.auth(accounts=(odd,))
        first = (await _get(s, st.url + f"/api/accounts/{odd}", auth))[0]
        second = (await _get(s, st.url + f"/api/accounts/{odd}", auth))[0]
    assert first in (200, 404)        # the backend does not know the account; the gateway let it through once
    assert second == 429


# --------------------------------------------------------------------------
# The failed-login lockout (RULES.md: 5 failed logins from one IP for an account lock that IP for it)


async def test_five_failed_logins_lock_that_ip_out_of_that_account(tmp_path: Path, state: dict[str, Any]) -> None:
    clock = Clock()
    ip1, ip2 = {"X-Forwarded-For": "198.51.100.1"}, {"X-Forwarded-For": "198.51.100.2"}
    async with _stack(tmp_path, state, _routes({}, LOGIN), clock,
                      network={"trusted_proxies": ["127.0.0.1/32"]}) as (st, s):
        failures = [(await _login(s, st, "alice", "guess", ip1))[0] for _ in range(5)]
        locked = await _login(s, st, "alice", DEMO_PASSWORD, ip1)
        respelled = await _login(s, st, " ALICE", DEMO_PASSWORD, ip1)
        other_ip = await _login(s, st, "alice", DEMO_PASSWORD, ip2)
        other_account = await _login(s, st, "bob", DEMO_PASSWORD, ip1)
        hour = int(clock.now // 3600)
        risk_failures = await st.gateway.state.get(f"risk:fail:alice:{hour}")
        clock.now += 899
        still = (await _login(s, st, "alice", DEMO_PASSWORD, ip1))[0]
        clock.now += 2
        expired = await _login(s, st, "alice", DEMO_PASSWORD, ip1)
    assert failures == [401] * 5
    assert (locked[0], locked[1]["error"], locked[2]) == (429, "login_locked", "900")
    assert respelled[0] == 429
    assert (other_ip[0], other_ip[1]) == (200, {"status": "ok", "sub": "alice"})
    assert other_account[0] == 200
    assert risk_failures == b"5"      # the risk engine's recent_auth_failures sees them
    assert still == 429
    assert expired[0] == 200
    records = _audit(tmp_path / "audit")
    refused = [r for r in records if r.get("code") == "login_locked"]
    assert refused and refused[0]["login"] == "alice" and refused[0]["client_ip"] == "198.51.100.1"
    outcomes = [r for r in records if r.get("type") == "outcome" and r.get("route") == "login"]
    assert [r["status"] for r in outcomes][:5] == [401] * 5


async def test_failed_logins_spread_over_more_than_the_window_do_not_lock(tmp_path: Path,
                                                                          state: dict[str, Any]) -> None:
    clock = Clock()
    async with _stack(tmp_path, state, _routes({}, LOGIN), clock,
                      rate_limits={"login": {"max_failures": 3, "window": 60}}) as (st, s):
        for _ in range(4):
            assert (await _login(s, st, "alice", "guess"))[0] == 401
            clock.now += 31
        ok = (await _login(s, st, "alice", DEMO_PASSWORD))[0]
    assert ok == 200


async def test_login_needs_a_usable_account_name(tmp_path: Path) -> None:
    async with _stack(tmp_path, {"backend": "memory"}, _routes({}, LOGIN), Clock()) as (st, s):
        missing = await s.post(st.url + "/auth/login", json={"password": "x"})
        numeric = await s.post(st.url + "/auth/login", json={"username": 7, "password": "x"})
        listed = await s.post(st.url + "/auth/login", json=["alice"])
        broken = await s.post(st.url + "/auth/login", data=b"{", headers={"Content-Type": "application/json"})
        form = await s.post(st.url + "/auth/login", data={"username": "alice"})
        statuses = [(r.status, (await r.json())["error"]) for r in (missing, numeric, listed, broken, form)]
    assert statuses == [(400, "bad_request"), (400, "bad_request"), (400, "bad_request"), (400, "invalid_json"),
                        (415, "unsupported_media_type")]


async def test_login_body_is_forwarded_as_judged(tmp_path: Path) -> None:
    """Duplicate members: the backend must read the account the gateway counted (the last one)."""
    async with _stack(tmp_path, {"backend": "memory"}, _routes({}, LOGIN), Clock()) as (st, s):
        raw = b'{"username": "bob", "password": "guess", "username": "alice"}'
        for _ in range(5):
            async with s.post(st.url + "/auth/login", data=raw, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 401
        locked = await _login(s, st, "alice", DEMO_PASSWORD)
        bob = await _login(s, st, "bob", DEMO_PASSWORD)
    assert (locked[0], bob[0]) == (429, 200)


async def test_login_routes_take_rate_limits_by_account_and_ip(tmp_path: Path) -> None:
    login = {**LOGIN, "rate_limits": [{"by": "account", "rate": 1, "per": 60, "burst": 2}]}
    async with _stack(tmp_path, {"backend": "memory"}, _routes({}, login), Clock()) as (st, s):
        alice = [(await _login(s, st, "alice", DEMO_PASSWORD))[0] for _ in range(3)]
        bob = (await _login(s, st, "bob", DEMO_PASSWORD))[0]
    assert alice == [200, 200, 429]
    assert bob == 200


# --------------------------------------------------------------------------
# The state store down


async def test_store_down_trade_fails_closed_and_reads_keep_a_local_limit(
        tmp_path: Path, private_redis: PrivateRedis) -> None:
    clock = Clock()
    routes = _routes({"positions": [{"by": "account", "rate": 1, "per": 60, "burst": 2}],
                      "order_place": [{"by": "account", "rate": 10, "burst": 10}]}, LOGIN)
    routes[[r["name"] for r in routes].index("positions")]["fail_mode"] = "open"
    state = {"backend": "redis", "url": private_redis.url, "prefix": "ptest:rl:", "timeout": 0.5}
    async with _stack(tmp_path, state, routes, clock) as (st, s):
        url, auth = st.url + "/api/accounts/A1/positions", st.auth()
        assert (await _get(s, url, auth))[0] == 200
        private_redis.stop()
        degraded = [(await _get(s, url, auth))[:3:2] for _ in range(3)]
        async with s.post(st.url + "/api/accounts/A1/orders", json={"symbol": "600519.SH"}, headers=auth) as r:
            trade = (r.status, (await r.json())["error"])
        # Failed logins still lock this process's view while the store is away.
        logins = [(await _login(s, st, "alice", "guess"))[0] for _ in range(5)]
        locked = await _login(s, st, "alice", DEMO_PASSWORD)
    assert degraded == [(200, None), (200, None), (429, "60")]  # a fresh local bucket, never no limit
    assert trade == (503, "state_unavailable")
    assert logins == [401] * 5
    assert (locked[0], locked[1]["error"]) == (429, "login_locked")
