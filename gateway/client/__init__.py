"""Client SDK for Portcullis: what a broker's app needs to talk to the gateway.

It imports nothing of ``gateway`` but the leaf ``gateway.crypto`` (and never
aiohttp), so a client, the locustfile and tools can use it alone. It holds the
device key that proves possession with DPoP (RFC 9449), the step-up client
(answering an RFC 9470 challenge with TOTP, ``stepup.py``) and the session keys
and SM4-GCM envelopes (``envelope.py``: ``agree`` a session key, then
``StepUpClient(envelope=...)`` seals bodies and opens responses).
"""

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
    totp_code,
)

__all__ = ["STEP_UP_HEADER", "DeviceKey", "HttpRequest", "HttpResponse", "StepUpClient", "StepUpError",
           "StepUpRequired", "StepUpResult", "TotpAuthenticator", "access_token_hash", "aiohttp_send",
           "thumbprint", "totp_code"]
