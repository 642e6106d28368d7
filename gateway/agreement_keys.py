"""The gateway's SM2 key-agreement keys (``[envelope] agreement_key_file``) and their rotation.

* :class:`AgreementKeys`: the key pairs by id, from a JSON file (mode 0600) shared by every
  gateway process; the ``current`` one is offered at ``/auth/session-key`` (gateway/envelope.py),
  the previous ones still open key material sent to them. :meth:`AgreementKeys.refresh` picks
  up a rotation within seconds, without a restart.
* :func:`rotate_agreement_key`, :func:`agreement_key_infos`, :func:`retire_agreement_key`: what
  ``portcullis keys agreement rotate|list|retire`` does to the file, under its lock, written
  atomically (gateway/crypto/keyfile.py). docs/KEYS.md "Agreement keys" has the procedure.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.crypto.keyfile import KeyFileError, create_private, locked, read_private, replace_private
from gateway.crypto.sm2 import Sm2Error, Sm2PrivateKey
from gateway.errors import ConfigError

__all__ = ["RELOAD_INTERVAL", "AgreementKeyInfo", "AgreementKeyRefused", "AgreementKeys", "agreement_key_infos",
           "retire_agreement_key", "rotate_agreement_key", "utc_text"]

log = logging.getLogger("portcullis.agreement_keys")


RELOAD_INTERVAL = 2.0
"""Seconds between two looks (one ``os.stat``) at the agreement key file for a rotation."""

_WHERE = "envelope.agreement_key_file"


class AgreementKeyRefused(Exception):
    """``portcullis keys agreement retire`` will not remove this key (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class _KeyFile:
    """The file: ``{"current": kid, "keys": {kid: hex}, "created": {kid: epoch}, "superseded": {kid: epoch}}``.

    ``created`` and ``superseded`` (when a key stopped being current) are optional: files written
    before rotation existed have neither, and older gateways ignore them."""

    current: str
    keys: dict[str, str]
    created: dict[str, float]
    superseded: dict[str, float]

    @classmethod
    def parse(cls, raw: bytes, path: Path) -> _KeyFile:
        try:
            doc = json.loads(raw)
            keys = {str(kid): str(v) for kid, v in doc["keys"].items()}
            times = [{str(k): float(v) for k, v in doc.get(name, {}).items() if k in keys}
                     for name in ("created", "superseded")]
            current = str(doc["current"])
            if current not in keys or not all(len(v) == 64 and bytes.fromhex(v) for v in keys.values()):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{_WHERE}: {path} is not a valid agreement key file") from None
        return cls(current, keys, *times)

    def to_json(self) -> bytes:
        return json.dumps({"current": self.current, "keys": self.keys, "created": self.created,
                           "superseded": self.superseded}, indent=1).encode() + b"\n"

    def retire_from(self, kid: str, keep: float) -> float | None:
        """When ``kid`` may go: ``keep`` seconds after it stopped being current (None: not known).

        Files from before rotation do not say when; the current key's creation is a bound."""
        since = self.superseded.get(kid, self.created.get(self.current))
        return None if since is None else since + keep


def _new_key(taken: dict[str, str]) -> tuple[str, Sm2PrivateKey]:
    kid = "ak-" + secrets.token_hex(6)
    while kid in taken:
        kid = "ak-" + secrets.token_hex(6)
    return kid, Sm2PrivateKey.generate()


def _read_key_file(path: Path) -> _KeyFile | None:
    try:
        raw = read_private(path, "agreement key file")
    except KeyFileError as exc:
        raise ConfigError(f"{_WHERE}: {exc}") from None
    return None if raw is None else _KeyFile.parse(raw, path)


def _private_keys(kf: _KeyFile, loaded: dict[str, Sm2PrivateKey], path: Path) -> dict[str, Sm2PrivateKey]:
    keys: dict[str, Sm2PrivateKey] = {}
    for kid, hexkey in kf.keys.items():
        old = loaded.get(kid)  # deriving a public key costs ~2 ms: reuse the unchanged ones
        try:
            keys[kid] = (old if old is not None and old.to_bytes().hex() == hexkey
                         else Sm2PrivateKey.from_bytes(bytes.fromhex(hexkey)))
        except Sm2Error:
            raise ConfigError(f"{_WHERE}: {path} is not a valid agreement key file") from None
    return keys


def _stamp(path: Path) -> tuple[int, ...]:
    # ctime and mode too: a chmod changes neither the size nor the mtime.
    try:
        st = os.stat(path)
    except OSError:
        return (-1,)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


class AgreementKeys:
    """SM2 key pairs by id; the ``current`` one is offered. Key material never in repr or messages.

    Loaded from a file, :meth:`refresh` picks up a rotation: at most once every ``interval``
    seconds of ``clock`` it compares the file's ``os.stat`` with the last one seen, and reloads
    when it changed. A file that does not load (malformed, readable by group or others, gone)
    leaves the keys in memory as they were, with one warning per change of the file."""

    __slots__ = ("_checked", "_clock", "_current", "_interval", "_keys", "_path", "_public", "_stamp")

    def __init__(self, keys: dict[str, Sm2PrivateKey], current: str, *, path: Path | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = RELOAD_INTERVAL) -> None:
        self._set(keys, current)
        self._path = path
        self._clock = clock
        self._interval = interval
        self._checked = clock()
        self._stamp: tuple[int, ...] = ()

    def _set(self, keys: dict[str, Sm2PrivateKey], current: str) -> None:
        if current not in keys:
            raise ValueError("the current agreement key id is not among the keys")
        self._keys = dict(keys)
        self._current = current
        self._public = {kid: k.public_key().to_bytes() for kid, k in keys.items()}

    @classmethod
    def generate(cls) -> AgreementKeys:
        kid, key = _new_key({})
        return cls({kid: key}, kid)

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False, clock: Callable[[], float] = time.monotonic,
                  interval: float = RELOAD_INTERVAL) -> AgreementKeys:
        """Mode 0600 (see :class:`_KeyFile` for the format); reloaded by :meth:`refresh` when it changes.

        With ``create``, a fresh file when absent; when several processes start at once, one
        creates it and the others read it, so they all hold the same keys."""
        if create and not path.exists():
            kid, key = _new_key({})
            create_private(path, _KeyFile(kid, {kid: key.to_bytes().hex()}, {kid: time.time()}, {}).to_json())
        stamp = _stamp(path)  # before reading: a change in between is seen at the next look
        kf = _read_key_file(path)
        if kf is None:
            raise ConfigError(f"{_WHERE}: {path} does not exist")
        keys = cls(_private_keys(kf, {}, path), kf.current, path=path, clock=clock, interval=interval)
        keys._stamp = stamp
        return keys

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the file if it changed (looked at once per ``interval``, or now with ``force``).

        True when new keys were loaded."""
        path = self._path
        if path is None:
            return False
        now = self._clock()
        if not force and abs(now - self._checked) < self._interval:
            return False
        self._checked = now
        stamp = _stamp(path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # a file that does not load is not read (or warned about) again until it changes
        try:
            kf = _read_key_file(path)
            if kf is None:
                raise ConfigError(f"{_WHERE}: {path} does not exist")
            self._set(_private_keys(kf, self._keys, path), kf.current)
        except ConfigError as exc:
            log.warning("agreement keys not reloaded, keeping the %d loaded (current %s): %s",
                        len(self._keys), self._current, exc)
            return False
        log.info("agreement keys reloaded from %s: current %s, %d keys", path, self._current, len(self._keys))
        return True

    @property
    def current(self) -> str:
        return self._current

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def public(self, kid: str | None = None) -> bytes:
        return self._public[kid or self._current]

    def get(self, kid: str) -> Sm2PrivateKey | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return f"AgreementKeys(current={self._current!r}, ids={list(self._keys)!r})"


# -- rotating the agreement key file (``portcullis keys agreement``) -----------------------


@dataclass(frozen=True, slots=True)
class AgreementKeyInfo:
    kid: str
    current: bool
    created: float | None
    superseded: float | None
    retire_from: float | None
    """When ``retire`` accepts it (None: the current key, or not known)."""


def _write_key_file(path: Path, kf: _KeyFile, *, new: bool) -> None:
    """Atomically (gateway/crypto/keyfile.py); a ``new`` file is not written over one a starting gateway made."""
    try:
        replace_private(path, kf.to_json(), new=new)
    except FileExistsError:
        raise ConfigError(f"{_WHERE}: {path} was created meanwhile (a gateway starting?): "
                          f"run the command again") from None


def rotate_agreement_key(path: Path, *, now: float) -> tuple[str, bytes]:
    """Add a fresh key and make it current (older keys stay); its id and public key. Creates the file if absent."""
    with locked(path):
        kf = _read_key_file(path)
        kid, key = _new_key(kf.keys if kf else {})
        hexkey = key.to_bytes().hex()
        if kf is None:
            _write_key_file(path, _KeyFile(kid, {kid: hexkey}, {kid: now}, {}), new=True)
        else:
            _write_key_file(path, _KeyFile(kid, {**kf.keys, kid: hexkey}, {**kf.created, kid: now},
                                           {**kf.superseded, kf.current: now}), new=False)
    return kid, key.public_key().to_bytes()


def agreement_key_infos(path: Path, *, keep: float) -> list[AgreementKeyInfo]:
    """The keys in the file, oldest first as far as known (never key material)."""
    kf = _read_key_file(path)
    if kf is None:
        raise ConfigError(f"{_WHERE}: {path} does not exist (the gateway creates it at its first start)")
    rows = [AgreementKeyInfo(kid, kid == kf.current, kf.created.get(kid), kf.superseded.get(kid),
                             None if kid == kf.current else kf.retire_from(kid, keep)) for kid in kf.keys]
    return sorted(rows, key=lambda r: (r.current, r.created if r.created is not None else float("-inf")))


def retire_agreement_key(path: Path, kid: str, *, keep: float, now: float, force: bool = False) -> None:
    """Remove a key that is no longer current, once ``keep`` seconds have passed since it was (or ``force``)."""
    with locked(path):
        kf = _read_key_file(path)
        if kf is None or kid not in kf.keys:
            raise AgreementKeyRefused(f"no agreement key {kid!r} in {path}")
        if kid == kf.current:
            raise AgreementKeyRefused(f"{kid} is the current agreement key: rotate first, then retire it "
                                      f"after {keep:g} s (max_age + window)")
        since = kf.retire_from(kid, keep)
        if not force and (since is None or now < since):
            when = ("it is not recorded when it stopped being current" if since is None
                    else f"it may go from {utc_text(since)} ({since - now:.0f} s from now)")
            raise AgreementKeyRefused(f"{kid} stopped being current less than max_age + window ({keep:g} s) ago "
                                      f"(a client may still hold its offer): {when}; --force removes it now")
        drop = {k: v for k, v in kf.keys.items() if k != kid}
        _write_key_file(path, _KeyFile(kf.current, drop, {k: v for k, v in kf.created.items() if k != kid},
                                       {k: v for k, v in kf.superseded.items() if k != kid}), new=False)


def utc_text(t: float) -> str:
    """A time for operators' terminals: ``2026-12-03T09:41:07Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
