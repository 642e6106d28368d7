"""The gateway process: public and admin listeners around the decision pipeline.

The public listener uses aiohttp's low-level server (no router, no
middleware chain): path normalisation and routing are ours, and every
microsecond saved on the forwarding path is one the security steps can
spend. The admin listener is an ordinary aiohttp application (metrics,
admin API) bound to 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from audit.keys import AuditKeyError, AuditKeys
from audit.sink import AuditSink, AuditWriteError, ChainedSink, FileAuditSink
from audit.witness import FileWitness, PostgresWitness, Witness
from gateway import logs
from gateway.authn.jwks import JwksError
from gateway.authn.revocation import RevocationList
from gateway.authn.tokens import TokenVerifier
from gateway.bundles.runtime import ActivePolicy
from gateway.bundles.service import PolicyAdmin
from gateway.config import AuditConfig, Config, ListenerConfig, RouteConfig
from gateway.context import RequestContext
from gateway.customer_alerts import CustomerAlerts, TransferAlert
from gateway.decision_stats import DecisionStats
from gateway.envelope import PATH as SESSION_KEY_PATH
from gateway.envelope import Decrypt, EncryptResponse, SessionKeyEndpoint, SessionKeyService, session_key_route
from gateway.errors import BAD_HEADER, BAD_REQUEST, SHUTTING_DOWN, ConfigError, GatewayError
from gateway.freezes import FreezeStore
from gateway.identity import AssertionSigner, HmacIdentitySigner, IdentitySigner, terminal_info
from gateway.metrics import Metrics
from gateway.mfa.build import build_stepups
from gateway.mfa.handlers import PREFIX as MFA_PREFIX
from gateway.mfa.handlers import MfaEndpoint, is_face_path, mfa_routes
from gateway.mfa.service import FaceChecks, StepUps
from gateway.mfa.sms import SmsSender
from gateway.netutil import TrustedPeers, client_ip
from gateway.notify import Notifier, build_notifier
from gateway.paths import normalise_target
from gateway.personal_data import PersonalData, SealingSink, build_key_ring
from gateway.pipeline import Pipeline, Step
from gateway.policy.engine import BaselinePolicy, PolicyEngine
from gateway.policy.providers import FactProviders, HttpFactProviders
from gateway.proxy import Forward, ReadBody, StreamAborted, Upstreams, upstream_ssl_context
from gateway.responses import error_response
from gateway.risk.engine import RiskEngine, build_risk
from gateway.risk.scorer import RiskScorer
from gateway.routing import MethodNotAllowed, Router
from gateway.settings import SettingsStore
from gateway.settings_api import PATH as SETTINGS_PATH
from gateway.settings_api import CustomerSettingsEndpoint, settings_route
from gateway.state import build_store
from gateway.state.base import StateStore
from gateway.steps.audit import AuditDecision, base_record
from gateway.steps.authenticate import Authenticate, DeviceProofs
from gateway.steps.bind_account import BindAccount, RequireRole
from gateway.steps.facts import FetchFacts
from gateway.steps.judge import Decide, Score
from gateway.steps.obligations import MaskResponse, Obligations, RefuseFrozen
from gateway.steps.rate_limit import LocalBuckets, Lockouts, LoginAttempt, LoginOutcome, RateLimits
from gateway.steps.risk import Learn, RiskState
from gateway.steps.state_round import StateRound
from gateway.steps.step_up import StepUpChallenge, StepUpToken

log = logging.getLogger("portcullis")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# RFC 9112 3.2 / RFC 3986 host [":" port]: a reg-name or IPv4, or a bracketed IPv6 literal.
_HOST = re.compile(r"(?:[A-Za-z0-9._~-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def build_signers(config: Config) -> dict[str, AssertionSigner]:
    """The identity-assertion signer of each upstream: its own HS256 key, else the ES256 key."""
    ident = config.identity
    es256: IdentitySigner | None = None
    signers: dict[str, AssertionSigner] = {}
    for name, up in config.upstreams.items():
        if up.identity_hmac_key is not None:
            try:
                signers[name] = HmacIdentitySigner.from_file(
                    up.identity_hmac_key, issuer=ident.issuer, audience=ident.audience, ttl=ident.ttl)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"upstreams.{name}.identity_hmac_key: {exc}") from None
            continue
        if es256 is None:
            assert ident.signing_key is not None  # the config loader requires it here
            try:
                es256 = IdentitySigner.from_file(
                    ident.signing_key, issuer=ident.issuer, audience=ident.audience, ttl=ident.ttl)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"identity.signing_key: cannot use {str(ident.signing_key)!r}: {exc}") from None
        signers[name] = es256
    return signers


def build_policy(config: Config) -> PolicyEngine:
    """The configured engine: the Rego bundle (compiled now: errors stop startup) or the baseline."""
    pc = config.policy
    if pc.engine != "rego":
        return BaselinePolicy()
    from gateway.policy.rego import PolicyBundleError, RegoPolicy

    assert pc.bundle is not None  # the config loader requires it for rego
    try:
        return RegoPolicy.from_directory(pc.bundle, time_budget=pc.time_budget_ms / 1000)
    except PolicyBundleError as exc:
        first = exc.message.splitlines()[0] if exc.message else "cannot load the bundle"
        if exc.file and exc.line is not None:
            raise ConfigError(f"policy.bundle: {pc.bundle / exc.file}:{exc.line}:{exc.column}: {first}") from None
        raise ConfigError(f"policy.bundle: {pc.bundle}: {first}") from None


def build_providers(config: Config) -> FactProviders | None:
    """The HTTP fact providers against the configured upstream's /internal routes, if any."""
    pc = config.providers
    if pc is None:
        return None
    up = config.upstreams[pc.upstream]
    tls = upstream_ssl_context(config.upstream_tls) if up.url.startswith("https://") else None
    return HttpFactProviders(
        up.url, pc.internal_token, timeout=pc.timeout, reference_ttl=pc.reference_ttl,
        calendar_ttl=pc.calendar_ttl, restricted_ttl=pc.restricted_ttl, account_ttl=pc.account_ttl,
        position_ttl=pc.position_ttl, order_ttl=pc.order_ttl, quote_ttl=pc.quote_ttl, max_stale=pc.max_stale,
        cache_size=pc.cache_size, pool_size=pc.pool_size, ssl_context=tls)


