"""The key ring: data keys by purpose and per customer, wrapped under a master key (envelope encryption).

Keys, from the top:

* The **master key** never leaves the :class:`Kms`. :class:`LocalKms` holds
  it in this process (a 0600 key file, or base64 in an environment variable:
  the demo); a production KMS or HSM implements the same two calls. Data keys
  are stored only *wrapped* (sealed) under it.
* **Purpose keys** (``blind-index``, ``audit``, ...): a current key and the
  older ones, each with an id. :meth:`KeyRing.rotate` adds a key and makes it
  current; the old ones stay, so what was sealed under them still opens.
* **Customer keys**: one data key per customer (``sub``), created on first
  use. Their personal data is sealed under it (gateway/crypto/fields.py), so
  honouring an erasure request (PIPL art. 47) is :meth:`KeyRing.erase_customer`:
  the wrapped key is overwritten by a tombstone, and every copy of that
  customer's sealed fields (audit trail, state, backups) becomes unreadable
  at once, while the bytes stored, and so any hash chain over them, stay
  exactly as they were. An erased customer stays erased: sealing new data for
  them raises :class:`KeyErased` as well.

Store records (values are JSON; ``wrapped`` is base64 of the KMS's output,
bound by the wrapping AAD to the record's name and the key id, so a wrapped
key copied to another customer's or purpose's record does not unwrap there)::

    purpose/<purpose>  {"size": 16, "current": kid, "keys": {kid: {"created": epoch, "wrapped": b64}}}
    customer/<sub>     {"kid": kid, "created": epoch, "wrapped": b64}   or   {"erased": epoch}

Unwrapped keys are cached in memory (an LRU of ``cache_size`` records) for
``cache_ttl`` seconds. Another replica erasing a customer or rotating a
purpose is seen here when the entry expires, or at once after
:meth:`KeyRing.forget` (the hook for a pub/sub invalidation).

Key material never appears in ``repr``, ``str``, exceptions (the tree is in
gateway/crypto/key_errors.py) or logs (this module logs nothing); key ids and
purposes do.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateway.crypto import sm3, sm4_gcm
from gateway.crypto.key_errors import KeyErased, KeyNotFound, KeyRingError, KeyStoreError, KeyUnwrapError
from gateway.crypto.keystore import KeyStore
from gateway.crypto.secretbox import SecretBox, SecretBoxError, new_kid

__all__ = ["DEFAULT_MASTER_ENV", "DataKey", "KeyErased", "KeyInfo", "KeyNotFound", "KeyRing", "KeyRingError",
           "KeyUnwrapError", "Kms", "LocalKms"]

DEFAULT_MASTER_ENV = "PORTCULLIS_MASTER_KEY"
_PURPOSE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_MAX_SUB = 256
_WRAP_LABEL = "portcullis-keyring/v1"
KEY_SIZES = (16, 32)


class DataKey:
    """A data key: its id and purpose (``customer:<sub>`` for a customer's), and the key bytes."""

    __slots__ = ("_material", "kid", "purpose")

    def __init__(self, kid: str, purpose: str, material: bytes) -> None:
        self.kid = kid
        self.purpose = purpose
        self._material = bytes(material)

    @property
    def material(self) -> bytes:
        return self._material

    def __repr__(self) -> str:
        return f"DataKey(kid={self.kid!r}, purpose={self.purpose!r}, size={len(self._material)})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a DataKey cannot be pickled")  # the pickle would carry the key


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What :meth:`KeyRing.list` shows of a purpose key: never the key."""

    purpose: str
    kid: str
    created: int
    current: bool
    size: int


# -- the master key --------------------------------------------------------------


@runtime_checkable
class Kms(Protocol):
    """Wraps and unwraps data keys under a master key it never gives out.

    ``aad`` binds a wrapped key to its place; unwrapping with another ``aad``
    must fail. Async: a production KMS is a network call.
    """

    async def wrap(self, data_key: bytes, aad: bytes) -> bytes: ...

    async def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        """The data key; :class:`KeyUnwrapError` if ``wrapped`` is not this KMS's for ``aad``."""
        ...


