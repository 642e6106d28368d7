"""Releasing a policy: what-if on a sample or a past request, shadow mode and its diff report, proposing,
four-eyes approval, rollback and the audited break-glass rollback (docs/CONSOLE.md).

The workflow is `gateway.bundles.service.PolicyAdmin` (``gw.bundles``), the same service and the same
parsing as the JSON admin API (gateway/admin_policy.py); the service audits each step and refuses what
the four-eyes rule forbids, and these pages show its refusals in plain words.

What-if evaluates a stored version in this process only once it passed validation (which ran its Rego
in a child process), exactly as shadow mode does with its candidate; an uploaded, unvalidated bundle is
never compiled here. A past request is replayed from its audit record: the policy input sealed under the
customer's key (``[crypto]``), opened only after a recent step-up and a write-ahead audit record.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from audit.chain import canonical
from audit.postgres import PostgresAuditSink
from audit.query import MAX_LIMIT, REQUEST_ID, Filter, Page, search
from audit.sink import AuditWriteError
from gateway.admin import audit_first
from gateway.admin_policy import PROPOSAL_ID, VERSION_ID, sample_rate_of
from gateway.bundles.repository import BundleInfo, Proposal, is_expired
from gateway.bundles.runtime import PolicyLoadError, compile_bundle
from gateway.bundles.service import MAX_REASON, reason_text
from gateway.console.app import CONSOLE_KEY, PREFIX, officer_session, redirect, require_step_up
from gateway.crypto import sm3
from gateway.crypto.key_errors import FieldCipherError, KeyErased, KeyRingError
from gateway.errors import AUDIT_UNAVAILABLE, BUNDLE_NOT_FOUND, PROPOSAL_NOT_FOUND, SHADOW_NOT_FOUND, GatewayError
from gateway.policy.compare import compare, effect
from gateway.policy.engine import Decision, PolicyEngine
from gateway.policy.invariants import sample_inputs
from gateway.policy.rego import RegoPolicy
from gateway.steps.audit import INPUT_FIELD

MAX_INPUT_CHARS = 64 * 1024
RECENT = 15
"""Latest judged requests offered on the what-if page."""
RECENT_WINDOWS = (300.0, 3600.0, 86_400.0)
SCAN_PAGES = 20
"""Audit pages (of MAX_LIMIT records) read at most for the latest requests: a bound on one page view's work."""
FIND_SCANNED = 1_000_000
"""Audit records the file store's search reads at most to find a request by its id (PostgreSQL finds it
through its index): a bound on one page view's work."""
_JUDGED = frozenset({"decision", "denial"})
"""The records of a judged request (a decision, or a refusal after the policy ran) carry its input."""
_COMPILED_KEPT = 4
_COMPILED: web.AppKey[OrderedDict[str, RegoPolicy]] = web.AppKey("release_compiled", OrderedDict)
_REQUEST_ID_CHARS = 128

PLAIN = {
    "self_approval": "You cannot approve this change yourself: the four-eyes rule needs a second compliance"
                     " officer. Ask a colleague to sign in and approve it.",
    "bundle_not_validated": "This version has not passed validation. Validate it on its policy page first.",
    "bundle_already_active": "This version is already the active one.",
    "bundle_never_active": "This version was never active, so it cannot be a rollback target. Propose it instead.",
    "proposal_exists": "A proposal for this version is already waiting for approval.",
    "proposal_not_pending": "This proposal was already decided.",
    "proposal_expired": "This proposal is too old to approve. Propose the change again.",
    "shadow_running": "A shadow session is already running. Stop it before starting another.",
    "shadow_not_running": "No shadow session is running.",
    "break_glass_unavailable": "Break-glass rollback is not available: no compliance officers are configured to"
                               " be alerted.",
    "notify_unavailable": "Nothing was changed: the other compliance officers could not be alerted.",
    "audit_unavailable": "Nothing was changed: the audit trail cannot record it right now. Try again shortly.",
    "bundle_not_found": "There is no policy version with this name.",
    "proposal_not_found": "There is no such proposal.",
}


