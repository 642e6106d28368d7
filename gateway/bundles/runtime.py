"""The running policy: an atomic hot swap, and the watcher that keeps every process on the active version.

`ActivePolicy` is the `PolicyEngine` the pipeline's decide step calls. It
reads its current engine once per request and hands the request to it; an
activation replaces the engine in one assignment. A request in flight keeps
the engine it started with (the Rego evaluation is synchronous inside its
coroutine), so no request ever sees half of one bundle and half of another,
and its decision carries the version of the bundle that judged it.

`PolicyWatcher` makes each process serve the repository's active version:

* on start it loads the active version (the repository's choice wins over the
  ``[policy] bundle`` folder once anything has been activated);
* it subscribes to the state store channel ``policy:active`` (Redis pub/sub
  across processes) and re-reads the repository on each message: the message
  is only a hint, the version to serve always comes from the repository;
* it also polls the repository every ``policy_admin.poll_interval`` seconds,
  so a message missed while Redis was unreachable heals on the next poll.

The watcher also follows the repository's shadow session (docs/POLICIES.md,
"Shadow mode") on the same hints and polls: it loads the candidate and sets
`ActivePolicy.shadow` while a session runs, so each request is judged by the
active engine and, beside it, by the candidate (`gateway.bundles.shadow`).

Loading verifies the stored files against their SM3 ``files_digest`` and the
compiled policy against the stored ``digest``; a bundle that fails either, or
does not compile here, is not served: the process keeps its current engine,
logs the failure and retries on the next poll. Compiling happens on the event
loop (regorus objects cannot cross threads): ~30 ms for the broker bundle,
once per activation; the last few compiled versions are kept, so a rollback
to one of them swaps without compiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from gateway import logs
from gateway.bundles.files import BundleFiles, materialized
from gateway.bundles.repository import Activation, BundleRepository, ShadowSession
from gateway.errors import GatewayError
from gateway.policy.engine import Decision, PolicyEngine
from gateway.policy.rego import PolicyBundleError, RegoPolicy
from gateway.state.base import StateStore, StateUnavailable, Subscription

if TYPE_CHECKING:
    from gateway.bundles.shadow import ShadowRunner

log = logging.getLogger("portcullis.policy")

CHANNEL = "policy:active"
_COMPILED_KEPT = 4


class ActivePolicy:
    """A `PolicyEngine` whose bundle can be replaced while requests run."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.shadow: ShadowRunner | None = None
        """Set while a shadow session runs here: it judges each request's input with the candidate too."""
        self.version: str = engine.version
        self.generation = 0
        """The repository activation being served (0: the configured engine, nothing activated yet)."""
        self.loaded_at = time.time()
        self.trigger = "config"

    def evaluate(self, policy_input: Mapping[str, Any]) -> Coroutine[Any, Any, Decision]:
        # One read of self.engine: this request is judged by that engine from start to finish.
        shadow = self.shadow
        if shadow is None:
            return self.engine.evaluate(policy_input)
        return shadow.beside(self.engine, policy_input)

    @property
    def input_members(self) -> tuple[str, ...] | None:
        """What the serving engine reads; every member while a shadow candidate judges beside it."""
        if self.shadow is not None:
            return None
        members: tuple[str, ...] | None = getattr(self.engine, "input_members", None)
        return members

    def evaluate_now(self, policy_input: Mapping[str, Any]) -> Decision | None:
        """The decision without a coroutine when the engine judges synchronously (the embedded
        engines do) and no shadow session runs; None: call `evaluate`."""
        engine = self.engine  # one read: this request is judged by that engine
        sync = getattr(engine, "evaluate_sync", None)
        if self.shadow is not None or sync is None:
            return None
        result: Decision = sync(policy_input)
        return result

    def swap(self, engine: PolicyEngine, generation: int, trigger: str) -> None:
        self.engine = engine  # the swap: no await between these assignments
        self.version = engine.version
        self.generation = generation
        self.loaded_at = time.time()
        self.trigger = trigger

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "generation": self.generation, "loaded_at": self.loaded_at,
                "trigger": self.trigger}


class PolicyLoadError(Exception):
    """A stored bundle that this process refuses to serve."""


def compile_bundle(files: Mapping[str, str], *, expect_digest: str, expect_files_digest: str,
                   time_budget: float) -> RegoPolicy:
    """Compile stored files after checking them against their digests (on the calling thread)."""
    bundle = BundleFiles(files=files)
    if bundle.files_digest() != expect_files_digest:
        raise PolicyLoadError("the stored files do not match their SM3 files_digest")
    try:
        with materialized(bundle) as root:
            policy = RegoPolicy.from_directory(root, time_budget=time_budget)
    except (PolicyBundleError, GatewayError, OSError) as exc:
        raise PolicyLoadError(f"cannot compile: {getattr(exc, 'message', exc)}") from None
    if policy.digest != expect_digest:
        raise PolicyLoadError(f"the compiled policy's digest {policy.digest[:16]} is not the stored one")
    return policy


