"""Step-up end to end: a real gateway and the real demo backend on loopback, the real Rego engine.

The policy is a small `gateway` package asking for the mfa level on orders above 100 shares, the
face level on transfers, and a recent mfa (max_age) to read positions. The SMS provider is the
only fake (a class that records what it was asked to send); the notifier is the memory one; the
clock the gateway reads is moved instead of sleeping through expiries and cooling-off periods.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pyotp

from gateway.client import DeviceKey
from gateway.mfa.tokens import HEADER
from gateway.notify import MemoryNotifier
from gateway.policy.rego import RegoPolicy
from gateway.state.base import StateStore
from gateway.state.redis import RedisStore
from tests.harness import Stack, routes_with_body_kinds, run_stack

TOKEN = "step-up-internal-token"
MFA, FACE = "urn:portcullis:acr:mfa", "urn:portcullis:acr:face"
COOL = 3600.0

POLICY = """package gateway
import rego.v1

mfa := "urn:portcullis:acr:mfa"
face := "urn:portcullis:acr:face"
rank := {"urn:portcullis:acr:pwd": 0, mfa: 1, face: 2}
have := object.get(rank, input.mfa.acr, 0)

want := {"acr": face, "methods": ["face", "totp", "sms"], "max_age": null} if {
	input.request.tier == "transfer"
} else := {"acr": mfa, "methods": ["totp", "sms", "face"], "max_age": null} if {
	input.order.qty > 100
} else := {"acr": mfa, "methods": ["totp", "sms"], "max_age": 600} if {
	input.request.route == "positions"
}

fresh if want.max_age == null

fresh if {
	is_number(input.mfa.age_s)
	input.mfa.age_s <= want.max_age
}

ok if not want

ok if {
	have >= rank[want.acr]
	fresh
}

decision := {"allow": true, "deny": [], "step_up": null, "obligations": {}} if ok
else := {"allow": false, "deny": [{"code": "needs_step_up", "message": "step up"}], "step_up": want,
	"obligations": {}}
"""

# Ping An Insurance at 57.20 (the demo book): 200 shares need a step-up, 100 do not.
BIG = {"symbol": "601318.SH", "side": "buy", "qty": 200, "price": 57.2, "type": "limit"}
SMALL = {**BIG, "qty": 100}
TRANSFER = {"direction": "withdraw", "amount": 1000, "bank_account_id": "BA1"}


class RecordingSms:
    """The SMS provider's boundary: records every message it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, phone: str, text: str) -> None:
        self.sent.append((phone, text))

    def last_code(self) -> str:
        match = re.search(r"\b(\d{6})\b", self.sent[-1][1])
        assert match is not None
        return match.group(1)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Client:
    """One customer's session: an access token (optionally bound to a device key) and helpers."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession, *, sub: str = "alice",
                 accounts: tuple[str, ...] = ("A1",), device: DeviceKey | None = None) -> None:
        self.stack, self.http, self.device = stack, http, device
        extra: dict[str, Any] = {"extra": {"cnf": {"jkt": device.thumbprint}}} if device is not None else {}
        self.token = stack.token(sub=sub, accounts=accounts, **extra)

    def headers(self, method: str, url: str, step_up: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"{'DPoP' if self.device else 'Bearer'} {self.token}"}
        if self.device is not None:
            h["DPoP"] = self.device.proof(method, url, self.token)
        if step_up is not None:
            h[HEADER] = step_up
        return h

    async def call(self, method: str, path: str, body: Any = None, step_up: str | None = None,
                   ) -> tuple[int, Any, Any]:
        url = self.stack.url + path
        kw: dict[str, Any] = {"json": body} if body is not None else {}
        async with self.http.request(method, url, headers=self.headers(method, url, step_up), **kw) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None, r.headers

    async def mfa(self, method: str, tail: str, body: Any = None) -> tuple[int, Any]:
        status, doc, _ = await self.call(method, "/auth/mfa/" + tail, body)
        return status, doc


@asynccontextmanager
async def stack(tmp: Path, *, state: StateStore | None = None, clock: Clock | None = None,
                sms: RecordingSms | None = None, notifier: MemoryNotifier | None = None,
                audit_dir: Path | None = None, **step_up: Any) -> AsyncIterator[Stack]:
    kwargs: dict[str, Any] = {
        "policy": RegoPolicy.from_modules([("policy.rego", POLICY)], {}),
        "notifier": notifier or MemoryNotifier(), "clock": clock or Clock(), "sms_sender": sms or RecordingSms()}
    if state is not None:
        kwargs["state"] = state
    audit: dict[str, Any] = {"audit": {"path": str(audit_dir), "fsync_interval_ms": 1}} if audit_dir else {}
    async with run_stack(tmp, internal_token=TOKEN, routes=routes_with_body_kinds(), gateway_kwargs=kwargs,
                         step_up={"cooling_off": COOL, **step_up}, **audit) as s:
        yield s


def order(qty_order: dict[str, Any], coid: str) -> dict[str, Any]:
    return {**qty_order, "client_order_id": coid}


async def pass_with_sms(c: Client, sms: RecordingSms, challenge: dict[str, Any]) -> dict[str, Any]:
    cid = challenge["challenge_id"]
    status, sent = await c.mfa("POST", f"challenges/{cid}/sms/send")
    assert status == 200, sent
    assert sent["sent_to"].startswith("+86") and "0000 0001" not in sent["sent_to"]
    status, doc = await c.mfa("POST", f"challenges/{cid}/sms/verify", {"code": sms.last_code()})
    assert status in (200, 202), doc
    return dict(doc)


async def enrol_totp(c: Client, sms: RecordingSms) -> pyotp.TOTP:
    """A first enrolment: the phone on file proves it is the customer, then the app's first code."""
    status, challenge, headers = await c.call("POST", "/auth/mfa/factors/totp")
    assert status == 401, challenge
    assert challenge["methods"] == ["sms"] and challenge["reasons"] == ["factor_change"]
    token = (await pass_with_sms(c, sms, challenge))["step_up_token"]
    status, doc, _ = await c.call("POST", "/auth/mfa/factors/totp", step_up=token)
    assert status == 201, doc
    assert doc["otpauth_uri"].startswith("otpauth://totp/")
    assert base64.b64decode(doc["qr_png"])[:8] == b"\x89PNG\r\n\x1a\n"
    totp = pyotp.parse_uri(doc["otpauth_uri"])
    assert isinstance(totp, pyotp.TOTP)
    status, done = await c.mfa("POST", "factors/totp/confirm", {"code": totp.now()})
    assert status == 200, done
    return totp


