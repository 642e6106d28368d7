"""The face check with the real face stack on the shared photos (biometrics/).

Photos come from ../shared/vectors/face at test time (never copied here).
Encodings cost 0.2-0.5 s each on this machine, so every photo is analysed
once per session (``analysed``). A real blink cannot be made from still
photos: the eye aspect ratio and the blink rule are tested on synthetic eye
landmarks, and the sequence checks on real photos that do not blink.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biometrics import faces, imaging, liveness, worker
from biometrics.errors import KINDS, BiometricError
from biometrics.evaluate import all_pairs, clopper_pearson_upper, identities
from biometrics.store import AesGcmTemplateCipher, FileTemplateStore, MemoryReplayStore

# img10, img11, img5: one person; img25 and img12: two others (master.csv labels).
SAME_A = ("img10.jpg", "img11.jpg", "img5.jpg")
OTHER = ("img25.jpg", "img12.jpg")


@pytest.fixture(scope="session")
def face_dir(vectors_dir: Path) -> Path:
    path = vectors_dir / "face" / "deepface"
    if not (path / "master.csv").is_file():
        pytest.skip(f"face photos not found at {path}")
    return path


@pytest.fixture(scope="session")
def photo(face_dir: Path) -> Callable[[str], bytes]:
    return lambda name: (face_dir / "images" / name).read_bytes()


@pytest.fixture(scope="session")
def analysed(photo: Callable[[str], bytes]) -> dict[str, worker.Analysis]:
    """Each photo the tests compare, through the service's own job, once per session."""
    return {name: worker.analyse_frame(photo(name)) for name in SAME_A + OTHER}


def encoding(result: worker.Analysis) -> np.ndarray:
    assert result.error is None and result.encoding is not None
    return np.frombuffer(result.encoding, dtype=np.float64)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------
# Verification on real photos


def test_same_person_matches_at_chosen_threshold(analysed: dict[str, worker.Analysis]) -> None:
    a, b, c = (encoding(analysed[n]) for n in SAME_A)
    assert faces.matches(a, b) and faces.matches(a, c) and faces.matches(b, c)


@pytest.mark.parametrize("other", OTHER)
def test_different_person_rejected(analysed: dict[str, worker.Analysis], other: str) -> None:
    for same in SAME_A:
        assert not faces.matches(encoding(analysed[same]), encoding(analysed[other]))


def test_threshold_is_stricter_than_face_recognition_default() -> None:
    assert faces.DEFAULT_THRESHOLD < 0.6


# --------------------------------------------------------------------------
# Bad input: each a stable code


def test_not_an_image_is_image_invalid() -> None:
    assert worker.analyse_frame(b"GIF89a not a photo").error == "image_invalid"


def test_truncated_jpeg_is_image_invalid(photo: Callable[[str], bytes]) -> None:
    assert worker.analyse_frame(photo("img25.jpg")[:2000]).error == "image_invalid"


def test_gif_is_refused_even_when_valid() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (50, 50)).save(buf, "GIF")
    with pytest.raises(BiometricError) as exc:
        imaging.decode(buf.getvalue())
    assert exc.value.code == "image_invalid"


def test_too_many_bytes_is_image_too_large() -> None:
    with pytest.raises(BiometricError) as exc:
        imaging.decode(b"\xff\xd8\xff" + bytes(imaging.MAX_IMAGE_BYTES))
    assert exc.value.code == "image_too_large"


def test_pixel_bomb_refused_before_decoding() -> None:
    # 6000 x 5000 one-bit PNG: ~4 KB on the wire, 90 MB once decoded to RGB.
    bomb = png(Image.new("1", (6000, 5000)))
    assert len(bomb) < 100_000
    with pytest.raises(BiometricError) as exc:
        imaging.decode(bomb)
    assert exc.value.code == "image_too_large"


def test_no_face_in_a_gradient() -> None:
    yy, xx = np.mgrid[0:300, 0:300]
    grad = Image.fromarray(np.stack([(xx + yy) % 256] * 3, axis=-1).astype(np.uint8))
    assert worker.analyse_frame(png(grad)).error == "no_face"


def test_two_faces_is_multiple_faces(photo: Callable[[str], bytes]) -> None:
    a = Image.open(io.BytesIO(photo("img10.jpg"))).convert("RGB")
    b = Image.open(io.BytesIO(photo("img25.jpg"))).convert("RGB").resize(a.size)
    both = Image.new("RGB", (a.width * 2, a.height))
    both.paste(a, (0, 0))
    both.paste(b, (a.width, 0))
    assert worker.analyse_frame(jpeg(both)).error == "multiple_faces"


