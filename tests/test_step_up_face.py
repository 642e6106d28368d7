"""The face method of step-up end to end: a real gateway, the real demo backend and the REAL face service.

The face service is its own process (``python -m biometrics serve``, the session's ``face_service``
fixture in conftest.py) and the gateway reaches it through ``[step_up] face_url`` and
``face_secret_file``, exactly as deployed. The photos are the shared vectors' deepface set:
img10 (enrolled), img11 and img5 are the same person, img25 another one. The policy, the
recording SMS sender and the client helpers are those of test_step_up_flow.py.

Most tests run with ``face_liveness = false`` (one photo per answer: the vectors hold no blink
sequences). Every test uses the customer alice (the demo backend's A1, so a transfer goes through)
and first withdraws her consent on the face service, which deletes her template and the service's
replay memory of her photos.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from PIL import Image

from biometrics.client import BiometricsClient, FaceServiceError
from gateway.mfa.handlers import MAX_IMAGE
from gateway.notify import MemoryNotifier
from tests.conftest import FaceServiceProcess
from tests.test_step_up_flow import BIG, FACE, MFA, Client, RecordingSms, order, pass_with_sms, stack

# A transfer the demo backend carries out (alice's own bank account).
TRANSFER = {"direction": "out", "amount": 1000, "bank_account_id": "bank-a1-1"}
SUB = "alice"
CONSENT = {"granted": True, "text_version": "face-v1"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def photos(vectors_dir: Path) -> dict[str, bytes]:
    d = vectors_dir / "face" / "deepface" / "images"
    if not d.is_dir():
        pytest.skip(f"face photos not found at {d}")
    out = {n: (d / f"{n}.jpg").read_bytes() for n in ("img10", "img11", "img5", "img25")}
    grey = io.BytesIO()
    Image.new("RGB", (300, 300), (128, 128, 128)).save(grey, "PNG")
    out["no_face"] = grey.getvalue()
    return out


@pytest.fixture
async def face(face_service: FaceServiceProcess) -> AsyncIterator[BiometricsClient]:
    """A client of the face service itself (to look behind the gateway); alice starts with nothing there."""
    async with BiometricsClient(face_service.url, face_service.secret, timeout=20) as client:
        await client.consent(SUB, False, "face-v1")  # withdrawal deletes the template and the replay memory
        yield client


def face_config(service: FaceServiceProcess, **step_up: Any) -> dict[str, Any]:
    # Buckets wide enough for a whole test's requests (the per-customer limits have tests of their own).
    return {"face_url": service.url, "face_secret_file": str(service.secret_file), "face_liveness": False,
            "cooling_off": 0, "per_minute": 600, "burst": 100, "face_per_minute": 600, "face_burst": 50, **step_up}


async def face_code(coro: Any) -> str:
    with pytest.raises(FaceServiceError) as exc:
        await coro
    return exc.value.code


async def answer(c: Client, cid: str, image: bytes | str) -> tuple[int, Any]:
    return await c.mfa("POST", f"challenges/{cid}/face", {"image": image if isinstance(image, str) else b64(image)})


async def enrol_face(c: Client, sms: RecordingSms, image: bytes) -> tuple[int, Any]:
    """PUT the face behind a step-up: a first factor, so a code to the phone on file proves the customer."""
    body = {"image": b64(image)}
    status, ch, headers = await c.call("PUT", "/auth/mfa/factors/face", body)
    assert status == 401 and ch["error"] == "insufficient_user_authentication", ch
    assert ch["methods"] == ["sms"] and ch["reasons"] == ["factor_change"] and ch["acr_values"] == MFA
    done = await pass_with_sms(c, sms, ch)
    assert done["binding"] == "transaction"
    status, doc, _ = await c.call("PUT", "/auth/mfa/factors/face", body, step_up=done["step_up_token"])
    return status, doc


async def consent_and_enrol(c: Client, sms: RecordingSms, image: bytes) -> None:
    status, doc = await c.mfa("POST", "factors/face/consent", CONSENT)
    assert (status, doc) == (200, {"granted": True, "text_version": "face-v1"})
    status, doc = await enrol_face(c, sms, image)
    assert status == 200 and doc["enrolled"] is True, doc


def audit_records(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((tmp / "audit").glob("*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def still_frames(photo: bytes) -> list[bytes]:
    """Three re-encodings of one still photo: distinct bytes, no blink."""
    base = Image.open(io.BytesIO(photo)).convert("RGB")
    frames = []
    for q in (93, 86, 79):
        buf = io.BytesIO()
        base.save(buf, "JPEG", quality=q)
        frames.append(buf.getvalue())
    return frames


class Cutoff:
    """A TCP relay in front of the face service; ``cut()`` stops it as a dying service would
    (listener closed, open connections dropped), without stopping the session's shared service."""

    def __init__(self, target: str) -> None:
        self._host, port = target.removeprefix("http://").rsplit(":", 1)
        self._port = int(port)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
        self._tasks += [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@asynccontextmanager
async def relay(target: str) -> AsyncIterator[Cutoff]:
    cutoff = Cutoff(target)
    await cutoff.start()
    try:
        yield cutoff
    finally:
        if cutoff._server is not None and cutoff._server.is_serving():
            await cutoff.cut()


# -- 1. consent, then enrolment behind a step-up -----------------------------------------------------


async def test_consent_then_enrolment_behind_an_sms_step_up(tmp_path: Path, face_service: FaceServiceProcess,
                                                             face: BiometricsClient,
                                                             photos: dict[str, bytes]) -> None:
    sms, notifier = RecordingSms(), MemoryNotifier()
    # A day's cooling-off: the new face approves orders at once, transfers only later.
    async with stack(tmp_path, sms=sms, notifier=notifier, **face_config(face_service, cooling_off=86_400)) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        status, factors = await c.mfa("GET", "factors")
        assert status == 200 and factors["face"] == {"enrolled": False, "available": True}, factors
        await consent_and_enrol(c, sms, photos["img10"])
        assert [(a.kind, a.recipient, a.fields["factor"], a.fields["change"]) for a in notifier.sent] == [
            ("mfa_factor_changed", SUB, "face", "added")]
        status, factors = await c.mfa("GET", "factors")
        assert factors["face"]["enrolled"] is True and factors["face"]["available"] is True, factors
        assert factors["face"]["usable_for_transfers_from"] > factors["face"]["enrolled_at"]
        # Behind the gateway: the service holds a template of alice now (the enrolment photo itself
        # is remembered as seen, so it can never be replayed as an answer).
        assert await face_code(face.verify(SUB, photos["img10"])) == "replayed_frame"

        # An order above 100 shares (the mfa level, no cooling-off): face is offered and approves it.
        big = order(BIG, "f1")
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", big)
        assert status == 401 and ch["methods"] == ["sms", "face"], ch
        status, done = await answer(c, ch["challenge_id"], photos["img11"])
        # The token names the level face reaches (the strongest), bound to this order alone.
        assert status == 200 and done["acr"] == FACE and "face" in done["amr"], done
        status, placed, _ = await c.call("POST", "/api/accounts/A1/orders", big, step_up=done["step_up_token"])
        assert status == 201, placed
        # A transfer needs the face level; the face is in its cooling-off and TOTP + SMS are not both there.
        status, doc, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER)
        assert (status, doc["error"]) == (403, "no_step_up_method"), doc
    actions = [r.get("action") for r in audit_records(tmp_path) if r.get("type") == "mfa"]
    assert actions.count("mfa_face_consent_granted") == 1 and actions.count("mfa_face_enrolled") == 1, actions