def plain(exc: GatewayError) -> str:
    return PLAIN.get(exc.code, exc.message)


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _reason(raw: str) -> str | None:
    """The written reason, or None with the page to say why (the service's own check is reused)."""
    if not raw or len(raw) > MAX_REASON:
        return None
    return reason_text(raw, required=True)


REASON_NEEDED = f"Write the reason (at most {MAX_REASON} characters): it goes into the audit trail."


async def _versions(console: Any) -> tuple[list[BundleInfo], str]:
    return await console.gw.bundles.bundles(), console.gw.policy.version


# -- evaluation ---------------------------------------------------------------------------------


def decision_view(decision: Decision | None, error: str | None = None) -> dict[str, Any]:
    if decision is None:
        return {"effect": "error", "error": error or "no decision", "reasons": [], "step_up": None,
                "obligations": []}
    step = decision.step_up
    return {"effect": effect(decision), "error": None,
            "reasons": [{"code": r.code, "message": r.message} for r in decision.deny],
            "step_up": None if step is None else {"acr": step.acr, "methods": list(step.methods),
                                                  "max_age": step.max_age},
            "obligations": [(str(k), orjson.dumps(v, default=str).decode())
                            for k, v in sorted(decision.obligations.items(), key=lambda kv: str(kv[0]))]}


async def _judge(engine: PolicyEngine, doc: Mapping[str, Any]) -> tuple[Decision | None, str | None]:
    try:
        return await engine.evaluate(doc), None
    except GatewayError as exc:
        return None, f"The policy could not decide: {exc.message}"
    except (KeyError, TypeError, ValueError) as exc:  # an engine reading a member the input lacks
        return None, f"The policy could not decide on this input ({type(exc).__name__}: {exc})"


def candidate_engine(app: web.Application, info: BundleInfo, files: Mapping[str, str],
                     time_budget: float) -> RegoPolicy:
    """The validated version compiled here (as shadow mode compiles its candidate); a few are kept."""
    kept = app[_COMPILED]
    engine = kept.get(info.version)
    if engine is None:
        engine = compile_bundle(files, expect_digest=info.digest, expect_files_digest=info.files_digest,
                                time_budget=time_budget)
        kept[info.version] = engine
        while len(kept) > _COMPILED_KEPT:
            kept.popitem(last=False)
    kept.move_to_end(info.version)
    return engine


# -- the audit trail: recent judged requests, one request's record ------------------------------------


async def _page(gw: Any, flt: Filter, cursor: str | None, max_scanned: int | None = None) -> Page:
    try:
        if isinstance(gw.trail, PostgresAuditSink):
            return await gw.trail.search(flt, limit=MAX_LIMIT, cursor=cursor)
        return await asyncio.to_thread(search, gw.config.audit.path, flt, limit=MAX_LIMIT, cursor=cursor,
                                       max_scanned=max_scanned)
    except AuditWriteError as exc:
        raise GatewayError(AUDIT_UNAVAILABLE, str(exc)) from None


async def _scan(gw: Any, since: float) -> tuple[list[dict[str, Any]], bool]:
    """The last RECENT judged requests' records (they carry ``input_sm3``) since `since`, oldest first
    (the search's order); and whether the scan reached the end within SCAN_PAGES."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    flt = Filter(since=since)
    for _ in range(SCAN_PAGES):
        page = await _page(gw, flt, cursor)
        found += [r for r in page.records if "input_sm3" in r]
        del found[:-RECENT]
        cursor = page.cursor
        if cursor is None:
            return found, True
    return found, False


async def recent_records(gw: Any, now: float) -> list[dict[str, Any]]:
    """The latest judged requests, newest first: the narrowest window holding enough of them (the
    search reads oldest first, so a busy day is read from its last minutes)."""
    found: list[dict[str, Any]] = []
    for window in RECENT_WINDOWS:
        found, complete = await _scan(gw, now - window)
        if len(found) >= RECENT or not complete:
            break
    return list(reversed(found))


async def find_record(gw: Any, request_id: str) -> tuple[dict[str, Any] | None, bool]:
    """The record of a judged request (the latest, should there be two): one search by its id (the
    audit search's ``request_id`` filter); and whether the search was complete (False: the file store's
    trail is longer than FIND_SCANNED records, and the search stopped there)."""
    if not REQUEST_ID.fullmatch(request_id):  # not an id the gateway gives: no record has it
        return None, True
    page = await _page(gw, Filter(request_id=request_id), None, FIND_SCANNED)
    found = [r for r in page.records if r.get("type") in _JUDGED and "input_sm3" in r]
    return (found[-1] if found else None), page.cursor is None


def record_view(r: Mapping[str, Any]) -> dict[str, Any]:
    """What the pages show of a judged request's record (every member there, for strict templates)."""
    t = r.get("time")
    decided = r.get("decision") or ("deny" if r.get("type") == "denial" else r.get("type"))
    return {"request_id": str(r.get("request_id") or ""), "time": t if isinstance(t, (int, float)) else None,
            "route": str(r.get("route") or ""), "decision": str(decided or ""),
            "sub": str(r.get("sub") or ""), "policy_version": str(r.get("policy_version") or "")}


