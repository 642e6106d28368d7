"""Assemble the step-up components from ``[step_up]`` (docs/STEP_UP.md "Configuration")."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biometrics.client import BiometricsClient
from gateway.config import StepUpConfig
from gateway.context import RequestContext
from gateway.crypto.secretbox import SecretBox
from gateway.mfa.levels import Ladder
from gateway.mfa.service import FaceChecks, FactorRecords, PhoneOnFile, StepUps
from gateway.mfa.sms import FileSmsSender, SmsOtp, SmsSender, SmsSendError, WebhookSmsSender
from gateway.mfa.tokens import StepUpTokens, load_key
from gateway.mfa.totp import Totp
from gateway.risk.engine import RiskEngine
from gateway.state.base import StateStore
from gateway.steps.audit import AuditDecision, base_record

if TYPE_CHECKING:
    from gateway.personal_data import PersonalData

log = logging.getLogger("portcullis.mfa")


def _key(path: Path | None) -> bytes:
    """A key file's key (created if absent); without a file, a key of this process's own."""
    return load_key(path, create=True) if path is not None else secrets.token_bytes(32)


def build_sender(cfg: StepUpConfig) -> SmsSender | None:
    if cfg.sms_sender == "webhook":
        assert cfg.sms_url is not None
        token = cfg.sms_token_file.read_text().strip() if cfg.sms_token_file is not None else ""
        return WebhookSmsSender(cfg.sms_url, token=token, timeout=cfg.sms_timeout, retries=cfg.sms_retries)
    if cfg.sms_file is not None:
        return FileSmsSender(cfg.sms_file)
    return None


def build_face(cfg: StepUpConfig) -> FaceChecks | None:
    if cfg.face_url is None:
        return None
    assert cfg.face_secret_file is not None
    return BiometricsClient(cfg.face_url, cfg.face_secret_file.read_bytes().strip())


def build_stepups(cfg: StepUpConfig, *, state: StateStore, risk: RiskEngine, auditor: AuditDecision,
                  phone_on_file: PhoneOnFile, sms_sender: SmsSender | None = None,
                  face: FaceChecks | None = None, clock: Callable[[], float] = time.time,
                  count: Callable[[str, str], None] | None = None,
                  personal: PersonalData | None = None) -> StepUps:
    box = (SecretBox.from_file(cfg.secrets_file, create=True) if cfg.secrets_file is not None
           else SecretBox.generate())
    sender = sms_sender if sms_sender is not None else build_sender(cfg)
    if sender is None:
        log.warning("step_up_sms_disabled: no [step_up] sms_file or sms_sender = \"webhook\"")

    def audit(ctx: RequestContext, action: str, fields: dict[str, Any]) -> None:
        record = base_record(ctx, "step_up")
        record.update({"action": action, **fields})
        auditor.queue(record)
        if count is not None:  # the metric: step_up_failed -> ("failed", "totp")
            method = fields.get("method")
            count(action.removeprefix("step_up_"), method if isinstance(method, str) else "-")

    async def succeeded(sub: str, device: str | None) -> None:
        if device is not None:
            await risk.mark_known(sub, device)

    stepups = StepUps(
        ladder=Ladder.build(cfg.levels), store=state, tokens=StepUpTokens(_key(cfg.key_file)),
        totp=Totp(state, box, issuer=cfg.totp_issuer, clock=clock),
        sms=SmsOtp(state, sender or _NoSender(), hmac_key=_key(cfg.sms_key_file), clock=clock),
        records=FactorRecords(state, box, personal), phone_on_file=phone_on_file,
        face=face if face is not None else build_face(cfg), audit=audit,
        challenge_ttl=cfg.challenge_ttl, token_ttl=cfg.token_ttl, session_ttl=cfg.session_ttl,
        max_attempts=cfg.max_attempts, cooling_off=cfg.cooling_off, face_liveness=cfg.face_liveness,
        sms_enabled=sender is not None, on_success=succeeded, on_failure=risk.record_auth_failure)
    stepups.sender = sender
    return stepups


class _NoSender:
    async def send(self, phone: str, text: str) -> None:
        raise SmsSendError("no SMS sender is configured")