async def test_enrolment_without_consent_is_refused(tmp_path: Path, face_service: FaceServiceProcess,
                                                    face: BiometricsClient, photos: dict[str, bytes]) -> None:
    sms, notifier = RecordingSms(), MemoryNotifier()
    async with stack(tmp_path, sms=sms, notifier=notifier, **face_config(face_service)) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        status, doc = await enrol_face(c, sms, photos["img10"])
        assert (status, doc["error"]) == (403, "face_consent_required"), doc
        status, factors = await c.mfa("GET", "factors")
        assert factors["face"]["enrolled"] is False
        assert notifier.sent == []
        status, doc = await c.mfa("POST", "factors/face/consent", {"granted": "yes"})
        assert (status, doc["error"]) == (400, "bad_request")
        await s.gateway.audit.close()
    assert await face_code(face.verify(SUB, photos["img11"])) == "consent_required"
    # The write-ahead record of the attempted change is followed by its failure.
    actions = [(r.get("action"), r.get("code")) for r in audit_records(tmp_path) if r.get("type") == "mfa"]
    assert actions[-2:] == [("mfa_face_enrolled", None), ("mfa_face_enrolled_failed", "face_consent_required")]


# -- 3. a transfer approved by face; wrong answers --------------------------------------------------


async def test_a_transfer_approved_by_a_face_check(tmp_path: Path, face_service: FaceServiceProcess,
                                                   face: BiometricsClient, photos: dict[str, bytes],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms, **face_config(face_service)) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        status, ch, headers = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER)
        assert status == 401 and ch["acr_values"] == FACE and f'acr_values="{FACE}"' in headers["WWW-Authenticate"]
        # Face alone reaches the face level; SMS alone does not (TOTP + SMS would).
        assert ch["methods"] == ["face"], ch
        cid = ch["challenge_id"]
        status, doc = await answer(c, cid, photos["img25"])  # somebody else
        assert (status, doc["error"], doc.get("attempts_left"), doc["methods"]) == (403, "face_mismatch", 4, ["face"])
        status, done = await answer(c, cid, photos["img11"])  # alice, another photo
        assert status == 200, done
        assert done["acr"] == FACE and "face" in done["amr"] and done["binding"] == "transaction"
        status, doc, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER, step_up=done["step_up_token"])
        assert status == 201 and doc["status"] == "completed", doc
        status, doc, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER, step_up=done["step_up_token"])
        assert (status, doc["error"]) == (401, "step_up_token_used")
    # No image (nor any part of one) reaches the gateway's logs, its audit trail or the service's log.
    assert any(r.name.startswith("portcullis") for r in caplog.records)
    logged = "\n".join([caplog.text] + [repr(vars(r)) for r in caplog.records])
    audit = "".join(f.read_text() for f in (tmp_path / "audit").iterdir())
    service_log = face_service.log_file.read_text(errors="replace")
    for name in ("img10", "img11", "img25"):
        encoded = b64(photos[name])
        for chunk in (encoded[300:340], encoded[-40:]):
            assert chunk not in logged and chunk not in audit and chunk not in service_log, name
        assert repr(photos[name][100:120])[2:-1] not in logged