def _raise_if_cancelling() -> None:
    """A client library's timeout may swallow a cancellation (3.11 asyncio.timeout): stop anyway."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class PolicyWatcher:
    """Keeps `active` on the repository's active version (start, pub/sub hint, periodic poll)."""

    def __init__(self, repo: BundleRepository, state: StateStore, active: ActivePolicy, *, time_budget: float,
                 poll_interval: float, on_load: Callable[[Activation, str], None] | None = None,
                 shadow: ShadowRunner | None = None) -> None:
        self.repo = repo
        self.shadow = shadow
        self.state = state
        self.active = active
        self.time_budget = time_budget
        self.poll_interval = poll_interval
        self._on_load = on_load
        self._lock = asyncio.Lock()
        self._compiled: OrderedDict[str, PolicyEngine] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()
        self._sub: Subscription | None = None
        self.failures = 0

    async def start(self) -> None:
        """Load the active version now (errors propagate: the process must not start on a guess), then watch."""
        await self.sync("start", strict=True)
        await self.refresh_shadow("start")  # a candidate that cannot load here never stops the gateway
        self._tasks = [asyncio.create_task(self._listen(), name="policy-listen"),
                       asyncio.create_task(self._poll(), name="policy-poll")]

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.close()  # ends the listener's iteration even if a cancellation got lost
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def remember(self, engine: PolicyEngine) -> None:
        if isinstance(engine, RegoPolicy):
            self._compiled[engine.version] = engine
            self._compiled.move_to_end(engine.version)
            while len(self._compiled) > _COMPILED_KEPT:
                self._compiled.popitem(last=False)

    async def sync(self, trigger: str, *, strict: bool = False) -> bool:
        """Serve the repository's active version; True when this call changed what is served."""
        async with self._lock:
            activation = await self.repo.active()
            if activation is None or activation.generation == self.active.generation:
                return False
            engine = self._compiled.get(activation.version)
            if engine is None and activation.version == self.active.version:
                engine = self.active.engine  # e.g. the bootstrap of the bundle already running
            if engine is None:
                try:
                    engine = await self._compile(activation.version)
                except PolicyLoadError as exc:
                    self.failures += 1
                    logs.event(log, "policy_load_failed", logging.ERROR, version=activation.version,
                               generation=activation.generation, error=str(exc))
                    if strict:
                        raise
                    return False
            self.remember(self.active.engine)
            self.remember(engine)
            self.active.swap(engine, activation.generation, trigger)
        logs.event(log, "policy_loaded", version=activation.version, generation=activation.generation,
                   trigger=trigger)
        if self._on_load is not None:
            self._on_load(activation, trigger)
        return True

    async def _compile(self, version: str) -> RegoPolicy:
        bundle = await self.repo.get(version)
        return compile_bundle(bundle.files, expect_digest=bundle.info.digest,
                              expect_files_digest=bundle.info.files_digest, time_budget=self.time_budget)

    async def sync_shadow(self, trigger: str) -> bool:
        """Shadow the repository's running session, or stop shadowing; True when this call changed it."""
        runner = self.shadow
        if runner is None:
            return False
        async with self._lock:
            latest = await self.repo.shadow()
            want: ShadowSession | None = latest if latest is not None and latest.running else None
            current = runner.session
            if want is None:
                if current is None:
                    return False
                self.active.shadow = None
                runner.end()
                return True
            if current is not None and current.id == want.id:
                return False
            cached = self._compiled.get(want.version)
            try:
                engine = cached if isinstance(cached, RegoPolicy) else await self._compile(want.version)
            except PolicyLoadError as exc:
                self.failures += 1
                logs.event(log, "policy_shadow_load_failed", logging.ERROR, session=want.id, version=want.version,
                           error=str(exc))
                return False
            self.remember(engine)
            runner.begin(want, engine)
            self.active.shadow = runner
        logs.event(log, "policy_shadow_loaded", session=want.id, version=want.version, trigger=trigger)
        return True

    async def refresh(self, trigger: str) -> None:
        try:
            await self.sync(trigger)
        except GatewayError as exc:  # repository_unavailable: the next poll retries
            logs.event(log, "policy_sync_failed", logging.WARNING, trigger=trigger, error=exc.message)
        await self.refresh_shadow(trigger)

    async def refresh_shadow(self, trigger: str) -> None:
        try:
            await self.sync_shadow(trigger)
        except GatewayError as exc:
            logs.event(log, "policy_shadow_sync_failed", logging.WARNING, trigger=trigger, error=exc.message)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            _raise_if_cancelling()
            try:
                sub = await self.state.subscribe(CHANNEL)
            except StateUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(self.poll_interval, 0.1))
                continue
            delay = 0.1
            self._sub = sub
            try:
                self.subscribed.set()
                await self.refresh("subscribe")  # whatever was published while we were not listening
                async for message in sub:
                    if self._newer(message):
                        await self.refresh("message")
            except StateUnavailable as exc:
                logs.event(log, "policy_subscription_lost", logging.WARNING, error=exc.detail)
            finally:
                self.subscribed.clear()
                await sub.close()

    def _newer(self, message: bytes) -> bool:
        """Skip hints about what is already served (e.g. our own activation); re-read on anything else."""
        try:
            hint = orjson.loads(message)
            generation = hint.get("generation")
        except (orjson.JSONDecodeError, AttributeError):
            return True
        if "shadow" in hint:
            return True
        return not (isinstance(generation, int) and generation == self.active.generation)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            await self.refresh("poll")

    async def publish(self, activation: Activation) -> int | None:
        """Tell every process; None when the state store is unreachable (their polls will catch up)."""
        return await self._publish(orjson.dumps({"generation": activation.generation,
                                                 "version": activation.version}))

    async def publish_shadow(self, session: ShadowSession) -> int | None:
        """Tell every process that a shadow session started or stopped (a hint, like activations)."""
        return await self._publish(orjson.dumps({"shadow": session.id, "running": session.running}))

    async def _publish(self, message: bytes) -> int | None:
        try:
            return await self.state.publish(CHANNEL, message)
        except StateUnavailable as exc:
            logs.event(log, "policy_publish_failed", logging.WARNING, error=exc.detail)
            return None
