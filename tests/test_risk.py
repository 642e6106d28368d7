"""The risk engine: each signal, the network tables, learning, and the state round on both stores."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest
from harness import BatchCountingStore as CountingStore
from harness import route_config
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authn.tokens import Subject
from gateway.context import RequestContext
from gateway.policy.engine import Decision
from gateway.policy.facts import Facts
from gateway.risk import signals as sig
from gateway.risk.engine import RiskEngine, exchange_hour
from gateway.risk.network import NetworkDataError, NetworkIntel, Place, PrefixTable, prefix_of, read_region_table
from gateway.risk.profile import Observation, Profile, distance_km
from gateway.risk.signals import SIGNALS, RiskSettings, RiskView
from gateway.state.base import StateStore
from gateway.state.memory import MemoryStore
from gateway.state.redis import RedisStore
from gateway.steps.state_round import StateRound

# 2026-11-25 10:00:00 in Shanghai (UTC+8).
T0 = 1795572000.0
S = RiskSettings()
ROUTES = {
    "quotes": route_config(name="quotes", path="/api/quotes/{symbol}", tier="read"),
    "order": route_config(name="order", path="/api/accounts/{account}/orders", methods=["POST"], tier="trade",
                          account_param="account", body_kind="order"),
    "transfer": route_config(name="transfer", path="/api/accounts/{account}/transfers", methods=["POST"],
                             tier="transfer", account_param="account", body_kind="transfer"),
}


def subject(sub: str = "alice", *, iat: float | None = None, auth_time: float | None = None,
            jti: str = "jti-1") -> Subject:
    claims: dict[str, Any] = {} if iat is None else {"iat": iat}
    return Subject(sub=sub, iss="i", accounts=("A1",), roles=("client",), acr="urn:portcullis:acr:pwd",
                   amr=("pwd",), auth_time=int(auth_time) if auth_time is not None else None, jti=jti,
                   exp=int(T0) + 3600, iat=None, kid=None, cnf_jkt=None, token_digest=b"d", claims=claims)


def ctx(route: str = "quotes", *, sub: Subject | None = None, device: str | None = "dev-1",
        ip: str = "198.51.100.7", ua: str | None = "BrokerApp/5.1 (iOS 18)", now: float = T0,
        body: Any = None, facts: Facts | None = None, rid: str = "r") -> RequestContext:
    headers = {"User-Agent": ua} if ua is not None else {}
    c = RequestContext(
        request_id=rid, method="GET", path="/p", query="", route=ROUTES[route], params={"account": "A1"},
        headers=CIMultiDictProxy(CIMultiDict(headers)), client_ip=ip, client_port=1, scheme="https",
        started=0.0, now=now, json_body=body, subject=sub or subject(), device_id=device, facts=facts)
    return c


def habits(n: int = 40, *, prefix: str = "198.51.100.0/24", region: str = "CN-SH", asn: int = 4134,
           hour: int = 10, notional: float | None = 10_000.0, last: tuple[float, float, float] | None = None,
           routes: tuple[str, ...] = ("quotes",)) -> Profile:
    """A customer with `n` learned requests: one network, one region, one hour."""
    p = Profile()
    for i in range(n):
        for route in routes:
            p.learn(Observation(now=T0 - 86_400 + i, hour=hour, prefix=prefix, region=region, asn=asn,
                                route=route, rate=5, notional=notional), 30 * 86_400)
    p.last = last
    return p


SH = Place(region="CN-SH", asn=4134, lat=31.23, lon=121.47)
NY = Place(region="US-NY", asn=7018, lat=40.71, lon=-74.01)
ORDER = {"symbol": "600519.SH", "side": "buy", "qty": 100, "price": 1500.0, "type": "limit"}


def fires(signal: sig.Signal, c: RequestContext, v: RiskView) -> bool:
    f = signal(c, v, S)
    assert f is None or (f.code == signal.__name__ and f.points == S.points[f.code])
    return f is not None


# -- every signal: fires on its evidence, silent without it --------------------------------------

CASES: list[tuple[sig.Signal, Any, Any]] = [
    # (signal, (ctx, view) where it fires, (ctx, view) where it stays silent)
    (sig.unknown_device, (ctx(), RiskView(device_known=False)), (ctx(), RiskView(device_known=True))),
    (sig.new_device, (ctx(), RiskView(device_first_seen=T0 - 3600, device_known=False)),
     (ctx(), RiskView(device_first_seen=T0 - 3 * 86_400, device_known=False))),
    (sig.device_many_accounts, (ctx(), RiskView(device_accounts=3)), (ctx(), RiskView(device_accounts=2))),
    (sig.agent_changed_in_session, (ctx(), RiskView(session_agent="aa", agent="bb")),
     (ctx(), RiskView(session_agent="aa", agent="aa"))),
    (sig.automation_client, (ctx(ua="Mozilla/5.0 HeadlessChrome/120"), RiskView()), (ctx(), RiskView())),
    (sig.missing_user_agent, (ctx(ua=None), RiskView()), (ctx(), RiskView())),
    (sig.missing_device_proof, (ctx(device=None), RiskView()), (ctx(), RiskView())),
    (sig.new_network, (ctx(), RiskView(profile=habits(), prefix="203.0.113.0/24")),
     (ctx(), RiskView(profile=habits(), prefix="198.51.100.0/24"))),
    (sig.new_region, (ctx(), RiskView(profile=habits(), place=NY)), (ctx(), RiskView(profile=habits(), place=SH))),
    (sig.new_asn, (ctx(), RiskView(profile=habits(), place=NY)), (ctx(), RiskView(profile=habits(), place=SH))),
    (sig.impossible_travel, (ctx(), RiskView(profile=habits(last=(T0 - 3600, SH.lat, SH.lon)), place=NY)),  # type: ignore[arg-type]
     (ctx(), RiskView(profile=habits(last=(T0 - 20 * 3600, SH.lat, SH.lon)), place=NY))),  # type: ignore[arg-type]
    (sig.ip_blocklisted, (ctx(), RiskView(place=Place(blocklist="tor"))), (ctx(), RiskView(place=SH))),
    (sig.ip_many_accounts, (ctx(), RiskView(ip_accounts_hour=5)), (ctx(), RiskView(ip_accounts_hour=4))),
    (sig.hosting_network, (ctx(), RiskView(place=Place(hosting=True))), (ctx(), RiskView(place=SH))),
    (sig.request_rate_spike, (ctx(), RiskView(profile=habits(), requests_last_minute=60)),
     (ctx(), RiskView(profile=habits(), requests_last_minute=20))),
    (sig.unusual_hour, (ctx(), RiskView(profile=habits(hour=10), hour=3)),
     (ctx(), RiskView(profile=habits(hour=10), hour=10))),
    (sig.first_sensitive_route, (ctx("order", body=ORDER), RiskView(profile=habits())),
     (ctx("order", body=ORDER), RiskView(profile=habits(routes=("quotes", "order"))))),
    (sig.order_notional_spike, (ctx("order", body={**ORDER, "qty": 1000}), RiskView(profile=habits(notional=100_000))),
     (ctx("order", body=ORDER), RiskView(profile=habits(notional=100_000)))),
    (sig.order_burst, (ctx("order", body=ORDER, facts=Facts(counters={"actions_last_second": 11})), RiskView()),
     (ctx("order", body=ORDER, facts=Facts(counters={"actions_last_second": 10})), RiskView())),
    (sig.cancel_ratio_high, (ctx("order", facts=Facts(counters={"orders_today": 40, "cancels_today": 39})), RiskView()),
     (ctx("order", facts=Facts(counters={"orders_today": 40, "cancels_today": 30})), RiskView())),
    (sig.recent_auth_failures, (ctx(), RiskView(auth_failures=3)), (ctx(), RiskView(auth_failures=2))),
    (sig.stale_session, (ctx(sub=subject(iat=T0 - 13 * 3600)), RiskView()),
     (ctx(sub=subject(iat=T0 - 3600)), RiskView())),
    (sig.stale_mfa_for_transfer, (ctx("transfer", sub=subject(auth_time=T0 - 2 * 86_400)), RiskView()),
     (ctx("transfer", sub=subject(auth_time=T0 - 600)), RiskView())),
    (sig.new_bank_account_transfer,
     (ctx("transfer", body={"bank_account_id": "b2", "amount": 1000},
          facts=Facts(account={"bank_accounts": [{"id": "b2", "added_at": T0 - 86_400}]})), RiskView()),
     (ctx("transfer", body={"bank_account_id": "b2", "amount": 1000},
          facts=Facts(account={"bank_accounts": [{"id": "b2", "added_at": T0 - 30 * 86_400}]})), RiskView())),
    (sig.transfer_soon_after_login, (ctx("transfer", sub=subject(iat=T0 - 60)), RiskView()),
     (ctx("transfer", sub=subject(iat=T0 - 3600)), RiskView())),
    (sig.deposit_then_illiquid_buy,
     (ctx("order", body={**ORDER, "qty": 400, "price": 500.0},
          facts=Facts(account={"assets_cny": 300_000, "last_deposit": {"amount": 250_000, "at": T0 - 86_400}},
                      instrument={"adv_cny": 5_000_000})), RiskView()),
     (ctx("order", body={**ORDER, "qty": 400, "price": 500.0},
          facts=Facts(account={"assets_cny": 300_000, "last_deposit": {"amount": 250_000, "at": T0 - 86_400}},
                      instrument={"adv_cny": 900_000_000})), RiskView())),
    (sig.dormant_account, (ctx(), RiskView(profile=Profile(last_seen=T0 - 200 * 86_400))),
     (ctx(), RiskView(profile=Profile(last_seen=T0 - 2 * 86_400)))),
    (sig.state_unavailable, (ctx(), RiskView(state_ok=False)), (ctx(), RiskView())),
]


@pytest.mark.parametrize(("signal", "hit", "miss"), CASES, ids=[c[0].__name__ for c in CASES])
def test_each_signal_fires_on_its_evidence_only(signal: sig.Signal, hit: Any, miss: Any) -> None:
    assert fires(signal, *hit)
    assert not fires(signal, *miss)


def test_every_signal_is_tested_documented_and_has_points() -> None:
    assert {c[0] for c in CASES} == set(SIGNALS) and len(SIGNALS) >= 20
    risk_md = (Path(__file__).resolve().parent.parent / "docs" / "RISK.md").read_text("utf-8")
    for signal in SIGNALS:
        assert signal.__doc__, signal.__name__
        assert f"`{signal.__name__}`" in risk_md, f"docs/RISK.md does not explain {signal.__name__}"
        assert S.points[signal.__name__] > 0


@pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: s.__name__)
def test_unknown_state_never_fires_a_stateful_signal(signal: sig.Signal) -> None:
    # A request with no facts, a plain agent and a proven device, scored with no state at all.
    quiet = ctx()
    expected = {"state_unavailable"}
    assert (signal(quiet, RiskView(state_ok=False), S) is not None) == (signal.__name__ in expected)


@pytest.mark.parametrize("body", [
    {**ORDER, "qty": -100}, {**ORDER, "qty": True}, {**ORDER, "price": "1e308"},
    {**ORDER, "qty": 1e308, "price": 1e308}, {**ORDER, "qty": float("nan")},
    [1, 2], None, "order",
])
def test_absurd_order_bodies_grant_no_trust_and_never_crash(body: Any) -> None:
    c = ctx("order", body=body, facts=Facts(counters={"actions_last_second": 10**18, "orders_today": -5,
                                                      "cancels_today": True}))
    v = RiskView(profile=habits(notional=10_000))
    for signal in SIGNALS:
        signal(c, v, S)  # no exception
    notional = sig.order_notional(c)
    assert notional is None or notional > 0


def test_travel_within_the_tables_precision_is_not_impossible() -> None:
    near = Place(region="CN-JS", lat=31.30, lon=120.58)  # Suzhou, ~85 km from Shanghai
    v = RiskView(profile=habits(last=(T0 - 60, SH.lat, SH.lon)), place=near)  # type: ignore[arg-type]
    assert not fires(sig.impossible_travel, ctx(), v)
    assert 1000 < distance_km(SH.lat, SH.lon, 39.90, 116.40) < 1100  # Shanghai-Beijing ~1,070 km


def test_a_thin_history_counts_for_nothing_yet() -> None:
    thin = habits(n=5)
    for signal in (sig.new_network, sig.new_region, sig.unusual_hour, sig.first_sensitive_route):
        assert not fires(signal, ctx(), RiskView(profile=thin, prefix="203.0.113.0/24", place=NY, hour=3))


# -- network tables ----------------------------------------------------------------------------


def test_prefix_table_longest_match_v4_v6() -> None:
    t: PrefixTable[str] = PrefixTable([
        (ipaddress.ip_network("10.0.0.0/8"), "wide"), (ipaddress.ip_network("10.1.2.0/24"), "narrow"),
        (ipaddress.ip_network("2001:db8::/32"), "v6")])
    assert t.match(ipaddress.ip_address("10.1.2.3")) == "narrow"
    assert t.match(ipaddress.ip_address("10.9.9.9")) == "wide"
    assert t.match(ipaddress.ip_address("11.0.0.1")) is None
    assert t.match(ipaddress.ip_address("2001:db8:1::5")) == "v6" and len(t) == 3


def test_network_intel_from_files(tmp_path: Path) -> None:
    (tmp_path / "regions.csv").write_text("cidr,region,asn,lat,lon\n198.51.100.0/24,CN-SH,4134,31.23,121.47\n"
                                          "2001:db8::/32,CN-BJ,,,\n", "utf-8")
    (tmp_path / "hosting.txt").write_text("# cloud\n203.0.113.0/24\n", "utf-8")
    (tmp_path / "tor.txt").write_text("192.0.2.77\n", "utf-8")
    intel = NetworkIntel.from_files(regions_file=tmp_path / "regions.csv", hosting_files=[tmp_path / "hosting.txt"],
                                    blocklist_files={"tor": tmp_path / "tor.txt"})
    assert intel.lookup("198.51.100.9") == SH
    assert intel.lookup("::ffff:198.51.100.9") == SH  # IPv4-mapped
    assert intel.lookup("2001:db8::1").region == "CN-BJ"
    assert intel.lookup("203.0.113.5").hosting and intel.lookup("192.0.2.77").blocklist == "tor"
    assert intel.lookup("192.0.2.78").blocklist is None and intel.lookup("not-an-ip") == Place()


@pytest.mark.parametrize(("row", "problem"), [
    ("10.0.0.0/33,CN-SH,,,", "not an address"), ("10.0.0.0/8,CN-SH,AS1,,", "asn must be"),
    ("10.0.0.0/8,CN-SH,,31.2,", "together"), ("10.0.0.0/8,CN-SH,,91,10", "within"),
])
def test_bad_region_rows_name_file_and_line(tmp_path: Path, row: str, problem: str) -> None:
    f = tmp_path / "r.csv"
    f.write_text(f"# header comment\n{row}\n", "utf-8")
    with pytest.raises(NetworkDataError, match=f"r.csv:2: .*{problem}"):
        read_region_table(f)


def test_maxmind_database_fills_what_the_table_does_not(tmp_path: Path) -> None:
    import mmdb_writer
    from netaddr import IPSet

    writer = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {
        "country": {"iso_code": "US"}, "subdivisions": [{"iso_code": "NY"}],
        "location": {"latitude": 40.71, "longitude": -74.01}, "autonomous_system_number": 7018})
    path = tmp_path / "city.mmdb"
    writer.to_db_file(str(path))
    (tmp_path / "regions.csv").write_text("203.0.113.128/25,CN-SH,4134,31.23,121.47\n", "utf-8")
    intel = NetworkIntel.from_files(regions_file=tmp_path / "regions.csv", mmdb_file=path)
    try:
        assert intel.lookup("203.0.113.5") == NY
        assert intel.lookup("203.0.113.200") == SH  # the broker's table wins where both answer
        assert intel.lookup("198.51.100.1") == Place()
    finally:
        intel.close()
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database")
    with pytest.raises(NetworkDataError, match="bad.mmdb"):
        NetworkIntel(mmdb=bad)


def test_prefix_of() -> None:
    assert prefix_of("198.51.100.77") == "198.51.100.0/24"
    assert prefix_of("2001:db8:1:2::3") == "2001:db8:1::/48"
    assert prefix_of("::ffff:198.51.100.77") == "198.51.100.0/24" and prefix_of("x") is None


# -- the profile -------------------------------------------------------------------------------


def test_profile_decays_is_bounded_and_round_trips() -> None:
    p = Profile()
    half_life = 3600.0
    p.learn(Observation(now=100.0, hour=9, prefix="a", region="CN-SH"), half_life)
    p.learn(Observation(now=110.0, hour=9, prefix="a", region="CN-SH"), half_life)
    assert p.prefixes == {"a": 2.0}  # within the hour: no decay yet
    p.learn(Observation(now=3700.0, hour=9, prefix="b", region="CN-SH"), half_life)
    assert p.prefixes == {"a": 1.0, "b": 1.0} and p.n == 2.0 and p.last_seen == 3700.0  # one half-life later
    for i in range(100):
        p.learn(Observation(now=4000.0 + i, hour=i % 24, prefix=f"p{i}", route=f"r{i}"), half_life)
    assert len(p.prefixes) <= 32 and len(p.routes) <= 64
    again = Profile.from_json(p.to_json())
    assert again is not None and again.to_json() == p.to_json()
    assert len(p.to_json()) < 8192


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"v":2}', b'{"v":1,"u":"x","n":1}', b'{"v":1}'])
def test_a_corrupt_stored_profile_is_not_trusted(raw: bytes) -> None:
    assert Profile.from_json(raw) is None


def test_exchange_hour_is_shanghai_time() -> None:
    assert exchange_hour(T0) == 10 and exchange_hour(T0 + 14 * 3600) == 0


# -- the engine on real stores -----------------------------------------------------------------


@pytest.fixture
def store(any_store: StateStore) -> StateStore:
    return any_store


async def judged(engine: RiskEngine, c: RequestContext, *, allow: bool = True) -> RequestContext:
    """Run the engine's part of the pipeline on `c`: prepare, the round, score, (decision), learn."""
    engine.prepare(c)
    pending = StateRound()(c)
    if pending is not None:
        await pending
    c.risk = engine.score_sync(c)
    c.decision = Decision(allow=allow)
    engine.learn(c)
    return c


