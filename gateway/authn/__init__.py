"""Authentication: bearer JWTs from allow-listed issuers, checked in Python.

Layers, each usable alone:

* :mod:`gateway.authn.jwks`: an issuer's public signing keys (JWKS file or
  URL), refetched on unknown kids at a bounded rate.
* :mod:`gateway.authn.tokens`: strict parsing, algorithm and key policy,
  signature and claim checks, and the verified-subject cache.
* :mod:`gateway.authn.revocation`: revocation by ``jti`` over the shared
  state store.

This package never imports the aiohttp server: the request pipeline calls
:meth:`TokenVerifier.verify` and turns its :class:`~gateway.errors.GatewayError`
into the response.
"""

from gateway.authn.jwks import JwksError, JwksSource, default_fetcher, key_from_jwk, parse_jwks
from gateway.authn.revocation import RevocationList, RevocationStore
from gateway.authn.tokens import (
    MAX_TOKEN_BYTES,
    SUPPORTED_ALGORITHMS,
    Subject,
    TokenVerifier,
    parse_compact,
    verify_signature,
)

__all__ = [
    "MAX_TOKEN_BYTES",
    "SUPPORTED_ALGORITHMS",
    "JwksError",
    "JwksSource",
    "RevocationList",
    "RevocationStore",
    "Subject",
    "TokenVerifier",
    "default_fetcher",
    "key_from_jwk",
    "parse_compact",
    "parse_jwks",
    "verify_signature",
]
