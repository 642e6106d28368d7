"""The bundle repository: versions, proposals, approvals and the activation history.

Two implementations behind `BundleRepository`: `MemoryBundleRepository` (one
process, the demo) and `gateway.bundles.postgres.PostgresBundleRepository`
(durable, shared by every gateway process). Both apply the same rules, which
live here as pure functions (`check_proposal`, `check_approval`,
`check_rollback_target`) and run inside each repository's atomic section, so
a rule checked is a rule still true when the change is written.

Lifecycle::

    upload -> uploaded --validate--> validated | invalid
    validated --propose (officer A)--> proposal pending
    pending --approve (officer B != A, != uploader)--> activation (kind activate)
    previously active version --rollback proposal (A)--> approve (B != A) --> activation (kind rollback)
    previously active version --break-glass (one officer, alerts all)--> activation (kind break_glass)
    validated, not active version --start shadow (one officer)--> shadow session running --stop--> stopped

The active version is the one of the latest activation (its ``generation``
grows by one with each activation): every gateway process polls it.

Drafts (the console's editing in the browser) live here too, beside the
bundles they start from: they are shared by every officer and every gateway
process, durable like the bundles (an officer's unsaved work of an afternoon
must survive a restart, which the state store does not promise), and
PostgreSQL gives the compare-and-set a save needs. Each save names the
revision it was based on; a save based on an older revision stores nothing
(`save_draft` returns None), so two officers editing at once never overwrite
each other silently. A draft is not a bundle: checking it uploads its files as
one (``checked_version``, cleared by the next save).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from gateway.errors import (
    BUNDLE_ALREADY_ACTIVE,
    BUNDLE_EXISTS,
    BUNDLE_NEVER_ACTIVE,
    BUNDLE_NOT_FOUND,
    BUNDLE_NOT_VALIDATED,
    PROPOSAL_EXISTS,
    PROPOSAL_EXPIRED,
    PROPOSAL_NOT_FOUND,
    PROPOSAL_NOT_PENDING,
    SELF_APPROVAL,
    SHADOW_NOT_FOUND,
    SHADOW_NOT_RUNNING,
    SHADOW_RUNNING,
    GatewayError,
)

Status = Literal["uploaded", "validated", "invalid"]
ProposalKind = Literal["activate", "rollback"]
ActivationKind = Literal["bootstrap", "activate", "rollback", "break_glass"]


@dataclass(frozen=True)
class BundleInfo:
    version: str
    digest: str
    files_digest: str
    seq: int
    description: str
    uploaded_by: str
    uploaded_at: float
    status: Status
    file_count: int
    size: int
    validated_by: str | None = None
    validated_at: float | None = None
    report: Mapping[str, Any] | None = None
    ever_active: bool = False

    def public(self) -> dict[str, Any]:
        return {"version": self.version, "digest": self.digest, "files_digest": self.files_digest,
                "seq": self.seq, "description": self.description, "uploaded_by": self.uploaded_by,
                "uploaded_at": self.uploaded_at, "status": self.status, "files": self.file_count,
                "bytes": self.size, "validated_by": self.validated_by, "validated_at": self.validated_at,
                "ever_active": self.ever_active}


@dataclass(frozen=True)
class Bundle:
    info: BundleInfo
    files: Mapping[str, str]


@dataclass(frozen=True)
class NewBundle:
    version: str
    digest: str
    files_digest: str
    files: Mapping[str, str]
    description: str
    uploaded_by: str
    uploaded_at: float

    @property
    def size(self) -> int:
        return sum(len(p.encode()) + len(t.encode()) for p, t in self.files.items())


@dataclass(frozen=True)
class Proposal:
    id: int
    kind: ProposalKind
    version: str
    proposed_by: str
    proposed_at: float
    reason: str
    status: Literal["pending", "approved", "expired"]
    decided_by: str | None = None
    decided_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "version": self.version, "proposed_by": self.proposed_by,
                "proposed_at": self.proposed_at, "reason": self.reason, "status": self.status,
                "approved_by": self.decided_by, "approved_at": self.decided_at}


@dataclass(frozen=True)
class Activation:
    generation: int
    version: str
    kind: ActivationKind
    activated_by: str
    activated_at: float
    proposal_id: int | None = None
    approved_by: str | None = None
    reason: str = ""

    def public(self) -> dict[str, Any]:
        return {"generation": self.generation, "version": self.version, "kind": self.kind,
                "activated_by": self.activated_by, "activated_at": self.activated_at,
                "proposal": self.proposal_id, "approved_by": self.approved_by, "reason": self.reason}


@dataclass(frozen=True)
class ShadowSession:
    """A candidate bundle judged beside the active one (docs/POLICIES.md, "Shadow mode")."""

    id: int
    version: str
    sample_rate: float
    started_by: str
    started_at: float
    reason: str = ""
    stopped_by: str | None = None
    stopped_at: float | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "sample_rate": self.sample_rate,
                "started_by": self.started_by, "started_at": self.started_at, "reason": self.reason,
                "stopped_by": self.stopped_by, "stopped_at": self.stopped_at, "running": self.running}


@dataclass(frozen=True)
class DraftInfo:
    id: int
    base_version: str | None
    revision: int
    file_count: int
    size: int
    created_by: str
    created_at: float
    updated_by: str
    updated_at: float
    checked_version: str | None = None
    """The bundle uploaded from this revision by "check" (None until checked, and after each save)."""


@dataclass(frozen=True)
class Draft:
    info: DraftInfo
    files: Mapping[str, str]


def files_size(files: Mapping[str, str]) -> int:
    """Bytes of a bundle's paths and texts (what ``policy_admin.max_bundle_bytes`` bounds)."""
    return sum(len(p.encode()) + len(t.encode()) for p, t in files.items())