async def test_an_order_step_up_with_totp_approves_that_order_once(tmp_path: Path) -> None:
    sms, notifier, clock = RecordingSms(), MemoryNotifier(), Clock()
    async with stack(tmp_path, sms=sms, notifier=notifier, clock=clock) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        # A usual order goes straight through.
        status, doc, _ = await c.call("POST", "/api/accounts/A1/orders", order(SMALL, "s1"))
        assert status == 201, doc
        totp = await enrol_totp(c, sms)
        assert [a.kind for a in notifier.sent] == ["mfa_factor_changed"]
        assert notifier.sent[0].recipient == "alice" and "secret" not in json.dumps(notifier.sent[0].fields)

        big = order(BIG, "b1")
        status, ch, headers = await c.call("POST", "/api/accounts/A1/orders", big)
        assert status == 401 and ch["error"] == "insufficient_user_authentication"
        assert headers["WWW-Authenticate"].startswith('Bearer error="insufficient_user_authentication"')
        assert f'acr_values="{MFA}"' in headers["WWW-Authenticate"]
        assert ch["methods"] == ["totp", "sms"] and ch["reasons"] == ["needs_step_up"]
        assert ch["expires_at"] > time.time() + 200
        # The enrolment's code is spent (each code once): the app's next one, within the +-1 step drift.
        status, done = await c.mfa("POST", f"challenges/{ch['challenge_id']}/totp", {"code": totp.at(clock() + 30)})
        assert status == 200, done
        assert done["acr"] == MFA and "otp" in done["amr"] and done["binding"] == "transaction"
        token = done["step_up_token"]

        # The same order, with the token: forwarded.
        status, placed, _ = await c.call("POST", "/api/accounts/A1/orders", big, step_up=token)
        assert status == 201, placed
        # Never twice, not even the identical order.
        status, again, _ = await c.call("POST", "/api/accounts/A1/orders", big, step_up=token)
        assert (status, again["error"]) == (401, "step_up_token_used")
        # The challenge is single-use too.
        status, used = await c.mfa("POST", f"challenges/{ch['challenge_id']}/totp", {"code": totp.at(clock() - 30)})
        assert (status, used["error"]) == (409, "challenge_used")