async def test_wrong_face_answers_are_counted_and_then_face_is_withdrawn(
        tmp_path: Path, face_service: FaceServiceProcess, face: BiometricsClient,
        photos: dict[str, bytes]) -> None:
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms, max_attempts=3, **face_config(face_service)) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        # Then an authenticator app: a second factor needs a step-up by the first (SMS or face).
        status, ch, _ = await c.call("POST", "/auth/mfa/factors/totp")
        assert status == 401 and ch["methods"] == ["sms", "face"], ch
        token = (await pass_with_sms(c, sms, ch))["step_up_token"]
        status, doc, _ = await c.call("POST", "/auth/mfa/factors/totp", step_up=token)
        assert status == 201, doc
        totp = pyotp.parse_uri(doc["otpauth_uri"])
        assert isinstance(totp, pyotp.TOTP)
        assert (await c.mfa("POST", "factors/totp/confirm", {"code": totp.now()}))[0] == 200

        status, ch, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER)
        assert status == 401 and ch["methods"] == ["totp", "sms", "face"], ch
        cid = ch["challenge_id"]
        # Refused before the face service is asked, not counted: too large, not base64, no image.
        status, doc = await answer(c, cid, "A" * (MAX_IMAGE * 4 // 3 + 8))
        assert (status, doc["error"]) == (413, "face_image_too_large") and "attempts_left" not in doc, doc
        status, doc = await answer(c, cid, "not base64!")
        assert (status, doc["error"]) == (400, "face_image_invalid") and "attempts_left" not in doc, doc
        status, doc = await c.mfa("POST", f"challenges/{cid}/face", {})
        assert (status, doc["error"]) == (400, "face_image_invalid")
        # Checked by the face service, counted.
        status, doc = await answer(c, cid, b"this is not an image at all")
        assert (status, doc["error"], doc.get("attempts_left")) == (400, "face_image_invalid", 2), doc
        status, doc = await answer(c, cid, photos["no_face"])
        assert (status, doc["error"], doc.get("attempts_left")) == (422, "face_no_face", 1), doc
        assert doc["methods"] == ["totp", "sms", "face"]
        status, doc = await answer(c, cid, photos["img25"])
        assert (status, doc["error"], doc.get("attempts_left")) == (403, "face_mismatch", 0), doc
        # Face is used up on this challenge; TOTP + SMS still reach the face level.
        assert doc["methods"] == ["totp", "sms"]
        status, state = await c.mfa("GET", f"challenges/{cid}")
        assert status == 200 and state["methods"] == ["totp", "sms"] and state["done"] == [], state
        status, doc = await answer(c, cid, photos["img11"])  # even the right face is not taken now
        assert (status, doc["error"], doc["methods"]) == (409, "method_not_offered", ["totp", "sms"]), doc
        status, first = await c.mfa("POST", f"challenges/{cid}/totp", {"code": totp.at(time.time() + 30)})
        assert (status, first["methods"]) == (202, ["sms"]), first
        done = await pass_with_sms(c, sms, ch)
        assert done["acr"] == FACE and "face" not in done["amr"], done
        status, doc, _ = await c.call("POST", "/api/accounts/A1/transfers", TRANSFER, step_up=done["step_up_token"])
        assert status == 201, doc
    failed = [r for r in audit_records(tmp_path) if r.get("action") == "step_up_failed"]
    assert [r["code"] for r in failed] == ["face_image_invalid", "face_no_face", "face_mismatch"]


# -- 4. liveness -----------------------------------------------------------------------------------


async def test_liveness_mode_wants_a_sequence_and_refuses_a_still_photo(
        tmp_path: Path, face_service: FaceServiceProcess, face: BiometricsClient,
        photos: dict[str, bytes]) -> None:
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms, **face_config(face_service, face_liveness=True)) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "l1"))
        assert status == 401 and ch["methods"] == ["sms", "face"], ch
        cid = ch["challenge_id"]
        frames = [b64(f) for f in still_frames(photos["img11"])]
        status, doc = await answer(c, cid, photos["img11"])  # one photo is not enough here
        assert (status, doc["error"]) == (400, "face_frames_invalid"), doc
        status, doc = await c.mfa("POST", f"challenges/{cid}/face", {"frames": frames[:2]})
        assert (status, doc["error"]) == (400, "face_frames_invalid"), doc
        status, doc = await c.mfa("POST", f"challenges/{cid}/face", {"frames": frames})
        assert (status, doc["error"], doc.get("attempts_left")) == (422, "face_liveness_failed", 4), doc
        # The same pictures again: a replay.
        status, doc = await c.mfa("POST", f"challenges/{cid}/face", {"frames": frames})
        assert (status, doc["error"], doc.get("attempts_left")) == (409, "face_replayed", 3), doc
        assert doc["methods"] == ["sms", "face"]


