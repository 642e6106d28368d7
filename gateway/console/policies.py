"""Policies: bundles and their history, reading and editing Rego and data files as drafts, validation with
errors pinned to file, line and column, the bundle's own tests (docs/CONSOLE.md).

The workflow is `gateway.bundles.service.PolicyAdmin` (``gw.bundles``), the same as the JSON admin API's:
"Check this draft" uploads the draft's files as a bundle and validates it, both audited by the service.
Drafts live in the bundle repository (see `gateway.bundles.repository`: durable, shared by every gateway
process, a save is a compare-and-set on the revision it was based on).

Large files: the admin listener reads at most 64 KiB of a request body, and an aiohttp sub-application's
own ``client_max_size`` is not used (the request is made by the root application). So the editor's script
sends a save with the ``X-CSRF-Token`` header (the guard then leaves the body unread) and the handler reads
it here up to what a bundle may hold (``policy_admin.max_bundle_bytes``). Without the script a form still
works up to 64 KiB.

Syntax highlighting is done in the browser by our own tokenizer (static/policies.js): the server sends each
line as escaped text; the script only ever sets ``textContent``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.admin_policy import VERSION_ID
from gateway.bundles.files import BundleFiles, check_path
from gateway.bundles.repository import Draft, files_size
from gateway.bundles.validate import Validation
from gateway.bundles.validate import validate as validate_files
from gateway.console.app import CONSOLE_KEY, PREFIX, officer_session, redirect, require_step_up
from gateway.errors import BUNDLE_EXISTS, BUNDLE_INVALID, BUNDLE_NOT_FOUND, GatewayError

_DRAFT_ID = re.compile(r"[0-9]{1,18}")
_PACKAGE = re.compile(r"^package\s+([A-Za-z0-9_.]+)", re.M)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.M)
FORM_OVERHEAD = 64 * 1024
"""Bytes a form adds around the file it carries (fields, boundaries)."""
STATUS_WORDS = {"uploaded": "not checked yet", "validated": "passed its checks", "invalid": "failed its checks"}
KIND_WORDS = {"bootstrap": "first version (from the configuration)", "activate": "activated after approval",
              "rollback": "rolled back after approval", "break_glass": "emergency rollback (break-glass)"}


# -- pure helpers ----------------------------------------------------------------------------------


def language(path: str) -> str:
    return "json" if path.endswith(".json") else "rego"


def lines_of(text: str) -> list[str]:
    """The lines as shown, numbered from 1 (a final newline does not make an empty last line)."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


def normalize(text: str) -> str:
    """Browsers send a textarea's line breaks as CR LF; bundles keep LF."""
    return text.replace("\r\n", "\n")


def text_problem(path: str, text: str) -> str | None:
    """Why `text` cannot be a bundle file (binary or not UTF-8), or None."""
    if "\0" in text:
        return f"{path} looks like a binary file (it contains NUL bytes): a bundle holds text only."
    if "\ufffd" in text:
        return f"{path} is not UTF-8 text: a bundle holds UTF-8 text only."
    return None


def limits_problem(files: Mapping[str, str], *, max_bytes: int, max_files: int) -> str | None:
    """Why `files` exceed the bundle limits (``policy_admin.max_bundle_bytes``, ``max_files``), or None."""
    if len(files) > max_files:
        return f"A bundle may hold at most {max_files} files; this would make {len(files)}."
    size = files_size(files)
    if size > max_bytes:
        return (f"This is too large: a bundle may hold at most {max_bytes:,} bytes, this would make {size:,}. "
                "Nothing was saved.")
    return None


def new_path_problem(path: str, files: Mapping[str, str]) -> str | None:
    why = check_path(path)
    if why is not None:
        return f"The file name {path!r} cannot be used: {why}."
    folded = {p.lower(): p for p in files}
    if path.lower() in folded:
        return f"The draft already has a file named {folded[path.lower()]}."
    return None