def codes(c: RequestContext) -> set[str]:
    assert c.risk is not None
    return {f.code for f in c.risk.factors}


def sh_network() -> NetworkIntel:
    return NetworkIntel(regions=[(ipaddress.ip_network("198.51.100.0/24"), SH),
                                 (ipaddress.ip_network("203.0.113.0/24"), NY)])


async def test_a_known_device_doing_the_usual_thing_goes_straight_through(store: StateStore) -> None:
    counting = CountingStore(store)
    engine = RiskEngine(counting, network=sh_network())  # type: ignore[arg-type]
    first = await judged(engine, ctx(rid="r0"))
    assert {"unknown_device", "new_device"} <= codes(first) and first.risk is not None
    assert first.risk.level == "medium"
    await engine.mark_known("alice", "dev-1")  # a successful step-up from this device
    for i in range(30):
        await judged(engine, ctx(now=T0 + 60 * i, rid=f"r{i + 1}"))
    usual = await judged(engine, ctx(now=T0 + 1900, rid="usual"))  # still 10 o'clock
    assert usual.risk is not None and (usual.risk.score, usual.risk.level) == (0, "low")
    assert counting.batches == 32  # one state round trip per request, nothing else
    # The same customer from New York an hour later: impossible travel, new network, new region.
    away = await judged(engine, ctx(now=T0 + 7200, ip="203.0.113.9", rid="away"))
    assert {"impossible_travel", "new_network", "new_region", "new_asn"} <= codes(away)
    await engine.writer.flush()
    stored = Profile.from_json(await store.get("risk:profile:alice"))
    assert stored is not None and stored.n > 20 and "203.0.113.0/24" not in stored.prefixes  # not learned


