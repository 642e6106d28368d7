"""Errors of the key ring, its stores and field-level encryption.

Tree::

    KeyRingError
    ├── KeyNotFound        no such purpose, key id or customer key
    ├── KeyErased          the customer's data key was destroyed (an erasure request)
    ├── KeyUnwrapError     the KMS refused a wrapped key (another master key, an altered record)
    ├── KeyStoreError      the store cannot be read or written (missing or unsafe file, broken record)
    └── FieldCipherError   a sealed field is malformed, altered, or belongs to another customer or field

Messages name purposes, key ids, customers, files and field paths, never key
material. Callers that turn these into responses or audit records use
``code``, which is stable.
"""

from __future__ import annotations

__all__ = ["FieldCipherError", "KeyErased", "KeyNotFound", "KeyRingError", "KeyStoreError", "KeyUnwrapError"]


class KeyRingError(Exception):
    code = "key_error"


class KeyNotFound(KeyRingError):
    code = "key_not_found"


class KeyErased(KeyRingError):
    code = "key_erased"


class KeyUnwrapError(KeyRingError):
    code = "key_unwrap_failed"


class KeyStoreError(KeyRingError):
    code = "key_store_error"


class FieldCipherError(KeyRingError):
    code = "field_decrypt_failed"
