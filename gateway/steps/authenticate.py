"""Authenticate: a bearer JWT from an allow-listed issuer (see gateway.authn)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from gateway.authn.tokens import Subject
from gateway.context import RequestContext
from gateway.errors import TOKEN_INVALID, TOKEN_MALFORMED, TOKEN_MISSING, GatewayError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="portcullis"'}


class Verifier(Protocol):
    def verify_cached(self, token: str) -> Subject | None: ...

    async def verify(self, token: str) -> Subject: ...


def bearer_token(values: list[str]) -> str:
    """The token from the Authorization header values; exactly one Bearer credential."""
    if not values:
        raise GatewayError(TOKEN_MISSING, headers=_CHALLENGE)
    if len(values) > 1:
        raise GatewayError(TOKEN_MALFORMED, "more than one Authorization header", headers=_CHALLENGE)
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise GatewayError(TOKEN_MISSING, "expected an Authorization: Bearer token", headers=_CHALLENGE)
    return token.strip()


class Authenticate:
    name = "authenticate"

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        getall = getattr(ctx.headers, "getall", None)
        values = list(getall("Authorization", ())) if getall else (
            [ctx.headers["Authorization"]] if "Authorization" in ctx.headers else [])
        token = bearer_token(values)
        try:
            subject = self._verifier.verify_cached(token)
        except GatewayError as exc:
            raise _challenged(exc) from None
        if subject is None:  # not cached, or its revocation status must be looked up
            return self._verify(ctx, token)
        _accept(ctx, subject)
        return None

    async def _verify(self, ctx: RequestContext, token: str) -> None:
        try:
            subject = await self._verifier.verify(token)
        except GatewayError as exc:
            raise _challenged(exc) from None
        _accept(ctx, subject)


def _challenged(exc: GatewayError) -> GatewayError:
    if exc.status == 401 and not exc.headers:
        exc.headers = _CHALLENGE
    return exc


def _accept(ctx: RequestContext, subject: Subject) -> None:
    if subject.cnf_jkt is not None:
        # A sender-constrained token is worthless without its DPoP proof check
        # (RFC 9449), which arrives with the device-identity work: refuse, never
        # downgrade it to a bearer token.
        raise GatewayError(TOKEN_INVALID, "DPoP-bound tokens are not accepted by this gateway yet",
                           headers=_CHALLENGE)
    ctx.subject = subject
