"""Witnesses: where checkpoints go besides the audit store, so the store alone cannot be rewritten.

A witness keeps every signed checkpoint statement (audit/chain.py) it is given,
append-only. ``portcullis audit verify`` checks the store against it: a chain
the witness saw up to record N must still reach record N with the same hash.
The interface is two calls, so a second PostgreSQL database, a file on other
storage, or a second party's HTTPS endpoint can play the part.

* :class:`FileWitness`: one JSON line per statement, fsynced, in a file that
  belongs on other storage than the audit directory (another disk, a mount
  of another machine, WORM storage).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = ["FileWitness", "Witness", "WitnessError"]


class WitnessError(Exception):
    """The witness could not take or give checkpoints (the sink retries; verify reports it)."""


class Witness(Protocol):
    async def push(self, statement: Mapping[str, Any]) -> None:
        """Keep ``statement`` durably; WitnessError when it could not."""
        ...

    async def statements(self) -> list[dict[str, Any]]:
        """Every statement kept, oldest first."""
        ...


class FileWitness:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileWitness({str(self.path)!r})"

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def push(self, statement: Mapping[str, Any]) -> None:
        try:
            await asyncio.to_thread(self._append, orjson.dumps(statement, option=orjson.OPT_SORT_KEYS) + b"\n")
        except OSError as exc:
            raise WitnessError(f"witness {str(self.path)!r}: {exc.strerror}") from None

    def read(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise WitnessError(f"witness {str(self.path)!r}: {exc.strerror}") from None
        out = []
        for line in data.splitlines():
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line: the push it belonged to was not acknowledged
            if isinstance(doc, dict):
                out.append(doc)
        return out

    async def statements(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.read)
