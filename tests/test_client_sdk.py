"""The aiohttp SDK (gateway.client.PortcullisClient) against a real gateway, the demo backend, the Rego
engine and Redis, all on loopback.

The policy is test_step_up_flow's (the mfa level on orders above 100 shares); session keys are on
(``[envelope]``). Lost answers come from :class:`LossyHop`, a TCP hop between the client and the gateway
(the network is the boundary faked here): the request goes through and is done, its answer is thrown
away and the connection closed. The backend's order book says how many orders each test placed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import Challenge, DeviceKey, PortcullisClient, RetryPolicy, TransportError
from gateway.client.envelope import ENVELOPE_TYPE
from gateway.notify import MemoryNotifier
from gateway.policy.rego import RegoPolicy
from gateway.state.redis import RedisStore
from tests.harness import Stack, routes_with_body_kinds, run_stack
from tests.test_step_up_flow import BIG, POLICY, SMALL, TOKEN, RecordingSms

ORDERS = "/api/accounts/A1/orders"
NO_WAIT = RetryPolicy(attempts=3, backoff=0)


@asynccontextmanager
async def sdk_stack(tmp: Path, state: RedisStore, sms: RecordingSms | None = None) -> AsyncIterator[Stack]:
    kwargs = {"policy": RegoPolicy.from_modules([("policy.rego", POLICY)], {}), "notifier": MemoryNotifier(),
              "sms_sender": sms or RecordingSms(), "state": state}
    envelope = {"agreement_key_file": str(tmp / "agreement.json"), "key_file": str(tmp / "envelope-keys.json")}
    async with run_stack(tmp, internal_token=TOKEN, routes=routes_with_body_kinds(), gateway_kwargs=kwargs,
                         envelope=envelope) as stack:
        yield stack


class LossyHop:
    """A TCP hop to the gateway that loses the answers of the first ``lose`` requests starting ``target``.

    Such a request is forwarded whole and the gateway's whole answer read (it closes the connection:
    the client sends ``Connection: close``), then the client's connection is closed with nothing said.
    One request per connection: the client's connector must use ``force_close``.
    """

    def __init__(self, stack: Stack, target: bytes, lose: int = 1) -> None:
        assert stack.gateway.public_port is not None
        self.gateway_port, self.target, self.lose = stack.gateway.public_port, target, lose
        self.heads: list[bytes] = []
        """Each request's line and headers, in arrival order."""
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def seen(self, request_line: bytes) -> list[bytes]:
        return [h for h in self.heads if h.startswith(request_line)]

    async def __aenter__(self) -> LossyHop:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.gateway_port)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            lose = head.startswith(self.target) and len(self.seen(self.target)) <= self.lose
            up_writer.write(head)
            upstream = asyncio.create_task(_pipe(reader, up_writer))
            if lose:
                await up_reader.read()  # the whole answer: the gateway is done with the request
                upstream.cancel()
            else:
                await _pipe(up_reader, writer)
                await upstream
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()


async def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


def one_request_per_connection() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def book(stack: Stack) -> list[dict[str, Any]]:
    """The backend's orders for A1, read in plaintext through the gateway (not through the SDK)."""
    async with aiohttp.ClientSession() as s, s.get(stack.url + ORDERS, headers=stack.auth()) as r:
        assert r.status == 200
        return list((await r.json())["orders"])


def bound_token(stack: Stack, device: DeviceKey) -> str:
    return stack.token(extra={"cnf": {"jkt": device.thumbprint}})


def mid(head: bytes) -> str:
    found = re.search(rb"(?im)^portcullis-envelope:.*\bmid=([A-Za-z0-9_-]+)", head)
    assert found is not None, head
    return found.group(1).decode()


# -- encrypted orders ---------------------------------------------------------------------------


