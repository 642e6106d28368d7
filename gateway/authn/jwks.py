"""The signing keys of one token issuer, read from a JWKS file or URL.

Why this is more than ``jwt.PyJWKClient``: a gateway must not let callers
steer its outbound traffic or its trust decisions through the key set.

* An unknown ``kid`` triggers a refetch, but at most once per
  ``jwks_min_refetch_interval`` seconds, so a client spraying random kids
  cannot make the gateway hammer the identity provider.
* Only public signing keys are kept: a JWKS carrying private or symmetric key
  material (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``, ``oth``, ``k``) is
  refused outright, since it means the IdP (or whoever wrote the file) leaks
  secrets and HMAC keys would let any holder mint tokens. Keys with
  ``use`` other than ``sig``, or ``key_ops`` without ``verify``, are ignored,
  as are RSA keys shorter than 2048 bits and key types we cannot verify with.
* A key without ``kid`` is accepted only when it is the only key; with two or
  more keys a kid-less key would make key selection ambiguous.
* Keys are also refetched when older than ``max_age`` (default 300 s, on the
  next cache miss), so a key withdrawn by the IdP stops verifying even if no
  unknown kid ever arrives.
* A bad JWKS at refetch keeps the previous keys (logged, never raised), so an
  IdP hiccup does not lock every customer out; the first load fails closed.

``generation`` increases whenever the set of keys changes, so the claims cache
can notice a rotation with one integer comparison per request. Unchanged keys
keep their ``PyJWK`` object across refetches, so ``is`` tells whether the key
that verified a cached token is still published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import IssuerConfig

__all__ = [
    "MAX_JWKS_BYTES",
    "Fetcher",
    "FileReader",
    "JwksError",
    "JwksSource",
    "default_fetcher",
    "key_from_jwk",
    "parse_jwks",
]

log = logging.getLogger(__name__)

#: Largest JWKS document we read (file or HTTP body).
MAX_JWKS_BYTES = 1024 * 1024
#: Timeout of the default HTTP fetcher, seconds (connect + read).
FETCH_TIMEOUT = 5.0
MIN_RSA_BITS = 2048

Fetcher = Callable[[str], Awaitable[bytes]]
FileReader = Callable[[Path], Awaitable[bytes]]

# RFC 7518 section 6: members that only private or symmetric keys carry.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_VERIFIABLE_KTY = frozenset({"RSA", "EC", "OKP"})


class JwksError(Exception):
    """A JWKS document is unusable; the message says why (never key material)."""


def key_from_jwk(jwk: Mapping[str, Any]) -> jwt.PyJWK | None:
    """One public signing key from a JWK, or None if it is not one we verify with.

    Raises JwksError for private or symmetric key material: that is a
    configuration error to stop on, not a key to skip.
    """
    if not isinstance(jwk, Mapping):
        raise JwksError("a JWKS key is not a JSON object")
    leaked = _PRIVATE_MEMBERS.intersection(jwk)
    if leaked:
        raise JwksError(
            f"the JWKS contains private or symmetric key material ({', '.join(sorted(leaked))});"
            " publish public keys only"
        )
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError("a JWKS key has a non-string kid")
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if jwk.get("kty") not in _VERIFIABLE_KTY:
        return None
    try:
        key = jwt.PyJWK(dict(jwk))
    except jwt.PyJWTError as exc:
        log.warning("ignoring JWKS key %r: %s", kid, type(exc).__name__)
        return None
    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
        log.warning("ignoring JWKS key %r: RSA key shorter than %d bits", kid, MIN_RSA_BITS)
        return None
    return key


def parse_jwks(data: bytes) -> dict[str | None, jwt.PyJWK]:
    """The usable keys of a JWKS document by kid (None for the one kid-less key)."""
    if len(data) > MAX_JWKS_BYTES:
        raise JwksError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise JwksError("the JWKS is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError('the JWKS is not an object with a "keys" list')
    keys: dict[str | None, jwt.PyJWK] = {}
    for raw in doc["keys"]:
        key = key_from_jwk(raw)
        if key is None:
            continue
        if key.key_id in keys:
            raise JwksError("the JWKS has two signing keys with the same kid")
        keys[key.key_id] = key
    if None in keys and len(keys) > 1:
        raise JwksError("a JWKS key has no kid although the JWKS has several signing keys")
    return keys


async def default_fetcher(url: str) -> bytes:
    """GET a JWKS over HTTP(S): 5 s timeout, body capped at 1 MiB, 200 only."""
    import aiohttp  # client only; imported here so `import gateway.authn` stays light

    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise JwksError(f"the JWKS URL answered HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)


async def _read_file(path: Path) -> bytes:
    def read() -> bytes:
        with path.open("rb") as fh:
            data = fh.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise JwksError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
        return data

    return await asyncio.to_thread(read)


class JwksSource:
    """The current public signing keys of one issuer, refetched on unknown kids."""

    def __init__(
        self,
        issuer: IssuerConfig,
        *,
        fetcher: Fetcher | None = None,
        file_reader: FileReader | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_age: float | None = 300.0,
    ) -> None:
        if (issuer.jwks_file is None) == (issuer.jwks_url is None):
            raise ValueError(f"issuer {issuer.iss!r}: set exactly one of jwks_file or jwks_url")
        self.issuer = issuer
        self._fetcher = fetcher or default_fetcher
        self._file_reader = file_reader or _read_file
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._loaded = False
        self._loaded_at = 0.0
        self._max_age = max_age
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self.generation = 0
        self.kids: frozenset[str] = frozenset()

    @property
    def location(self) -> str:
        return str(self.issuer.jwks_file or self.issuer.jwks_url)

    @property
    def keys(self) -> Mapping[str | None, jwt.PyJWK]:
        """The current keys by kid (read-only view; None is a lone kid-less key)."""
        return self._keys

    async def load(self) -> None:
        """Read the JWKS now, ignoring the rate limit; raise JwksError if unusable.

        For startup, so a broken key configuration stops the gateway early.
        """
        async with self._lock:
            self._last_attempt = self._clock()
            self._install(await self._fetch())

    async def get(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for ``kid`` (or the only key, for a token without kid).

        An unknown kid refetches the JWKS unless a fetch was attempted less
        than ``jwks_min_refetch_interval`` seconds ago.
        """
        key = self.lookup(kid)
        if key is not None and not self._stale():
            return key
        async with self._lock:
            # Another request may have refetched while we waited for the lock.
            key = self.lookup(kid)
            if (key is not None and not self._stale()) or not self._may_fetch():
                return key
            self._last_attempt = self._clock()
            try:
                keys = await self._fetch()
            except Exception as exc:  # any failure (I/O, parse) keeps the old keys
                self._warn_bad(exc)
                return self.lookup(kid)
            self._install(keys)
            return self.lookup(kid)

    def lookup(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for ``kid`` among the current keys, without fetching."""
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            return None
        return self._keys.get(kid)

    def _stale(self) -> bool:
        # Keys removed at the IdP must stop verifying even if no unknown kid comes along.
        return self._max_age is not None and self._clock() - self._loaded_at >= self._max_age

    def _may_fetch(self) -> bool:
        if self._last_attempt is None:
            return True
        return self._clock() - self._last_attempt >= self.issuer.jwks_min_refetch_interval

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        if self.issuer.jwks_file is not None:
            data = await self._file_reader(self.issuer.jwks_file)
        else:
            assert self.issuer.jwks_url is not None
            data = await self._fetcher(self.issuer.jwks_url)
        return parse_jwks(data)

    def _warn_bad(self, exc: BaseException) -> None:
        state = "keeping the previous keys" if self._loaded else "no keys loaded yet"
        log.warning(
            "JWKS of issuer %r from %s is unusable (%s: %s); %s",
            self.issuer.iss, self.location, type(exc).__name__, exc, state,
        )

    def _install(self, new: dict[str | None, jwt.PyJWK]) -> None:
        old = self._keys
        merged: dict[str | None, jwt.PyJWK] = {}
        for kid, key in new.items():
            prev = old.get(kid)
            # Keep the old object for an unchanged key, so identity survives refetches.
            same = prev is not None and _public_params(prev) == _public_params(key)
            merged[kid] = prev if same and prev is not None else key
        changed = merged.keys() != old.keys() or any(merged[k] is not old[k] for k in merged)
        self._keys = merged
        self.kids = frozenset(k for k in merged if k is not None)
        if changed or not self._loaded:
            self.generation += 1
        self._loaded = True
        self._loaded_at = self._clock()
        if changed:
            log.info("JWKS of issuer %r now has kids %s", self.issuer.iss, sorted(self.kids))


def _public_params(key: jwt.PyJWK) -> str:
    # The JWK as published (private members were refused at parse time).
    return json.dumps(key._jwk_data, sort_keys=True)
