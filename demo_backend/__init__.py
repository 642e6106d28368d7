"""Portcullis demo trading backend: a separate program the gateway never imports.

Run it with ``python -m demo_backend --identity-jwks PATH``; tests build it in
process with :func:`create_app`.
"""

from .app import create_app

__all__ = ["create_app"]
