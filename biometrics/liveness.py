"""Active liveness, pure logic: eye aspect ratio, blink in a sequence, one face throughout.

The eye aspect ratio (Soukupova and Cech, 2016) over the 68-point model's eye
landmarks (36-41 right eye, 42-47 left eye, as the subject sees them)::

    EAR = (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)

is ~0.25-0.35 for an open eye and falls towards 0.05-0.15 when it closes.
A blink is an open frame, later a closed one, later an open one again.

What this stops and what it does not is in docs/THREAT_MODEL.md: a printed
photo cannot blink; a video on a screen, or a mask with eye holes, can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from biometrics.errors import BiometricError

RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
# Points that do not move with a blink or a smile: jaw line, brows, nose.
_RIGID = np.r_[0:27, 27:36]

MIN_FRAMES = 3
MAX_FRAMES = 5


@dataclass(frozen=True, slots=True)
class BlinkRule:
    open_min: float = 0.22       # an eye this open or more counts as open
    closed_max: float = 0.19     # a frame at or below this counts as closed...
    closed_ratio: float = 0.75   # ...and at most this fraction of the open frames' mean
    min_iou: float = 0.4         # consecutive face boxes overlap at least this much
    # Rigid-landmark RMS drift between frames, in face widths: a re-captured still measures ~0.006,
    # different people at a similar pose 0.024-0.071 on the shared photos; 0.03 is a first guess to
    # be checked on real captured sequences (docs/BIOMETRICS.md).
    max_shape_drift: float = 0.03


DEFAULT_RULE = BlinkRule()


def eye_aspect_ratio(eye: NDArray[np.float64]) -> float:
    """EAR of one eye given its six landmarks, in the 68-point model's order."""
    if eye.shape != (6, 2):
        raise ValueError("an eye has six (x, y) landmarks")
    vertical = np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])
    horizontal = np.linalg.norm(eye[0] - eye[3])
    if horizontal <= 0:
        return 0.0
    return float(vertical / (2.0 * horizontal))


def face_ear(shape68: NDArray[np.float64]) -> float:
    """Mean EAR of both eyes."""
    return (eye_aspect_ratio(shape68[RIGHT_EYE]) + eye_aspect_ratio(shape68[LEFT_EYE])) / 2.0


def has_blink(ears: Sequence[float], rule: BlinkRule = DEFAULT_RULE) -> bool:
    """True when some frame is closed with an open frame before it and another after it."""
    for i in range(1, len(ears) - 1):
        before = [e for e in ears[:i] if e >= rule.open_min]
        after = [e for e in ears[i + 1:] if e >= rule.open_min]
        if not before or not after:
            continue
        open_mean = (max(before) + max(after)) / 2.0
        if ears[i] <= rule.closed_max and ears[i] <= rule.closed_ratio * open_mean:
            return True
    return False


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, right - left) * max(0.0, bottom - top)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def shape_drift(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """RMS distance of the rigid landmarks after a similarity alignment, in face widths."""
    pa, pb = a[_RIGID], b[_RIGID]
    pa = pa - pa.mean(axis=0)
    pb = pb - pb.mean(axis=0)
    na, nb = np.linalg.norm(pa), np.linalg.norm(pb)
    if na == 0 or nb == 0:
        return float("inf")
    pa, pb = pa / na, pb / nb
    # Orthogonal Procrustes: the rotation that best maps b onto a.
    u, _, vt = np.linalg.svd(pb.T @ pa)
    aligned = pb @ (u @ vt)
    rms = float(np.sqrt(((aligned - pa) ** 2).sum(axis=1).mean()))
    # Unit-norm shapes: scale the RMS back to face widths for a readable bound.
    width = float(np.ptp(a[_RIGID][:, 0])) / na if na else 1.0
    return float(rms / width) if width > 0 else float("inf")


def check_one_person(boxes: Sequence[tuple[float, float, float, float]],
                     shapes: Sequence[NDArray[np.float64]], rule: BlinkRule = DEFAULT_RULE) -> None:
    """identity_mismatch unless each frame's face continues the previous frame's.

    Boxes are in frame-relative units (0-1) so frames of different sizes compare.
    This tracks one face through the sequence; the identity itself is the
    encoded frame's comparison with the enrolled template.
    """
    for i in range(1, len(boxes)):
        if box_iou(boxes[i - 1], boxes[i]) < rule.min_iou:
            raise BiometricError("identity_mismatch", "the face jumped between frames")
        if shape_drift(shapes[i - 1], shapes[i]) > rule.max_shape_drift:
            raise BiometricError("identity_mismatch", "the face shape changed between frames")
