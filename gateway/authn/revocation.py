"""Token revocation by ``jti``, shared by all replicas through the state store.

Verified tokens are cached by digest, so revocation is what stops a stolen
token before its ``exp``. The revocation mark lives in the shared store (one
key per ``jti``, expiring when the token would have expired anyway, plus a
grace period covering the verifier's clock leeway), so a revocation made on
one replica is seen by all.

The store is asked at most once per ``local_ttl`` seconds per ``jti`` per
process: answers are remembered locally for that long, so a hot token costs
one store read per second, not one per request. The price is that a
revocation made by *another* process takes up to ``local_ttl`` seconds to be
seen here; ``revoke()`` in this process takes effect here at once.

Depends only on two store methods (see :class:`RevocationStore`), so the
memory and Redis stores of ``gateway.state`` and a test's dict all fit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from gateway.errors import STATE_UNAVAILABLE, GatewayError

__all__ = ["RevocationList", "RevocationStore", "revocation_key"]

_MARK = b"1"
_T = TypeVar("_T")


class RevocationStore(Protocol):
    """The part of the shared state store that revocation needs."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...


def revocation_key(jti: str) -> str:
    return f"revoked:jti:{jti}"


class RevocationList:
    """Revoke tokens by ``jti`` and ask whether one is revoked."""

    def __init__(
        self,
        store: RevocationStore,
        *,
        local_ttl: float = 1.0,
        grace: float = 60.0,
        max_local: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._local_ttl = local_ttl
        self._grace = grace
        self._max_local = max_local
        self._clock = clock
        self._wall = wall_clock
        # jti -> (answer, valid until on `clock`); bounded LRU.
        self._local: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    async def revoke(self, jti: str, exp: int) -> None:
        """Mark ``jti`` revoked until its token expires (plus the grace period)."""
        ttl = max(exp + self._grace - self._wall(), 1.0)
        await self._call_store(self._store.set(revocation_key(jti), _MARK, ttl))
        # Revocation is final for the token's life: remember it without expiry churn.
        self._remember(jti, True, self._clock() + ttl)

    def cached(self, jti: str) -> bool | None:
        """The local answer while it is fresh, without I/O; None when the store must be asked."""
        hit = self._local.get(jti)
        if hit is not None and self._clock() < hit[1]:
            return hit[0]
        return None

    async def is_revoked(self, jti: str) -> bool:
        now = self._clock()
        hit = self._local.get(jti)
        if hit is not None:
            answer, until = hit
            if now < until:
                return answer
            del self._local[jti]
        value = await self._call_store(self._store.get(revocation_key(jti)))
        revoked = value is not None
        self._remember(jti, revoked, now + self._local_ttl)
        return revoked

    def _remember(self, jti: str, answer: bool, until: float) -> None:
        self._local[jti] = (answer, until)
        self._local.move_to_end(jti)
        while len(self._local) > self._max_local:
            self._local.popitem(last=False)

    @staticmethod
    async def _call_store(call: Awaitable[_T]) -> _T:
        try:
            return await call
        except GatewayError:
            raise
        except Exception:
            # Fail closed; the route's fail mode decides what the caller does with it.
            raise GatewayError(STATE_UNAVAILABLE, "the revocation list is unavailable") from None
