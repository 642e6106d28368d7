"""Client SDK for Portcullis: what a broker's app needs to talk to the gateway.

A leaf package: it imports nothing else of ``gateway`` (and never aiohttp),
so a client, the locustfile and tools can use it alone. Today it holds the
device key that proves possession with DPoP (RFC 9449); the SM4 payload
envelope joins it later.
"""

from gateway.client.device import DeviceKey, access_token_hash, thumbprint

__all__ = ["DeviceKey", "access_token_hash", "thumbprint"]