def test_every_code_has_a_4xx_or_503_status() -> None:
    assert all(400 <= k.status < 500 or k.status == 503 for k in KINDS.values())
    assert {"image_invalid", "image_too_large", "no_face", "multiple_faces", "identity_mismatch",
            "liveness_failed", "replayed_frame", "consent_required"} <= set(KINDS)


# --------------------------------------------------------------------------
# Liveness: eye aspect ratio on synthetic landmarks (photos cannot blink)


def eye(openness: float, width: float = 30.0) -> np.ndarray:
    """Six landmarks of an eye, 68-point order: corner, two upper, corner, two lower."""
    h = openness * width  # EAR = (2 * 2h/2... ) chosen so that EAR == openness
    return np.array([(0, 0), (width / 3, -h), (2 * width / 3, -h), (width, 0),
                     (2 * width / 3, h), (width / 3, h)], dtype=np.float64) / 1.0


def test_ear_of_open_and_closed_eyes() -> None:
    assert liveness.eye_aspect_ratio(eye(0.15)) == pytest.approx(0.30)
    assert liveness.eye_aspect_ratio(eye(0.03)) == pytest.approx(0.06)


def test_ear_of_degenerate_eye_is_zero() -> None:
    assert liveness.eye_aspect_ratio(np.zeros((6, 2))) == 0.0


def test_face_ear_averages_both_eyes() -> None:
    shape = np.zeros((68, 2))
    shape[liveness.RIGHT_EYE] = eye(0.15) + (100, 100)
    shape[liveness.LEFT_EYE] = eye(0.05) + (160, 100)
    assert liveness.face_ear(shape) == pytest.approx(0.20)


@pytest.mark.parametrize(("ears", "blink"), [
    ([0.30, 0.08, 0.31], True),             # open, closed, open
    ([0.29, 0.30, 0.10, 0.12, 0.28], True),
    ([0.30, 0.30, 0.30], False),            # never closes: a photo
    ([0.08, 0.30, 0.31], False),            # closed first, never again
    ([0.30, 0.31, 0.08], False),            # does not reopen
    ([0.30, 0.24, 0.31], False),            # a squint is not a blink
    ([0.20, 0.10, 0.20], False),            # never clearly open
])
def test_blink_rule(ears: list[float], blink: bool) -> None:
    assert liveness.has_blink(ears) is blink


def test_tracking_refuses_a_face_that_jumps() -> None:
    shape = np.random.default_rng(1).uniform(0, 100, (68, 2))
    with pytest.raises(BiometricError) as exc:
        liveness.check_one_person([(0.1, 0.1, 0.4, 0.5), (0.6, 0.1, 0.9, 0.5)], [shape, shape])
    assert exc.value.code == "identity_mismatch"


def test_tracking_accepts_a_small_move_and_rescale() -> None:
    shape = np.random.default_rng(2).uniform(0, 100, (68, 2))
    moved = shape * 1.05 + 3
    liveness.check_one_person([(0.3, 0.3, 0.6, 0.7), (0.31, 0.3, 0.61, 0.71)], [shape, moved])


def test_still_photo_sequence_fails_liveness(photo: Callable[[str], bytes]) -> None:
    # Three fresh captures of one still photo: one face, tracked, but no blink.
    base = Image.open(io.BytesIO(photo("img10.jpg"))).convert("RGB")
    frames = [jpeg(base, q) for q in (92, 85, 78)]
    assert worker.analyse_sequence(frames).error == "liveness_failed"


def test_two_people_in_one_sequence_is_identity_mismatch(photo: Callable[[str], bytes]) -> None:
    a = Image.open(io.BytesIO(photo("img10.jpg"))).convert("RGB")
    frames = [jpeg(a, 92), jpeg(a, 85), photo("img25.jpg")]
    assert worker.analyse_sequence(frames).error == "identity_mismatch"


def test_sequence_length_is_checked() -> None:
    assert worker.analyse_sequence([b"x"] * 2).error == "frames_invalid"
    assert worker.analyse_sequence([b"x"] * 6).error == "frames_invalid"


# --------------------------------------------------------------------------
# Replays


