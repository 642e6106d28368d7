"""gateway.crypto.fields: personal data sealed per customer at JSON paths, blind indexes, erasure."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from gateway.crypto import sm3
from gateway.crypto.fields import FieldCipher, blind_index, is_sealed, normalise, open_value, seal_value
from gateway.crypto.key_errors import FieldCipherError, KeyErased, KeyNotFound
from gateway.crypto.keyring import KeyRing, LocalKms
from gateway.crypto.keystore import MemoryKeyStore
from gateway.crypto.secretbox import SecretBox

FIELDS = ["id_number", "phone", "bank_accounts.number", "address"]
PROFILE: dict[str, Any] = {
    "account": "A1",
    "name_initial": "W",
    "id_number": "110101199003071234",
    "phone": "138-0013-8000",
    "bank_accounts": [{"bank": "ICBC", "number": "6222020200001234567"},
                      {"bank": "CMB", "number": 6225880100002345}],
    "address": {"city": "Shanghai", "street": "1 Century Ave"},
    "email": None,
}


def _cipher(ring: KeyRing | None = None, indexed: tuple[str, ...] = ()) -> FieldCipher:
    return FieldCipher(ring or KeyRing(LocalKms.generate(), MemoryKeyStore()), FIELDS, indexed=indexed)


def _flip(text: str, at: int = 0) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[at] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


async def test_round_trip_restores_the_document() -> None:
    cipher, doc = _cipher(), copy.deepcopy(PROFILE)
    assert await cipher.encrypt(doc, "alice") == 5
    assert await cipher.decrypt(doc, "alice") == 5
    assert doc == PROFILE


async def test_sealed_document_holds_no_personal_data() -> None:
    cipher, doc = _cipher(), copy.deepcopy(PROFILE)
    await cipher.encrypt(doc, "alice")
    text = json.dumps(doc)
    for secret in ("110101199003071234", "138-0013-8000", "6222020200001234567", "6225880100002345", "Century"):
        assert secret not in text
    assert doc["account"] == "A1" and doc["email"] is None  # other fields and null untouched
    assert set(doc["id_number"]) == {"enc", "kid", "iv", "ct"} and doc["id_number"]["enc"] == "sm4-gcm"
    assert all(is_sealed(b["number"]) for b in doc["bank_accounts"])


async def test_flipped_ciphertext_bit_is_refused() -> None:
    cipher, doc = _cipher(), copy.deepcopy(PROFILE)
    await cipher.encrypt(doc, "alice")
    doc["phone"]["ct"] = _flip(doc["phone"]["ct"])
    with pytest.raises(FieldCipherError, match="'phone' was altered"):
        await cipher.decrypt(doc, "alice")


async def test_flipped_iv_bit_is_refused() -> None:
    cipher, doc = _cipher(), copy.deepcopy(PROFILE)
    await cipher.encrypt(doc, "alice")
    doc["id_number"]["iv"] = _flip(doc["id_number"]["iv"], 5)
    with pytest.raises(FieldCipherError, match="altered"):
        await cipher.decrypt(doc, "alice")


async def test_field_copied_to_another_field_does_not_open() -> None:
    cipher, doc = _cipher(), copy.deepcopy(PROFILE)
    await cipher.encrypt(doc, "alice")
    doc["phone"] = doc["id_number"]
    with pytest.raises(FieldCipherError, match="another customer or field"):
        await cipher.decrypt(doc, "alice")


async def test_field_of_one_customer_does_not_open_as_another() -> None:
    ring = KeyRing(LocalKms.generate(), MemoryKeyStore())
    alice = await ring.customer_key("alice")
    sealed = seal_value(alice, "alice", ("id_number",), "110101199003071234")
    assert open_value(alice, "alice", ("id_number",), sealed) == "110101199003071234"
    # Same key, another customer id in the AAD (e.g. a record relabelled): refused.
    with pytest.raises(FieldCipherError):
        open_value(alice, "bob", ("id_number",), sealed)
    # Copied into bob's document: his key is another key.
    cipher, doc = _cipher(ring), {"id_number": sealed}
    await ring.customer_key("bob")
    with pytest.raises(KeyNotFound, match="bob"):
        await cipher.decrypt(doc, "bob")


async def test_path_spellings_and_array_positions_share_a_field_name() -> None:
    ring = KeyRing(LocalKms.generate(), MemoryKeyStore())
    doc = {"bank_accounts": [{"number": "1"}, {"number": "2"}]}
    await FieldCipher(ring, ["bank_accounts.number"]).encrypt(doc, "alice")
    doc["bank_accounts"].reverse()
    await FieldCipher(ring, ["bank_accounts[].number"]).decrypt(doc, "alice")
    assert doc == {"bank_accounts": [{"number": "2"}, {"number": "1"}]}


async def test_values_keep_their_json_types() -> None:
    cipher = FieldCipher(KeyRing(LocalKms.generate(), MemoryKeyStore()), ["*"])
    doc: dict[str, Any] = {"n": 12, "f": 1.5, "b": True, "l": [1, "x"], "o": {"k": None}, "z": None}
    original = copy.deepcopy(doc)
    assert await cipher.encrypt(doc, "alice") == 5
    await cipher.decrypt(doc, "alice")
    assert doc == original


async def test_unsealed_values_at_the_paths_are_left_as_they_are() -> None:
    cipher, doc = _cipher(), {"id_number": "stored before encryption was on"}
    assert await cipher.decrypt(doc, "alice") == 0
    assert doc == {"id_number": "stored before encryption was on"}


async def test_erasure_makes_data_unreadable_and_leaves_the_hash_chain_intact() -> None:
    ring = KeyRing(LocalKms.generate(), MemoryKeyStore())
    cipher, doc = _cipher(ring), copy.deepcopy(PROFILE)
    await cipher.encrypt(doc, "alice")
    stored = json.dumps(doc, sort_keys=True).encode()
    link = sm3.digest(b"\x00" * 32 + stored)  # a chain link over the stored record
    assert await ring.erase_customer("alice") is True
    with pytest.raises(KeyErased, match="alice"):
        await cipher.decrypt(json.loads(stored), "alice")
    assert sm3.equal(sm3.digest(b"\x00" * 32 + stored), link)  # the record's bytes did not change
    with pytest.raises(KeyErased):
        await cipher.encrypt(copy.deepcopy(PROFILE), "alice")


async def test_erasing_one_customer_leaves_the_others_readable() -> None:
    ring = KeyRing(LocalKms.generate(), MemoryKeyStore())
    cipher, a, b = _cipher(ring), copy.deepcopy(PROFILE), copy.deepcopy(PROFILE)
    await cipher.encrypt(a, "alice")
    await cipher.encrypt(b, "bob")
    await ring.erase_customer("alice")
    await cipher.decrypt(b, "bob")
    assert b == PROFILE


async def test_master_key_rotation_keeps_old_data_readable() -> None:
    # A data key wrapped under the old master key still unwraps once a new master key is current.
    store, old_box = MemoryKeyStore(), SecretBox.generate("m1")
    cipher, doc = _cipher(KeyRing(LocalKms(old_box), store)), copy.deepcopy(PROFILE)
    await cipher.encrypt(doc, "alice")
    rotated = KeyRing(LocalKms(old_box.with_new_key("m2")), store)
    await _cipher(rotated).decrypt(doc, "alice")
    assert doc == PROFILE


async def test_index_key_rotation_keeps_old_records_searchable() -> None:
    ring = KeyRing(LocalKms.generate(), MemoryKeyStore())
    cipher = _cipher(ring, indexed=("id_number",))
    old = copy.deepcopy(PROFILE)
    await cipher.encrypt(old, "alice")
    await ring.rotate("blind-index")
    new = copy.deepcopy(PROFILE)
    await cipher.encrypt(new, "bob")
    terms = await cipher.search_terms("110101199003071234")
    assert len(terms) == 2
    for record in (old, new):
        assert terms[record["id_number"]["bik"]] == record["id_number"]["bi"]
    assert old["id_number"]["bi"] != new["id_number"]["bi"]
    await cipher.decrypt(old, "alice")  # the old record still opens after the rotation
    assert old == PROFILE


async def test_blind_index_is_searchable_across_customers() -> None:
    ring = KeyRing(LocalKms.generate(), MemoryKeyStore())
    cipher = _cipher(ring, indexed=("id_number", "phone"))
    a, b = copy.deepcopy(PROFILE), copy.deepcopy(PROFILE)
    b["phone"] = "13800138000"
    await cipher.encrypt(a, "alice")
    await cipher.encrypt(b, "bob")
    wanted = await cipher.blind_index("138 0013 8000")
    assert a["phone"]["bi"] == b["phone"]["bi"] == wanted
    assert "bi" not in a["bank_accounts"][0]["number"]  # only the indexed fields carry one
    assert a["id_number"]["ct"] != b["id_number"]["ct"]  # the ciphertexts do not link them


async def test_altered_blind_index_is_refused() -> None:
    cipher, doc = _cipher(indexed=("phone",)), copy.deepcopy(PROFILE)
    await cipher.encrypt(doc, "alice")
    doc["phone"]["bi"] = _flip(doc["phone"]["bi"])
    with pytest.raises(FieldCipherError, match="altered"):
        await cipher.decrypt(doc, "alice")


@pytest.mark.parametrize(("a", "b"), [
    ("110101199003071234", "110101 19900307 1234"),
    ("11010119900307123X", "11010119900307123x"),
    ("138-0013-8000", "13800138000"),
    ("１３８００１３８０００", "13800138000"),  # full-width digits, as Chinese input methods type them
    (13800138000, "138 0013 8000"),
    ("6222 0202 0000 1234", "6222–0202–0000–1234"),  # en dashes
])
def test_blind_index_equal_for_equivalent_inputs(a: Any, b: Any) -> None:
    key = b"i" * 32
    assert blind_index(key, a) == blind_index(key, b)


@pytest.mark.parametrize(("a", "b"), [("13800138000", "13800138001"), ("110101199003071234", "110101199003071235"),
                                      ("Shanghai", "Shanghai1")])
def test_blind_index_differs_for_different_inputs(a: str, b: str) -> None:
    key = b"i" * 32
    assert blind_index(key, a) != blind_index(key, b)


def test_blind_index_depends_on_the_key() -> None:
    assert blind_index(b"i" * 32, "13800138000") != blind_index(b"j" * 32, "13800138000")


def test_only_strings_and_numbers_are_indexed() -> None:
    assert normalise({"a": 1}) is None and normalise(True) is None and normalise(None) is None
    with pytest.raises(ValueError):
        blind_index(b"i" * 32, ["x"])


@pytest.mark.parametrize("broken", [
    {"enc": "aes-gcm", "kid": "k", "iv": "AAAA", "ct": "AAAA"},
    {"enc": "sm4-gcm", "kid": "k", "iv": "!!", "ct": "AAAA"},
    {"enc": "sm4-gcm", "kid": "k", "iv": "AAAA", "ct": "AAAA"},
    {"enc": "sm4-gcm", "kid": "k", "iv": "AAAA", "ct": "AAAA", "extra": 1},
])
async def test_malformed_sealed_fields_are_refused(broken: dict[str, Any]) -> None:
    ring = KeyRing(LocalKms.generate(), MemoryKeyStore())
    key = await ring.customer_key("alice")
    with pytest.raises(FieldCipherError):
        open_value(key, "alice", ("id_number",), {**broken, "kid": key.kid})


def test_indexed_fields_must_be_encrypted_fields() -> None:
    with pytest.raises(ValueError, match="not among"):
        FieldCipher(KeyRing(LocalKms.generate(), MemoryKeyStore()), ["phone"], indexed=["id_number"])