@dataclass(frozen=True)
class TestResult:
    path: str
    file: str
    line: int
    passed: bool


def test_results(files: Mapping[str, str], report: Mapping[str, Any]) -> list[TestResult]:
    """Each ``test_*`` rule of the bundle's ``*_test.rego`` files, failed when the report names it."""
    failed = {p.get("test") for p in report.get("problems", []) if p.get("stage") == "test"}
    out: list[TestResult] = []
    seen: set[str] = set()
    for file in sorted(files):
        if not file.endswith("_test.rego"):
            continue
        text = files[file]
        package = _PACKAGE.search(text)
        for match in _TEST_RULE.finditer(text):
            rule = f"data.{package[1] if package else ''}.{match[1]}"
            if rule in seen:
                continue
            seen.add(rule)
            out.append(TestResult(rule, file, text.count("\n", 0, match.start()) + 1, rule not in failed))
    return out


@dataclass
class CheckResult:
    """What "Check this draft" found, as the page shows it."""

    ok: bool
    version: str | None = None
    message: str = ""
    problems: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    tests: list[TestResult] = field(default_factory=list)

    @property
    def tests_ran(self) -> bool:
        counts = self.summary.get("tests") or {}
        return bool(counts.get("passed") or counts.get("failed"))


def _from_report(files: Mapping[str, str], version: str | None, report: Mapping[str, Any]) -> CheckResult:
    return CheckResult(ok=bool(report.get("ok")), version=version, problems=list(report.get("problems", [])),
                       summary=dict(report.get("summary", {})), tests=test_results(files, report))


# -- reading -----------------------------------------------------------------------------------


def _version(request: web.Request) -> str:
    version = request.match_info["version"]
    if not VERSION_ID.fullmatch(version):
        raise GatewayError(BUNDLE_NOT_FOUND, "There is no policy version with that name.")
    return version


def _line(request: web.Request) -> int:
    raw = request.query.get("line", "")
    return int(raw) if raw.isdigit() and len(raw) < 9 else 0


async def policies_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    admin = console.gw.bundles
    history = await admin.history()
    active = history[0].version if history else None
    discarded = request.query.get("discarded", "")
    return console.render(request, "policies.html", active="policies", bundles=await admin.bundles(),
                          history=history, active_version=active, drafts=await admin.repo.drafts(),
                          status_words=STATUS_WORDS, kind_words=KIND_WORDS,
                          discarded=discarded if _DRAFT_ID.fullmatch(discarded) else None)


async def version_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    admin = console.gw.bundles
    version = _version(request)
    bundle = await admin.bundle(version)
    history = await admin.history()
    path = request.query.get("file")
    if path is not None and path not in bundle.files:
        raise GatewayError(BUNDLE_NOT_FOUND, "This version has no file of that name.")
    report = bundle.info.report
    return console.render(
        request, "policies_version.html", active="policies", info=bundle.info, files=sorted(bundle.files),
        sizes={p: len(t.encode()) for p, t in bundle.files.items()}, file=path,
        lines=lines_of(bundle.files[path]) if path is not None else [], lang=language(path or ""),
        hit=_line(request), is_active=bool(history) and history[0].version == version,
        check=_from_report(bundle.files, version, report) if report else None, status_words=STATUS_WORDS,
        link=lambda path, line: _version_url(version, path, line))


def _version_url(version: str, path: str, line: int = 0) -> str:
    url = f"{PREFIX}/policies/{version}?file={quote(path, safe='/')}"
    return url + f"&line={line}#L{line}" if line else url


# -- drafts ----------------------------------------------------------------------------------------


async def _draft(request: web.Request) -> Draft:
    raw = request.match_info["draft"]
    draft = await request.app[CONSOLE_KEY].gw.bundles.repo.draft(int(raw)) if _DRAFT_ID.fullmatch(raw) else None
    if draft is None:
        raise web.HTTPNotFound()
    return draft


