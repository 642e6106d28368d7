"""The gateway's client for the face service (aiohttp, loopback, shared secret, timeouts).

Every call raises :class:`FaceServiceError` with the service's stable code on
a 4xx/5xx answer, and :class:`FaceServiceUnavailable` when the service cannot
be reached or does not answer in time: the caller then withdraws the face
method rather than failing the customer's whole step-up.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp


class FaceServiceError(Exception):
    def __init__(self, code: str, status: int, message: str = "") -> None:
        super().__init__(code, status, message)
        self.code, self.status, self.message = code, status, message


class FaceServiceUnavailable(FaceServiceError):
    def __init__(self, message: str) -> None:
        super().__init__("face_unavailable", 503, message)


class BiometricsClient:
    def __init__(self, base_url: str, secret: bytes, *, timeout: float = 5.0, connect_timeout: float = 0.5,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": "Bearer " + secret.decode()}
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._session = session
        self._own = session is None

    async def __aenter__(self) -> BiometricsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
                    auth: bool = True) -> dict[str, Any]:
        try:
            async with self._sess().request(method, self._base + path, json=body,
                                            headers=self._auth if auth else None, timeout=self._timeout) as r:
                try:
                    doc = await r.json(content_type=None)
                except ValueError:
                    doc = None
                if not isinstance(doc, dict):
                    raise FaceServiceError("bad_response", r.status, "the face service did not answer JSON")
                if r.status >= 400:
                    raise FaceServiceError(str(doc.get("error", "unknown")), r.status, str(doc.get("message", "")))
                return doc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FaceServiceUnavailable(f"face service unreachable: {type(exc).__name__}") from None

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/healthz", auth=False)

    async def face_available(self) -> bool:
        try:
            return (await self.health()).get("face") == "available"
        except FaceServiceError:
            return False

    async def consent(self, customer: str, granted: bool, text_version: str, channel: str = "app") -> None:
        await self._call("POST", "/v1/consent", {"customer": customer, "granted": granted,
                                                 "text_version": text_version, "channel": channel})

    async def enrol(self, customer: str, image: bytes) -> None:
        await self._call("POST", "/v1/enrol", {"customer": customer, "image": _b64(image)})

    async def verify(self, customer: str, image: bytes) -> bool:
        doc = await self._call("POST", "/v1/verify", {"customer": customer, "image": _b64(image)})
        return doc.get("match") is True

    async def liveness(self, customer: str, frames: Sequence[bytes]) -> bool:
        """True when the frames are live *and* show the enrolled customer."""
        doc = await self._call("POST", "/v1/liveness", {"customer": customer, "frames": [_b64(f) for f in frames]})
        return doc.get("live") is True and doc.get("match") is True

    async def delete(self, customer: str) -> bool:
        doc = await self._call("DELETE", f"/v1/templates/{quote(customer, safe='')}")
        return doc.get("deleted") is True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
