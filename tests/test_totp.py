"""gateway.mfa.totp: RFC 4226/6238 vectors, drift, replay, lockout, backoff, malformed codes, sealed secrets.

Each test runs on a MemoryStore and on the real Redis (``any_store``), with a fake clock.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import pyotp
import pytest
from PIL import Image

from gateway.crypto import SecretBox
from gateway.errors import (
    ENROLMENT_NOT_FOUND,
    FACTOR_NOT_ENROLLED,
    OTP_INVALID,
    OTP_LOCKED,
    OTP_MALFORMED,
    OTP_REPLAYED,
    OTP_THROTTLED,
    ErrorKind,
    GatewayError,
)
from gateway.mfa.totp import Totp
from gateway.state.base import StateStore
from gateway.state.redis import RedisStore

RFC_SEED = b"12345678901234567890"
T0 = 1_700_000_010.0  # 10 s into a 30 s step


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fixed_rng(seed: bytes) -> Any:
    return lambda n: seed[:n]


def make(store: StateStore, clock: FakeClock, box: SecretBox | None = None, **kw: Any) -> Totp:
    return Totp(store, box or SecretBox.generate(), clock=clock, **kw)


def code_at(secret: str, t: float, digits: int = 6) -> str:
    return pyotp.TOTP(secret, digits=digits).at(int(t))


async def enrolled(totp: Totp, clock: FakeClock, sub: str = "alice") -> str:
    """Enrol ``sub`` at the clock's time, then move a step on (the confirming code is used)."""
    enrolment = await totp.begin_enrolment(sub, f"{sub}@example.com")
    await totp.confirm_enrolment(sub, code_at(enrolment.secret, clock()))
    clock.advance(30)
    return enrolment.secret


async def raises(kind: ErrorKind, coro: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    assert info.value.kind is kind, info.value.code
    return info.value


def _vectors_file() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
    return Path(os.environ.get("PORTCULLIS_VECTORS", default)) / "otp" / "otp_vectors.json"


@pytest.fixture
def otp_vectors(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "otp" / "otp_vectors.json").read_text())
    return data


# --------------------------------------------------------------------------
# Vectors


async def test_rfc4226_hotp_vectors(any_store: StateStore, otp_vectors: dict[str, Any]) -> None:
    hotp = otp_vectors["rfc4226_hotp"]
    assert base64.b32encode(hotp["secret_ascii"].encode()).decode() == hotp["secret_base32"]
    clock = FakeClock(0.0)
    totp = make(any_store, clock, drift=0, rng=fixed_rng(hotp["secret_ascii"].encode()))
    # A TOTP code is the HOTP of the time step: step c is [30c, 30c + 30).
    enrolment = await totp.begin_enrolment("alice", "alice")
    assert enrolment.secret == hotp["secret_base32"]
    first, *rest = hotp["vectors"]
    clock.now = first["counter"] * 30 + 15
    await totp.confirm_enrolment("alice", first["hotp_6"])
    for vector in rest:
        clock.now = vector["counter"] * 30 + 15
        await totp.verify("alice", vector["hotp_6"])


def _rfc6238_sha1() -> list[Any]:
    """The SHA-1 cases, read at collection time so each gets its own id."""
    path = _vectors_file()
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"OTP vectors not found at {path}"))]
    vectors = json.loads(path.read_text())["rfc6238_totp"]["vectors"]
    return [pytest.param(v, id=f"t{v['unix_time']}") for v in vectors if v["mode"] == "SHA1"]


@pytest.mark.parametrize("vector", _rfc6238_sha1())
async def test_rfc6238_sha1_8_digit_vectors(any_store: StateStore, vector: dict[str, Any]) -> None:
    clock = FakeClock(float(vector["unix_time"]))
    totp = make(any_store, clock, digits=8, drift=0, rng=fixed_rng(vector["seed_ascii"].encode()))
    await totp.begin_enrolment("alice", "alice")
    assert await totp.confirm_enrolment("alice", vector["totp_8"]) == vector["unix_time"]
    assert int(vector["unix_time"]) // 30 == int(vector["T_hex"], 16)


