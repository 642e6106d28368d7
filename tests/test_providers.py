"""Fact providers against the real demo backend on loopback (its /internal routes)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo_backend.internal import trading_days
from gateway.demo_keys import DemoKeys, ensure_demo_keys
from gateway.errors import catalogue
from gateway.policy.providers import MISS, HttpFactProviders, ProviderUnavailable, TtlCache
from tests.harness import run_backend

TOKEN = "internal-test-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingProviders(HttpFactProviders):
    """The real HTTP providers, counting the requests they send."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[str] = []

    async def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        self.calls.append(path)
        return await super()._get(path, params)


@pytest.fixture
def keys(tmp_path: Path) -> DemoKeys:
    return ensure_demo_keys(tmp_path / "keys")


@pytest.fixture
async def backend(keys: DemoKeys) -> AsyncIterator[str]:
    async with run_backend(keys, internal_token=TOKEN) as url:
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def providers(backend: str, clock: Clock) -> AsyncIterator[CountingProviders]:
    p = CountingProviders(backend, TOKEN, clock=clock, timeout=2.0, max_stale=2.0)
    yield p
    await p.close()


def test_error_kind_is_catalogued() -> None:
    kind = catalogue()["provider_unavailable"]
    assert (kind.status, kind.code) == (503, "provider_unavailable")
    err = ProviderUnavailable("detail for logs")
    assert (err.status, err.code, err.detail) == (503, "provider_unavailable", "detail for logs")
    assert "detail" not in err.message


async def test_instrument_facts(providers: CountingProviders) -> None:
    assert await providers.instrument("600519.SH") == {
        "symbol": "600519.SH", "market": "cn_a", "board": "main", "st": False, "board_lot": 100,
        "min_qty": 100, "prev_close": 1450.0, "limit_up": 1595.0, "limit_down": 1305.0,
        "tick_size": 0.01, "risk_level": "R3", "currency": "CNY", "adv_cny": 1_000_000_000}
    star = await providers.instrument("688981.SH")
    assert star is not None and (star["board"], star["board_lot"], star["min_qty"]) == ("star", 1, 200)
    st = await providers.instrument("600137.SH")
    assert st is not None and st["st"] is True and st["limit_up"] == 8.4
    assert st["adv_cny"] < 20_000_000  # illiquid: what the pig-butchering signal looks for
    hk = await providers.instrument("00700.HK")
    assert hk is not None and hk["limit_up"] is None and hk["currency"] == "HKD"


async def test_unknown_symbol_is_none_not_an_error_and_is_cached(providers: CountingProviders) -> None:
    assert await providers.instrument("999999.SH") is None
    assert await providers.instrument("999999.SH") is None
    assert await providers.bbo("999999.SH") is None
    assert providers.calls.count("/internal/reference/999999.SH") == 1
    assert providers.cached("instrument", "999999.SH") is None
    assert providers.cached("instrument", "600519.SH") is MISS


async def test_quote_account_position_restricted(providers: CountingProviders) -> None:
    q = await providers.bbo("600519.SH")
    assert q is not None and set(q) == {"bid", "ask", "last"}
    assert q["bid"] <= q["last"] <= q["ask"]
    a1 = await providers.account("A1")
    assert a1 is not None
    risk_facts = ("customer_id", "bank_accounts", "last_deposit")
    assert {k: v for k, v in a1.items() if k not in risk_facts} == {
        "id": "A1", "investor_level": "C4", "lowest_category": False, "assets_cny": 1200000,
        "trading_months": 60, "programme_trading_report": False, "single_trade_limit": 200000,
        "daily_limit": 500000, "frozen": False, "cash": 300000.0, "buying_power": 300000.0}
    # For the risk engine: link times of the bank accounts (ids, never numbers), the last deposit.
    assert [b["id"] for b in a1["bank_accounts"]] == ["bank-a1-1", "bank-a1-2"]
    linked = [b["added_at"] for b in a1["bank_accounts"]]
    assert linked[0] < linked[1] and all(isinstance(t, float) for t in linked)
    assert "6214830000000000027" not in str(a1) and a1["last_deposit"] is None
    c3 = await providers.account("C3")
    assert c3 is not None and c3["last_deposit"]["amount"] == 500_000
    b9 = await providers.account("B9")
    assert b9 is not None and (b9["investor_level"], b9["lowest_category"]) == ("C1", True)
    assert await providers.account("ZZ") is None
    assert await providers.position("A1", "600519.SH") == {
        "symbol": "600519.SH", "qty": 200, "today_bought": 0, "sellable": 200}
    assert await providers.position("A1", "000001.SZ") == {
        "symbol": "000001.SZ", "qty": 5000, "today_bought": 1000, "sellable": 4000}
    assert await providers.position("A1", "601318.SH") == {
        "symbol": "601318.SH", "qty": 0, "today_bought": 0, "sellable": 0}
    lists = await providers.restricted()
    assert "09988.HK" in lists.symbols and "mallory" in lists.persons