async def test_a_step_up_token_approves_only_its_own_request(tmp_path: Path) -> None:
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        big = order(BIG, "b2")
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", big)
        assert status == 401
        token = (await pass_with_sms(c, sms, ch))["step_up_token"]
        # Another quantity, another account, another route, another access token: all refused.
        for method, path, body in [("POST", "/api/accounts/A1/orders", {**big, "qty": 300}),
                                   ("POST", "/api/accounts/A1/orders", {**big, "client_order_id": "other"})]:
            status, doc, _ = await c.call(method, path, body, step_up=token)
            assert (status, doc["error"]) == (403, "step_up_token_mismatch"), doc
        other = Client(s, http)  # the same customer, another access token (another session)
        status, doc, _ = await other.call("POST", "/api/accounts/A1/orders", big, step_up=token)
        assert (status, doc["error"]) == (403, "step_up_token_mismatch")
        # Key order and spacing do not matter: the binding is over the canonical body.
        reordered = dict(reversed(list(big.items())))
        status, doc, _ = await c.call("POST", "/api/accounts/A1/orders", reordered, step_up=token)
        assert status == 201, doc
        # Garbage in the header is a clear 401.
        status, doc, _ = await c.call("POST", "/api/accounts/A1/orders", big, step_up="not-a-token")
        assert (status, doc["error"]) == (401, "step_up_token_invalid")


async def test_session_elevation_by_max_age(tmp_path: Path) -> None:
    sms, clock = RecordingSms(), Clock()
    async with stack(tmp_path, sms=sms, clock=clock) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        status, ch, headers = await c.call("GET", "/api/accounts/A1/positions")
        assert status == 401 and "max_age=600" in headers["WWW-Authenticate"] and ch["max_age"] == 600
        done = await pass_with_sms(c, sms, ch)
        assert done["binding"] == "session" and done["expires_in"] == 600
        for _ in range(2):  # a session token raises the session's level for every request until it expires
            status, doc, _ = await c.call("GET", "/api/accounts/A1/positions", step_up=done["step_up_token"])
            assert status == 200, doc
        # Older than max_age: a new challenge (an expired session token is simply not counted).
        clock.offset += 601
        status, doc, _ = await c.call("GET", "/api/accounts/A1/positions", step_up=done["step_up_token"])
        assert (status, doc["error"]) == (401, "insufficient_user_authentication") and doc["challenge_id"]
        clock.offset += 600
        status, doc, _ = await c.call("GET", "/api/accounts/A1/positions", step_up=done["step_up_token"])
        assert (status, doc["error"]) == (401, "insufficient_user_authentication") and doc["challenge_id"]


async def test_new_factors_wait_out_the_cooling_off_before_transfers(tmp_path: Path) -> None:
    # A real wait (1.5 s) rather than a moved clock: the transfer is forwarded at the end, and the
    # backend checks the identity assertion's time against its own clock.
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms, cooling_off=1.5) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        totp = await enrol_totp(c, sms)
        # The face level needs face, or TOTP and SMS: the TOTP secret is still in its cooling-off.
        status, doc, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER)
        assert (status, doc["error"]) == (403, "no_step_up_method"), doc
        await asyncio.sleep(1.6)
        status, ch, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER)
        assert status == 401 and ch["methods"] == ["totp", "sms"] and ch["acr_values"] == FACE
        cid = ch["challenge_id"]
        status, first = await c.mfa("POST", f"challenges/{cid}/totp", {"code": totp.at(time.time() + 30)})
        assert (status, first["status"], first["methods"]) == (202, "more_needed", ["sms"])
        done = await pass_with_sms(c, sms, ch)
        assert done["acr"] == FACE and set(done["amr"]) >= {"otp", "sms", "mfa"}
        status, doc, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER, step_up=done["step_up_token"])
        assert status != 401 and doc.get("error") not in ("step_up_token_mismatch", "step_up_token_used"), doc


