"""Authenticate: a bearer JWT from an allow-listed issuer (see gateway.authn), and the device's DPoP proof.

The token says who the caller is; a DPoP proof (RFC 9449, gateway/authn/dpop.py)
says which device key signed this very request, and its thumbprint becomes
``ctx.device_id``:

* a token bound to a key (``cnf.jkt``) needs a valid proof by that key
  (``dpop_required``, ``dpop_key_mismatch``), whatever the Authorization
  scheme: it is never downgraded to a bearer token;
* a plain bearer token with a proof gets the device id; a proof that is
  present but wrong (signature, method, URL, time, ``ath``) is refused,
  never ignored;
* no proof: ``ctx.device_id`` stays None and the risk engine scores that.

The proof's ``jti`` must be new. That check costs no round trip of its own:
it is queued on the request's state round (gateway/steps/state_round.py) as
one ``set_if_absent``. When the shared store cannot answer on a route that
fails open, this process's :class:`~gateway.authn.dpop.ReplayCache` decides
(a replay to this process is still caught); routes that fail closed never
get that far (503).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Collection
from typing import Protocol

from gateway.authn.dpop import Proof, ProofVerifier, ReplayCache, normalise_origin
from gateway.authn.tokens import Subject
from gateway.config import DpopConfig
from gateway.context import RequestContext
from gateway.errors import (
    DPOP_INVALID,
    DPOP_KEY_MISMATCH,
    DPOP_REPLAYED,
    DPOP_REQUIRED,
    TOKEN_INVALID,
    TOKEN_MALFORMED,
    TOKEN_MISSING,
    GatewayError,
)
from gateway.jose import b64url
from gateway.state.base import Pending, StateStore
from gateway.steps.state_round import after_round, state_batch

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="portcullis"'}
_SCHEMES = ("bearer", "dpop")


class Verifier(Protocol):
    def verify_cached(self, token: str) -> Subject | None: ...

    async def verify(self, token: str) -> Subject: ...


def credentials(values: list[str]) -> tuple[str, str]:
    """(scheme, token) from the Authorization header values: one ``Bearer`` or ``DPoP`` credential."""
    if not values:
        raise GatewayError(TOKEN_MISSING, headers=_CHALLENGE)
    if len(values) > 1:
        raise GatewayError(TOKEN_MALFORMED, "more than one Authorization header", headers=_CHALLENGE)
    scheme, _, token = values[0].strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in _SCHEMES or not token.strip():
        raise GatewayError(TOKEN_MISSING, "expected an Authorization: Bearer (or DPoP) token",
                           headers=_CHALLENGE)
    return scheme, token.strip()


def bearer_token(values: list[str]) -> str:
    """The token from the Authorization header values; exactly one Bearer credential."""
    scheme, token = credentials(values)
    if scheme != "bearer":
        raise GatewayError(TOKEN_MISSING, "expected an Authorization: Bearer token", headers=_CHALLENGE)
    return token


def refuse_device_bound(subject: Subject) -> None:
    """For callers that do not check DPoP proofs (the admin listener): a key-bound token is refused."""
    if subject.cnf_jkt is not None:
        raise GatewayError(DPOP_REQUIRED, "device-bound tokens are not accepted on the admin listener yet",
                           headers=_CHALLENGE)


class DeviceProofs:
    """DPoP proof checks for the pipeline: verification, binding and the replay check on the state round."""

    def __init__(self, config: DpopConfig, store: StateStore, *, max_path_length: int = 2048) -> None:
        self.verifier = ProofVerifier(algorithms=config.algorithms, iat_window=config.iat_window,
                                      key_cache_size=config.key_cache_size, max_path_length=max_path_length)
        self._origins: frozenset[str] = frozenset(config.origins)
        self._store = store
        # A proof is acceptable while its iat is within the window either side of now.
        self._ttl = 2 * config.iat_window + 1
        self.local = ReplayCache(config.replay_cache_size, self._ttl)
        algs = " ".join(config.algorithms)
        self._invalid_challenge = {"WWW-Authenticate": f'DPoP error="invalid_dpop_proof", algs="{algs}"'}
        self._token_challenge = {"WWW-Authenticate": f'DPoP error="invalid_token", algs="{algs}"'}

    def _request_origins(self, ctx: RequestContext) -> Collection[str]:
        if self._origins:
            return self._origins
        # Not configured: the origin this request arrived on (scheme and Host as the gateway saw them).
        origin = normalise_origin(ctx.scheme, ctx.headers.get("Host", ""))
        return (origin,) if origin else ()

    def check(self, ctx: RequestContext, subject: Subject, scheme: str) -> None:
        """Verify the request's proof (if any) against the subject; queue its replay check."""
        getall = getattr(ctx.headers, "getall", None)
        values = list(getall("DPoP", ())) if getall else (
            [ctx.headers["DPoP"]] if "DPoP" in ctx.headers else [])
        if not values:
            if subject.cnf_jkt is not None or scheme == "dpop":
                raise GatewayError(DPOP_REQUIRED, headers=self._token_challenge)
            return
        if len(values) > 1:
            raise GatewayError(DPOP_INVALID, "more than one DPoP header", headers=self._invalid_challenge)
        try:
            proof = self.verifier.verify(values[0], method=ctx.method, path=ctx.path,
                                         origins=self._request_origins(ctx),
                                         ath=b64url(subject.token_digest), now=ctx.now)
        except GatewayError as exc:
            exc.headers = self._invalid_challenge
            raise
        if subject.cnf_jkt is not None:
            if not hmac.compare_digest(proof.jkt.encode("ascii"), subject.cnf_jkt.encode("ascii", "replace")):
                raise GatewayError(DPOP_KEY_MISMATCH, headers=self._token_challenge)
        elif scheme == "dpop":
            raise GatewayError(TOKEN_INVALID, "the DPoP scheme needs a token bound to a key (cnf.jkt)",
                               headers=self._token_challenge)
        key = f"dpop:{proof.jkt}:{proof.jti}"
        fresh = state_batch(ctx, self._store).set_if_absent(key, b"1", self._ttl)
        after_round(ctx, _ReplayCheck(self, key, proof, fresh))
        ctx.device_id = proof.jkt

    def replayed(self, key: str, proof: Proof, fresh: Pending[bool], now: float) -> GatewayError | None:
        if fresh.done:
            if not fresh.value:
                return GatewayError(DPOP_REPLAYED, headers=self._invalid_challenge)
            self.local.remember(key, proof.iat, now)
            return None
        # The store did not answer (a route that fails open): this process's memory decides.
        if not self.local.add(key, proof.iat, now):
            return GatewayError(DPOP_REPLAYED, headers=self._invalid_challenge)
        return None