def test_reencoded_photo_is_a_replay(photo: Callable[[str], bytes], analysed: dict[str, worker.Analysis]) -> None:
    store = MemoryReplayStore()
    store.remember("alice", analysed["img10.jpg"].frame_hashes)
    img = Image.open(io.BytesIO(photo("img10.jpg"))).convert("RGB")
    img.thumbnail((300, 300))
    again = imaging.frame_hash(imaging.decode(jpeg(img, 60)))
    assert store.seen("alice", [again])
    assert not store.seen("bob", [again])


def test_other_photo_of_same_person_is_not_a_replay(analysed: dict[str, worker.Analysis]) -> None:
    store = MemoryReplayStore()
    store.remember("alice", analysed["img10.jpg"].frame_hashes)
    assert not store.seen("alice", analysed["img11.jpg"].frame_hashes)


def test_replay_memory_is_bounded_and_expires() -> None:
    now = [1000.0]
    far = (1 << 256) - 1  # 250+ bits from every small number
    store = MemoryReplayStore(per_customer=2, max_customers=2, ttl=60, clock=lambda: now[0])
    store.remember("a", [far, 0, 1])
    assert store.seen("a", [1]) and store.seen("a", [3])  # within a few bits
    assert not store.seen("a", [far])  # forgotten: only the last two per customer are kept
    store.remember("b", [far])
    store.remember("c", [far])
    assert not store.seen("a", [0])  # evicted: least recent customer
    assert store.seen("c", [far])
    now[0] += 61
    assert not store.seen("c", [far])  # expired


# --------------------------------------------------------------------------
# Templates at rest


def test_template_is_stored_sealed_and_deletable(tmp_path: Path,
                                                 analysed: dict[str, worker.Analysis]) -> None:
    cipher = AesGcmTemplateCipher.from_key_file(tmp_path / "key", create=True)
    store = FileTemplateStore(tmp_path / "tpl", cipher)
    enc = encoding(analysed["img10.jpg"])
    store.put("alice", enc)
    path = store.path_for("alice")
    raw = path.read_bytes()
    doc = json.loads(raw)
    assert set(doc) == {"v", "alg", "kid", "nonce", "ct"}
    assert enc.tobytes() not in raw and enc.tobytes() not in base64.b64decode(doc["ct"])
    assert enc.astype("<f4").tobytes()[:16] not in raw
    assert repr(float(enc[0]))[:8] not in raw.decode()
    assert "alice" not in path.name
    assert path.stat().st_mode & 0o077 == 0
    assert np.array_equal(store.get("alice"), enc)
    assert store.delete("alice") and not path.exists() and store.get("alice") is None


def test_template_moved_to_another_customer_does_not_open(tmp_path: Path) -> None:
    cipher = AesGcmTemplateCipher.from_key_file(tmp_path / "key", create=True)
    store = FileTemplateStore(tmp_path / "tpl", cipher)
    store.put("alice", np.ones(128))
    store.path_for("alice").rename(store.path_for("mallory"))
    from cryptography.exceptions import InvalidTag
    with pytest.raises(InvalidTag):
        store.get("mallory")


# --------------------------------------------------------------------------
# The evaluation's statistics and pairs


def test_clopper_pearson_zero_failures_matches_closed_form() -> None:
    assert clopper_pearson_upper(0, 312) == pytest.approx(1 - 0.05 ** (1 / 312), rel=1e-6)
    assert clopper_pearson_upper(0, 3000) < 0.001 < clopper_pearson_upper(0, 2000)


def test_master_csv_identities_and_pairs(face_dir: Path) -> None:
    ident, labelled = identities(face_dir / "master.csv")
    assert len(labelled) == 300 and sum(p.same for p in labelled) == 38
    assert len(set(ident.values())) == 9
    # master.csv already holds every pair of its 25 images: nothing further to form from them alone.
    assert len(all_pairs(ident, labelled)) == 300


# --------------------------------------------------------------------------
# A broken face stack is reported, not fatal


def test_setuptools_trap_is_reported_not_an_exit() -> None:
    # face_recognition calls quit() when face_recognition_models cannot be imported (setuptools>=82
    # removed the pkg_resources it needs); blocking that import reproduces the trap in a child process.
    import subprocess
    import sys

    code = ("import sys; sys.modules['face_recognition_models'] = None\n"
            "from biometrics import worker\n"
            "print('REASON', worker.self_check())\n"
            "print('STILL RUNNING')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "STILL RUNNING" in out.stdout
    assert "REASON face_recognition exited on import" in out.stdout and "setuptools" in out.stdout
