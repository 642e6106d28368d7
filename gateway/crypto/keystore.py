"""Where a key ring keeps its records: wrapped data keys, never plain ones.

:class:`KeyStore` is async because the gateway's shared state (Redis) is; a
Redis store belongs with the other Redis code, outside this leaf package.
Two stores live here:

* :class:`MemoryKeyStore`: a dict, for tests and a single process that may
  lose its keys at exit (everything sealed under them becomes unreadable).
* :class:`FileKeyStore`: one JSON file ``{name: base64 value}`` with mode
  0600, rewritten whole by an atomic replace (a crash leaves the old file or
  the new one, never half of one), under an advisory lock on ``FILE.lock`` so
  the ``portcullis keys`` command and a running gateway can share it. For the
  demo and one machine: every call reads the file.

The values are opaque bytes to a store. Everything a key ring writes is
already wrapped under the master key, so a store needs integrity and
availability more than secrecy; it is still kept private (0600), because a
wrapped key plus a stolen master key is a key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from gateway.crypto.key_errors import KeyStoreError
from gateway.crypto.keyfile import KeyFileError, locked, read_private, replace_private

__all__ = ["FileKeyStore", "KeyStore", "KeyStoreError", "MemoryKeyStore"]


@runtime_checkable
class KeyStore(Protocol):
    """Records by name. ``add`` is the only conditional write: the first writer of a name wins."""

    async def get(self, name: str) -> bytes | None: ...

    async def put(self, name: str, value: bytes) -> None: ...

    async def add(self, name: str, value: bytes) -> bool:
        """Store ``value`` only if ``name`` is absent (Redis ``SET NX``); whether it was stored."""
        ...

    async def delete(self, name: str) -> bool: ...

    async def names(self, prefix: str) -> list[str]:
        """The names that start with ``prefix``, sorted (an administrative listing, not a hot path)."""
        ...


class MemoryKeyStore:
    """A :class:`KeyStore` in a dict (tests; one process)."""

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}

    async def get(self, name: str) -> bytes | None:
        return self._records.get(name)

    async def put(self, name: str, value: bytes) -> None:
        self._records[name] = bytes(value)

    async def add(self, name: str, value: bytes) -> bool:
        if name in self._records:
            return False
        self._records[name] = bytes(value)
        return True

    async def delete(self, name: str) -> bool:
        return self._records.pop(name, None) is not None

    async def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self._records if n.startswith(prefix))

    def __repr__(self) -> str:
        return f"MemoryKeyStore({len(self._records)} records)"


class FileKeyStore:
    """A :class:`KeyStore` in one JSON file (mode 0600), replaced atomically on each write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- the file ----------------------------------------------------------------

    def _read(self) -> dict[str, bytes]:
        try:
            raw = read_private(self.path, "key store")
        except KeyFileError as exc:
            raise KeyStoreError(str(exc)) from None
        if raw is None:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise KeyStoreError(f"key store {str(self.path)!r} is not JSON") from None
        if not isinstance(doc, dict):
            raise KeyStoreError(f"key store {str(self.path)!r} must be a JSON object {{name: base64}}")
        records: dict[str, bytes] = {}
        for name, encoded in doc.items():
            try:
                records[name] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise KeyStoreError(f"key store {str(self.path)!r}: record {name!r} is not base64") from None
        return records

    def _write(self, records: dict[str, bytes]) -> None:
        doc = {name: base64.b64encode(value).decode("ascii") for name, value in sorted(records.items())}
        replace_private(self.path, (json.dumps(doc, indent=1) + "\n").encode("ascii"))

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """An exclusive advisory lock for a read-modify-write (other processes included)."""
        return locked(self.path)

    # -- KeyStore ------------------------------------------------------------------

    async def get(self, name: str) -> bytes | None:
        return self._read().get(name)

    async def put(self, name: str, value: bytes) -> None:
        with self._locked():
            records = self._read()
            records[name] = bytes(value)
            self._write(records)

    async def add(self, name: str, value: bytes) -> bool:
        with self._locked():
            records = self._read()
            if name in records:
                return False
            records[name] = bytes(value)
            self._write(records)
            return True

    async def delete(self, name: str) -> bool:
        with self._locked():
            records = self._read()
            if records.pop(name, None) is None:
                return False
            self._write(records)
            return True

    async def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self._read() if n.startswith(prefix))

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self.path)!r})"
