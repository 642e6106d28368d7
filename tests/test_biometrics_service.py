"""The face service as its own process on loopback, through the gateway's client.

One service process per session (``python -m biometrics serve``, a real
process pool, the real face stack: the ``face_service`` fixture in
conftest.py, shared with test_step_up_face.py); each test uses its own customer id.
"""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from biometrics.client import BiometricsClient, FaceServiceError
from tests.conftest import FaceServiceProcess


@pytest.fixture
def service(face_service: FaceServiceProcess) -> tuple[str, bytes]:
    """The session's face service (tests/conftest.py): (url, secret)."""
    return face_service.url, face_service.secret


@pytest.fixture
def photos(vectors_dir: Path) -> dict[str, bytes]:
    d = vectors_dir / "face" / "deepface" / "images"
    if not d.is_dir():
        pytest.skip(f"face photos not found at {d}")
    return {n: (d / n).read_bytes() for n in ("img10.jpg", "img11.jpg", "img5.jpg", "img25.jpg")}


def _customer() -> str:
    return "cust-" + secrets.token_hex(4)


async def _code(coro: object) -> str:
    with pytest.raises(FaceServiceError) as exc:
        await coro  # type: ignore[misc]
    return exc.value.code


async def test_healthz_reports_face_available(service: tuple[str, bytes]) -> None:
    async with BiometricsClient(service[0], service[1], timeout=20) as c:
        health = await c.health()
        assert health["face"] == "available", health
        assert await c.face_available()


async def test_requests_without_the_secret_are_refused(service: tuple[str, bytes]) -> None:
    async with BiometricsClient(service[0], b"x" * 40) as c:
        assert await _code(c.consent("alice", True, "v1")) == "unauthorized"
    async with aiohttp.ClientSession() as s, s.post(service[0] + "/v1/verify", json={}) as r:
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"


async def test_enrol_needs_consent_first(service: tuple[str, bytes], photos: dict[str, bytes]) -> None:
    async with BiometricsClient(service[0], service[1], timeout=20) as c:
        assert await _code(c.enrol(_customer(), photos["img10.jpg"])) == "consent_required"


async def test_enrol_verify_replay_delete(service: tuple[str, bytes], photos: dict[str, bytes]) -> None:
    who = _customer()
    async with BiometricsClient(service[0], service[1], timeout=20) as c:
        await c.consent(who, True, "face-v1")
        await c.enrol(who, photos["img10.jpg"])
        assert await c.verify(who, photos["img11.jpg"]) is True       # same person, other photo
        assert await c.verify(who, photos["img25.jpg"]) is False      # someone else
        assert await _code(c.verify(who, photos["img11.jpg"])) == "replayed_frame"
        assert await _code(c.verify(who, photos["img10.jpg"])) == "replayed_frame"  # the enrolment photo
        assert await c.delete(who) is True
        assert await _code(c.verify(who, photos["img5.jpg"])) == "not_enrolled"


async def test_withdrawing_consent_deletes_the_template(service: tuple[str, bytes],
                                                        photos: dict[str, bytes]) -> None:
    who = _customer()
    async with BiometricsClient(service[0], service[1], timeout=20) as c:
        await c.consent(who, True, "face-v1")
        await c.enrol(who, photos["img5.jpg"])
        await c.consent(who, False, "face-v1")
        assert await _code(c.verify(who, photos["img11.jpg"])) == "consent_required"
        await c.consent(who, True, "face-v1")
        assert await _code(c.verify(who, photos["img11.jpg"])) == "not_enrolled"


async def test_bad_images_get_stable_codes(service: tuple[str, bytes], photos: dict[str, bytes]) -> None:
    who = _customer()
    buf = io.BytesIO()
    Image.new("1", (6000, 5000)).save(buf, "PNG")
    async with BiometricsClient(service[0], service[1], timeout=20) as c:
        await c.consent(who, True, "face-v1")
        assert await _code(c.enrol(who, b"not an image")) == "image_invalid"
        assert await _code(c.enrol(who, buf.getvalue())) == "image_too_large"
        assert await _code(c.enrol(who, b"\xff\xd8\xff" + bytes(5 * 1024 * 1024))) == "image_too_large"
        grey = io.BytesIO()
        Image.new("RGB", (300, 300), (128, 128, 128)).save(grey, "PNG")
        assert await _code(c.enrol(who, grey.getvalue())) == "no_face"


async def test_liveness_of_a_still_photo_fails(service: tuple[str, bytes], photos: dict[str, bytes]) -> None:
    who = _customer()
    base = Image.open(io.BytesIO(photos["img10.jpg"])).convert("RGB")
    frames = []
    for q in (93, 86, 79):
        buf = io.BytesIO()
        base.save(buf, "JPEG", quality=q)
        frames.append(buf.getvalue())
    async with BiometricsClient(service[0], service[1], timeout=20) as c:
        await c.consent(who, True, "face-v1")
        await c.enrol(who, photos["img11.jpg"])
        assert await _code(c.liveness(who, [frames[0]] * 3)) == "replayed_frame"
        assert await _code(c.liveness(who, frames[:2])) == "frames_invalid"
        assert await _code(c.liveness(who, frames)) == "liveness_failed"
        # The same frames again are replays of an earlier submission.
        assert await _code(c.liveness(who, frames)) == "replayed_frame"


async def test_malformed_bodies_are_bad_request(service: tuple[str, bytes]) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer " + service[1].decode()}) as s:
        async with s.post(service[0] + "/v1/verify", data=b"{nope") as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_request"
        async with s.post(service[0] + "/v1/verify", json={"customer": "../etc", "image": ""}) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_request"
