"""Shared gateway state (risk, MFA, replay caches, freezes, revocation).

Callers depend on :class:`StateStore` only and get a concrete store from
:func:`build_store`: memory for one process, Redis for a fleet. The Redis
backend is imported lazily so ``import gateway.state`` stays light.
"""

from __future__ import annotations

from gateway.config import StateConfig
from gateway.state.base import (
    Batch,
    Pending,
    StateStore,
    StateTypeError,
    StateUnavailable,
)
from gateway.state.memory import Keyspace, MemoryStore

__all__ = [
    "Batch",
    "Keyspace",
    "MemoryStore",
    "Pending",
    "StateStore",
    "StateTypeError",
    "StateUnavailable",
    "build_store",
]


def build_store(cfg: StateConfig) -> StateStore:
    """The store ``cfg.backend`` names, with ``cfg.prefix`` applied to every key."""
    if cfg.backend == "memory":
        return MemoryStore(cfg.prefix)
    if cfg.backend == "redis":
        from gateway.state.redis import RedisStore

        return RedisStore.from_config(cfg)
    raise ValueError(f"unknown state backend {cfg.backend!r}")
