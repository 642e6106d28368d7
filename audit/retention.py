"""Retention of the file store: old chains are archived (money) or deleted (the rest), on the record.

RULES.md: network logs are kept at least 6 months (Cybersecurity Law art. 21);
order, account and suitability records 20 years (Securities Law). Whole chains
are the unit: a chain is due once its newest record is older than
``retention_days``, and only if it is finished (closed, or open but silent
for that long: its process is gone). Then:

* a chain holding any money record (a decision or denial on a trade, transfer
  or admin route, an ``admin`` record) is **archived**: its segment files move
  to ``archive_path`` (long-term storage; verify reads it beside the live
  directory), kept for ``archive_years``;
* any other chain is **deleted**.

Before a file moves or goes, a ``retention`` record listing every chain acted
on (its id, action, last seq and head) is written write-ahead into the trail,
and the next checkpoint signs it and goes to the witness. Verification accepts
a chain that such a record says was deleted (its witness checkpoints and
bindings are not reported as missing), and looks for archived chains in the
archive. Deleting what a retention record does not name is still a break.

Archived chains older than ``archive_years`` are deleted the same way, on the
record.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.sink import chain_end, read_records, segment_files

__all__ = ["MONEY_TIERS", "Plan", "apply", "plan"]

MONEY_TIERS = frozenset({"trade", "transfer", "admin"})
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Plan:
    chain: str
    action: str
    """``archive`` or ``delete``."""
    files: tuple[Path, ...]
    last_seq: int
    head: str
    newest: float
    """Time of the chain's newest record."""

    def public(self) -> dict[str, Any]:
        return {"chain": self.chain, "action": self.action, "last_seq": self.last_seq, "head": self.head,
                "files": [f.name for f in self.files]}


def _scan(files: list[Path]) -> tuple[float, bool]:
    """The newest record's time and whether any record is a money record."""
    newest, money = 0.0, False
    for doc in read_records(files):
        t = doc.get("time")
        if isinstance(t, (int, float)):
            newest = max(newest, float(t))
        if doc.get("tier") in MONEY_TIERS or doc.get("type") == "admin":
            money = True
    return newest, money


def plan(directory: Path, *, now: float, retention_days: float, archive: Path | None,
         archive_years: float = 20.0) -> list[Plan]:
    """What retention would do to ``directory`` (and to ``archive``'s expired chains); nothing is touched."""
    out: list[Plan] = []
    for chain, files in segment_files(directory).items():
        end = chain_end(files[-1])
        newest, money = _scan(files)
        if newest == 0.0 or now - newest < retention_days * DAY:
            continue
        if end["status"] == "open" and now - max(f.stat().st_mtime for f in files) < retention_days * DAY:
            continue  # still being written, or too recently: not finished
        action = "archive" if money and archive is not None else "delete"
        if money and archive is None:
            continue  # money records are never deleted at the short retention: an archive is needed
        out.append(Plan(chain, action, tuple(files), int(end["seq"]), str(end["head"]), newest))
    if archive is not None:
        for chain, files in segment_files(archive).items():
            newest, _ = _scan(files)
            if newest and now - newest >= archive_years * 365.25 * DAY:
                end = chain_end(files[-1])
                out.append(Plan(chain, "delete", tuple(files), int(end["seq"]), str(end["head"]), newest))
    return out


def apply(plans: list[Plan], archive: Path | None) -> None:
    """Move or delete the files of ``plans`` (after their retention record is durable)."""
    for p in plans:
        for path in p.files:
            if p.action == "archive":
                assert archive is not None
                archive.mkdir(parents=True, exist_ok=True)
                target = archive / path.name
                shutil.copy2(path, target)
                with target.open("rb") as f:
                    os.fsync(f.fileno())
                os.unlink(path)
            else:
                path.unlink(missing_ok=True)


def record(plans: list[Plan], *, by: str, retention_days: float) -> dict[str, Any]:
    """The retention record written before any file moves or goes."""
    return {"type": "retention", "time": round(time.time(), 3), "sub": by, "retention_days": retention_days,
            "chains": [p.public() for p in plans]}
