"""Image decoding with limits, and perceptual hashes for replay detection.

Untrusted bytes go through :func:`decode` only. It checks, in order: the byte
cap, the format (JPEG or PNG by magic number and by Pillow's own answer), the
pixel count from the header *before* any pixel is decoded (decompression-bomb
guard), then decodes straight to a working size (JPEG DCT scaling where it
can) so a 20-megapixel selfie costs what a 0.3-megapixel one does downstream.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from biometrics.errors import BiometricError

MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_PIXELS = 24_000_000
# Longest side the detector sees. Selfie faces stay well above the HOG detector's
# 80-px minimum and the encoder's 150-px chip; the eval threshold is measured at it.
WORK_SIDE = 480
_FORMATS = {"JPEG", "PNG"}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    work_side: int = WORK_SIDE


DEFAULT_LIMITS = Limits()


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> NDArray[np.uint8]:
    """An RGB array (height, width, 3) no larger than ``limits.work_side`` on its longest side."""
    if len(data) > limits.max_bytes:
        raise BiometricError("image_too_large", f"image over {limits.max_bytes} bytes")
    if not data.startswith(_MAGIC):
        raise BiometricError("image_invalid")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning/error is a second line of defence; ours comes first.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            src = Image.open(io.BytesIO(data), formats=sorted(_FORMATS))
            width, height = src.size
            if width <= 0 or height <= 0:
                raise BiometricError("image_invalid")
            if width * height > limits.max_pixels:
                raise BiometricError("image_too_large", f"image over {limits.max_pixels} pixels")
            side = limits.work_side
            if src.format == "JPEG":
                src.draft("RGB", (side, side))
            im: Image.Image = ImageOps.exif_transpose(src) or src
            im = im.convert("RGB")
            im.thumbnail((side, side))
            arr = np.asarray(im, dtype=np.uint8)
    except BiometricError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BiometricError("image_too_large", f"image over {limits.max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError):  # UnidentifiedImageError is an OSError
        # Truncated, corrupt or not an image: the cause may hold image bytes, so drop it.
        raise BiometricError("image_invalid") from None
    return np.ascontiguousarray(arr)


def frame_hash(rgb: NDArray[np.uint8]) -> int:
    """A 256-bit difference hash (dHash over a 17x16 grey thumbnail) of a decoded frame.

    Re-encoding, rescaling or slight recompression of the same picture moves a
    few bits; a different picture moves many. Only the hash is kept, never pixels.
    """
    grey = Image.fromarray(rgb).convert("L").resize((17, 16), Image.Resampling.BILINEAR)
    px = np.asarray(grey, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def byte_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
