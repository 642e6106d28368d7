"""Request-target normalisation and rejection of ambiguous paths.

A gateway and the server behind it must agree on what path a request names,
or an attacker routes around a check ("/api/accounts/A1/..%2fB9/orders").
So before routing we turn the raw request target into one canonical form and
refuse anything that two parsers could read differently: encoded slashes,
backslashes and dots, NUL and other control bytes, malformed escapes, dot
segments that climb above the root, fragments, and overlong targets.
Only that canonical path is routed and forwarded.
"""

from __future__ import annotations

import re

from gateway.errors import BAD_PATH, GatewayError

_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~"
)
# Bytes that are ambiguous once decoded: ".", "/", "\", NUL and controls.
_FORBIDDEN_ENCODED = frozenset({0x2E, 0x2F, 0x5C, 0x7F} | set(range(0x20)))
# Characters allowed raw in a path (RFC 3986 pchar + "/"; escapes checked separately).
_PATH_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")


def _bad(reason: str) -> GatewayError:
    return GatewayError(BAD_PATH, f"the request path is malformed or ambiguous: {reason}")


def _canonical_escapes(path: str) -> str:
    """Decode escapes of unreserved characters, upper-case the rest, refuse the ambiguous."""
    if "%" not in path:
        return path
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise _bad("malformed percent-escape")
        byte = int(pair, 16)
        if byte in _FORBIDDEN_ENCODED:
            raise _bad("encoded dot, slash, backslash or control character")
        decoded = chr(byte)
        out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
        i += 3
    return "".join(out)


def normalise_target(target: str, max_length: int = 2048) -> tuple[str, str]:
    """Split a raw origin-form request target into (canonical path, raw query).

    Raises GatewayError(BAD_PATH) for anything ambiguous.
    """
    if len(target) > max_length:
        raise _bad("too long")
    if not target.startswith("/"):
        raise _bad("not an origin-form target")
    path, sep, query = target.partition("?")
    if "#" in target:
        raise _bad("fragment in request target")
    if _PATH_RE.fullmatch(path) is None:
        raise _bad("backslash, control, space or non-ASCII character")
    if sep:
        if _QUERY_RE.fullmatch(query) is None:
            raise _bad("invalid character in query")
        _check_query_escapes(query)
    path = _canonical_escapes(path)
    segments: list[str] = []
    for seg in path.split("/")[1:]:
        if seg == "" or seg == ".":
            continue  # "//" and "/./" collapse
        if seg == "..":
            if not segments:
                raise _bad("dot segment above the root")
            segments.pop()
            continue
        segments.append(seg)
    canonical = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        canonical += "/"
    return canonical, query


def _check_query_escapes(query: str) -> None:
    i = query.find("%")
    while i != -1:
        pair = query[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise _bad("malformed percent-escape in query")
        i = query.find("%", i + 3)
