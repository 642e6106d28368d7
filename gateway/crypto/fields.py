"""Field-level encryption of personal data in JSON documents (SM4-GCM), with an optional blind index.

The values at configured field paths (gateway/crypto/json_paths.py: ``id_number``,
``bank_accounts.number``, ``holder.*``) are replaced by a sealed field::

    {"enc": "sm4-gcm", "kid": "k1a2b3c4d", "iv": base64url, "ct": base64url,
     "bi": base64url, "bik": "k5e6f7a8b"}          # "bi"/"bik" only on indexed fields

* ``ct`` is the SM4-GCM ciphertext and tag of the value's compact JSON (so a
  number comes back a number and an object an object), under the data key of
  the customer the document belongs to (gateway/crypto/keyring.py), ``kid``.
* The AAD binds the customer id, the field's name (where the value is, array
  positions left out: ``bank_accounts[].number``), the key id and the blind
  index: a sealed field copied to another customer's document or to another
  field does not open, and an altered ``bi`` fails like an altered ``ct``.
* Erasing the customer's key makes every copy unreadable; the sealed bytes, and
  a hash chain over them, do not change.
* null stays null (it is not personal data); a sealed field is sealed again
  if asked (encrypt once, where the document is stored or logged).

Blind index (``bi``): HMAC-SM3 under the ``blind-index`` purpose key (32 bytes)
of the value normalised (NFKC, case-folded, white space and dashes removed), so
``110101 19900307 123X`` and ``110101-19900307-123x`` index alike. Trade-offs,
chosen so compliance can search by an ID number or phone across customers:

* The index key is one for all customers, not the customer's key: equal values
  have equal indexes, in any customer's records, so whoever holds the index key
  and the records can link them, and can confirm a guess (11-digit phone numbers
  can be enumerated). Guard the index key like a data key.
* An index outlives the customer's erasure (it is not under their key): after an
  erasure the records still say "this field equals X" to a holder of the index
  key. Destroying the index key (rotate, then drop the old key) unlinks every
  record at once; index only the fields compliance must search.
* Indexes made under an older index key (``bik``) are found by computing the
  search term under each key: :meth:`FieldCipher.search_terms`.
"""

from __future__ import annotations

import json
import secrets
import unicodedata
from collections.abc import Sequence
from typing import Any

from gateway.crypto import sm3, sm4_gcm
from gateway.crypto.b64 import b64url_decode, b64url_encode
from gateway.crypto.json_paths import FieldName, FieldPath, matches, parse_paths
from gateway.crypto.key_errors import FieldCipherError
from gateway.crypto.keyring import DataKey, KeyRing

__all__ = ["ALG", "INDEX_PURPOSE", "FieldCipher", "blind_index", "field_label", "is_sealed", "normalise",
           "open_value", "seal_json", "seal_value"]

ALG = "sm4-gcm"
INDEX_PURPOSE = "blind-index"
INDEX_KEY_SIZE = 32
_AAD_LABEL = "portcullis-field/v1"
_SEALED_KEYS = frozenset({"enc", "kid", "iv", "ct", "bi", "bik"})


def _unb64url(text: Any, what: str) -> bytes:
    try:
        return b64url_decode(text)
    except ValueError:
        raise FieldCipherError(f"the sealed field's {what} is not base64url") from None


def field_label(name: FieldName) -> str:
    """A field's name as text: ``bank_accounts[].number`` (for messages)."""
    out = ""
    for seg in name:
        out += "[]" if seg is None else (f".{seg}" if out else seg)
    return out or "(root)"


