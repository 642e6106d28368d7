"""Retention of the trail: old chains are archived (money) or deleted (the rest), on the record.

RULES.md: network logs are kept at least 6 months (Cybersecurity Law art. 21);
order, account and suitability records 20 years (Securities Law). Whole chains
are the unit: a chain is due once its newest record is older than
``retention_days``, and only if it is finished (closed, or open but silent
for that long: its process is gone). Then:

* a chain holding any money record (a decision or denial on a trade, transfer
  or admin route, an ``admin`` record; a ``retention`` record too, which
  accounts for the chains deleted) is **archived**: its segment files move
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
record. The decision (:func:`decide`, :func:`expired`, :func:`summarize`) is
shared with the PostgreSQL store (audit/postgres.py), which archives into a
table instead of a directory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.sink import chain_end, read_records, segment_files

__all__ = ["MONEY_TIERS", "Plan", "apply", "decide", "expired", "plan", "record", "summarize"]

MONEY_TIERS = frozenset({"trade", "transfer", "admin"})
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Plan:
    chain: str
    action: str
    """``archive`` or ``delete``."""
    files: tuple[Path, ...]
    """The file store's segment files (none for PostgreSQL)."""
    last_seq: int
    head: str
    newest: float
    """Time of the chain's newest record."""
    archived: bool = False
    """The chain is in the archive already (its ``archive_years`` are over)."""

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chain": self.chain, "action": self.action, "last_seq": self.last_seq,
                               "head": self.head}
        if self.files:
            out["files"] = [f.name for f in self.files]
        return out


def is_money(doc: Mapping[str, Any]) -> bool:
    """A record kept ``archive_years``: one of a trade, transfer or admin route, an ``admin`` record, or a
    ``retention`` record (what accounts for the chains deleted: without it they would read as a break)."""
    return doc.get("tier") in MONEY_TIERS or doc.get("type") in ("admin", "retention")


def summarize(docs: Iterable[Mapping[str, Any]]) -> tuple[float, bool]:
    """The newest record's time and whether any record is a money record (:func:`is_money`)."""
    newest, money = 0.0, False
    for doc in docs:
        t = doc.get("time")
        if isinstance(t, (int, float)):
            newest = max(newest, float(t))
        money = money or is_money(doc)
    return newest, money


def decide(*, now: float, newest: float, money: bool, ended: bool, last_written: float, retention_days: float,
           can_archive: bool) -> str | None:
    """``archive``, ``delete`` or None (kept) for a live chain, by both stores' one rule.

    Due once its newest record is older than ``retention_days`` and it is finished: ``ended`` (closed,
    or torn: never continued), or not written for that long (``last_written``: its process is gone).
    Money is never deleted at the short retention: without an archive it stays."""
    window = retention_days * DAY
    if newest == 0.0 or now - newest < window:
        return None
    if not ended and now - last_written < window:
        return None  # still being written, or too recently: not finished
    if money:
        return "archive" if can_archive else None
    return "delete"


def expired(*, now: float, newest: float, archive_years: float) -> bool:
    """Whether an archived chain's ``archive_years`` are over (then it is deleted, on the record)."""
    return bool(newest) and now - newest >= archive_years * 365.25 * DAY


def plan(directory: Path, *, now: float, retention_days: float, archive: Path | None,
         archive_years: float = 20.0) -> list[Plan]:
    """What retention would do to ``directory`` (and to ``archive``'s expired chains); nothing is touched."""
    out: list[Plan] = []
    for chain, files in segment_files(directory).items():
        end = chain_end(files[-1])
        newest, money = summarize(read_records(files))
        action = decide(now=now, newest=newest, money=money, ended=end["status"] != "open",
                        last_written=max(f.stat().st_mtime for f in files), retention_days=retention_days,
                        can_archive=archive is not None)
        if action is not None:
            out.append(Plan(chain, action, tuple(files), int(end["seq"]), str(end["head"]), newest))
    if archive is not None:
        for chain, files in segment_files(archive).items():
            newest, _ = summarize(read_records(files))
            if expired(now=now, newest=newest, archive_years=archive_years):
                end = chain_end(files[-1])
                out.append(Plan(chain, "delete", tuple(files), int(end["seq"]), str(end["head"]), newest,
                                archived=True))
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