async def test_a_thiefs_device_never_becomes_familiar_by_use(store: StateStore) -> None:
    engine = RiskEngine(store, network=sh_network())
    for i in range(40):
        c = await judged(engine, ctx(device="thief", ip="203.0.113.9", now=T0 + 60 * i, rid=f"t{i}"))
        assert "unknown_device" in codes(c)
    assert engine.writer.pending == 0 and await store.get("risk:profile:alice") is None


async def test_mule_farm_ip_fanout_and_session_agent_change(store: StateStore) -> None:
    engine = RiskEngine(store, network=sh_network())
    for i, who in enumerate(("u1", "u2", "u3")):
        c = await judged(engine, ctx(sub=subject(who, jti=f"j{who}"), device="shared-phone", ip="192.0.2.10",
                                     rid=f"m{i}"))
    assert "device_many_accounts" in codes(c)
    for i in range(5):
        c = await judged(engine, ctx(sub=subject(f"v{i}", jti=f"k{i}"), device=f"d{i}", ip="192.0.2.99",
                                     rid=f"s{i}"))
    assert "ip_many_accounts" in codes(c)
    same = await judged(engine, ctx(sub=subject("w", jti="sess-w"), rid="w1"))
    assert "agent_changed_in_session" not in codes(same)
    other = await judged(engine, ctx(sub=subject("w", jti="sess-w"), ua="curl/8.4", rid="w2"))
    assert {"agent_changed_in_session", "automation_client"} <= codes(other)