def _check_request_line(request: web.BaseRequest) -> None:
    """Refuse what aiohttp's parser lets through but RFC 9112 does not."""
    if request.version < (1, 0):  # an HTTP/0.9-style request line: no version at all
        raise GatewayError(BAD_REQUEST, "HTTP/1.0 or later is required", headers={"Connection": "close"})
    host = request.headers.get("Host")
    if host is not None and _HOST.fullmatch(host) is None:
        raise GatewayError(BAD_HEADER, "the Host header is not a valid host")


def _ssl_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(listener.tls_cert), str(listener.tls_key))
    return ctx


class Gateway:
    """Owns the listeners, the shared components and the per-tier pipelines."""

    def __init__(self, config: Config, *, state: StateStore | None = None,
                 audit_sink: AuditSink | None = None, notifier: Notifier | None = None,
                 policy: PolicyEngine | None = None, scorer: RiskScorer | None = None,
                 providers: FactProviders | None = None, clock: Callable[[], float] = time.time,
                 sms_sender: SmsSender | None = None, face: FaceChecks | None = None) -> None:
        self.config = config
        self._clock = clock
        """Wall-clock time of each request's arrival (``ctx.now``: decisions, settings, the identity
        assertion); tests move it to pass a cooling-off without sleeping."""
        self.metrics = Metrics()
        self.router = Router(config.routes)
        self.upstreams = Upstreams(config)
        self.state = state or build_store(config.state)
        self.trail: AuditSink = audit_sink or build_audit_sink(config.audit)
        """The audit store itself; ``audit`` is what the gateway writes through (it may seal first)."""
        self.audit: AuditSink = self.trail
        self.notifier = notifier or build_notifier(config.notifier)
        # Swappable: an approved bundle replaces the engine while requests run (gateway/bundles).
        self.policy = ActivePolicy(policy or build_policy(config))
        self.providers = providers or build_providers(config)
        self.risk: RiskEngine = build_risk(config.risk, self.state)
        self.scorer: RiskScorer = scorer or self.risk
        self.revocations = RevocationList(self.state)
        self.verifier = TokenVerifier(config.issuers, cache_size=config.gateway.claims_cache_size,
                                      revocations=self.revocations)
        self.device_proofs = DeviceProofs(config.dpop, self.state,
                                          max_path_length=config.gateway.max_path_length)
        self.personal: PersonalData | None = None
        if config.crypto.enabled:
            # Personal data in audit records is sealed under the customer's key (gateway/personal_data.py).
            self.personal = PersonalData(config.crypto, build_key_ring(config.crypto, self.state), self.state,
                                         count=self.metrics.personal)
            self.audit = SealingSink(self.audit, self.personal)
        self.metrics.watch_audit(lambda: self.audit.backlog, lambda: self.audit.failed)
        trail = self.trail
        if isinstance(trail, ChainedSink):
            self.metrics.watch_witness(lambda: trail.witness_backlog, lambda: trail.witness_failures)
        g = config.gateway
        self._rid_header = g.request_id_header
        self._trusted = config.trusted_proxies
        self._max_path = g.max_path_length
        self._security = g.security
        self._trusted_peer = TrustedPeers(config.trusted_proxies)
        self.access_log = logs.AccessLog() if g.access_log else None
        self._draining = False
        self._runners: list[web.BaseRunner] = []
        self._flusher: asyncio.Task[None] | None = None
        self.public_port: int | None = None
        self.admin_port: int | None = None
        self.signers = build_signers(config) if g.security else {}
        self._auditor = AuditDecision(self.audit, timeout=config.audit.write_timeout, inputs=self.personal)
        # The console's decisions dashboard: counted in memory, flushed to the state store each second.
        self.decision_stats = self._auditor.stats = DecisionStats(self.state, clock=clock)
        self.metrics.watch_decision_stats(lambda: self.decision_stats.flush_failures)
        self.freezes = FreezeStore(self.state)
        self.settings = SettingsStore(self.state)
        self.customer_alerts = CustomerAlerts(self.notifier, self.settings, self._auditor.queue,
                                              observe=self.metrics.customer_alert)
        self.metrics.customer_alerts_pending.set_function(lambda: self.customer_alerts.pending)
        self.bundles = PolicyAdmin(config, policy=self.policy, state=self.state, notifier=self.notifier,
                                   audit=self.audit, metrics=self.metrics)
        self._settings_route: RouteConfig | None = None
        self._settings_pipeline = Pipeline(())
        self.stepups: StepUps | None = None
        if config.step_up.enabled and g.security:
            phone = getattr(self.providers, "phone_on_file", None)
            self.stepups = build_stepups(config.step_up, state=self.state, risk=self.risk, auditor=self._auditor,
                                         phone_on_file=phone if phone is not None else _no_phone,
                                         sms_sender=sms_sender, face=face, clock=clock,
                                         count=self.metrics.step_up, personal=self.personal)
        self._mfa_routes = mfa_routes(config.step_up)
        self._mfa_pipeline = Pipeline(())
        self.session_keys: SessionKeyService | None = None
        if config.envelope.enabled and g.security:
            self.session_keys = SessionKeyService(config.envelope, self.state, self._auditor.queue, clock=clock,
                                                  count=self.metrics.envelope)
        self._session_key_route = session_key_route(config.envelope)
        self._session_key_pipeline = Pipeline(())
        self.pipelines = self._build_pipelines()

    # -- assembly ---------------------------------------------------------

    def _build_pipelines(self) -> dict[str, Pipeline]:
        g = self.config.gateway
        if not g.security:
            self._forward = Forward(self.upstreams, strip_prefixes=(), strip_credentials=False,
                                    request_id_header=self._rid_header, body_timeout=g.body_timeout)
            bare = Pipeline([self._forward])
            return {tier: bare for tier in ("public", "read", "trade", "transfer", "admin")}
        self._forward = forward = Forward(self.upstreams, strip_prefixes=g.identity_header_prefixes,
                          strip_credentials=True, request_id_header=self._rid_header,
                          body_timeout=g.body_timeout, header_hooks=(self._identity_headers,))
        read_body = ReadBody(g.body_timeout)
        limits = self.config.rate_limits
        self.rate_limit = rate_limit = RateLimits(self.state, LocalBuckets(limits.fallback_size))
        self.lockouts = Lockouts(limits, self.state, self.risk)
        guarded: list[Step] = [
            Authenticate(self.verifier, self.device_proofs), RequireRole(), BindAccount(), rate_limit,
            RiskState(self.risk),
            StateRound(), read_body, self._decrypt(),
            FetchFacts(self.providers, self.state,
                       read_account_facts=self.config.providers is None
                       or self.config.providers.read_account_facts),
            StateRound(), *self._step_up_token(), RefuseFrozen(), Score(self.scorer),
            Decide(self.policy, on_error=self.metrics.policy_error),
            Obligations(self.freezes, self.notifier, self._auditor, officers=self.config.policy_admin.officers,
                        count=self.metrics.obligation),
            StepUpChallenge(self.stepups), self._auditor, Learn(self.risk), forward,
            MaskResponse(self._auditor, count=self.metrics.obligation), EncryptResponse(self.metrics.envelope),
            TransferAlert(self.customer_alerts),
        ]
        self.risk.on_first_sight = self._new_device
        full = Pipeline(guarded)
        cs = self.config.customer_settings
        if cs.enabled:
            # Served by the gateway itself: the same authentication, then the endpoint (gateway/settings_api.py).
            self._settings_route = settings_route(cs)
            self._settings_pipeline = Pipeline([
                Authenticate(self.verifier, self.device_proofs), RequireRole(), StateRound(), read_body,
                self._decrypt(), StateRound(),
                CustomerSettingsEndpoint(cs, self.settings, self.notifier, self._auditor),
                EncryptResponse(self.metrics.envelope)])
        if self.stepups is not None:
            # Served by the gateway itself: the same authentication, then the endpoints (gateway/mfa/handlers.py).
            self._mfa_pipeline = Pipeline([
                Authenticate(self.verifier, self.device_proofs), RequireRole(), rate_limit, StateRound(), read_body,
                self._decrypt(), StateRound(), StepUpToken(self.stepups, self.state),
                MfaEndpoint(self.config.step_up, self.stepups, self.notifier, self._auditor),
                EncryptResponse(self.metrics.envelope)])
        if self.session_keys is not None:
            self._session_key_pipeline = Pipeline([
                Authenticate(self.verifier, self.device_proofs), RequireRole(), rate_limit, StateRound(), read_body,
                SessionKeyEndpoint(self.session_keys)])
        public = Pipeline([LoginAttempt(self.lockouts, g.body_timeout), rate_limit, StateRound(), read_body,
                           forward, LoginOutcome(self.lockouts)])
        return {"public": public, "read": full, "trade": full,
                "transfer": full, "admin": full}

    def _decrypt(self) -> Decrypt:
        return Decrypt(self.session_keys, clock=self._clock, count=self.metrics.envelope)

    def _step_up_token(self) -> list[Step]:
        return [StepUpToken(self.stepups, self.state)] if self.stepups is not None else []

    def _new_device(self, ctx: RequestContext, region: str | None) -> None:
        if ctx.subject is not None and ctx.device_id:
            self.customer_alerts.new_device_seen(ctx.subject.sub, ctx.device_id, region, ctx.now, ctx.request_id)

    def _identity_headers(self, ctx: RequestContext, headers: dict[str, str]) -> None:
        ident = self.config.identity
        s = ctx.subject
        headers[ident.header.lower()] = self.signers[ctx.route.upstream].sign(
            sub=s.sub if s else "anonymous", accounts=s.accounts if s else (),
            roles=s.roles if s else (), acr=s.acr if s else None,
            risk=ctx.risk.level if ctx.risk else "unknown", request_id=ctx.request_id,
            now=int(ctx.now))
        headers[ident.terminal_header.lower()] = terminal_info(
            client_ip=ctx.client_ip, client_port=ctx.client_port, device_id=ctx.device_id,
            user_agent=ctx.headers.get("User-Agent"))

    # -- the public handler ----------------------------------------------

    def _request_id(self, request: web.BaseRequest, peer_trusted: bool) -> str:
        inbound = request.headers.get(self._rid_header)
        if inbound and peer_trusted and _REQUEST_ID.fullmatch(inbound):
            return inbound
        return secrets.token_hex(12)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        peer = request.remote or ""
        peer_trusted = self._trusted_peer(peer)
        rid = self._request_id(request, peer_trusted)
        ctx: RequestContext | None = None
        self.metrics.in_flight.inc()
        try:
            if self._draining:
                raise GatewayError(SHUTTING_DOWN, headers={"Connection": "close"})
            _check_request_line(request)
            path, query = normalise_target(request.raw_path, self._max_path)
            if path in ("/healthz", "/readyz") and request.method in ("GET", "HEAD"):
                return await self._health(path, rid)
            own: Pipeline | None = None  # a route the gateway serves itself runs its own pipeline
            if path == SETTINGS_PATH and self._settings_route is not None:
                route, params, own = self._settings_route, dict[str, str](), self._settings_pipeline
                if request.method not in route.methods:
                    raise MethodNotAllowed(route.methods)
            elif path == SESSION_KEY_PATH and self.session_keys is not None:
                route, params, own = self._session_key_route, dict[str, str](), self._session_key_pipeline
                if request.method not in route.methods:
                    raise MethodNotAllowed(route.methods)
            elif path.startswith(MFA_PREFIX) and self.stepups is not None:
                route, params = self._mfa_routes[1 if is_face_path(path) else 0], dict[str, str]()
                own = self._mfa_pipeline
            else:
                route, params = self.router.match(request.method, path)
            xff = request.headers.getall("X-Forwarded-For", ()) if peer_trusted else ()
            client = client_ip(peer, xff, self._trusted) if xff else peer
            peername = request.transport.get_extra_info("peername") if request.transport else None
            ctx = RequestContext(
                request_id=rid, method=request.method, path=path, query=query, route=route,
                params=params, headers=request.headers,
                client_ip=client,
                client_port=peername[1] if isinstance(peername, tuple) else None,
                scheme=request.scheme, started=started, now=self._clock(),
                peer_trusted=peer_trusted, request=request,
            )
            if own is not None:
                await own.run(ctx)
            else:
                await self.pipelines[route.tier].run(ctx)
            response: web.StreamResponse = ctx.response
            if not response.prepared:
                response.headers[self._rid_header] = rid
            self._finish(ctx, response.status, "ok", started)
            return response
        except StreamAborted as exc:  # headers already sent: the connection is closed instead
            if ctx is not None:
                self._finish(ctx, exc.status, exc.code, started)
            return exc.response
        except MethodNotAllowed as exc:
            exc.headers = {"Allow": ", ".join(exc.allowed)}
            return self._error(exc, rid, ctx, started)
        except GatewayError as exc:
            return self._error(exc, rid, ctx, started)
        finally:
            self.metrics.in_flight.dec()

    def _error(self, exc: GatewayError, rid: str, ctx: RequestContext | None,
               started: float) -> web.Response:
        if ctx is not None:
            if ctx.subject is not None or ctx.route.tier != "public" or ctx.route.login:
                record = base_record(ctx, "denial")
                record.update({"decision": "deny", "code": exc.code, "status": exc.status})
                if ctx.route.login:
                    record["login"] = ctx.login_account
                self._auditor.queue(record, ctx)  # a judged request: the policy input goes in too
            self._finish(ctx, exc.status, exc.code, started)
        else:
            self.metrics.observe_rejected(exc.code, exc.status)
        return error_response(exc, rid, self._rid_header)

    def _finish(self, ctx: RequestContext, status: int, outcome: str, started: float) -> None:
        route, tier = ctx.route.name, ctx.route.tier
        total = time.perf_counter() - started
        up = ctx.upstream_seconds
        d = ctx.decision
        self.metrics.observe_request(route, tier, outcome, status, total - (up or 0.0), up,
                                     None if d is None else ("allow" if d.allow else "deny"))
        if outcome == "ok" and self._security and (tier != "public" or ctx.route.login):
            self._auditor.queue({
                "type": "outcome", "time": time.time(), "request_id": ctx.request_id,
                "route": route, "status": status,
                "upstream_us": int(up * 1e6) if up is not None else None,
                "gateway_us": int((total - (up or 0.0)) * 1e6),
                **({"client_ip": ctx.client_ip, "login": ctx.login_account} if ctx.route.login else {}),
            })
        if self.access_log is not None:
            self.access_log.request(ctx.request_id, ctx.method, route, status, outcome, ctx.client_ip,
                                    int(total * 1e6))

    async def _health(self, path: str, rid: str) -> web.Response:
        if path == "/healthz":
            return web.json_response({"status": "ok"}, headers={self._rid_header: rid})
        checks = await self.readiness()
        ok = all(checks.values())
        return web.json_response({"status": "ready" if ok else "not_ready", "checks": checks},
                                 status=200 if ok else 503, headers={self._rid_header: rid})

    async def readiness(self) -> dict[str, bool]:
        upstreams, state_ok = await asyncio.gather(self.upstreams.check(), self._state_ok())
        checks = {f"upstream:{k}": v for k, v in upstreams.items()}
        checks["state"] = state_ok
        return checks

    async def _state_ok(self) -> bool:
        try:
            return await self.state.ping()
        except Exception:
            return False

    # -- lifecycle --------------------------------------------------------

    @staticmethod
    async def _enrol_demo_totp(stepups: StepUps, path: Path) -> None:
        """[step_up] demo_totp_file: the demo customers' TOTP, enrolled long ago (no cooling-off)."""
        from gateway.demo_keys import read_demo_totp

        if not path.is_file():
            log.warning("demo_totp_file_missing: %s (`portcullis demo` creates it); no TOTP enrolled", path)
            return
        try:
            secrets_by_sub = read_demo_totp(path)
            for sub, secret in secrets_by_sub.items():
                await stepups.totp.enrol_known(sub, secret, 0.0)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"step_up.demo_totp_file: {exc}") from None
        logs.event(log, "demo_totp_enrolled", customers=sorted(secrets_by_sub))

    async def start(self) -> None:
        from gateway.admin import build_admin_app

        if self.config.gateway.security:
            try:
                await self.verifier.start()
            except (JwksError, OSError) as exc:
                raise ConfigError(f"issuers: cannot load a JWKS: {exc}") from None
        start_audit = getattr(self.audit, "start", None)
        if start_audit is not None:  # the chain begins now, its first checkpoint to the witness
            try:
                await start_audit()
            except AuditWriteError as exc:  # no trail, no gateway
                raise ConfigError(f"audit: {exc}") from None
        await self.bundles.start()  # serves the repository's active version before any request
        if self.personal is not None:
            await self.personal.start()
        await self.risk.start()
        await self.upstreams.start()
        self.decision_stats.start()
        if self.stepups is not None and self.config.step_up.demo_totp_file is not None:
            await self._enrol_demo_totp(self.stepups, self.config.step_up.demo_totp_file)
        if self.stepups is not None and self.stepups.face_state.configured:
            # A missing or broken face stack withdraws the face method; the gateway still starts.
            face_ok = await self.stepups.face_state.check()
            logs.event(log, "face_method", available=face_ok)
        if self.access_log is not None:
            self._flusher = asyncio.create_task(self._flush_access_log())
        # No handler cancellation: a client hanging up must not cut a trade off mid-forward
        # (the order may execute upstream); the request finishes and is audited.
        # No request-body decompression: bodies are judged and forwarded as sent.
        public = web.Server(self.handle, handler_cancellation=False, auto_decompress=False)
        shutdown = self.config.gateway.shutdown_timeout
        runner: web.BaseRunner = web.ServerRunner(public, shutdown_timeout=shutdown)
        await runner.setup()
        pub = self.config.public
        site = web.TCPSite(runner, pub.host, pub.port, ssl_context=_ssl_context(pub),
                           backlog=1024, reuse_port=True)
        await site.start()
        self._runners.append(runner)
        self.public_port = _bound_port(runner)

        admin_runner = web.AppRunner(build_admin_app(self), access_log=None,
                                     shutdown_timeout=shutdown)
        await admin_runner.setup()
        adm = self.config.admin
        await web.TCPSite(admin_runner, adm.host, adm.port, ssl_context=_ssl_context(adm)).start()
        self._runners.append(admin_runner)
        self.admin_port = _bound_port(admin_runner)
        if self.access_log is not None:
            self._flusher = asyncio.create_task(self._flush_access_log())
        logs.event(log, "listening", public=f"{pub.host}:{self.public_port}",
                   admin=f"{adm.host}:{self.admin_port}", security=self.config.gateway.security)

    async def _flush_access_log(self) -> None:
        """Lines reach the log within a second even when traffic stops."""
        assert self.access_log is not None
        while True:
            await asyncio.sleep(1.0)
            self.access_log.flush()

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests (up to shutdown_timeout), then close."""
        self._draining = True
        for ws in list(self._forward.websockets):  # streams never end by themselves
            await ws.close(code=1001, message=b"gateway shutting down")
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.upstreams.close()
        await self.bundles.stop()
        if self.providers is not None:
            await self.providers.close()
        if self._flusher is not None:
            self._flusher.cancel()
        if self.access_log is not None:
            self.access_log.flush()
        await self.customer_alerts.drain()
        await self._auditor.drain()
        await self.decision_stats.stop()
        await self.audit.close()
        if self.personal is not None:
            await self.personal.stop()
        close_notifier = getattr(self.notifier, "close", None)
        if close_notifier is not None:  # the webhook notifier's connection pool
            await close_notifier()
        if self.stepups is not None:
            await self.stepups.close()
        await self.risk.close()
        await self.state.close()


async def _no_phone(account: str) -> str | None:
    return None  # no fact provider: no phone on file


def _bound_port(runner: web.BaseRunner) -> int:
    addr = runner.addresses[0]
    return int(addr[1])


def build_audit_sink(cfg: AuditConfig) -> ChainedSink:
    """The audit trail ``[audit]`` describes (files or PostgreSQL): chained, checkpoints signed and witnessed."""
    try:
        keys = (AuditKeys.from_file(cfg.signing_key_file, create=True) if cfg.signing_key_file is not None
                else AuditKeys.generate())
    except AuditKeyError as exc:
        raise ConfigError(f"audit.signing_key_file: {exc}") from None
    witness = build_witness(cfg)
    if cfg.sink == "postgres":
        from audit.postgres import PostgresAuditSink

        assert cfg.postgres_dsn is not None  # the config refuses it otherwise
        return PostgresAuditSink(cfg.postgres_dsn, cfg.postgres_schema, timeout=cfg.postgres_timeout,
                                 fsync_interval=cfg.fsync_interval_ms / 1000, keys=keys, witness=witness,
                                 checkpoint_every=cfg.checkpoint_every, checkpoint_interval=cfg.checkpoint_interval,
                                 spool=cfg.spool_path, max_retained=cfg.max_retained)
    return FileAuditSink(cfg.path, fsync_interval=cfg.fsync_interval_ms / 1000,
                         sync_interval=cfg.sync_interval_ms / 1000, keys=keys, witness=witness,
                         checkpoint_every=cfg.checkpoint_every, checkpoint_interval=cfg.checkpoint_interval,
                         spool=cfg.spool_path, max_retained=cfg.max_retained)


def build_witness(cfg: AuditConfig) -> Witness | None:
    """Where ``[audit]`` sends signed checkpoints besides the trail: a file on other storage, a second
    database, a second party's HTTPS endpoint, or nowhere (then truncation of a chain's newest records
    goes unseen)."""
    if cfg.witness == "file" and cfg.witness_path is not None:
        return FileWitness(cfg.witness_path)
    if cfg.witness == "postgres" and cfg.witness_dsn:
        return PostgresWitness(cfg.witness_dsn, cfg.witness_schema)
    if cfg.witness == "https" and cfg.witness_url:
        from audit.witness import HttpWitness

        try:
            return HttpWitness(cfg.witness_url, ca_file=cfg.witness_ca_file, token=cfg.witness_token)
        except ValueError as exc:  # an unreadable or invalid CA file
            raise ConfigError(f"audit.witness_ca_file: {exc}") from None
    return None
