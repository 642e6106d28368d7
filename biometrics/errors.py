"""Every failure the face service reports, with its stable code and HTTP status.

Responses carry ``{"error": code, "message": text}``; the gateway maps the code
into its own audit records, so codes never change once shipped.

Tree (status: codes)::

    BiometricError
    ├── 400 bad request ......... bad_request, image_invalid, frames_invalid
    ├── 401 unauthenticated ..... unauthorized
    ├── 403 forbidden ........... consent_required
    ├── 404 not found ........... not_enrolled
    ├── 409 conflict ............ replayed_frame
    ├── 413 too large ........... image_too_large, body_too_large
    ├── 422 unprocessable ....... no_face, multiple_faces, face_too_small,
    │                             identity_mismatch, liveness_failed
    └── 503 unavailable ......... face_unavailable, busy
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """A stable error code, its HTTP status and a default message."""

    code: str
    status: int
    message: str


_KINDS = (
    ErrorKind("bad_request", 400, "the request is malformed"),
    ErrorKind("image_invalid", 400, "the data is not a JPEG or PNG image"),
    ErrorKind("frames_invalid", 400, "a liveness sequence needs 3 to 5 frames"),
    ErrorKind("unauthorized", 401, "missing or wrong service secret"),
    ErrorKind("consent_required", 403, "the customer has not consented to face processing"),
    ErrorKind("not_enrolled", 404, "no face template is enrolled for this customer"),
    ErrorKind("replayed_frame", 409, "an image was submitted before"),
    ErrorKind("image_too_large", 413, "the image exceeds the byte or pixel limit"),
    ErrorKind("body_too_large", 413, "the request body exceeds the limit"),
    ErrorKind("no_face", 422, "no face found in the image"),
    ErrorKind("multiple_faces", 422, "more than one face in the image"),
    ErrorKind("face_too_small", 422, "the face is too small to check"),
    ErrorKind("identity_mismatch", 422, "the frames do not show one and the same person"),
    ErrorKind("liveness_failed", 422, "the frames do not contain a blink"),
    ErrorKind("face_unavailable", 503, "the face stack is not working on this server"),
    ErrorKind("busy", 503, "too many face checks queued; retry later"),
)

KINDS: dict[str, ErrorKind] = {k.code: k for k in _KINDS}


class BiometricError(Exception):
    """A failure with a stable code; ``message`` never contains biometric data."""

    def __init__(self, code: str, message: str | None = None) -> None:
        kind = KINDS[code]
        self.code = code
        self.status = kind.status
        self.message = message or kind.message
        super().__init__(code, self.message)

    def __reduce__(self) -> tuple[type[BiometricError], tuple[str, str]]:
        # Raised in pool workers and re-raised in the service: keep it picklable.
        return (type(self), (self.code, self.message))

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}
