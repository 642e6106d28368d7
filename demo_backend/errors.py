"""The demo backend's errors: one exception, a stable code, an HTTP status.

Every error response is ``{"error": code, "message": text}`` (plus
``request_id`` when the caller sent ``X-Request-Id``).

Codes (status: codes)::

    400 invalid_order, invalid_transfer, invalid_delay,
        upstream_envelope_malformed, upstream_envelope_key_unknown, upstream_envelope_invalid
    401 identity_assertion_invalid, internal_token_invalid
    403 account_forbidden
    404 not_found, unknown_symbol, unknown_account, unknown_order
    405 method_not_allowed
    409 order_not_cancellable, duplicate_order
    413 body_too_large
    415 upstream_envelope_required
    422 insufficient_funds, insufficient_position
    500 internal_error
"""

from __future__ import annotations


class DemoError(Exception):
    """A failure the backend reports to its caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid_order(message: str) -> DemoError:
    return DemoError(400, "invalid_order", message)


def invalid_transfer(message: str) -> DemoError:
    return DemoError(400, "invalid_transfer", message)


def assertion_invalid(message: str) -> DemoError:
    return DemoError(401, "identity_assertion_invalid", message)
