"""The demo trading backend, run for real on loopback with aiohttp_client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from demo_backend import create_app
from demo_backend.data import INSTRUMENTS
from demo_backend.errors import DemoError
from demo_backend.identity import AssertionVerifier, load_hmac_key
from demo_backend.market import Market
from gateway.demo_keys import DemoKeys, ensure_demo_keys, load_private_key

ROOT = Path(__file__).resolve().parent.parent
START = 1_767_225_600.0  # 2026-01-01T08:00:00+08:00

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> DemoKeys:
    return ensure_demo_keys(tmp_path / "keys")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def assertion(
    keys: DemoKeys,
    *,
    sub: str = "alice",
    accounts: list[str] | None = None,
    now: float | None = None,
    **overrides: Any,
) -> str:
    """An identity assertion exactly as the gateway signs it."""
    iat = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": "portcullis-gateway",
        "aud": "portcullis-upstream",
        "sub": sub,
        "accounts": ["A1"] if accounts is None else accounts,
        "roles": ["client"],
        "acr": "urn:portcullis:acr:pwd",
        "risk": "low",
        "rid": "req-1",
        "iat": iat,
        "exp": iat + 60,
    }
    claims.update(overrides)
    return jwt.encode(
        claims,
        load_private_key(keys.identity_key),
        algorithm="ES256",
        headers={"kid": keys.identity_kid, "typ": "JWT"},
    )


def auth(keys: DemoKeys, **kwargs: Any) -> dict[str, str]:
    return {"X-Portcullis-Identity": assertion(keys, **kwargs)}


@pytest.fixture
async def client(
    aiohttp_client: MakeClient, keys: DemoKeys, clock: FakeClock
) -> Client:
    return await aiohttp_client(create_app(keys.identity_jwks, clock=clock))


async def _error(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


# --------------------------------------------------------------------------
# Health and the identity assertion


async def test_healthz_needs_no_assertion(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_valid_assertion_is_accepted(client: Client, keys: DemoKeys) -> None:
    resp = await client.get("/api/accounts/A1", headers=auth(keys))
    assert resp.status == 200


async def test_missing_assertion_is_401(client: Client) -> None:
    await _error(await client.get("/api/quotes/600519.SH"), 401, "identity_assertion_invalid")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(keys: DemoKeys, alg: str) -> tuple[str, str]:
    """Header and payload segments of a valid-looking assertion with another alg."""
    good = assertion(keys)
    _, payload, _ = good.split(".")
    header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": keys.identity_kid}).encode())
    return header, payload


def _alg_none(keys: DemoKeys) -> str:
    header, payload = _unsigned(keys, "none")
    return f"{header}.{payload}."


def _hs256_with_public_key(keys: DemoKeys) -> str:
    header, payload = _unsigned(keys, "HS256")
    secret = keys.identity_jwks.read_bytes()
    sig = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


def _other_key(keys: DemoKeys) -> str:
    other = ec.generate_private_key(ec.SECP256R1())
    iat = int(time.time())
    claims = {
        "iss": "portcullis-gateway", "aud": "portcullis-upstream", "sub": "alice",
        "accounts": ["A1"], "roles": ["client"], "iat": iat, "exp": iat + 60,
    }
    return jwt.encode(claims, other, algorithm="ES256", headers={"kid": keys.identity_kid})


def _tampered(keys: DemoKeys) -> str:
    header, _, sig = assertion(keys).split(".")
    iat = int(time.time())
    forged = {
        "iss": "portcullis-gateway", "aud": "portcullis-upstream", "sub": "alice",
        "accounts": ["A1", "B9"], "roles": ["client"], "iat": iat, "exp": iat + 60,
    }
    return f"{header}.{_b64(json.dumps(forged).encode())}.{sig}"


BAD_ASSERTIONS: dict[str, Callable[[DemoKeys], str]] = {
    "expired": lambda k: assertion(k, now=time.time() - 120),
    "wrong_aud": lambda k: assertion(k, aud="portcullis"),
    "wrong_iss": lambda k: assertion(k, iss="https://idp.demo.portcullis.local"),
    "wrong_key": _other_key,
    "alg_none": _alg_none,
    "hs256_public_key_as_secret": _hs256_with_public_key,
    "tampered_payload": _tampered,
    "unknown_kid": lambda k: jwt.encode(
        jwt.decode(assertion(k), options={"verify_signature": False}),
        load_private_key(k.identity_key),
        algorithm="ES256",
        headers={"kid": "not-a-known-kid"},
    ),
    "not_a_jwt": lambda k: "hello",
    "accounts_not_a_list": lambda k: assertion(k, accounts="A1"),  # type: ignore[arg-type]
    "missing_sub": lambda k: assertion(k, sub=""),
    "issued_in_future": lambda k: assertion(k, now=time.time() + 600),
}


@pytest.mark.parametrize("make", BAD_ASSERTIONS.values(), ids=BAD_ASSERTIONS.keys())
async def test_bad_assertion_is_401(
    client: Client, keys: DemoKeys, make: Callable[[DemoKeys], str]
) -> None:
    resp = await client.get("/api/accounts/A1", headers={"X-Portcullis-Identity": make(keys)})
    await _error(resp, 401, "identity_assertion_invalid")


async def test_assertion_expired_within_leeway_is_accepted(client: Client, keys: DemoKeys) -> None:
    headers = auth(keys, now=time.time() - 63)  # exp three seconds ago, leeway five
    assert (await client.get("/api/accounts/A1", headers=headers)).status == 200


async def test_jwks_without_usable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r"}]}')
    with pytest.raises(ValueError, match="no ES256"):
        create_app(path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/accounts/B9"),
        ("GET", "/api/accounts/B9/positions"),
        ("GET", "/api/accounts/B9/orders"),
        ("POST", "/api/accounts/B9/orders"),
        ("DELETE", "/api/accounts/B9/orders/ord-1"),
        ("POST", "/api/accounts/B9/transfers"),
    ],
)
async def test_account_not_in_assertion_is_403(
    client: Client, keys: DemoKeys, method: str, path: str
) -> None:
    resp = await client.request(method, path, headers=auth(keys, accounts=["A1"]), json={})
    await _error(resp, 403, "account_forbidden")


async def test_unknown_account_in_assertion_is_404(client: Client, keys: DemoKeys) -> None:
    resp = await client.get("/api/accounts/Z0", headers=auth(keys, accounts=["Z0"]))
    await _error(resp, 404, "unknown_account")


async def test_error_carries_the_request_id(client: Client) -> None:
    resp = await client.get("/api/accounts/A1", headers={"X-Request-Id": "rid-42"})
    body = await _error(resp, 401, "identity_assertion_invalid")
    assert body["request_id"] == "rid-42"


async def test_unknown_route_is_json_404(client: Client) -> None:
    await _error(await client.get("/nope"), 404, "not_found")


async def test_wrong_method_is_json_405(client: Client, keys: DemoKeys) -> None:
    resp = await client.put("/api/accounts/A1/orders", headers=auth(keys))
    await _error(resp, 405, "method_not_allowed")


async def test_internal_token_guards_the_fact_routes_only(
    aiohttp_client: MakeClient, keys: DemoKeys
) -> None:
    client = await aiohttp_client(create_app(keys.identity_jwks, internal_token="s3cret"))
    assert (await client.get("/healthz")).status == 200
    # Client routes trust the identity assertion; the internal token is not theirs.
    assert (await client.get("/api/quotes/600519.SH", headers=auth(keys))).status == 200
    await _error(await client.get("/api/quotes/600519.SH"), 401, "identity_assertion_invalid")
    for wrong in ({}, {"X-Portcullis-Internal-Token": "s3cre"}, auth(keys)):
        await _error(await client.get("/internal/restricted", headers=wrong), 401, "internal_token_invalid")
    ok = await client.get("/internal/restricted", headers={"X-Portcullis-Internal-Token": "s3cret"})
    assert ok.status == 200


async def test_fact_routes_do_not_exist_without_an_internal_token(
    aiohttp_client: MakeClient, keys: DemoKeys
) -> None:
    client = await aiohttp_client(create_app(keys.identity_jwks))
    resp = await client.get("/internal/restricted", headers={"X-Portcullis-Internal-Token": ""})
    await _error(resp, 404, "not_found")


# --------------------------------------------------------------------------
# Quotes


QUOTE_CASES = {
    "600519.SH": ("cn_a", "main", "CNY", 100, 1595.00, 1305.00),
    "601318.SH": ("cn_a", "main", "CNY", 100, 62.92, 51.48),
    "000001.SZ": ("cn_a", "main", "CNY", 100, 12.65, 10.35),
    "688981.SH": ("cn_a", "star", "CNY", 1, 144.00, 96.00),
    "300750.SZ": ("cn_a", "chinext", "CNY", 100, 300.00, 200.00),
    "600137.SH": ("cn_a", "main", "CNY", 100, 8.40, 7.60),
    "00700.HK": ("hk_connect", "hk_main", "HKD", 100, None, None),
    "09988.HK": ("hk_connect", "hk_main", "HKD", 100, None, None),
}


@pytest.mark.parametrize("symbol", QUOTE_CASES)
async def test_quote_for_each_market(client: Client, keys: DemoKeys, symbol: str) -> None:
    market, board, currency, lot, up, down = QUOTE_CASES[symbol]
    resp = await client.get(f"/api/quotes/{symbol}", headers=auth(keys))
    assert resp.status == 200
    q = await resp.json()
    assert q["symbol"] == symbol
    assert (q["market"], q["board"], q["currency"]) == (market, board, currency)
    assert q["board_lot"] == lot
    assert (q["limit_up"], q["limit_down"]) == (up, down)
    assert q["bid"] <= q["last"] <= q["ask"]
    assert q["prev_close"] > 0
    assert q["time"].endswith("+08:00")


async def test_st_stock_is_flagged_with_a_5_percent_band(client: Client, keys: DemoKeys) -> None:
    q = await (await client.get("/api/quotes/600137.SH", headers=auth(keys))).json()
    assert q["st"] is True and q["limit_pct"] == 5


async def test_star_buys_start_at_200_shares(client: Client, keys: DemoKeys) -> None:
    q = await (await client.get("/api/quotes/688981.SH", headers=auth(keys))).json()
    assert q["min_qty"] == 200


async def test_unknown_symbol_is_404(client: Client, keys: DemoKeys) -> None:
    await _error(await client.get("/api/quotes/999999.SH", headers=auth(keys)), 404,
                 "unknown_symbol")


def test_prices_stay_inside_the_bands_over_a_long_walk() -> None:
    clock = FakeClock()
    market = Market(clock, seed=3)
    for _ in range(20_000):
        clock.now += 0.2
        for symbol, inst in INSTRUMENTS.items():
            last = market.last_price(symbol)
            limits = inst.limits
            if limits is not None:
                assert limits[0] <= last <= limits[1]


def test_prices_move_and_are_deterministic_for_a_seed() -> None:
    a_clock, b_clock = FakeClock(), FakeClock()
    a, b = Market(a_clock, seed=11), Market(b_clock, seed=11)
    seen = set()
    for _ in range(100):
        a_clock.now += 0.2
        b_clock.now += 0.2
        assert a.quote_bytes("600519.SH") == b.quote_bytes("600519.SH")
        seen.add(a.last_price("600519.SH"))
    assert len(seen) > 10


def test_price_is_constant_within_one_tick() -> None:
    clock = FakeClock()
    market = Market(clock)
    first = market.quote_bytes("00700.HK")
    clock.now += 0.05
    assert market.quote_bytes("00700.HK") == first


# --------------------------------------------------------------------------
# Accounts


async def test_alice_profile(client: Client, keys: DemoKeys) -> None:
    p = await (await client.get("/api/accounts/A1", headers=auth(keys))).json()
    assert p["customer_id"] == "alice"
    assert p["investor_level"] == "C4" and p["lowest_category"] is False
    assert p["assets_cny"] == 1_200_000 and p["trading_months"] == 60
    assert p["star_eligible"] is True and p["hk_connect_eligible"] is True
    assert {"name", "id_number", "phone", "address"} <= p.keys()
    bank = p["bank_accounts"][0]
    assert bank["number"].endswith(bank["number_masked"][-4:])
    assert "*" in bank["number_masked"]
    assert p["single_trade_limit"] > 0 and p["daily_limit"] >= p["single_trade_limit"]


async def test_bob_profile_is_lowest_category(client: Client, keys: DemoKeys) -> None:
    headers = auth(keys, sub="bob", accounts=["B9"])
    p = await (await client.get("/api/accounts/B9", headers=headers)).json()
    assert p["investor_level"] == "C1" and p["lowest_category"] is True
    assert p["assets_cny"] == 80_000 and p["trading_months"] == 3
    assert p["star_eligible"] is False and p["hk_connect_eligible"] is False


async def test_positions_keep_todays_buys_apart(client: Client, keys: DemoKeys) -> None:
    body = await (await client.get("/api/accounts/A1/positions", headers=auth(keys))).json()
    pos = {p["symbol"]: p for p in body["positions"]}
    assert pos["000001.SZ"]["qty"] == 5000
    assert pos["000001.SZ"]["today_bought"] == 1000
    assert pos["000001.SZ"]["sellable"] == 4000
    assert body["cash"] == 300_000.0


async def test_todays_buys_become_sellable_the_next_day(
    client: Client, keys: DemoKeys, clock: FakeClock
) -> None:
    clock.now += 86_400
    body = await (
        await client.get("/api/accounts/A1/positions", headers=auth(keys))
    ).json()
    pos = {p["symbol"]: p for p in body["positions"]}
    assert pos["000001.SZ"]["sellable"] == 5000


# --------------------------------------------------------------------------
# Orders


def _order(**overrides: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "symbol": "600519.SH",
        "side": "buy",
        "qty": 100,
        "price": 1450.0,
        "type": "limit",
        "client_order_id": "c-1",
    }
    order.update(overrides)
    return order


async def _place(client: Client, keys: DemoKeys, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/api/accounts/A1/orders", headers=auth(keys), json=body)
    assert resp.status == 201, await resp.text()
    order: dict[str, Any] = await resp.json()
    return order


async def test_limit_order_is_accepted_and_listed(client: Client, keys: DemoKeys) -> None:
    resp = await client.post("/api/accounts/A1/orders", headers=auth(keys), json=_order())
    assert resp.status == 201
    order = await resp.json()
    assert order["status"] == "accepted" and order["filled_qty"] == 0
    assert order["order_id"].startswith("ord-")
    listed = await (await client.get("/api/accounts/A1/orders", headers=auth(keys))).json()
    assert [o["order_id"] for o in listed["orders"]] == [order["order_id"]]


async def test_market_buy_fills_and_counts_as_bought_today(client: Client, keys: DemoKeys) -> None:
    body = _order(symbol="601318.SH", type="market", price=None, qty=200)
    order = await _place(client, keys, body)
    assert order["status"] == "filled" and order["filled_qty"] == 200
    positions = await (await client.get("/api/accounts/A1/positions", headers=auth(keys))).json()
    pos = {p["symbol"]: p for p in positions["positions"]}["601318.SH"]
    assert (pos["qty"], pos["today_bought"], pos["sellable"]) == (200, 200, 0)
    assert positions["cash"] == pytest.approx(300_000 - 200 * order["avg_fill_price"], abs=0.01)


async def test_market_sell_fills_from_the_position(client: Client, keys: DemoKeys) -> None:
    body = _order(side="sell", type="market", price=None, qty=100)
    order = await _place(client, keys, body)
    assert order["status"] == "filled"
    positions = await (await client.get("/api/accounts/A1/positions", headers=auth(keys))).json()
    assert {p["symbol"]: p["qty"] for p in positions["positions"]}["600519.SH"] == 100


async def test_selling_todays_buys_is_422(client: Client, keys: DemoKeys) -> None:
    body = _order(symbol="000001.SZ", side="sell", qty=4100, price=11.5)
    resp = await client.post("/api/accounts/A1/orders", headers=auth(keys), json=body)
    await _error(resp, 422, "insufficient_position")


async def test_market_buy_beyond_cash_is_422(client: Client, keys: DemoKeys) -> None:
    body = _order(type="market", price=None, qty=1000)  # ~1.45 million CNY
    resp = await client.post("/api/accounts/A1/orders", headers=auth(keys), json=body)
    await _error(resp, 422, "insufficient_funds")


async def test_duplicate_client_order_id_is_409(client: Client, keys: DemoKeys) -> None:
    await client.post("/api/accounts/A1/orders", headers=auth(keys), json=_order())
    resp = await client.post("/api/accounts/A1/orders", headers=auth(keys), json=_order())
    await _error(resp, 409, "duplicate_order")


async def test_cancel_open_order(client: Client, keys: DemoKeys) -> None:
    order = await (
        await client.post("/api/accounts/A1/orders", headers=auth(keys), json=_order())
    ).json()
    resp = await client.delete(f"/api/accounts/A1/orders/{order['order_id']}", headers=auth(keys))
    assert resp.status == 200
    assert (await resp.json())["status"] == "cancelled"


async def test_cancel_twice_is_409(client: Client, keys: DemoKeys) -> None:
    order = await (
        await client.post("/api/accounts/A1/orders", headers=auth(keys), json=_order())
    ).json()
    path = f"/api/accounts/A1/orders/{order['order_id']}"
    await client.delete(path, headers=auth(keys))
    await _error(await client.delete(path, headers=auth(keys)), 409, "order_not_cancellable")


async def test_cancel_filled_order_is_409(client: Client, keys: DemoKeys) -> None:
    body = _order(type="market", price=None)
    order = await _place(client, keys, body)
    resp = await client.delete(f"/api/accounts/A1/orders/{order['order_id']}", headers=auth(keys))
    await _error(resp, 409, "order_not_cancellable")


async def test_cancel_unknown_order_is_404(client: Client, keys: DemoKeys) -> None:
    resp = await client.delete("/api/accounts/A1/orders/ord-nope", headers=auth(keys))
    await _error(resp, 404, "unknown_order")


async def test_another_accounts_order_is_unknown(client: Client, keys: DemoKeys) -> None:
    both = auth(keys, accounts=["A1", "B9"])
    order = await (await client.post("/api/accounts/A1/orders", headers=both, json=_order())).json()
    resp = await client.delete(f"/api/accounts/B9/orders/{order['order_id']}", headers=both)
    await _error(resp, 404, "unknown_order")


INVALID_ORDERS: dict[str, Any] = {
    "not_an_object": [1, 2],
    "missing_symbol": _order(symbol=None),
    "unknown_symbol": _order(symbol="ZZZ"),
    "bad_side": _order(side="short"),
    "qty_string": _order(qty="100"),
    "qty_float": _order(qty=100.5),
    "qty_bool": _order(qty=True),
    "qty_zero": _order(qty=0),
    "qty_negative": _order(qty=-100),
    "bad_type": _order(type="stop"),
    "limit_without_price": _order(price=None),
    "limit_negative_price": _order(price=-1),
    "limit_price_string": _order(price="1450"),
    "limit_price_too_precise": _order(price=1450.0001),
    "market_with_price": _order(type="market", price=1450.0),
    "bad_client_order_id": _order(client_order_id="has spaces"),
}


@pytest.mark.parametrize("body", INVALID_ORDERS.values(), ids=INVALID_ORDERS.keys())
async def test_invalid_order_is_400(client: Client, keys: DemoKeys, body: Any) -> None:
    resp = await client.post("/api/accounts/A1/orders", headers=auth(keys), json=body)
    await _error(resp, 400, "invalid_order")


async def test_order_body_not_json_is_400(client: Client, keys: DemoKeys) -> None:
    resp = await client.post("/api/accounts/A1/orders", headers=auth(keys), data=b"{not json")
    await _error(resp, 400, "invalid_order")


async def test_oversized_body_is_413(client: Client, keys: DemoKeys) -> None:
    resp = await client.post(
        "/api/accounts/A1/orders", headers=auth(keys), data=b"x" * (300 * 1024)
    )
    await _error(resp, 413, "body_too_large")


# --------------------------------------------------------------------------
# Transfers


def _transfer(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "direction": "out",
        "amount": 1000.5,
        "currency": "CNY",
        "bank_account_id": "bank-a1-1",
    }
    body.update(overrides)
    return body


async def test_transfer_out_is_201(client: Client, keys: DemoKeys) -> None:
    resp = await client.post("/api/accounts/A1/transfers", headers=auth(keys), json=_transfer())
    assert resp.status == 201
    t = await resp.json()
    assert t["transfer_id"].startswith("trf-") and t["status"] == "completed"
    assert t["cash_after"] == pytest.approx(300_000 - 1000.5)


async def test_transfer_in_raises_cash(client: Client, keys: DemoKeys) -> None:
    body = _transfer(direction="in", amount=500)
    resp = await client.post("/api/accounts/A1/transfers", headers=auth(keys), json=body)
    t = await resp.json()
    assert t["cash_after"] == 300_500.0


async def test_transfer_out_beyond_cash_is_422(client: Client, keys: DemoKeys) -> None:
    body = _transfer(amount=300_000.01)
    resp = await client.post("/api/accounts/A1/transfers", headers=auth(keys), json=body)
    await _error(resp, 422, "insufficient_funds")


INVALID_TRANSFERS: dict[str, Any] = {
    "not_an_object": "out",
    "bad_direction": _transfer(direction="sideways"),
    "amount_zero": _transfer(amount=0),
    "amount_string": _transfer(amount="100"),
    "amount_too_precise": _transfer(amount=1.001),
    "foreign_currency": _transfer(currency="USD"),
    "missing_bank_account": _transfer(bank_account_id=None),
    "someone_elses_bank_account": _transfer(bank_account_id="bank-b9-1"),
}


@pytest.mark.parametrize("body", INVALID_TRANSFERS.values(), ids=INVALID_TRANSFERS.keys())
async def test_invalid_transfer_is_400(client: Client, keys: DemoKeys, body: Any) -> None:
    resp = await client.post("/api/accounts/A1/transfers", headers=auth(keys), json=body)
    await _error(resp, 400, "invalid_transfer")


# --------------------------------------------------------------------------
# Quote stream


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


@pytest.fixture
async def stream_client(aiohttp_client: MakeClient, keys: DemoKeys) -> Client:
    return await aiohttp_client(create_app(keys.identity_jwks, stream_interval=0.05))


async def test_stream_pushes_quotes_for_subscribed_symbols(
    stream_client: Client, keys: DemoKeys
) -> None:
    async with stream_client.ws_connect("/api/quotes/stream", headers=auth(keys)) as ws:
        await ws.send_json({"subscribe": ["600519.SH", "00700.HK"]})
        assert await _receive(ws) == {"type": "subscribed", "symbols": ["600519.SH", "00700.HK"]}
        symbols = [(await _receive(ws))["symbol"] for _ in range(6)]
        assert set(symbols) == {"600519.SH", "00700.HK"}
        assert symbols.count("600519.SH") >= 2  # pushed again after the snapshot
        await ws.close()
    assert ws.closed


async def test_stream_reports_unknown_symbols(stream_client: Client, keys: DemoKeys) -> None:
    async with stream_client.ws_connect("/api/quotes/stream", headers=auth(keys)) as ws:
        await ws.send_json({"subscribe": ["NOPE.SH"]})
        error = await _receive(ws)
        assert error["type"] == "error" and error["error"] == "unknown_symbol"
        assert error["symbols"] == ["NOPE.SH"]
        assert await _receive(ws) == {"type": "subscribed", "symbols": []}


async def test_stream_unsubscribe_stops_quotes(stream_client: Client, keys: DemoKeys) -> None:
    async with stream_client.ws_connect("/api/quotes/stream", headers=auth(keys)) as ws:
        await ws.send_json({"subscribe": ["000001.SZ"]})
        await _receive(ws)
        await ws.send_json({"unsubscribe": ["000001.SZ"]})
        while (msg := await _receive(ws))["type"] != "unsubscribed":
            pass
        assert msg["symbols"] == []
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.3)


async def test_stream_rejects_invalid_messages(stream_client: Client, keys: DemoKeys) -> None:
    async with stream_client.ws_connect("/api/quotes/stream", headers=auth(keys)) as ws:
        await ws.send_str("not json")
        assert (await _receive(ws))["error"] == "invalid_message"
        await ws.send_json({"subscribe": "600519.SH"})
        assert (await _receive(ws))["error"] == "invalid_message"


async def test_stream_needs_an_assertion(stream_client: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await stream_client.ws_connect("/api/quotes/stream")
    assert info.value.status == 401


# --------------------------------------------------------------------------
# Debug routes


@pytest.mark.parametrize("path", ["/__debug/echo", "/__debug/slow?delay=0"])
async def test_debug_routes_absent_without_the_flag(client: Client, path: str) -> None:
    await _error(await client.get(path), 404, "not_found")


@pytest.fixture
async def debug_client(aiohttp_client: MakeClient, keys: DemoKeys) -> Client:
    return await aiohttp_client(create_app(keys.identity_jwks, debug_routes=True))


async def test_echo_reports_what_arrived(debug_client: Client, keys: DemoKeys) -> None:
    headers = auth(keys) | {"X-Forwarded-For": "203.0.113.7"}
    resp = await debug_client.post("/__debug/echo?a=1&a=2", headers=headers, data=b"hello")
    assert resp.status == 200
    echo = await resp.json()
    assert echo["method"] == "POST" and echo["path"] == "/__debug/echo"
    assert echo["query"] == [["a", "1"], ["a", "2"]]
    assert ["X-Forwarded-For", "203.0.113.7"] in echo["headers"]
    assert echo["body"] == "hello"
    assert echo["identity"]["sub"] == "alice" and echo["identity_error"] is None


async def test_echo_reports_a_bad_assertion(debug_client: Client) -> None:
    echo = await (await debug_client.get("/__debug/echo")).json()
    assert echo["identity"] is None and "missing" in echo["identity_error"]


async def test_slow_waits(debug_client: Client) -> None:
    started = time.monotonic()
    resp = await debug_client.get("/__debug/slow?delay=0.2")
    assert resp.status == 200 and await resp.json() == {"slept": 0.2}
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("delay", ["31", "-1", "soon"])
async def test_slow_refuses_bad_delays(debug_client: Client, delay: str) -> None:
    await _error(await debug_client.get(f"/__debug/slow?delay={delay}"), 400, "invalid_delay")


# --------------------------------------------------------------------------
# The program


def test_main_serves_and_stops_on_sigterm(keys: DemoKeys) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo_backend", "--port", "0",
         "--identity-jwks", str(keys.identity_jwks)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("demo backend listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]

        async def probe() -> int:
            async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as r:
                return r.status

        assert asyncio.run(probe()) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_main_reports_an_unreadable_jwks(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "demo_backend", "--identity-jwks", str(tmp_path / "none.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 2
    assert "cannot read identity JWKS" in proc.stderr


# --------------------------------------------------------------------------
# HS256 assertions (the backend's own key)


def _hs256(key: bytes, **claims: object) -> str:
    now = int(time.time())
    body = {"iss": "portcullis-gateway", "aud": "portcullis-upstream", "sub": "alice",
            "accounts": ["A1"], "roles": ["client"], "acr": None, "risk": "low", "rid": "r",
            "iat": now, "exp": now + 60, **claims}
    return jwt.encode(body, key, algorithm="HS256")


def _hmac_verifier(tmp_path: Path, with_jwks: bool) -> tuple[AssertionVerifier, bytes]:
    keys = ensure_demo_keys(tmp_path / "hs")
    verifier = AssertionVerifier.from_files(keys.identity_jwks if with_jwks else None, keys.identity_hmac)
    return verifier, load_hmac_key(keys.identity_hmac)


def test_hs256_assertion_with_backend_key_accepted(tmp_path: Path) -> None:
    verifier, key = _hmac_verifier(tmp_path, with_jwks=False)
    assert verifier.verify(_hs256(key)).sub == "alice"


@pytest.mark.parametrize("claims", [{"exp": 1}, {"aud": "other"}, {"iss": "someone"}])
def test_hs256_assertion_claims_checked(tmp_path: Path, claims: dict[str, object]) -> None:
    verifier, key = _hmac_verifier(tmp_path, with_jwks=False)
    with pytest.raises(DemoError):
        verifier.verify(_hs256(key, **claims))


def test_hs256_assertion_with_other_key_refused(tmp_path: Path) -> None:
    verifier, _ = _hmac_verifier(tmp_path, with_jwks=True)
    with pytest.raises(DemoError, match="signature"):
        verifier.verify(_hs256(b"k" * 32))


def test_hs256_refused_when_backend_has_no_hmac_key(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "hs")
    verifier = AssertionVerifier.from_files(keys.identity_jwks, None)
    with pytest.raises(DemoError, match="algorithm"):
        verifier.verify(_hs256(load_hmac_key(keys.identity_hmac)))


def test_es256_refused_when_backend_has_only_hmac_key(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "hs")
    verifier = AssertionVerifier.from_files(None, keys.identity_hmac)
    token = jwt.encode({"iss": "portcullis-gateway"}, load_private_key(keys.identity_key), algorithm="ES256")
    with pytest.raises(DemoError, match="algorithm"):
        verifier.verify(token)