def _draft_url(draft_id: int, path: str | None = None, line: int = 0) -> str:
    url = f"{PREFIX}/drafts/{draft_id}"
    if path is not None:
        url += f"?file={quote(path, safe='/')}"
        if line:
            url += f"&line={line}#L{line}"
    return url


def _render_draft(request: web.Request, draft: Draft, *, status: int = 200, file: str | None = None,
                  text: str | None = None, error: str | None = None, saved: bool = False,
                  check: CheckResult | None = None, conflict: bool = False) -> web.Response:
    console = request.app[CONSOLE_KEY]
    cfg = console.gw.bundles.cfg
    if file is None:
        file = request.query.get("file")
        if file is not None and file not in draft.files:
            file = None
            error = error or "The draft has no file of that name (any more)."
            status = 404
    if file is not None and text is None:
        text = draft.files.get(file, "")
    return console.render(
        request, "draft.html", status=status, active="policies", draft=draft.info, files=sorted(draft.files),
        sizes={p: len(t.encode()) for p, t in draft.files.items()}, file=file, text=text, lang=language(file or ""),
        hit=_line(request), error=error, saved=saved or request.query.get("saved") == "1", check=check,
        conflict=conflict, max_bytes=cfg.max_bundle_bytes, max_files=cfg.max_files,
        link=lambda path, line: _draft_url(draft.info.id, path, line))


async def draft_page(request: web.Request) -> web.Response:
    return _render_draft(request, await _draft(request))


