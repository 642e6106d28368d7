"""Client SDK for Portcullis: what a broker's app needs to talk to the gateway.

It imports nothing of ``gateway`` but the leaf ``gateway.crypto`` (and never
aiohttp), so a client, the locustfile and tools can use it alone. It holds the
device key that proves possession with DPoP (RFC 9449), the step-up client
(answering an RFC 9470 challenge with TOTP, ``stepup.py``) and the session keys
and SM4-GCM envelopes (``envelope.py``: ``agree`` a session key, then
``StepUpClient(envelope=...)`` seals bodies and opens responses). Those are
sans-I/O flows.

:class:`PortcullisClient` (``aio.py``) runs them over aiohttp, with step-up
callbacks and bounded retries; it is imported on first use of the name, so
``import gateway.client`` still loads no aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.client.device import DeviceKey, access_token_hash, thumbprint
from gateway.client.stepup import (
    STEP_UP_HEADER,
    HttpRequest,
    HttpResponse,
    StepUpClient,
    StepUpError,
    StepUpRequired,
    StepUpResult,
    TotpAuthenticator,
    aiohttp_send,
    drive,
    drive_sync,
    totp_code,
)

if TYPE_CHECKING:
    from gateway.client.aio import Challenge, PortcullisClient, Response, RetryPolicy, TransportError

_AIO = frozenset({"Challenge", "PortcullisClient", "Response", "RetryPolicy", "TransportError"})

__all__ = ["STEP_UP_HEADER", "Challenge", "DeviceKey", "HttpRequest", "HttpResponse", "PortcullisClient", "Response",
           "RetryPolicy", "StepUpClient", "StepUpError", "StepUpRequired", "StepUpResult", "TotpAuthenticator",
           "TransportError", "access_token_hash", "aiohttp_send", "drive", "drive_sync", "thumbprint", "totp_code"]


def __getattr__(name: str) -> Any:
    if name in _AIO:  # aiohttp only for who uses the aiohttp client
        from gateway.client import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'gateway.client' has no attribute {name!r}")
