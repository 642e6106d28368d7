"""An uploaded bundle as files: the upload envelope, its limits and paths, its identity (pure, plus a temp dir).

Upload format (``POST /admin/policy/bundles``, ``Content-Type: application/json``)::

    {"files": {"gateway.rego": "package gateway ...", "data/limits.json": "{...}", ...},
     "description": "optional, at most 1000 characters"}

The bundle is the layout `gateway.policy.rego.read_bundle` reads from a folder:
``*.rego`` files at any depth (``*_test.rego`` are the bundle's own tests) and
``data/<stem>.json`` documents. Nothing else is accepted, so an upload can
never name a file outside its own folder:

* a path is relative POSIX, 1-8 segments of ``[A-Za-z0-9_][A-Za-z0-9_.-]*``
  (no ``..``, no ``.``, no hidden file, no backslash, no drive, no empty segment),
  at most 255 characters;
* two paths may not differ only in case (the bundle must mean the same on any
  file system);
* file contents are text without NUL characters;
* the envelope's size and file count are bounded (``policy_admin.max_bundle_bytes``,
  ``policy_admin.max_files``).

Identity: ``version`` and ``digest`` are exactly what `RegoPolicy` computes for
the policy that runs (SM3 over the non-test modules and the sorted-key data
document; the version is the digest's first 16 hex characters), so the
``policy_version`` in every decision record names a stored bundle.
``files_digest`` is SM3 over every file as uploaded (tests included), so the
stored content can be re-checked byte for byte.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes

from gateway.errors import BUNDLE_INVALID, BUNDLE_MALFORMED, BUNDLE_PATH_FORBIDDEN, BUNDLE_TOO_LARGE, GatewayError
from gateway.policy.rego import PolicyBundleError, bundle_digest, read_bundle

MAX_PATH = 255
MAX_DEPTH = 8
MAX_DESCRIPTION = 1000
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_DATA_FILE = re.compile(r"data/[A-Za-z_][A-Za-z0-9_]{0,99}\.json")


@dataclass(frozen=True)
class BundleFiles:
    """Validated bundle files: relative path -> text."""

    files: Mapping[str, str]
    description: str = ""

    @property
    def size(self) -> int:
        return sum(len(p.encode()) + len(t.encode()) for p, t in self.files.items())

    def files_digest(self) -> str:
        """SM3 (hex) over every file, sorted by path, each part length-prefixed."""
        h = hashes.Hash(hashes.SM3())
        h.update(b"portcullis-bundle-files-v1\0")
        for path in sorted(self.files):
            for part in (path.encode(), self.files[path].encode()):
                h.update(len(part).to_bytes(8, "big"))
                h.update(part)
        return h.finalize().hex()


@dataclass(frozen=True)
class Identity:
    version: str
    digest: str
    files_digest: str


def problem(stage: str, message: str, *, file: str | None = None, line: int | None = None,
            column: int | None = None, **more: Any) -> dict[str, Any]:
    """One validation problem as the API reports it (file, line and column when known)."""
    return {"stage": stage, "file": file, "line": line, "column": column, "message": message, **more}


def invalid(problems: list[dict[str, Any]], message: str | None = None, **extra: Any) -> GatewayError:
    """422 bundle_invalid listing `problems`; the message repeats the first one with its location."""
    first = problems[0] if problems else {}
    where = ":".join(str(first[k]) for k in ("file", "line", "column") if first.get(k) is not None)
    text = message or (f"{where}: {first.get('message')}" if where else str(first.get("message", "")))
    return GatewayError(BUNDLE_INVALID, text or None, extra={**extra, "problems": problems})


def check_path(path: str) -> str | None:
    """Why `path` is refused, or None when it may be part of a bundle."""
    if not path or len(path) > MAX_PATH:
        return f"a path has 1 to {MAX_PATH} characters"
    if "\\" in path or path.startswith("/") or ":" in path:
        return "paths are relative, with forward slashes"
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        return f"at most {MAX_DEPTH} folder levels"
    for seg in segments:
        if seg in ("", ".", "..") or not _SEGMENT.fullmatch(seg):
            return f"segment {seg!r} is not allowed (letters, digits, '_', '-', '.'; no '..' or hidden files)"
    if path.endswith(".rego"):
        if segments[0] == "data":
            return "Rego files do not go in data/"
        return None
    if _DATA_FILE.fullmatch(path):
        return None
    return "only *.rego files and data/<name>.json documents make up a bundle"


def parse_upload(body: Any, *, max_files: int) -> BundleFiles:
    """The upload envelope (already JSON-decoded) as `BundleFiles`, or a GatewayError saying what is wrong."""
    if not isinstance(body, dict):
        raise GatewayError(BUNDLE_MALFORMED, 'expected {"files": {path: text, ...}, "description": text}')
    unknown = sorted(set(body) - {"files", "description"})
    if unknown:
        raise GatewayError(BUNDLE_MALFORMED, f"unknown member {unknown[0]!r} (expected files, description)")
    files = body.get("files")
    if not isinstance(files, dict) or not files:
        raise GatewayError(BUNDLE_MALFORMED, "files must be a non-empty object of path: text")
    if len(files) > max_files:
        raise GatewayError(BUNDLE_TOO_LARGE, f"{len(files)} files, more than the {max_files} allowed")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise GatewayError(BUNDLE_MALFORMED, f"description must be a string of at most {MAX_DESCRIPTION} characters")
    folded: dict[str, str] = {}
    for path, text in files.items():
        why = check_path(path)
        if why is not None:
            raise GatewayError(BUNDLE_PATH_FORBIDDEN, f"{path!r}: {why}", extra={"file": path[:MAX_PATH]})
        if not isinstance(text, str):
            raise GatewayError(BUNDLE_MALFORMED, f"{path}: the content must be a string", extra={"file": path})
        if "\0" in text:
            raise GatewayError(BUNDLE_MALFORMED, f"{path}: contains a NUL character", extra={"file": path})
        other = folded.setdefault(path.lower(), path)
        if other != path:
            raise GatewayError(BUNDLE_PATH_FORBIDDEN, f"{path!r} and {other!r} differ only in case",
                               extra={"file": path})
    if not any(p.endswith(".rego") and not p.endswith("_test.rego") for p in files):
        raise GatewayError(BUNDLE_MALFORMED, "the bundle has no Rego module (besides tests)")
    return BundleFiles(files=dict(files), description=description)


@contextmanager
def materialized(bundle: BundleFiles) -> Iterator[Path]:
    """The bundle written to a fresh private temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="portcullis-bundle-") as tmp:
        root = Path(tmp).resolve()
        for rel, text in bundle.files.items():
            if check_path(rel) is not None:  # parse_upload refused it already; never write outside root
                raise GatewayError(BUNDLE_PATH_FORBIDDEN, f"{rel!r} is not a bundle path")
            target = (root / rel).resolve()
            if not target.is_relative_to(root):
                raise GatewayError(BUNDLE_PATH_FORBIDDEN, f"{rel!r} leaves the bundle folder")
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        yield root