async def open_input(gw: Any, record: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The policy input a past request was judged on, or why it cannot be had (in plain words)."""
    personal = gw.personal
    if personal is None:
        return None, ("This gateway does not keep the policy inputs of past requests (personal-data encryption"
                      " is not configured), so this request cannot be replayed. Try a sample input instead.")
    sealed, sub = record.get("input"), record.get("sub")
    if not isinstance(sealed, dict) or not isinstance(sub, str):
        return None, ("The input of this request was not kept with its record (the customer's data was erased,"
                      " or the key store was unreachable at the time).")
    try:
        doc = await personal.open(sub, INPUT_FIELD, sealed)
    except KeyErased:
        return None, ("The customer's data was erased on request: the input of this request can no longer be"
                      " read.")
    except (FieldCipherError, KeyRingError):
        return None, "The recorded input could not be opened: it does not match the customer's key."
    if not isinstance(doc, dict) or sm3.digest(canonical(doc)).hex() != record.get("input_sm3"):
        return None, "The recorded input does not match its fingerprint in the audit trail: it is not used."
    return doc, None


# -- what-if --------------------------------------------------------------------------------------


def _sample_choices() -> list[tuple[str, dict[str, Any]]]:
    return [(label, dict(doc)) for label, doc in sample_inputs()]


async def what_if_page(request: web.Request) -> web.Response:
    info = await _validated_info(request)
    if info is None:
        return _not_validated(request)
    samples = _sample_choices()
    order = next((i for i, (label, _) in enumerate(samples) if label.startswith("order_place")), 0)
    try:
        chosen = int(request.query.get("sample", str(order)))
    except ValueError:
        chosen = order
    chosen = chosen if 0 <= chosen < len(samples) else order
    text = orjson.dumps(samples[chosen][1], option=orjson.OPT_INDENT_2).decode()
    rid = request.query.get("request", "")[:_REQUEST_ID_CHARS]
    return await _what_if_render(request, info, status=200, input_text=text, request_id=rid, chosen=chosen,
                                 samples=samples, result=None, error=None, source="request" if rid else "sample",
                                 recorded=None)


async def _validated_info(request: web.Request) -> BundleInfo | None:
    version = request.match_info["version"]
    if not VERSION_ID.fullmatch(version):
        raise GatewayError(BUNDLE_NOT_FOUND, "There is no policy version with this name.")
    info = next((b for b in await request.app[CONSOLE_KEY].gw.bundles.bundles() if b.version == version), None)
    if info is None:
        raise GatewayError(BUNDLE_NOT_FOUND, "There is no policy version with this name.")
    return info if info.status == "validated" or info.ever_active else None


def _not_validated(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    version = request.match_info["version"]
    return console.render(request, "error.html", status=409, active="policies", title="Not validated yet",
                          message=f"Version {version} has not passed validation. Only a validated version can be"
                                  " tried: validate it on its policy page first.")


async def _what_if_render(request: web.Request, info: BundleInfo, *, status: int, **ctx: Any) -> web.Response:
    console = request.app[CONSOLE_KEY]
    recent = await recent_records(console.gw, time.time())
    return console.render(request, "whatif.html", status=status, active="policies", info=info,
                          active_version=console.gw.policy.version,
                          recent=[record_view(r) for r in recent], **ctx)


async def what_if(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    gw = console.gw
    session = officer_session(request)
    info = await _validated_info(request)
    if info is None:
        return _not_validated(request)
    form = await request.post()
    source = _text(form, "source")
    raw_input = form.get("input")
    input_text = raw_input if isinstance(raw_input, str) else ""
    rid = _text(form, "request_id")[:_REQUEST_ID_CHARS]
    samples = _sample_choices()
    page: dict[str, Any] = {"input_text": input_text, "request_id": rid, "chosen": -1, "samples": samples,
                            "source": source, "recorded": None, "result": None}

    async def again(status: int, error: str) -> web.Response:
        return await _what_if_render(request, info, status=status, error=error, **page)

    record: dict[str, Any] | None = None
    if source == "request":
        if not rid:
            return await again(400, "Enter the request id of a past request, or pick one from the latest.")
        step_up = require_step_up(request)  # opening a customer's sealed data is more than reading a page
        if step_up is not None:
            return step_up
        record, complete = await find_record(gw, rid)
        if record is None:
            more = "" if complete else (" (the search stopped early: the audit trail is too long to search in"
                                        " full from this page)")
            return await again(404, f"No decision on request {rid} was found in the audit trail{more}.")
        await audit_first(gw, {"type": "admin", "time": time.time(), "sub": session.sub,
                                "action": "policy_what_if_open_input", "request_id": rid,
                                "customer": record.get("sub"), "version": info.version, "via": "console"})
        doc, why = await open_input(gw, record)
        if doc is None:
            return await again(409, why or "The input of this request is not available.")
        page["input_text"] = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
        page["recorded"] = record_view(record)
    else:
        if not input_text.strip():
            return await again(400, "Write the input to try (a JSON document), or load a sample.")
        if len(input_text) > MAX_INPUT_CHARS:
            return await again(400, f"The input is too long: at most {MAX_INPUT_CHARS // 1024} KiB.")
        try:
            parsed = orjson.loads(input_text)
        except orjson.JSONDecodeError as exc:
            return await again(400, f"The input is not valid JSON: line {exc.lineno}, column {exc.colno}:"
                                    f" {exc.msg}.")
        if not isinstance(parsed, dict):
            return await again(400, "The input must be a JSON object, with members such as request and subject.")
        doc = parsed
    try:
        bundle = await gw.bundles.bundle(info.version)
        candidate: PolicyEngine = candidate_engine(request.app, info, bundle.files, gw.bundles.bound)
    except PolicyLoadError as exc:
        return await again(409, f"Version {info.version} cannot be loaded here: {exc}")
    live_engine = gw.policy.engine  # the engine itself: a what-if never counts in a shadow report
    active_version = live_engine.version
    live, live_error = await _judge(live_engine, doc)
    tried, tried_error = await _judge(candidate, doc)
    if live is not None and tried is not None:
        diff = compare(live, tried)
        outcome = "same" if diff is None else "differs"
        kinds = list(diff.kinds) if diff is not None else []
    else:
        outcome, kinds = "error", []
    digest = sm3.digest(canonical(doc)).hex()
    console.audit({"sub": session.sub, "action": "policy_what_if", "version": info.version,
                   "active_version": active_version, "input": "request" if record is not None else "sample",
                   "request_id": rid if record is not None else None, "input_sm3": digest, "outcome": outcome,
                   "kinds": kinds, "via": "console"})
    page["result"] = {"active": decision_view(live, live_error), "candidate": decision_view(tried, tried_error),
                      "outcome": outcome, "kinds": kinds, "digest": digest, "active_version": active_version}
    return await _what_if_render(request, info, status=200, error=None, **page)


# -- shadow mode ----------------------------------------------------------------------------------


async def shadow_page(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    console = request.app[CONSOLE_KEY]
    admin = console.gw.bundles
    bundles, active_version = await _versions(console)
    try:
        report: dict[str, Any] | None = await admin.shadow_report()
    except GatewayError as exc:
        if exc.code != SHADOW_NOT_FOUND.code:
            raise
        report = None
    candidates = [b for b in bundles if b.status == "validated" and b.version != active_version]
    chosen = request.query.get("version", "")
    notice = {"started": "Shadow mode started. The report below fills in as requests arrive.",
              "stopped": "Shadow mode stopped. The report below is final."}.get(request.query.get("done", ""))
    return console.render(request, "shadow.html", status=status, active="policies", report=report,
                          candidates=candidates, chosen=chosen, active_version=active_version, error=error,
                          notice=notice, default_rate=int(admin.cfg.shadow_sample_rate * 100))


async def shadow_show(request: web.Request) -> web.Response:
    return await shadow_page(request)


async def shadow_start(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up
    form = await request.post()
    version = _text(form, "version")
    if not VERSION_ID.fullmatch(version):
        return await shadow_page(request, status=400, error="Choose the validated version to run in shadow mode.")
    try:
        percent = float(_text(form, "sample_percent") or "100")
        rate = sample_rate_of({"sample_rate": percent / 100})
    except (ValueError, GatewayError):
        return await shadow_page(request, status=400, error="The share of requests to compare is a percentage"
                                                            " above 0 and at most 100.")
    reason = _text(form, "reason")
    if len(reason) > MAX_REASON:
        return await shadow_page(request, status=400, error=REASON_NEEDED)
    try:
        await console.gw.bundles.start_shadow(officer_session(request).sub, version, rate, reason)
    except GatewayError as exc:
        return await shadow_page(request, status=exc.status, error=plain(exc))
    return redirect(f"{PREFIX}/shadow?done=started")


async def shadow_stop(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up
    form = await request.post()
    reason = _text(form, "reason")
    if len(reason) > MAX_REASON:
        return await shadow_page(request, status=400, error=REASON_NEEDED)
    try:
        await console.gw.bundles.stop_shadow(officer_session(request).sub, reason)
    except GatewayError as exc:
        return await shadow_page(request, status=exc.status, error=plain(exc))
    return redirect(f"{PREFIX}/shadow?done=stopped")


# -- proposals and approval -------------------------------------------------------------------------


async def proposals_page(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    console = request.app[CONSOLE_KEY]
    admin = console.gw.bundles
    bundles, active_version = await _versions(console)
    by_version = {b.version: b for b in bundles}
    now = time.time()
    rows: list[dict[str, Any]] = []
    for p in await admin.proposals():
        expired = is_expired(p, now, admin.cfg.proposal_ttl)
        info = by_version.get(p.version)
        rows.append({"p": p, "at": p.proposed_at, "state": "expired" if expired else p.status,
                     "uploader": info.uploaded_by if info is not None and p.kind == "activate" else None})
    rows.sort(key=lambda r: (r["state"] != "pending", -r["at"]))
    history = await admin.history()
    chosen = request.query.get("version", "")
    approved = request.query.get("approved", "")
    proposed = request.query.get("proposed", "")
    return console.render(
        request, "proposals.html", status=status, active="policies", rows=rows, history=history[:10],
        # Versions active before are returned to by a rollback (its own page), not proposed anew here.
        candidates=[b for b in bundles if b.status == "validated" and not b.ever_active
                    and b.version != active_version],
        chosen=chosen, active_version=active_version, error=error,
        approved=approved if PROPOSAL_ID.fullmatch(approved) else None,
        proposed=proposed if PROPOSAL_ID.fullmatch(proposed) else None, me=officer_session(request).sub)


async def proposals_show(request: web.Request) -> web.Response:
    return await proposals_page(request)


async def _proposal_form(request: web.Request, page: Callable[..., Awaitable[web.Response]],
                         act: Callable[[str, str, str], Awaitable[Proposal]], choose: str) -> web.Response:
    """A proposal (activation or rollback) from its form: a recent code, a version and a written reason;
    ``page`` shows the form again with what went wrong, ``act`` is the service's call."""
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up
    form = await request.post()
    version = _text(form, "version")
    if not VERSION_ID.fullmatch(version):
        return await page(request, status=400, error=choose)
    reason = _reason(_text(form, "reason"))
    if reason is None:
        return await page(request, status=400, error=REASON_NEEDED)
    try:
        proposal = await act(officer_session(request).sub, version, reason)
    except GatewayError as exc:
        return await page(request, status=exc.status, error=plain(exc))
    return redirect(f"{PREFIX}/proposals?proposed={proposal.id}")


async def propose(request: web.Request) -> web.Response:
    return await _proposal_form(request, proposals_page, request.app[CONSOLE_KEY].gw.bundles.propose,
                                "Choose the validated version to propose.")


async def approve(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    raw = request.match_info["proposal"]
    if not PROPOSAL_ID.fullmatch(raw):
        raise GatewayError(PROPOSAL_NOT_FOUND, "There is no such proposal.")
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up
    try:
        await console.gw.bundles.approve(officer_session(request).sub, int(raw))
    except GatewayError as exc:
        return await proposals_page(request, status=exc.status, error=plain(exc))
    return redirect(f"{PREFIX}/proposals?approved={int(raw)}")


# -- rollback and break-glass -------------------------------------------------------------------------


async def _earlier(console: Any) -> tuple[list[BundleInfo], str]:
    bundles, active_version = await _versions(console)
    return [b for b in bundles if b.ever_active and b.version != active_version], active_version


async def rollback_page(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    console = request.app[CONSOLE_KEY]
    earlier, active_version = await _earlier(console)
    done = request.query.get("rolled_back", "")
    return console.render(request, "rollback.html", status=status, active="policies", earlier=earlier,
                          active_version=active_version, history=(await console.gw.bundles.history())[:10],
                          error=error, rolled_back=done if VERSION_ID.fullmatch(done) else None)


async def rollback_show(request: web.Request) -> web.Response:
    return await rollback_page(request)


async def rollback(request: web.Request) -> web.Response:
    return await _proposal_form(request, rollback_page, request.app[CONSOLE_KEY].gw.bundles.propose_rollback,
                                "Choose the earlier version to return to.")


async def break_glass_page(request: web.Request, *, status: int = 200, error: str | None = None,
                           reason: str = "") -> web.Response:
    console = request.app[CONSOLE_KEY]
    earlier, active_version = await _earlier(console)
    return console.render(request, "rollback_break_glass.html", status=status, active="policies", earlier=earlier,
                          active_version=active_version, officers=list(console.gw.bundles.cfg.officers),
                          error=error, reason=reason, chosen=request.query.get("version", ""))


async def break_glass_show(request: web.Request) -> web.Response:
    return await break_glass_page(request)


async def break_glass(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    step_up = require_step_up(request)
    if step_up is not None:
        return step_up
    form = await request.post()
    version = _text(form, "version")
    written = _text(form, "reason")
    if not VERSION_ID.fullmatch(version):
        return await break_glass_page(request, status=400, error="Choose the earlier version to return to.",
                                      reason=written)
    reason = _reason(written)
    if reason is None:
        return await break_glass_page(request, status=400, error=REASON_NEEDED, reason=written)
    if _text(form, "confirm") != "yes":
        return await break_glass_page(request, status=400, reason=written, error=(
            "Tick the box to confirm that you are rolling back without a second officer's approval."))
    try:
        activation, _ = await console.gw.bundles.break_glass(officer_session(request).sub, version, reason)
    except GatewayError as exc:
        return await break_glass_page(request, status=exc.status, error=plain(exc), reason=written)
    return redirect(f"{PREFIX}/rollback?rolled_back={quote(activation.version, safe='')}")


def add_routes(app: web.Application) -> None:
    app[_COMPILED] = OrderedDict()
    r = app.router
    r.add_get("/policies/{version}/what-if", what_if_page)
    r.add_post("/policies/{version}/what-if", what_if)
    r.add_get("/shadow", shadow_show)
    r.add_post("/shadow/start", shadow_start)
    r.add_post("/shadow/stop", shadow_stop)
    r.add_get("/proposals", proposals_show)
    r.add_post("/proposals", propose)
    r.add_post("/proposals/{proposal}/approve", approve)
    r.add_get("/rollback", rollback_show)
    r.add_post("/rollback", rollback)
    r.add_get("/rollback/break-glass", break_glass_show)
    r.add_post("/rollback/break-glass", break_glass)
