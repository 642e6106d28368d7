"""Personal data at rest: sealed under each customer's own key wherever the gateway keeps it.

The cryptography lives in the leaf package (gateway/crypto/keyring.py, fields.py);
this module wires it to the gateway's shared state and audit trail (``[crypto]``,
docs/KEYS.md):

* :class:`StateKeyStore`: the key ring's store in the shared state store (Redis
  for a fleet): ``keyring:<name>`` records, created with ``SET NX`` so two
  processes using a customer for the first time at once agree on one key, and
  a ``keyring:names`` set to list them.
* :class:`PersonalData`: the configured field paths (``id_number``, ``phone``,
  ``bank_accounts.number`` ...) sealed with SM4-GCM under the customer's data
  key, with an HMAC-SM3 blind index on the ``indexed`` ones; single values
  sealed by name (the enrolled SMS phone); the erasure of a customer's key,
  published on ``keyring:erased`` so every process drops its cached copy at
  once rather than at the cache's TTL.
* :class:`SealingSink`: an audit sink in front of the real one. A record holding
  a configured path is written with those values sealed under the record's
  customer (``sub``); when they cannot be sealed (no customer, the customer's
  key erased, the key store unreachable) they are masked instead. Never in
  clear, and the record is never dropped. Records without any of the paths
  (every decision record) pass straight through: the check is a few dict
  lookups.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

from audit.sink import AuditSink
from gateway.background import Background
from gateway.config import CryptoConfig
from gateway.crypto.fields import FieldCipher, open_value, seal_json, seal_value
from gateway.crypto.json_paths import FieldPath, parse_paths
from gateway.crypto.key_errors import KeyErased, KeyRingError
from gateway.crypto.keyring import KeyRing, LocalKms
from gateway.crypto.keystore import FileKeyStore, KeyStore
from gateway.errors import ConfigError
from gateway.masking import mask_document
from gateway.state.base import StateStore, StateUnavailable

__all__ = ["ERASED_CHANNEL", "PersonalData", "SealingSink", "StateKeyStore"]

log = logging.getLogger("portcullis.personal_data")

ERASED_CHANNEL = "keyring:erased"
_PREFIX = "keyring:"
_NAMES = "keyring:names"

Count = Callable[[str], None]


def _no_count(event: str) -> None:
    return None


class StateKeyStore:
    """The key ring's records in the shared state store (see the module docstring)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def __repr__(self) -> str:
        return "StateKeyStore()"

    async def get(self, name: str) -> bytes | None:
        return await self._state.get(_PREFIX + name)

    async def put(self, name: str, value: bytes) -> None:
        async with self._state.batch() as b:
            b.set(_PREFIX + name, value)
            b.sadd(_NAMES, name)

    async def add(self, name: str, value: bytes) -> bool:
        async with self._state.batch() as b:
            created = b.set_if_absent(_PREFIX + name, value, None)
            b.sadd(_NAMES, name)
        return bool(created.value)

    async def delete(self, name: str) -> bool:
        async with self._state.batch() as b:
            gone = b.delete(_PREFIX + name)
            b.srem(_NAMES, name)
        return bool(gone.value)

    async def names(self, prefix: str) -> list[str]:
        return sorted(n for n in await self._state.smembers(_NAMES) if n.startswith(prefix))


def build_key_ring(cfg: CryptoConfig, state: StateStore, *, environ: Mapping[str, str] | None = None) -> KeyRing:
    """The key ring ``[crypto]`` describes: its master key and its store."""
    try:
        if cfg.master_key_file is not None:
            kms = LocalKms.from_file(cfg.master_key_file, create=True)
        else:
            kms = LocalKms.from_env(cfg.master_key_env, dict(environ) if environ is not None else None)
    except KeyRingError as exc:
        raise ConfigError(f"crypto: {exc}") from None
    store: KeyStore
    if cfg.key_store == "file":
        assert cfg.key_store_file is not None  # the config refuses it otherwise
        store = FileKeyStore(cfg.key_store_file)
    else:
        store = StateKeyStore(state)
    return KeyRing(kms, store, cache_ttl=cfg.cache_ttl)