def _data_problems(bundle: BundleFiles) -> list[dict[str, Any]]:
    """Data documents that are not JSON objects, located by line and column."""
    found = []
    for path, text in sorted(bundle.files.items()):
        if not path.endswith(".json"):
            continue
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            found.append(problem("read", f"not valid JSON: {exc.msg}", file=path, line=exc.lineno,
                                 column=exc.colno))
    return found


def identity(bundle: BundleFiles) -> Identity:
    """The version and digests of the policy this bundle runs; 422 bundle_invalid if it cannot be read."""
    problems = _data_problems(bundle)
    if problems:
        raise invalid(problems)
    with materialized(bundle) as root:
        try:
            modules, data = read_bundle(root, include_tests=False)
        except PolicyBundleError as exc:
            raise invalid([problem("read", exc.message.splitlines()[0], file=exc.file, line=exc.line,
                                   column=exc.column)]) from None
    digest = bundle_digest([(str(n), str(s)) for n, s in modules], orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    return Identity(version=digest[:16], digest=digest, files_digest=bundle.files_digest())


def read_directory(path: Path) -> BundleFiles:
    """A bundle folder on disk (the configured [policy] bundle) as `BundleFiles`, the same files read_bundle reads."""
    files: dict[str, str] = {}
    for file in sorted(path.rglob("*.rego")):
        if file.is_file():
            files[file.relative_to(path).as_posix()] = file.read_text(encoding="utf-8")
    data_dir = path / "data"
    if data_dir.is_dir():
        for file in sorted(data_dir.glob("*.json")):
            files[file.relative_to(path).as_posix()] = file.read_text(encoding="utf-8")
    return BundleFiles(files=files, description=f"bootstrap: the configured bundle {path}")
