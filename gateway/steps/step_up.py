"""The two pipeline steps of step-up authentication (gateway/mfa, docs/STEP_UP.md).

* :class:`StepUpToken` (after the body is read and decrypted): a retried request
  carrying ``X-Portcullis-Step-Up`` is checked against the token's bindings
  (customer, access token, device key and, for a transaction token, this exact
  request: method, path, account, body digest). A transaction token is consumed
  atomically in the shared state store on first use, so it never approves a
  second identical order, on any gateway process. The subject then carries the
  token's acr, amr and auth_time, so the policy input shows the stronger level
  and the MFA age. An expired token is ignored (the request is judged without it, so
  the policy asks again); a forged, foreign or malformed one is refused. Without the
  header this step costs one dict lookup.
* :class:`StepUpChallenge` (after the decision): when the policy asks for a
  step-up, store a challenge bound to this request and answer 401 with the
  RFC 9470 ``WWW-Authenticate`` challenge and ``{challenge_id, methods,
  expires_at, reasons}``.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Awaitable

from gateway.context import RequestContext
from gateway.errors import STEP_UP_TOKEN_INVALID, STEP_UP_TOKEN_MISMATCH, STEP_UP_TOKEN_USED, GatewayError
from gateway.jose import b64url
from gateway.mfa.challenges import Binding, body_digest
from gateway.mfa.service import StepUps
from gateway.mfa.tokens import HEADER, StepUpClaims, StepUpTokenError, StepUpTokenExpired
from gateway.state.base import StateStore
from gateway.steps.judge import bare_challenge


def _same(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a.encode(), b.encode())


class StepUpToken:
    name = "step_up_token"

    def __init__(self, stepups: StepUps, store: StateStore) -> None:
        self._stepups = stepups
        self._store = store

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        token = ctx.headers.get(HEADER)
        if token is None:
            return None
        return self._check(ctx, token)

    async def _check(self, ctx: RequestContext, token: str) -> None:
        subject = ctx.subject
        if subject is None:
            return
        try:
            claims = self._stepups.tokens.verify(token.strip(), ctx.now)
        except StepUpTokenExpired:
            return  # it raises nothing any more: the request is judged as if it had none
        except StepUpTokenError as exc:
            raise GatewayError(STEP_UP_TOKEN_INVALID, extra={"detail": str(exc)}) from None
        if not (_same(claims.sub, subject.sub) and _same(claims.ath, b64url(subject.token_digest))
                and _same(claims.jkt, ctx.device_id if claims.jkt is not None else None)):
            raise GatewayError(STEP_UP_TOKEN_MISMATCH, "the step-up token belongs to another token or device")
        if claims.txn is not None:
            binding = Binding(ctx.method, ctx.path, ctx.account, body_digest(ctx.body, ctx.json_body))
            if not _same(claims.txn, binding.digest()):
                raise GatewayError(STEP_UP_TOKEN_MISMATCH, "the step-up token approves another request")
            ttl = max(claims.exp - ctx.now, 0) + 60.0
            if not await self._store.set_if_absent(f"mfa:used:{claims.jti}", b"1", ttl):
                raise GatewayError(STEP_UP_TOKEN_USED)
        elevate(ctx, claims)
        self._stepups.token_used(ctx, claims)


def elevate(ctx: RequestContext, claims: StepUpClaims) -> None:
    """The subject as the step-up left it: the stronger acr, its methods and its time."""
    assert ctx.subject is not None
    ctx.subject = dataclasses.replace(ctx.subject, acr=claims.acr, amr=claims.amr, auth_time=claims.auth_time)
    ctx.step_up = claims


class StepUpChallenge:
    """RFC 9470: ask for a stronger authentication when the policy says so, bound to this request."""

    name = "step_up"

    def __init__(self, stepups: StepUps | None) -> None:
        self._stepups = stepups

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        decision = ctx.decision
        if decision is None or decision.step_up is None:
            return None
        return self._challenge(ctx)

    async def _challenge(self, ctx: RequestContext) -> None:
        decision = ctx.decision
        assert decision is not None and decision.step_up is not None
        reasons = [r.code for r in decision.deny]
        if self._stepups is None or ctx.subject is None:
            raise bare_challenge(ctx)  # step-up disabled: the challenge without a flow
        raise await self._stepups.challenge(ctx, decision.step_up, reasons=reasons)
