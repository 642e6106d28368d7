"""Every failure the gateway reports, with its stable code and HTTP status.

Responses and audit records carry the same code, so a compliance officer
reading the audit trail and a client reading the error see one vocabulary.
Codes never change once shipped; add new ones instead.

Tree (status: codes)::

    GatewayError
    ├── 400 bad request ......... bad_path, bad_request, invalid_json, bad_header,
    │                             bundle_malformed, bundle_path_forbidden,
    │                             settings_invalid
    ├── 401 unauthenticated ..... token_missing, token_malformed, token_invalid,
    │                             token_expired, token_not_yet_valid,
    │                             token_issuer_unknown, token_audience,
    │                             token_alg_not_allowed, token_key_unknown,
    │                             token_revoked, insufficient_user_authentication,
    │                             dpop_invalid, dpop_replayed, dpop_required,
    │                             dpop_key_mismatch
    ├── 403 forbidden ........... account_forbidden, policy_denied, role_forbidden,
    │                             self_approval, account_frozen
    ├── 404 not found ........... route_not_found, bundle_not_found, proposal_not_found,
    │                             shadow_not_found, freeze_not_found
    ├── 405 method not allowed .. method_not_allowed
    ├── 408 request timeout ..... body_timeout
    ├── 409 conflict ............ bundle_exists, bundle_not_validated, bundle_already_active,
    │                             bundle_never_active, proposal_exists, proposal_not_pending,
    │                             proposal_expired, shadow_running, shadow_not_running,
    │                             settings_busy
    ├── 413 too large ........... body_too_large, bundle_too_large
    ├── 415 media type .......... unsupported_media_type
    ├── 422 unprocessable ....... bundle_invalid
    ├── 428 precondition ........ confirmation_required
    ├── 429 too many requests ... rate_limited, login_locked (with Retry-After)
    ├── 502 bad gateway ......... upstream_unreachable, upstream_bad_response,
    │                             response_unmaskable
    ├── 503 unavailable ......... state_unavailable, audit_unavailable,
    │                             policy_unavailable, risk_unavailable,
    │                             provider_unavailable, shutting_down,
    │                             repository_unavailable, notify_unavailable,
    │                             break_glass_unavailable, obligation_failed
    └── 504 gateway timeout ..... upstream_timeout
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """A stable error code, its HTTP status and a default message."""

    code: str
    status: int
    message: str


_CATALOGUE: dict[str, ErrorKind] = {}


def _kind(code: str, status: int, message: str) -> ErrorKind:
    if code in _CATALOGUE:
        raise ValueError(f"duplicate error code {code!r}")
    kind = ErrorKind(code, status, message)
    _CATALOGUE[code] = kind
    return kind


BAD_PATH = _kind("bad_path", 400, "the request path is malformed or ambiguous")
BAD_REQUEST = _kind("bad_request", 400, "the request is malformed")
INVALID_JSON = _kind("invalid_json", 400, "the request body is not valid JSON")
BAD_HEADER = _kind("bad_header", 400, "a request header is malformed")

TOKEN_MISSING = _kind("token_missing", 401, "a bearer token is required")
TOKEN_MALFORMED = _kind("token_malformed", 401, "the bearer token is malformed")
TOKEN_INVALID = _kind("token_invalid", 401, "the bearer token is not valid")
TOKEN_EXPIRED = _kind("token_expired", 401, "the bearer token has expired")
TOKEN_NOT_YET_VALID = _kind("token_not_yet_valid", 401, "the bearer token is not valid yet")
TOKEN_ISSUER_UNKNOWN = _kind("token_issuer_unknown", 401, "the token issuer is not trusted")
TOKEN_AUDIENCE = _kind("token_audience", 401, "the token is not meant for this gateway")
TOKEN_ALG_NOT_ALLOWED = _kind(
    "token_alg_not_allowed", 401, "the token's signing algorithm is not allowed"
)
TOKEN_KEY_UNKNOWN = _kind("token_key_unknown", 401, "the token's signing key is not known")
TOKEN_REVOKED = _kind("token_revoked", 401, "the bearer token has been revoked")

# DPoP device proofs (RFC 9449; gateway/authn/dpop.py).
DPOP_INVALID = _kind("dpop_invalid", 401, "the DPoP proof is not valid")
DPOP_REPLAYED = _kind("dpop_replayed", 401, "the DPoP proof has been used before")
DPOP_REQUIRED = _kind("dpop_required", 401, "the access token is bound to a device key: a DPoP proof is required")
DPOP_KEY_MISMATCH = _kind("dpop_key_mismatch", 401, "the DPoP proof's key is not the one the token is bound to")

STEP_UP_REQUIRED = _kind(
    "insufficient_user_authentication", 401, "a stronger authentication is required"
)

ACCOUNT_FORBIDDEN = _kind("account_forbidden", 403, "the account is not one of the caller's")
POLICY_DENIED = _kind("policy_denied", 403, "the request is not allowed by policy")
ROLE_FORBIDDEN = _kind("role_forbidden", 403, "the caller's role may not use this route")

ROUTE_NOT_FOUND = _kind("route_not_found", 404, "no route matches this request")
METHOD_NOT_ALLOWED = _kind("method_not_allowed", 405, "the method is not allowed on this path")
BODY_TIMEOUT = _kind("body_timeout", 408, "the request body did not arrive in time")
BODY_TOO_LARGE = _kind("body_too_large", 413, "the request body is too large for this route")
UNSUPPORTED_MEDIA_TYPE = _kind(
    "unsupported_media_type", 415, "the request body's content type is not accepted"
)

UPSTREAM_UNREACHABLE = _kind("upstream_unreachable", 502, "the upstream could not be reached")
UPSTREAM_BAD_RESPONSE = _kind(
    "upstream_bad_response", 502, "the upstream sent an invalid response"
)
# Rate limits and the failed-login lockout (gateway/steps/rate_limit.py); both carry Retry-After.
RATE_LIMITED = _kind("rate_limited", 429, "too many requests: retry after the time in Retry-After")
LOGIN_LOCKED = _kind(
    "login_locked", 429,
    "too many failed logins for this account from this address: retry after the time in Retry-After",
)
STATE_UNAVAILABLE = _kind("state_unavailable", 503, "the state store is unavailable")
AUDIT_UNAVAILABLE = _kind("audit_unavailable", 503, "the audit trail is unavailable")
POLICY_UNAVAILABLE = _kind("policy_unavailable", 503, "the policy engine is unavailable")
RISK_UNAVAILABLE = _kind("risk_unavailable", 503, "the risk engine is unavailable")
PROVIDER_UNAVAILABLE = _kind(
    "provider_unavailable", 503, "a fact provider (reference data, account facts) is unavailable"
)
SHUTTING_DOWN = _kind("shutting_down", 503, "the gateway is shutting down")
UPSTREAM_TIMEOUT = _kind("upstream_timeout", 504, "the upstream did not answer in time")

# The policy bundle admin API (gateway/bundles, docs/POLICIES.md "Changing policies").
BUNDLE_MALFORMED = _kind("bundle_malformed", 400, "the bundle upload is malformed")
BUNDLE_PATH_FORBIDDEN = _kind("bundle_path_forbidden", 400, "a bundle file path is not allowed")
BUNDLE_TOO_LARGE = _kind("bundle_too_large", 413, "the bundle has too many files or bytes")
BUNDLE_INVALID = _kind("bundle_invalid", 422, "the bundle failed validation")
BUNDLE_NOT_FOUND = _kind("bundle_not_found", 404, "no bundle has this version")
PROPOSAL_NOT_FOUND = _kind("proposal_not_found", 404, "no proposal has this id")
BUNDLE_EXISTS = _kind("bundle_exists", 409, "a bundle with the same policy is already stored")
BUNDLE_NOT_VALIDATED = _kind("bundle_not_validated", 409, "the bundle has not passed validation")
BUNDLE_ALREADY_ACTIVE = _kind("bundle_already_active", 409, "this version is already active")
BUNDLE_NEVER_ACTIVE = _kind(
    "bundle_never_active", 409, "only a version that was active before can be rolled back to"
)
PROPOSAL_EXISTS = _kind("proposal_exists", 409, "a pending proposal for this version exists")
PROPOSAL_NOT_PENDING = _kind("proposal_not_pending", 409, "the proposal is no longer pending")
PROPOSAL_EXPIRED = _kind("proposal_expired", 409, "the proposal has expired")
SELF_APPROVAL = _kind(
    "self_approval", 403, "a change must be approved by a different compliance officer"
)
REPOSITORY_UNAVAILABLE = _kind(
    "repository_unavailable", 503, "the policy bundle repository is unavailable"
)
NOTIFY_UNAVAILABLE = _kind(
    "notify_unavailable", 503, "the compliance officers could not be alerted"
)
BREAK_GLASS_UNAVAILABLE = _kind(
    "break_glass_unavailable", 503, "break-glass needs compliance officers to alert (policy_admin.officers)"
)
# Shadow mode (docs/POLICIES.md "Shadow mode").
SHADOW_NOT_FOUND = _kind("shadow_not_found", 404, "no shadow session has this id")
SHADOW_RUNNING = _kind("shadow_running", 409, "a shadow session is already running: stop it first")
SHADOW_NOT_RUNNING = _kind("shadow_not_running", 409, "no shadow session is running")

# Obligations of a decision and account freezes (gateway/steps/obligations.py, gateway/freezes.py).
ACCOUNT_FROZEN = _kind(
    "account_frozen", 403, "the account is frozen: trading and transfers are refused until compliance lifts it"
)
CONFIRMATION_REQUIRED = _kind(
    "confirmation_required", 428,
    "acknowledge the risk warning: resend the request with X-Portcullis-Risk-Acknowledged: true",
)
OBLIGATION_FAILED = _kind("obligation_failed", 503, "an obligation of the policy could not be carried out")
RESPONSE_UNMASKABLE = _kind(
    "response_unmaskable", 502, "the upstream's response cannot be masked as the policy requires"
)
FREEZE_NOT_FOUND = _kind("freeze_not_found", 404, "the account is not frozen")


# Customer security settings (gateway/settings.py, gateway/settings_api.py).
SETTINGS_INVALID = _kind("settings_invalid", 400, "the security settings are not valid")
SETTINGS_BUSY = _kind("settings_busy", 409, "another change of these settings is in progress: retry")


def catalogue() -> dict[str, ErrorKind]:
    """All known error kinds by code (a copy)."""
    return dict(_CATALOGUE)


class GatewayError(Exception):
    """A failure with a stable code; the server turns it into a JSON error."""

    def __init__(self, kind: ErrorKind, message: str | None = None, *,
                 extra: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message or kind.message)
        self.kind = kind
        self.message = message or kind.message
        self.extra = extra
        """More JSON members for the error body (e.g. deny reasons)."""
        self.headers = headers
        """Response headers (e.g. WWW-Authenticate, Allow)."""

    @property
    def code(self) -> str:
        return self.kind.code

    @property
    def status(self) -> int:
        return self.kind.status


class ConfigError(Exception):
    """The configuration file is invalid; the message names the key and the fix."""
