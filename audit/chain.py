"""The SM3 hash chain and the SM2-signed checkpoints of the audit trail (pure: no I/O).

Every stored record is one line of canonical JSON (sorted keys, compact, UTF-8)
carrying three chain fields::

    {"chain": "<chain id>", "seq": 41, "prev": "<hex SM3 of line 40>", ...the record...}

``seq`` counts from 0 in each chain, ``prev`` is the SM3 digest of the previous
line's bytes (without its newline; 64 zeros for the first). A line's own hash is
the SM3 of its bytes, so editing, deleting, inserting or reordering a record
breaks the link of the next one. The chain hashes what is stored: personal data
sealed under a customer's key (gateway/personal_data.py) stays ciphertext here,
and erasing that key leaves the chain verifying.

Each gateway process writes its own chain (a new one at every start): one
writer, no coordination, and a crash can only ever tear the tail of a chain
nobody will append to again. Its first record (``type: chain_start``) names the
public audit key and the heads of the chains found in the store at start, so a
restart binds the previous chains' ends too.

Checkpoints (``type: checkpoint``) sign the head every N records or T seconds
with the gateway's SM2 audit key (its own key, used for nothing else; GmSSL
draws the nonce from ``/dev/urandom``, docs/CRYPTO.md)::

    statement = {"chain", "seq" (of the head record), "head" (its hash), "count", "time", "key_id"}
    sig = SM2-sign(canonical JSON of the statement)

A checkpoint is appended to its chain like any record and pushed to a witness
outside the store (audit/witness.py), so deleting the newest records, a whole
chain, or truncating a file is detectable: the witness holds a signed head the
store no longer reaches. Only records after the last checkpoint the witness
holds can vanish unseen: at most N records or T seconds' worth.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.crypto import sm3
from gateway.crypto.b64 import b64url_decode, b64url_encode
from gateway.crypto.sm2 import Sm2Error, Sm2PrivateKey, Sm2PublicKey

__all__ = ["CHAIN_FIELDS", "GENESIS", "Chain", "ChainBreak", "Checkpoint", "canonical", "line_hash",
           "new_chain_id", "parse_line", "sign_statement", "verify_statement"]

GENESIS = "0" * 64
CHAIN_FIELDS = ("chain", "seq", "prev")
_OPTS = orjson.OPT_SORT_KEYS


def canonical(doc: Mapping[str, Any]) -> bytes:
    """Sorted keys, compact, UTF-8, no newline (orjson; ``default=str`` for what JSON lacks)."""
    return orjson.dumps(doc, option=_OPTS, default=str)


def line_hash(line: bytes) -> str:
    """The hex SM3 of a stored line (without its newline): what the next record's ``prev`` names."""
    return sm3.digest(line).hex()


def new_chain_id(now: float | None = None) -> str:
    """``<UTC stamp>-<random>``: sorts by start time, unique without coordination."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(4)}"


class ChainBreak(Exception):
    """A stored line that does not belong where it is (the message says why)."""


def parse_line(line: bytes) -> dict[str, Any]:
    """The record of one stored line; ChainBreak if it is not a chained record."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ChainBreak("not JSON") from None
    if not isinstance(doc, dict):
        raise ChainBreak("not a JSON object")
    chain, seq, prev = doc.get("chain"), doc.get("seq"), doc.get("prev")
    if not isinstance(chain, str) or not isinstance(seq, int) or isinstance(seq, bool) \
            or not isinstance(prev, str):
        raise ChainBreak("no chain, seq or prev")
    return doc


# -- checkpoints ---------------------------------------------------------------------------

_STATEMENT = ("chain", "seq", "head", "count", "time", "key_id")


def _statement_bytes(statement: Mapping[str, Any]) -> bytes:
    return canonical({k: statement[k] for k in _STATEMENT})


def sign_statement(key: Sm2PrivateKey, key_id: str, *, chain: str, seq: int, head: str,
                   now: float) -> dict[str, Any]:
    """The signed checkpoint statement of a chain's head (record ``seq`` hashing to ``head``)."""
    statement: dict[str, Any] = {"chain": chain, "seq": seq, "head": head, "count": seq + 1,
                                 "time": round(now, 3), "key_id": key_id}
    statement["sig"] = b64url_encode(key.sign(_statement_bytes(statement)))
    return statement


def verify_statement(statement: Mapping[str, Any], keys: Mapping[str, Sm2PublicKey]) -> None:
    """ChainBreak unless ``statement`` is well formed and signed by the audit key it names."""
    try:
        missing = [k for k in (*_STATEMENT, "sig") if k not in statement]
        if missing:
            raise ChainBreak(f"checkpoint lacks {', '.join(missing)}")
        key = keys.get(statement["key_id"])
        if key is None:
            raise ChainBreak(f"checkpoint signed by unknown audit key {statement['key_id']!r}")
        key.verify(b64url_decode(statement["sig"]), _statement_bytes(statement))
    except (Sm2Error, ValueError, TypeError):
        raise ChainBreak("checkpoint signature does not verify") from None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    statement: dict[str, Any]
    line: bytes
    """The checkpoint record as stored in its chain (with its newline)."""


# -- writing one chain ---------------------------------------------------------------------


@dataclass(slots=True)
class Chain:
    """The head of one chain being written: turns records into chained lines, in order."""

    chain_id: str
    seq: int = -1
    head: str = GENESIS
    since_checkpoint: int = 0
    checkpointed_seq: int = -1
    last_checkpoint: float = field(default_factory=time.monotonic)

    def append(self, record: Mapping[str, Any]) -> bytes:
        """The stored line of ``record`` (with its newline); the head moves on."""
        clash = [k for k in CHAIN_FIELDS if k in record]
        if clash:
            raise ValueError(f"an audit record may not set {clash}: the chain does")
        seq = self.seq + 1
        line = canonical({**record, "chain": self.chain_id, "seq": seq, "prev": self.head})
        self.seq, self.head = seq, line_hash(line)
        self.since_checkpoint += 1
        return line + b"\n"

    def checkpoint_due(self, every: int, interval: float, now: float) -> bool:
        """Unsigned records past ``every`` or older than ``interval`` seconds."""
        if self.seq <= self.checkpointed_seq:
            return False
        return self.since_checkpoint >= every or now - self.last_checkpoint >= interval

    def checkpoint(self, key: Sm2PrivateKey, key_id: str, *, now: float, wall: float,
                   closing: bool = False) -> Checkpoint:
        """Sign the head and append the checkpoint record (the witness gets ``statement``).

        ``closing``: the chain's last record (a clean shutdown); a chain that ends otherwise crashed."""
        statement = sign_statement(key, key_id, chain=self.chain_id, seq=self.seq, head=self.head, now=wall)
        self.checkpointed_seq = self.seq
        record: dict[str, Any] = {"type": "checkpoint", "time": statement["time"], "checkpoint": statement}
        if closing:
            record["closing"] = True
        line = self.append(record)
        self.since_checkpoint = 0
        self.last_checkpoint = now
        return Checkpoint(statement, line)


def iter_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of each complete line (ending in a newline) of ``data``."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return
        yield start, data[start:end]
        start = end + 1