async def test_an_encrypted_order_reaches_the_backend_once_and_its_answer_is_opened(
        tmp_path: Path, redis_store: RedisStore) -> None:
    async with sdk_stack(tmp_path, redis_store) as stack:
        device = DeviceKey.generate()
        pinned = stack.gateway.session_keys.agreement.public() if stack.gateway.session_keys else None
        async with PortcullisClient(stack.url, bound_token(stack, device), device=device, encrypt=True,
                                    pinned=pinned) as gw:
            placed = await gw.place_order("A1", SMALL)
            assert gw.sdk.envelope is not None and gw.sdk.envelope.sent == 1
        orders = await book(stack)
    assert placed.status == 201, placed.raw
    assert placed.headers["Content-Type"].startswith(ENVELOPE_TYPE)  # sealed on the wire, opened by the SDK
    assert placed.data["qty"] == 100 and placed.data["client_order_id"].startswith("sdk-")
    assert (placed.attempts, placed.challenge, placed.recovered) == (1, None, False)
    assert [o["client_order_id"] for o in orders] == [placed.data["client_order_id"]]


async def test_a_step_up_is_handed_to_the_apps_callback_and_the_order_goes_through(
        tmp_path: Path, redis_store: RedisStore) -> None:
    sms = RecordingSms()
    asked: list[tuple[str, ...]] = []

    async def ask_the_customer(challenge: Challenge) -> str | None:
        asked.append(challenge.methods)
        await challenge.send_sms()
        return await challenge.sms(sms.last_code())  # what the customer reads off the phone

    async with sdk_stack(tmp_path, redis_store, sms) as stack:
        device = DeviceKey.generate()
        async with PortcullisClient(stack.url, bound_token(stack, device), device=device, encrypt=True,
                                    on_step_up=ask_the_customer) as gw:
            placed = await gw.place_order("A1", {**BIG, "client_order_id": "big-1"})
        orders = await book(stack)
    assert placed.status == 201, placed.raw
    assert placed.challenge is not None and placed.data["client_order_id"] == "big-1"
    assert asked == [placed.challenge.methods] and "sms" in asked[0] and len(sms.sent) == 1
    assert [o["client_order_id"] for o in orders] == ["big-1"]


async def test_a_declined_step_up_returns_the_challenge(tmp_path: Path, redis_store: RedisStore) -> None:
    async def decline(challenge: Challenge) -> str | None:
        return None

    async with sdk_stack(tmp_path, redis_store) as stack:
        device = DeviceKey.generate()
        async with PortcullisClient(stack.url, bound_token(stack, device), device=device,
                                    on_step_up=decline) as gw:
            refused = await gw.place_order("A1", BIG)
        orders = await book(stack)
    assert (refused.status, refused.error) == (401, "insufficient_user_authentication")
    assert refused.challenge is not None and orders == []


# -- the retry rule -----------------------------------------------------------------------------


async def test_an_order_whose_answer_was_lost_is_retried_under_the_same_id_and_placed_once(
        tmp_path: Path, redis_store: RedisStore) -> None:
    async with sdk_stack(tmp_path, redis_store) as stack:
        device = DeviceKey.generate()
        async with LossyHop(stack, b"POST " + ORDERS.encode()) as hop, \
                one_request_per_connection() as http:
            async with PortcullisClient(hop.url, bound_token(stack, device), device=device, encrypt=True,
                                        retry=NO_WAIT, session=http) as gw:
                placed = await gw.place_order("A1", SMALL)
            posts = hop.seen(b"POST " + ORDERS.encode())
        orders = await book(stack)
    assert placed.status == 201 and placed.attempts == 2 and placed.recovered, placed.raw
    [order] = orders  # the retry met the backend's duplicate_order: no second order
    assert placed.data == order and order["client_order_id"].startswith("sdk-")
    assert len(posts) == 2 and mid(posts[0]) != mid(posts[1])  # sealed again: a fresh message id


