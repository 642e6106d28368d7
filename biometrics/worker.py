"""Jobs that run in the service's process pool: decode, detect, landmarks, encode.

Each worker loads the face stack once, on its first job. Jobs return plain
picklable results; no template, key or consent record ever enters a worker,
and nothing here logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from biometrics import faces, imaging, liveness
from biometrics.errors import BiometricError

_engine: faces.FaceEngine | None = None
_engine_error: str | None = None


def engine() -> faces.FaceEngine:
    global _engine, _engine_error
    if _engine is None:
        if _engine_error is not None:
            raise BiometricError("face_unavailable", _engine_error)
        try:
            _engine = faces.load_engine()
        except faces.FaceStackUnavailable as exc:
            _engine_error = str(exc)
            raise BiometricError("face_unavailable", _engine_error) from None
    return _engine


@dataclass(slots=True)
class Analysis:
    """What a job found. ``error`` is a stable code; hashes are set for every decoded frame."""

    encoding: bytes | None = None  # 128 float64, only for a successful job
    frame_hashes: list[int] = field(default_factory=list)
    error: str | None = None
    message: str | None = None


def self_check() -> str | None:
    """None when the face stack imports and computes, else why not."""
    try:
        faces.self_check(engine())
    except BiometricError as exc:
        return exc.message
    except faces.FaceStackUnavailable as exc:
        return str(exc)
    except Exception as exc:  # a dlib error on the synthetic image means a broken stack
        return f"self-check failed: {type(exc).__name__}"
    return None


def warm() -> None:
    """Load the models (called once per worker at start so the first request is not slow)."""
    try:
        engine()
    except BiometricError:
        pass


def analyse_frame(data: bytes, limits: imaging.Limits = imaging.DEFAULT_LIMITS) -> Analysis:
    """One frame: decode, exactly one face, its encoding."""
    out = Analysis()
    try:
        rgb = imaging.decode(data, limits)
        out.frame_hashes.append(imaging.frame_hash(rgb))
        eng = engine()
        rect = eng.one_face(rgb)
        out.encoding = eng.encode(rgb, rect).tobytes()
    except BiometricError as exc:
        out.error, out.message = exc.code, exc.message
    return out


def analyse_sequence(frames: Sequence[bytes], limits: imaging.Limits = imaging.DEFAULT_LIMITS,
                     rule: liveness.BlinkRule = liveness.DEFAULT_RULE) -> Analysis:
    """A liveness sequence: one face per frame, tracked, a blink, one encoded frame.

    Every frame is decoded and detected with 68 landmarks; only the frame with
    the most open eyes is encoded (one ~150 ms encoding, not five).
    """
    out = Analysis()
    try:
        if not liveness.MIN_FRAMES <= len(frames) <= liveness.MAX_FRAMES:
            raise BiometricError("frames_invalid")
        decoded = []
        for data in frames:
            rgb = imaging.decode(data, limits)
            out.frame_hashes.append(imaging.frame_hash(rgb))
            decoded.append(rgb)
        eng = engine()
        rects, boxes, shapes, ears = [], [], [], []
        for rgb in decoded:
            rect = eng.one_face(rgb)
            h, w = rgb.shape[:2]
            left, top, right, bottom = faces.box_of(rect)
            shape = eng.landmarks68(rgb, rect)
            rects.append(rect)
            boxes.append((left / w, top / h, right / w, bottom / h))
            shapes.append(shape)
            ears.append(liveness.face_ear(shape))
        liveness.check_one_person(boxes, shapes, rule)
        if not liveness.has_blink(ears, rule):
            raise BiometricError("liveness_failed")
        best = int(np.argmax(ears))
        out.encoding = eng.encode(decoded[best], rects[best]).tobytes()
    except BiometricError as exc:
        out.error, out.message = exc.code, exc.message
    return out
