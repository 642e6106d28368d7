"""The step-up workflow: issue a challenge, answer it with a factor, enrol factors.

Pure rules live in levels.py (which methods reach a level) and challenges.py
(the binding); this module adds the I/O: the shared state store, the factor
stores (TOTP, SMS, the face service), the notifier and the audit trail.

Which methods a challenge offers: those of a way to the asked level whose
methods the customer can all use now. A method is usable when it is
enrolled (SMS: a phone enrolled, or the phone on file in the backend's
account facts), not withdrawn (the face service down), not exhausted on this
challenge (``max_attempts`` failures) and, for a transfer or a factor change,
out of its cooling-off. Face is never the only way to the strongest level
(levels.py), so a customer with other factors is never locked behind a
camera.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.context import RequestContext
from gateway.crypto.fields import is_sealed
from gateway.crypto.key_errors import KeyErased, KeyRingError
from gateway.crypto.secretbox import SecretBox, SecretBoxError
from gateway.errors import (
    CHALLENGE_EXPIRED,
    CHALLENGE_FAILED,
    CHALLENGE_NOT_FOUND,
    CHALLENGE_USED,
    METHOD_NOT_OFFERED,
    NO_STEP_UP_METHOD,
    PERSONAL_DATA_ERASED,
    PHONE_UNKNOWN,
    STEP_UP_REQUIRED,
    GatewayError,
)
from gateway.jose import b64url
from gateway.mfa.challenges import Binding, Challenge, ChallengeStore, body_digest, challenge_header
from gateway.mfa.levels import AMR, Ladder
from gateway.mfa.sms import SentCode, SmsOtp, normalise_phone
from gateway.mfa.tokens import HEADER, StepUpClaims, StepUpTokens
from gateway.mfa.totp import Totp
from gateway.policy.engine import StepUp
from gateway.state.base import StateStore

if TYPE_CHECKING:
    from gateway.personal_data import PersonalData

log = logging.getLogger("portcullis.mfa")

TRANSACTION_TIERS = frozenset({"trade", "transfer"})
COOLING_TIERS = frozenset({"transfer", "factor"})
"""Where a factor still in its cooling-off does not count: transfers and factor changes."""

FACTOR_LEVEL = {"totp": "urn:portcullis:acr:mfa", "sms": "urn:portcullis:acr:mfa",
                "face": "urn:portcullis:acr:face"}
"""The level a change of each factor needs (the factor's own strength)."""


class FaceChecks(Protocol):
    """What the gateway needs of the face service (biometrics.client.BiometricsClient)."""

    async def face_available(self) -> bool: ...
    async def consent(self, customer: str, granted: bool, text_version: str, channel: str = "app") -> None: ...
    async def enrol(self, customer: str, image: bytes) -> None: ...
    async def verify(self, customer: str, image: bytes) -> bool: ...
    async def liveness(self, customer: str, frames: Sequence[bytes]) -> bool: ...
    async def delete(self, customer: str) -> bool: ...


PhoneOnFile = Callable[[str], Awaitable[str | None]]
"""account -> the phone number in the backend's account facts (None: none on file)."""
Audit = Callable[[RequestContext, str, dict[str, Any]], None]
"""(ctx, action, fields): queue an audit record of a step-up event."""


@dataclass(frozen=True, slots=True)
class Factors:
    """A customer's factors: method -> when it was enrolled (0.0: on file since before the gateway)."""

    enrolled: Mapping[str, float]
    phone: str | None
    """The phone SMS codes go to (enrolled, else on file), in full: never shown, masked for output."""
    phone_source: str | None
    """"enrolled" or "on_file"."""

    def usable(self, now: float, cooling_off: float, cooling: bool) -> set[str]:
        return {m for m, at in self.enrolled.items() if not cooling or at <= now - cooling_off}


class FactorRecords:
    """The gateway's own factor records: the SMS phone (sealed) and the face enrolment time.

    The phone is sealed twice: the record under the step-up secrets box, and, with ``[crypto]`` on, the
    number inside it under the customer's own data key (gateway/personal_data.py), so erasing that key
    erases the number too. TOTP secrets are kept by totp.py; face templates by the face service.
    """

    def __init__(self, store: StateStore, box: SecretBox, personal: PersonalData | None = None) -> None:
        self._store = store
        self._box = box
        self._personal = personal

    async def _pack(self, sub: str, label: str, phone: str, now: float) -> bytes:
        value: Any = phone
        if self._personal is not None:
            try:
                value = await self._personal.seal(sub, "mfa_phone", phone)
            except KeyErased:
                raise GatewayError(PERSONAL_DATA_ERASED) from None
        return self._box.seal(orjson.dumps({"phone": value, "at": now}), f"{label}:{sub}".encode())

    async def _unpack(self, sub: str, label: str, raw: bytes) -> tuple[str, float] | None:
        try:
            doc = orjson.loads(self._box.open(raw, f"{label}:{sub}".encode()))
            phone, at = doc["phone"], float(doc["at"])
        except (SecretBoxError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("mfa_phone_record_unreadable")
            return None
        if is_sealed(phone):
            if self._personal is None:
                log.error("mfa_phone_record_sealed_but_crypto_off")
                return None
            try:
                phone = await self._personal.open(sub, "mfa_phone", phone)
            except KeyErased:
                return None  # erased with the customer's key: no phone
            except KeyRingError:
                log.error("mfa_phone_record_unreadable")
                return None
        return str(phone), at

    async def phone(self, sub: str) -> tuple[str, float] | None:
        raw = await self._store.get(f"mfa:phone:{sub}")
        return None if raw is None else await self._unpack(sub, "phone", raw)

    async def set_phone(self, sub: str, phone: str, now: float) -> None:
        await self._store.set(f"mfa:phone:{sub}", await self._pack(sub, "phone", phone, now))

    async def pending_phone(self, sub: str) -> str | None:
        raw = await self._store.get(f"mfa:phone-pending:{sub}")
        got = None if raw is None else await self._unpack(sub, "phone-pending", raw)
        return got[0] if got is not None else None

    async def set_pending_phone(self, sub: str, phone: str, now: float, ttl: float = 600.0) -> None:
        await self._store.set(f"mfa:phone-pending:{sub}", await self._pack(sub, "phone-pending", phone, now), ttl)

    async def clear_pending_phone(self, sub: str) -> None:
        await self._store.delete(f"mfa:phone-pending:{sub}")

    async def face(self, sub: str) -> float | None:
        raw = await self._store.get(f"mfa:face:{sub}")
        return float(raw) if raw is not None else None

    async def set_face(self, sub: str, now: float | None) -> None:
        if now is None:
            await self._store.delete(f"mfa:face:{sub}")
        else:
            await self._store.set(f"mfa:face:{sub}", repr(now).encode())


class FaceAvailability:
    """Whether the face method may be offered: the service answered its health check lately.

    Checked at start-up and again at most every ``recheck`` seconds; a call that finds the
    service down withdraws face at once. A missing service never stops the gateway.
    """

    def __init__(self, face: FaceChecks | None, *, recheck: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._face = face
        self._recheck = recheck
        self._clock = clock
        self._ok = False
        self._checked = -1e18
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self._face is not None

    async def check(self) -> bool:
        if self._face is None:
            return False
        async with self._lock:
            try:
                self._ok = await self._face.face_available()
            except Exception as exc:  # any failure: withdraw face, keep the gateway up
                log.warning("face_service_check_failed: %s", type(exc).__name__)
                self._ok = False
            self._checked = self._clock()
            if not self._ok:
                log.warning("face_method_withdrawn: the face service is missing or broken")
        return self._ok

    async def available(self) -> bool:
        if self._face is None:
            return False
        if self._clock() - self._checked > self._recheck:
            return await self.check()
        return self._ok

    def withdraw(self) -> None:
        self._ok = False
        self._checked = self._clock()


class StepUps:
    """Issues challenges, answers them, and checks the step-up tokens of retried requests."""

    def __init__(self, *, ladder: Ladder, store: StateStore, tokens: StepUpTokens, totp: Totp, sms: SmsOtp,
                 records: FactorRecords, phone_on_file: PhoneOnFile, face: FaceChecks | None,
                 audit: Audit, challenge_ttl: float = 300.0, token_ttl: int = 120, session_ttl: int = 900,
                 max_attempts: int = 5, cooling_off: float = 86_400.0, face_liveness: bool = True,
                 sms_enabled: bool = True,
                 on_success: Callable[[str, str | None], Awaitable[None]] | None = None,
                 on_failure: Callable[[str, float], Awaitable[None]] | None = None) -> None:
        self.ladder = ladder
        self.challenges = ChallengeStore(store)
        self._store = store
        self.tokens = tokens
        self.totp = totp
        self.sms = sms
        self.records = records
        self._phone_on_file = phone_on_file
        self.face = face
        self.face_state = FaceAvailability(face)
        self._audit = audit
        self.challenge_ttl = challenge_ttl
        self.token_ttl = token_ttl
        self.session_ttl = session_ttl
        self.max_attempts = max_attempts
        self.cooling_off = cooling_off
        self.face_liveness = face_liveness
        self.sms_enabled = sms_enabled
        self.sender: object = None
        """The SMS sender, closed with the service (build.py sets it)."""
        """False without a configured SMS sender: SMS is then never offered."""
        self._on_success = on_success
        """(sub, device id): a step-up succeeded from this device (the risk engine marks it known)."""
        self._on_failure = on_failure
        """(sub, now): a one-time code or face check failed (the risk engine's failed-MFA signal)."""

    def token_used(self, ctx: RequestContext, claims: StepUpClaims) -> None:
        """Audit a request that a step-up token raised (the decision record follows it)."""
        self._audit(ctx, "step_up_token_used", {"challenge_id": claims.cid, "token_id": claims.jti,
                                                 "acr": claims.acr, "amr": list(claims.amr),
                                                 "binding": "transaction" if claims.txn else "session"})

    async def close(self) -> None:
        """Close the face client's and the SMS webhook's connection pools."""
        for part in (self.face, self.sender):
            close = getattr(part, "close", None)
            if close is not None:
                await close()

    # -- factors ------------------------------------------------------------

    async def factors(self, sub: str, account: str | None) -> Factors:
        totp_at, phone, face_at = await asyncio.gather(
            self.totp.enrolled_at(sub), self.records.phone(sub), self.records.face(sub))
        enrolled: dict[str, float] = {}
        if totp_at is not None:
            enrolled["totp"] = totp_at
        number: str | None = None
        source: str | None = None
        if phone is not None:
            number, enrolled["sms"], source = phone[0], phone[1], "enrolled"
        elif account is not None:
            try:
                on_file = await self._phone_on_file(account)
            except Exception as exc:  # the backend down: SMS to the phone on file is not offered now
                log.warning("mfa_phone_on_file_unavailable: %s", type(exc).__name__)
                on_file = None
            if on_file:
                try:
                    number, enrolled["sms"], source = normalise_phone(on_file), 0.0, "on_file"
                except GatewayError:
                    log.warning("mfa_phone_on_file_invalid")
        if face_at is not None:
            enrolled["face"] = face_at
        return Factors(enrolled, number, source)

    async def _usable(self, factors: Factors, now: float, cooling: bool) -> set[str]:
        usable = factors.usable(now, self.cooling_off, cooling)
        if not self.sms_enabled:
            usable.discard("sms")
        if "face" in usable and not await self.face_state.available():
            usable.discard("face")
        return usable

    # -- issuing --------------------------------------------------------------

    async def challenge(self, ctx: RequestContext, step_up: StepUp, *, reasons: Sequence[str],
                        description: str = "A stronger authentication is required",
                        tier: str | None = None, factors: Factors | None = None) -> GatewayError:
        """Store a challenge bound to this request; return the 401 to answer with.

        ``factors``: the customer's factors when the caller has just read them (a factor change).
        """
        subject = ctx.subject
        assert subject is not None
        tier = tier or ctx.route.tier
        if factors is None:
            account = ctx.account or (subject.accounts[0] if subject.accounts else None)
            factors = await self.factors(subject.sub, account)
        usable = await self._usable(factors, ctx.now, tier in COOLING_TIERS)
        methods = self.ladder.offer(step_up.acr, usable, step_up.methods or None)
        risk_factors = tuple(f.code for f in ctx.risk.factors) if ctx.risk is not None else ()
        if not methods:
            self._audit(ctx, "step_up_impossible", {"acr": step_up.acr, "reasons": list(reasons)})
            return GatewayError(NO_STEP_UP_METHOD, extra={"acr_values": step_up.acr, "reasons": list(reasons),
                                                          "risk_factors": list(risk_factors)})
        ch = Challenge(
            id=ChallengeStore.new_id(), sub=subject.sub, ath=b64url(subject.token_digest), jkt=ctx.device_id,
            binding=Binding(ctx.method, ctx.path, ctx.account, body_digest(ctx.body, ctx.json_body)),
            transaction=tier in TRANSACTION_TIERS or tier == "factor", acr=step_up.acr, max_age=step_up.max_age,
            allowed=tuple(step_up.methods) if step_up.methods else None, methods=tuple(methods),
            reasons=tuple(reasons), risk_factors=risk_factors, created=ctx.now,
            expires_at=ctx.now + self.challenge_ttl, request_id=ctx.request_id, tier=tier)
        await self.challenges.put(ch, ctx.now)
        self._audit(ctx, "step_up_challenge", {"challenge_id": ch.id, "acr": ch.acr, "methods": methods,
                                               "reasons": list(reasons), "transaction": ch.transaction})
        return GatewayError(
            STEP_UP_REQUIRED, description,
            headers={"WWW-Authenticate": challenge_header(step_up.acr, step_up.max_age, description)},
            extra={"challenge_id": ch.id, "methods": methods, "expires_at": int(ch.expires_at),
                   "acr_values": step_up.acr, "max_age": step_up.max_age, "reasons": list(reasons),
                   "risk_factors": list(risk_factors), "step_up_header": HEADER})

    # -- answering ---------------------------------------------------------------

    async def load(self, ctx: RequestContext, challenge_id: str) -> Challenge:
        subject = ctx.subject
        assert subject is not None
        ch = await self.challenges.get(challenge_id)
        # Another customer's challenge, or one issued to another token or device, is "not found":
        # its existence is not the caller's business.
        if (ch is None or ch.sub != subject.sub or ch.ath != b64url(subject.token_digest)
                or (ch.jkt is not None and ch.jkt != ctx.device_id)):
            raise GatewayError(CHALLENGE_NOT_FOUND)
        if ctx.now >= ch.expires_at:
            raise GatewayError(CHALLENGE_EXPIRED)
        if await self._store.get(f"mfa:ch:{ch.id}:used") is not None:
            raise GatewayError(CHALLENGE_USED)
        return ch

    async def open_methods(self, ctx: RequestContext, ch: Challenge) -> tuple[list[str], list[str], Factors]:
        """(methods still worth doing, methods done, factors) for this challenge now."""
        account = ch.binding.account or (ctx.subject.accounts[0] if ctx.subject and ctx.subject.accounts else None)
        factors, done, fails = await asyncio.gather(
            self.factors(ch.sub, account), self.challenges.done(ch), self.challenges.failures(ch, list(AMR)))
        usable = await self._usable(factors, ctx.now, ch.tier in COOLING_TIERS)
        usable = {m for m in usable if fails.get(m, 0) < self.max_attempts}
        return self.ladder.still_needed(ch.acr, done, usable, ch.allowed), done, factors

    async def _begin(self, ctx: RequestContext, challenge_id: str, method: str) -> tuple[Challenge, Factors]:
        ch = await self.load(ctx, challenge_id)
        open_methods, _, factors = await self.open_methods(ctx, ch)
        if not open_methods:
            raise GatewayError(CHALLENGE_FAILED)
        if method not in open_methods:
            raise GatewayError(METHOD_NOT_OFFERED, extra={"methods": open_methods})
        return ch, factors

    async def send_sms(self, ctx: RequestContext, challenge_id: str) -> dict[str, Any]:
        ch, factors = await self._begin(ctx, challenge_id, "sms")
        if factors.phone is None:
            raise GatewayError(PHONE_UNKNOWN)
        sent: SentCode = await self.sms.send(f"challenge:{ch.id}", factors.phone, ip=ctx.client_ip)
        self._audit(ctx, "step_up_sms_sent", {"challenge_id": ch.id, "to": sent.to})
        return {"sent_to": sent.to, "expires_at": int(sent.expires_at), "resend_after": int(sent.resend_after)}

    async def answer(self, ctx: RequestContext, challenge_id: str, method: str,
                     check: Callable[[Challenge], Awaitable[None]]) -> tuple[int, dict[str, Any]]:
        """Run ``check`` (raises on a wrong answer) for ``method``; on success maybe issue the token."""
        ch, _ = await self._begin(ctx, challenge_id, method)
        try:
            await check(ch)
        except GatewayError as exc:
            if exc.status in (400, 403, 409, 410, 422) and exc.code not in _NOT_COUNTED:
                failures = await self.challenges.fail(ch, method, ctx.now)
                if self._on_failure is not None:
                    await self._on_failure(ch.sub, ctx.now)
                open_methods, _, _ = await self.open_methods(ctx, ch)
                self._audit(ctx, "step_up_failed", {"challenge_id": ch.id, "method": method, "code": exc.code,
                                                     "failures": failures})
                exc.extra = {**(exc.extra or {}), "methods": open_methods,
                             "attempts_left": max(self.max_attempts - failures, 0)}
            raise
        done = await self.challenges.mark_done(ch, method, ctx.now)
        reached = self.ladder.reached(done)
        if not self.ladder.satisfies(reached, ch.acr):
            open_methods, _, _ = await self.open_methods(ctx, ch)
            self._audit(ctx, "step_up_progress", {"challenge_id": ch.id, "method": method, "done": done})
            return 202, {"status": "more_needed", "done": done, "methods": open_methods, "acr_values": ch.acr}
        if not await self.challenges.consume(ch, ctx.now):
            raise GatewayError(CHALLENGE_USED)
        assert reached is not None and ctx.subject is not None
        now = int(ctx.now)
        ttl = self.token_ttl if ch.transaction else min(self.session_ttl, ch.max_age or self.session_ttl)
        amr = sorted(set(ctx.subject.amr) | {AMR[m] for m in done} | ({"mfa"} if len(done) > 1 else set()))
        token, claims = self.tokens.issue(
            sub=ch.sub, acr=reached, amr=amr, auth_time=now, ttl=ttl, cid=ch.id, ath=ch.ath, jkt=ch.jkt,
            txn=ch.binding.digest() if ch.transaction else None, now=now)
        if self._on_success is not None and ch.jkt is not None:
            await self._on_success(ch.sub, ch.jkt)
        self._audit(ctx, "step_up_passed", {"challenge_id": ch.id, "method": "+".join(done), "acr": reached,
                                             "transaction": ch.transaction, "token_id": claims.jti})
        return 200, {"step_up_token": token, "token_type": "step-up+jwt", "header": HEADER,
                     "expires_in": ttl, "acr": reached, "amr": amr,
                     "binding": "transaction" if ch.transaction else "session"}


_NOT_COUNTED = frozenset({"face_consent_required", "face_not_enrolled", "face_unavailable", "otp_locked",
                          "otp_throttled", "challenge_not_found", "challenge_expired", "challenge_used",
                          "method_not_offered", "factor_not_enrolled", "otp_expired", "otp_malformed"})
"""Refusals that say nothing about the answer's correctness: they do not use up an attempt."""