async def test_a_request_without_an_idempotency_key_is_not_retried_once_it_may_have_arrived(
        tmp_path: Path, redis_store: RedisStore) -> None:
    async with sdk_stack(tmp_path, redis_store) as stack:
        device = DeviceKey.generate()
        async with LossyHop(stack, b"POST " + ORDERS.encode()) as hop, \
                one_request_per_connection() as http:
            async with PortcullisClient(hop.url, bound_token(stack, device), device=device, encrypt=True,
                                        retry=NO_WAIT, session=http) as gw:
                with pytest.raises(TransportError) as lost:
                    await gw.post(ORDERS, SMALL)  # no client_order_id: a repeat would be a second order
            posts = hop.seen(b"POST " + ORDERS.encode())
        orders = await book(stack)
    assert lost.value.code == "connection_lost" and lost.value.may_have_reached and lost.value.attempts == 1
    assert "not retried" in str(lost.value) and "idempotency key" in str(lost.value)
    assert len(posts) == 1 and len(orders) == 1  # sent once, done once, its answer lost


async def test_a_read_whose_answer_was_lost_is_retried(tmp_path: Path, redis_store: RedisStore) -> None:
    async with sdk_stack(tmp_path, redis_store) as stack:
        device = DeviceKey.generate()
        async with LossyHop(stack, b"GET " + ORDERS.encode()) as hop, \
                one_request_per_connection() as http:
            async with PortcullisClient(hop.url, bound_token(stack, device), device=device, retry=NO_WAIT,
                                        session=http) as gw:
                listed = await gw.get(ORDERS)
    assert (listed.status, listed.attempts) == (200, 2), listed.raw
    assert listed.data["orders"] == []
    assert len(hop.seen(b"GET " + ORDERS.encode())) == 2


async def test_an_unreachable_upstream_is_retried_for_an_order_only(tmp_path: Path) -> None:
    dead = await free_port()
    kwargs = {"policy": RegoPolicy.from_modules([("policy.rego", POLICY)], {})}
    async with run_stack(tmp_path, backend_url=f"http://127.0.0.1:{dead}", routes=routes_with_body_kinds(),
                         gateway_kwargs=kwargs) as stack:
        async with PortcullisClient(stack.url, stack.token(), retry=NO_WAIT) as gw:
            order = await gw.place_order("A1", SMALL)
            plain = await gw.post(ORDERS, SMALL)
    assert (order.status, order.error, order.attempts) == (502, "upstream_unreachable", NO_WAIT.attempts)
    assert (plain.status, plain.error, plain.attempts) == (502, "upstream_unreachable", 1)


async def test_a_refused_connection_is_retried_then_reported(tmp_path: Path) -> None:
    # Nothing listens there: the request never leaves, so even a POST may be retried.
    async with PortcullisClient(f"http://127.0.0.1:{await free_port()}", "not.a.token", retry=NO_WAIT) as gw:
        with pytest.raises(TransportError) as refused:
            await gw.post(ORDERS, SMALL)
    assert refused.value.code == "connect_failed" and not refused.value.may_have_reached
    assert refused.value.attempts == NO_WAIT.attempts and "gave up after 3 attempts" in str(refused.value)


# -- units --------------------------------------------------------------------------------------


def test_backoff_stays_under_its_doubling_cap() -> None:
    policy = RetryPolicy(attempts=6, backoff=0.1, max_backoff=0.5)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (5, 0.5)]:
        assert all(0 <= policy.delay(attempt) <= cap for _ in range(50))
    assert RetryPolicy(backoff=0).delay(3) == 0
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_encryption_needs_a_device_key() -> None:
    with pytest.raises(ValueError, match="device key"):
        PortcullisClient("http://127.0.0.1:1", "t", encrypt=True)


def test_importing_the_sdk_loads_neither_aiohttp_nor_the_gateway() -> None:
    code = ("import sys, gateway.client; "
            "bad = sorted(m for m in sys.modules if m == 'aiohttp' or (m.startswith('gateway.') and not "
            "m.startswith(('gateway.client', 'gateway.crypto')))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
