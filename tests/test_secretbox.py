"""gateway.crypto: SM4-GCM against Wycheproof vectors, and SecretBox sealing, rotation and key files."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.crypto import SecretBox, SecretBoxError, sm4_gcm

AAD = b"sub:alice|totp"


def _sm4_gcm_vectors() -> list[Any]:
    """The Wycheproof SM4-GCM tests, read at collection time (one pytest id per tcId)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
    path = Path(os.environ.get("PORTCULLIS_VECTORS", default)) / "wycheproof/testvectors_v1/sm4_gcm_test.json"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"SM4-GCM vectors not found at {path}"))]
    doc = json.loads(path.read_text())
    return [pytest.param(dict(t, ivSize=g["ivSize"]), id=f"tc{t['tcId']}")
            for g in doc["testGroups"] for t in g["tests"]]


@pytest.mark.parametrize("vector", _sm4_gcm_vectors())
def test_sm4_gcm_wycheproof(vector: dict[str, Any]) -> None:
    key, iv, aad, msg, ct, tag = (bytes.fromhex(vector[k]) for k in ("key", "iv", "aad", "msg", "ct", "tag"))
    if vector["ivSize"] != 96:
        # Only 96-bit IVs are accepted (other lengths go through GHASH): refused, whatever the result.
        with pytest.raises(ValueError, match="IV"):
            sm4_gcm.decrypt(key, iv, ct + tag, aad)
        return
    if vector["result"] == "valid":
        assert sm4_gcm.encrypt(key, iv, msg, aad) == ct + tag
        assert sm4_gcm.decrypt(key, iv, ct + tag, aad) == msg
    else:
        with pytest.raises(sm4_gcm.InvalidTag):
            sm4_gcm.decrypt(key, iv, ct + tag, aad)


def test_round_trip() -> None:
    box = SecretBox.generate()
    sealed = box.seal(b"JBSWY3DPEHPK3PXP", AAD)
    assert b"JBSWY3DPEHPK3PXP" not in sealed
    assert box.open(sealed, AAD) == b"JBSWY3DPEHPK3PXP"


def test_round_trip_empty_plaintext() -> None:
    box = SecretBox.generate()
    assert box.open(box.seal(b"", b""), b"") == b""


def test_each_seal_uses_a_fresh_iv() -> None:
    box = SecretBox.generate()
    assert box.seal(b"same", AAD) != box.seal(b"same", AAD)


def test_format_is_versioned_and_names_the_key() -> None:
    box = SecretBox.generate("k1")
    sealed = box.seal(b"x", AAD)
    assert sealed[:4] == b"\x01\x02k1"
    assert len(sealed) == 4 + 12 + 1 + 16


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 10, 15, 16, -17, -1], ids=lambda i: f"byte{i}")
def test_tampering_with_any_part_fails(index: int) -> None:
    # 0 version, 1 kid length, 2-3 kid, 4-15 iv, 16.. ciphertext, last 16 the tag.
    box = SecretBox({"k1": bytes(16), "k2": bytes(range(16))}, "k1")
    sealed = bytearray(box.seal(b"a secret of 20 bytes", AAD))
    sealed[index] ^= 0x01
    with pytest.raises(SecretBoxError):
        box.open(bytes(sealed), AAD)


def test_a_tampered_kid_naming_another_held_key_fails() -> None:
    box = SecretBox({"k1": bytes(16), "k2": bytes(range(16))}, "k1")
    sealed = box.seal(b"secret", AAD)
    with pytest.raises(SecretBoxError, match="altered"):
        box.open(sealed.replace(b"k1", b"k2", 1), AAD)


def test_wrong_aad_fails() -> None:
    box = SecretBox.generate()
    sealed = box.seal(b"secret", b"sub:alice|totp")
    with pytest.raises(SecretBoxError, match="altered or belongs to another context"):
        box.open(sealed, b"sub:mallory|totp")


@pytest.mark.parametrize("length", [0, 1, 2, 5, 4 + 12 + 15])
def test_truncated_fails(length: int) -> None:
    box = SecretBox.generate("k1")
    sealed = box.seal(b"", AAD)
    with pytest.raises(SecretBoxError, match="truncated"):
        box.open(sealed[:length], AAD)


def test_unknown_kid_fails() -> None:
    sealed = SecretBox.generate("old").seal(b"secret", AAD)
    with pytest.raises(SecretBoxError, match="'old'.*does not hold"):
        SecretBox.generate("new").open(sealed, AAD)


