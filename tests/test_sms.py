"""gateway.mfa.sms: phone numbers, the file and webhook senders, and SMS codes on memory and real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.errors import (
    OTP_EXPIRED,
    OTP_INVALID,
    OTP_MALFORMED,
    PHONE_INVALID,
    SMS_COOLDOWN,
    SMS_SEND_LIMITED,
    SMS_UNAVAILABLE,
    ErrorKind,
    GatewayError,
)
from gateway.mfa.sms import (
    FileSmsSender,
    SentCode,
    SmsOtp,
    SmsSender,
    SmsSendError,
    WebhookSmsSender,
    mask_phone,
    normalise_phone,
)
from gateway.state.base import StateStore
from gateway.state.memory import MemoryStore

KEY = b"sms-hmac-key-0123456789abcdef"
PHONE = "+8613800000001"
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingSender:
    """Records each message; fails while ``fail`` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = False

    async def send(self, phone: str, text: str) -> None:
        if self.fail:
            raise SmsSendError("provider down")
        self.sent.append((phone, text))

    def last_code(self) -> str:
        match = re.search(r"\b(\d{6})\b", self.sent[-1][1])
        assert match is not None
        return match.group(1)


def make(store: StateStore, clock: FakeClock, sender: RecordingSender | None = None, **kw: Any) -> SmsOtp:
    return SmsOtp(store, sender or RecordingSender(), hmac_key=KEY, clock=clock, **kw)


