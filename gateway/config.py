"""Configuration: one TOML file, loaded once into frozen typed objects.

Unknown keys are errors (a typo in a security gateway's configuration must not
silently turn a check off). Every error names the key and what is expected.
Relative file paths are resolved against the configuration file's folder.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.errors import ConfigError

Tier = Literal["public", "read", "trade", "transfer", "admin"]
TIERS: tuple[str, ...] = ("public", "read", "trade", "transfer", "admin")
#: Tiers whose request bodies are buffered and whose dependencies fail closed.
GUARDED_TIERS: frozenset[str] = frozenset({"trade", "transfer", "admin"})
FailMode = Literal["closed", "open"]
BodyKind = Literal["order", "cancel", "transfer"]
BODY_KINDS: tuple[str, ...] = ("order", "cancel", "transfer")

_NetT = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    host: str
    port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    pool_size: int = 256
    health_path: str = "/healthz"
    identity_hmac_key: Path | None = None
    """This upstream's own HS256 key for the identity assertion (else ES256)."""
    payload_key_file: Path | None = None
    """SM4 keys shared with this upstream (SecretBox format, mode 0600) for routes with
    ``upstream_encryption = "sm4-gcm"`` (gateway/upstream_crypto.py)."""


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    iss: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    leeway: float = 30.0
    jwks_min_refetch_interval: float = 30.0