async def test_auth_failures_are_counted_for_the_signal(store: StateStore) -> None:
    engine = RiskEngine(store)
    for _ in range(3):
        await engine.record_auth_failure("alice", T0 - 10)
    assert "recent_auth_failures" in codes(await judged(engine, ctx()))


async def test_an_unreachable_store_scores_local_signals_only() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = RedisStore(f"redis://127.0.0.1:{port}/0", "pc-test-down:", timeout=0.2)
    try:
        engine = RiskEngine(down, network=sh_network())
        c = await judged(engine, ctx(ua="python-requests/2.31"))
        assert c.degraded == ["state_unavailable"]
        assert codes(c) == {"state_unavailable", "automation_client"}
        assert engine.writer.pending == 0  # nothing learned from a request judged without state
    finally:
        await down.close()


def test_scoring_without_the_round_is_local_only() -> None:
    engine = RiskEngine(MemoryStore())
    c = ctx()
    assert engine.score_sync(c).factors == (RiskSettings().factor("state_unavailable"),)


async def test_learning_needs_allow_low_risk_and_a_known_device(store: StateStore) -> None:
    engine = RiskEngine(store, network=sh_network())
    await engine.mark_known("alice", "dev-1")
    await judged(engine, ctx(rid="a"), allow=False)
    assert engine.writer.pending == 0
    await judged(engine, ctx(sub=subject(jti="jti-2"), ua="HeadlessChrome", rid="b"))  # 20 points: low, learns
    assert engine.writer.pending == 1
    await engine.close()
    assert engine.writer.pending == 0 and await store.get("risk:profile:alice") is not None


