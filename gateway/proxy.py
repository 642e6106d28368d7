"""Forwarding to upstreams: pooled keep-alive clients, body handling, WebSockets.

Everything here is the I/O edge of the pipeline. Small upstream responses
(the common case for a trading API) are read whole and returned in one write,
which costs far less than a streamed response; large or unsized ones stream.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from gateway.config import GUARDED_TIERS, Config, RouteConfig, UpstreamConfig, UpstreamTLSConfig
from gateway.context import RequestContext
from gateway.crypto.session import ENVELOPE_TYPE
from gateway.errors import (
    BAD_REQUEST,
    BODY_TIMEOUT,
    BODY_TOO_LARGE,
    INVALID_JSON,
    RESPONSE_UNMASKABLE,
    UNSUPPORTED_MEDIA_TYPE,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    GatewayError,
)
from gateway.headers import dropped_headers, response_headers, upstream_headers
from gateway.masking import MASK_RESPONSE_LIMIT
from gateway.upstream_crypto import (
    UPSTREAM_ENVELOPE_TYPE,
    PayloadKeys,
    UpstreamEnvelopeError,
    seal_body,
)

log = logging.getLogger("portcullis")

#: Responses up to this size are buffered and sent in one write.
BUFFER_RESPONSE_LIMIT = 256 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def upstream_ssl_context(cfg: UpstreamTLSConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.client_cert and cfg.client_key:
        ctx.load_cert_chain(str(cfg.client_cert), str(cfg.client_key))
    return ctx


@dataclass(slots=True)
class Upstream:
    config: UpstreamConfig
    session: aiohttp.ClientSession


class Upstreams:
    """One pooled keep-alive client session per upstream."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._by_name: dict[str, Upstream] = {}
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        tls: ssl.SSLContext | None = None
        for name, uc in self._config.upstreams.items():
            use_tls: ssl.SSLContext | bool = False
            if uc.url.startswith("https://"):
                tls = tls or upstream_ssl_context(self._config.upstream_tls)
                use_tls = tls
            connector = aiohttp.TCPConnector(
                limit=uc.pool_size, limit_per_host=uc.pool_size, keepalive_timeout=30,
                ssl=use_tls,
                enable_cleanup_closed=True,
            )
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._by_name[name] = Upstream(uc, session)
        for r in self._config.routes:
            uc = self._config.upstreams[r.upstream]
            self._timeouts[r.name] = aiohttp.ClientTimeout(
                total=None,
                sock_connect=r.connect_timeout if r.connect_timeout is not None else uc.connect_timeout,
                sock_read=r.read_timeout if r.read_timeout is not None else uc.read_timeout,
            )

    def get(self, name: str) -> Upstream:
        return self._by_name[name]

    def timeout(self, route: RouteConfig) -> aiohttp.ClientTimeout:
        return self._timeouts[route.name]

    async def check(self, timeout: float = 1.0) -> dict[str, bool]:
        """Readiness: can each upstream's health path be fetched?"""
        async def one(up: Upstream) -> bool:
            try:
                async with up.session.get(
                    up.config.url + up.config.health_path,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as resp:
                    return resp.status < 500
            except (TimeoutError, aiohttp.ClientError):
                return False

        names = list(self._by_name)
        results = await asyncio.gather(*(one(self._by_name[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await asyncio.gather(*(u.session.close() for u in self._by_name.values()))


# ---------------------------------------------------------------------------
# Request bodies


def _too_large(limit: int) -> GatewayError:
    return GatewayError(BODY_TOO_LARGE, f"the request body exceeds {limit} bytes")


class BoundedBody:
    """A request body read with a size limit and a deadline.

    The deadline matters beyond slow clients: aiohttp's C parser drops a
    chunked-encoding error that arrives after the handler started, so
    without it a body read on such a request would wait forever.
    Iterated by the upstream client when streaming; `error` keeps what went
    wrong, because the client library re-wraps exceptions from a body.
    """

    def __init__(self, request: web.BaseRequest, limit: int, timeout: float) -> None:
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        self._content = request.content
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._size = 0
        self.error: GatewayError | None = None

    async def _next(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                chunk = await self._content.readany()
        except TimeoutError:
            self.error = GatewayError(BODY_TIMEOUT, headers={"Connection": "close"})
            raise self.error from None
        self._size += len(chunk)
        if self._size > self._limit:
            self.error = _too_large(self._limit)
            raise self.error
        return chunk

    async def read(self) -> bytes:
        chunks = []
        while chunk := await self._next():
            chunks.append(chunk)
        return b"".join(chunks)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self._next():
            yield chunk


def is_envelope(content_type: str) -> bool:
    """Is this (full Content-Type header or bare media type) the SM4-GCM envelope?"""
    return content_type.split(";", 1)[0].strip().lower() == ENVELOPE_TYPE


class ReadBody:
    """Buffers (guarded tiers) or bounds (streamed tiers) the request body."""

    name = "read_body"

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        # A coroutine only for a body to buffer: a GET, or a streamed body, costs none.
        request: web.BaseRequest = ctx.request
        if not request.body_exists:
            return None
        route = ctx.route
        body = BoundedBody(request, route.body_limit, self._timeout)
        if route.tier not in GUARDED_TIERS:
            ctx.stream = body  # streamed by the forward step, still bounded
            return None
        return self._buffer(ctx, request, body)

    async def _buffer(self, ctx: RequestContext, request: web.BaseRequest, body: BoundedBody) -> None:
        route = ctx.route
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            # Bodies reach the policy as sent (no server-side decompression): it must read them.
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "compressed request bodies are not accepted here")
        ctx.body = await body.read()
        if route.json_body and ctx.method in _BODY_METHODS and ctx.body:
            ctype = request.content_type
            if is_envelope(ctype):
                return  # the decrypt step owns it
            if ctype != "application/json":
                raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "expected application/json")
            try:
                ctx.json_body = orjson.loads(ctx.body)
            except (ValueError, UnicodeDecodeError):
                raise GatewayError(INVALID_JSON) from None


# ---------------------------------------------------------------------------
# Forwarding


HeaderHook = Callable[[RequestContext, dict[str, str]], None]


class Forward:
    """The last step: sends the request upstream and sets ctx.response."""

    name = "forward"

    def __init__(self, upstreams: Upstreams, *, strip_prefixes: tuple[str, ...],
                 strip_credentials: bool, request_id_header: str, body_timeout: float,
                 header_hooks: tuple[HeaderHook, ...] = ()) -> None:
        self._body_timeout = body_timeout
        self.websockets: set[web.WebSocketResponse] = set()
        """Relayed WebSockets still open (closed with 1001 on shutdown)."""
        self._upstreams = upstreams
        self._strip = strip_prefixes
        self._drop = dropped_headers(strip_credentials)
        self._rid_header = request_id_header.lower()
        self._hooks = header_hooks
        self._payload_keys: dict[str, PayloadKeys] = {}
        """Each re-encrypting upstream's payload keys, read on first use (the config loader checked the file)."""

    def build_headers(self, ctx: RequestContext, request: web.BaseRequest) -> dict[str, str]:
        inbound = request.headers
        headers = upstream_headers(inbound.items(), inbound.getall("Connection", ()),
                                   self._strip, self._drop)
        # Keep the inbound chain only from a trusted proxy; a client's own is discarded.
        prior = ", ".join(inbound.getall("X-Forwarded-For", ())) if ctx.peer_trusted else None
        peer = _peer(request)
        headers["x-forwarded-for"] = f"{prior}, {peer}" if prior else peer
        headers["x-forwarded-proto"] = ctx.scheme
        headers[self._rid_header] = ctx.request_id
        if request.content_length is not None and not request.headers.get("Transfer-Encoding"):
            headers["content-length"] = str(request.content_length)
        for hook in self._hooks:
            hook(ctx, headers)
        return headers

    async def __call__(self, ctx: RequestContext) -> None:
        request: web.BaseRequest = ctx.request
        up = self._upstreams.get(ctx.route.upstream)
        url = up.config.url + ctx.path + ("?" + ctx.query if ctx.query else "")
        headers = self.build_headers(ctx, request)
        headers.pop(_UPSTREAM_ENVELOPE_HEADER, None)  # only the gateway may say a body is sealed
        # Masking and encryption rewrite the whole response: it is buffered (bounded) and uncompressed.
        masked = ctx.mask_fields is not None or ctx.envelope is not None
        if masked:
            headers["accept-encoding"] = "identity"
            if ctx.envelope is not None:  # the upstream receives the plaintext
                headers["content-type"] = "application/json"
                headers.pop("portcullis-envelope", None)
        if ctx.route.websocket and request.headers.get("Upgrade", "").lower() == "websocket":
            if masked:
                raise GatewayError(RESPONSE_UNMASKABLE, "a WebSocket stream cannot be masked or encrypted")
            ctx.response = await proxy_websocket(request, up, url, headers,
                                                 self._upstreams.timeout(ctx.route), self.websockets)
            return
        data: Any
        if ctx.route.upstream_encryption != "off" and (ctx.body or request.body_exists):
            data = self._seal(ctx, up, headers, ctx.body if ctx.body is not None else await self._read(ctx, request))
            headers["content-length"] = str(len(data))
        elif ctx.body is not None:
            data = ctx.body
            headers["content-length"] = str(len(ctx.body))
        elif request.body_exists:
            if ctx.stream is None:  # bare proxy: no read_body step ran
                ctx.stream = BoundedBody(request, ctx.route.body_limit, self._body_timeout)
            data = ctx.stream
        else:
            data = None
        started = time.perf_counter()
        try:
            async with up.session.request(
                ctx.method, url, headers=headers, data=data, allow_redirects=False,
                timeout=self._upstreams.timeout(ctx.route), compress=None,
            ) as resp:
                ctx.response = await (_buffered(resp, MASK_RESPONSE_LIMIT) if masked else _relay(request, resp))
        except GatewayError:
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, (TimeoutError, asyncio.TimeoutError)):
                raise GatewayError(UPSTREAM_TIMEOUT) from None
            raise GatewayError(UPSTREAM_UNREACHABLE) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayError(UPSTREAM_TIMEOUT) from None
        except aiohttp.ClientError:
            if ctx.stream is not None and ctx.stream.error is not None:
                raise ctx.stream.error from None  # the client's body, not the upstream, failed
            raise GatewayError(UPSTREAM_BAD_RESPONSE) from None
        finally:
            ctx.upstream_seconds = time.perf_counter() - started

    async def _read(self, ctx: RequestContext, request: web.BaseRequest) -> bytes:
        """The whole body of a re-encrypting route when no read_body step buffered it (bare proxy)."""
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "compressed request bodies are not accepted here")
        return await BoundedBody(request, ctx.route.body_limit, self._body_timeout).read()

    def _seal(self, ctx: RequestContext, up: Upstream, headers: dict[str, str], body: bytes) -> bytes:
        """``body`` sealed under the upstream's current payload key; the headers say how (upstream_crypto)."""
        if not body:
            return body  # nothing to protect: forwarded as is
        keys = self._payload_keys.get(up.config.name)
        if keys is None:
            try:
                keys = PayloadKeys.from_file(up.config.payload_key_file or "")
            except UpstreamEnvelopeError as exc:
                log.error("upstream %s: %s", up.config.name, exc)
                raise GatewayError(UPSTREAM_UNREACHABLE, "the upstream's payload key cannot be used") from None
            self._payload_keys[up.config.name] = keys
        target = urlsplit(up.config.url).path + ctx.path + ("?" + ctx.query if ctx.query else "")
        h, sealed = seal_body(keys, ctx.method, target, ctx.request_id, headers.get("content-type"), body)
        headers["content-type"] = UPSTREAM_ENVELOPE_TYPE
        headers[_UPSTREAM_ENVELOPE_HEADER] = h.render()
        return sealed


_UPSTREAM_ENVELOPE_HEADER = "portcullis-upstream-envelope"


def _peer(request: web.BaseRequest) -> str:
    return request.remote or ""


class StreamAborted(GatewayError):
    """The upstream failed after the response headers went out: nothing more can be said.

    The client connection is closed instead of answered, so a second response
    can never land inside the first one's body on a kept-alive connection.
    """

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(UPSTREAM_BAD_RESPONSE, "the upstream failed in the middle of the response")
        self.response = response


async def _relay(request: web.BaseRequest, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    headers = response_headers(resp.headers.items(), resp.headers.getall("Connection", ()))
    length = resp.content_length
    if length is not None and length <= BUFFER_RESPONSE_LIMIT:
        body = await resp.read()
        return web.Response(status=resp.status, reason=resp.reason, headers=headers, body=body)
    out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
    if length is not None:
        out.content_length = length
    await out.prepare(request)
    try:
        async for chunk in resp.content.iter_chunked(64 * 1024):
            await out.write(chunk)
        await out.write_eof()
    except (aiohttp.ClientError, TimeoutError):
        if request.transport is not None:
            request.transport.close()
        raise StreamAborted(out) from None
    return out


async def _buffered(resp: aiohttp.ClientResponse, limit: int) -> web.Response:
    """The whole response, unsent, for a step that rewrites it (masking); larger than ``limit``: 502."""
    length = resp.content_length
    if length is not None and length > limit:
        raise GatewayError(RESPONSE_UNMASKABLE, f"the response exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise GatewayError(RESPONSE_UNMASKABLE, f"the response exceeds {limit} bytes")
        chunks.append(chunk)
    headers = response_headers(resp.headers.items(), resp.headers.getall("Connection", ()))
    return web.Response(status=resp.status, reason=resp.reason, headers=headers, body=b"".join(chunks))


async def proxy_websocket(request: web.BaseRequest, up: Upstream, url: str,
                          headers: Mapping[str, str], timeout: aiohttp.ClientTimeout,
                          open_sockets: set[web.WebSocketResponse]) -> web.StreamResponse:
    """Relays a WebSocket both ways until either side closes.

    The client's handshake is checked before anything is opened upstream,
    and the upstream socket is closed on every path, so bad handshakes can
    never pin the upstream pool.
    """
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    if not web.WebSocketResponse(protocols=protocols).can_prepare(request).ok:
        raise GatewayError(BAD_REQUEST, "not a valid WebSocket handshake")
    forward = {k: v for k, v in headers.items()
               if not k.startswith("sec-websocket-") and k != "content-length"}
    ws_url = "ws" + url[4:] if url.startswith("http") else url
    limit = (timeout.sock_connect or 0) + (timeout.sock_read or 0) or 10.0
    try:
        async with asyncio.timeout(limit):
            upstream_ws = await up.session.ws_connect(
                ws_url, headers=forward, protocols=protocols, autoclose=False, autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise GatewayError(UPSTREAM_BAD_RESPONSE, f"upstream refused the WebSocket ({exc.status})") from None
    except TimeoutError:
        raise GatewayError(UPSTREAM_TIMEOUT) from None
    except aiohttp.ClientConnectorError:
        raise GatewayError(UPSTREAM_UNREACHABLE) from None
    except aiohttp.ClientError:
        raise GatewayError(UPSTREAM_BAD_RESPONSE) from None
    client_ws = web.WebSocketResponse(protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
                                      autoping=True, max_msg_size=1024 * 1024)
    tasks: list[asyncio.Task[None]] = []
    try:
        await client_ws.prepare(request)
        open_sockets.add(client_ws)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break

        tasks = [asyncio.create_task(pump(client_ws, upstream_ws)),
                 asyncio.create_task(pump(upstream_ws, client_ws))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        open_sockets.discard(client_ws)
        await upstream_ws.close()
        if client_ws.prepared:
            await client_ws.close()
    return client_ws
