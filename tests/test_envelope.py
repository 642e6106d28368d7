"""SM4-GCM envelopes end to end: a real gateway and the demo backend on loopback, the real Rego engine.

The client side is the SDK's own (gateway/client/envelope.py, StepUpClient): a session key is agreed
at /auth/session-key with the device's DPoP proofs, order bodies are sealed, responses opened. The
policy denies orders above 100 shares, so a denial of an encrypted order shows the policy read the
decrypted body. Every malformed or hostile envelope gets its 4xx code, is audited, counted, and never
reaches the backend (its order book is checked). The replay test runs two gateway processes' worth of
gateways on one real Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import DeviceKey, HttpResponse, StepUpClient, aiohttp_send
from gateway.client.envelope import ENVELOPE_HEADER, ENVELOPE_TYPE, EnvelopeSession, KeyAgreementError, agree
from gateway.crypto.session import EnvelopeHeader, b64e, seal_bodiless, seal_request
from gateway.crypto.sm2 import Sm2PrivateKey
from gateway.policy.rego import RegoPolicy
from gateway.state.redis import RedisStore
from tests.harness import OffsetClock, Stack, audit_records, routes_with_body_kinds, run_stack

POLICY = """package gateway
import rego.v1
decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}} if {
	not is_object(input.order)
} else := {"allow": true, "deny": [], "step_up": null, "obligations": {}} if {
	input.order.qty <= 100
} else := {"allow": false, "deny": [{"code": "order_too_large", "message": "too many shares"}],
	"step_up": null, "obligations": {}}
"""
ORDER = {"symbol": "601318.SH", "side": "buy", "qty": 100, "price": 57.2, "type": "limit"}
ORDERS = "/api/accounts/A1/orders"
TRANSFERS = "/api/accounts/A1/transfers"
PROFILE = "/api/accounts/A1"


@asynccontextmanager
async def envelope_stack(tmp: Path, *, clock: OffsetClock | None = None, routes: list[dict[str, Any]] | None = None,
                         backend_url: str | None = None, state: Any = None,
                         **envelope: Any) -> AsyncIterator[Stack]:
    kwargs: dict[str, Any] = {"policy": RegoPolicy.from_modules([("policy.rego", POLICY)], {}),
                              "clock": clock or OffsetClock()}
    if state is not None:
        kwargs["state"] = state
    cfg = {"agreement_key_file": str(tmp / "agreement.json"), "key_file": str(tmp / "envelope-keys.json"),
           **envelope}
    async with run_stack(tmp, routes=routes or routes_with_body_kinds(), gateway_kwargs=kwargs,
                         backend_url=backend_url, envelope=cfg) as stack:
        yield stack


class Customer:
    """One customer's app: a device key, a DPoP-bound token, the SDK's clients."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession, device: DeviceKey | None = None) -> None:
        self.stack, self.http = stack, http
        self.device = device or DeviceKey.generate()
        self.token = stack.token(extra={"cnf": {"jkt": self.device.thumbprint}})
        self.client = StepUpClient(stack.url, self.token, None, device=self.device)

    def headers(self, method: str, url: str) -> dict[str, str]:
        return self.client.headers(method, url)

    async def agree(self, *, pinned: bytes | None = None) -> EnvelopeSession:
        flow = agree(self.stack.url, self.headers, sub="alice", jkt=self.device.thumbprint, pinned=pinned)
        try:
            method, url, headers, body = next(flow)
            while True:
                async with self.http.request(method, url, headers=headers, data=body) as r:
                    answer = (r.status, await r.read())
                method, url, headers, body = flow.send(answer)
        except StopIteration as done:
            session: EnvelopeSession = done.value
            self.client.envelope = session
            return session

    async def post_sealed(self, path: str, body: bytes, extra: dict[str, str]) -> tuple[int, dict[str, Any]]:
        url = self.stack.url + path
        async with self.http.post(url, data=body, headers={**self.headers("POST", url), **extra}) as r:
            raw = await r.read()  # an encrypted answer stays sealed here: only errors are read
            return r.status, json.loads(raw) if r.content_type == "application/json" else {}


async def _book(stack: Stack) -> list[Any]:
    """The backend's orders for A1 (what was forwarded), read in plaintext through the gateway."""
    async with aiohttp.ClientSession() as s, s.get(stack.url + ORDERS, headers=stack.auth()) as r:
        assert r.status == 200
        return list((await r.json())["orders"])