# -- 5. a missing or failing face service ---------------------------------------------------------


async def test_a_missing_face_service_withdraws_face_but_not_the_gateway(
        tmp_path: Path, face_service: FaceServiceProcess, photos: dict[str, bytes]) -> None:
    sms = RecordingSms()
    async with relay(face_service.url) as cutoff:
        await cutoff.cut()  # nothing listens there any more
        async with stack(tmp_path, sms=sms, **face_config(face_service, face_url=cutoff.url)) as s, \
                aiohttp.ClientSession() as http:
            c = Client(s, http)
            status, factors = await c.mfa("GET", "factors")
            assert status == 200 and factors["face"] == {"enrolled": False, "available": False}, factors
            status, doc = await c.mfa("POST", "factors/face/consent", CONSENT)
            assert (status, doc["error"]) == (503, "face_unavailable"), doc
            # A customer enrolled before the service went away: face is not offered, SMS is.
            await s.gateway.stepups.records.set_face(SUB, time.time() - 10)  # type: ignore[union-attr]
            status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "m1"))
            assert status == 401 and ch["methods"] == ["sms"], ch
            status, doc = await answer(c, ch["challenge_id"], photos["img11"])
            assert (status, doc["error"], doc["methods"]) == (503, "face_unavailable", ["sms"]), doc
            assert "attempts_left" not in doc
            status, factors = await c.mfa("GET", "factors")
            assert factors["face"] == {**factors["face"], "enrolled": True, "available": False}