RateLimitBy = Literal["route", "account", "ip"]
RATE_LIMIT_BY: tuple[str, ...] = ("route", "account", "ip")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One token bucket of a route (gateway/steps/rate_limit.py): ``burst`` requests at once,
    refilled at ``rate`` a second, per route (all callers), per account or per client IP."""

    by: RateLimitBy
    rate: float
    """Tokens a second (the configuration's ``rate`` / ``per``)."""
    burst: float


@dataclass(frozen=True, slots=True)
class LoginLockoutConfig:
    """The failed-login lockout (docs/RISK.md "Rate limits and lockout"): ``max_failures`` failed
    logins for one account from one client IP within ``window`` seconds lock that IP out of that
    account for ``lock_time`` seconds."""

    max_failures: int = 5
    window: float = 900.0
    lock_time: float = 900.0
    failure_statuses: tuple[int, ...] = (401, 403)
    """Upstream answers to a login route that count as a failed login."""


@dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    default: tuple[RateLimit, ...] = ()
    """The buckets of routes without their own ``rate_limits``."""
    fallback_size: int = 100_000
    """Buckets (and lockouts) one process keeps for when the state store cannot answer."""
    login: LoginLockoutConfig = field(default_factory=LoginLockoutConfig)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    methods: tuple[str, ...]
    path: str
    upstream: str
    tier: Tier
    fail_mode: FailMode
    body_limit: int
    connect_timeout: float | None = None
    read_timeout: float | None = None
    account_param: str | None = None
    account_query: str | None = None
    websocket: bool = False
    json_body: bool = False
    roles: tuple[str, ...] = ()
    body_kind: BodyKind | None = None
    """What the policy input calls the request: an `order` (body), a `cancel`
    (the `{order_id}` path parameter) or a `transfer` (body); None for others."""
    rate_limits: tuple[RateLimit, ...] = ()
    login: bool = False
    """A login route: failed answers count towards the lockout (``[rate_limits.login]``)."""
    login_field: str | None = None
    """The JSON body member naming the account that logs in (login routes)."""
    login_param: str | None = None
    """Or the path parameter naming it."""
    encryption: Literal["off", "optional", "required"] = "optional"
    """SM4-GCM request envelopes (docs/CRYPTO.md): accepted (optional), demanded of every request with a
    body (required: plaintext gets 415 encryption_required) or refused (off)."""
    upstream_encryption: Literal["off", "sm4-gcm"] = "off"
    """Bodies forwarded sealed under the upstream's payload key (gateway/upstream_crypto.py); buffered tiers."""


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    signing_key: Path | None = None
    """ES256 key for upstreams without their own HMAC key."""
    issuer: str = "portcullis-gateway"
    audience: str = "portcullis-upstream"
    ttl: int = 60
    header: str = "X-Portcullis-Identity"
    terminal_header: str = "X-Portcullis-Terminal"


@dataclass(frozen=True, slots=True)
class StateConfig:
    backend: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "portcullis:"
    timeout: float = 0.5


@dataclass(frozen=True, slots=True)
class DpopConfig:
    """DPoP device proofs (RFC 9449): what a proof may use and where it may point."""

    algorithms: tuple[str, ...] = ("ES256",)
    origins: tuple[str, ...] = ()
    """Normalised ``scheme://host[:port]`` values a proof's ``htu`` may name; empty: the request's own."""
    iat_window: float = 60.0
    """Seconds a proof's ``iat`` may lie before or after the gateway's clock."""
    key_cache_size: int = 10_000
    replay_cache_size: int = 100_000


@dataclass(frozen=True, slots=True)
class AuditConfig:
    sink: Literal["file", "postgres"] = "file"
    path: Path = Path("var/audit")
    postgres_dsn: str | None = None
    """``sink = "postgres"``: the database of the trail (audit/postgres.py); every process its own chain."""
    postgres_schema: str = "portcullis_audit"
    postgres_timeout: float = 2.0
    fsync_interval_ms: float = 5.0
    sync_interval_ms: float = 200.0
    write_timeout: float = 2.0
    signing_key_file: Path | None = None
    """The SM2 audit key signing checkpoints (JSON, 0600, created if absent; audit/keys.py); None: one
    drawn per process, which no verifier knows (tests only)."""
    checkpoint_every: int = 1000
    """Records between two signed checkpoints at most."""
    checkpoint_interval: float = 5.0
    """Seconds an unsigned record waits for its checkpoint at most."""
    spool_path: Path | None = None
    """Local storage for read routes' records while the store refuses writes (the database down), so a
    restart meanwhile keeps them (audit/sink.py Spool); None: held in memory only."""
    max_retained: int = 100_000
    """Queued records held for retrying at most while the store fails; past it they are lost and counted."""
    retention_days: float = 183.0
    """Chains whose newest record is older are archived (money records) or deleted by ``portcullis audit retain``;
    at least 183 days (network logs >= 6 months, RULES.md)."""
    archive_path: Path | None = None
    """Where chains holding trade, transfer or admin records go (kept ``archive_years``); None: they stay."""
    archive_years: float = 20.0
    witness: Literal["none", "file", "postgres", "https"] = "none"
    witness_path: Path | None = None
    witness_dsn: str | None = None
    """``witness = "postgres"``: a second database (another server and owner than the trail's)."""
    witness_schema: str = "portcullis_witness"
    """The file witness (on other storage than ``path``): every signed checkpoint, append-only."""
    witness_url: str | None = None
    """``witness = "https"``: a second party's endpoint (audit/witness_server.py); ``http://`` only to loopback."""
    witness_ca_file: Path | None = None
    """The CA that endpoint's certificate chains to (instead of the system's CAs); None: the system's."""
    witness_token: str | None = field(default=None, repr=False)
    """The bearer token the endpoint expects (``${ENV}`` in the file, like every secret)."""


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """The risk engine (docs/RISK.md): points, thresholds, levels, network tables, retention."""

    points: tuple[tuple[str, int], ...] = ()
    """Overrides of the default points per reason code (gateway/risk/signals.py DEFAULT_POINTS)."""
    thresholds: tuple[tuple[str, float], ...] = ()
    """Overrides of RiskSettings' thresholds by name."""
    levels: tuple[tuple[int, str], ...] = ((80, "critical"), (60, "high"), (30, "medium"), (0, "low"))
    top_factors: int = 5
    regions_file: Path | None = None
    hosting_files: tuple[Path, ...] = ()
    blocklist_files: tuple[tuple[str, Path], ...] = ()
    mmdb_file: Path | None = None
    half_life_days: float = 30.0
    profile_flush_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    """The fact providers (gateway/policy/providers.py): the upstream serving ``/internal``."""

    upstream: str
    internal_token: str
    timeout: float = 0.5
    reference_ttl: float = 300.0
    calendar_ttl: float = 3600.0
    restricted_ttl: float = 60.0
    account_ttl: float = 1.0
    position_ttl: float = 1.0
    order_ttl: float = 1.0
    quote_ttl: float = 1.0
    max_stale: float = 2.0
    """How long past its TTL an entry may still answer while refreshing it fails."""
    cache_size: int = 10_000
    pool_size: int = 32
    read_account_facts: bool = True
    """Read routes naming an account also fetch the account facts (1 s cache)."""


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    engine: Literal["baseline", "rego"] = "baseline"
    bundle: Path | None = None
    time_budget_ms: float = 50.0


DEFAULT_ACR_LEVELS: tuple[str, ...] = (
    "urn:portcullis:acr:pwd", "urn:portcullis:acr:mfa", "urn:portcullis:acr:face",
)


@dataclass(frozen=True, slots=True)
class PolicyAdminConfig:
    """The policy bundle admin API (docs/POLICIES.md, "Changing policies: the admin API")."""

    repository: Literal["memory", "postgres"] = "memory"
    postgres_dsn: str | None = None
    postgres_schema: str = "portcullis"
    postgres_timeout: float = 5.0
    acr_levels: tuple[str, ...] = DEFAULT_ACR_LEVELS
    """Authentication context classes, weakest first."""
    min_acr: str = "urn:portcullis:acr:mfa"
    max_auth_age: float = 300.0
    """Seconds since the officer's authentication (the token's auth_time)."""
    max_bundle_bytes: int = 2 * 1024 * 1024
    max_files: int = 256
    proposal_ttl: float = 86_400.0
    poll_interval: float = 5.0
    """Seconds between checks of the active version (heals a missed pub/sub message)."""
    validation_timeout: float = 60.0
    """Seconds the validator child process may run before it is killed (the bundle is then invalid)."""
    officers: tuple[str, ...] = ()
    """Every compliance officer's subject: who a break-glass rollback, a policy ``alert`` obligation and an
    account freeze notify (alerts and freezes go to the recipient ``compliance`` when empty)."""
    shadow_sample_rate: float = 1.0
    """Share of judged requests a shadow session evaluates when its start does not say (0 < rate <= 1)."""
    shadow_mode: Literal["deferred", "inline"] = "deferred"
    """deferred: the candidate runs after the request's coroutine yields (off its critical path); inline: at once."""
    shadow_samples: int = 10
    """Samples kept per bucket (kind of change, reason code) of a shadow report."""
    shadow_flush_interval: float = 1.0
    """Seconds between flushes of a process's shadow counts to the state store (one pipelined round trip)."""
    shadow_queue: int = 1024
    """Deferred shadow evaluations waiting at most; beyond it a request is not shadowed (counted as dropped)."""
    shadow_retention: float = 7 * 86_400.0
    """Seconds the state store keeps a session's counts and samples after its last update."""


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    sink: Literal["console", "file", "webhook"] = "console"
    path: Path | None = None
    url: str | None = None
    """webhook: where each notification is POSTed (http:// or https://)."""
    secret_file: Path | None = None
    """webhook: the HMAC-SHA256 key (the file's bytes, stripped) signing each body."""
    timeout: float = 5.0
    """webhook: seconds one attempt may take."""
    retries: int = 3
    """webhook: further attempts after a 5xx answer or a connection error (never after a 4xx)."""
    backoff: float = 0.2
    """webhook: seconds before the first retry, doubled before each next one."""


@dataclass(frozen=True, slots=True)
class EnvelopeConfig:
    """Session keys and SM4-GCM envelopes (gateway/envelope.py, docs/CRYPTO.md)."""

    enabled: bool = True
    agreement_key_file: Path | None = None
    """The gateway's SM2 key-agreement keys (JSON, mode 0600, created if absent); None: one per process
    (a single process only: other processes could not open its session keys)."""
    key_file: Path | None = None
    """The SM4 key file sealing session keys in the state store (created if absent; shared by replicas)."""
    max_age: float = 3600.0
    """Seconds a session key may be used; then the client agrees a new one."""
    max_messages: int = 100_000
    """Requests one session key may seal; then the client agrees a new one."""
    window: float = 120.0
    """Seconds an envelope's timestamp may differ from the gateway's clock (replays are refused within it)."""
    per_minute: float = 6.0
    """Key agreements per customer per minute (SM2 decryption is CPU: the endpoint is rate-limited)."""
    burst: float = 5.0
    roles: tuple[str, ...] = ("client",)


DEFAULT_PERSONAL_FIELDS = ("id_number", "phone", "address", "bank_accounts.number", "bank_account_number")


@dataclass(frozen=True, slots=True)
class CryptoConfig:
    """Field-level encryption of personal data under per-customer keys (gateway/personal_data.py, docs/KEYS.md)."""

    enabled: bool = False
    master_key_file: Path | None = None
    """The master key (SM4, a 0600 key file, created if absent); None: ``master_key_env``."""
    master_key_env: str = "PORTCULLIS_MASTER_KEY"
    """The environment variable holding the master key (base64) when there is no file."""
    key_store: str = "state"
    """Where wrapped data keys live: ``state`` (the shared state store: Redis for several processes) or ``file``."""
    key_store_file: Path | None = None
    """The key store file when ``key_store = "file"`` (one machine only)."""
    fields: tuple[str, ...] = DEFAULT_PERSONAL_FIELDS
    """JSON paths of personal data, sealed wherever the gateway stores or logs a document holding them."""
    indexed: tuple[str, ...] = ("id_number", "phone")
    """Of ``fields``, those that also get an HMAC-SM3 blind index (so compliance can search by them)."""
    cache_ttl: float = 60.0
    """Seconds an unwrapped data key is cached per process (an erasure elsewhere is also pushed at once)."""


@dataclass(frozen=True, slots=True)
class CustomerSettingsConfig:
    """The customer security settings API (gateway/settings.py, docs/RISK.md "Customer security settings")."""

    enabled: bool = True
    cooling_off: float = 86_400.0
    """Seconds before a change that lowers protection (a higher limit, an alert off) takes effect."""
    acr_levels: tuple[str, ...] = DEFAULT_ACR_LEVELS
    """Authentication context classes, weakest first."""
    min_acr: str = "urn:portcullis:acr:mfa"
    """The step-up a change that lowers protection needs."""
    max_auth_age: float = 300.0
    """Seconds since that step-up (the token's auth_time)."""
    max_limit: float = 100_000_000.0
    """The highest limit (CNY) a customer may set."""
    roles: tuple[str, ...] = ("client",)
    """Roles that may use the API (a token's sub is the customer)."""


DEFAULT_STEP_UP_LEVELS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("urn:portcullis:acr:pwd", ()),
    ("urn:portcullis:acr:mfa", (("totp",), ("sms",), ("face",))),
    ("urn:portcullis:acr:face", (("face",), ("totp", "sms"))),
)