def normalise(value: Any) -> str | None:
    """The text a blind index is computed over; None for what is not indexed (objects, arrays, booleans, null)."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) != "Pd")


def blind_index(index_key: bytes, value: Any) -> str:
    """The blind index of ``value`` under ``index_key``: base64url HMAC-SM3 of :func:`normalise` (value).

    Compliance searches with this: the records whose ``bi`` equals
    ``blind_index(key, "110101199003071234")`` hold that ID number.
    """
    text = normalise(value)
    if text is None:
        raise ValueError("only strings and numbers have a blind index")
    return b64url_encode(sm3.hmac_sm3(index_key, text.encode("utf-8")))


def _aad(sub: str, name: FieldName, kid: str, bi: str, bik: str) -> bytes:
    return json.dumps([_AAD_LABEL, sub, list(name), kid, bi, bik], separators=(",", ":")).encode("ascii")


def is_sealed(value: Any) -> bool:
    """Whether ``value`` is a sealed field (an object with ``"enc"``; :func:`open_value` checks the rest)."""
    return isinstance(value, dict) and "enc" in value


def seal_value(key: DataKey, sub: str, name: FieldName, value: Any, index_key: DataKey | None = None) -> dict[str, str]:
    """``value`` sealed for customer ``sub`` at field ``name``; with ``index_key``, a blind index too."""
    plaintext = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    bi = bik = ""
    if index_key is not None and normalise(value) is not None:
        bi, bik = blind_index(index_key.material, value), index_key.kid
    return _seal(key, sub, name, plaintext, bi, bik)


def seal_json(key: DataKey, sub: str, name: FieldName, text: bytes) -> dict[str, str]:
    """A value already serialised as JSON ``text`` (e.g. canonical JSON whose digest is kept), sealed as
    :func:`seal_value` would seal it: :func:`open_value` gives the decoded value back. No blind index."""
    return _seal(key, sub, name, text, "", "")


def _seal(key: DataKey, sub: str, name: FieldName, plaintext: bytes, bi: str, bik: str) -> dict[str, str]:
    iv = secrets.token_bytes(sm4_gcm.IV_SIZE)
    ct = sm4_gcm.encrypt(key.material, iv, plaintext, _aad(sub, name, key.kid, bi, bik))
    sealed = {"enc": ALG, "kid": key.kid, "iv": b64url_encode(iv), "ct": b64url_encode(ct)}
    if bi:
        sealed["bi"], sealed["bik"] = bi, bik
    return sealed


def open_value(key: DataKey, sub: str, name: FieldName, sealed: Any) -> Any:
    """The value :func:`seal_value` sealed; FieldCipherError if it was altered or is another customer's or field's."""
    where = field_label(name)
    if not isinstance(sealed, dict) or sealed.get("enc") != ALG or not set(sealed) <= _SEALED_KEYS:
        raise FieldCipherError(f"field {where!r} is not a sealed field of algorithm {ALG!r}")
    if sealed.get("kid") != key.kid:
        raise FieldCipherError(f"field {where!r} is sealed under key {sealed.get('kid')!r}, not {key.kid!r}")
    bi, bik = sealed.get("bi", ""), sealed.get("bik", "")
    if not isinstance(bi, str) or not isinstance(bik, str):
        raise FieldCipherError(f"field {where!r} has a malformed blind index")
    iv, ct = _unb64url(sealed.get("iv"), "iv"), _unb64url(sealed.get("ct"), "ct")
    if len(iv) != sm4_gcm.IV_SIZE or len(ct) < sm4_gcm.TAG_SIZE:
        raise FieldCipherError(f"field {where!r}: the sealed value is truncated")
    try:
        plaintext = sm4_gcm.decrypt(key.material, iv, ct, _aad(sub, name, key.kid, bi, bik))
    except sm4_gcm.InvalidTag:
        raise FieldCipherError(f"field {where!r} was altered, or belongs to another customer or field") from None
    return json.loads(plaintext)


class FieldCipher:
    """Seals and opens the values at ``fields`` of JSON documents under their customer's data key.

    ``indexed``: the fields (a subset of ``fields``, same spelling) that also
    get a blind index, under ``ring``'s ``blind-index`` key (created on first
    use, 32 bytes).
    """

    def __init__(self, ring: KeyRing, fields: Sequence[str], *, indexed: Sequence[str] = (),
                 index_purpose: str = INDEX_PURPOSE) -> None:
        unknown = set(indexed) - set(fields)
        if unknown:
            raise ValueError(f"indexed fields {sorted(unknown)!r} are not among the encrypted fields")
        self._ring = ring
        self._paths: tuple[FieldPath, ...] = parse_paths(fields)
        self._indexed: frozenset[FieldPath] = frozenset(parse_paths(indexed))
        self._index_purpose = index_purpose

    def __repr__(self) -> str:
        return f"FieldCipher(fields={['.'.join(p) for p in self._paths]!r}, ring={self._ring!r})"

    def _places(self, doc: Any) -> list[tuple[Any, Any, FieldName, bool]]:
        seen: dict[tuple[int, Any], int] = {}
        places: list[tuple[Any, Any, FieldName, bool]] = []
        for path in self._paths:
            for container, key, name in matches(doc, path):
                at = (id(container), key)
                if at in seen:  # two paths name the same place: seal it once, indexed if either says so
                    i = seen[at]
                    places[i] = (*places[i][:3], places[i][3] or path in self._indexed)
                    continue
                seen[at] = len(places)
                places.append((container, key, name, path in self._indexed))
        return places

    async def encrypt(self, doc: Any, sub: str) -> int:
        """Seal the fields of ``doc`` (changed in place) for customer ``sub``; how many values were sealed.

        Raises KeyErased if ``sub``'s key was erased (nothing of theirs may be stored readable).
        """
        places = [p for p in self._places(doc) if p[0][p[1]] is not None]
        if not places:
            return 0
        key = await self._ring.customer_key(sub)
        index_key = None
        if any(indexed for *_, indexed in places):
            index_key = await self._ring.ensure(self._index_purpose, size=INDEX_KEY_SIZE)
        for container, k, name, indexed in places:
            container[k] = seal_value(key, sub, name, container[k], index_key if indexed else None)
        return len(places)

    async def decrypt(self, doc: Any, sub: str) -> int:
        """Open the sealed fields of ``doc`` (changed in place); how many were opened.

        Values at the paths that are not sealed are left as they are (stored
        before encryption was on). KeyErased if ``sub``'s key was erased,
        FieldCipherError if a field was altered or is not ``sub``'s.
        """
        places = [p for p in self._places(doc) if is_sealed(p[0][p[1]])]
        keys: dict[str, DataKey] = {}
        for container, k, name, _ in places:
            kid = container[k].get("kid")
            if not isinstance(kid, str):
                raise FieldCipherError(f"field {field_label(name)!r} has no key id")
            if kid not in keys:
                keys[kid] = await self._ring.existing_customer_key(sub, kid)
            container[k] = open_value(keys[kid], sub, name, container[k])
        return len(places)

    async def blind_index(self, value: Any) -> str:
        """The blind index of ``value`` under the current index key (what new records carry)."""
        return blind_index((await self._ring.ensure(self._index_purpose, size=INDEX_KEY_SIZE)).material, value)

    async def search_terms(self, value: Any) -> dict[str, str]:
        """``{index key id: blind index}`` of ``value`` under every index key: match ``bik`` and ``bi``."""
        return {k.kid: blind_index(k.material, value) for k in await self._ring.keys(self._index_purpose)}
