"""Decrypt SM4-GCM request envelopes so later steps see the plaintext order.

The envelope format and session keys arrive with the national-cryptography
issue; until then an envelope is refused with 415 rather than forwarded
undecrypted (a policy must never judge a body it cannot read).
"""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.errors import UNSUPPORTED_MEDIA_TYPE, GatewayError
from gateway.proxy import is_envelope


class Decrypt:
    name = "decrypt"

    def __call__(self, ctx: RequestContext) -> None:
        if is_envelope(ctx.headers.get("Content-Type", "")):
            raise GatewayError(UNSUPPORTED_MEDIA_TYPE, "encrypted payloads are not enabled on this gateway")