@dataclass(frozen=True, slots=True)
class StepUpConfig:
    """Step-up challenges and factors (gateway/mfa, docs/STEP_UP.md)."""

    enabled: bool = True
    levels: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = DEFAULT_STEP_UP_LEVELS
    """acr values weakest first, each with its ways (sets of methods that together reach it)."""
    challenge_ttl: float = 300.0
    """Seconds a challenge may be answered."""
    token_ttl: int = 120
    """Seconds a transaction step-up token is valid (it is also consumed on first use)."""
    session_ttl: int = 900
    """Seconds a session step-up token raises the session's acr (at most the policy's max_age)."""
    max_attempts: int = 5
    """Failed attempts of one method on one challenge before that method is withdrawn from it."""
    cooling_off: float = 86_400.0
    """Seconds before a newly enrolled or changed factor may answer transfer step-ups or factor changes."""
    key_file: Path | None = None
    """The step-up token key (32+ bytes, base64; created with mode 0600 if absent)."""
    secrets_file: Path | None = None
    """The SM4 key file sealing TOTP secrets and phone numbers (created if absent)."""
    sms_key_file: Path | None = None
    """The HMAC key the SMS codes are hashed under (created if absent)."""
    sms_sender: str = "file"
    """"file" (the demo's phone: one JSON line per message) or "webhook" (a real SMS provider)."""
    sms_file: Path | None = None
    sms_url: str | None = None
    sms_token_file: Path | None = None
    sms_timeout: float = 5.0
    sms_retries: int = 2
    face_url: str | None = None
    """The biometrics service (``python -m biometrics serve``); None: no face method."""
    face_secret_file: Path | None = None
    face_liveness: bool = True
    """A face step-up needs a blink sequence (3-5 frames); false accepts a single photo."""
    totp_issuer: str = "Portcullis"
    roles: tuple[str, ...] = ("client",)
    """Roles that may enrol factors (a token's sub is the customer)."""
    demo_totp_file: Path | None = None
    """Demo only: a JSON file ``{sub: base32 secret}`` (``portcullis demo`` writes it, mode 0600); at start
    each listed customer's TOTP is enrolled with that secret as if long ago (no cooling-off). Never in production."""
    per_minute: float = 30.0
    """Requests to /auth/mfa a customer may make a minute (a token bucket; a client IP: four times it)."""
    burst: float = 20.0
    face_per_minute: float = 10.0
    """Face answers and enrolments a customer may send a minute (a client IP: three times it)."""
    face_burst: float = 5.0


