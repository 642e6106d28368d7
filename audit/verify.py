"""Verify the audit trail: every chain's links, every checkpoint's signature, the witness's view.

``verify_directory(directory, public_keys, witness)`` reads the segment files
(audit/sink.py) chain by chain, in order, and reports the first bad record of
each chain with where it is (file and line) and what is wrong:

* a line that is not a chained record, or sits in another chain's file;
* a ``seq`` that skips (records deleted) or goes back (inserted, reordered);
* a ``prev`` that is not the SM3 of the line before: that line was edited (or
  this one, or a line was inserted between them);
* a checkpoint whose signature does not verify under the audit public keys, or
  that does not sign the record before it;
* a chain_start binding another chain's record that is gone or altered;
* against the witness: a chain it holds a signed checkpoint of is missing, ends
  before that checkpoint (its newest records deleted, a file truncated), or has
  another record there.

After a break the rest of that chain is not judged (its links are anchored to
the bad record). Notices are not breaks: a torn final line (a crash while
writing), a chain that never closed (a crash, or still running), records after
the last checkpoint (not signed yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from audit.chain import GENESIS, ChainBreak, line_hash, parse_line, verify_statement
from audit.sink import segment_files
from gateway.crypto.sm2 import Sm2PublicKey

__all__ = ["ChainSummary", "Finding", "Item", "Report", "Torn", "verify_chains", "verify_directory"]

DIGEST = 32


@dataclass(frozen=True, slots=True)
class Finding:
    chain: str
    where: str
    """``file:line`` of the record (1-based), or ``witness``."""
    seq: int | None
    problem: str
    severity: Literal["break", "notice"] = "break"

    def __str__(self) -> str:
        at = f"seq {self.seq} " if self.seq is not None else ""
        return f"{self.severity.upper()} chain {self.chain} {at}({self.where}): {self.problem}"


@dataclass(slots=True)
class ChainSummary:
    chain: str
    files: int = 0
    records: int = 0
    checkpoints: int = 0
    last_signed: int = -1
    closed: bool = False
    broken: bool = False
    hashes: bytearray = field(default_factory=bytearray, repr=False)
    """The SM3 of each record, by seq (32 bytes each), for the witness and chain_start bindings."""

    def hash_at(self, seq: int) -> str | None:
        if 0 <= seq < len(self.hashes) // DIGEST:
            return self.hashes[seq * DIGEST:(seq + 1) * DIGEST].hex()
        return None


@dataclass(slots=True)
class Report:
    chains: dict[str, ChainSummary] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    witnessed: int = 0
    retired: dict[str, str] = field(default_factory=dict)
    """Chains a retention record archived or deleted (audit/retention.py): chain id -> action (``delete``
    once any record says so: an archived chain is deleted when its ``archive_years`` are over)."""
    archive_read: bool = False
    """The archive was read too: a chain archived by a retention record must be there."""

    @property
    def ok(self) -> bool:
        return not any(f.severity == "break" for f in self.findings)

    @property
    def breaks(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "break"]


@dataclass(frozen=True, slots=True)
class Torn:
    """Bytes after a file's last complete line (``final``: in the chain's last segment)."""

    where: str
    size: int
    final: bool


Item = tuple[str, bytes] | Torn
"""What a store yields per chain, in order: ``(where, line)`` for each stored line, or a torn tail."""


def _file_items(files: list[Path]) -> Iterator[Item]:
    for index, path in enumerate(files):
        data = path.read_bytes()
        complete, newline, rest = data.rpartition(b"\n")
        lines = (complete + newline).split(b"\n")[:-1] if newline else []
        for number, line in enumerate(lines, start=1):
            yield f"{path.name}:{number}", line
        if rest:
            yield Torn(f"{path.name}:{len(lines) + 1}", len(rest), index == len(files) - 1)


def verify_directory(directory: Path, public_keys: Mapping[str, Sm2PublicKey],
                     witness: Iterable[Mapping[str, Any]] | None = None, *, archive: Path | None = None) -> Report:
    """The file store: every chain's segment files (audit/sink.py), those moved to ``archive`` too."""
    found = segment_files(directory)
    if archive is not None:
        for chain, files in segment_files(archive).items():
            found[chain] = sorted([*found.get(chain, []), *files], key=lambda p: p.name)
    chains = {chain: (len(files), _file_items(files)) for chain, files in sorted(found.items())}
    return verify_chains(chains, public_keys, witness, archive_read=archive is not None)