def _audit(stack: Stack) -> list[dict[str, Any]]:
    return audit_records(stack.tmp / "audit")


async def _metrics(stack: Stack) -> str:
    async with aiohttp.ClientSession() as s, s.get(stack.admin_url + "/metrics") as r:
        return await r.text()


# -- the happy path ---------------------------------------------------------------------------


async def test_an_encrypted_order_is_decrypted_for_the_policy_forwarded_in_plaintext_and_answered_encrypted(
        tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        session = await me.agree()
        before = len(await _book(stack))
        result = await me.client.request(aiohttp_send(http), "POST", ORDERS, ORDER, expect=(201,))
        assert result.response.status == 201, result.response.body
        assert result.response.headers["Content-Type"].startswith(ENVELOPE_TYPE)
        placed = result.response.json()  # opened by the SDK
        assert placed["symbol"] == ORDER["symbol"] and placed["qty"] == 100
        book = await _book(stack)
        assert len(book) == before + 1 and book[-1]["qty"] == 100  # the backend got the plaintext
        # The policy read the decrypted order: 200 shares are denied, encrypted or not.
        big = await me.client.request(aiohttp_send(http), "POST", ORDERS, {**ORDER, "qty": 200}, expect=(403,))
        assert big.response.status == 403 and big.response.json()["error"] == "policy_denied"
        assert len(await _book(stack)) == before + 1
        assert session.sent == 2
        metrics = await _metrics(stack)
    assert 'portcullis_envelope_events_total{event="session_key_issued"} 1.0' in metrics
    assert 'portcullis_envelope_events_total{event="decrypted"} 2.0' in metrics
    assert 'portcullis_envelope_events_total{event="encrypted"} 1.0' in metrics
    [issued] = [r for r in _audit(stack) if r.get("type") == "session_key"]
    assert issued["sub"] == "alice" and issued["device"] == me.device.thumbprint
    assert session.key_id == issued["key_id"]
    text = json.dumps(_audit(stack))
    assert b64e(session.keys.c2s) not in text and b64e(session.keys.s2c) not in text


async def test_the_gateways_own_endpoints_answer_an_encrypted_request_encrypted(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        await me.agree()
        result = await me.client.request(aiohttp_send(http), "PUT", "/api/me/security",
                                         {"single_trade_limit": 10000}, expect=(200,))
    assert result.response.status == 200, result.response.body
    assert result.response.headers["Content-Type"].startswith(ENVELOPE_TYPE)
    assert result.response.json()["settings"]["single_trade_limit"] == 10000  # opened by the SDK


async def test_the_sdk_refuses_a_gateway_that_offers_another_agreement_key(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        other = Sm2PrivateKey.generate().public_key().to_bytes()
        with pytest.raises(KeyAgreementError) as err:
            await Customer(stack, http).agree(pinned=other)
        assert err.value.code == "agreement_key_not_pinned"
        pinned = stack.gateway.session_keys.agreement.public() if stack.gateway.session_keys else b""
        assert (await Customer(stack, http).agree(pinned=pinned)).key_id


async def test_a_session_key_needs_a_device_proof(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        async with http.post(stack.url + "/auth/session-key", json={}, headers=stack.auth()) as r:
            assert r.status == 401 and (await r.json())["error"] == "dpop_required"
        async with http.delete(stack.url + "/auth/session-key", headers=stack.auth()) as r:
            assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
            assert r.headers["Allow"] == "GET, POST"


# -- bad input: each a 4xx with its code, audited, counted, never forwarded --------------------


def _sealed(session: EnvelopeSession, body: bytes = json.dumps(ORDER).encode(), *, path: str = ORDERS,
            ts: int | None = None, kid: str | None = None) -> tuple[EnvelopeHeader, bytes]:
    return seal_request(session.keys, kid or session.key_id, "POST", path, body,
                        ts=int(time.time()) if ts is None else ts)


def _headers(h: EnvelopeHeader, value: str | None = None) -> dict[str, str]:
    return {"Content-Type": ENVELOPE_TYPE, ENVELOPE_HEADER: value if value is not None else h.render()}


async def test_hostile_envelopes_get_their_codes_and_never_reach_the_backend(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        session = await me.agree()
        before = await _book(stack)
        cases: list[tuple[str, bytes, dict[str, str], int, str]] = []
        h, sealed = _sealed(session)
        unknown = EnvelopeHeader("A" * 22, h.iv, h.mid, h.ts)
        cases.append(("wrong key id", sealed, _headers(unknown), 400, "session_key_unknown"))
        h, sealed = _sealed(session)
        cases.append(("truncated ciphertext", sealed[:-20], _headers(h), 400, "envelope_invalid"))
        h, sealed = _sealed(session)
        flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
        cases.append(("flipped tag bit", flipped, _headers(h), 400, "envelope_invalid"))
        h, sealed = _sealed(session)
        short_iv = h.render().replace(f"iv={b64e(h.iv)}", f"iv={b64e(h.iv[:8])}")
        cases.append(("8-byte IV", sealed, _headers(h, short_iv), 400, "envelope_malformed"))
        cases.append(("no envelope header", sealed, {"Content-Type": ENVELOPE_TYPE}, 400, "envelope_malformed"))
        h, sealed = _sealed(session, path="/api/accounts/A1/transfers")
        cases.append(("sealed for another route", sealed, _headers(h), 400, "envelope_invalid"))
        h, sealed = _sealed(session, ts=int(time.time()) - 3600)
        cases.append(("an hour old", sealed, _headers(h), 400, "envelope_stale"))
        h, sealed = _sealed(session, b"not json")
        cases.append(("not JSON inside", sealed, _headers(h), 400, "invalid_json"))
        for what, body, headers, status, code in cases:
            got_status, doc = await me.post_sealed(ORDERS, body, headers)
            assert (got_status, doc.get("error")) == (status, code), what
        # Another device of the same customer cannot use this session's key.
        thief = Customer(stack, http)
        h, sealed = _sealed(session)
        got = await thief.post_sealed(ORDERS, sealed, _headers(h))
        assert (got[0], got[1]["error"]) == (403, "session_key_mismatch")
        assert await _book(stack) == before
        metrics = await _metrics(stack)
        records = [r for r in _audit(stack) if r.get("type") == "denial"]
    for code in ("session_key_unknown", "envelope_invalid", "envelope_malformed", "envelope_stale",
                 "invalid_json", "session_key_mismatch"):
        assert f'outcome="{code}"' in metrics, code
        assert any(r.get("code") == code for r in records), code


async def test_a_replayed_envelope_is_refused(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        session = await me.agree()
        h, sealed = _sealed(session, json.dumps({**ORDER, "qty": 1}).encode())
        first = await me.post_sealed(ORDERS, sealed, _headers(h))
        again = await me.post_sealed(ORDERS, sealed, _headers(h))
    assert first[0] == 201
    assert (again[0], again[1]["error"]) == (409, "envelope_replayed")


async def test_a_replay_is_refused_on_a_transfer_and_on_the_gateways_own_endpoint(
        tmp_path: Path, redis_store: RedisStore) -> None:
    # The replay check rides on the facts step's read of the freeze (a transfer) and on a state round of
    # its own where no facts are read (the gateway's own endpoints): each path refuses the second copy.
    transfer = json.dumps({"direction": "in", "amount": 100.0, "currency": "CNY",
                           "bank_account_id": "bank-a1-1"}).encode()
    settings = json.dumps({"single_trade_limit": 10000}).encode()
    async with envelope_stack(tmp_path, state=redis_store) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        session = await me.agree()
        for method, path, body in (("POST", TRANSFERS, transfer), ("PUT", "/api/me/security", settings)):
            h, sealed = seal_request(session.keys, session.key_id, method, path, body, ts=int(time.time()))
            url = stack.url + path
            answers = []
            for _ in range(2):
                async with http.request(method, url, data=sealed,
                                        headers={**me.headers(method, url), **_headers(h)}) as r:
                    answers.append((r.status, r.headers.get("Content-Type", "")))
                    raw = await r.read()
            assert answers[0][0] < 300 and answers[0][1].startswith(ENVELOPE_TYPE), (path, answers)
            assert (answers[1][0], json.loads(raw)["error"]) == (409, "envelope_replayed"), path


class RoundTrips:
    """Wraps the gateway's real store and records each round trip a request makes for one account."""

    def __init__(self, inner: RedisStore, marks: tuple[str, ...]) -> None:
        self.inner, self.marks = inner, marks
        self.batches: list[Any] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def batch(self) -> Any:
        b = self.inner.batch()
        self.batches.append(b)
        return b

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            return attr(*args, **kwargs)
        return call

    def count(self) -> int:
        """Round trips so far that touched one of ``marks`` (the gateway's background polling does not)."""
        def touches(keys: Any) -> bool:
            return any(m in str(keys) for m in self.marks)
        return (sum(1 for b in self.batches if touches([op[1] for op in b._ops]))
                + sum(1 for _, args in self.calls if touches(args)))


async def test_an_encrypted_order_costs_no_more_state_round_trips_than_a_plaintext_one(
        tmp_path: Path, redis_store: RedisStore) -> None:
    counting = RoundTrips(redis_store, ("A1", "alice", "env:", "sk:"))
    async with envelope_stack(tmp_path, state=counting) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        await me.agree()  # the session key is in this process's cache from now on
        plain = StepUpClient(stack.url, me.token, None, device=me.device)
        costs = {}
        for name, client in (("plaintext", plain), ("encrypted", me.client)):
            await client.request(aiohttp_send(http), "POST", ORDERS, {**ORDER, "qty": 1}, expect=(201,))  # warm
            before = counting.count()
            result = await client.request(aiohttp_send(http), "POST", ORDERS, {**ORDER, "qty": 2}, expect=(201,))
            assert result.response.status == 201, result.response.body
            costs[name] = counting.count() - before
    assert costs["encrypted"] == costs["plaintext"] == 2, costs  # the design budget on a trade route


async def test_a_read_sealed_in_the_header_is_answered_sealed(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        session = await me.agree()
        result = await me.client.request(aiohttp_send(http), "GET", PROFILE, None, expect=(200,))
        assert result.response.status == 200, result.response.body
        assert result.response.headers["Content-Type"].startswith(ENVELOPE_TYPE)  # the profile travelled sealed
        assert result.response.json()["account"] == "A1"  # opened by the SDK
        assert session.sent == 1
        url = stack.url + PROFILE

        async def get(headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
            async with http.get(url, headers={**me.headers("GET", url), **headers}) as r:
                raw = await r.read()
                return r.status, json.loads(raw) if r.content_type == "application/json" else {}

        h = seal_bodiless(session.keys, session.key_id, "GET", PROFILE, ts=int(time.time()))
        first, again = await get(_headers_only(h)), await get(_headers_only(h))
        assert first[0] == 200 and (again[0], again[1]["error"]) == (409, "envelope_replayed")
        other = seal_bodiless(session.keys, session.key_id, "GET", "/api/accounts/A1/positions", ts=int(time.time()))
        cases = [
            ("sealed for another path", _headers_only(other), 400, "envelope_invalid"),
            ("flipped tag bit", _headers_only(_fresh(session), tag_flip=True), 400, "envelope_invalid"),
            ("no tag", {ENVELOPE_HEADER: _fresh(session).render().rsplit("; tag=", 1)[0]}, 400,
             "envelope_malformed"),
            ("an hour old", _headers_only(seal_bodiless(session.keys, session.key_id, "GET", PROFILE,
                                                        ts=int(time.time()) - 3600)), 400, "envelope_stale"),
        ]
        for what, headers, status, code in cases:
            got_status, doc = await get(headers)
            assert (got_status, doc.get("error")) == (status, code), what
        # A body sealed with a tag in its header is malformed too: the tag belongs to bodiless requests.
        h2, sealed = _sealed(session)
        tagged = EnvelopeHeader(h2.kid, h2.iv, h2.mid, h2.ts, tag=b"\0" * 16)
        got = await me.post_sealed(ORDERS, sealed, _headers(tagged))
        assert (got[0], got[1]["error"]) == (400, "envelope_malformed")


def _fresh(session: EnvelopeSession) -> EnvelopeHeader:
    return seal_bodiless(session.keys, session.key_id, "GET", PROFILE, ts=int(time.time()))


def _headers_only(h: EnvelopeHeader, *, tag_flip: bool = False) -> dict[str, str]:
    if tag_flip and h.tag is not None:
        h = EnvelopeHeader(h.kid, h.iv, h.mid, h.ts, tag=h.tag[:-1] + bytes([h.tag[-1] ^ 1]))
    return {ENVELOPE_HEADER: h.render()}


async def test_plaintext_to_an_encryption_required_route_is_refused(tmp_path: Path) -> None:
    routes = routes_with_body_kinds()
    for r in routes:
        if r["name"] == "order_place":
            r["encryption"] = "required"
    async with envelope_stack(tmp_path, routes=routes) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        before = await _book(stack)
        plain = await me.client.request(aiohttp_send(http), "POST", ORDERS, ORDER, expect=(415,))
        assert plain.response.status == 415 and plain.response.json()["error"] == "encryption_required"
        await me.agree()
        sealed = await me.client.request(aiohttp_send(http), "POST", ORDERS, ORDER, expect=(201,))
        assert sealed.response.status == 201
        assert len(await _book(stack)) == len(before) + 1


async def test_an_expired_or_used_up_session_key_is_refused(tmp_path: Path) -> None:
    clock = OffsetClock()
    async with envelope_stack(tmp_path, clock=clock, max_messages=2, max_age=10, burst=20) as stack, \
            aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        await me.agree()
        send = aiohttp_send(http)
        small = {**ORDER, "qty": 1}
        for _ in range(2):
            assert (await me.client.request(send, "POST", ORDERS, small, expect=(201,))).response.status == 201
        session = me.client.envelope
        assert session is not None and session.spent  # the SDK would agree a new key; sealed by hand here
        h, sealed = seal_request(session.keys, session.key_id, "POST", ORDERS, json.dumps(small).encode(),
                                 ts=int(clock()))
        third = await me.post_sealed(ORDERS, sealed, _headers(h))
        assert third == (410, third[1]) and third[1]["error"] == "session_key_expired"
        await me.agree()  # a new key: fine again, until the clock passes its max_age
        assert (await me.client.request(send, "POST", ORDERS, small, expect=(201,))).response.status == 201
        clock.offset = 11.0  # past max_age (the DPoP proofs' iat still within their window)
        session = me.client.envelope
        assert session is not None
        h, sealed = seal_request(session.keys, session.key_id, "POST", ORDERS, json.dumps(small).encode(),
                                 ts=int(clock()))
        late = await me.post_sealed(ORDERS, sealed, _headers(h))
    assert (late[0], late[1]["error"]) == (410, "session_key_expired")


async def test_the_sdk_agrees_a_new_key_when_its_key_is_spent_or_refused(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path, max_messages=2, burst=20) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        send = aiohttp_send(http)
        small = {**ORDER, "qty": 1}
        first = await me.client.request(send, "POST", ORDERS, small, expect=(201,))
        assert first.response.status == 201 and me.client.envelope is None  # no session: plaintext
        await me.client.request(send, "GET", "/auth/session-key")  # (an unsealed call leaves it so)
        session = await me.agree()
        for _ in range(3):  # the third needs a new key: the SDK agrees it before sending
            assert (await me.client.request(send, "POST", ORDERS, small, expect=(201,))).response.status == 201
        assert me.client.envelope is not None and me.client.envelope.key_id != session.key_id
        # A key the gateway does not know (e.g. its records were lost): refused unforwarded, re-agreed, resent.
        me.client.envelope = EnvelopeSession("B" * 22, session.keys, time.time() + 600, 100)
        before = len(await _book(stack))
        again = await me.client.request(send, "POST", ORDERS, small, expect=(201,))
        assert again.response.status == 201 and me.client.envelope.key_id != "B" * 22
        assert len(await _book(stack)) == before + 1  # placed once


async def test_key_agreement_refuses_bad_key_material(tmp_path: Path) -> None:
    async with envelope_stack(tmp_path) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        url = stack.url + "/auth/session-key"
        async with http.get(url, headers=me.headers("GET", url)) as r:
            offer = await r.json()
        public = Sm2PrivateKey.generate().public_key()  # not the gateway's key
        cases = [
            ({"agreement_kid": offer["agreement_kid"], "client_nonce": b64e(b"n" * 16),
              "key_material": b64e(public.encrypt(b"k" * 32))}, 400, "key_agreement_failed"),
            ({"agreement_kid": "ak-gone", "client_nonce": b64e(b"n" * 16),
              "key_material": b64e(b"x" * 100)}, 400, "agreement_key_unknown"),
            ({"agreement_kid": offer["agreement_kid"], "client_nonce": "***",
              "key_material": b64e(b"x" * 100)}, 400, "bad_request"),
            ({"agreement_kid": offer["agreement_kid"]}, 400, "bad_request"),
        ]
        for body, status, code in cases:
            async with http.post(url, json=body, headers=me.headers("POST", url)) as r:
                assert (r.status, (await r.json())["error"]) == (status, code), body


# -- shared state: a replay to another gateway process is caught too -------------------------


async def test_a_replay_to_another_gateway_sharing_redis_is_refused(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with AsyncExitStack() as es:
        stores = [RedisStore(redis_url, redis_prefix, timeout=2.0) for _ in range(2)]
        for store in stores:
            es.push_async_callback(store.close)
        a = await es.enter_async_context(envelope_stack(tmp_path, state=stores[0]))
        b = await es.enter_async_context(envelope_stack(tmp_path, state=stores[1], backend_url=a.backend_url))
        http = await es.enter_async_context(aiohttp.ClientSession())
        device = DeviceKey.generate()
        on_a = Customer(a, http, device)
        session = await on_a.agree()
        on_b = Customer(b, http, device)
        h, sealed = _sealed(session, json.dumps({**ORDER, "qty": 1}).encode())
        first = await on_b.post_sealed(ORDERS, sealed, _headers(h))  # gateway B opens A's session key
        again = await on_a.post_sealed(ORDERS, sealed, _headers(h))
    assert first[0] == 201, first
    assert (again[0], again[1]["error"]) == (409, "envelope_replayed")


def test_response_header_parse_refuses_what_the_sdk_must_not_trust() -> None:
    from gateway.crypto.session import EnvelopeError

    for value in ("", "kid=x", "kid=" + "A" * 22 + "; iv=AAAAAAAAAAAAAAAA; mid=m; type=a b",
                  "kid=" + "A" * 22 + "; iv=AAAA; mid=m; type=application/json"):
        with pytest.raises(EnvelopeError):
            EnvelopeHeader.parse(value, response=True)
    ok = EnvelopeHeader.parse("kid=" + "A" * 22 + "; iv=AAAAAAAAAAAAAAAA; mid=m-1; type=application/json",
                              response=True)
    assert ok.type == "application/json" and ok.iv == bytes(12)
    assert HttpResponse(200).body == b""


def test_the_agreement_key_file_is_created_once_and_refused_when_others_may_read_it(tmp_path: Path) -> None:
    import os
    import stat

    from gateway.agreement_keys import AgreementKeys
    from gateway.errors import ConfigError

    path = tmp_path / "agreement.json"
    first = AgreementKeys.from_file(path, create=True)
    second = AgreementKeys.from_file(path, create=True)  # a second process starting: reads the first's keys
    assert (second.current, second.public()) == (first.current, first.public())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.public().hex() not in repr(first) and path.read_text() not in repr(first)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        AgreementKeys.from_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        AgreementKeys.from_file(tmp_path / "absent.json")


def test_base64url_decoding_is_strict() -> None:
    from gateway.crypto.b64 import b64url_decode, b64url_encode

    assert b64url_decode(b64url_encode(b"\xff\xfe\x00")) == b"\xff\xfe\x00"
    for bad in ("AA==", "A", "+/8", "AA AA", "AA.A", "\u00c4\u00c4"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


async def test_the_demo_walk_through_reads_and_orders_encrypted(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("encrypted_session",
                                                  Path(__file__).resolve().parents[1] / "examples" /
                                                  "encrypted_session.py")
    assert spec is not None and spec.loader is not None
    walk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(walk)
    lines: list[str] = []
    async with envelope_stack(tmp_path) as stack:
        result = await walk.run(stack.url, tmp_path / "keys", out=lines.append)
        book = await _book(stack)
    assert result["profile"].status == 200 and result["profile_sealed"]
    assert result["profile"].data["account"] == "A1"
    assert result["order"].status == 201 and [o["order_id"] for o in book] == [result["order"].data["order_id"]]
    assert [line[:2] for line in lines] == ["1.", "2.", "3.", "4."]
    assert result["session_key"] is not None and result["session_key"] not in "".join(lines)  # ids shortened
