"""The policy input document v1 (docs/POLICIES.md), and the facts step's counters."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authn.tokens import Subject
from gateway.config import RouteConfig, parse
from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.policy.engine import BaselinePolicy
from gateway.policy.facts import Facts, body_accounts, exchange_clock, seconds_to_day_end
from gateway.policy.input import build_input
from gateway.policy.providers import MISS, Restricted
from gateway.policy.rego import RegoPolicy
from gateway.state.base import Batch, StateStore
from gateway.state.memory import Keyspace, MemoryStore
from gateway.steps.facts import FetchFacts

V1_MEMBERS = {"request", "subject", "device", "network", "risk", "mfa", "clock", "order", "cancel",
              "transfer", "body_accounts", "instrument", "quote", "account", "position", "counters",
              "restricted", "confirmation"}

# 2026-11-25 09:31:05 in Shanghai (UTC+8) is 01:31:05 UTC.
T_0931 = datetime(2026, 11, 25, 1, 31, 5, tzinfo=UTC).timestamp()


def _routes(**extra: Any) -> dict[str, RouteConfig]:
    routes = [
        {"name": "order_place", "methods": ["POST"], "path": "/api/accounts/{account}/orders",
         "upstream": "t", "tier": "trade", "account_param": "account", "body_kind": "order"},
        {"name": "order_cancel", "methods": ["DELETE"], "path": "/api/accounts/{account}/orders/{order_id}",
         "upstream": "t", "tier": "trade", "account_param": "account", "body_kind": "cancel"},
        {"name": "transfer", "methods": ["POST"], "path": "/api/accounts/{account}/transfers",
         "upstream": "t", "tier": "transfer", "account_param": "account", "body_kind": "transfer"},
        {"name": "positions", "path": "/api/accounts/{account}/positions", "upstream": "t",
         "tier": "read", "account_param": "account", "account_query": "account"},
    ]
    cfg = parse({"gateway": {"security": False}, "upstreams": {"t": {"url": "http://x"}},
                 "routes": routes, **extra}, Path("."))
    return {r.name: r for r in cfg.routes}


ROUTES = _routes()


def _subject(auth_time: int | None = None, acr: str | None = "urn:portcullis:acr:pwd") -> Subject:
    return Subject(sub="alice", iss="i", accounts=("A1",), roles=("client",), acr=acr, amr=("pwd",),
                   auth_time=auth_time, jti="j", exp=2**31, iat=None, kid=None, cnf_jkt=None,
                   token_digest=b"d", claims={})


def _ctx(route: str, *, body: Any = None, params: dict[str, str] | None = None, now: float = T_0931,
         headers: dict[str, str] | None = None, query: str = "", rid: str = "rid",
         subject: Subject | None = None) -> RequestContext:
    raw = orjson.dumps(body) if body is not None else None
    return RequestContext(
        request_id=rid, method="POST", path="/p", query=query, route=ROUTES[route],
        params=params if params is not None else {"account": "A1"},
        headers=CIMultiDictProxy(CIMultiDict(headers or {})), client_ip="198.51.100.7",
        client_port=1, scheme="https", started=0.0, now=now, body=raw, json_body=body,
        subject=subject or _subject(auth_time=int(now) - 1200))


ORDER = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1450.0, "type": "limit",
         "client_order_id": "c1"}


# --------------------------------------------------------------------------
# Sections of v1


def test_every_member_is_present_even_without_facts() -> None:
    doc = build_input(_ctx("positions", params={"account": "A1"}, query="account=A1&account=A2"))
    assert set(doc) == V1_MEMBERS
    assert doc["request"]["query_accounts"] == ["A1", "A1", "A2"]
    for member in ("order", "cancel", "transfer", "instrument", "quote", "account", "position",
                   "counters", "restricted"):
        assert doc[member] is None, member
    assert doc["body_accounts"] == [] and doc["confirmation"] == {"risk_warning_acknowledged": False}
    assert doc["clock"]["trading_day"] is None
    orjson.dumps(doc)  # serialisable as is


@pytest.mark.parametrize("members", [("request", "subject"), ("order", "clock", "no_such_member"), ()])
@pytest.mark.parametrize("route", ["order_place", "order_cancel", "transfer", "positions"])
def test_a_member_selection_is_the_full_document_cut_down(route: str, members: tuple[str, ...]) -> None:
    ctx = _ctx(route, body=ORDER if route == "order_place" else None,
               params={"account": "A1", "order_id": "o-1"})
    full = build_input(ctx)
    part = build_input(ctx, members)
    assert part == {m: full[m] for m in members if m in V1_MEMBERS}
    assert list(part) == [m for m in members if m in V1_MEMBERS]  # in the order asked


def test_engines_judge_their_selection_as_they_judge_the_whole_input() -> None:
    bundle = RegoPolicy.from_directory(Path(__file__).resolve().parent.parent / "policies")
    assert bundle.input_members is not None and set(bundle.input_members) < V1_MEMBERS
    for route in ("order_place", "order_cancel", "transfer", "positions"):
        for subject in (_subject(auth_time=int(T_0931) - 60), _subject(None, acr=None)):
            ctx = _ctx(route, body=ORDER if route == "order_place" else None, subject=subject,
                       params={"account": "A1", "order_id": "o-1"})
            for engine in (bundle, BaselinePolicy()):
                assert (engine.evaluate_sync(build_input(ctx, engine.input_members))
                        == engine.evaluate_sync(build_input(ctx))), (route, engine.version)
    # The baseline's role rule still refuses on its selection: an admin-tier route admits only admins.
    ctx = _ctx("positions")
    ctx.route = dataclasses.replace(ctx.route, tier="admin")
    assert BaselinePolicy().evaluate_sync(build_input(ctx, BaselinePolicy.input_members)).allow is False


def test_order_section_keeps_client_types() -> None:
    body = {**ORDER, "qty": "100", "extra": 1}
    doc = build_input(_ctx("order_place", body=body))
    assert doc["order"] == {"symbol": "600519.SH", "side": "buy", "qty": "100", "price": 1450.0,
                            "type": "limit", "client_order_id": "c1", "account": None}
    assert doc["cancel"] is None and doc["transfer"] is None
    assert build_input(_ctx("order_place", body=[1, 2]))["order"]["symbol"] is None


def test_cancel_and_transfer_sections() -> None:
    cancel = build_input(_ctx("order_cancel", params={"account": "A1", "order_id": "ord-1"}))
    assert cancel["cancel"] == {"order_id": "ord-1", "symbol": None, "side": None, "status": None,
                                "account": None} and cancel["order"] is None
    body = {"direction": "out", "amount": 5000, "bank_account_id": "bank-a1-1"}
    t = build_input(_ctx("transfer", body=body))
    assert t["transfer"] == {"direction": "out", "amount": 5000, "currency": None,
                             "bank_account_id": "bank-a1-1", "account": None}


def test_body_accounts_found_anywhere() -> None:
    body = {"account": "A1", "legs": [{"account_id": "B9"}, {"x": {"account": 7}}],
            "meta": {"account": {"nested": "object is not an id"}}}
    assert body_accounts(body) == ["A1", "B9", 7]
    doc = build_input(_ctx("order_place", body={**ORDER, "account": "B9"}))
    assert doc["body_accounts"] == ["B9"] and doc["order"]["account"] == "B9"


def test_subject_mfa_and_confirmation() -> None:
    doc = build_input(_ctx("order_place", body=ORDER,
                           headers={"X-Portcullis-Risk-Acknowledged": "true", "User-Agent": "app/1"}))
    assert doc["mfa"] == {"acr": "urn:portcullis:acr:pwd", "age_s": 1200}
    assert doc["subject"]["auth_time"] == int(T_0931) - 1200
    assert doc["confirmation"] == {"risk_warning_acknowledged": True}
    assert doc["device"] == {"id": None, "user_agent": "app/1"}
    no_auth_time = build_input(_ctx("order_place", body=ORDER, subject=_subject(None, None)))
    assert no_auth_time["mfa"] == {"acr": None, "age_s": None}
    for value in ("false", "1", "yes", ""):
        d = build_input(_ctx("order_place", body=ORDER, headers={"X-Portcullis-Risk-Acknowledged": value}))
        assert d["confirmation"]["risk_warning_acknowledged"] is False


def test_facts_are_placed_as_given() -> None:
    ctx = _ctx("order_place", body=ORDER)
    ctx.facts = Facts(instrument={"symbol": "600519.SH"}, quote={"bid": 1.0, "ask": 2.0, "last": 1.5},
                      account={"id": "A1"}, position={"qty": 0}, restricted={"symbol": False, "person": False},
                      trading_day=True, counters={"orders_today": 1})
    doc = build_input(ctx)
    assert doc["instrument"] == {"symbol": "600519.SH"} and doc["account"] == {"id": "A1"}
    assert doc["clock"]["trading_day"] is True and doc["counters"] == {"orders_today": 1}


# --------------------------------------------------------------------------
# The exchange clock


def test_clock_in_shanghai_time() -> None:
    assert exchange_clock(T_0931 + 0.5, True) == {
        "epoch": T_0931 + 0.5, "tz": "Asia/Shanghai", "date": "2026-11-25", "weekday": 3,
        "time": "09:31:05", "second_of_day": 34265, "trading_day": True}


@pytest.mark.parametrize(("utc", "date", "weekday", "second"), [
    ((2026, 11, 24, 15, 59, 59), "2026-11-24", 2, 86399),   # 23:59:59 Tuesday in Shanghai
    ((2026, 11, 24, 16, 0, 0), "2026-11-25", 3, 0),         # midnight: already Wednesday there
    ((2026, 11, 25, 1, 30, 0), "2026-11-25", 3, 9 * 3600 + 30 * 60),  # the open
    ((2026, 11, 25, 7, 0, 0), "2026-11-25", 3, 15 * 3600),  # the close
    ((2026, 11, 29, 16, 0, 0), "2026-11-30", 1, 0),         # Sunday UTC, Monday in Shanghai
])
def test_clock_boundaries(utc: tuple[int, int, int, int, int, int], date: str, weekday: int, second: int) -> None:
    now = datetime(*utc, tzinfo=UTC).timestamp()
    clock = exchange_clock(now, None)
    assert (clock["date"], clock["weekday"], clock["second_of_day"]) == (date, weekday, second)


def test_seconds_to_day_end() -> None:
    midnight = datetime(2026, 11, 24, 16, 0, 0, tzinfo=UTC).timestamp()
    assert seconds_to_day_end(midnight - 1) == pytest.approx(1)
    assert seconds_to_day_end(midnight) == pytest.approx(86400)
    assert seconds_to_day_end(T_0931) == pytest.approx(86400 - 34265)


def test_body_kind_is_validated() -> None:
    def route(**kw: Any) -> dict[str, Any]:
        return {"routes": [{"path": "/a/{account}", "upstream": "t", "tier": "trade", **kw}]}

    for bad, message in ((route(body_kind="buy"), "body_kind"), (route(body_kind="cancel"), "order_id"),
                         ({"routes": [{"path": "/a", "upstream": "t", "tier": "read",
                                       "body_kind": "order"}]}, "trade and transfer")):
        with pytest.raises(ConfigError, match=message):
            parse({"gateway": {"security": False}, "upstreams": {"t": {"url": "http://x"}}, **bad},
                  Path("."))


def test_providers_and_policy_sections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = {"gateway": {"security": False}, "upstreams": {"t": {"url": "http://x"}}}
    monkeypatch.setenv("PT_TOKEN", "s3cret")
    cfg = parse({**base, "providers": {"upstream": "t", "internal_token": "${PT_TOKEN}",
                                       "account_ttl": 2}}, tmp_path)
    assert cfg.providers is not None and cfg.providers.internal_token == "s3cret"
    assert cfg.providers.account_ttl == 2 and cfg.policy.engine == "baseline"
    monkeypatch.delenv("PT_TOKEN")
    with pytest.raises(ConfigError, match="providers.internal_token"):
        parse({**base, "providers": {"upstream": "t", "internal_token": "${PT_TOKEN}"}}, tmp_path)
    with pytest.raises(ConfigError, match="providers.upstream"):
        parse({**base, "providers": {"upstream": "nope", "internal_token": "x"}}, tmp_path)
    with pytest.raises(ConfigError, match="providers.tll"):
        parse({**base, "providers": {"upstream": "t", "internal_token": "x", "tll": 1}}, tmp_path)
    with pytest.raises(ConfigError, match="policy.bundle"):
        parse({**base, "policy": {"engine": "rego"}}, tmp_path)
    (tmp_path / "bundle").mkdir()
    cfg = parse({**base, "policy": {"engine": "rego", "bundle": "bundle", "time_budget_ms": 20}}, tmp_path)
    assert cfg.policy.bundle == tmp_path / "bundle" and cfg.policy.time_budget_ms == 20


# --------------------------------------------------------------------------
# Counters through the state store (no providers): MemoryStore and real Redis


class CountingStore:
    """Wraps a real store and counts its round trips (batches and single calls)."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.round_trips = 0

    def batch(self) -> Batch:
        self.round_trips += 1
        return self.inner.batch()

    def __getattr__(self, name: str) -> Any:
        self.round_trips += 1
        return getattr(self.inner, name)


