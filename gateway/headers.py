"""Header hygiene for forwarding: hop-by-hop removal and identity-header stripping.

aiohttp passes header bytes through as received (its threat model says so), so
the proxy decides what crosses: hop-by-hop headers (RFC 9110 7.6.1) and any
header listed in Connection stay on this hop; headers that claim an identity
(X-User-*, X-Portcullis-*, ...) are removed before the gateway adds its own
signed assertion, so a client can never speak for itself to the backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import MutableMultiMapping

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# Always set by the proxy or its client library, never copied from the inbound request.
_REPLACED = frozenset({
    "host", "content-length", "forwarded", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "x-real-ip", "expect",
})
# Headers some frameworks obey to change the method or path after the gateway judged them.
_OVERRIDES = frozenset({
    "x-http-method-override", "x-http-method", "x-method-override", "x-original-method",
    "x-original-url", "x-rewrite-url",
})
# Credentials the backend must not see: the gateway's assertion replaces them.
_CREDENTIALS = frozenset({"authorization", "dpop", "cookie"})
# Bodies are relayed undecoded (auto_decompress=False), so Content-Encoding stays.
RESPONSE_DROP = HOP_BY_HOP | frozenset({"content-length", "server", "date"})


BODY_DIGEST_HEADERS = ("ETag", "Content-MD5", "Digest", "Content-Digest", "Repr-Digest")
"""Response headers that describe the body's bytes: dropped when the gateway rewrites a body
(masking, encryption), since they would describe the body the upstream sent."""


def drop_body_digests(headers: MutableMultiMapping[str]) -> None:
    for name in BODY_DIGEST_HEADERS:
        headers.popall(name, None)


def _connection_tokens(values: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for v in values:
        out.update(t.strip().lower() for t in v.split(",") if t.strip())
    return out


def dropped_headers(strip_credentials: bool) -> frozenset[str]:
    """The fixed set of inbound headers never forwarded (computed once per forwarder)."""
    base = HOP_BY_HOP | _REPLACED | _OVERRIDES
    return base | _CREDENTIALS if strip_credentials else base


def upstream_headers(
    items: Iterable[tuple[str, str]],
    connection: Iterable[str],
    strip_prefixes: tuple[str, ...],
    drop: frozenset[str],
) -> dict[str, str]:
    """Headers to send upstream, from the inbound (name, value) pairs.

    Repeated headers are joined with ", " (RFC 9110 5.3), which is what a
    backend would see from any compliant intermediary. Names with "_" are
    dropped: CGI-style backends read `X_User_Id` as `X-User-Id`, which would
    slip an identity header past the prefix list.
    """
    listed = _connection_tokens(connection)
    out: dict[str, str] = {}
    for name, value in items:
        low = name.lower()
        if (low in drop or "_" in low or (listed and low in listed)
                or (strip_prefixes and low.startswith(strip_prefixes))):
            continue
        if low in out:
            out[low] = out[low] + ", " + value
        else:
            out[low] = value
    return out


def response_headers(items: Iterable[tuple[str, str]], connection: Iterable[str]) -> list[tuple[str, str]]:
    """Upstream response headers to pass back to the client."""
    drop = RESPONSE_DROP | _connection_tokens(connection)
    return [(k, v) for k, v in items if k.lower() not in drop]


_UNSAFE = re.compile(r"[^\x20-\x3a\x3c\x3e-\x7e]")  # printable ASCII less ';' and '='


def sanitise_value(value: str, limit: int = 256) -> str:
    """A header value safe to emit: printable ASCII, no separators that break our formats."""
    return _UNSAFE.sub("_", value[:limit])