async def test_a_face_service_that_stops_mid_challenge(tmp_path: Path, face_service: FaceServiceProcess,
                                                      face: BiometricsClient, photos: dict[str, bytes]) -> None:
    sms = RecordingSms()
    async with relay(face_service.url) as cutoff, \
            stack(tmp_path, sms=sms, **face_config(face_service, face_url=cutoff.url)) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        big = order(BIG, "m2")
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", big)
        assert status == 401 and ch["methods"] == ["sms", "face"], ch
        cid = ch["challenge_id"]
        await cutoff.cut()
        status, doc = await answer(c, cid, photos["img11"])
        assert (status, doc["error"], doc["methods"]) == (503, "face_unavailable", ["sms"]), doc
        assert "attempts_left" not in doc
        status, state = await c.mfa("GET", f"challenges/{cid}")
        assert state["methods"] == ["sms"], state
        status, factors = await c.mfa("GET", "factors")
        assert factors["face"]["enrolled"] is True and factors["face"]["available"] is False
        status, doc = await answer(c, cid, photos["img5"])  # withdrawn: not even tried
        assert (status, doc["error"], doc["methods"]) == (503, "face_unavailable", ["sms"]), doc
        status, ch2, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "m3"))
        assert status == 401 and ch2["methods"] == ["sms"], ch2
        # The customer switches to SMS on the first challenge and the order goes through.
        done = await pass_with_sms(c, sms, ch)
        status, placed, _ = await c.call("POST", "/api/accounts/A1/orders", big, step_up=done["step_up_token"])
        assert status == 201, placed


# -- 6. deleting the face -------------------------------------------------------------------------


async def test_deleting_the_face_needs_a_step_up_and_deletes_the_template(
        tmp_path: Path, face_service: FaceServiceProcess, face: BiometricsClient,
        photos: dict[str, bytes]) -> None:
    sms, notifier = RecordingSms(), MemoryNotifier()
    async with stack(tmp_path, sms=sms, notifier=notifier, **face_config(face_service)) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        status, ch, _ = await c.call("DELETE", "/auth/mfa/factors/face")
        # The face level (the factor's own): face, or TOTP + SMS, which alice does not have.
        assert status == 401 and ch["acr_values"] == FACE and ch["methods"] == ["face"], ch
        assert ch["reasons"] == ["factor_change"]
        status, done = await answer(c, ch["challenge_id"], photos["img11"])
        assert status == 200 and done["binding"] == "transaction", done
        status, doc, _ = await c.call("DELETE", "/auth/mfa/factors/face", step_up=done["step_up_token"])
        assert status == 200 and doc["removed"] is True and doc["notified"] is True, doc
        assert [a.fields["change"] for a in notifier.sent] == ["added", "removed"]
        status, factors = await c.mfa("GET", "factors")
        assert factors["face"]["enrolled"] is False
        status, doc = await c.mfa("DELETE", "factors/face")
        assert (status, doc["error"]) == (409, "face_not_enrolled"), doc
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "d1"))
        assert status == 401 and ch["methods"] == ["sms"], ch
    # The service no longer holds a template: a check of alice is "not enrolled".
    assert await face_code(face.verify(SUB, photos["img5"])) == "not_enrolled"
    assert "mfa_face_removed" in [r.get("action") for r in audit_records(tmp_path)]