async def _counters(store: StateStore) -> None:
    counting = CountingStore(store)
    step = FetchFacts(None, counting)

    async def order(body: dict[str, Any], rid: str, now: float = T_0931) -> dict[str, Any]:
        ctx = _ctx("order_place", body=body, rid=rid, now=now)
        await step(ctx)
        assert ctx.facts is not None and ctx.facts.counters is not None
        doc = build_input(ctx)
        assert doc["counters"] == ctx.facts.counters and doc["instrument"] is None
        return ctx.facts.counters

    first = await order(ORDER, "r1")
    assert first == {"orders_today": 1, "cancels_today": 0, "actions_last_second": 1,
                     "notional_today": 145000.0, "duplicate_client_order_id": False}
    assert counting.round_trips == 1  # ONE batch per trade request
    same_again = await order(ORDER, "r2", T_0931 + 0.5)  # the retry after a step-up: same body
    assert same_again["duplicate_client_order_id"] is False
    assert (same_again["orders_today"], same_again["actions_last_second"]) == (2, 2)
    other = await order({**ORDER, "qty": 200}, "r3", T_0931 + 0.7)  # same client_order_id, new body
    assert other["duplicate_client_order_id"] is True and other["notional_today"] == 145000.0 * 4
    later = await order({**ORDER, "client_order_id": "c2"}, "r4", T_0931 + 5)
    assert later["actions_last_second"] == 1 and later["orders_today"] == 4
    bad = await order({**ORDER, "qty": "lots", "client_order_id": None}, "r5", T_0931 + 5.1)
    assert bad["notional_today"] == later["notional_today"]  # not well formed: no notional

    cancel = _ctx("order_cancel", params={"account": "A1", "order_id": "ord-1"}, rid="r6",
                  now=T_0931 + 5.2)
    await step(cancel)
    assert cancel.facts is not None and cancel.facts.counters is not None
    assert cancel.facts.counters["cancels_today"] == 1 and cancel.facts.counters["orders_today"] == 5
    assert cancel.facts.counters["actions_last_second"] == 3

    transfer = _ctx("transfer", body={"direction": "out", "amount": 1}, rid="r7")
    await step(transfer)
    assert transfer.facts is not None and transfer.facts.counters is None  # not counted

    # A new exchange day (Shanghai midnight) starts from zero.
    tomorrow = datetime(2026, 11, 25, 16, 0, 1, tzinfo=UTC).timestamp()
    fresh = await order(ORDER, "r8", tomorrow)
    assert (fresh["orders_today"], fresh["duplicate_client_order_id"]) == (1, False)


