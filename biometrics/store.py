"""Consent records, encrypted templates, and seen-frame hashes.

* Consent (PIPL art. 29: separate consent for sensitive personal information)
  is recorded on its own, append-only, before any enrolment; withdrawing it
  deletes the template.
* Templates (128 float64 encodings) are sealed with a :class:`TemplateCipher`
  (AES-256-GCM here, keyed from a file; the crypto issue swaps in SM4-GCM
  behind the same interface). The customer id is the AEAD's associated data,
  so a template copied to another customer's file does not open.
* Files are named by a keyed digest of the customer id, never the id itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from biometrics.errors import BiometricError
from biometrics.imaging import hamming

_CUSTOMER = re.compile(r"[A-Za-z0-9._@:-]{1,128}")


def check_customer(customer: object) -> str:
    if not isinstance(customer, str) or not _CUSTOMER.fullmatch(customer):
        raise BiometricError("bad_request", "customer must be 1-128 characters of A-Z a-z 0-9 . _ @ : -")
    return customer


# --------------------------------------------------------------------------
# Cipher


class TemplateCipher(Protocol):
    """Authenticated encryption of a template, bound to its customer."""

    key_id: str
    algorithm: str

    def seal(self, plaintext: bytes, customer: str) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag)."""
        ...

    def open(self, nonce: bytes, ciphertext: bytes, customer: str) -> bytes: ...

    def name_for(self, customer: str) -> str:
        """A stable file-safe name for the customer that does not reveal the id."""
        ...


class AesGcmTemplateCipher:
    """AES-256-GCM with a 96-bit random nonce; the key file holds 32 random bytes."""

    algorithm = "AES-256-GCM"

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("template key must be 32 bytes")
        self._aead = AESGCM(key)
        self._names = hmac.new(key, b"portcullis biometrics file names", hashlib.sha256).digest()
        self.key_id = hashlib.sha256(b"key id" + key).hexdigest()[:16]

    @classmethod
    def from_key_file(cls, path: Path, *, create: bool = False) -> AesGcmTemplateCipher:
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def seal(self, plaintext: bytes, customer: str) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, plaintext, customer.encode())

    def open(self, nonce: bytes, ciphertext: bytes, customer: str) -> bytes:
        return self._aead.decrypt(nonce, ciphertext, customer.encode())

    def name_for(self, customer: str) -> str:
        return hmac.new(self._names, customer.encode(), hashlib.sha256).hexdigest()[:40]


# --------------------------------------------------------------------------
# Templates


class TemplateStore(Protocol):
    def put(self, customer: str, encoding: np.ndarray) -> None: ...
    def get(self, customer: str) -> np.ndarray | None: ...
    def delete(self, customer: str) -> bool: ...


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FileTemplateStore:
    """One sealed JSON file per customer under ``directory`` (mode 0700/0600)."""

    def __init__(self, directory: Path, cipher: TemplateCipher) -> None:
        self.directory = directory
        self._cipher = cipher
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_for(self, customer: str) -> Path:
        return self.directory / f"{self._cipher.name_for(customer)}.tpl"

    def put(self, customer: str, encoding: np.ndarray) -> None:
        plain = np.asarray(encoding, dtype="<f8").tobytes()
        nonce, sealed = self._cipher.seal(plain, customer)
        doc = {"v": 1, "alg": self._cipher.algorithm, "kid": self._cipher.key_id,
               "nonce": base64.b64encode(nonce).decode(), "ct": base64.b64encode(sealed).decode()}
        _write_atomic(self.path_for(customer), json.dumps(doc).encode())

    def get(self, customer: str) -> np.ndarray | None:
        try:
            doc = json.loads(self.path_for(customer).read_bytes())
        except FileNotFoundError:
            return None
        plain = self._cipher.open(base64.b64decode(doc["nonce"]), base64.b64decode(doc["ct"]), customer)
        return np.frombuffer(plain, dtype="<f8").astype(np.float64)

    def delete(self, customer: str) -> bool:
        # Unlinking does not scrub the blocks; the ciphertext without the key is what is left.
        try:
            self.path_for(customer).unlink()
        except FileNotFoundError:
            return False
        return True


# --------------------------------------------------------------------------
# Consent


@dataclass(frozen=True, slots=True)
class Consent:
    customer: str
    granted: bool
    at: float
    text_version: str
    channel: str


class ConsentStore(Protocol):
    def record(self, consent: Consent) -> None: ...
    def current(self, customer: str) -> Consent | None: ...


class FileConsentStore:
    """An append-only JSON-lines log of consent grants and withdrawals; the last line per customer wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._latest: dict[str, Consent] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    c = Consent(**json.loads(line))
                    self._latest[c.customer] = c

    def record(self, consent: Consent) -> None:
        line = json.dumps({"customer": consent.customer, "granted": consent.granted, "at": consent.at,
                           "text_version": consent.text_version, "channel": consent.channel}) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._latest[consent.customer] = consent

    def current(self, customer: str) -> Consent | None:
        return self._latest.get(customer)


# --------------------------------------------------------------------------
# Seen frames


class ReplayStore(Protocol):
    def seen(self, customer: str, hashes: Iterable[int]) -> bool: ...
    def remember(self, customer: str, hashes: Iterable[int]) -> None: ...
    def forget(self, customer: str) -> None: ...


class MemoryReplayStore:
    """Perceptual hashes of recent frames per customer, bounded in customers, frames and age.

    A frame within ``max_distance`` bits (of 256) of one seen before for the
    same customer is a replay: the same picture re-sent, re-encoded or rescaled.
    """

    def __init__(self, *, max_distance: int = 12, per_customer: int = 64, max_customers: int = 10_000,
                 ttl: float = 7 * 86400, clock: Callable[[], float] = time.time) -> None:
        self.max_distance = max_distance
        self._per_customer = per_customer
        self._max_customers = max_customers
        self._ttl = ttl
        self._clock = clock
        self._hashes: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()

    def seen(self, customer: str, hashes: Iterable[int]) -> bool:
        kept = self._hashes.get(customer)
        if not kept:
            return False
        horizon = self._clock() - self._ttl
        return any(at >= horizon and hamming(h, old) <= self.max_distance
                   for h in hashes for at, old in kept)

    def remember(self, customer: str, hashes: Iterable[int]) -> None:
        kept = self._hashes.get(customer)
        if kept is None:
            kept = self._hashes[customer] = deque(maxlen=self._per_customer)
            while len(self._hashes) > self._max_customers:
                self._hashes.popitem(last=False)
        self._hashes.move_to_end(customer)
        now = self._clock()
        kept.extend((now, h) for h in hashes)

    def forget(self, customer: str) -> None:
        self._hashes.pop(customer, None)