def verify_chains(chains: Mapping[str, tuple[int, Iterable[Item]]], public_keys: Mapping[str, Sm2PublicKey],
                  witness: Iterable[Mapping[str, Any]] | None = None, *, archive_read: bool = False) -> Report:
    """Any store: ``{chain id: (how many files or parts, its items in order)}``, chains in start order;
    ``archive_read``: those retention archived are among them."""
    report = Report(archive_read=archive_read)
    bindings: list[tuple[str, str, Mapping[str, Any]]] = []  # (binding chain, where, what it bound)
    for chain_id, (parts, items) in chains.items():
        summary = report.chains[chain_id] = ChainSummary(chain_id, files=parts)
        _verify_chain(chain_id, items, public_keys, summary, report, bindings)
    for chain_id, where, bound in bindings:
        _check_binding(chain_id, where, bound, report)
    if witness is None:
        report.findings.append(Finding("-", "witness", None, "no witness given: a chain's newest records, or a "
                                       "whole chain, could be deleted unseen", "notice"))
    else:
        for statement in witness:
            report.witnessed += 1
            _check_witnessed(statement, public_keys, report)
    return report


def _verify_chain(chain_id: str, items: Iterable[Item], keys: Mapping[str, Sm2PublicKey], summary: ChainSummary,
                  report: Report, bindings: list[tuple[str, str, Mapping[str, Any]]]) -> None:
    expected, prev = 0, GENESIS
    last_where = ""

    def brk(where: str, seq: int | None, problem: str) -> None:
        report.findings.append(Finding(chain_id, where, seq, problem))
        summary.broken = True

    for item in items:
        if isinstance(item, Torn):
            if item.final:
                report.findings.append(Finding(chain_id, item.where, expected, f"a torn final line ({item.size} "
                                               f"bytes): the process stopped while writing it", "notice"))
                continue
            brk(item.where, expected, "an incomplete line inside the chain (the file was cut)")
            return
        where, line = item
        try:
            doc = parse_line(line)
        except ChainBreak as exc:
            brk(where, expected, f"{exc}: the record was altered or the file corrupted")
            return
        seq = doc["seq"]
        if doc["chain"] != chain_id:
            brk(where, seq, f"a record of chain {doc['chain']} in this chain's place (moved or inserted)")
            return
        if seq != expected:
            if seq > expected:
                brk(where, expected, f"records {expected}..{seq - 1} are missing (deleted); "
                                     f"the next one present is seq {seq}")
            else:
                brk(where, seq, f"seq {seq} where {expected} was due (a record inserted or reordered)")
            return
        if doc["prev"] != prev:
            if expected == 0:
                brk(where, 0, "the chain's first record does not start from the genesis hash")
            else:
                brk(last_where, expected - 1, f"its hash no longer matches what the next record ({where}) "
                                              f"names: it was edited (or a record was put between them)")
            return
        kind = doc.get("type")
        if kind == "checkpoint":
            statement = doc.get("checkpoint")
            try:
                if not isinstance(statement, Mapping):
                    raise ChainBreak("a checkpoint record without its statement")
                verify_statement(statement, keys)
                if statement["chain"] != chain_id or statement["seq"] != seq - 1 or statement["head"] != prev:
                    raise ChainBreak("the checkpoint does not sign the record before it")
            except ChainBreak as exc:
                brk(where, seq, str(exc))
                return
            summary.checkpoints += 1
            summary.last_signed = seq - 1
            summary.closed = bool(doc.get("closing"))
        else:
            summary.closed = False
        if kind == "retention":
            for retired in doc.get("chains") or ():
                if isinstance(retired, Mapping) and isinstance(retired.get("chain"), str) \
                        and report.retired.get(retired["chain"]) != "delete":
                    report.retired[retired["chain"]] = str(retired.get("action"))
        if kind == "chain_start":
            if seq != 0:
                brk(where, seq, "a chain_start record in the middle of a chain (inserted)")
                return
            for bound in doc.get("previous") or ():
                if isinstance(bound, Mapping):
                    bindings.append((chain_id, where, bound))
        digest = bytes.fromhex(line_hash(line))
        summary.hashes += digest
        prev, expected, last_where = digest.hex(), expected + 1, where
        summary.records += 1
    if not summary.closed:
        report.findings.append(Finding(chain_id, last_where or "-", expected - 1 if expected else None,
                                       "the chain did not close (a crash, or its process is still running)",
                                       "notice"))
    # Records after the last checkpoint record (which sits right after the record it signs).
    unsigned = summary.records - (summary.last_signed + 2 if summary.checkpoints else 0)
    if unsigned > 0 and not summary.closed:
        report.findings.append(Finding(chain_id, last_where, summary.last_signed + 1,
                                       f"{unsigned} records after the last checkpoint are not signed yet", "notice"))