class PersonalData:
    """Seals and opens personal data under per-customer keys; erases a customer's key everywhere."""

    def __init__(self, cfg: CryptoConfig, ring: KeyRing, state: StateStore, *, count: Count = _no_count) -> None:
        self.cfg = cfg
        self.ring = ring
        self._state = state
        self._count = count
        self.cipher = FieldCipher(ring, cfg.fields, indexed=cfg.indexed)
        self.paths: tuple[FieldPath, ...] = parse_paths(cfg.fields)
        heads = {p[0] for p in self.paths}
        self._heads: frozenset[str] | None = None if "*" in heads else frozenset(heads)
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PersonalData(fields={list(self.cfg.fields)!r})"

    def holds(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc`` may hold a configured path (its top-level member is there): cheap, exact enough."""
        heads = self._heads
        return heads is None or any(h in doc for h in heads)

    async def seal_fields(self, doc: Any, sub: str) -> int:
        """Seal the configured paths of ``doc`` (in place) under ``sub``'s key; KeyErased after an erasure."""
        return await self.cipher.encrypt(doc, sub)

    async def open_fields(self, doc: Any, sub: str) -> int:
        return await self.cipher.decrypt(doc, sub)

    async def seal(self, sub: str, name: str, value: Any) -> dict[str, str]:
        """One value sealed for ``sub`` under the field name ``name`` (not a path: a label of its own)."""
        return seal_value(await self.ring.customer_key(sub), sub, (name,), value)

    def seal_json_now(self, sub: str, name: str, text: bytes) -> dict[str, str] | None:
        """JSON ``text`` sealed for ``sub`` at once when their key is in this process's cache; else None."""
        key = self.ring.cached_customer_key(sub)
        return seal_json(key, sub, (name,), text) if key is not None else None

    async def seal_json(self, sub: str, name: str, text: bytes) -> dict[str, str]:
        """JSON ``text`` sealed for ``sub`` (their key fetched or created); KeyErased after an erasure."""
        return seal_json(await self.ring.customer_key(sub), sub, (name,), text)

    async def open(self, sub: str, name: str, sealed: Any) -> Any:
        """What :meth:`seal` sealed; KeyErased after an erasure, FieldCipherError if altered or not ``sub``'s."""
        kid = sealed.get("kid") if isinstance(sealed, dict) else None
        key = await self.ring.existing_customer_key(sub, kid if isinstance(kid, str) else None)
        return open_value(key, sub, (name,), sealed)

    async def search_terms(self, value: Any) -> dict[str, str]:
        """``{index key id: blind index}``: what an indexed field equal to ``value`` carries as ``bik``/``bi``."""
        return await self.cipher.search_terms(value)

    async def erase(self, sub: str) -> bool:
        """Destroy ``sub``'s data key (PIPL erasure) and tell every process; whether they had one."""
        had = await self.ring.erase_customer(sub)
        self._count("erased")
        try:
            await self._state.publish(ERASED_CHANNEL, sub.encode())
        except StateUnavailable:  # the others see it within their cache TTL
            log.warning("erasure of a customer key not published: other processes see it within %.0f s",
                        self.cfg.cache_ttl)
        return had

    # -- the erasure listener -----------------------------------------------------------

    async def start(self) -> None:
        """Listen for erasures by other processes (returns once subscribed)."""
        if self._listener is None:
            sub = await self._state.subscribe(ERASED_CHANNEL)
            self._listener = asyncio.create_task(self._listen(sub), name="keyring-erasures")

    async def _listen(self, subscription: Any) -> None:
        try:
            while not subscription.closed:
                message = await subscription.get()
                if message is not None:
                    self.ring.forget(sub=message.decode("utf-8", "replace"))
        finally:
            await subscription.close()

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):  # noqa: S110 - stopping: nothing left to do
                pass
            self._listener = None

    # -- records that must never hold personal data in clear ------------------------------

    async def protect(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` (a copy) with the configured paths sealed under its ``sub``, else masked."""
        out = copy.deepcopy(record)
        sub = out.get("sub")
        if isinstance(sub, str) and sub:
            try:
                if await self.cipher.encrypt(out, sub):
                    self._count("sealed")
                return out
            except KeyErased:
                pass
            except Exception as exc:  # the key store, the KMS, a bug: masked, and the record is still written
                log.warning("personal data in an audit record masked, not sealed: %s", type(exc).__name__)
        if mask_document(out, self.paths):
            self._count("masked")
        return out


class SealingSink:
    """An :class:`~audit.sink.AuditSink` that protects personal data before the real sink sees it."""

    def __init__(self, inner: AuditSink, personal: PersonalData) -> None:
        self._inner = inner
        self._personal = personal
        self._pending = Background(on_error=_not_written)

    @property
    def inner(self) -> AuditSink:
        return self._inner

    async def start(self) -> None:
        start = getattr(self._inner, "start", None)
        if start is not None:
            await start()

    async def write(self, record: Mapping[str, Any]) -> None:
        await self.submit(record)

    def submit(self, record: Mapping[str, Any]) -> asyncio.Future[None]:
        if not self._personal.holds(record):
            return self._inner.submit(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.spawn(self._submit(dict(record), done))
        return done

    async def _submit(self, record: dict[str, Any], done: asyncio.Future[None]) -> None:
        try:
            inner = self._inner.submit(await self._personal.protect(record))
            await inner
            if not done.done():
                done.set_result(None)
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc)
            raise

    def enqueue(self, record: Mapping[str, Any]) -> None:
        if not self._personal.holds(record):
            self._inner.enqueue(record)
            return
        self._pending.spawn(self._enqueue(dict(record)))

    async def _enqueue(self, record: dict[str, Any]) -> None:
        self._inner.enqueue(await self._personal.protect(record))

    @property
    def failed(self) -> int:
        return self._inner.failed

    @property
    def backlog(self) -> int:
        return self._inner.backlog + len(self._pending)

    async def close(self) -> None:
        await self._pending.drain()
        await self._inner.close()


def _not_written(exc: BaseException) -> None:
    log.error("audit record with personal data not written: %s", type(exc).__name__)