class BundleRepository(Protocol):
    """Storage of bundles and of the four-eyes workflow; every method is atomic."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, bundle: NewBundle) -> BundleInfo:
        """Store a new upload (status ``uploaded``); 409 bundle_exists if the version is known."""
        ...

    async def info(self, version: str) -> BundleInfo:
        """404 bundle_not_found when unknown."""
        ...

    async def get(self, version: str) -> Bundle:
        """The bundle with its files; 404 bundle_not_found when unknown."""
        ...

    async def bundles(self, limit: int = 100) -> list[BundleInfo]:
        """Newest first."""
        ...

    async def record_validation(self, version: str, *, ok: bool, report: Mapping[str, Any], by: str,
                                at: float) -> BundleInfo: ...

    async def propose(self, kind: ProposalKind, version: str, *, by: str, at: float, reason: str,
                      ttl: float) -> Proposal: ...

    async def proposal(self, proposal_id: int) -> Proposal:
        """404 proposal_not_found when unknown."""
        ...

    async def proposals(self, limit: int = 100) -> list[Proposal]:
        """Newest first."""
        ...

    async def approve(self, proposal_id: int, *, by: str, at: float, ttl: float) -> Activation:
        """Approve a pending proposal and activate its version, or raise (see `check_approval`)."""
        ...

    async def break_glass(self, version: str, *, by: str, at: float, reason: str) -> Activation:
        """Activate a previously active version at once (one officer; the caller alerts everyone)."""
        ...

    async def bootstrap(self, bundle: NewBundle, *, at: float) -> Activation | None:
        """With no activation yet: store `bundle` (validated) and activate it. Otherwise nothing (None)."""
        ...

    async def active(self) -> Activation | None:
        """The latest activation (what every process should serve), None before the first."""
        ...

    async def history(self, limit: int = 20) -> list[Activation]:
        """Activations, newest first."""
        ...

    async def start_shadow(self, version: str, *, by: str, at: float, sample_rate: float,
                           reason: str) -> ShadowSession:
        """Start shadowing a validated, not active version (see `check_shadow`); one session at a time."""
        ...

    async def stop_shadow(self, *, by: str, at: float) -> ShadowSession:
        """Stop the running session; 409 shadow_not_running when there is none."""
        ...

    async def shadow(self, session_id: int | None = None) -> ShadowSession | None:
        """One session (404 shadow_not_found when unknown) or, without an id, the latest one (None: never)."""
        ...

    async def create_draft(self, base_version: str | None, files: Mapping[str, str], *, by: str,
                           at: float) -> DraftInfo:
        """A new draft at revision 1 (the caller checks the files against the bundle limits)."""
        ...

    async def draft(self, draft_id: int) -> Draft | None:
        """The draft with its files, None when unknown."""
        ...

    async def drafts(self, limit: int = 100) -> list[DraftInfo]:
        """Most recently changed first."""
        ...

    async def save_draft(self, draft_id: int, files: Mapping[str, str], *, revision: int, by: str,
                         at: float) -> DraftInfo | None:
        """Compare-and-set: replace the files if the draft is still at `revision` (it moves to revision + 1
        and loses its checked version); None, storing nothing, when it is not (or the draft is unknown)."""
        ...

    async def record_draft_check(self, draft_id: int, *, revision: int, version: str) -> DraftInfo | None:
        """Remember `version` as the check of `revision`; None when the draft moved on meanwhile."""
        ...

    async def discard_draft(self, draft_id: int, *, revision: int) -> bool:
        """Compare-and-set: remove the draft if it is still at `revision` (nobody saved meanwhile); False,
        removing nothing, when it is not (or the draft is unknown). Its checked versions stay bundles."""
        ...


# -- the rules, shared by every implementation ---------------------------------------


def is_expired(proposal: Proposal, now: float, ttl: float) -> bool:
    return proposal.status == "pending" and now - proposal.proposed_at > ttl


def check_proposal(kind: ProposalKind, info: BundleInfo, active: Activation | None,
                   pending: Proposal | None) -> None:
    """May `info` be proposed for `kind`?"""
    if active is not None and active.version == info.version:
        raise GatewayError(BUNDLE_ALREADY_ACTIVE, f"version {info.version} is already active")
    if kind == "activate" and info.status != "validated":
        raise GatewayError(BUNDLE_NOT_VALIDATED, f"version {info.version} is {info.status}: validate it first")
    if kind == "rollback":
        check_rollback_target(info, active)
    if pending is not None:
        raise GatewayError(PROPOSAL_EXISTS, f"proposal {pending.id} for version {info.version} is pending",
                           extra={"proposal": pending.id})


def check_rollback_target(info: BundleInfo, active: Activation | None) -> None:
    if active is not None and active.version == info.version:
        raise GatewayError(BUNDLE_ALREADY_ACTIVE, f"version {info.version} is already active")
    if not info.ever_active:
        raise GatewayError(BUNDLE_NEVER_ACTIVE, f"version {info.version} was never active: propose it instead")


def check_approval(proposal: Proposal, info: BundleInfo, active: Activation | None, *, by: str,
                   now: float, ttl: float) -> None:
    """Four eyes: the approver is neither the proposer nor (for new bundles) the uploader."""
    if proposal.status != "pending":
        raise GatewayError(PROPOSAL_NOT_PENDING, f"proposal {proposal.id} is {proposal.status}")
    if by == proposal.proposed_by:
        raise GatewayError(SELF_APPROVAL, f"{by} proposed this change: another compliance officer must approve it")
    if proposal.kind == "activate" and by == info.uploaded_by:
        raise GatewayError(SELF_APPROVAL, f"{by} uploaded this bundle: another compliance officer must approve it")
    if is_expired(proposal, now, ttl):
        raise GatewayError(PROPOSAL_EXPIRED, f"proposal {proposal.id} is older than {ttl:g} s: propose again")
    if active is not None and active.version == proposal.version:
        raise GatewayError(BUNDLE_ALREADY_ACTIVE, f"version {proposal.version} is already active")
    if proposal.kind == "activate" and info.status != "validated":
        raise GatewayError(BUNDLE_NOT_VALIDATED, f"version {info.version} is {info.status}")
    if proposal.kind == "rollback":
        check_rollback_target(info, active)


def check_shadow(info: BundleInfo, active: Activation | None, latest: ShadowSession | None) -> None:
    """May `info` be shadowed? Only a validated bundle (an invalid one never runs on live traffic)."""
    if info.status != "validated":
        raise GatewayError(BUNDLE_NOT_VALIDATED, f"version {info.version} is {info.status}: only a validated "
                                                 "bundle can be shadowed")
    if active is not None and active.version == info.version:
        raise GatewayError(BUNDLE_ALREADY_ACTIVE, f"version {info.version} is the active version: nothing to compare")
    if latest is not None and latest.running:
        raise GatewayError(SHADOW_RUNNING, f"shadow session {latest.id} (version {latest.version}) is running",
                           extra={"session": latest.id})


# -- in memory -----------------------------------------------------------------------


class MemoryBundleRepository:
    """A `BundleRepository` in this process's memory: for one process and the demo.

    No method awaits in the middle, so each is atomic on the event loop.
    """

    def __init__(self) -> None:
        self._bundles: dict[str, Bundle] = {}
        self._proposals: dict[int, Proposal] = {}
        self._activations: list[Activation] = []
        self._shadows: list[ShadowSession] = []
        self._drafts: dict[int, Draft] = {}
        self._draft_ids = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _info(self, version: str) -> BundleInfo:
        bundle = self._bundles.get(version)
        if bundle is None:
            raise GatewayError(BUNDLE_NOT_FOUND, f"no bundle has version {version}")
        return bundle.info

    def _active(self) -> Activation | None:
        return self._activations[-1] if self._activations else None

    def _store(self, new: NewBundle, status: Status) -> BundleInfo:
        info = BundleInfo(version=new.version, digest=new.digest, files_digest=new.files_digest,
                          seq=len(self._bundles) + 1, description=new.description, uploaded_by=new.uploaded_by,
                          uploaded_at=new.uploaded_at, status=status, file_count=len(new.files), size=new.size)
        self._bundles[new.version] = Bundle(info, dict(new.files))
        return info

    async def add(self, bundle: NewBundle) -> BundleInfo:
        if bundle.version in self._bundles:
            raise GatewayError(BUNDLE_EXISTS, f"version {bundle.version} is already stored",
                               extra={"version": bundle.version})
        return self._store(bundle, "uploaded")

    async def info(self, version: str) -> BundleInfo:
        return self._info(version)

    async def get(self, version: str) -> Bundle:
        self._info(version)
        return self._bundles[version]

    async def bundles(self, limit: int = 100) -> list[BundleInfo]:
        return sorted((b.info for b in self._bundles.values()), key=lambda i: -i.seq)[:limit]

    async def record_validation(self, version: str, *, ok: bool, report: Mapping[str, Any], by: str,
                                at: float) -> BundleInfo:
        info = replace(self._info(version), status="validated" if ok else "invalid", validated_by=by,
                       validated_at=at, report=dict(report))
        self._bundles[version] = Bundle(info, self._bundles[version].files)
        return info

    def _pending_for(self, version: str, now: float, ttl: float) -> Proposal | None:
        for p in self._proposals.values():
            if p.version == version and p.status == "pending":
                if is_expired(p, now, ttl):
                    self._proposals[p.id] = replace(p, status="expired")
                    continue
                return p
        return None

    async def propose(self, kind: ProposalKind, version: str, *, by: str, at: float, reason: str,
                      ttl: float) -> Proposal:
        info = self._info(version)
        check_proposal(kind, info, self._active(), self._pending_for(version, at, ttl))
        proposal = Proposal(id=len(self._proposals) + 1, kind=kind, version=version, proposed_by=by,
                            proposed_at=at, reason=reason, status="pending")
        self._proposals[proposal.id] = proposal
        return proposal

    async def proposal(self, proposal_id: int) -> Proposal:
        p = self._proposals.get(proposal_id)
        if p is None:
            raise GatewayError(PROPOSAL_NOT_FOUND, f"no proposal has id {proposal_id}")
        return p

    async def proposals(self, limit: int = 100) -> list[Proposal]:
        return sorted(self._proposals.values(), key=lambda p: -p.id)[:limit]

    def _activate(self, version: str, kind: ActivationKind, by: str, at: float, *, proposal_id: int | None = None,
                  approved_by: str | None = None, reason: str = "") -> Activation:
        activation = Activation(generation=len(self._activations) + 1, version=version, kind=kind,
                                activated_by=by, activated_at=at, proposal_id=proposal_id,
                                approved_by=approved_by, reason=reason)
        self._activations.append(activation)
        bundle = self._bundles[version]
        self._bundles[version] = Bundle(replace(bundle.info, ever_active=True), bundle.files)
        return activation

    async def approve(self, proposal_id: int, *, by: str, at: float, ttl: float) -> Activation:
        p = await self.proposal(proposal_id)
        check_approval(p, self._info(p.version), self._active(), by=by, now=at, ttl=ttl)
        self._proposals[p.id] = replace(p, status="approved", decided_by=by, decided_at=at)
        return self._activate(p.version, p.kind, p.proposed_by, at, proposal_id=p.id, approved_by=by,
                              reason=p.reason)

    async def break_glass(self, version: str, *, by: str, at: float, reason: str) -> Activation:
        check_rollback_target(self._info(version), self._active())
        return self._activate(version, "break_glass", by, at, reason=reason)

    async def bootstrap(self, bundle: NewBundle, *, at: float) -> Activation | None:
        if self._activations:
            return None
        if bundle.version not in self._bundles:
            self._store(bundle, "validated")
        return self._activate(bundle.version, "bootstrap", bundle.uploaded_by, at)

    async def active(self) -> Activation | None:
        return self._active()

    async def history(self, limit: int = 20) -> list[Activation]:
        return list(reversed(self._activations))[:limit]

    async def start_shadow(self, version: str, *, by: str, at: float, sample_rate: float,
                           reason: str) -> ShadowSession:
        latest = self._shadows[-1] if self._shadows else None
        check_shadow(self._info(version), self._active(), latest)
        session = ShadowSession(id=len(self._shadows) + 1, version=version, sample_rate=sample_rate,
                                started_by=by, started_at=at, reason=reason)
        self._shadows.append(session)
        return session

    async def stop_shadow(self, *, by: str, at: float) -> ShadowSession:
        if not self._shadows or not self._shadows[-1].running:
            raise GatewayError(SHADOW_NOT_RUNNING)
        self._shadows[-1] = replace(self._shadows[-1], stopped_by=by, stopped_at=at)
        return self._shadows[-1]

    async def shadow(self, session_id: int | None = None) -> ShadowSession | None:
        if session_id is None:
            return self._shadows[-1] if self._shadows else None
        if not 1 <= session_id <= len(self._shadows):
            raise GatewayError(SHADOW_NOT_FOUND, f"no shadow session has id {session_id}")
        return self._shadows[session_id - 1]

    async def create_draft(self, base_version: str | None, files: Mapping[str, str], *, by: str,
                           at: float) -> DraftInfo:
        if base_version is not None:
            self._info(base_version)
        self._draft_ids += 1  # never reused, though drafts are discarded
        info = DraftInfo(id=self._draft_ids, base_version=base_version, revision=1, file_count=len(files),
                         size=files_size(files), created_by=by, created_at=at, updated_by=by, updated_at=at)
        self._drafts[info.id] = Draft(info, dict(files))
        return info

    async def draft(self, draft_id: int) -> Draft | None:
        return self._drafts.get(draft_id)

    async def drafts(self, limit: int = 100) -> list[DraftInfo]:
        return sorted((d.info for d in self._drafts.values()), key=lambda i: (-i.updated_at, -i.id))[:limit]

    async def save_draft(self, draft_id: int, files: Mapping[str, str], *, revision: int, by: str,
                         at: float) -> DraftInfo | None:
        current = self._drafts.get(draft_id)
        if current is None or current.info.revision != revision:
            return None
        info = replace(current.info, revision=revision + 1, file_count=len(files), size=files_size(files),
                       updated_by=by, updated_at=at, checked_version=None)
        self._drafts[draft_id] = Draft(info, dict(files))
        return info

    async def record_draft_check(self, draft_id: int, *, revision: int, version: str) -> DraftInfo | None:
        current = self._drafts.get(draft_id)
        if current is None or current.info.revision != revision:
            return None
        info = replace(current.info, checked_version=version)
        self._drafts[draft_id] = Draft(info, current.files)
        return info

    async def discard_draft(self, draft_id: int, *, revision: int) -> bool:
        current = self._drafts.get(draft_id)
        if current is None or current.info.revision != revision:
            return False
        del self._drafts[draft_id]
        return True