async def raises(kind: ErrorKind, coro: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    assert info.value.kind is kind, info.value.code
    return info.value


def other(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


# --------------------------------------------------------------------------
# Phone numbers


@pytest.mark.parametrize(("raw", "e164"), [
    ("+86 138 0000 0001", "+8613800000001"),
    ("+8613800000001", "+8613800000001"),
    ("+86-138-0000-0001", "+8613800000001"),
    ("0086 138 0000 0001", "+8613800000001"),
    ("+1 (415) 555-0100", "+14155550100"),
    ("+44 20.7946.0958", "+442079460958"),
    ("+12345678", "+12345678"),
    ("+123456789012345", "+123456789012345"),
])
def test_normalise_phone(raw: str, e164: str) -> None:
    assert normalise_phone(raw) == e164


@pytest.mark.parametrize("raw", [
    "13800000001", "+1234567", "+1234567890123456", "+0861380000000", "+86 138 0000 000a", "",
    "+", "+86\u00a013800000001", "+\uff18\uff16\uff11\uff13\uff18\uff10\uff10\uff10\uff10\uff10\uff10",
    "+86 138 0000 0001 ext 5", "+86/13800000001", "+" + "1" * 40,
])
def test_invalid_phones(raw: str) -> None:
    with pytest.raises(GatewayError) as info:
        normalise_phone(raw)
    assert info.value.kind is PHONE_INVALID


@pytest.mark.parametrize(("phone", "masked"), [
    ("+8613800000001", "+86 138****0001"),
    ("+86 138 0000 0001", "+86 138****0001"),
    ("+14155550100", "+1 41****0100"),
    ("+442079460958", "+44 20****0958"),
    ("+85212345678", "+852 1***5678"),
    ("+12345678", "+1 ***5678"),
    ("not a phone 0123456789", "****"),
])
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


# --------------------------------------------------------------------------
# Sending


async def test_send_delivers_a_six_digit_code(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    sent = await make(any_store, clock, sender).send("challenge:c1", "+86 138 0000 0001", ip="192.0.2.1")
    assert sent == SentCode(expires_at=T0 + 300, resend_after=T0 + 60, to="+86 138****0001")
    [(phone, text)] = sender.sent
    assert phone == PHONE
    assert re.fullmatch(r"Portcullis code: \d{6}\. Valid 5 minutes\. Never share it\.", text)


async def test_only_the_hmac_of_the_code_is_stored(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    await make(any_store, clock, sender).send("challenge:c1", PHONE, ip="192.0.2.1")
    code = sender.last_code()
    raw = await any_store.get("mfa:sms:code:challenge:c1")
    assert raw is not None and code.encode() not in raw
    assert hmac.new(KEY, b"challenge:c1\x00" + code.encode(), hashlib.sha256).hexdigest().encode() in raw


async def test_codes_are_random(any_store: StateStore) -> None:
    sender = RecordingSender()
    otp = make(any_store, FakeClock(), sender)
    for n in range(5):
        await otp.send(f"challenge:{n}", PHONE, ip="192.0.2.1")
    assert len({text for _, text in sender.sent}) > 1


async def test_invalid_phone_is_refused_before_anything(any_store: StateStore) -> None:
    sender = RecordingSender()
    await raises(PHONE_INVALID, make(any_store, FakeClock(), sender).send("enrol:alice", "12345", ip="192.0.2.1"))
    assert sender.sent == []


async def test_resend_cooldown(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    clock.now += 20
    error = await raises(SMS_COOLDOWN, otp.send("challenge:c1", PHONE, ip="192.0.2.1"))
    assert error.headers == {"Retry-After": "40"}
    await otp.send("challenge:c2", PHONE, ip="192.0.2.1")  # per purpose
    clock.now += 40
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    assert len(sender.sent) == 3


async def test_a_new_send_replaces_the_previous_code(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    first = sender.last_code()
    clock.now += 60
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    second = sender.last_code()
    if first != second:
        await raises(OTP_INVALID, otp.verify("challenge:c1", first))
    await otp.verify("challenge:c1", second)


async def test_per_phone_limit(any_store: StateStore) -> None:
    clock = FakeClock()
    otp = make(any_store, clock, per_phone=(3, 3600.0))
    for n in range(3):
        await otp.send(f"challenge:{n}", PHONE, ip=f"192.0.2.{n}")
    error = await raises(SMS_SEND_LIMITED, otp.send("challenge:x", PHONE, ip="192.0.2.9"))
    assert error.headers == {"Retry-After": "1200"}  # one send back every 3600 / 3 seconds
    await otp.send("challenge:y", "+8613800000002", ip="192.0.2.9")
    clock.now += 1200
    await otp.send("challenge:x", PHONE, ip="192.0.2.9")


async def test_per_ip_limit(any_store: StateStore) -> None:
    clock = FakeClock()
    otp = make(any_store, clock, per_ip=(2, 600.0))
    for n in range(2):
        await otp.send(f"challenge:{n}", f"+861380000000{n}", ip="198.51.100.7")
    error = await raises(SMS_SEND_LIMITED, otp.send("challenge:x", "+8613800000009", ip="198.51.100.7"))
    assert error.headers == {"Retry-After": "300"}
    await otp.send("challenge:x", "+8613800000009", ip="198.51.100.8")


async def test_a_limited_send_does_not_start_the_cooldown(any_store: StateStore) -> None:
    clock = FakeClock()
    otp = make(any_store, clock, per_phone=(1, 60.0))
    await otp.send("challenge:a", PHONE, ip="192.0.2.1")
    await raises(SMS_SEND_LIMITED, otp.send("challenge:b", PHONE, ip="192.0.2.1"))
    clock.now += 60
    await otp.send("challenge:b", PHONE, ip="192.0.2.1")


async def test_sender_failure(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    sender.fail = True
    await raises(SMS_UNAVAILABLE, otp.send("challenge:c1", PHONE, ip="192.0.2.1"))
    assert await any_store.get("mfa:sms:code:challenge:c1") is None
    await raises(OTP_EXPIRED, otp.verify("challenge:c1", "123456"))
    sender.fail = False
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")  # no cooldown was consumed
    await otp.verify("challenge:c1", sender.last_code())


async def test_a_failed_resend_keeps_the_previous_code(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    code = sender.last_code()
    clock.now += 60
    sender.fail = True
    await raises(SMS_UNAVAILABLE, otp.send("challenge:c1", PHONE, ip="192.0.2.1"))
    await otp.verify("challenge:c1", code)


# --------------------------------------------------------------------------
# Verifying


async def test_verify_once(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    await otp.verify("challenge:c1", sender.last_code())
    await raises(OTP_EXPIRED, otp.verify("challenge:c1", sender.last_code()))


async def test_a_code_is_bound_to_its_purpose(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    await otp.send("challenge:c2", PHONE, ip="192.0.2.1")
    first, second = (re.findall(r"\d{6}", text)[0] for _, text in sender.sent)
    if first != second:
        await raises(OTP_INVALID, otp.verify("challenge:c2", first))
    await otp.verify("challenge:c2", second)


async def test_expired_code(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    clock.now += 300
    await raises(OTP_EXPIRED, otp.verify("challenge:c1", sender.last_code()))


async def test_no_code(any_store: StateStore) -> None:
    await raises(OTP_EXPIRED, make(any_store, FakeClock()).verify("challenge:none", "123456"))


async def test_five_attempts_then_the_code_is_dead(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    code = sender.last_code()
    for left in (4, 3, 2, 1, 0):
        error = await raises(OTP_INVALID, otp.verify("challenge:c1", other(code)))
        assert error.extra == {"attempts_left": left}
    await raises(OTP_EXPIRED, otp.verify("challenge:c1", code))


async def test_a_new_code_gets_new_attempts(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    for _ in range(5):
        await raises(OTP_INVALID, otp.verify("challenge:c1", other(sender.last_code())))
    clock.now += 60
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    await otp.verify("challenge:c1", sender.last_code())


@pytest.mark.parametrize("code", ["12345", "1234567", "12a456", "\uff11\uff12\uff13\uff14\uff15\uff16", "",
                                  " 123456", "123456\n"], ids=repr)
async def test_malformed_codes(any_store: StateStore, code: str) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    await raises(OTP_MALFORMED, otp.verify("challenge:c1", code))
    # Not an attempt: all five remain.
    error = await raises(OTP_INVALID, otp.verify("challenge:c1", other(sender.last_code())))
    assert error.extra == {"attempts_left": 4}


async def test_concurrent_verifications_succeed_once(any_store: StateStore) -> None:
    clock, sender = FakeClock(), RecordingSender()
    otp = make(any_store, clock, sender)
    await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
    code = sender.last_code()
    results = await asyncio.gather(*(otp.verify("challenge:c1", code) for _ in range(4)), return_exceptions=True)
    assert results.count(None) == 1
    assert all(isinstance(r, GatewayError) and r.kind is OTP_EXPIRED for r in results if r is not None)


def test_the_fake_is_an_sms_sender() -> None:
    assert isinstance(RecordingSender(), SmsSender)


# --------------------------------------------------------------------------
# FileSmsSender


async def test_file_sender_writes_json_lines_0600(tmp_path: Path) -> None:
    path = tmp_path / "demo" / "sms.log"
    sender = FileSmsSender(path, clock=lambda: 12.5)
    await sender.send(PHONE, "Portcullis code: 123456.")
    await sender.send("+8613800000002", "second")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"time": 12.5, "to": PHONE, "text": "Portcullis code: 123456."},
                     {"time": 12.5, "to": "+8613800000002", "text": "second"}]


async def test_file_sender_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SmsSendError):
        await FileSmsSender(blocker / "sms.log").send(PHONE, "x")


async def test_sms_otp_with_the_file_sender(any_store: StateStore, tmp_path: Path) -> None:
    path = tmp_path / "sms.log"
    otp = SmsOtp(any_store, FileSmsSender(path), hmac_key=KEY, clock=FakeClock())
    await otp.send("enrol:alice", PHONE, ip="192.0.2.1")
    [line] = path.read_text().splitlines()
    code = re.findall(r"\d{6}", json.loads(line)["text"])[0]
    await otp.verify("enrol:alice", code)


# --------------------------------------------------------------------------
# WebhookSmsSender against a real server on loopback


class Provider:
    """Answers with the scripted statuses in turn (then 200); "slow" waits past the client's timeout."""

    def __init__(self, statuses: list[int | str]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.json()))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == "slow":
            await asyncio.sleep(2)
            return web.Response(status=200)
        assert isinstance(status, int)
        if status in (301, 302, 307):
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.json_response({"ok": status < 300}, status=status)


@asynccontextmanager
async def provider(statuses: list[int | str]) -> AsyncIterator[tuple[Provider, str]]:
    receiver = Provider(statuses)
    app = web.Application()
    app.router.add_post("/sms", receiver.handle)
    app.router.add_post("/elsewhere", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield receiver, f"http://127.0.0.1:{runner.addresses[0][1]}/sms"
    finally:
        await runner.cleanup()


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


TEXT = "Portcullis code: 424242. Valid 5 minutes. Never share it."


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    for secret in secrets:
        assert secret not in text


async def webhook_send(url: str, sleeps: Sleeps, **kw: Any) -> None:
    sender = WebhookSmsSender(url, "provider-token-xyz", sleep=sleeps, backoff=0.25, **kw)
    try:
        await sender.send(PHONE, TEXT)
    finally:
        await sender.close()


async def test_webhook_delivers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()
    async with provider([]) as (receiver, url):
        await webhook_send(url, sleeps)
    [(headers, body)] = receiver.received
    assert body == {"to": PHONE, "text": TEXT}
    assert headers["Authorization"] == "Bearer provider-token-xyz"
    assert headers["Content-Type"] == "application/json"
    assert sleeps.slept == []
    assert any("+86 138****0001" in r.getMessage() and "200" in r.getMessage() for r in caplog.records)
    assert_not_logged(caplog, "424242", TEXT, PHONE, "provider-token-xyz")


async def test_webhook_retries_a_5xx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()
    async with provider([500, 503]) as (receiver, url):
        await webhook_send(url, sleeps)
    assert len(receiver.received) == 3
    assert sleeps.slept == [0.25, 0.5]
    assert_not_logged(caplog, "424242", PHONE, "provider-token-xyz")


async def test_webhook_gives_up_after_the_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()
    async with provider([500, 500, 500, 500]) as (receiver, url):
        with pytest.raises(SmsSendError) as info:
            await webhook_send(url, sleeps, retries=2)
    assert len(receiver.received) == 3 and info.value.status == 500
    assert "424242" not in str(info.value) and PHONE not in str(info.value)
    assert_not_logged(caplog, "424242", PHONE)


@pytest.mark.parametrize("status", [400, 401, 422, 302])
async def test_webhook_does_not_retry_a_4xx_or_redirect(status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()
    async with provider([status]) as (receiver, url):
        with pytest.raises(SmsSendError) as info:
            await webhook_send(url, sleeps)
    assert len(receiver.received) == 1 and info.value.status == status
    assert sleeps.slept == []
    assert_not_logged(caplog, "424242", PHONE)


async def test_webhook_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()
    async with provider(["slow", "slow"]) as (receiver, url):
        with pytest.raises(SmsSendError) as info:
            await webhook_send(url, sleeps, timeout=0.2, retries=1)
    assert len(receiver.received) == 2 and info.value.status is None
    assert_not_logged(caplog, "424242", PHONE)


async def test_webhook_connection_refused_is_retried() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    with pytest.raises(SmsSendError):
        await webhook_send(f"http://127.0.0.1:{port}/sms", sleeps, retries=2)
    assert sleeps.slept == [0.25, 0.5]


async def test_sms_otp_over_the_webhook_never_logs_the_code(any_store: StateStore,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with provider([500]) as (receiver, url):
        sender = WebhookSmsSender(url, "provider-token-xyz", sleep=Sleeps())
        try:
            otp = SmsOtp(any_store, sender, hmac_key=KEY, clock=FakeClock())
            await otp.send("challenge:c1", PHONE, ip="192.0.2.1")
        finally:
            await sender.close()
    code = re.findall(r"\d{6}", receiver.received[-1][1]["text"])[0]
    await otp.verify("challenge:c1", code)
    assert caplog.records
    assert_not_logged(caplog, code, PHONE, "provider-token-xyz")


async def test_sms_otp_sender_failure_logs_no_code(any_store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with provider([400]) as (receiver, url):
        sender = WebhookSmsSender(url, "provider-token-xyz", sleep=Sleeps())
        try:
            otp = SmsOtp(any_store, sender, hmac_key=KEY, clock=FakeClock())
            await raises(SMS_UNAVAILABLE, otp.send("challenge:c1", PHONE, ip="192.0.2.1"))
        finally:
            await sender.close()
    code = re.findall(r"\d{6}", receiver.received[-1][1]["text"])[0]
    assert_not_logged(caplog, code, PHONE, "provider-token-xyz")


def test_reprs_show_no_secrets() -> None:
    sender = WebhookSmsSender("http://127.0.0.1:9/sms", "provider-token-xyz")
    otp = SmsOtp(MemoryStore(), sender, hmac_key=KEY)
    assert "provider-token-xyz" not in repr(sender) and KEY.hex() not in repr(otp) and str(KEY) not in repr(otp)


async def test_webhook_without_a_token_sends_no_authorization() -> None:
    async with provider([]) as (receiver, url):
        sender = WebhookSmsSender(url, "", sleep=Sleeps())
        try:
            await sender.send(PHONE, TEXT)
        finally:
            await sender.close()
    [(headers, _)] = receiver.received
    assert "Authorization" not in headers