# --------------------------------------------------------------------------
# Enrolment


async def test_enrolment_uri_and_qr(any_store: StateStore) -> None:
    clock = FakeClock()
    enrolment = await make(any_store, clock).begin_enrolment("alice", "alice@example.com")
    assert len(enrolment.secret) == 32 and base64.b32decode(enrolment.secret)
    parts = urllib.parse.urlsplit(enrolment.uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert urllib.parse.unquote(parts.path) == "/Portcullis:alice@example.com"
    assert urllib.parse.parse_qs(parts.query) == {"secret": [enrolment.secret], "issuer": ["Portcullis"]}
    assert enrolment.qr_png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(enrolment.qr_png)) as image:
        image.load()
        assert image.format == "PNG" and image.size[0] == image.size[1] >= 21
    assert enrolment.expires_at == clock() + 600
    assert enrolment.secret not in repr(enrolment)


async def test_secrets_are_random(any_store: StateStore) -> None:
    totp = make(any_store, FakeClock())
    assert (await totp.begin_enrolment("a", "a")).secret != (await totp.begin_enrolment("b", "b")).secret


async def test_secret_is_stored_encrypted(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    enrolment = await totp.begin_enrolment("alice", "alice")
    pending = await any_store.get("mfa:totp:pending:alice")
    assert pending is not None
    await totp.confirm_enrolment("alice", code_at(enrolment.secret, clock()))
    active = await any_store.get("mfa:totp:active:alice")
    assert active is not None
    raw_secret = base64.b32decode(enrolment.secret)
    for raw in (pending, active):
        assert enrolment.secret.encode() not in raw and raw_secret not in raw
        assert raw[0] == 1  # the SecretBox format


async def test_a_sealed_secret_moved_to_another_account_does_not_open(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock, "alice")
    raw = await any_store.get("mfa:totp:active:alice")
    assert raw is not None
    await any_store.set("mfa:totp:active:mallory", raw)
    await raises(FACTOR_NOT_ENROLLED, totp.verify("mallory", code_at(secret, clock())))


async def test_confirm_makes_the_secret_active(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    assert await totp.enrolled_at("alice") is None
    enrolment = await totp.begin_enrolment("alice", "alice")
    assert await totp.enrolled_at("alice") is None
    assert await totp.confirm_enrolment("alice", code_at(enrolment.secret, clock())) == T0
    assert await totp.enrolled_at("alice") == T0
    clock.advance(30)
    await totp.verify("alice", code_at(enrolment.secret, clock()))


async def test_confirm_without_pending(any_store: StateStore) -> None:
    await raises(ENROLMENT_NOT_FOUND, make(any_store, FakeClock()).confirm_enrolment("alice", "123456"))


async def test_confirm_after_pending_expiry(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    enrolment = await totp.begin_enrolment("alice", "alice")
    clock.advance(600)
    await raises(ENROLMENT_NOT_FOUND, totp.confirm_enrolment("alice", code_at(enrolment.secret, clock())))


async def test_confirm_is_once(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    enrolment = await totp.begin_enrolment("alice", "alice")
    await totp.confirm_enrolment("alice", code_at(enrolment.secret, clock()))
    clock.advance(30)
    await raises(ENROLMENT_NOT_FOUND, totp.confirm_enrolment("alice", code_at(enrolment.secret, clock())))


async def test_the_confirming_code_cannot_be_replayed(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    enrolment = await totp.begin_enrolment("alice", "alice")
    code = code_at(enrolment.secret, clock())
    await totp.confirm_enrolment("alice", code)
    await raises(OTP_REPLAYED, totp.verify("alice", code))


async def test_confirm_with_a_wrong_code(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    enrolment = await totp.begin_enrolment("alice", "alice")
    wrong = f"{(int(code_at(enrolment.secret, clock())) + 1) % 10**6:06d}"
    error = await raises(OTP_INVALID, totp.confirm_enrolment("alice", wrong))
    assert error.extra == {"attempts_left": 9}
    assert await totp.enrolled_at("alice") is None


async def test_re_enrolment_replaces_the_old_secret(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    old = await enrolled(totp, clock)
    new = await enrolled(totp, clock)
    assert old != new
    await raises(OTP_INVALID, totp.verify("alice", code_at(old, clock())))
    await totp.verify("alice", code_at(new, clock()))


async def test_remove(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    assert await totp.remove("alice") is True
    assert await totp.remove("alice") is False
    assert await totp.enrolled_at("alice") is None
    await raises(FACTOR_NOT_ENROLLED, totp.verify("alice", code_at(secret, clock())))


async def test_not_enrolled(any_store: StateStore) -> None:
    await raises(FACTOR_NOT_ENROLLED, make(any_store, FakeClock()).verify("alice", "123456"))


async def test_a_pending_secret_does_not_verify(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    enrolment = await totp.begin_enrolment("alice", "alice")
    await raises(FACTOR_NOT_ENROLLED, totp.verify("alice", code_at(enrolment.secret, clock())))


async def test_another_key_ring_cannot_read_the_secret(any_store: StateStore) -> None:
    clock = FakeClock()
    secret = await enrolled(make(any_store, clock), clock)
    await raises(FACTOR_NOT_ENROLLED, make(any_store, clock).verify("alice", code_at(secret, clock())))


# --------------------------------------------------------------------------
# Drift and replay


@pytest.mark.parametrize("steps", [-1, 0, 1])
async def test_drift_of_one_step_is_accepted(any_store: StateStore, steps: int) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    clock.advance(60)  # well past the confirming step, so step -1 is not a replay
    await totp.verify("alice", code_at(secret, clock() + 30 * steps))


@pytest.mark.parametrize("steps", [-2, 2])
async def test_drift_of_two_steps_is_refused(any_store: StateStore, steps: int) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    clock.advance(90)
    await raises(OTP_INVALID, totp.verify("alice", code_at(secret, clock() + 30 * steps)))


async def test_a_code_is_accepted_once(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    code = code_at(secret, clock())
    await totp.verify("alice", code)
    await raises(OTP_REPLAYED, totp.verify("alice", code))
    clock.advance(25)  # still within the drift
    await raises(OTP_REPLAYED, totp.verify("alice", code))


async def test_an_older_step_after_a_newer_one_is_refused(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    clock.advance(60)
    await totp.verify("alice", code_at(secret, clock()))
    await raises(OTP_REPLAYED, totp.verify("alice", code_at(secret, clock() - 30)))


async def test_a_replay_is_not_a_failure(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    code = code_at(secret, clock())
    await totp.verify("alice", code)
    for _ in range(12):
        await raises(OTP_REPLAYED, totp.verify("alice", code))
    clock.advance(30)
    await totp.verify("alice", code_at(secret, clock()))


async def test_replay_refused_across_two_gateway_processes(redis_url: str, redis_prefix: str) -> None:
    clock = FakeClock()
    box = SecretBox.generate()
    stores = [RedisStore(redis_url, redis_prefix, timeout=2.0) for _ in range(2)]
    try:
        first, second = (Totp(store, box, clock=clock) for store in stores)
        secret = await enrolled(first, clock)
        code = code_at(secret, clock())
        await second.verify("alice", code)
        await raises(OTP_REPLAYED, first.verify("alice", code))
    finally:
        for store in stores:
            await store.close()


async def test_concurrent_verifications_of_one_code_accept_one(redis_url: str, redis_prefix: str) -> None:
    clock = FakeClock()
    box = SecretBox.generate()
    stores = [RedisStore(redis_url, redis_prefix, timeout=2.0) for _ in range(4)]
    try:
        totps = [Totp(store, box, clock=clock) for store in stores]
        secret = await enrolled(totps[0], clock)
        code = code_at(secret, clock())
        results = await asyncio.gather(*(t.verify("alice", code) for t in totps), return_exceptions=True)
        assert results.count(None) == 1
        assert all(isinstance(r, GatewayError) and r.kind is OTP_REPLAYED for r in results if r is not None)
    finally:
        for store in stores:
            await store.close()


# --------------------------------------------------------------------------
# Failures, backoff, lockout


def wrong_code(secret: str, t: float) -> str:
    """A code no step within ±2 of ``t`` has."""
    near = {code_at(secret, t + 30 * k) for k in range(-2, 3)}
    return next(c for c in (f"{n:06d}" for n in range(10**6)) if c not in near)


async def test_wrong_code_reports_attempts_left(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    for left in (9, 8):
        error = await raises(OTP_INVALID, totp.verify("alice", wrong_code(secret, clock())))
        assert error.extra == {"attempts_left": left}
        assert error.headers is None


async def test_backoff_after_the_third_consecutive_failure(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    bad = wrong_code(secret, clock())
    for _ in range(2):
        await raises(OTP_INVALID, totp.verify("alice", bad))
    third = await raises(OTP_INVALID, totp.verify("alice", bad))
    assert third.headers == {"Retry-After": "1"}
    throttled = await raises(OTP_THROTTLED, totp.verify("alice", bad))
    assert throttled.headers == {"Retry-After": "1"}
    clock.advance(1)
    fourth = await raises(OTP_INVALID, totp.verify("alice", bad))
    assert fourth.headers == {"Retry-After": "2"} and fourth.extra == {"attempts_left": 6}  # throttled not counted
    clock.advance(1)
    assert (await raises(OTP_THROTTLED, totp.verify("alice", bad))).headers == {"Retry-After": "1"}
    clock.advance(1)
    await raises(OTP_INVALID, totp.verify("alice", bad))
    assert (await raises(OTP_THROTTLED, totp.verify("alice", bad))).headers == {"Retry-After": "4"}


async def test_backoff_is_capped_at_60_seconds(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock, max_failures=100)
    secret = await enrolled(totp, clock)
    bad = wrong_code(secret, clock())
    waits = []
    for _ in range(12):
        error = await raises(OTP_INVALID, totp.verify("alice", bad))
        waits.append(error.headers["Retry-After"] if error.headers else None)
        clock.advance(60)
        bad = wrong_code(secret, clock())
    assert waits == [None, None, "1", "2", "4", "8", "16", "32", "60", "60", "60", "60"]


async def test_a_success_clears_the_consecutive_count(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    for _ in range(3):
        await raises(OTP_INVALID, totp.verify("alice", wrong_code(secret, clock())))
    clock.advance(1)
    await totp.verify("alice", code_at(secret, clock()))
    clock.advance(30)
    error = await raises(OTP_INVALID, totp.verify("alice", wrong_code(secret, clock())))
    assert error.headers is None and error.extra == {"attempts_left": 6}  # the window still counts
    await raises(OTP_INVALID, totp.verify("alice", wrong_code(secret, clock())))


async def test_lockout_after_ten_failures(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    window_start = clock()  # the first attempt counted: the confirmation (a success does not end the window)
    secret = await enrolled(totp, clock)
    for _ in range(9):
        await raises(OTP_INVALID, totp.verify("alice", wrong_code(secret, clock())))
        clock.advance(61)  # past any backoff
    tenth = await raises(OTP_LOCKED, totp.verify("alice", wrong_code(secret, clock())))
    assert tenth.extra == {"attempts_left": 0}
    assert tenth.headers == {"Retry-After": str(int(window_start + 900 - clock()))}
    # Locked even for the right code, until the window ends.
    clock.advance(10)
    locked = await raises(OTP_LOCKED, totp.verify("alice", code_at(secret, clock())))
    assert locked.headers == {"Retry-After": str(int(window_start + 900 - clock()))}
    clock.now = window_start + 900
    await totp.verify("alice", code_at(secret, clock()))


async def test_lockout_is_per_account(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock, max_failures=2)
    alice = await enrolled(totp, clock, "alice")
    bob = await enrolled(totp, clock, "bob")
    for _ in range(2):
        with pytest.raises(GatewayError):
            await totp.verify("alice", wrong_code(alice, clock()))
    await raises(OTP_LOCKED, totp.verify("alice", code_at(alice, clock())))
    await totp.verify("bob", code_at(bob, clock()))


async def test_lockout_survives_removal_and_re_enrolment(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock, max_failures=2)
    secret = await enrolled(totp, clock)
    for _ in range(2):
        with pytest.raises(GatewayError):
            await totp.verify("alice", wrong_code(secret, clock()))
    await totp.remove("alice")
    enrolment = await totp.begin_enrolment("alice", "alice")
    await raises(OTP_LOCKED, totp.confirm_enrolment("alice", code_at(enrolment.secret, clock())))


async def test_concurrent_guesses_cannot_pass_the_lockout(redis_url: str, redis_prefix: str) -> None:
    clock = FakeClock()
    box = SecretBox.generate()
    stores = [RedisStore(redis_url, redis_prefix, timeout=2.0) for _ in range(4)]
    try:
        totps = [Totp(store, box, clock=clock, max_failures=5) for store in stores]
        secret = await enrolled(totps[0], clock)
        bad = wrong_code(secret, clock())
        results = await asyncio.gather(*(totps[i % 4].verify("alice", bad) for i in range(20)),
                                       return_exceptions=True)
        kinds = [r.kind for r in results if isinstance(r, GatewayError)]
        assert len(kinds) == 20
        assert kinds.count(OTP_INVALID) + kinds.count(OTP_LOCKED) + kinds.count(OTP_THROTTLED) == 20
        assert kinds.count(OTP_INVALID) <= 4  # the 5th wrong code is answered OTP_LOCKED
    finally:
        for store in stores:
            await store.close()


# --------------------------------------------------------------------------
# Malformed codes


MALFORMED = ["12345", "1234567", "12a456", "\uff11\uff12\uff13\uff14\uff15\uff16", "", " 123456", "123456\n",
             "12 456", "-12345", "+12345", "١٢٣٤٥٦"]


@pytest.mark.parametrize("code", MALFORMED, ids=repr)
async def test_malformed_codes(any_store: StateStore, code: str) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    await enrolled(totp, clock)
    await raises(OTP_MALFORMED, totp.verify("alice", code))


async def test_malformed_codes_are_not_counted_as_failures(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    for _ in range(3):
        for code in MALFORMED:
            await raises(OTP_MALFORMED, totp.verify("alice", code))
    error = await raises(OTP_INVALID, totp.verify("alice", wrong_code(secret, clock())))
    assert error.extra == {"attempts_left": 9}


async def test_malformed_depends_on_digits(any_store: StateStore) -> None:
    clock = FakeClock()
    totp = make(any_store, clock, digits=8)
    secret = await enrolled_8(totp, clock)
    error = await raises(OTP_MALFORMED, totp.verify("alice", "123456"))
    assert "8 digits" in error.message
    await totp.verify("alice", code_at(secret, clock(), digits=8))


async def enrolled_8(totp: Totp, clock: FakeClock) -> str:
    enrolment = await totp.begin_enrolment("alice", "alice")
    await totp.confirm_enrolment("alice", code_at(enrolment.secret, clock(), digits=8))
    clock.advance(30)
    return enrolment.secret


async def test_secrets_and_codes_are_not_logged(any_store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    clock = FakeClock()
    totp = make(any_store, clock)
    secret = await enrolled(totp, clock)
    code = code_at(secret, clock())
    await totp.verify("alice", code)
    with pytest.raises(GatewayError):
        await totp.verify("alice", code)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in text and code not in text