DEFAULT_IDENTITY_PREFIXES: tuple[str, ...] = (
    "x-user-", "x-portcullis-", "x-remote-user", "x-forwarded-user", "x-authenticated-",
)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    name: str = "portcullis"
    security: bool = True
    request_id_header: str = "X-Request-Id"
    max_path_length: int = 2048
    identity_header_prefixes: tuple[str, ...] = DEFAULT_IDENTITY_PREFIXES
    access_log: bool = True
    shutdown_timeout: float = 15.0
    body_timeout: float = 10.0
    claims_cache_size: int = 10_000


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewaySettings
    public: ListenerConfig
    admin: ListenerConfig
    upstream_tls: UpstreamTLSConfig
    trusted_proxies: tuple[_NetT, ...]
    issuers: tuple[IssuerConfig, ...]
    upstreams: dict[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    identity: IdentityConfig
    state: StateConfig
    audit: AuditConfig
    notifier: NotifierConfig
    source: Path | None = field(default=None, compare=False)
    providers: ProvidersConfig | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    policy_admin: PolicyAdminConfig = field(default_factory=PolicyAdminConfig)
    dpop: DpopConfig = field(default_factory=DpopConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    customer_settings: CustomerSettingsConfig = field(default_factory=CustomerSettingsConfig)
    step_up: StepUpConfig = field(default_factory=StepUpConfig)
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)
    crypto: CryptoConfig = field(default_factory=CryptoConfig)
    console: ConsoleConfig = field(default_factory=lambda: ConsoleConfig())


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The compliance console on the admin listener (docs/CONSOLE.md)."""

    enabled: bool = True
    idle_timeout: float = 900.0
    """Seconds without a page before a signed-in officer must sign in again."""
    max_session: float = 8 * 3600.0
    """Seconds a sign-in lasts at most (never past the token's own expiry)."""
    step_up_max_age: float = 300.0
    """Seconds a TOTP step-up covers changes (policies, approvals, freezes) before the next code is asked."""


# --------------------------------------------------------------------------
# Reading helpers: each takes the table, the key and the dotted path for errors.

T = TypeVar("T")
_MISSING: Any = object()


class _Table:
    """A TOML table being read; remembers which keys were used."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'top level'}: must be a table")
        self.data: dict[str, Any] = data
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: Any = _MISSING) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        value = self.data[name]
        # bool is an int in Python; never accept true for a number.
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: expected {_names(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(
                f"{self.key(name)}: expected {_names(kinds)}, got {type(value).__name__}"
            )
        return value

    def sub(self, name: str, required: bool = False) -> _Table:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(f"{self.key(name)}: required table is missing")
            return _Table({}, self.key(name))
        return _Table(self.data[name], self.key(name))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (check the spelling)")


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join({int: "integer", float: "number", str: "string", bool: "boolean",
                        list: "array", dict: "table"}.get(k, k.__name__) for k in kinds)


def _number(t: _Table, name: str, default: Any = _MISSING, minimum: float = 0.0) -> float:
    value = float(t.get(name, (int, float), default))
    if value < minimum:
        raise ConfigError(f"{t.key(name)}: must be >= {minimum:g} (got {value:g})")
    return value


def _int(t: _Table, name: str, default: Any = _MISSING, lo: int = 0, hi: int = 2**62) -> int:
    value = t.get(name, int, default)
    if not lo <= value <= hi:
        raise ConfigError(f"{t.key(name)}: must be between {lo} and {hi} (got {value})")
    return int(value)


def _strs(t: _Table, name: str, default: Any = _MISSING) -> tuple[str, ...]:
    value = t.get(name, (list, str), default)
    if isinstance(value, str):
        value = [value]
    if not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{t.key(name)}: must be a list of non-empty strings")
    return tuple(value)


def _choice(t: _Table, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
    value = t.get(name, str, default)
    if value not in choices:
        raise ConfigError(
            f"{t.key(name)}: must be one of {', '.join(choices)} (got {value!r})"
        )
    return str(value)


def _path(t: _Table, name: str, base: Path, default: Any = _MISSING) -> Path | None:
    value = t.get(name, str, default)
    if value is None or value == "":
        return None
    p = Path(os.path.expandvars(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def _existing(t: _Table, name: str, base: Path) -> Path | None:
    p = _path(t, name, base, None)
    if p is not None and not p.is_file():
        raise ConfigError(f"{t.key(name)}: file {str(p)!r} does not exist")
    return p


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "kb": 1000, "mib": 1024**2, "mb": 1000**2}


def _size(t: _Table, name: str, default: Any) -> int:
    value = t.get(name, (int, str), default)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{t.key(name)}: must be >= 0")
        return value
    text = value.strip().lower()
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = text[len(num):].strip()
    if not num.isdigit() or unit not in _SIZE_UNITS:
        raise ConfigError(f"{t.key(name)}: expected a size such as 65536 or \"64KiB\" (got {value!r})")
    return int(num) * _SIZE_UNITS[unit]


def _items(t: _Table, name: str) -> list[_Table]:
    value = t.get(name, list, [])
    return [_Table(v, f"{t.key(name)}[{i}]") for i, v in enumerate(value)]


def _listener(t: _Table, base: Path, default_port: int) -> ListenerConfig:
    cert = _existing(t, "tls_cert", base)
    key = _existing(t, "tls_key", base)
    if (cert is None) != (key is None):
        raise ConfigError(f"{t.key('tls_cert')}: tls_cert and tls_key must be set together")
    lc = ListenerConfig(
        host=t.get("host", str, "127.0.0.1"),
        port=_int(t, "port", default_port, 0, 65535),
        tls_cert=cert,
        tls_key=key,
    )
    t.finish()
    return lc


def _validate_path_pattern(pattern: str, where: str) -> None:
    if not pattern.startswith("/"):
        raise ConfigError(f"{where}: must start with '/' (got {pattern!r})")
    for seg in pattern.split("/")[1:]:
        if seg.startswith("{") != seg.endswith("}"):
            raise ConfigError(f"{where}: parameter segments look like {{name}} (got {seg!r})")
        if seg.startswith("{") and not seg[1:-1].isidentifier():
            raise ConfigError(f"{where}: {seg!r} is not a valid parameter name")


_DEFAULT_BODY_LIMIT = {"public": 64 * 1024, "read": 64 * 1024, "trade": 64 * 1024,
                       "transfer": 64 * 1024, "admin": 1024 * 1024}


def _limits(t: _Table, name: str, *, account: bool) -> tuple[RateLimit, ...]:
    """An array of buckets: ``{by = "ip", rate = 10, per = 1, burst = 20}`` (per and burst optional)."""
    from gateway.state.base import check_bucket  # here: gateway.state imports this module

    limits = []
    for lt in _items(t, name):
        by = _choice(lt, "by", RATE_LIMIT_BY)
        if by == "account" and not account:
            raise ConfigError(f"{lt.key('by')}: this route names no account (an unauthenticated route"
                              " needs login = true with login_field or login_param)")
        rate = _number(lt, "rate", minimum=0.0)
        per = _number(lt, "per", 1.0, minimum=0.0)
        burst = _number(lt, "burst", max(rate, 1.0), minimum=1.0)
        if rate <= 0 or per <= 0:
            raise ConfigError(f"{lt.key('rate')}: rate and per must be positive (got {rate:g} per {per:g} s)")
        try:
            check_bucket(rate / per, burst, 0.0, 1)
        except ValueError as exc:
            raise ConfigError(f"{lt.key('rate')}: {exc}") from None
        limits.append(RateLimit(by=by, rate=rate / per, burst=burst))  # type: ignore[arg-type]
        lt.finish()
    return tuple(limits)


def _rate_limits(t: _Table) -> RateLimitsConfig:
    lt = t.sub("login")
    statuses = lt.get("failure_statuses", list, [401, 403])
    if not statuses or not all(isinstance(v, int) and not isinstance(v, bool) and 400 <= v <= 599
                               for v in statuses):
        raise ConfigError(f"{lt.key('failure_statuses')}: a list of HTTP error statuses (400-599)")
    login = LoginLockoutConfig(
        max_failures=_int(lt, "max_failures", 5, 1, 1000),
        window=_number(lt, "window", 900.0, minimum=1.0),
        lock_time=_number(lt, "lock_time", 900.0, minimum=1.0),
        failure_statuses=tuple(statuses),
    )
    for key in ("window", "lock_time"):
        if getattr(login, key) > 30 * 86_400:
            raise ConfigError(f"{lt.key(key)}: at most 30 days (got {getattr(login, key):g} seconds)")
    lt.finish()
    # The default applies to every route, unauthenticated ones too: no account buckets there.
    cfg = RateLimitsConfig(default=_limits(t, "default", account=False),
                           fallback_size=_int(t, "fallback_size", 100_000, 1, 10_000_000), login=login)
    t.finish()
    return cfg


def _route(t: _Table, upstreams: dict[str, UpstreamConfig],
           limits: RateLimitsConfig | None = None) -> RouteConfig:
    tier = _choice(t, "tier", TIERS)
    path = t.get("path", str)
    _validate_path_pattern(path, t.key("path"))
    upstream = t.get("upstream", str)
    if upstream not in upstreams:
        known = ", ".join(sorted(upstreams)) or "none defined"
        raise ConfigError(f"{t.key('upstream')}: unknown upstream {upstream!r} (known: {known})")
    methods = tuple(m.upper() for m in _strs(t, "methods", ["GET"]))
    account_param = t.get("account_param", str, None)
    if account_param is not None and "{" + account_param + "}" not in path:
        raise ConfigError(
            f"{t.key('account_param')}: {account_param!r} is not a parameter of {path!r}"
        )
    if tier == "public" and (account_param or "account_query" in t.data):
        raise ConfigError(
            f"{t.key('tier')}: public routes are not authenticated, so they cannot name an account"
        )
    default_fail = "closed" if tier in GUARDED_TIERS else "open"
    fail_mode = _choice(t, "fail_mode", ("closed", "open"), default_fail)
    if tier in GUARDED_TIERS and fail_mode != "closed":
        raise ConfigError(f"{t.key('fail_mode')}: {tier} routes always fail closed")
    body_kind = _choice(t, "body_kind", BODY_KINDS, None) if "body_kind" in t.data else None
    if body_kind is not None and tier not in ("trade", "transfer"):
        raise ConfigError(f"{t.key('body_kind')}: only trade and transfer routes carry orders or transfers")
    if body_kind == "cancel" and "{order_id}" not in path:
        raise ConfigError(f"{t.key('body_kind')}: a cancel route needs an {{order_id}} parameter in its path")
    login = t.get("login", bool, False)
    login_field = t.get("login_field", str, None)
    login_param = t.get("login_param", str, None)
    if login:
        if tier != "public":
            raise ConfigError(f"{t.key('login')}: login routes are public (the caller is not authenticated yet)")
        if (login_field is None) == (login_param is None):
            raise ConfigError(f"{t.key('login_field')}: a login route names its account with exactly one of"
                              " login_field (a JSON body member) or login_param (a path parameter)")
        if login_param is not None and "{" + login_param + "}" not in path:
            raise ConfigError(f"{t.key('login_param')}: {login_param!r} is not a parameter of {path!r}")
    elif login_field is not None or login_param is not None:
        raise ConfigError(f"{t.key('login')}: login_field and login_param need login = true")
    if "rate_limits" in t.data:
        rate_limits = _limits(t, "rate_limits", account=tier != "public" or login)
    else:
        rate_limits = limits.default if limits is not None else ()
    t.used.add("rate_limits")
    rc = RouteConfig(
        name=t.get("name", str, f"{methods[0]} {path}"),
        methods=methods,
        path=path,
        upstream=upstream,
        tier=tier,  # type: ignore[arg-type]
        fail_mode=fail_mode,  # type: ignore[arg-type]
        body_limit=_size(t, "body_limit", _DEFAULT_BODY_LIMIT[tier]),
        connect_timeout=_number(t, "connect_timeout", None) if "connect_timeout" in t.data else None,
        read_timeout=_number(t, "read_timeout", None) if "read_timeout" in t.data else None,
        account_param=account_param,
        account_query=t.get("account_query", str, None),
        websocket=t.get("websocket", bool, False),
        json_body=t.get("json_body", bool, tier in GUARDED_TIERS),
        roles=_strs(t, "roles", []),
        body_kind=body_kind,  # type: ignore[arg-type]
        rate_limits=rate_limits,
        login=login,
        login_field=login_field,
        login_param=login_param,
        encryption=_choice(t, "encryption", ("off", "optional", "required"), "optional"),  # type: ignore[arg-type]
        upstream_encryption=_upstream_encryption(t, tier, upstreams[upstream]),  # type: ignore[arg-type]
    )
    t.used.update({"connect_timeout", "read_timeout", "body_kind"})
    t.finish()
    return rc


def _upstream_encryption(t: _Table, tier: str, upstream: UpstreamConfig) -> str:
    mode = _choice(t, "upstream_encryption", ("off", "sm4-gcm"), "off")
    if mode == "off":
        return mode
    where = t.key("upstream_encryption")
    if upstream.payload_key_file is None:
        raise ConfigError(f"{where}: upstream {upstream.name!r} has no payload key: set"
                          f" upstreams.{upstream.name}.payload_key_file (a key file shared with that backend)")
    if tier not in GUARDED_TIERS or t.data.get("websocket") is True:
        raise ConfigError(f"{where}: only buffered routes (tier trade, transfer or admin, not a WebSocket)"
                          f" can re-encrypt their bodies; this {tier} route's body streams")
    return mode


def parse(data: dict[str, Any], base: Path, source: Path | None = None) -> Config:
    """Build a validated Config from parsed TOML data."""
    top = _Table(data, "")

    g = top.sub("gateway")
    settings = GatewaySettings(
        name=g.get("name", str, "portcullis"),
        security=g.get("security", bool, True),
        request_id_header=g.get("request_id_header", str, "X-Request-Id"),
        max_path_length=_int(g, "max_path_length", 2048, 16, 65536),
        identity_header_prefixes=tuple(
            p.lower() for p in _strs(g, "identity_header_prefixes",
                                     list(DEFAULT_IDENTITY_PREFIXES))
        ),
        access_log=g.get("access_log", bool, True),
        shutdown_timeout=_number(g, "shutdown_timeout", 15.0),
        body_timeout=_number(g, "body_timeout", 10.0, minimum=0.001),
        claims_cache_size=_int(g, "claims_cache_size", 10_000, 0, 10_000_000),
    )
    g.finish()

    listeners = top.sub("listeners")
    public = _listener(listeners.sub("public"), base, 8080)
    admin = _listener(listeners.sub("admin"), base, 8081)
    listeners.finish()

    ut = top.sub("upstream_tls")
    upstream_tls = UpstreamTLSConfig(
        ca_file=_existing(ut, "ca_file", base),
        client_cert=_existing(ut, "client_cert", base),
        client_key=_existing(ut, "client_key", base),
    )
    if (upstream_tls.client_cert is None) != (upstream_tls.client_key is None):
        raise ConfigError("upstream_tls.client_cert: client_cert and client_key must be set together")
    ut.finish()

    net = top.sub("network")
    proxies = []
    for i, cidr in enumerate(_strs(net, "trusted_proxies", [])):
        try:
            proxies.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"network.trusted_proxies[{i}]: {cidr!r} is not a CIDR") from None
    net.finish()

    issuers = []
    for it in _items(top, "issuers"):
        jwks_file = _path(it, "jwks_file", base, None)
        jwks_url = it.get("jwks_url", str, None)
        if (jwks_file is None) == (jwks_url is None):
            raise ConfigError(f"{it.key('jwks_file')}: set exactly one of jwks_file or jwks_url")
        if jwks_url is not None and not jwks_url.startswith(("https://", "http://127.", "http://localhost")):
            raise ConfigError(f"{it.key('jwks_url')}: must be an https:// URL")
        algorithms = _strs(it, "algorithms")
        bad = [a for a in algorithms if a.lower() == "none" or a.startswith("HS")]
        if bad:
            raise ConfigError(
                f"{it.key('algorithms')}: {bad[0]!r} is not allowed; use asymmetric algorithms"
                " (RS256, PS256, ES256, ES384, EdDSA)"
            )
        issuers.append(IssuerConfig(
            iss=it.get("iss", str),
            audience=_strs(it, "audience"),
            algorithms=algorithms,
            jwks_file=jwks_file,
            jwks_url=jwks_url,
            leeway=_number(it, "leeway", 30.0),
            jwks_min_refetch_interval=_number(it, "jwks_min_refetch_interval", 30.0),
        ))
        it.finish()
    if len({i.iss for i in issuers}) != len(issuers):
        raise ConfigError("issuers: two issuers share the same iss")

    ups_t = top.sub("upstreams")
    upstreams: dict[str, UpstreamConfig] = {}
    for name in list(ups_t.data):
        u = ups_t.sub(name)
        url = u.get("url", str)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{u.key('url')}: must start with http:// or https:// (got {url!r})")
        upstreams[name] = UpstreamConfig(
            name=name,
            url=url.rstrip("/"),
            connect_timeout=_number(u, "connect_timeout", 2.0),
            read_timeout=_number(u, "read_timeout", 10.0),
            pool_size=_int(u, "pool_size", 256, 1, 100_000),
            health_path=u.get("health_path", str, "/healthz"),
            identity_hmac_key=_path(u, "identity_hmac_key", base, None),
            payload_key_file=_payload_key_file(u, base),
        )
        u.finish()
    ups_t.finish()

    rate_limits = _rate_limits(top.sub("rate_limits"))
    routes = tuple(_route(rt, upstreams, rate_limits) for rt in _items(top, "routes"))
    if settings.security and routes and not issuers:
        raise ConfigError("issuers: at least one issuer is required when gateway.security is on")

    idt = top.sub("identity", required=settings.security)
    signing_key = _path(idt, "signing_key", base, None)
    es256_upstreams = sorted(n for n, u in upstreams.items() if u.identity_hmac_key is None)
    if settings.security and signing_key is None and es256_upstreams:
        raise ConfigError(
            "identity.signing_key: required for upstreams without identity_hmac_key"
            f" ({', '.join(es256_upstreams)})"
        )
    identity = IdentityConfig(
        signing_key=signing_key,
        issuer=idt.get("issuer", str, "portcullis-gateway"),
        audience=idt.get("audience", str, "portcullis-upstream"),
        ttl=_int(idt, "ttl", 60, 1, 3600),
        header=idt.get("header", str, "X-Portcullis-Identity"),
        terminal_header=idt.get("terminal_header", str, "X-Portcullis-Terminal"),
    )
    idt.finish()

    st = top.sub("state")
    state = StateConfig(
        backend=_choice(st, "backend", ("memory", "redis"), "memory"),  # type: ignore[arg-type]
        url=os.path.expandvars(st.get("url", str, "redis://127.0.0.1:6379/0")),
        prefix=os.path.expandvars(st.get("prefix", str, "portcullis:")),
        timeout=_number(st, "timeout", 0.5),
    )
    st.finish()

    at = top.sub("audit")
    audit = AuditConfig(
        sink=_choice(at, "sink", ("file", "postgres"), "file"),  # type: ignore[arg-type]
        postgres_dsn=_env(at, "postgres_dsn") if "postgres_dsn" in at.data else None,
        postgres_schema=at.get("postgres_schema", str, "portcullis_audit"),
        postgres_timeout=_number(at, "postgres_timeout", 2.0, minimum=0.05),
        path=_path(at, "path", base, "var/audit") or base / "var/audit",
        fsync_interval_ms=_number(at, "fsync_interval_ms", 5.0),
        sync_interval_ms=_number(at, "sync_interval_ms", 200.0),
        write_timeout=_number(at, "write_timeout", 2.0),
        signing_key_file=_path(at, "signing_key_file", base, None),
        checkpoint_every=_int(at, "checkpoint_every", 1000, 1, 10_000_000),
        checkpoint_interval=_number(at, "checkpoint_interval", 5.0, minimum=0.05),
        spool_path=_path(at, "spool_path", base, None),
        max_retained=_int(at, "max_retained", 100_000, 0, 100_000_000),
        retention_days=_number(at, "retention_days", 183.0, minimum=183.0),
        archive_path=_path(at, "archive_path", base, None),
        archive_years=_number(at, "archive_years", 20.0, minimum=20.0),
        witness=_choice(at, "witness", ("none", "file", "postgres", "https"), "none"),  # type: ignore[arg-type]
        witness_path=_path(at, "witness_path", base, None),
        witness_dsn=_env(at, "witness_dsn") if "witness_dsn" in at.data else None,
        witness_schema=at.get("witness_schema", str, "portcullis_witness"),
        witness_url=_witness_url(at),
        witness_ca_file=_existing(at, "witness_ca_file", base),
        witness_token=_env(at, "witness_token") if "witness_token" in at.data else None,
    )
    if audit.sink == "postgres" and not audit.postgres_dsn:
        raise ConfigError(f"{at.key('postgres_dsn')}: required when sink = \"postgres\"")
    if audit.witness == "postgres" and not audit.witness_dsn:
        raise ConfigError(f"{at.key('witness_dsn')}: required when witness = \"postgres\"")
    if audit.witness == "file" and audit.witness_path is None:
        raise ConfigError(f"{at.key('witness_path')}: required when witness = \"file\"")
    if audit.witness == "https" and audit.witness_url is None:
        raise ConfigError(f"{at.key('witness_url')}: required when witness = \"https\"")
    at.finish()

    notifier = _notifier(top.sub("notifier"), base)

    providers = _providers(top, upstreams) if "providers" in top.data else None
    top.used.add("providers")
    policy = _policy(top.sub("policy"), base)
    policy_admin = _policy_admin(top.sub("policy_admin"))
    dpop = _dpop(top.sub("dpop"))
    risk = _risk(top.sub("risk"), base)
    customer_settings = _customer_settings(top.sub("customer_settings"))
    step_up = _step_up(top.sub("step_up"), base)
    envelope = _envelope(top.sub("envelope"), base)
    crypto = _crypto(top.sub("crypto"), base)
    ct = top.sub("console")
    console = ConsoleConfig(
        enabled=ct.get("enabled", bool, True),
        idle_timeout=_number(ct, "idle_timeout", 900.0, minimum=30.0),
        max_session=_number(ct, "max_session", 8 * 3600.0, minimum=60.0),
        step_up_max_age=_number(ct, "step_up_max_age", 300.0, minimum=10.0),
    )
    ct.finish()

    top.finish()
    return Config(
        gateway=settings,
        public=public,
        admin=admin,
        upstream_tls=upstream_tls,
        trusted_proxies=tuple(proxies),
        issuers=tuple(issuers),
        upstreams=upstreams,
        routes=routes,
        identity=identity,
        state=state,
        audit=audit,
        notifier=notifier,
        source=source,
        providers=providers,
        policy=policy,
        policy_admin=policy_admin,
        dpop=dpop,
        risk=risk,
        rate_limits=rate_limits,
        customer_settings=customer_settings,
        step_up=step_up,
        envelope=envelope,
        crypto=crypto,
        console=console,
    )


def _payload_key_file(t: _Table, base: Path) -> Path | None:
    """The path, checked now (exists, mode 0600, SecretBox format) so a bad file stops the start."""
    path = _path(t, "payload_key_file", base, None)
    if path is not None:
        # Here, not at the top: the config module stays free of `cryptography` until a key is named.
        from gateway.upstream_crypto import PayloadKeys, UpstreamEnvelopeError

        try:
            PayloadKeys.from_file(path)
        except UpstreamEnvelopeError as exc:
            raise ConfigError(f"{t.key('payload_key_file')}: {exc}") from None
    return path


def _witness_url(t: _Table) -> str | None:
    """``[audit] witness_url``, checked like the witness will (https, or http to loopback only)."""
    if "witness_url" not in t.data:
        return None
    from audit.witness import check_witness_url

    try:
        return check_witness_url(os.path.expandvars(t.get("witness_url", str)))
    except ValueError as exc:
        raise ConfigError(f"{t.key('witness_url')}: {exc}") from None


def _env(t: _Table, name: str) -> str:
    """A string that may be ``${NAME}`` / ``$NAME``: an unset variable is an error, not ""."""
    raw: str = t.get(name, str)
    value = os.path.expandvars(raw)
    if "$" in value:
        raise ConfigError(f"{t.key(name)}: environment variable in {raw!r} is not set")
    if not value:
        raise ConfigError(f"{t.key(name)}: must not be empty")
    return value


def _providers(top: _Table, upstreams: dict[str, UpstreamConfig]) -> ProvidersConfig:
    t = top.sub("providers")
    upstream = t.get("upstream", str)
    if upstream not in upstreams:
        known = ", ".join(sorted(upstreams)) or "none defined"
        raise ConfigError(f"{t.key('upstream')}: unknown upstream {upstream!r} (known: {known})")
    pc = ProvidersConfig(
        upstream=upstream,
        internal_token=_env(t, "internal_token"),
        timeout=_number(t, "timeout", 0.5, minimum=0.001),
        reference_ttl=_number(t, "reference_ttl", 300.0),
        calendar_ttl=_number(t, "calendar_ttl", 3600.0),
        restricted_ttl=_number(t, "restricted_ttl", 60.0),
        account_ttl=_number(t, "account_ttl", 1.0),
        position_ttl=_number(t, "position_ttl", 1.0),
        order_ttl=_number(t, "order_ttl", 1.0),
        quote_ttl=_number(t, "quote_ttl", 1.0),
        max_stale=_number(t, "max_stale", 2.0),
        cache_size=_int(t, "cache_size", 10_000, 1, 10_000_000),
        pool_size=_int(t, "pool_size", 32, 1, 10_000),
        read_account_facts=t.get("read_account_facts", bool, True),
    )
    t.finish()
    return pc


def _policy(t: _Table, base: Path) -> PolicyConfig:
    engine = _choice(t, "engine", ("baseline", "rego"), "baseline")
    bundle = _path(t, "bundle", base, None)
    if engine == "rego":
        if bundle is None:
            raise ConfigError(f"{t.key('bundle')}: required when engine = \"rego\"")
        if not bundle.is_dir():
            raise ConfigError(f"{t.key('bundle')}: folder {str(bundle)!r} does not exist")
    pc = PolicyConfig(
        engine=engine,  # type: ignore[arg-type]
        bundle=bundle,
        time_budget_ms=_number(t, "time_budget_ms", 50.0, minimum=0.1),
    )
    t.finish()
    return pc


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


_DPOP_ALGORITHMS = ("ES256", "EdDSA")
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


def _dpop(t: _Table) -> DpopConfig:
    algorithms = _strs(t, "algorithms", ["ES256"])
    for alg in algorithms:
        if alg not in _DPOP_ALGORITHMS:
            raise ConfigError(f"{t.key('algorithms')}: {alg!r} is not allowed for DPoP proofs;"
                              f" use {' or '.join(_DPOP_ALGORITHMS)} (asymmetric only)")
    origins = []
    for i, origin in enumerate(_strs(t, "origins", [])):
        m = _ORIGIN.fullmatch(origin.lower().rstrip("/"))
        if m is None:
            raise ConfigError(f"{t.key('origins')}[{i}]: expected scheme://host[:port] as clients call the"
                              f" gateway, e.g. \"https://api.broker.example\" (got {origin!r})")
        scheme, host, port = m.groups()
        default = {"http": ":80", "https": ":443"}[scheme]
        origins.append(f"{scheme}://{host}{'' if port in (None, default) else port}")
    config = DpopConfig(
        algorithms=algorithms,
        origins=tuple(origins),
        iat_window=_number(t, "iat_window", 60.0, minimum=1.0),
        key_cache_size=_int(t, "key_cache_size", 10_000, 0, 10_000_000),
        replay_cache_size=_int(t, "replay_cache_size", 100_000, 1, 100_000_000),
    )
    if config.iat_window > 3600:
        raise ConfigError(f"{t.key('iat_window')}: must be at most 3600 seconds (got {config.iat_window:g})")
    t.finish()
    return config


def _risk(t: _Table, base: Path) -> RiskConfig:
    from gateway.risk.signals import DEFAULT_POINTS, RiskSettings  # here: gateway.risk imports this module

    pt = t.sub("points")
    points = []
    for code in list(pt.data):
        if code not in DEFAULT_POINTS:
            raise ConfigError(f"{pt.key(code)}: unknown reason code (known: {', '.join(sorted(DEFAULT_POINTS))})")
        points.append((code, _int(pt, code, lo=0, hi=100)))
    pt.finish()
    th = t.sub("thresholds")
    names = [n for n in RiskSettings.__dataclass_fields__ if not n.startswith("_") and n != "points"]
    thresholds = []
    for name in list(th.data):
        if name not in names:
            raise ConfigError(f"{th.key(name)}: unknown threshold (known: {', '.join(names)})")
        thresholds.append((name, _number(th, name)))
    th.finish()
    lv = t.sub("levels")
    medium, high, critical = (_int(lv, "medium", 30, 1, 100), _int(lv, "high", 60, 1, 100),
                              _int(lv, "critical", 80, 1, 100))
    if not medium < high < critical:
        raise ConfigError(f"{lv.key('medium')}: levels must rise: medium < high < critical "
                          f"(got {medium}, {high}, {critical})")
    lv.finish()
    net = t.sub("network")
    blocklists = net.sub("blocklist_files")
    block = []
    for name in list(blocklists.data):
        path = _existing(blocklists, name, base)
        assert path is not None
        block.append((name, path))
    blocklists.finish()
    hosting = []
    for i, item in enumerate(_strs(net, "hosting_files", [])):
        path = _path(_Table({"f": item}, net.key(f"hosting_files[{i}]")), "f", base)
        if path is None or not path.is_file():
            raise ConfigError(f"{net.key('hosting_files')}[{i}]: file {item!r} does not exist")
        hosting.append(path)
    config = RiskConfig(
        points=tuple(points), thresholds=tuple(thresholds),
        levels=((critical, "critical"), (high, "high"), (medium, "medium"), (0, "low")),
        top_factors=_int(t, "top_factors", 5, 1, 28),
        regions_file=_existing(net, "regions_file", base), hosting_files=tuple(hosting),
        blocklist_files=tuple(block), mmdb_file=_existing(net, "mmdb_file", base),
        half_life_days=_number(t, "half_life_days", 30.0, minimum=1.0),
        profile_flush_interval=_number(t, "profile_flush_interval", 1.0, minimum=0.05),
    )
    net.finish()
    t.finish()
    return config


def _acr_levels(t: _Table) -> tuple[tuple[str, ...], str]:
    """``acr_levels`` (distinct, weakest first) and ``min_acr`` (one of them): a step-up's settings."""
    levels = _strs(t, "acr_levels", list(DEFAULT_ACR_LEVELS))
    if not levels or len(set(levels)) != len(levels):
        raise ConfigError(f"{t.key('acr_levels')}: must list distinct acr values, weakest first")
    min_acr = t.get("min_acr", str, "urn:portcullis:acr:mfa")
    if min_acr not in levels:
        raise ConfigError(f"{t.key('min_acr')}: {min_acr!r} is not one of acr_levels ({', '.join(levels)})")
    return levels, str(min_acr)


def _policy_admin(t: _Table) -> PolicyAdminConfig:
    repository = _choice(t, "repository", ("memory", "postgres"), "memory")
    dsn = _env(t, "postgres_dsn") if "postgres_dsn" in t.data else None
    t.used.add("postgres_dsn")
    if repository == "postgres" and dsn is None:
        raise ConfigError(f"{t.key('postgres_dsn')}: required when repository = \"postgres\"")
    if dsn is not None and not dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{t.key('postgres_dsn')}: must start with postgresql:// (a libpq URI)")
    schema = t.get("postgres_schema", str, "portcullis")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(f"{t.key('postgres_schema')}: must be a plain SQL identifier "
                          f"(letters, digits, underscore; got {schema!r})")
    levels, min_acr = _acr_levels(t)
    max_bytes = _size(t, "max_bundle_bytes", 2 * 1024 * 1024)
    if not 1024 <= max_bytes <= 64 * 1024 * 1024:
        raise ConfigError(f"{t.key('max_bundle_bytes')}: must be between 1KiB and 64MiB (got {max_bytes})")
    officers = _strs(t, "officers", [])
    if len(set(officers)) != len(officers):
        raise ConfigError(f"{t.key('officers')}: lists a subject twice")
    rate = _number(t, "shadow_sample_rate", 1.0, minimum=0.0001)
    if rate > 1.0:
        raise ConfigError(f"{t.key('shadow_sample_rate')}: a share of requests, at most 1 (got {rate:g})")
    pa = PolicyAdminConfig(
        repository=repository,  # type: ignore[arg-type]
        postgres_dsn=dsn,
        postgres_schema=schema,
        postgres_timeout=_number(t, "postgres_timeout", 5.0, minimum=0.1),
        acr_levels=levels,
        min_acr=min_acr,
        max_auth_age=_number(t, "max_auth_age", 300.0, minimum=1.0),
        max_bundle_bytes=max_bytes,
        max_files=_int(t, "max_files", 256, 1, 10_000),
        proposal_ttl=_number(t, "proposal_ttl", 86_400.0, minimum=1.0),
        poll_interval=_number(t, "poll_interval", 5.0, minimum=0.05),
        validation_timeout=_number(t, "validation_timeout", 60.0, minimum=1.0),
        officers=officers,
        shadow_sample_rate=rate,
        shadow_mode=_choice(t, "shadow_mode", ("deferred", "inline"), "deferred"),  # type: ignore[arg-type]
        shadow_samples=_int(t, "shadow_samples", 10, 1, 100),
        shadow_flush_interval=_number(t, "shadow_flush_interval", 1.0, minimum=0.01),
        shadow_queue=_int(t, "shadow_queue", 1024, 1, 1_000_000),
        shadow_retention=_number(t, "shadow_retention", 7 * 86_400.0, minimum=60.0),
    )
    t.finish()
    return pa


def _notifier(t: _Table, base: Path) -> NotifierConfig:
    sink = _choice(t, "sink", ("console", "file", "webhook"), "console")
    url = t.get("url", str, None)
    if sink == "webhook":
        if url is None:
            raise ConfigError(f"{t.key('url')}: required when notifier.sink = \"webhook\"")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{t.key('url')}: must start with http:// or https:// (got {url!r})")
        if "secret_file" not in t.data:
            raise ConfigError(f"{t.key('secret_file')}: required when notifier.sink = \"webhook\" "
                              "(the HMAC key that signs each body)")
    cfg = NotifierConfig(
        sink=sink,  # type: ignore[arg-type]
        path=_path(t, "path", base, None),
        url=url,
        secret_file=_existing(t, "secret_file", base) if "secret_file" in t.data else None,
        timeout=_number(t, "timeout", 5.0, minimum=0.01),
        retries=_int(t, "retries", 3, 0, 20),
        backoff=_number(t, "backoff", 0.2),
    )
    t.used.add("secret_file")
    if cfg.sink == "file" and cfg.path is None:
        raise ConfigError("notifier.path: required when notifier.sink = \"file\"")
    t.finish()
    return cfg


def _customer_settings(t: _Table) -> CustomerSettingsConfig:
    levels, min_acr = _acr_levels(t)
    max_limit = _number(t, "max_limit", 100_000_000.0, minimum=1.0)
    if max_limit > 1e15:
        raise ConfigError(f"{t.key('max_limit')}: at most 1e15 CNY (got {max_limit:g})")
    roles = _strs(t, "roles", ["client"])
    if not roles:
        raise ConfigError(f"{t.key('roles')}: name at least one role (customers' tokens carry it)")
    cfg = CustomerSettingsConfig(
        enabled=t.get("enabled", bool, True),
        cooling_off=_number(t, "cooling_off", 86_400.0),
        acr_levels=levels,
        min_acr=min_acr,
        max_auth_age=_number(t, "max_auth_age", 300.0, minimum=1.0),
        max_limit=max_limit,
        roles=roles,
    )
    t.finish()
    return cfg


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; raises ConfigError naming the key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {str(p)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse(data, p.resolve().parent, p.resolve())


def _step_up_levels(t: _Table) -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    if "levels" not in t.data:
        return DEFAULT_STEP_UP_LEVELS
    raw = t.get("levels", list)
    levels: list[tuple[str, tuple[tuple[str, ...], ...]]] = []
    for i, item in enumerate(raw):
        where = f"{t.key('levels')}[{i}]"
        if not isinstance(item, dict) or set(item) - {"acr", "ways"} or not isinstance(item.get("acr"), str):
            raise ConfigError(f"{where}: must be {{acr = \"...\", ways = [[\"totp\"], [\"face\"]]}}")
        ways = item.get("ways", [])
        if not isinstance(ways, list) or not all(
                isinstance(w, list) and w and all(isinstance(m, str) for m in w) for w in ways):
            raise ConfigError(f"{where}.ways: must be a list of non-empty lists of methods")
        levels.append((item["acr"], tuple(tuple(w) for w in ways)))
    from gateway.mfa.levels import Ladder  # the ladder's own checks (unknown methods, duplicates)
    try:
        Ladder.build(levels)
    except ValueError as exc:
        raise ConfigError(f"{t.key('levels')}: {exc}") from None
    return tuple(levels)


def _step_up(t: _Table, base: Path) -> StepUpConfig:
    sender = _choice(t, "sms_sender", ("file", "webhook"), "file")
    cfg = StepUpConfig(
        enabled=t.get("enabled", bool, True),
        levels=_step_up_levels(t),
        challenge_ttl=_number(t, "challenge_ttl", 300.0, minimum=10.0),
        token_ttl=_int(t, "token_ttl", 120, 5, 3600),
        session_ttl=_int(t, "session_ttl", 900, 5, 86_400),
        max_attempts=_int(t, "max_attempts", 5, 1, 100),
        cooling_off=_number(t, "cooling_off", 86_400.0),
        key_file=_path(t, "key_file", base, None),
        secrets_file=_path(t, "secrets_file", base, None),
        sms_key_file=_path(t, "sms_key_file", base, None),
        sms_sender=sender,
        sms_file=_path(t, "sms_file", base, None),
        sms_url=t.get("sms_url", str, None),
        sms_token_file=_existing(t, "sms_token_file", base) if "sms_token_file" in t.data else None,
        sms_timeout=_number(t, "sms_timeout", 5.0, minimum=0.01),
        sms_retries=_int(t, "sms_retries", 2, 0, 10),
        face_url=t.get("face_url", str, None),
        face_secret_file=_existing(t, "face_secret_file", base) if "face_secret_file" in t.data else None,
        face_liveness=t.get("face_liveness", bool, True),
        totp_issuer=t.get("totp_issuer", str, "Portcullis"),
        roles=_strs(t, "roles", ["client"]),
        demo_totp_file=_path(t, "demo_totp_file", base, None),
        per_minute=_number(t, "per_minute", 30.0, minimum=0.01),
        burst=_number(t, "burst", 20.0, minimum=1.0),
        face_per_minute=_number(t, "face_per_minute", 10.0, minimum=0.01),
        face_burst=_number(t, "face_burst", 5.0, minimum=1.0),
    )
    t.used.update({"sms_token_file", "face_secret_file"})
    if cfg.sms_sender == "webhook" and not cfg.sms_url:
        raise ConfigError(f"{t.key('sms_url')}: required when sms_sender = \"webhook\"")
    if cfg.face_url is not None and cfg.face_secret_file is None:
        raise ConfigError(f"{t.key('face_secret_file')}: required with face_url (the service's shared secret)")
    t.finish()
    return cfg


def _envelope(t: _Table, base: Path) -> EnvelopeConfig:
    cfg = EnvelopeConfig(
        enabled=t.get("enabled", bool, True),
        agreement_key_file=_path(t, "agreement_key_file", base, None),
        key_file=_path(t, "key_file", base, None),
        max_age=_number(t, "max_age", 3600.0, minimum=10.0),
        max_messages=_int(t, "max_messages", 100_000, 1, 2**31),
        window=_number(t, "window", 120.0, minimum=1.0),
        per_minute=_number(t, "per_minute", 6.0, minimum=0.01),
        burst=_number(t, "burst", 5.0, minimum=1.0),
        roles=_strs(t, "roles", ["client"]),
    )
    t.finish()
    return cfg


def _crypto(t: _Table, base: Path) -> CryptoConfig:
    from gateway.crypto.json_paths import parse_paths

    store = t.get("key_store", str, "state")
    if store not in ("state", "file"):
        raise ConfigError(f"{t.key('key_store')}: must be \"state\" or \"file\" (got {store!r})")
    fields, indexed = _strs(t, "fields", list(DEFAULT_PERSONAL_FIELDS)), _strs(t, "indexed", ["id_number", "phone"])
    try:
        parse_paths(fields)
    except ValueError as exc:
        raise ConfigError(f"{t.key('fields')}: {exc}") from None
    if set(indexed) - set(fields):
        raise ConfigError(f"{t.key('indexed')}: {sorted(set(indexed) - set(fields))} are not among the fields")
    cfg = CryptoConfig(
        enabled=t.get("enabled", bool, False),
        master_key_file=_path(t, "master_key_file", base, None),
        master_key_env=t.get("master_key_env", str, "PORTCULLIS_MASTER_KEY"),
        key_store=store,
        key_store_file=_path(t, "key_store_file", base, None),
        fields=fields,
        indexed=indexed,
        cache_ttl=_number(t, "cache_ttl", 60.0, minimum=0.0),
    )
    if store == "file" and cfg.key_store_file is None:
        raise ConfigError(f"{t.key('key_store_file')}: required when key_store = \"file\"")
    t.finish()
    return cfg
