"""The four-eyes policy workflow: upload, validate, propose, approve, roll back, break glass.

The admin handlers (gateway/admin_policy.py) authenticate the officer and
call these methods with the officer's subject. Every step that changes
anything is audited write-ahead: its record is durable before the change
(else 503 ``audit_unavailable`` and no change), and its outcome (``ok`` or the
error code) follows as a queued record. A request refused before any change
(bad upload, self-approval, ...) is audited too, as a refusal.

Audit ``action`` values: ``policy_upload``, ``policy_validate``,
``policy_propose``, ``policy_rollback`` (a rollback proposal),
``policy_approve``, ``policy_activate`` (the switch itself, with its kind:
activate, rollback, break_glass, bootstrap), ``policy_break_glass``,
``policy_shadow_start`` and ``policy_shadow_stop`` (shadow mode), and per
process ``policy_loaded`` (this process now serves a version).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from audit.sink import AuditSink, AuditWriteError
from gateway.bundles.files import BundleFiles, identity, invalid, parse_upload, problem, read_directory
from gateway.bundles.repository import (
    Activation,
    Bundle,
    BundleInfo,
    BundleRepository,
    MemoryBundleRepository,
    NewBundle,
    Proposal,
    ShadowSession,
    check_approval,
    check_rollback_target,
    check_shadow,
)
from gateway.bundles.runtime import ActivePolicy, PolicyWatcher
from gateway.bundles.shadow import ShadowRunner
from gateway.bundles.validate import Validation, validate
from gateway.config import Config, PolicyAdminConfig
from gateway.errors import (
    AUDIT_UNAVAILABLE,
    BAD_REQUEST,
    BREAK_GLASS_UNAVAILABLE,
    NOTIFY_UNAVAILABLE,
    SHADOW_NOT_FOUND,
    SHADOW_NOT_RUNNING,
    ConfigError,
    GatewayError,
)
from gateway.metrics import Metrics
from gateway.notify import Notifier
from gateway.policy.rego import RegoPolicy
from gateway.state.base import StateStore

T = TypeVar("T")
BOOTSTRAP_UPLOADER = "config"
MAX_REASON = 1000


def build_repository(cfg: PolicyAdminConfig) -> BundleRepository:
    if cfg.repository == "postgres":
        from gateway.bundles.postgres import PostgresBundleRepository

        assert cfg.postgres_dsn is not None  # the config loader requires it
        return PostgresBundleRepository(cfg.postgres_dsn, cfg.postgres_schema, timeout=cfg.postgres_timeout)
    return MemoryBundleRepository()


def reason_text(value: Any, *, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > MAX_REASON or (required and not value.strip()):
        need = "a non-empty string" if required else "a string"
        raise GatewayError(BAD_REQUEST, f"reason must be {need} of at most {MAX_REASON} characters")
    return value


class PolicyAdmin:
    """The workflow over a `BundleRepository`, the running `ActivePolicy` and its `PolicyWatcher`."""

    def __init__(self, config: Config, *, policy: ActivePolicy, state: StateStore, notifier: Notifier,
                 audit: AuditSink, repository: BundleRepository | None = None,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.cfg = config.policy_admin
        self._config = config
        self.repo = repository or build_repository(self.cfg)
        self.active = policy
        self.bound = config.policy.time_budget_ms / 1000
        self._notifier = notifier
        self._audit = audit
        self._audit_timeout = config.audit.write_timeout
        self._clock = clock
        self._validating = asyncio.Semaphore(1)  # one validator child (~0.5 s of CPU) at a time per process
        self.shadow = ShadowRunner(self.cfg, state, time_budget=self.bound, metrics=metrics, clock=clock)
        self.watcher = PolicyWatcher(self.repo, state, policy, time_budget=self.bound,
                                     poll_interval=self.cfg.poll_interval, on_load=self._loaded,
                                     shadow=self.shadow)

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.repo.start()
            await self._bootstrap()
            await self.watcher.start()
            self.shadow.start()
        except GatewayError as exc:
            await self.repo.close()
            raise ConfigError(f"policy_admin.repository: {exc.message}") from None
        except Exception as exc:  # PolicyLoadError: the active version cannot be served here
            await self.repo.close()
            raise ConfigError(f"policy_admin: cannot serve the active policy version: {exc}") from None

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.shadow.stop()  # the last counts reach the state store
        await self.repo.close()

    async def _bootstrap(self) -> None:
        """An empty repository records the configured bundle as the first active version."""
        engine = self.active.engine
        folder = self._config.policy.bundle
        if not isinstance(engine, RegoPolicy) or folder is None or await self.repo.active() is not None:
            return
        files = read_directory(folder)
        ident = identity(files)
        if ident.version != engine.version:
            raise ConfigError(f"policy.bundle: {folder} changed while starting (version {ident.version}, "
                              f"compiled {engine.version})")
        at = self._clock()
        new = NewBundle(version=ident.version, digest=ident.digest, files_digest=ident.files_digest,
                        files=files.files, description=files.description, uploaded_by=BOOTSTRAP_UPLOADER,
                        uploaded_at=at)
        activation = await self.repo.bootstrap(new, at=at)
        if activation is not None:
            self._after({"action": "policy_activate", "sub": BOOTSTRAP_UPLOADER, "kind": "bootstrap",
                         "version": activation.version, "generation": activation.generation, "outcome": "ok"})

    def _loaded(self, activation: Activation, trigger: str) -> None:
        self._after({"action": "policy_loaded", "sub": None, "version": activation.version,
                     "generation": activation.generation, "trigger": trigger})

    # -- audit ------------------------------------------------------------------

    def _record(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "admin", "time": self._clock(), **fields}

    async def _ahead(self, fields: Mapping[str, Any]) -> None:
        """Write-ahead: durable before the change, or 503 audit_unavailable and no change."""
        try:
            await asyncio.wait_for(asyncio.shield(self._audit.submit(self._record(fields))), self._audit_timeout)
        except (AuditWriteError, TimeoutError):
            raise GatewayError(AUDIT_UNAVAILABLE) from None

    def _after(self, fields: Mapping[str, Any]) -> None:
        self._audit.enqueue(self._record(fields))

    @contextmanager
    def _refusals(self, action: str, sub: str, **fields: Any) -> Iterator[None]:
        """Audit a request refused before any change (queued: nothing changed, nothing to write ahead)."""
        try:
            yield
        except GatewayError as exc:
            self._after({"action": action, "sub": sub, **fields, "outcome": exc.code, "refused": True})
            raise

    async def _step(self, action: str, sub: str, fields: Mapping[str, Any],
                    work: Callable[[], Awaitable[T]]) -> T:
        await self._ahead({"action": action, "sub": sub, **fields})
        try:
            result = await work()
        except GatewayError as exc:
            self._after({"action": action, "sub": sub, **fields, "outcome": exc.code})
            raise
        self._after({"action": action, "sub": sub, **fields, "outcome": "ok"})
        return result

    # -- reads --------------------------------------------------------------------

    async def bundles(self) -> list[BundleInfo]:
        return await self.repo.bundles()

    async def bundle(self, version: str) -> Bundle:
        return await self.repo.get(version)

    async def proposals(self) -> list[Proposal]:
        return await self.repo.proposals()

    async def history(self) -> list[Activation]:
        return await self.repo.history()

    # -- the workflow ---------------------------------------------------------------

    async def upload(self, sub: str, body: Any) -> BundleInfo:
        with self._refusals("policy_upload", sub):
            files = parse_upload(body, max_files=self.cfg.max_files)
            ident = identity(files)
        new = NewBundle(version=ident.version, digest=ident.digest, files_digest=ident.files_digest,
                        files=files.files, description=files.description, uploaded_by=sub,
                        uploaded_at=self._clock())
        fields = {"version": ident.version, "digest": ident.digest, "files_digest": ident.files_digest,
                  "files": len(files.files), "bytes": files.size}
        return await self._step("policy_upload", sub, fields, lambda: self.repo.add(new))

    async def validate(self, sub: str, version: str) -> tuple[BundleInfo, Validation]:
        with self._refusals("policy_validate", sub, version=version):
            bundle = await self.repo.get(version)
        await self._ahead({"action": "policy_validate", "sub": sub, "version": version})
        try:
            async with self._validating:
                result = await validate(BundleFiles(files=bundle.files), bound=self.bound,
                                          timeout=self.cfg.validation_timeout)
            if result.ok and result.version != version:
                result = Validation(ok=False, version=result.version, summary=result.summary, problems=[
                    problem("compile", f"the compiled version {result.version} is not the stored {version}")])
            info = await self.repo.record_validation(version, ok=result.ok, report=result.report(), by=sub,
                                                     at=self._clock())
        except GatewayError as exc:
            self._after({"action": "policy_validate", "sub": sub, "version": version, "outcome": exc.code})
            raise
        outcome = "ok" if result.ok else "bundle_invalid"
        self._after({"action": "policy_validate", "sub": sub, "version": version, "outcome": outcome,
                     "problems": len(result.problems)})
        if not result.ok:
            raise invalid(result.problems, version=version, summary=result.summary)
        return info, result

    async def propose(self, sub: str, version: str, reason: str) -> Proposal:
        return await self._step("policy_propose", sub, {"version": version, "kind": "activate", "reason": reason},
                                lambda: self.repo.propose("activate", version, by=sub, at=self._clock(),
                                                          reason=reason, ttl=self.cfg.proposal_ttl))

    async def propose_rollback(self, sub: str, version: str, reason: str) -> Proposal:
        return await self._step("policy_rollback", sub, {"version": version, "kind": "rollback", "reason": reason},
                                lambda: self.repo.propose("rollback", version, by=sub, at=self._clock(),
                                                          reason=reason, ttl=self.cfg.proposal_ttl))

    async def approve(self, sub: str, proposal_id: int) -> tuple[Activation, int | None]:
        with self._refusals("policy_approve", sub, proposal=proposal_id):
            p = await self.repo.proposal(proposal_id)
            # Checked here for a clean refusal; the repository checks again in the same transaction as the change.
            check_approval(p, await self.repo.info(p.version), await self.repo.active(), by=sub,
                           now=self._clock(), ttl=self.cfg.proposal_ttl)
        fields = {"proposal": p.id, "version": p.version, "kind": p.kind, "proposed_by": p.proposed_by}
        await self._ahead({"action": "policy_approve", "sub": sub, **fields})
        activation = await self._step(
            "policy_activate", sub, fields,
            lambda: self.repo.approve(proposal_id, by=sub, at=self._clock(), ttl=self.cfg.proposal_ttl))
        return activation, await self._apply(activation)

    async def break_glass(self, sub: str, version: str, reason: str) -> tuple[Activation, int | None]:
        officers = self.cfg.officers
        with self._refusals("policy_break_glass", sub, version=version):
            if not officers:
                raise GatewayError(BREAK_GLASS_UNAVAILABLE)
            check_rollback_target(await self.repo.info(version), await self.repo.active())
        fields = {"version": version, "kind": "break_glass", "reason": reason, "alerted": list(officers)}
        await self._ahead({"action": "policy_break_glass", "sub": sub, **fields})
        try:
            await self._alert(sub, version, reason)
        except Exception as exc:
            self._after({"action": "policy_break_glass", "sub": sub, **fields, "outcome": NOTIFY_UNAVAILABLE.code})
            raise GatewayError(NOTIFY_UNAVAILABLE, f"no rollback: alerting the compliance officers failed "
                                                   f"({type(exc).__name__})") from exc
        activation = await self._step(
            "policy_activate", sub, fields,
            lambda: self.repo.break_glass(version, by=sub, at=self._clock(), reason=reason))
        return activation, await self._apply(activation)

    async def _alert(self, sub: str, version: str, reason: str) -> None:
        """Every compliance officer hears of a break-glass rollback before it happens."""
        current = self.active.version
        message = (f"Break-glass policy rollback by {sub}: version {current} -> {version}, without a second "
                   f"approval. Reason: {reason}")
        fields = {"by": sub, "from_version": current, "to_version": version, "reason": reason}
        await asyncio.gather(*(self._notifier.notify("policy_break_glass", officer, message, fields)
                               for officer in self.cfg.officers))

    async def _apply(self, activation: Activation) -> int | None:
        """Serve it here at once, then tell the other processes (their polls catch up if this fails)."""
        await self.watcher.refresh("local")
        return await self.watcher.publish(activation)

    # -- shadow mode ------------------------------------------------------------------

    async def start_shadow(self, sub: str, version: str, sample_rate: float | None,
                           reason: str) -> tuple[ShadowSession, int | None]:
        """Judge live traffic with `version` beside the active bundle (no second officer: it decides nothing)."""
        rate = self.cfg.shadow_sample_rate if sample_rate is None else sample_rate
        with self._refusals("policy_shadow_start", sub, version=version):
            check_shadow(await self.repo.info(version), await self.repo.active(), await self.repo.shadow())
        fields = {"version": version, "sample_rate": rate, "reason": reason}
        session = await self._step("policy_shadow_start", sub, fields, lambda: self.repo.start_shadow(
            version, by=sub, at=self._clock(), sample_rate=rate, reason=reason))
        await self.watcher.refresh_shadow("local")
        return session, await self.watcher.publish_shadow(session)

    async def stop_shadow(self, sub: str, reason: str) -> tuple[ShadowSession, int | None]:
        with self._refusals("policy_shadow_stop", sub):
            latest = await self.repo.shadow()
            if latest is None or not latest.running:
                raise GatewayError(SHADOW_NOT_RUNNING)
        fields = {"session": latest.id, "version": latest.version, "reason": reason}
        session = await self._step("policy_shadow_stop", sub, fields,
                                   lambda: self.repo.stop_shadow(by=sub, at=self._clock()))
        await self.watcher.refresh_shadow("local")
        return session, await self.watcher.publish_shadow(session)

    async def shadow_report(self, session_id: int | None = None) -> dict[str, Any]:
        """The diff report of a session (the latest without an id), aggregated over every process."""
        session = await self.repo.shadow(session_id)
        if session is None:
            raise GatewayError(SHADOW_NOT_FOUND, "no shadow session has been started")
        return await self.shadow.report(session, active_version=self.active.version)