async def test_calendar(providers: CountingProviders) -> None:
    assert await providers.is_trading_day(date(2026, 11, 25))  # a Wednesday
    assert not await providers.is_trading_day(date(2026, 11, 28))  # Saturday
    assert not await providers.is_trading_day(date(2026, 10, 1))  # National Day
    assert not await providers.is_trading_day(date(2026, 1, 1))
    assert await providers.is_trading_day(date(2026, 10, 9))
    assert providers.calls.count("/internal/calendar") == 1  # one fetch per year
    assert providers.cached("is_trading_day", date(2026, 11, 28)) is False  # no I/O: from the cache
    assert providers.cached("is_trading_day", date(2029, 1, 2)) is MISS
    assert await providers.is_trading_day(date(2031, 3, 4))  # a year without a list
    assert len(trading_days(2026)) == 261 - 18 + 0  # weekdays minus the listed weekday holidays


async def test_ttl_cache_with_injected_clock(providers: CountingProviders, clock: Clock) -> None:
    await providers.account("A1")
    clock.now += 0.9
    await providers.account("A1")
    assert providers.calls.count("/internal/accounts/A1/facts") == 1
    clock.now += 0.2  # past the 1 s TTL
    await providers.account("A1")
    assert providers.calls.count("/internal/accounts/A1/facts") == 2
    await providers.instrument("600519.SH")
    clock.now += 299
    await providers.instrument("600519.SH")
    assert providers.calls.count("/internal/reference/600519.SH") == 1
    clock.now += 2
    await providers.instrument("600519.SH")
    assert providers.calls.count("/internal/reference/600519.SH") == 2


async def test_concurrent_misses_share_one_fetch(providers: CountingProviders) -> None:
    results = await asyncio.gather(*(providers.bbo("601318.SH") for _ in range(20)))
    assert len({id(r) for r in results}) == 1
    assert providers.calls.count("/internal/quotes/601318.SH/bbo") == 1


async def test_stale_within_max_stale_then_503(keys: DemoKeys, clock: Clock) -> None:
    async with run_backend(keys, internal_token=TOKEN) as url:
        p = HttpFactProviders(url, TOKEN, clock=clock, timeout=1.0, max_stale=2.0)
        first = await p.account("A1")
        assert first is not None
    try:  # the backend is gone now
        clock.now += 1.0 + 1.5  # past the TTL, within max_stale: the last answer stands
        assert await p.account("A1") == first
        clock.now += 1.0  # beyond TTL + max_stale
        with pytest.raises(ProviderUnavailable) as err:
            await p.account("A1")
        assert (err.value.status, err.value.code) == (503, "provider_unavailable")
        with pytest.raises(ProviderUnavailable):  # never fetched: no stale answer to give
            await p.instrument("600519.SH")
    finally:
        await p.close()


async def test_bounded_size(backend: str, clock: Clock) -> None:
    p = HttpFactProviders(backend, TOKEN, clock=clock, cache_size=2)
    try:
        for symbol in ("600519.SH", "601318.SH", "000001.SZ", "688981.SH"):
            await p.instrument(symbol)
        assert len(p.instruments) == 2
    finally:
        await p.close()


async def test_bad_token_is_401_and_the_provider_fails_closed(backend: str) -> None:
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"X-Portcullis-Internal-Token": "wrong"},
                        {"X-Portcullis-Internal-Token": TOKEN + "x"}):
            async with s.get(backend + "/internal/restricted", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"] == "internal_token_invalid"
        async with s.get(backend + "/internal/restricted",
                         headers={"X-Portcullis-Internal-Token": TOKEN}) as resp:
            assert resp.status == 200
        async with s.get(backend + "/internal/calendar?year=abc",
                         headers={"X-Portcullis-Internal-Token": TOKEN}) as resp:
            assert resp.status == 400
    p = HttpFactProviders(backend, "wrong-token")
    try:
        with pytest.raises(ProviderUnavailable):
            await p.restricted()
    finally:
        await p.close()


async def test_token_is_compared_in_constant_time(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)  # the module the backend guard calls
    async with aiohttp.ClientSession() as s:
        async with s.get(backend + "/internal/reference/600519.SH",
                         headers={"X-Portcullis-Internal-Token": "nope"}) as resp:
            assert resp.status == 401
    assert seen == [(b"nope", TOKEN.encode())]


async def test_internal_routes_do_not_exist_without_a_token(keys: DemoKeys) -> None:
    async with run_backend(keys) as url, aiohttp.ClientSession() as s:
        for path in ("/internal/restricted", "/internal/reference/600519.SH",
                     "/internal/accounts/A1/facts"):
            async with s.get(url + path, headers={"X-Portcullis-Internal-Token": TOKEN}) as resp:
                assert resp.status == 404


async def test_ttl_cache_unit() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(1.0, max_stale=0.0, size=10, clock=clock)
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await cache.get("k", fetch) == 1
    assert await cache.get("k", fetch) == 1
    clock.now += 1.0
    assert await cache.get("k", fetch) == 2

    async def broken() -> int:
        raise OSError("down")

    clock.now += 1.0
    with pytest.raises(ProviderUnavailable):  # max_stale 0: no grace at all
        await cache.get("k", broken)