async def test_challenges_refuse_bad_answers_with_stable_codes(tmp_path: Path) -> None:
    sms, clock = RecordingSms(), Clock()
    async with stack(tmp_path, sms=sms, clock=clock, max_attempts=3, burst=60) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "b3"))
        cid = ch["challenge_id"]
        # Not enrolled in TOTP: only SMS is offered.
        assert ch["methods"] == ["sms"]
        assert (await c.mfa("POST", f"challenges/{cid}/totp", {"code": "123456"}))[1]["error"] == "method_not_offered"
        # Another customer cannot see or answer it; unknown and malformed ids are not found.
        bob = Client(s, http, sub="bob", accounts=("B9",))
        for who, ident in [(bob, cid), (c, "A" * 32), (c, "x" * 200), (c, "A" * 31 + "!")]:
            status, doc = await who.mfa("POST", f"challenges/{ident}/sms/send")
            assert (status, doc["error"]) == (404, "challenge_not_found"), (ident, doc)
        for hostile in ("../../x", "..%2f..%2fx", "%00" * 20):
            status, doc = await c.mfa("POST", f"challenges/{hostile}/sms/send")
            assert (status, doc["error"]) in ((400, "bad_path"), (404, "route_not_found")), doc
        assert (await c.mfa("POST", f"challenges/{cid}/sms/send"))[0] == 200
        for bad in ["12345", "1234567", "12a456", "", 123456]:
            status, doc = await c.mfa("POST", f"challenges/{cid}/sms/verify", {"code": bad})
            assert status == 400 and doc["error"] in ("otp_malformed", "bad_request"), (bad, doc)
        status, doc = await c.mfa("POST", f"challenges/{cid}/sms/verify", [1, 2])
        assert (status, doc["error"]) == (400, "invalid_json")
        # Wrong codes count against the method's attempts; then the challenge has nothing left.
        right = sms.last_code()
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        for left in (2, 1, 0):
            status, doc = await c.mfa("POST", f"challenges/{cid}/sms/verify", {"code": wrong})
            assert (status, doc["error"], doc["attempts_left"]) == (403, "otp_invalid", left), doc
        assert doc["methods"] == []
        status, doc = await c.mfa("POST", f"challenges/{cid}/sms/verify", {"code": right})
        assert (status, doc["error"]) == (403, "challenge_failed"), doc
        # Expired challenges say so.
        status, ch2, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "b4"))
        clock.offset += 301
        status, doc = await c.mfa("POST", f"challenges/{ch2['challenge_id']}/sms/send")
        assert (status, doc["error"]) == (410, "challenge_expired")
        # Unknown endpoints and methods.
        assert (await c.mfa("GET", "nothing"))[1]["error"] == "route_not_found"
        assert (await c.mfa("PATCH", "factors/totp"))[0] in (404, 405)


async def test_a_stolen_bearer_token_alone_cannot_add_a_factor(tmp_path: Path) -> None:
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms) as s, aiohttp.ClientSession() as http:
        thief = Client(s, http)
        status, ch, _ = await thief.call("POST", "/auth/mfa/factors/totp")
        assert status == 401 and ch["methods"] == ["sms"]
        # The code goes to the phone on file, which the thief does not hold.
        assert (await thief.mfa("POST", f"challenges/{ch['challenge_id']}/sms/send"))[0] == 200
        status, doc = await thief.mfa("POST", f"challenges/{ch['challenge_id']}/sms/verify", {"code": "000000"})
        assert status == 403 or doc["error"] == "otp_invalid"
        status, doc, _ = await thief.call("POST", "/auth/mfa/factors/totp", step_up="eyJhbGciOi.x.y")
        assert status == 401
        status, doc = await thief.mfa("PUT", "factors/phone", {"phone": "+8613912345678"})
        assert status == 401 and doc["error"] == "insufficient_user_authentication"
        status, factors = await thief.mfa("GET", "factors")
        assert status == 200 and factors["totp"] == {"enrolled": False}
        assert factors["sms"]["source"] == "on_file" and factors["sms"]["phone"].count("*") >= 4