async def test_every_key_has_a_ttl_on_redis(redis_store: RedisStore, redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    engine = RiskEngine(redis_store, network=sh_network())
    await engine.mark_known("alice", "dev-1")
    await engine.record_auth_failure("alice", T0)
    await judged(engine, ctx(now=time.time()))
    await engine.writer.flush()
    client = redis.asyncio.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}risk:*")]
        assert len(keys) >= 8
        for key in keys:
            assert await client.pttl(key) > 0, key
    finally:
        await client.aclose()



# -- configuration -----------------------------------------------------------------------------


def _parse_risk(risk: dict[str, Any], base: Path) -> Any:
    from gateway.config import parse

    return parse({"gateway": {"security": False}, "upstreams": {"t": {"url": "http://x"}}, "risk": risk}, base).risk


@pytest.mark.parametrize(("risk", "message"), [
    ({"points": {"no_such_code": 5}}, "risk.points.no_such_code: unknown reason code"),
    ({"points": {"unknown_device": 101}}, "risk.points.unknown_device: must be between 0 and 100"),
    ({"thresholds": {"speed": 1}}, "risk.thresholds.speed: unknown threshold"),
    ({"levels": {"medium": 70, "high": 60}}, "risk.levels.medium: levels must rise"),
    ({"network": {"regions_file": "missing.csv"}}, "risk.network.regions_file: file"),
    ({"network": {"blocklist_files": {"tor": "missing.txt"}}}, "risk.network.blocklist_files.tor: file"),
    ({"colour": "red"}, "risk.colour: unknown key"),
])
def test_bad_risk_settings_stop_startup_naming_the_key(tmp_path: Path, risk: dict[str, Any], message: str) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        _parse_risk(risk, tmp_path)


