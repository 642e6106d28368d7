"""The face stack (face_recognition on dlib): detection, landmarks, encodings, distance.

Loading is explicit and never exits the process: ``face_recognition`` calls
``quit()`` when ``face_recognition_models`` cannot be imported (the
setuptools>=82 trap in DESIGN.md), so :func:`load_engine` catches
``SystemExit`` too and turns it into :class:`FaceStackUnavailable`.

These functions are CPU-bound (detection ~40-90 ms, encoding ~100-250 ms on
one core here); the service runs them in a process pool, never on its loop.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from biometrics.errors import BiometricError

# Chosen by `portcullis biometrics eval` on ../shared/vectors/face (docs/BIOMETRICS.md).
# face_recognition's default is 0.6; ours is stricter.
DEFAULT_THRESHOLD = 0.5
# The encoder aligns to a 150-px chip; a face box much smaller than that is upscaled noise.
MIN_FACE_SIDE = 60

Encoding = NDArray[np.float64]


class FaceStackUnavailable(RuntimeError):
    """The face stack cannot be imported or does not compute (message says why)."""


@dataclass(frozen=True, slots=True)
class Face:
    box: tuple[int, int, int, int]  # left, top, right, bottom in the decoded frame
    shape68: NDArray[np.float64] | None  # (68, 2) landmarks when asked for


class FaceEngine:
    """Thin wrapper over face_recognition's loaded dlib models."""

    def __init__(self, api: Any) -> None:
        self._detector = api.face_detector
        self._pose5 = api.pose_predictor_5_point
        self._pose68 = api.pose_predictor_68_point
        self._encoder = api.face_encoder
        self._dlib = api.dlib

    def detect(self, rgb: NDArray[np.uint8], upsample: int = 0) -> list[Any]:
        """dlib rectangles of the faces the HOG detector finds."""
        return list(self._detector(rgb, upsample))

    def one_face(self, rgb: NDArray[np.uint8]) -> Any:
        """The only face's rectangle, or no_face / multiple_faces / face_too_small."""
        rects = self.detect(rgb, 0)
        if not rects:
            # Small faces need one upsampling pass; it costs ~4x, so only when needed.
            rects = self.detect(rgb, 1)
        if not rects:
            raise BiometricError("no_face")
        if len(rects) > 1:
            raise BiometricError("multiple_faces")
        rect = rects[0]
        if min(rect.width(), rect.height()) < MIN_FACE_SIDE:
            raise BiometricError("face_too_small")
        return rect

    def landmarks68(self, rgb: NDArray[np.uint8], rect: Any) -> NDArray[np.float64]:
        shape = self._pose68(rgb, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def encode(self, rgb: NDArray[np.uint8], rect: Any) -> Encoding:
        shape = self._pose5(rgb, rect)
        return np.array(self._encoder.compute_face_descriptor(rgb, shape, 1), dtype=np.float64)

    def rectangle(self, left: int, top: int, right: int, bottom: int) -> Any:
        return self._dlib.rectangle(left, top, right, bottom)


def box_of(rect: Any) -> tuple[int, int, int, int]:
    return (int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()))


def distance(a: Encoding, b: Encoding) -> float:
    return float(np.linalg.norm(a - b))


def matches(a: Encoding, b: Encoding, threshold: float = DEFAULT_THRESHOLD) -> bool:
    return distance(a, b) <= threshold


def load_engine() -> FaceEngine:
    """Import face_recognition and wrap its models, or raise FaceStackUnavailable."""
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            warnings.simplefilter("ignore")  # pkg_resources deprecation from face_recognition_models
            import face_recognition.api as api
    except SystemExit:
        said = " ".join(out.getvalue().split())[:200]
        raise FaceStackUnavailable(
            "face_recognition exited on import (face_recognition_models unusable; is setuptools>=82 "
            f"installed? DESIGN.md pins setuptools<82): {said}") from None
    except Exception as exc:  # ImportError, OSError from dlib, a missing model file
        raise FaceStackUnavailable(f"face stack import failed: {type(exc).__name__}: {exc}") from None
    # face_recognition turns on Pillow's LOAD_TRUNCATED_IMAGES for the whole process; a truncated
    # upload must stay image_invalid, not become a grey-padded picture.
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return FaceEngine(api)


def self_check(engine: FaceEngine) -> None:
    """Run detection, both landmark models and the encoder on a synthetic image.

    No photo is bundled: a grey gradient has no face (detection must return
    none without error), and the landmark and encoder networks must give
    finite outputs of the right shape on a fixed box in it.
    """
    yy, xx = np.mgrid[0:160, 0:160]
    rgb = np.ascontiguousarray(np.stack([(xx + yy) % 256] * 3, axis=-1).astype(np.uint8))
    if engine.detect(rgb, 0):
        raise FaceStackUnavailable("self-check: the detector found a face in a gradient")
    rect = engine.rectangle(20, 20, 140, 140)
    pts = engine.landmarks68(rgb, rect)
    enc = engine.encode(rgb, rect)
    if pts.shape != (68, 2) or enc.shape != (128,) or not all(math.isfinite(v) for v in enc):
        raise FaceStackUnavailable("self-check: landmark or encoder output has the wrong shape")