class LocalKms:
    """A :class:`Kms` holding its master keys in this process, sealing with :class:`SecretBox` (SM4-GCM).

    Master key file: SecretBox's format (``{"current": kid, "keys": {kid:
    base64}}``, 16-byte keys, mode 0600), so a master key rotates like any
    SecretBox: add a key, make it current, keep the old one until every record
    is wrapped again. Environment: base64 of 16 or 32 random bytes; a 32-byte
    one is brought to SM4's 16 with the SM3 KDF, and its key id is a short SM3
    fingerprint (so a changed master key is reported as another key, not as
    a damaged record).
    """

    __slots__ = ("_box",)

    def __init__(self, box: SecretBox) -> None:
        self._box = box

    @classmethod
    def generate(cls) -> LocalKms:
        return cls(SecretBox.generate())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, create: bool = False) -> LocalKms:
        """The master key(s) in ``path``; with ``create``, a fresh file (mode 0600) if it is absent."""
        if not create and not Path(path).exists():
            raise KeyRingError(f"master key file {str(path)!r} does not exist: create it with "
                               f"`portcullis keys init --master-file {path}`")
        try:
            return cls(SecretBox.from_file(path, create=create))
        except SecretBoxError as exc:
            raise KeyRingError(f"master key: {exc}") from None

    @classmethod
    def from_env(cls, var: str = DEFAULT_MASTER_ENV, environ: dict[str, str] | None = None) -> LocalKms:
        """The master key in environment variable ``var`` (base64 of 16 or 32 bytes)."""
        value = (os.environ if environ is None else environ).get(var)
        if not value:
            raise KeyRingError(f"master key: environment variable {var} is not set "
                               f"(base64 of 16 or 32 random bytes)")
        try:
            master = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyRingError(f"master key: {var} is not standard base64") from None
        if len(master) not in KEY_SIZES:
            raise KeyRingError(f"master key: {var} must hold 16 or 32 bytes (got {len(master)})")
        kek = master if len(master) == sm4_gcm.KEY_SIZE else sm3.kdf(master + b"portcullis master kek", 16)
        kid = "m" + sm3.digest(b"portcullis master kid" + master)[:4].hex()
        return cls(SecretBox({kid: kek}, kid))

    @property
    def key_id(self) -> str:
        """The id of the master key new data keys are wrapped under."""
        return self._box.current

    async def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return self._box.seal(data_key, aad)

    async def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return self._box.open(wrapped, aad)
        except SecretBoxError as exc:
            raise KeyUnwrapError(f"a wrapped key does not unwrap: {exc}") from None

    def __repr__(self) -> str:
        return f"LocalKms(current={self._box.current!r}, key_ids={list(self._box.key_ids)!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a LocalKms cannot be pickled")


# -- the ring ------------------------------------------------------------------------


def check_purpose(purpose: str) -> str:
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise KeyRingError(f"a purpose is 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit "
                           f"(got {purpose!r})")
    return purpose


def check_sub(sub: str) -> str:
    if not isinstance(sub, str) or not 0 < len(sub) <= _MAX_SUB or not sub.isprintable():
        raise KeyRingError(f"a customer id is 1-{_MAX_SUB} printable characters")
    return sub


@dataclass(slots=True)
class _Purpose:
    size: int
    current: str
    keys: dict[str, DataKey]
    created: dict[str, int]


@dataclass(slots=True)
class _Customer:
    key: DataKey | None  # None: erased
    erased_at: int | None = None


_Entry = _Purpose | _Customer


