"""Route table: method + canonical path -> route and path parameters.

Pure and allocation-light: routes are grouped by segment count and tried most
specific first (a literal segment beats a parameter at the same position), so
`/api/quotes/stream` wins over `/api/quotes/{symbol}` whatever the file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.config import RouteConfig
from gateway.errors import METHOD_NOT_ALLOWED, ROUTE_NOT_FOUND, GatewayError


@dataclass(frozen=True, slots=True)
class _Compiled:
    route: RouteConfig
    # For each segment: the literal text, or None for a parameter.
    literals: tuple[str | None, ...]
    names: tuple[str | None, ...]


class MethodNotAllowed(GatewayError):
    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__(METHOD_NOT_ALLOWED)
        self.allowed = tuple(sorted(set(allowed)))


class Router:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        by_len: dict[int, list[_Compiled]] = {}
        for r in routes:
            segs = r.path.split("/")[1:]
            literals = tuple(None if s.startswith("{") else s for s in segs)
            names = tuple(s[1:-1] if s.startswith("{") else None for s in segs)
            by_len.setdefault(len(segs), []).append(_Compiled(r, literals, names))
        for group in by_len.values():
            # Most specific first; stable, so file order breaks ties.
            group.sort(key=lambda c: tuple(lit is None for lit in c.literals))
        self._by_len = by_len

    def match(self, method: str, path: str) -> tuple[RouteConfig, dict[str, str]]:
        """Find the route; raises route_not_found (404) or method_not_allowed (405)."""
        segs = path.split("/")[1:]
        allowed: list[str] = []
        for c in self._by_len.get(len(segs), ()):
            params: dict[str, str] = {}
            for seg, lit, name in zip(segs, c.literals, c.names, strict=True):
                if lit is None:
                    if not seg:
                        break
                    params[name] = unquote(seg)  # type: ignore[index]
                elif seg != lit:
                    break
            else:
                if method in c.route.methods:
                    return c.route, params
                allowed.extend(c.route.methods)
        if allowed:
            raise MethodNotAllowed(allowed)
        raise GatewayError(ROUTE_NOT_FOUND)