async def test_a_proven_device_becomes_known_and_tokens_stay_on_it(tmp_path: Path) -> None:
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms) as s, aiohttp.ClientSession() as http:
        device = DeviceKey.generate()
        c = Client(s, http, device=device)
        big = order(BIG, "b5")
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", big)
        assert status == 401
        done = await pass_with_sms(c, sms, ch)
        assert await s.gateway.state.sismember("risk:known:alice", device.thumbprint)
        # The same access token from another device key is refused by DPoP before the step-up token.
        other = Client(s, http, device=DeviceKey.generate())
        other.token = c.token
        status, doc, _ = await other.call("POST", "/api/accounts/A1/orders", big, step_up=done["step_up_token"])
        assert status == 401 and doc["error"] in ("dpop_key_mismatch", "step_up_token_mismatch")
        status, doc, _ = await c.call("POST", "/api/accounts/A1/orders", big, step_up=done["step_up_token"])
        assert status == 201, doc


async def test_a_token_is_consumed_once_across_gateway_processes(tmp_path: Path, redis_url: str,
                                                                 redis_prefix: str) -> None:
    """Two gateway processes share Redis and the step-up key file: a token wins exactly once."""
    sms, key = RecordingSms(), str(tmp_path / "step-up.key")
    store_a = RedisStore(redis_url, redis_prefix, timeout=2.0)
    store_b = RedisStore(redis_url, redis_prefix, timeout=2.0)
    async with stack(tmp_path, state=store_a, sms=sms, key_file=key, audit_dir=tmp_path / "audit-a") as a, \
            stack(tmp_path, state=store_b, sms=sms, key_file=key, audit_dir=tmp_path / "audit-b") as b, \
            aiohttp.ClientSession() as http:
        c = Client(a, http)
        big = order(BIG, "b6")
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", big)
        assert status == 401
        done = await pass_with_sms(c, sms, ch)
        cb = Client(b, http)
        cb.token = c.token
        results = await asyncio.gather(
            c.call("POST", "/api/accounts/A1/orders", big, step_up=done["step_up_token"]),
            cb.call("POST", "/api/accounts/A1/orders", big, step_up=done["step_up_token"]))
        assert sorted(r[0] for r in results) == [201, 401], [r[1] for r in results]
        assert [r[1]["error"] for r in results if r[0] == 401] == ["step_up_token_used"]


async def test_step_ups_are_audited_and_counted(tmp_path: Path) -> None:
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        big = order(BIG, "a1")
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", big)
        cid = ch["challenge_id"]
        await c.mfa("POST", f"challenges/{cid}/sms/send")
        code = sms.last_code()
        await c.mfa("POST", f"challenges/{cid}/sms/verify", {"code": f"{(int(code) + 1) % 1_000_000:06d}"})
        token = (await c.mfa("POST", f"challenges/{cid}/sms/verify", {"code": code}))[1]["step_up_token"]
        status, _, headers = await c.call("POST", "/api/accounts/A1/orders", big, step_up=token)
        assert status == 201
        async with http.get(s.admin_url + "/metrics") as r:
            metrics = await r.text()
        await s.gateway.audit.close()
    for event, method in [("challenge", "-"), ("sms_sent", "-"), ("failed", "sms"), ("passed", "sms"),
                          ("token_used", "-")]:
        assert f'portcullis_step_up_events_total{{event="{event}",method="{method}"}} 1.0' in metrics, event
    records = [json.loads(line) for f in sorted((tmp_path / "audit").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    actions = [r.get("action") for r in records if r.get("type") == "step_up"]
    assert actions == ["step_up_challenge", "step_up_sms_sent", "step_up_failed", "step_up_passed",
                       "step_up_token_used"]
    used = next(r for r in records if r.get("action") == "step_up_token_used")
    assert used["challenge_id"] == cid and used["request_id"] == headers["X-Request-Id"]
    assert any(r.get("type") == "decision" and r["request_id"] == headers["X-Request-Id"] for r in records)
    text = json.dumps(records)
    assert code not in text and token not in text and "138 0000 0001" not in text and "13800000001" not in text


async def test_the_mfa_endpoints_are_rate_limited_per_customer(tmp_path: Path) -> None:
    async with stack(tmp_path, burst=3, per_minute=1) as s, aiohttp.ClientSession() as http:
        alice, bob = Client(s, http), Client(s, http, sub="bob", accounts=("B9",))
        assert [(await alice.mfa("GET", "factors"))[0] for _ in range(3)] == [200, 200, 200]
        status, doc = await alice.mfa("POST", "challenges/" + "A" * 32 + "/totp", {"code": "123456"})
        assert (status, doc["error"]) == (429, "rate_limited")
        assert (await bob.mfa("GET", "factors"))[0] == 200  # another customer's budget is their own