async def test_counters_on_memory_store() -> None:
    keyspace = Keyspace(clock=lambda: 0.0)
    await _counters(MemoryStore(keyspace=keyspace))
    # The daily counter expires at the end of the exchange day (plus a margin).
    assert keyspace.deadlines["ctr:orders:A1:2026-11-25"] == pytest.approx(86400 - 34265 + 60, abs=1)


async def test_counters_on_redis(redis_store: StateStore, redis_url: str, redis_prefix: str) -> None:
    await _counters(redis_store)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        ttl_ms = await client.pttl(redis_prefix + "ctr:orders:A1:2026-11-25")
    finally:
        await client.aclose()
    assert 0 < ttl_ms <= (seconds_to_day_end(T_0931) + 60) * 1000 + 1


# --------------------------------------------------------------------------
# A cancel: the order being cancelled and its instrument, beside the other lookups


class FakeProviders:
    """In-memory providers with caches that start cold; counts the lookups."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.warm: dict[tuple[str, Any], Any] = {}
        self.orders = {("A1", "ord-1"): {"order_id": "ord-1", "account": "A1", "symbol": "00700.HK",
                                         "side": "sell", "status": "accepted"}}

    def cached(self, kind: str, key: Any) -> Any:
        return self.warm.get((kind, key), MISS)

    async def _answer(self, kind: str, key: Any, value: Any) -> Any:
        self.calls.append(kind)
        self.warm[(kind, key)] = value
        return value

    async def instrument(self, symbol: str) -> Any:
        return await self._answer("instrument", symbol, {"symbol": symbol, "market": "hk_connect"})

    async def bbo(self, symbol: str) -> Any:
        return await self._answer("bbo", symbol, {"bid": 1.0, "ask": 1.0, "last": 1.0})

    async def account(self, account: str) -> Any:
        return await self._answer("account", account, {"id": account, "customer_id": "alice"})

    async def position(self, account: str, symbol: str) -> Any:
        return await self._answer("position", (account, symbol), None)

    async def order(self, account: str, order_id: str) -> Any:
        return await self._answer("order", (account, order_id), self.orders.get((account, order_id)))

    async def restricted(self) -> Any:
        return await self._answer("restricted", None, Restricted(frozenset(), frozenset()))

    async def is_trading_day(self, day: Any) -> Any:
        return await self._answer("is_trading_day", day, True)

    async def close(self) -> None:
        return None


async def test_a_cancel_looks_up_the_order_and_its_instrument() -> None:
    providers = FakeProviders()
    counting = CountingStore(MemoryStore(keyspace=Keyspace(clock=lambda: 0.0)))
    step = FetchFacts(providers, counting)  # type: ignore[arg-type]

    async def cancel(order_id: str) -> dict[str, Any]:
        ctx = _ctx("order_cancel", params={"account": "A1", "order_id": order_id})
        await step(ctx)
        return build_input(ctx)

    doc = await cancel("ord-1")
    assert doc["cancel"] == {"order_id": "ord-1", "symbol": "00700.HK", "side": "sell",
                             "status": "accepted", "account": "A1"}
    assert doc["instrument"] == {"symbol": "00700.HK", "market": "hk_connect"}
    assert doc["quote"] is None and doc["position"] is None and doc["counters"]["cancels_today"] == 1
    assert sorted(providers.calls) == ["account", "instrument", "is_trading_day", "order", "restricted"]
    assert counting.round_trips == 1  # the counters' one batch: the order lookup costs none

    providers.calls.clear()
    again = await cancel("ord-1")  # warm caches: no lookup at all
    assert providers.calls == [] and again["instrument"] == doc["instrument"]

    unknown = await cancel("ord-2")  # unknown (or another account's): nothing but the id
    assert unknown["cancel"] == {"order_id": "ord-2", "symbol": None, "side": None, "status": None,
                                 "account": None}
    assert unknown["instrument"] is None
    assert "order" in providers.calls and "instrument" not in providers.calls