def test_same_kid_other_key_fails() -> None:
    sealed = SecretBox.generate("k1").seal(b"secret", AAD)
    with pytest.raises(SecretBoxError, match="altered"):
        SecretBox.generate("k1").open(sealed, AAD)


def test_rotation_opens_old_and_seals_under_the_new_key() -> None:
    old = SecretBox.generate("2026-01")
    sealed_old = old.seal(b"secret", AAD)
    new = old.with_new_key("2026-06")
    assert new.current == "2026-06" and new.key_ids == ("2026-01", "2026-06")
    assert new.open(sealed_old, AAD) == b"secret"
    sealed_new = new.seal(b"secret", AAD)
    assert sealed_new[2:9] == b"2026-06"
    with pytest.raises(SecretBoxError):
        old.open(sealed_new, AAD)


def test_rotation_from_a_mapping() -> None:
    k1, k2 = os.urandom(16), os.urandom(16)
    sealed = SecretBox({"k1": k1}, "k1").seal(b"secret", AAD)
    assert SecretBox({"k1": k1, "k2": k2}, "k2").open(sealed, AAD) == b"secret"


@pytest.mark.parametrize(("keys", "current", "message"), [
    ({"k1": bytes(15)}, "k1", "16 bytes"),
    ({"k1": bytes(32)}, "k1", "16 bytes"),
    ({"k1": bytes(16)}, "k2", "not one of the keys"),
    ({"bad kid": bytes(16)}, "bad kid", "key id"),
    ({"": bytes(16)}, "", "key id"),
])
def test_bad_keys_are_refused(keys: dict[str, bytes], current: str, message: str) -> None:
    with pytest.raises(SecretBoxError, match=message):
        SecretBox(keys, current)


def test_repr_and_errors_never_show_key_material() -> None:
    key = bytes(range(16))
    box = SecretBox({"k1": key}, "k1")
    shown = [repr(box), str(box)]
    for sealed, aad in ((b"\x01\x02k9" + bytes(40), AAD), (box.seal(b"x", AAD), b"")):
        with pytest.raises(SecretBoxError) as info:
            box.open(sealed, aad)
        shown.append(str(info.value))
        shown.append(repr(info.value))
    for text in shown:
        for form in (key.hex(), repr(key), "AAECAwQFBgcICQoLDA0ODw"):
            assert form not in text
    assert repr(box) == "SecretBox(current='k1', key_ids=['k1'])"


def test_a_box_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(SecretBox.generate())


def test_from_file_creates_a_0600_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secretbox.json"
    box = SecretBox.from_file(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["current"] == box.current and list(doc["keys"]) == [box.current]
    again = SecretBox.from_file(path)
    assert again.open(box.seal(b"secret", AAD), AAD) == b"secret"


def test_from_file_create_keeps_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "secretbox.json"
    first = SecretBox.from_file(path, create=True)
    second = SecretBox.from_file(path, create=True)
    assert second.open(first.seal(b"secret", AAD), AAD) == b"secret"


def test_from_file_missing_without_create(tmp_path: Path) -> None:
    with pytest.raises(SecretBoxError, match="does not exist"):
        SecretBox.from_file(tmp_path / "absent.json")


def test_from_file_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "secretbox.json"
    SecretBox.generate().write_file(path)
    path.chmod(0o644)
    with pytest.raises(SecretBoxError, match="chmod 600"):
        SecretBox.from_file(path)


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "not JSON"),
    ("[]", "needs"),
    ('{"current": "k1", "keys": {}}', "needs"),
    ('{"keys": {"k1": "AAAAAAAAAAAAAAAAAAAAAA=="}}', "'current'"),
    ('{"current": "k1", "keys": {"k1": "AAAA"}}', "16 bytes"),
    ('{"current": "k1", "keys": {"k1": "not base64!"}}', "16 bytes"),
    ('{"current": "k2", "keys": {"k1": "AAAAAAAAAAAAAAAAAAAAAA=="}}', "not one of the keys"),
])
def test_from_file_bad_content(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "secretbox.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(SecretBoxError, match=message):
        SecretBox.from_file(path)


def test_rotation_through_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "secretbox.json"
    old = SecretBox.from_file(path, create=True)
    sealed = old.seal(b"secret", AAD)
    path.unlink()
    old.with_new_key("k-next").write_file(path)
    new = SecretBox.from_file(path)
    assert new.current == "k-next"
    assert new.open(sealed, AAD) == b"secret"


def test_importing_the_package_stays_a_leaf() -> None:
    code = ("import sys, gateway.crypto; "
            "bad = sorted(m for m in sys.modules if m == 'aiohttp' or "
            "(m.startswith('gateway.') and not m.startswith('gateway.crypto'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