async def test_configured_points_thresholds_levels_and_tables_reach_the_engine(tmp_path: Path) -> None:
    from gateway.risk.engine import build_risk

    (tmp_path / "r.csv").write_text("198.51.100.0/24,CN-SH,4134,31.23,121.47\n", "utf-8")
    (tmp_path / "bad.txt").write_text("198.51.100.7\n", "utf-8")
    cfg = _parse_risk({"points": {"automation_client": 50}, "thresholds": {"device_accounts": 2},
                       "levels": {"medium": 10, "high": 40, "critical": 90},
                       "network": {"regions_file": "r.csv", "blocklist_files": {"bad": "bad.txt"}}}, tmp_path)
    engine = build_risk(cfg, MemoryStore())
    assert engine.settings.device_accounts == 2 and isinstance(engine.settings.device_accounts, int)
    c = await judged(engine, ctx(ua="curl/8"))
    assert c.risk is not None and {"automation_client", "ip_blocklisted"} <= codes(c)
    assert c.risk.level == "critical"  # 50 + 45 + 20 (unknown device) + 15 (new) > 90
    await engine.close()
    (tmp_path / "broken.csv").write_text("not-a-cidr,x,,,\n", "utf-8")
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="risk.network: .*broken.csv:1"):
        build_risk(_parse_risk({"network": {"regions_file": "broken.csv"}}, tmp_path), MemoryStore())