def _check_binding(chain_id: str, where: str, bound: Mapping[str, Any], report: Report) -> None:
    other, seq, head = bound.get("chain"), bound.get("seq"), bound.get("head")
    if not isinstance(other, str) or not isinstance(seq, int) or seq < 0:
        return
    target = report.chains.get(other)
    if target is None:
        if not _retired(other, report, where):
            report.findings.append(Finding(other, where, seq, f"the chain is missing, though chain {chain_id}'s "
                                           f"start saw it reach seq {seq}"))
        return
    if target.broken:
        return  # already reported where it broke
    got = target.hash_at(seq)
    if got is None:
        report.findings.append(Finding(other, where, seq, f"the chain ends at seq {target.records - 1}, though "
                                       f"chain {chain_id}'s start saw it reach seq {seq} (records deleted)"))
    elif got != head:
        report.findings.append(Finding(other, where, seq, f"record seq {seq} is not the one chain {chain_id}'s "
                                       f"start bound (altered)"))


def _check_witnessed(statement: Mapping[str, Any], keys: Mapping[str, Sm2PublicKey], report: Report) -> None:
    chain = str(statement.get("chain"))
    try:
        verify_statement(statement, keys)
    except ChainBreak as exc:
        report.findings.append(Finding(chain, "witness", None, f"a witness statement that does not verify: {exc}"))
        return
    seq, head = int(statement["seq"]), str(statement["head"])
    target = report.chains.get(chain)
    if target is None:
        if not _retired(chain, report, "witness"):
            report.findings.append(Finding(chain, "witness", seq, f"the chain is missing from the store; the "
                                           f"witness holds its signed checkpoint at seq {seq}"))
        return
    if target.broken:
        return
    got = target.hash_at(seq)
    if got is None:
        report.findings.append(Finding(chain, "witness", seq, f"the chain ends at seq {target.records - 1}, but the "
                                       f"witness holds a signed checkpoint at seq {seq}: its newest records were "
                                       f"deleted or the file truncated"))
    elif got != head:
        report.findings.append(Finding(chain, "witness", seq, "the record the witness's checkpoint signed was "
                                       "replaced (the chain was rewritten from there on)"))


def _retired(chain: str, report: Report, where: str) -> bool:
    """Whether a retention record accounts for ``chain`` being absent (a notice, once, if so)."""
    action = report.retired.get(chain)
    if action is None or (action != "delete" and report.archive_read):
        return False  # not retired, or archived yet absent from the archive read
    if not any(f.chain == chain and f.severity == "notice" and "retention" in f.problem for f in report.findings):
        what = "deleted" if action == "delete" else "archived (give the archive to verify it)"
        report.findings.append(Finding(chain, where, None, f"{what} by a retention record", "notice"))
    return True