async def test_withdrawing_consent_removes_the_face_and_says_so(
        tmp_path: Path, face_service: FaceServiceProcess, face: BiometricsClient,
        photos: dict[str, bytes]) -> None:
    sms, notifier = RecordingSms(), MemoryNotifier()
    async with stack(tmp_path, sms=sms, notifier=notifier, **face_config(face_service)) as s, \
            aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        # No step-up to withdraw (it must stay as easy as consenting), but announced as a removal.
        status, doc = await c.mfa("POST", "factors/face/consent", {**CONSENT, "granted": False})
        assert (status, doc) == (200, {"granted": False, "text_version": "face-v1", "notified": True}), doc
        assert [a.fields["change"] for a in notifier.sent] == ["added", "removed"]
        status, factors = await c.mfa("GET", "factors")
        assert factors["face"]["enrolled"] is False
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "w1"))
        assert status == 401 and ch["methods"] == ["sms"], ch
    assert await face_code(face.verify(SUB, photos["img11"])) == "consent_required"
    assert "mfa_face_consent_withdrawn" in [r.get("action") for r in audit_records(tmp_path)]


async def test_a_template_lost_behind_the_gateways_back_is_face_not_enrolled(
        tmp_path: Path, face_service: FaceServiceProcess, face: BiometricsClient,
        photos: dict[str, bytes]) -> None:
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms, **face_config(face_service)) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        assert await face.delete(SUB) is True
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "n1"))
        assert status == 401 and ch["methods"] == ["sms", "face"], ch
        status, doc = await answer(c, ch["challenge_id"], photos["img11"])
        assert (status, doc["error"]) == (409, "face_not_enrolled") and "attempts_left" not in doc, doc
        # The gateway's record follows the service: face is no longer offered.
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "n2"))
        assert status == 401 and ch["methods"] == ["sms"], ch


async def test_a_face_service_refusing_our_secret_withdraws_face(
        tmp_path: Path, face_service: FaceServiceProcess, face: BiometricsClient,
        photos: dict[str, bytes]) -> None:
    """A rotated or wrong shared secret: the service answers 401, face is withdrawn, not offered forever."""
    sms = RecordingSms()
    async with stack(tmp_path, sms=sms, **face_config(face_service)) as s, aiohttp.ClientSession() as http:
        c = Client(s, http)
        await consent_and_enrol(c, sms, photos["img10"])
        status, ch, _ = await c.call("POST", "/api/accounts/A1/orders", order(BIG, "w1"))
        assert ch["methods"] == ["sms", "face"]
        original = s.gateway.stepups.face  # type: ignore[union-attr]
        s.gateway.stepups.face = BiometricsClient(face_service.url, b"not-the-secret")  # type: ignore[union-attr]
        status, doc = await answer(c, ch["challenge_id"], photos["img11"])
        assert (status, doc["error"], doc["methods"]) == (503, "face_unavailable", ["sms"]), doc
        assert "attempts_left" not in doc
        status, factors = await c.mfa("GET", "factors")
        assert factors["face"]["available"] is False
        wrong = s.gateway.stepups.face  # type: ignore[union-attr]
        s.gateway.stepups.face = original  # type: ignore[union-attr]  # the gateway closes its own at stop
        await wrong.close()
