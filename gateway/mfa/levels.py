"""Assurance levels (``acr`` values) and the ways of reaching each.

The policy asks for a level; the gateway decides which methods reach it.
Each level lists its *ways*: a way is a set of methods that, all completed in
one challenge, reach that level. A higher level satisfies every lower one.

Defaults (docs/STEP_UP.md "Levels")::

    urn:portcullis:acr:pwd    the sign-in alone (the identity provider's password)
    urn:portcullis:acr:mfa    totp | sms | face
    urn:portcullis:acr:face   face | totp + sms

The strongest level can be reached with a face check or with two one-time
codes from different channels, so face is never the only way in for a
customer who has other factors (PIPL art. 28-29, RULES.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

METHODS = ("totp", "sms", "face")
"""Every step-up method the gateway can run."""

AMR = {"totp": "otp", "sms": "sms", "face": "face"}
"""RFC 8176 authentication method reference of each method."""

DEFAULT_LEVELS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("urn:portcullis:acr:pwd", ()),
    ("urn:portcullis:acr:mfa", (("totp",), ("sms",), ("face",))),
    ("urn:portcullis:acr:face", (("face",), ("totp", "sms"))),
)


@dataclass(frozen=True, slots=True)
class Ladder:
    """The ordered levels (weakest first) and the ways to each."""

    levels: tuple[str, ...]
    ways: Mapping[str, tuple[frozenset[str], ...]]

    @classmethod
    def build(cls, levels: Iterable[tuple[str, Iterable[Iterable[str]]]]) -> Ladder:
        names: list[str] = []
        ways: dict[str, tuple[frozenset[str], ...]] = {}
        for acr, level_ways in levels:
            if acr in ways:
                raise ValueError(f"acr {acr!r} is listed twice")
            sets = tuple(frozenset(w) for w in level_ways)
            for w in sets:
                if not w:
                    raise ValueError(f"acr {acr!r}: a way must name at least one method")
                unknown = w - set(METHODS)
                if unknown:
                    raise ValueError(f"acr {acr!r}: unknown method(s) {', '.join(sorted(unknown))}")
            names.append(acr)
            ways[acr] = sets
        if not names:
            raise ValueError("at least one acr level is needed")
        return cls(tuple(names), ways)

    def rank(self, acr: str | None) -> int:
        """The level's index (higher is stronger); -1 for None or an unknown value."""
        try:
            return self.levels.index(acr) if acr is not None else -1
        except ValueError:
            return -1

    def ways_to(self, acr: str) -> list[frozenset[str]]:
        """Every way that reaches ``acr`` or a stronger level (strongest levels last)."""
        rank = self.rank(acr)
        if rank < 0:
            raise KeyError(acr)
        return [w for level in self.levels[rank:] for w in self.ways[level]]

    def reached(self, done: Collection[str]) -> str | None:
        """The strongest level whose ways include one wholly within ``done`` (None: none)."""
        best: str | None = None
        for level in self.levels:
            if any(w <= set(done) for w in self.ways[level]):
                best = level
        return best

    def satisfies(self, acr: str | None, asked: str) -> bool:
        return self.rank(acr) >= self.rank(asked) >= 0

    def offer(self, asked: str, usable: Collection[str], allowed: Sequence[str] | None = None) -> list[str]:
        """Methods worth offering for ``asked``: those in a way whose methods are all usable.

        ``usable`` are the customer's enrolled methods that may be used now (not in a cooling-off,
        not withdrawn, not exhausted on this challenge); ``allowed`` the policy's own list (a way
        with a method outside it is not offered). Ordered as METHODS.
        """
        ok = set(usable) if allowed is None else set(usable) & set(allowed)
        methods: set[str] = set()
        for way in self.ways_to(asked):
            if way <= ok:
                methods |= way
        return [m for m in METHODS if m in methods]

    def still_needed(self, asked: str, done: Collection[str], usable: Collection[str],
                     allowed: Sequence[str] | None = None) -> list[str]:
        """After ``done``: the methods of a completable way still to do (ordered as METHODS)."""
        ok = (set(usable) if allowed is None else set(usable) & set(allowed)) | set(done)
        methods: set[str] = set()
        for way in self.ways_to(asked):
            if way <= ok:
                methods |= way - set(done)
        return [m for m in METHODS if m in methods]
