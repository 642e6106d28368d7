"""Synthetic broker traffic for evaluating the risk engine: customers with habits, and attacks.

``generate(seed)`` builds, from ``random.Random(seed)`` alone (reproducible),
the request stream of a small broker over simulated days:

* legitimate customers, each with a phone (and maybe a PC or tablet), a home
  broadband line, perhaps an office, a mobile carrier in their province, the
  hours they keep, how often they trade, their usual order size and the
  symbols they like; and the things that make a risk engine cry wolf: trips
  to other provinces and abroad, a new phone, a VPN habit, a new bank account,
  a large deposit, a much larger order than usual, a household sharing a
  tablet, a late night;
* attacks, only in the evaluation window (after ``warmup_days`` in which the
  customers' profiles are learned), one :class:`Session` each, with exactly
  one *harm* request (what the attack is for):

  ``credential_stuffing``  waves over many accounts from a few addresses (hosting,
      Tor, residential proxies), new devices or none, often scripting clients,
      a few failed logins; a few reads, then the harm: a transfer to a bank
      account added minutes before, or selling the account's holdings;
  ``account_takeover``     one customer's session stolen (phished password and code,
      or a live token lifted from their device), used from a new device and
      network (often a residential proxy in the victim's own province, copying
      the victim's app); reads, then the harm: a transfer to a newly added bank
      account (mostly) or a large sale;
  ``mule_farm``            one operator's phone driving 4-8 mule accounts, proven for
      each of them (the mules cooperate); the harm: each account's transfer out;
  ``bot_burst``            a customer's account placing and cancelling orders faster
      than a hand can (12-40 actions a second), from a script on the
      customer's own device, a server, or a macro tool in the app; the harm:
      the burst's 20th order;
  ``pig_butchering``       a customer, on their own device and network, deposits a
      large sum and soon spends most of the account on one thinly traded
      stock; the harm: that buy.

Addresses come from private and documentation ranges described by an
in-memory :class:`~gateway.risk.network.NetworkIntel` (``network()``):
per province a telecom and a unicom broadband block, a mobile carrier block
and office blocks; cloud/VPN ranges marked hosting; a Tor list.

The stream is a list of :class:`Req` in time order; the evaluation
(``loadtests/risk_eval.py``) feeds each to a real ``RiskEngine``.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import random
from dataclasses import dataclass, field
from typing import Any

from gateway.risk.network import NetworkIntel, Place

T0 = 1772380800.0
"""Monday 2026-03-02 00:00 in Shanghai: day 0 of the simulation (days 5 and 6 of each week are weekends)."""
DAY = 86_400.0
HOUR = 3600.0
TOKEN_LIFE = 900.0
"""Access tokens live 15 minutes; a session refreshes them (a new jti and iat each time)."""

LEGIT = "legit"
SCENARIOS = ("credential_stuffing", "account_takeover", "mule_farm", "bot_burst", "pig_butchering")
PASSES_STEP_UP = frozenset({LEGIT, "mule_farm", "pig_butchering"})
"""Who passes a step-up: customers themselves, cooperating mules, a scammed customer; not thieves or bots."""

# (region code, latitude, longitude): provinces, then abroad (no mobile carrier blocks used there).
REGIONS: tuple[tuple[str, float, float], ...] = (
    ("CN-SH", 31.23, 121.47), ("CN-BJ", 39.90, 116.40), ("CN-GD", 23.13, 113.26), ("CN-ZJ", 30.27, 120.15),
    ("CN-JS", 32.06, 118.80), ("CN-SC", 30.66, 104.07), ("CN-HB", 30.59, 114.31), ("CN-FJ", 26.07, 119.30),
    ("HK", 22.32, 114.17), ("SG", 1.35, 103.82), ("US-CA", 37.77, -122.42),
)
HOME_REGIONS = 8
TELECOM, UNICOM, MOBILE, OFFICE_ASN = 4134, 4837, 9808, 4809
HOSTING_RANGES: tuple[tuple[str, str, int], ...] = (
    ("172.16.0.0/16", "CN-BJ", 37963), ("172.17.0.0/16", "US-CA", 16509), ("172.18.0.0/16", "HK", 16509),
    ("172.19.0.0/16", "SG", 14061),
)
TOR_RANGE = "192.0.2.0/24"

APP_UAS = ("BrokerApp/5.1 (iOS 18.2)", "BrokerApp/5.1 (Android 15)", "BrokerApp/5.0 (Android 14)")
PC_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
TABLET_UA = "BrokerApp/5.1 (iPadOS 18.2)"
SCRIPT_UAS = ("python-requests/2.32.3", "Mozilla/5.0 HeadlessChrome/124.0", "okhttp/2.7.5", "Go-http-client/1.1")
BROWSER_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15"


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    customers: int = 300
    warmup_days: int = 12
    """Days of legitimate traffic only, in which profiles are learned (not scored)."""
    eval_days: int = 7
    """Days scored: legitimate requests and the attacks."""
    stuffing_waves: int = 3
    stuffing_accounts: int = 15
    takeovers: int = 40
    mule_farms: int = 5
    bots: int = 20
    pig_butchering: int = 20


@dataclass(slots=True)
class Session:
    sid: int
    label: str
    """``legit`` or one of SCENARIOS."""
    sub: str
    scored: bool
    """In the evaluation window (legit) / an evaluated attack (attacks)."""


@dataclass(slots=True)
class Req:
    t: float
    sid: int
    sub: str
    route: str
    """quotes, positions (read), order, cancel (trade), transfer, or ``auth_failure`` (a failed login)."""
    ip: str
    device: str | None
    ua: str | None
    jti: str
    iat: float
    auth_time: float
    body: dict[str, Any] | None = None
    account: dict[str, Any] | None = None
    """Account facts (trade and transfer routes)."""
    instrument: dict[str, Any] | None = None
    harm: bool = False


@dataclass(slots=True)
class Traffic:
    seed: int
    config: TrafficConfig
    sessions: list[Session]
    requests: list[Req]
    known: list[tuple[str, str]]
    """(customer, device) pairs proven by a step-up before the simulation starts."""
    eval_start: float


@dataclass(slots=True)
class Device:
    id: str | None
    """None: no device key (no DPoP proof), as on part of the web site."""
    ua: str
    kind: str  # phone, pc, tablet


@dataclass(slots=True)
class Customer:
    sub: str
    region: int
    home_ip: str
    office_ip: str | None
    devices: list[Device]
    activity: float
    hours_weekday: list[float]
    hours_weekend: list[float]
    trader: float
    usual: float
    favourites: list[int]
    mobile_share: float
    vpn: bool
    facts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """(from, account facts) snapshots in time order."""
    phones: int = 1

    def facts_at(self, t: float) -> dict[str, Any]:
        i = bisect.bisect_right([f[0] for f in self.facts], t) - 1
        return self.facts[max(i, 0)][1]

    def change_facts(self, t: float, **changes: Any) -> dict[str, Any]:
        new = {**self.facts_at(t), **changes}
        bisect.insort(self.facts, (t, new), key=lambda f: f[0])
        return new


def _addr(net: str, rng: random.Random) -> str:
    n = ipaddress.ip_network(net)
    return str(n.network_address + rng.randrange(1, n.num_addresses - 1))


def broadband(region: int, rng: random.Random) -> str:
    return f"10.{region}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def mobile(region: int, rng: random.Random) -> str:
    return f"100.{64 + region}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def network() -> NetworkIntel:
    """The address plan as network tables: regions, carriers, places, hosting ranges, a Tor list."""
    rows: list[tuple[Any, Place]] = []
    for i, (code, lat, lon) in enumerate(REGIONS):
        rows.append((ipaddress.ip_network(f"10.{i}.0.0/17"), Place(code, TELECOM, lat, lon)))
        rows.append((ipaddress.ip_network(f"10.{i}.128.0/17"), Place(code, UNICOM, lat, lon)))
        rows.append((ipaddress.ip_network(f"100.{64 + i}.0.0/16"), Place(code, MOBILE, lat, lon)))
        rows.append((ipaddress.ip_network(f"10.{100 + i}.0.0/16"), Place(code, OFFICE_ASN, lat, lon)))
    place = {code: (lat, lon) for code, lat, lon in REGIONS}
    hosting = []
    for net, code, asn in HOSTING_RANGES:
        rows.append((ipaddress.ip_network(net), Place(code, asn, *place[code])))
        hosting.append(ipaddress.ip_network(net))
    return NetworkIntel(regions=rows, hosting=hosting, blocklists={"tor": [ipaddress.ip_network(TOR_RANGE)]})


# Symbols: (code, price, average daily value traded in CNY); the last 12 are thinly traded.
def _instruments(rng: random.Random) -> list[tuple[str, float, float]]:
    out = []
    for i in range(60):
        illiquid = i >= 48
        adv = rng.uniform(2e6, 1.8e7) if illiquid else math.exp(rng.uniform(math.log(5e7), math.log(5e9)))
        out.append((f"{600000 + i * 7:06d}.SH", round(math.exp(rng.uniform(math.log(3), math.log(300))), 2), adv))
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _weighted(rng: random.Random, weights: list[float]) -> int:
    return rng.choices(range(len(weights)), weights)[0]


class Generator:
    def __init__(self, seed: int, config: TrafficConfig) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.cfg = config
        self.instruments = _instruments(self.rng)
        self.sessions: list[Session] = []
        self.requests: list[Req] = []
        self.known: list[tuple[str, str]] = []
        self.eval_start = T0 + config.warmup_days * DAY
        self.end = self.eval_start + config.eval_days * DAY
        self.customers: list[Customer] = []

    # -- helpers ------------------------------------------------------------------------------

    def session(self, label: str, sub: str, scored: bool) -> Session:
        s = Session(len(self.sessions), label, sub, scored)
        self.sessions.append(s)
        return s

    def emit(self, s: Session, start: float, t: float, route: str, ip: str, device: str | None, ua: str | None,
             *, jti: str | None = None, auth_time: float | None = None, **extra: Any) -> Req:
        """One request of session `s` that logged in at `start` (tokens refreshed every 15 minutes)."""
        k = int((t - start) // TOKEN_LIFE)
        r = Req(t, s.sid, s.sub, route, ip, device, ua, jti or f"{s.sid}.{k}", start + k * TOKEN_LIFE,
                start if auth_time is None else auth_time, **extra)
        self.requests.append(r)
        return r

    def order(self, c: Customer, t: float, notional: float, *, side: str | None = None,
              symbol: int | None = None) -> dict[str, Any]:
        rng = self.rng
        code, price, adv = self.instruments[symbol if symbol is not None else rng.choice(c.favourites)]
        qty = max(100, int(round(notional / price / 100.0)) * 100)
        return {"body": {"symbol": code, "side": side or ("buy" if rng.random() < 0.55 else "sell"), "qty": qty,
                         "price": price, "type": "limit"},
                "instrument": {"adv_cny": adv}, "account": c.facts_at(t)}

    def trading_time(self, day: int) -> float:
        """A moment in continuous trading on `day` (moved to the next weekday if needed)."""
        while day % 7 >= 5:
            day += 1
        minute = self.rng.choice((self.rng.uniform(570, 690), self.rng.uniform(780, 895)))
        return T0 + day * DAY + minute * 60

    # -- legitimate customers -----------------------------------------------------------------

    def customer(self, i: int) -> Customer:
        rng = self.rng
        region = _weighted(rng, [4, 3, 3, 2, 2, 1, 1, 1])
        devices = [Device(f"c{i}-phone1", rng.choice(APP_UAS), "phone")]
        if rng.random() < 0.5:  # the web site; a third of them without a device key (no DPoP proof)
            devices.append(Device(f"c{i}-pc" if rng.random() < 0.67 else None, PC_UA, "pc"))
        if rng.random() < 0.2:
            devices.append(Device(f"c{i}-tablet", TABLET_UA, "tablet"))
        weekday = [0.002] * 24
        for h, w in ((8, 0.3), (9, 2), (10, 2), (11, 1.2), (12, 0.6), (13, 1.5), (14, 2), (15, 0.8), (16, 0.4),
                     (17, 0.3), (18, 0.3)):
            weekday[h] = w * rng.uniform(0.3, 1.7)
        evening = rng.random() < 0.5
        for h in (19, 20, 21, 22):
            weekday[h] = rng.uniform(0.3, 1.0) if evening else 0.01
        if rng.random() < 0.05:  # a night owl
            for h in (23, 0, 1):
                weekday[h] = rng.uniform(0.3, 0.8)
        weekend = [w if not 9 <= h <= 15 else w * 0.6 for h, w in enumerate(weekday)]
        assets = math.exp(rng.uniform(math.log(3e4), math.log(5e6)))
        office = f"10.{100 + region}.{rng.randrange(120)}.{rng.randrange(1, 255)}" if rng.random() < 0.5 else None
        good = list(range(48))
        favourites = rng.sample(good, rng.randint(4, 10))
        if rng.random() < 0.2:  # likes small caps
            favourites += rng.sample(range(48, 60), rng.randint(1, 3))
        c = Customer(
            sub=f"c{i}", region=region, home_ip=broadband(region, rng), office_ip=office, devices=devices,
            activity=rng.uniform(0.4, 3.0), hours_weekday=weekday, hours_weekend=weekend,
            trader=rng.uniform(0.05, 0.6), usual=assets * rng.uniform(0.02, 0.25), favourites=favourites,
            mobile_share=rng.uniform(0.1, 0.7), vpn=rng.random() < 0.02)
        c.facts.append((0.0, {"assets_cny": round(assets, 2), "last_deposit": None,
                              "bank_accounts": [{"id": f"{c.sub}-b1", "added_at": T0 - 400 * DAY}]}))
        self.known.extend((c.sub, d.id) for d in devices if d.id is not None)
        return c

    def households(self) -> None:
        """A few families share a tablet (two or three accounts on one device, each proven)."""
        rng = self.rng
        for _ in range(max(1, len(self.customers) // 40)):
            members = rng.sample(self.customers, rng.choice((2, 2, 2, 3)))
            tablet = f"home-{members[0].sub}"
            for m in members:
                m.devices.append(Device(tablet, TABLET_UA, "tablet"))
                m.home_ip = members[0].home_ip
                self.known.append((m.sub, tablet))

    def legit_days(self, c: Customer) -> None:
        rng = self.rng
        days = self.cfg.warmup_days + self.cfg.eval_days
        trip_until, trip_region = -1, -1
        for day in range(days):
            weekday = day % 7 < 5
            midnight = T0 + day * DAY
            first_day = day > trip_until and rng.random() < 0.01
            if first_day:  # a trip (by train or plane, arriving in the morning)
                trip_until = day + rng.randint(2, 5)
                trip_region = rng.choice([r for r in range(len(REGIONS) - 1) if r != c.region])
            away = trip_region if day <= trip_until else None
            if rng.random() < 0.002:  # a new phone (the old one is retired)
                c.phones += 1
                c.devices[0] = Device(f"{c.sub}-phone{c.phones}", rng.choice(APP_UAS), "phone")
            if rng.random() < 0.03:  # a deposit
                facts = c.facts_at(midnight)
                amount = round(facts["assets_cny"] * rng.uniform(0.05, 0.6), 2)
                c.change_facts(midnight + rng.uniform(8, 20) * HOUR, assets_cny=facts["assets_cny"] + amount,
                               last_deposit={"amount": amount, "at": midnight + 8 * HOUR})
            new_bank = rng.random() < 0.002
            if new_bank:
                facts = c.facts_at(midnight)
                bank = {"id": f"{c.sub}-b{len(facts['bank_accounts']) + 1}", "added_at": midnight + 8 * HOUR}
                c.change_facts(midnight + 8 * HOUR, bank_accounts=[*facts["bank_accounts"], bank])
            n = _poisson(rng, c.activity * (1.0 if weekday else 0.3))
            hours = sorted(_weighted(rng, c.hours_weekday if weekday else c.hours_weekend) for _ in range(n))
            if first_day:
                hours = [h for h in hours if h >= 9]
            last_end = midnight
            for j, h in enumerate(hours):
                start = max(midnight + h * HOUR + rng.uniform(0, 3000), last_end + 60)
                transfer_to = None
                if new_bank and j == 0:
                    transfer_to = c.facts_at(start)["bank_accounts"][-1]["id"]
                elif weekday and rng.random() < 0.01:
                    transfer_to = c.facts_at(start)["bank_accounts"][0]["id"]
                last_end = self.legit_session(c, start, weekday, away, transfer_to)

    def legit_session(self, c: Customer, start: float, weekday: bool, away: int | None,
                      transfer_to: str | None) -> float:
        rng = self.rng
        hour = int(((start - T0) % DAY) // HOUR)
        phone = c.devices[0]
        if c.vpn and rng.random() < 0.25:
            ip, device = _addr(rng.choice(HOSTING_RANGES[1:])[0], rng), rng.choice(c.devices)
        elif away is not None:
            roaming = away < HOME_REGIONS and rng.random() < 0.5
            ip = mobile(c.region if roaming else away, rng) if rng.random() < 0.5 else broadband(away, rng)
            device = phone if rng.random() < 0.8 else rng.choice(c.devices)
        elif weekday and 9 <= hour < 18 and c.office_ip and rng.random() < 0.6:
            ip, device = c.office_ip, rng.choice(c.devices)
        elif rng.random() < c.mobile_share:
            ip, device = mobile(c.region, rng), phone
        else:
            ip, device = c.home_ip, rng.choice(c.devices)
        s = self.session(LEGIT, c.sub, start >= self.eval_start)
        trading = weekday and (9.5 <= (start - T0) % DAY / HOUR < 15.0) and rng.random() < c.trader
        steps = ["quotes" if rng.random() < 0.7 else "positions" for _ in range(1 + int(rng.expovariate(1 / 4)))]
        if trading:
            for _ in range(1 + int(rng.expovariate(1 / 1.5))):
                steps.insert(rng.randrange(1, len(steps) + 1), "order")
        if transfer_to is not None:
            steps.insert(rng.randrange(0, min(3, len(steps)) + 1), "transfer")
        t = start
        for step in steps:
            if step == "order":
                notional = c.usual * math.exp(rng.gauss(0, 0.5))
                if rng.random() < 0.015:  # much larger than usual, now and then
                    notional *= rng.uniform(5, 10)
                self.emit(s, start, t, "order", ip, device.id, device.ua, **self.order(c, t, notional))
                if rng.random() < 0.1:
                    t += rng.uniform(5, 120)
                    self.emit(s, start, t, "cancel", ip, device.id, device.ua, account=c.facts_at(t))
            elif step == "transfer":
                facts = c.facts_at(t)
                body = {"bank_account_id": transfer_to, "amount": round(facts["assets_cny"] * rng.uniform(0.02, 0.3))}
                self.emit(s, start, t, "transfer", ip, device.id, device.ua, body=body, account=facts)
            else:
                self.emit(s, start, t, step, ip, device.id, device.ua)
            t += rng.expovariate(1 / 20) + 1
        return t

    # -- attacks ------------------------------------------------------------------------------

    def eval_time(self) -> float:
        return self.rng.uniform(self.eval_start, self.end - 2 * HOUR)

    def victim(self) -> Customer:
        return self.rng.choice(self.customers)

    def attacker_address(self, victim_region: int) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.4:  # a residential proxy in the victim's own province
            return broadband(victim_region, rng)
        if kind < 0.7:
            return broadband(rng.randrange(HOME_REGIONS), rng)
        if kind < 0.9:
            return _addr(rng.choice(HOSTING_RANGES)[0], rng)
        return _addr(TOR_RANGE, rng)

    def cash_out(self, s: Session, c: Customer, start: float, t: float, ip: str, device: str | None, ua: str | None,
                 transfer_share: float) -> None:
        """The harm: a transfer to a bank account added just now, or selling most of the holdings."""
        rng = self.rng
        facts = c.facts_at(t)
        if rng.random() < transfer_share:
            bank = {"id": f"{c.sub}-x{s.sid}", "added_at": t - rng.uniform(60, 1800)}
            facts = {**facts, "bank_accounts": [*facts["bank_accounts"], bank]}
            body = {"bank_account_id": bank["id"], "amount": round(facts["assets_cny"] * rng.uniform(0.3, 0.95))}
            self.emit(s, start, t, "transfer", ip, device, ua, body=body, account=facts, harm=True)
        else:
            self.emit(s, start, t, "order", ip, device, ua, harm=True,
                      **self.order(c, t, facts["assets_cny"] * rng.uniform(0.3, 0.9), side="sell"))

    def credential_stuffing(self) -> None:
        rng = self.rng
        for _ in range(self.cfg.stuffing_waves):
            t = self.eval_time()
            ips = [self.attacker_address(rng.randrange(HOME_REGIONS)) for _ in range(rng.randint(2, 4))]
            ua = rng.choice(SCRIPT_UAS) if rng.random() < 0.4 else rng.choice(APP_UAS)
            mode = rng.choices(("new", "one", "none"), (0.6, 0.15, 0.25))[0]
            shared = f"stuff-{t:.0f}"
            for k, c in enumerate(rng.sample(self.customers, self.cfg.stuffing_accounts)):
                t += rng.uniform(20, 180)
                ip = ips[k % len(ips)]
                s = self.session("credential_stuffing", c.sub, True)
                for _ in range(rng.choice((0, 0, 1, 2))):
                    self.emit(s, t, t - rng.uniform(5, 60), "auth_failure", ip, None, ua)
                device = {"new": f"stuff-{s.sid}", "one": shared, "none": None}[mode]
                at = t
                for _ in range(rng.randint(1, 3)):
                    self.emit(s, t, at, "positions", ip, device, ua)
                    at += rng.uniform(1, 10)
                self.cash_out(s, c, t, at, ip, device, ua, 0.5)

    def account_takeover(self) -> None:
        rng = self.rng
        for _ in range(self.cfg.takeovers):
            c = self.victim()
            day = int((self.eval_time() - T0) // DAY)
            hour = _weighted(rng, c.hours_weekday) if rng.random() < 0.5 else rng.randrange(24)
            start = T0 + day * DAY + hour * HOUR + rng.uniform(0, 3000)
            ip = self.attacker_address(c.region)
            device = f"ato-{len(self.sessions)}" if rng.random() < 0.8 else None
            ua = c.devices[0].ua if rng.random() < 0.6 else rng.choice((BROWSER_UA, PC_UA))
            s = self.session("account_takeover", c.sub, True)
            jti, login, until = None, start, start + rng.uniform(60, 1200)
            if rng.random() < 0.3:  # a live token lifted from the victim's phone: the victim used it first
                jti, login = f"lifted-{s.sid}", start - rng.uniform(60, 600)
                until = login + TOKEN_LIFE - 1
                own = self.session(LEGIT, c.sub, True)
                self.emit(own, login, login, "quotes", c.home_ip, c.devices[0].id, c.devices[0].ua, jti=jti)
            t = start
            for _ in range(rng.randint(2, 6)):
                self.emit(s, login, t, rng.choice(("positions", "quotes")), ip, device, ua, jti=jti)
                t += rng.uniform(5, 40)
            self.cash_out(s, c, login, min(max(t, until), login + TOKEN_LIFE - 1) if jti else max(t, until),
                          ip, device, ua, 0.7)

    def mule_farms(self) -> None:
        rng = self.rng
        for f in range(self.cfg.mule_farms):
            region = rng.randrange(HOME_REGIONS)
            device, ua, ip = f"farm{f}", rng.choice(APP_UAS), broadband(region, rng)
            mules = []
            for j in range(rng.randint(4, 8)):
                m = Customer(
                    sub=f"mule{f}-{j}", region=region, home_ip=ip, office_ip=None,
                    devices=[Device(device, ua, "phone")], activity=0.5, hours_weekday=[], hours_weekend=[],
                    trader=0.0, usual=5000.0, favourites=list(range(10)), mobile_share=0.0, vpn=False)
                m.facts.append((0.0, {"assets_cny": 20_000.0, "last_deposit": None,
                                      "bank_accounts": [{"id": f"{m.sub}-b1", "added_at": T0 - 60 * DAY}]}))
                self.known.append((m.sub, device))
                mules.append(m)
            # Before the evaluation: the operator keeps the accounts looking used.
            for day in range(0, self.cfg.warmup_days, 2):
                for m in mules:
                    start = T0 + day * DAY + rng.uniform(9, 22) * HOUR
                    s = self.session("mule_farm", m.sub, False)
                    self.emit(s, start, start, "positions", ip, device, ua)
                    self.emit(s, start, start + 30, "quotes", ip, device, ua)
            for m in mules:  # the evaluation: money in, money out
                for _ in range(rng.randint(1, 2)):
                    start = self.eval_time()
                    s = self.session("mule_farm", m.sub, True)
                    self.emit(s, start, start, "positions", ip, device, ua)
                    facts = m.facts_at(start)
                    target = facts["bank_accounts"][0]["id"]
                    if rng.random() < 0.5:
                        target = f"{m.sub}-n{s.sid}"
                        added = {"id": target, "added_at": start - rng.uniform(1, 5) * DAY}
                        facts = {**facts, "bank_accounts": [*facts["bank_accounts"], added]}
                    body = {"bank_account_id": target, "amount": round(rng.uniform(5e4, 5e5))}
                    self.emit(s, start, start + rng.uniform(20, 300), "transfer", ip, device, ua, body=body,
                              account=facts, harm=True)

    def bot_bursts(self) -> None:
        rng = self.rng
        for _ in range(self.cfg.bots):
            c = self.victim()
            start = self.trading_time(int((self.eval_time() - T0) // DAY))
            variant = rng.choices(("script", "server", "macro"), (0.4, 0.3, 0.3))[0]
            if variant == "server":
                ip, device, ua = _addr(HOSTING_RANGES[0][0], rng), None, rng.choice(SCRIPT_UAS)
            else:
                phone = c.devices[-1] if variant == "script" else c.devices[0]
                ip, device = c.home_ip, phone.id
                ua = rng.choice(SCRIPT_UAS[:1]) if variant == "script" else phone.ua
            s = self.session("bot_burst", c.sub, True)
            t = start
            for _ in range(rng.randint(1, 3)):
                self.emit(s, start, t, "quotes", ip, device, ua)
                t += rng.uniform(1, 5)
            per_second = rng.uniform(12, 40)
            for n in range(1, rng.randint(30, 60) + 1):
                self.emit(s, start, t, "order", ip, device, ua, harm=n == 20,
                          **self.order(c, t, c.usual * rng.uniform(0.1, 0.5)))
                t += rng.expovariate(per_second)
                if rng.random() < 0.9:
                    self.emit(s, start, t, "cancel", ip, device, ua, account=c.facts_at(t))
                    t += rng.expovariate(per_second)

    def pig_butchering(self) -> None:
        rng = self.rng
        for _ in range(self.cfg.pig_butchering):
            c = self.victim()
            deposit_at = self.eval_time() - rng.uniform(0, 2) * DAY
            facts = c.facts_at(deposit_at)
            amount = round(max(1.5e5, facts["assets_cny"] * rng.uniform(0.5, 3.0)), 2)
            facts = {**facts, "assets_cny": facts["assets_cny"] + amount,
                     "last_deposit": {"amount": amount, "at": deposit_at}}
            start = self.trading_time(int((deposit_at - T0) // DAY) + rng.choice((0, 1, 1, 2)))
            start = max(start, deposit_at + HOUR)
            device = c.devices[0]
            ip = c.home_ip if rng.random() < 0.5 else mobile(c.region, rng)
            s = self.session("pig_butchering", c.sub, True)
            t = start
            for _ in range(rng.randint(2, 5)):
                self.emit(s, start, t, "quotes", ip, device.id, device.ua)
                t += rng.uniform(5, 60)
            order = self.order(c, t, facts["assets_cny"] * rng.uniform(0.5, 0.9), side="buy",
                               symbol=rng.randrange(48, 60))
            self.emit(s, start, t, "order", ip, device.id, device.ua, harm=True, **{**order, "account": facts})

    def build(self) -> Traffic:
        self.customers = [self.customer(i) for i in range(self.cfg.customers)]
        self.households()
        self.mule_farms()
        self.credential_stuffing()
        self.account_takeover()
        self.bot_bursts()
        self.pig_butchering()
        for c in self.customers:  # after the attacks: the victims' own sessions go on as usual
            self.legit_days(c)
        self.requests.sort(key=lambda r: r.t)
        return Traffic(self.seed, self.cfg, self.sessions, self.requests, self.known, self.eval_start)


def generate(seed: int, config: TrafficConfig | None = None) -> Traffic:
    """The whole simulated stream for `seed` (same seed, same stream)."""
    return Generator(seed, config or TrafficConfig()).build()
