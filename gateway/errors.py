"""Every failure the gateway reports, with its stable code and HTTP status.

Responses and audit records carry the same code, so a compliance officer
reading the audit trail and a client reading the error see one vocabulary.
Codes never change once shipped; add new ones instead.

Tree (status: codes)::

    GatewayError
    ├── 400 bad request ......... bad_path, bad_request, invalid_json, bad_header,
    │                             bundle_malformed, bundle_path_forbidden,
    │                             settings_invalid, otp_malformed, phone_invalid,
    │                             face_image_invalid, face_frames_invalid,
    │                             envelope_malformed, envelope_invalid, envelope_stale,
    │                             session_key_unknown, agreement_key_unknown,
    │                             key_agreement_failed
    ├── 401 unauthenticated ..... token_missing, token_malformed, token_invalid,
    │                             token_expired, token_not_yet_valid,
    │                             token_issuer_unknown, token_audience,
    │                             token_alg_not_allowed, token_key_unknown,
    │                             token_revoked, insufficient_user_authentication,
    │                             dpop_invalid, dpop_replayed, dpop_required,
    │                             dpop_key_mismatch, step_up_token_invalid,
    │                             step_up_token_used
    ├── 403 forbidden ........... account_forbidden, policy_denied, role_forbidden,
    │                             self_approval, account_frozen, challenge_failed,
    │                             no_step_up_method, step_up_token_mismatch, otp_invalid,
    │                             otp_replayed, face_consent_required, face_mismatch,
    │                             session_key_mismatch
    ├── 404 not found ........... route_not_found, bundle_not_found, proposal_not_found,
    │                             shadow_not_found, freeze_not_found, challenge_not_found,
    │                             enrolment_not_found
    ├── 405 method not allowed .. method_not_allowed
    ├── 408 request timeout ..... body_timeout
    ├── 409 conflict ............ bundle_exists, bundle_not_validated, bundle_already_active,
    │                             bundle_never_active, proposal_exists, proposal_not_pending,
    │                             proposal_expired, shadow_running, shadow_not_running,
    │                             settings_busy, challenge_used, method_not_offered,
    │                             factor_not_enrolled, phone_unknown, face_not_enrolled,
    │                             face_replayed, envelope_replayed
    ├── 410 gone ................ challenge_expired, otp_expired, session_key_expired
    ├── 413 too large ........... body_too_large, bundle_too_large, face_image_too_large
    ├── 415 media type .......... unsupported_media_type, encryption_required
    ├── 422 unprocessable ....... bundle_invalid, face_no_face, face_multiple_faces,
    │                             face_too_small, face_identity_mismatch, face_liveness_failed
    ├── 428 precondition ........ confirmation_required
    ├── 429 too many requests ... rate_limited, login_locked, otp_locked, otp_throttled,
    │                             sms_cooldown, sms_send_limited (with Retry-After)
    ├── 502 bad gateway ......... upstream_unreachable, upstream_bad_response,
    │                             response_unmaskable, response_unencryptable
    ├── 503 unavailable ......... state_unavailable, audit_unavailable,
    │                             policy_unavailable, risk_unavailable,
    │                             provider_unavailable, shutting_down,
    │                             repository_unavailable, notify_unavailable,
    │                             break_glass_unavailable, obligation_failed,
    │                             sms_unavailable, face_unavailable
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

# Step-up authentication (gateway/mfa, docs/STEP_UP.md): challenges, step-up tokens, factors.
CHALLENGE_NOT_FOUND = _kind("challenge_not_found", 404, "no step-up challenge of yours has this id")
CHALLENGE_EXPIRED = _kind("challenge_expired", 410, "the step-up challenge has expired: retry the request")
CHALLENGE_USED = _kind("challenge_used", 409, "the step-up challenge has already been completed")
CHALLENGE_FAILED = _kind(
    "challenge_failed", 403, "the step-up challenge has no method left: retry the request later")
METHOD_NOT_OFFERED = _kind("method_not_offered", 409, "this method is not offered by the step-up challenge")
NO_STEP_UP_METHOD = _kind(
    "no_step_up_method", 403,
    "no enrolled factor of yours reaches the authentication this request needs: enrol one first")
STEP_UP_TOKEN_INVALID = _kind("step_up_token_invalid", 401, "the step-up token is not valid")
STEP_UP_TOKEN_USED = _kind("step_up_token_used", 401, "the step-up token has already been used")
STEP_UP_TOKEN_MISMATCH = _kind(
    "step_up_token_mismatch", 403, "the step-up token was issued for another request, token or device")
OTP_MALFORMED = _kind("otp_malformed", 400, "the one-time code must be 6 digits")
OTP_INVALID = _kind("otp_invalid", 403, "the one-time code is wrong")
OTP_REPLAYED = _kind("otp_replayed", 403, "this one-time code has already been used: wait for the next one")
OTP_EXPIRED = _kind("otp_expired", 410, "no valid one-time code: request a new one")
OTP_LOCKED = _kind(
    "otp_locked", 429, "too many wrong one-time codes: retry after the time in Retry-After")
OTP_THROTTLED = _kind("otp_throttled", 429, "wait before the next attempt: retry after the time in Retry-After")
SMS_COOLDOWN = _kind("sms_cooldown", 429, "a code was sent moments ago: retry after the time in Retry-After")
SMS_SEND_LIMITED = _kind("sms_send_limited", 429, "too many codes sent: retry after the time in Retry-After")
SMS_UNAVAILABLE = _kind("sms_unavailable", 503, "the text message could not be sent: try another method")
FACTOR_NOT_ENROLLED = _kind("factor_not_enrolled", 409, "this factor is not enrolled")
ENROLMENT_NOT_FOUND = _kind("enrolment_not_found", 404, "no enrolment of this factor is pending: start again")
PHONE_INVALID = _kind("phone_invalid", 400, "the phone number is not valid (E.164, e.g. +8613800000001)")
PHONE_UNKNOWN = _kind("phone_unknown", 409, "no phone number is on file for you: contact the broker")
FACE_IMAGE_INVALID = _kind("face_image_invalid", 400, "the image is not a JPEG or PNG")
FACE_FRAMES_INVALID = _kind("face_frames_invalid", 400, "a liveness check needs 3 to 5 frames")
FACE_CONSENT_REQUIRED = _kind(
    "face_consent_required", 403, "face processing needs your explicit consent first")
FACE_NOT_ENROLLED = _kind("face_not_enrolled", 409, "no face is enrolled for you")
FACE_REPLAYED = _kind("face_replayed", 409, "an image was submitted before: take new pictures")
FACE_IMAGE_TOO_LARGE = _kind("face_image_too_large", 413, "the image is too large")
FACE_NOT_FOUND = _kind("face_no_face", 422, "no face was found in the image")
FACE_MULTIPLE = _kind("face_multiple_faces", 422, "more than one face is in the image")
FACE_TOO_SMALL = _kind("face_too_small", 422, "the face is too small: come closer")
FACE_IDENTITY_MISMATCH = _kind(
    "face_identity_mismatch", 422, "the pictures do not show one and the same person")
FACE_LIVENESS_FAILED = _kind("face_liveness_failed", 422, "no blink was seen in the pictures")
FACE_MISMATCH = _kind("face_mismatch", 403, "the face does not match the enrolled one")
FACE_UNAVAILABLE = _kind("face_unavailable", 503, "the face check is not available: use another method")


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

# SM4-GCM envelopes and session keys (gateway/envelope.py, docs/CRYPTO.md)
ENVELOPE_MALFORMED = _kind("envelope_malformed", 400,
                           "the encrypted request's Portcullis-Envelope header is missing or malformed")
ENVELOPE_INVALID = _kind("envelope_invalid", 400,
                         "the encrypted body does not open: truncated, altered, or sealed for another request")
ENVELOPE_STALE = _kind("envelope_stale", 400, "the encrypted request's timestamp is outside the accepted window")
SESSION_KEY_UNKNOWN = _kind("session_key_unknown", 400, "the session key id is not known: agree a new session key")
AGREEMENT_KEY_UNKNOWN = _kind("agreement_key_unknown", 400,
                              "the gateway's key-agreement key has changed: fetch it again")
KEY_AGREEMENT_FAILED = _kind("key_agreement_failed", 400, "the key material does not decrypt")
SESSION_KEY_MISMATCH = _kind("session_key_mismatch", 403,
                             "the session key belongs to another customer or device")
ENVELOPE_REPLAYED = _kind("envelope_replayed", 409, "this encrypted message was received before")
SESSION_KEY_EXPIRED = _kind("session_key_expired", 410,
                            "the session key has expired or sealed its last message: agree a new one")
PERSONAL_DATA_ERASED = _kind("personal_data_erased", 410,
                             "this customer's personal data was erased: it can no longer be stored")
ENCRYPTION_REQUIRED = _kind("encryption_required", 415,
                            "this route accepts only encrypted bodies (application/sm4-gcm+json)")
RESPONSE_UNENCRYPTABLE = _kind("response_unencryptable", 502,
                               "the upstream's response cannot be encrypted for this session")