class _ReplayCheck:
    """Run after the state round: the proof's ``jti`` must not have been seen."""

    __slots__ = ("_owner", "_key", "_proof", "_fresh")

    def __init__(self, owner: DeviceProofs, key: str, proof: Proof, fresh: Pending[bool]) -> None:
        self._owner, self._key, self._proof, self._fresh = owner, key, proof, fresh

    def __call__(self, ctx: RequestContext) -> None:
        error = self._owner.replayed(self._key, self._proof, self._fresh, ctx.now)
        if error is not None:
            ctx.device_id = None
            raise error


class Authenticate:
    name = "authenticate"

    def __init__(self, verifier: Verifier, proofs: DeviceProofs | None = None) -> None:
        self._verifier = verifier
        self._proofs = proofs

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        getall = getattr(ctx.headers, "getall", None)
        values = list(getall("Authorization", ())) if getall else (
            [ctx.headers["Authorization"]] if "Authorization" in ctx.headers else [])
        scheme, token = credentials(values)
        try:
            subject = self._verifier.verify_cached(token)
        except GatewayError as exc:
            raise _challenged(exc) from None
        if subject is None:  # not cached, or its revocation status must be looked up
            return self._verify(ctx, token, scheme)
        self._accept(ctx, subject, scheme)
        return None

    async def _verify(self, ctx: RequestContext, token: str, scheme: str) -> None:
        try:
            subject = await self._verifier.verify(token)
        except GatewayError as exc:
            raise _challenged(exc) from None
        self._accept(ctx, subject, scheme)

    def _accept(self, ctx: RequestContext, subject: Subject, scheme: str) -> None:
        if self._proofs is not None:
            self._proofs.check(ctx, subject, scheme)
        elif subject.cnf_jkt is not None or scheme == "dpop":
            # Without proof checking a sender-constrained token is worthless: refuse, never downgrade.
            raise GatewayError(DPOP_REQUIRED, "DPoP proofs are not checked here", headers=_CHALLENGE)
        ctx.subject = subject


def _challenged(exc: GatewayError) -> GatewayError:
    if exc.status == 401 and not exc.headers:
        exc.headers = _CHALLENGE
    return exc
