"""SecretBox: secrets at rest sealed with SM4-GCM under named keys.

This is the key-store interface that TOTP seeds and phone numbers are stored
behind. A box holds several keys by id and seals with the *current* one; it
opens anything sealed under any key it holds, so rotating is: add a new key,
make it current, keep the old ones until nothing sealed under them remains.

Sealed format (version 1), self-describing so a reader needs nothing else::

    0x01 | len(kid) (1 byte) | kid (ASCII) | iv (12 bytes) | ciphertext | tag (16 bytes)

The header (version, kid) is authenticated together with the caller's
``aad``: GCM's associated data is ``header || aad`` (the header carries its own
length, so the concatenation is unambiguous). The caller's ``aad`` binds a
sealed value to where it belongs (e.g. the account and the purpose), so a
value copied to another account's key does not open there.

IVs are 96 random bits per seal (``secrets``); with random IVs one key should
seal fewer than 2**32 values, far more than a key ring ever sees before it
rotates.

Key material never appears in ``repr``, ``str`` or exception messages; key
ids do (they are not secret).

Key file (``from_file``): JSON ``{"current": kid, "keys": {kid: base64}}``.
It must not be readable by group or others (mode 0600, like an SSH key);
``create=True`` writes a fresh one with mode 0600 when it is absent.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from gateway.crypto import sm4_gcm
from gateway.crypto.keyfile import KeyFileError, create_private, read_private

__all__ = ["KEY_SIZE", "SecretBox", "SecretBoxError", "VERSION"]

KEY_SIZE = sm4_gcm.KEY_SIZE
VERSION = 1
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class SecretBoxError(Exception):
    """A value could not be sealed or opened, or a key file is not usable.

    Opening fails the same way for a tampered value, a wrong ``aad``, an
    unknown key id or a truncated value; the message says which kind of
    problem it was, never anything about a key.
    """


def _check_kid(kid: str) -> str:
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise SecretBoxError(f"a key id is 1-64 characters of A-Z a-z 0-9 . _ - (got {kid!r})")
    return kid


class SecretBox:
    """Seals and opens small secrets with SM4-GCM under the ``current`` key of ``keys``."""

    __slots__ = ("_current", "_keys")

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        checked: dict[str, bytes] = {}
        for kid, key in keys.items():
            _check_kid(kid)
            if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
                raise SecretBoxError(f"key {kid!r} must be {KEY_SIZE} bytes")
            checked[kid] = bytes(key)
        if current not in checked:
            raise SecretBoxError(f"the current key id {current!r} is not one of the keys")
        self._keys = checked
        self._current = current

    # -- construction ----------------------------------------------------------

    @classmethod
    def generate(cls, kid: str | None = None) -> SecretBox:
        """A box with one fresh random key (tests, first start)."""
        kid = _check_kid(kid) if kid is not None else new_kid()
        return cls({kid: secrets.token_bytes(KEY_SIZE)}, kid)

    def with_new_key(self, kid: str | None = None) -> SecretBox:
        """A box that seals under a fresh key and still opens everything this one does."""
        kid = _check_kid(kid) if kid is not None else new_kid()
        if kid in self._keys:
            raise SecretBoxError(f"key id {kid!r} is already in use")
        return SecretBox({**self._keys, kid: secrets.token_bytes(KEY_SIZE)}, kid)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, create: bool = False) -> SecretBox:
        """The box in key file ``path``; with ``create``, a fresh key file (mode 0600) if it is absent."""
        path = Path(path)
        if create and not path.exists():
            box = cls.generate()
            if box._create(path):
                return box
            # another process created it first: use theirs
        try:
            raw = read_private(path)
        except KeyFileError as exc:
            raise SecretBoxError(str(exc)) from None
        if raw is None:
            raise SecretBoxError(
                f"key file {str(path)!r} does not exist: create it (SecretBox.from_file(..., create=True))")
        return cls._parse(raw, str(path))

    @classmethod
    def _parse(cls, raw: bytes, where: str) -> SecretBox:
        keys, current = parse_key_file(raw, where)
        return cls(keys, current)

    def write_file(self, path: str | os.PathLike[str]) -> None:
        """Write this box's keys to a new key file with mode 0600 (FileExistsError if it exists)."""
        if not self._create(Path(path)):
            raise FileExistsError(str(path))

    def _create(self, path: Path) -> bool:
        doc = {"current": self._current,
               "keys": {kid: base64.b64encode(key).decode("ascii") for kid, key in self._keys.items()}}
        return create_private(path, (json.dumps(doc, indent=1) + "\n").encode("ascii"))

    # -- use -------------------------------------------------------------------

    @property
    def current(self) -> str:
        """The id of the key new values are sealed under."""
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``plaintext`` encrypted and authenticated under the current key, bound to ``aad``."""
        kid = self._current.encode("ascii")
        header = bytes([VERSION, len(kid)]) + kid
        iv = secrets.token_bytes(sm4_gcm.IV_SIZE)
        return header + iv + sm4_gcm.encrypt(self._keys[self._current], iv, plaintext, header + aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of a value :meth:`seal` returned with the same ``aad``; SecretBoxError otherwise."""
        if len(sealed) < 2 or sealed[0] != VERSION:
            raise SecretBoxError("the sealed value is truncated or of an unknown version")
        end = 2 + sealed[1]
        if len(sealed) < end + sm4_gcm.IV_SIZE + sm4_gcm.TAG_SIZE:
            raise SecretBoxError("the sealed value is truncated")
        try:
            kid = sealed[2:end].decode("ascii")
        except UnicodeDecodeError:
            raise SecretBoxError("the sealed value names no valid key id") from None
        key = self._keys.get(kid)
        if key is None:
            raise SecretBoxError(f"the sealed value is under key {kid!r}, which this box does not hold")
        iv = sealed[end:end + sm4_gcm.IV_SIZE]
        try:
            return sm4_gcm.decrypt(key, iv, sealed[end + sm4_gcm.IV_SIZE:], sealed[:end] + aad)
        except sm4_gcm.InvalidTag:
            raise SecretBoxError("the sealed value was altered or belongs to another context (aad)") from None

    def __repr__(self) -> str:
        return f"SecretBox(current={self._current!r}, key_ids={list(self.key_ids)!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would write the keys wherever the pickle goes (a cache, a queue).
        raise TypeError("a SecretBox cannot be pickled")


def new_kid() -> str:
    """A fresh key id: ``k`` and 8 random hex digits."""
    return "k" + secrets.token_hex(4)


def parse_key_file(raw: bytes, where: str) -> tuple[dict[str, bytes], str]:
    """``({key id: 16-byte key}, current id)`` of a key file's bytes; SecretBoxError naming the problem.

    The format (``{"current": kid, "keys": {kid: base64 key}}``) is shared by every SM4 key file: the
    SecretBox's and the upstream payload keys (gateway/upstream_crypto.py)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise SecretBoxError(f"key file {where!r} is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict) or not doc["keys"]:
        raise SecretBoxError(f'key file {where!r} needs {{"current": kid, "keys": {{kid: base64 key}}}}')
    current = doc.get("current")
    if not isinstance(current, str):
        raise SecretBoxError(f"key file {where!r}: 'current' must be the id of one of its keys")
    keys: dict[str, bytes] = {}
    for kid, encoded in doc["keys"].items():
        try:
            keys[kid] = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except binascii.Error:
            keys[kid] = b""
        if len(keys[kid]) != KEY_SIZE:
            raise SecretBoxError(f"key file {where!r}: key {kid!r} must be {KEY_SIZE} bytes in standard base64")
    return keys, current
