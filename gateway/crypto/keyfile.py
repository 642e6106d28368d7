"""Files holding key material: created once with mode 0600, refused when group or others may read them.

Shared by every key file of the leaf (:class:`~gateway.crypto.secretbox.SecretBox` key files,
the key ring's file store) and the gateway's SM2 agreement keys. Creating is exclusive
(``O_EXCL``): when several gateway processes start at once and each would create the
same file, one wins and the others read the winner's keys (:func:`create_private`
answers False), so every process ends up with the same keys.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["KeyFileError", "create_private", "read_private"]


class KeyFileError(Exception):
    """A key file cannot be read, or its mode lets others read it (the message names the file, no key)."""


def create_private(path: Path, data: bytes) -> bool:
    """Write ``data`` to the new file ``path`` with mode 0600; False when it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def read_private(path: Path, what: str = "key file") -> bytes | None:
    """The bytes of ``path`` (None when it does not exist); :class:`KeyFileError` when unreadable or not 0600."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None
    if os.name == "posix" and stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(f"{what} {str(path)!r} is readable by group or others: chmod 600 {str(path)!r}")
    return raw