async def create_draft(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    version = _version(request)
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up
    bundle = await console.gw.bundles.bundle(version)
    sub = officer_session(request).sub
    info = await console.gw.bundles.repo.create_draft(version, bundle.files, by=sub, at=time.time())
    console.audit({"sub": sub, "action": "policy_draft_create", "draft": info.id, "version": version,
                   "outcome": "ok", "via": "console"})
    return redirect(_draft_url(info.id))


async def _form(request: web.Request) -> Mapping[str, Any]:
    """The posted form; a script's post (X-CSRF-Token) is read here, up to what a bundle may hold."""
    if request.headers.get("X-CSRF-Token") is None:
        return await request.post()  # the guard read it already (up to the listener's 64 KiB)
    limit = request.app[CONSOLE_KEY].gw.bundles.cfg.max_bundle_bytes * 3 + FORM_OVERHEAD  # URL-encoding: 3x
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return await request.clone(client_max_size=limit).post()


def _revision(form: Mapping[str, Any]) -> int:
    raw = form.get("revision")
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 18 else -1


async def _change(request: web.Request, draft: Draft, files: dict[str, str], revision: int, *, file: str | None,
                  text: str | None, action: str, goto: str) -> web.Response:
    """Check the limits, then compare-and-set; a refusal shows the officer's own text again."""
    console = request.app[CONSOLE_KEY]
    cfg = console.gw.bundles.cfg
    sub = officer_session(request).sub
    fields = {"sub": sub, "action": action, "draft": draft.info.id, "revision": revision, "file": file,
              "via": "console"}
    why = limits_problem(files, max_bytes=cfg.max_bundle_bytes, max_files=cfg.max_files)
    if why is not None:
        console.audit({**fields, "outcome": "too_large", "refused": True})
        return _render_draft(request, draft, status=413, file=file if file in draft.files else None, text=text,
                             error=why)
    saved = await console.gw.bundles.repo.save_draft(draft.info.id, files, revision=revision, by=sub,
                                                     at=time.time())
    if saved is None:
        current = await _draft(request)
        console.audit({**fields, "outcome": "conflict", "refused": True, "current_revision": current.info.revision})
        return _render_draft(request, current, status=409, file=file if file in current.files else None,
                             text=text, conflict=True,
                             error=(f"Not saved: {current.info.updated_by} changed this draft while you were "
                                    "working on it. Your text is below: copy what you need, then open the "
                                    "draft again to see their changes."))
    console.audit({**fields, "outcome": "ok", "new_revision": saved.revision})
    return redirect(goto)


def _text_field(value: Any, path: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, why not): a text field, or an uploaded file that must be UTF-8 text."""
    if isinstance(value, web.FileField):
        raw = value.file.read()
        if b"\0" in raw:
            return None, f"{path} looks like a binary file (it contains NUL bytes): a bundle holds text only."
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"{path} is not UTF-8 text: a bundle holds UTF-8 text only."
    if not isinstance(value, str):
        return "", None
    text = normalize(value)
    why = text_problem(path, text)
    return (None, why) if why else (text, None)


async def _step_up_or_form(request: web.Request) -> tuple[web.Response | None, Mapping[str, Any]]:
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up, {}
    try:
        return None, await _form(request)
    except web.HTTPRequestEntityTooLarge:
        cfg = request.app[CONSOLE_KEY].gw.bundles.cfg
        return _render_draft(request, await _draft(request), status=413, error=(
            f"This is too large: a bundle may hold at most {cfg.max_bundle_bytes:,} bytes. Nothing was saved.")), {}
    except UnicodeDecodeError:
        return _render_draft(request, await _draft(request), status=400,
                             error="What was sent is not UTF-8 text: a bundle holds UTF-8 text only."), {}


async def save_file(request: web.Request) -> web.Response:
    draft = await _draft(request)
    stop, form = await _step_up_or_form(request)
    if stop is not None:
        return stop
    path = form.get("path")
    if not isinstance(path, str) or path not in draft.files:
        return _render_draft(request, draft, status=404, error="The draft has no file of that name (any more).")
    text, why = _text_field(form.get("text"), path)
    if text is None:
        return _render_draft(request, draft, status=400, file=path, error=why)
    files = {**draft.files, path: text}
    return await _change(request, draft, files, _revision(form), file=path, text=text, action="policy_draft_save",
                         goto=_draft_url(draft.info.id, path) + "&saved=1")


async def add_file(request: web.Request) -> web.Response:
    draft = await _draft(request)
    stop, form = await _step_up_or_form(request)
    if stop is not None:
        return stop
    path = form.get("path")
    path = path.strip() if isinstance(path, str) else ""
    why = new_path_problem(path, draft.files)
    if why is not None:
        return _render_draft(request, draft, status=400, error=why)
    text, why = _text_field(form.get("upload"), path)
    if text is None:
        return _render_draft(request, draft, status=400, error=why)
    if not text and path.endswith(".rego"):
        text = "package " + path.removesuffix(".rego").replace("/", ".").replace("-", "_") + "\n\nimport rego.v1\n"
    elif not text:
        text = "{}\n"
    return await _change(request, draft, {**draft.files, path: text}, _revision(form), file=None, text=None,
                         action="policy_draft_add_file", goto=_draft_url(draft.info.id, path))


async def discard(request: web.Request) -> web.Response:
    """Throw the whole draft away (a compare-and-set too: not when someone saved it meanwhile)."""
    console = request.app[CONSOLE_KEY]
    draft = await _draft(request)
    stop, form = await _step_up_or_form(request)
    if stop is not None:
        return stop
    revision = _revision(form)
    fields = {"sub": officer_session(request).sub, "action": "policy_draft_discard", "draft": draft.info.id,
              "revision": revision, "via": "console"}
    if not await console.gw.bundles.repo.discard_draft(draft.info.id, revision=revision):
        current = await _draft(request)
        console.audit({**fields, "outcome": "conflict", "refused": True, "current_revision": current.info.revision})
        return _render_draft(request, current, status=409, conflict=True, error=(
            f"Not discarded: {current.info.updated_by} changed this draft meanwhile. Look at their changes first."))
    console.audit({**fields, "outcome": "ok"})
    return redirect(f"{PREFIX}/policies?discarded={draft.info.id}")


async def delete_file(request: web.Request) -> web.Response:
    draft = await _draft(request)
    stop, form = await _step_up_or_form(request)
    if stop is not None:
        return stop
    path = form.get("path")
    if not isinstance(path, str) or path not in draft.files:
        return _render_draft(request, draft, status=404, error="The draft has no file of that name (any more).")
    files = {p: t for p, t in draft.files.items() if p != path}
    return await _change(request, draft, files, _revision(form), file=None, text=None,
                         action="policy_draft_delete_file", goto=_draft_url(draft.info.id) + "?saved=1")


async def check_draft(request: web.Request) -> web.Response:
    """Upload the draft's files as a bundle, validate it, show the problems and the tests."""
    console = request.app[CONSOLE_KEY]
    admin = console.gw.bundles
    draft = await _draft(request)
    stop, form = await _step_up_or_form(request)
    if stop is not None:
        return stop
    if _revision(form) != draft.info.revision:
        return _render_draft(request, draft, status=409, error=(
            f"{draft.info.updated_by} changed this draft since you opened it: look at the files, then check again."))
    sub = officer_session(request).sub
    files = dict(draft.files)
    why = limits_problem(files, max_bytes=admin.cfg.max_bundle_bytes, max_files=admin.cfg.max_files)
    if why is not None:
        return _render_draft(request, draft, status=413, error=why)
    base = draft.info.base_version
    body = {"files": files, "description": f"Draft {draft.info.id}" + (f" from version {base}" if base else "")}
    version: str | None = None
    try:
        try:
            version = (await admin.upload(sub, body)).version
        except GatewayError as exc:
            if exc.code != BUNDLE_EXISTS.code or not exc.extra:
                raise
            version = str(exc.extra["version"])  # the same policy is stored already
            stored = await admin.bundle(version)
            if stored.info.files_digest != BundleFiles(files).files_digest():
                return await _check_tests_only(request, draft, version)
        _, result = await admin.validate(sub, version)
        check = _from_report(files, version, result.report())
    except GatewayError as exc:
        if exc.code != BUNDLE_INVALID.code:
            return _render_draft(request, draft, status=exc.status if exc.status < 500 else 503,
                                 error=f"The draft could not be checked: {exc.message}")
        extra = exc.extra or {}
        version = str(extra["version"]) if extra.get("version") else None
        check = _from_report(files, version, {"ok": False, "problems": extra.get("problems", []),
                                              "summary": extra.get("summary", {})})
    if version is not None:
        await admin.repo.record_draft_check(draft.info.id, revision=draft.info.revision, version=version)
        draft = await _draft(request)
    return _render_draft(request, draft, status=200 if check.ok else 422, check=check)


async def _check_tests_only(request: web.Request, draft: Draft, version: str) -> web.Response:
    """The draft runs the same policy as `version` but its tests differ: run its own files' checks."""
    console = request.app[CONSOLE_KEY]
    admin = console.gw.bundles
    sub = officer_session(request).sub
    result: Validation = await validate_files(BundleFiles(files=draft.files), bound=admin.bound,
                                              timeout=admin.cfg.validation_timeout)
    console.audit({"sub": sub, "action": "policy_draft_check", "draft": draft.info.id, "version": version,
                   "outcome": "ok" if result.ok else "bundle_invalid", "via": "console"})
    check = _from_report(draft.files, None, result.report())
    check.message = (f"This draft runs the same policy as version {version}; only its tests differ, so it is not "
                     "stored as a new version. Its own tests were run.")
    return _render_draft(request, draft, status=200 if check.ok else 422, check=check)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/policies", policies_page)
    r.add_get("/policies/{version}", version_page)
    r.add_post("/policies/{version}/draft", create_draft)
    r.add_get("/drafts/{draft}", draft_page)
    r.add_post("/drafts/{draft}/save", save_file)
    r.add_post("/drafts/{draft}/add", add_file)
    r.add_post("/drafts/{draft}/delete", delete_file)
    r.add_post("/drafts/{draft}/discard", discard)
    r.add_post("/drafts/{draft}/check", check_draft)