class KeyRing:
    """Data keys by purpose and per customer, stored wrapped in ``store`` under ``kms``'s master key."""

    def __init__(self, kms: Kms, store: KeyStore, *, cache_size: int = 10_000, cache_ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._kms = kms
        self._store = store
        self._cache: OrderedDict[str, tuple[float, _Entry]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._wall_clock = wall_clock

    def __repr__(self) -> str:
        return f"KeyRing(kms={self._kms!r}, store={self._store!r}, cached={len(self._cache)})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a KeyRing cannot be pickled")

    # -- cache -----------------------------------------------------------------------

    def _cached(self, name: str) -> _Entry | None:
        hit = self._cache.get(name)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._cache[name]
            return None
        self._cache.move_to_end(name)
        return hit[1]

    def _remember(self, name: str, entry: _Entry) -> None:
        self._cache[name] = (self._clock() + self._cache_ttl, entry)
        self._cache.move_to_end(name)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, *, purpose: str | None = None, sub: str | None = None) -> None:
        """Drop this process's cached copy (another replica rotated a purpose or erased a customer)."""
        if purpose is not None:
            self._cache.pop(f"purpose/{purpose}", None)
        if sub is not None:
            self._cache.pop(f"customer/{sub}", None)

    # -- records -----------------------------------------------------------------------

    @staticmethod
    def _aad(name: str, kid: str) -> bytes:
        return json.dumps([_WRAP_LABEL, name, kid]).encode()

    async def _unwrap(self, name: str, kid: str, purpose: str, encoded: Any, size: int | None = None) -> DataKey:
        try:
            wrapped = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except (binascii.Error, ValueError):
            wrapped = b""
        if not wrapped:
            raise KeyUnwrapError(f"record {name!r}: key {kid!r} has no wrapped key")
        material = await self._kms.unwrap(wrapped, self._aad(name, kid))
        if size is not None and len(material) != size:
            raise KeyUnwrapError(f"record {name!r}: key {kid!r} is not {size} bytes")
        return DataKey(kid, purpose, material)

    async def _wrap(self, name: str, kid: str, material: bytes) -> dict[str, Any]:
        wrapped = await self._kms.wrap(material, self._aad(name, kid))
        return {"created": int(self._wall_clock()), "wrapped": base64.b64encode(wrapped).decode("ascii")}

    async def _read(self, name: str) -> dict[str, Any] | None:
        raw = await self._store.get(name)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise KeyStoreError(f"record {name!r} is not a JSON object")
        return doc

    # -- purpose keys -------------------------------------------------------------------

    async def _purpose(self, purpose: str) -> _Purpose:
        name = f"purpose/{check_purpose(purpose)}"
        entry = self._cached(name)
        if isinstance(entry, _Purpose):
            return entry
        doc = await self._read(name)
        if doc is None:
            raise KeyNotFound(f"no keys for purpose {purpose!r}: create them (portcullis keys create "
                              f"--purpose {purpose})")
        keys, created = doc.get("keys"), {}
        size, current = doc.get("size"), doc.get("current")
        if not isinstance(keys, dict) or not isinstance(size, int) or size not in KEY_SIZES \
                or not isinstance(current, str) or current not in keys:
            raise KeyStoreError(f"record {name!r} is malformed")
        loaded: dict[str, DataKey] = {}
        for kid, rec in keys.items():
            rec = rec if isinstance(rec, dict) else {}
            loaded[kid] = await self._unwrap(name, kid, purpose, rec.get("wrapped"), size)
            created[kid] = int(rec.get("created", 0))
        entry = _Purpose(size, current, loaded, created)
        self._remember(name, entry)
        return entry

    async def create(self, purpose: str, *, size: int = sm4_gcm.KEY_SIZE) -> KeyInfo:
        """A first key for ``purpose`` (``size`` 16 for SM4, 32 for an HMAC key); KeyRingError if it has keys."""
        name = f"purpose/{check_purpose(purpose)}"
        if size not in KEY_SIZES:
            raise KeyRingError(f"a key is 16 or 32 bytes (got {size})")
        kid = new_kid()
        rec = await self._wrap(name, kid, secrets.token_bytes(size))
        doc = {"size": size, "current": kid, "keys": {kid: rec}}
        if not await self._store.add(name, json.dumps(doc).encode()):
            raise KeyRingError(f"purpose {purpose!r} has keys already: rotate them instead")
        self.forget(purpose=purpose)
        return KeyInfo(purpose, kid, rec["created"], True, size)

    async def ensure(self, purpose: str, *, size: int = sm4_gcm.KEY_SIZE) -> DataKey:
        """The current key of ``purpose``, created first if it has none (race-safe: the first creator wins)."""
        try:
            return await self.current(purpose)
        except KeyNotFound:
            pass
        try:
            await self.create(purpose, size=size)
        except KeyRingError:
            if await self._store.get(f"purpose/{purpose}") is None:
                raise
        return await self.current(purpose)

    async def rotate(self, purpose: str) -> KeyInfo:
        """A new current key for ``purpose``; the old ones stay for opening what they sealed.

        A read-modify-write of one record: rotate from one place at a time (the command line).
        """
        name = f"purpose/{check_purpose(purpose)}"
        doc = await self._read(name)
        if doc is None:
            raise KeyNotFound(f"no keys for purpose {purpose!r}: create them first")
        size, keys = doc.get("size"), doc.get("keys")
        if size not in KEY_SIZES or not isinstance(keys, dict):
            raise KeyStoreError(f"record {name!r} is malformed")
        kid = new_kid()
        keys[kid] = rec = await self._wrap(name, kid, secrets.token_bytes(size))
        doc["current"] = kid
        await self._store.put(name, json.dumps(doc).encode())
        self.forget(purpose=purpose)
        return KeyInfo(purpose, kid, rec["created"], True, size)

    async def current(self, purpose: str) -> DataKey:
        """The key ``purpose`` seals under now."""
        entry = await self._purpose(purpose)
        return entry.keys[entry.current]

    async def key(self, purpose: str, kid: str) -> DataKey:
        """Key ``kid`` of ``purpose``, current or old; KeyNotFound if the ring has no such key."""
        entry = await self._purpose(purpose)
        found = entry.keys.get(kid)
        if found is None:  # rotated elsewhere since we cached it?
            self.forget(purpose=purpose)
            entry = await self._purpose(purpose)
            found = entry.keys.get(kid)
        if found is None:
            raise KeyNotFound(f"purpose {purpose!r} has no key {kid!r}")
        return found

    async def keys(self, purpose: str) -> list[DataKey]:
        """Every key of ``purpose``, the current one first (e.g. to search a blind index under each)."""
        entry = await self._purpose(purpose)
        return [entry.keys[entry.current], *(k for kid, k in entry.keys.items() if kid != entry.current)]

    async def list(self) -> list[KeyInfo]:
        """Every purpose key, oldest first within a purpose; no key material (nothing is unwrapped)."""
        out: list[KeyInfo] = []
        for name in await self._store.names("purpose/"):
            doc = await self._read(name)
            if doc is None:
                continue
            keys: dict[str, Any] = doc["keys"] if isinstance(doc.get("keys"), dict) else {}
            size: int = doc["size"] if isinstance(doc.get("size"), int) else 0
            rows = [KeyInfo(name.removeprefix("purpose/"), kid, int(rec.get("created", 0)),
                            kid == doc.get("current"), size)
                    for kid, rec in keys.items() if isinstance(rec, dict)]
            out.extend(sorted(rows, key=lambda r: r.created))  # stable: the record keeps creation order
        return out

    # -- customer keys -------------------------------------------------------------------

    async def _customer(self, sub: str) -> _Customer | None:
        name = f"customer/{check_sub(sub)}"
        entry = self._cached(name)
        if isinstance(entry, _Customer):
            return entry
        doc = await self._read(name)
        if doc is None:
            return None
        if "erased" in doc:
            entry = _Customer(None, int(doc["erased"]))
        else:
            kid = doc.get("kid")
            if not isinstance(kid, str):
                raise KeyStoreError(f"record {name!r} is malformed")
            entry = _Customer(await self._unwrap(name, kid, f"customer:{sub}", doc.get("wrapped"),
                                                 sm4_gcm.KEY_SIZE))
        self._remember(name, entry)
        return entry

    @staticmethod
    def _erased(sub: str, entry: _Customer) -> KeyErased:
        return KeyErased(f"the data key of customer {sub!r} was erased (at {entry.erased_at}): "
                         f"their encrypted data can no longer be read, nor new data sealed for them")

    def cached_customer_key(self, sub: str) -> DataKey | None:
        """``sub``'s data key if this process holds it now (no I/O); None: ask :meth:`customer_key`."""
        entry = self._cached(f"customer/{sub}")
        return entry.key if isinstance(entry, _Customer) else None

    async def customer_key(self, sub: str) -> DataKey:
        """The data key of customer ``sub``, created on first use; KeyErased after :meth:`erase_customer`."""
        entry = await self._customer(sub)
        if entry is None:
            name = f"customer/{sub}"
            kid = new_kid()
            material = secrets.token_bytes(sm4_gcm.KEY_SIZE)
            doc = {"kid": kid, **await self._wrap(name, kid, material)}
            if await self._store.add(name, json.dumps(doc).encode()):
                entry = _Customer(DataKey(kid, f"customer:{sub}", material))
                self._remember(name, entry)
            else:  # another process created it first: theirs is the key
                entry = await self._customer(sub)
                if entry is None:
                    raise KeyStoreError(f"record {name!r} vanished while it was being created")
        if entry.key is None:
            raise self._erased(sub, entry)
        return entry.key

    async def existing_customer_key(self, sub: str, kid: str | None = None) -> DataKey:
        """The data key of ``sub`` for opening (never created); KeyErased or KeyNotFound if there is none.

        With ``kid``, the key must be that one (the id a sealed field carries).
        """
        entry = await self._customer(sub)
        if entry is not None and entry.key is not None and kid is not None and entry.key.kid != kid:
            self.forget(sub=sub)  # a stale cache entry?
            entry = await self._customer(sub)
        if entry is None:
            raise KeyNotFound(f"customer {sub!r} has no data key")
        if entry.key is None:
            raise self._erased(sub, entry)
        if kid is not None and entry.key.kid != kid:
            raise KeyNotFound(f"customer {sub!r} has no data key {kid!r} (theirs is {entry.key.kid!r})")
        return entry.key

    async def erase_customer(self, sub: str) -> bool:
        """Destroy the data key of ``sub`` (a tombstone replaces the wrapped key); whether they had one.

        This process forgets its copy at once; other replicas within their
        cache TTL (or at once if told through :meth:`forget`). Backups of the
        key store still hold the wrapped key until they expire: keep their
        retention within the erasure deadline, or erase there too.
        """
        name = f"customer/{check_sub(sub)}"
        had = (await self._read(name) or {}).get("wrapped") is not None
        await self._store.put(name, json.dumps({"erased": int(self._wall_clock())}).encode())
        self.forget(sub=sub)
        return had
