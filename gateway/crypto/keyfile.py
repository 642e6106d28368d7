"""Files holding key material: created once with mode 0600, refused when group or others may read them.

Shared by every key file of the leaf (:class:`~gateway.crypto.secretbox.SecretBox` key files,
the key ring's file store), the gateway's SM2 agreement keys and the audit keys. Creating is
exclusive and whole (written beside the file, then hard-linked into place): when several gateway
processes start at once and each would create the same file, one wins and the others read the
winner's keys (:func:`create_private` answers False), so every process ends up with the same keys.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KeyFileError", "create_private", "locked", "read_private", "replace_private"]


class KeyFileError(Exception):
    """A key file cannot be read, or its mode lets others read it (the message names the file, no key)."""


def create_private(path: Path, data: bytes) -> bool:
    """Write ``data`` to the new file ``path`` with mode 0600; False when it already exists.

    The file appears whole (written beside it, then linked): a process losing the race reads the
    winner's keys, never an empty or half-written file."""
    try:
        replace_private(path, data, new=True)
    except FileExistsError:
        return False
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


def replace_private(path: Path, data: bytes, *, new: bool = False) -> None:
    """Write ``path`` atomically: a 0600 temporary file in the same folder, fsync'd, renamed over it,
    then the folder fsync'd. With ``new``, linked instead of renamed: FileExistsError if ``path`` exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if new:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``FILE.lock`` for a read-modify-write of ``path`` (other processes too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: one process at a time is the caller's business
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