def test_session_signals_count_from_the_login_not_the_last_token_refresh() -> None:
    refreshed = subject(iat=T0 - 300, auth_time=T0 - 13 * 3600)  # logged in 13 h ago, token 5 min old
    assert fires(sig.stale_session, ctx(sub=refreshed), RiskView())
    assert not fires(sig.transfer_soon_after_login, ctx("transfer", sub=refreshed), RiskView())
    just_in = subject(iat=T0 - 60, auth_time=T0 - 60)
    assert fires(sig.transfer_soon_after_login, ctx("transfer", sub=just_in), RiskView())


async def test_a_burst_never_teaches_its_own_pace() -> None:
    engine = RiskEngine(MemoryStore(), network=sh_network())
    await engine.mark_known("alice", "dev-1")
    for i in range(25):  # 25 requests in a minute from the known device: under the floor (30)
        await judged(engine, ctx(now=T0 + i, rid=f"q{i}"))
    calm = engine.writer.local("alice")
    assert calm is not None and 0 < calm.rate <= 25
    for i in range(60):  # a burst: the minute's count passes the floor
        await judged(engine, ctx(now=T0 + 30 + i * 0.1, rid=f"b{i}"))
    after = engine.writer.local("alice")
    assert after is not None and after.rate <= S.rate_floor  # the burst did not raise the baseline
