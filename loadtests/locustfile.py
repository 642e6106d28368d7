"""A broker's traffic mix against Portcullis (``make demo``), for locust.

Run it from its own venv (locust monkey-patches sockets with gevent; it never
enters the gateway's process and this file never imports the gateway)::

    make loadtest-deps
    .venv-load/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 1m \
        --host http://127.0.0.1:8080

``BrokerUser`` mixes, by weight: quote reads ~70% (several symbols, STAR and
Hong Kong ones included), positions ~10%, order list ~8%, limit orders ~7%
(A-share lots of 100, priced just under the last quote so they rest) and
cancels ~5% (of orders this user placed). Each simulated user gets its own
token at start: from ``$PORTCULLIS_TOKEN`` if set, else by running
``.venv/bin/portcullis token --sub alice --accounts A1`` (``$PORTCULLIS_CLI``
overrides the command, ``$PORTCULLIS_SUB`` / ``$PORTCULLIS_ACCOUNT`` the
customer).

Each simulated user also holds its own device key (``gateway.client.DeviceKey``,
the client SDK: a leaf package that imports neither aiohttp nor the rest of
the gateway) and sends a fresh DPoP proof (RFC 9449) with every request; its
token is bound to that key (``cnf.jkt``) unless ``$PORTCULLIS_TOKEN`` supplies
one. ``PORTCULLIS_DPOP=0`` turns proofs off (plain bearer traffic).

``StepUpUser`` does step-ups end to end (``gateway.client.StepUpClient``): a request the demo
policy steps up -> 401 with a challenge -> ``POST /auth/mfa/challenges/{id}/totp`` with the
customer's TOTP code -> the same request again with ``X-Portcullis-Step-Up`` -> 201. Each leg is
its own name in the stats: ``step-up: challenge`` (401 expected), ``step-up: totp`` (200) and
``step-up: retry`` (201). The request, ``$PORTCULLIS_STEPUP_ACTION``:

- ``order``: a limit buy of 200 600519.SH (~290,000 CNY, above alice's single-trade limit of
  200,000: ``single_trade_limit``), cancelled again once placed so it does not hold her buying
  power (alice only: bob's buying power and investor category refuse it outright);
- ``transfer``: a deposit of 100 CNY (``direction: in``), with a bearer token (no device proof):
  the demo risk policy steps such transfers up at medium risk (no device proof, a fresh session, a
  scripted client), whatever the hour. Not with DPoP: a device that passed a step-up is known
  afterwards and its transfers go straight through, and a new device per transfer soon scores
  the face level (TOTP and SMS);
- ``auto`` (default): ``order`` while the A-share continuous sessions are open (Beijing time,
  Monday-Friday 09:30-11:30 and 13:00-14:57; holidays aside), else ``transfer``, since outside the
  sessions the policy refuses every order with ``market_closed`` before any step-up.

The TOTP secrets are the ones ``portcullis demo`` wrote and enrolled ([step_up] demo_totp_file):
``$PORTCULLIS_TOTP_FILE``, default ``var/demo/totp.json``. The customers,
``$PORTCULLIS_STEPUP_CUSTOMERS`` (default ``alice:A1,bob:B9``, or ``alice:A1`` for orders), get
**one StepUpUser each** (``fixed_count``; ``-u`` must be at least that many, the rest are
BrokerUsers), each step-up ``$PORTCULLIS_STEPUP_PACING`` seconds apart (default 30). Why: a TOTP
code is accepted once per account and 30 s step, and only steps after the last accepted one
(within +-1 step of the gateway's clock), so one account allows a burst of two step-ups and then
one per 30 s; several users on one account would mostly hit ``otp_replayed``, and wrong or
replayed guesses there would feed the account's TOTP lockout. The client never sends a code it
already used (``TotpAuthenticator``), and after an ``otp_replayed`` takes the next step's code.
``PORTCULLIS_STEPUP=0`` leaves StepUpUser out.

``EncryptedOrderUser`` (off unless ``PORTCULLIS_ENCRYPTED=1``) places orders in SM4-GCM envelopes
(docs/CRYPTO.md "Session keys and envelopes") with the sans-I/O ``StepUpClient(envelope=...)`` over
locust's client (``request_sync``): a device key and a token bound to it, a session key agreed at
``/auth/session-key`` (``GET session key`` and ``POST session key`` in the stats; agreed again by the
SDK when spent or refused), then limit buys of 100 shares sealed (``/api/accounts/[account]/orders
[encrypted]``; the answer is opened and checked) and cancelled again in plaintext.
``$PORTCULLIS_ENCRYPTED_USERS`` of them (``fixed_count``, default 2): agreements are rate-limited per
customer (the demo's ``[envelope] burst = 5``, ``per_minute = 6``), so a refused agreement is counted
as a failure and tried again on the user's next turn. ``$PORTCULLIS_AGREEMENT_KEY`` (base64url of the
gateway's SM2 agreement public key, what ``GET /auth/session-key`` offers) pins it; without it the
offered key is trusted on first use. The SDK needs ``gmssl-pyx`` in the locust venv (SM2).

``BenchUser`` is what ``portcullis bench --tool locust`` drives: one GET of
``$PORTCULLIS_BENCH_PATH`` with the headers in ``$PORTCULLIS_BENCH_HEADERS``
(JSON), paced to ``$PORTCULLIS_BENCH_RATE`` requests/s in total when set.
Exactly one of the two classes is active, depending on those variables.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shlex
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from locust import between, constant, constant_pacing, constant_throughput, events, tag, task
from locust.contrib.fasthttp import FastHttpUser

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the client SDK, gateway/client (a leaf: no server code comes with it)

from gateway.client import (  # noqa: E402
    DeviceKey,
    HttpRequest,
    HttpResponse,
    StepUpClient,
    StepUpError,
    TotpAuthenticator,
    drive_sync,
)
from gateway.client.envelope import KeyAgreementError  # noqa: E402

DEFAULT_CLI = str(REPO_ROOT / ".venv" / "bin" / "portcullis")

QUOTE_SYMBOLS = ("600519.SH", "601318.SH", "000001.SZ", "688981.SH", "300750.SZ",
                 "00700.HK", "09988.HK")
GATEWAY_REFUSALS = frozenset({"insufficient_user_authentication", "policy_denied"})
"""Answers a BrokerUser's random order may correctly get: a step-up above the customer's limit, a
policy denial outside trading hours. Counted as successes; anything else is a failure."""


def _error_code(resp: Any) -> str | None:
    try:
        doc = resp.json()
    except ValueError:
        return None
    return doc.get("error") if isinstance(doc, dict) else None


def _sdk_response(resp: Any) -> HttpResponse:
    """A FastHttpUser response for the SDK's flows (its header mapping gives (name, value) per key: items)."""
    headers = dict(resp.headers.items()) if resp.headers is not None else {}
    return HttpResponse(resp.status_code or 0, resp.content or b"", headers)


# Limit orders only on main-board A-shares: lots of 100, 0.01 CNY ticks, +-10% bands.
ORDER_SYMBOLS = {"600519.SH": 1450.00, "601318.SH": 57.20, "000001.SZ": 11.50}

_BENCH_PATH = os.environ.get("PORTCULLIS_BENCH_PATH")


_DPOP = os.environ.get("PORTCULLIS_DPOP", "1") != "0"


def _mint_token(device: DeviceKey | None = None, sub: str | None = None, account: str | None = None) -> str:
    token = os.environ.get("PORTCULLIS_TOKEN")
    if token and sub is None:
        return token.strip()
    cli = shlex.split(os.environ.get("PORTCULLIS_CLI", DEFAULT_CLI))
    sub = sub or os.environ.get("PORTCULLIS_SUB", "alice")
    account = account or os.environ.get("PORTCULLIS_ACCOUNT", "A1")
    bind = ["--dpop-jkt", device.thumbprint] if device is not None else []
    done = subprocess.run([*cli, "token", "--sub", sub, "--accounts", account, *bind],
                          capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"`{' '.join(cli)} token` failed ({done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
    return lines[-1].strip()  # the token is alone on the last line


def limit_price(last: float, rng: random.Random) -> float:
    """A buy price 0-2% under the last trade, on the 0.01 tick (stays inside the band)."""
    return round(last * (1 - rng.uniform(0.0, 0.02)), 2)


class BrokerUser(FastHttpUser):
    """One customer's session: mostly quotes, some portfolio views, a few orders."""

    abstract = _BENCH_PATH is not None
    host = "http://127.0.0.1:8080"
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.account = os.environ.get("PORTCULLIS_ACCOUNT", "A1")
        self.device = DeviceKey.generate() if _DPOP else None  # one device per simulated user
        self.token = _mint_token(self.device)
        self.rng = random.Random()
        self.last: dict[str, float] = dict(ORDER_SYMBOLS)
        self.open_orders: list[str] = []

    def auth(self, method: str, path: str) -> dict[str, str]:
        """Authorization, plus a fresh DPoP proof for exactly this request (never reused)."""
        if self.device is None:
            return {"Authorization": f"Bearer {self.token}"}
        return {"Authorization": f"Bearer {self.token}",
                "DPoP": self.device.proof(method, f"{self.host.rstrip('/')}{path}", self.token)}

    @tag("read")
    @task(70)
    def quote(self) -> None:
        symbol = self.rng.choice(QUOTE_SYMBOLS)
        path = f"/api/quotes/{symbol}"
        with self.client.get(path, headers=self.auth("GET", path),
                             name="/api/quotes/[symbol]", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200] if resp.text else ''}")
                return
            body: dict[str, Any] = resp.json()
            if symbol in self.last and isinstance(body.get("last"), int | float):
                self.last[symbol] = float(body["last"])

    @tag("read")
    @task(10)
    def positions(self) -> None:
        path = f"/api/accounts/{self.account}/positions"
        self.client.get(path, headers=self.auth("GET", path),
                        name="/api/accounts/[account]/positions")

    @tag("read")
    @task(8)
    def orders(self) -> None:
        path = f"/api/accounts/{self.account}/orders"
        self.client.get(path, headers=self.auth("GET", path),
                        name="/api/accounts/[account]/orders")

    @tag("trade")
    @task(7)
    def place_order(self) -> None:
        symbol = self.rng.choice(list(ORDER_SYMBOLS))
        order = {"symbol": symbol, "side": "buy", "qty": 100 * self.rng.randint(1, 5),
                 "type": "limit", "price": limit_price(self.last[symbol], self.rng)}
        path = f"/api/accounts/{self.account}/orders"
        with self.client.post(path, json=order,
                              headers=self.auth("POST", path), name="/api/accounts/[account]/orders [POST]",
                              catch_response=True) as resp:
            if resp.status_code in (401, 403) and _error_code(resp) in GATEWAY_REFUSALS:
                # The gateway doing its job (a step-up asked for a large order, a session closed):
                # answered correctly, not a failure; StepUpUser answers step-ups.
                resp.success()
                return
            if resp.status_code != 201:
                resp.failure(f"status {resp.status_code}: {resp.text[:200] if resp.text else ''}")
                return
            order_id = resp.json().get("order_id")
            if isinstance(order_id, str):
                self.open_orders.append(order_id)

    @tag("trade")
    @task(5)
    def cancel_order(self) -> None:
        if not self.open_orders:
            return  # nothing of ours to cancel yet; locust counts no request
        order_id = self.open_orders.pop(self.rng.randrange(len(self.open_orders)))
        path = f"/api/accounts/{self.account}/orders/{order_id}"
        self.client.delete(path,
                           headers=self.auth("DELETE", path), name="/api/accounts/[account]/orders/[id]")


_STEPUP_ACTION = os.environ.get("PORTCULLIS_STEPUP_ACTION", "auto")
_STEPUP_CUSTOMERS = [tuple(c.split(":", 1)) for c in os.environ.get(
    "PORTCULLIS_STEPUP_CUSTOMERS", "alice:A1" if _STEPUP_ACTION == "order" else "alice:A1,bob:B9").split(",") if c]
_TOTP_FILE = Path(os.environ.get("PORTCULLIS_TOTP_FILE", str(REPO_ROOT / "var" / "demo" / "totp.json")))
_BEIJING = timezone(timedelta(hours=8))
BANK_ACCOUNTS = {"A1": "bank-a1-1", "B9": "bank-b9-1", "C3": "bank-c3-1"}
BIG_ORDER = {"symbol": "600519.SH", "qty": 200}  # ~290,000 CNY: above alice's single-trade limit (200,000)


def a_share_session_open(now: float | None = None) -> bool:
    """Inside an A-share continuous session (Beijing, Monday-Friday; the exchange's holidays not known here)."""
    t = datetime.fromtimestamp(time.time() if now is None else now, _BEIJING)
    minute = t.hour * 60 + t.minute
    return t.weekday() < 5 and (9 * 60 + 30 <= minute < 11 * 60 + 30 or 13 * 60 <= minute < 14 * 60 + 57)


class StepUpUser(FastHttpUser):
    """One demo customer's step-ups, answered with TOTP: one such user per customer (see the module doc)."""

    abstract = _BENCH_PATH is not None or os.environ.get("PORTCULLIS_STEPUP", "1") == "0"
    fixed_count = len(_STEPUP_CUSTOMERS)
    host = "http://127.0.0.1:8080"
    wait_time = constant_pacing(float(os.environ.get("PORTCULLIS_STEPUP_PACING", "30")))
    _taken = 0

    def on_start(self) -> None:
        sub, self.account = _STEPUP_CUSTOMERS[StepUpUser._taken % len(_STEPUP_CUSTOMERS)]
        StepUpUser._taken += 1
        try:
            secrets_by_sub = json.loads(_TOTP_FILE.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot read the demo TOTP secrets ({_TOTP_FILE}: {exc}); run `make demo` "
                               "with [step_up] demo_totp_file, or set PORTCULLIS_TOTP_FILE") from None
        if sub not in secrets_by_sub:
            raise RuntimeError(f"no TOTP secret for {sub!r} in {_TOTP_FILE}")
        self.sub = sub
        self.totp = TotpAuthenticator(secrets_by_sub[sub])
        self.stepup = self.session()
        self.rng = random.Random()

    def session(self) -> StepUpClient:
        """A session: with a device key (DPoP) and a token bound to it for orders; a plain bearer token for
        transfers (a device that passed a step-up is known afterwards and its transfers go straight
        through, while many new devices in a row push the risk to the face level: TOTP and SMS)."""
        device = DeviceKey.generate() if _DPOP and _STEPUP_ACTION != "transfer" and a_share_session_open() else None
        return StepUpClient(self.host, _mint_token(device, self.sub, self.account), self.totp, device=device)

    def send(self, req: HttpRequest) -> HttpResponse:
        """One leg of the flow, under its own name; a status the flow did not expect is a failure."""
        with self.client.request(req.method, req.path, data=req.body, headers=req.headers, name=req.name,
                                 catch_response=True) as resp:
            out = _sdk_response(resp)
            if resp.status_code in req.expect:
                resp.success()
            else:
                resp.failure(f"status {resp.status_code}: {out.body[:200]!r}")
            return out

    @task
    def step_up(self) -> None:
        order = _STEPUP_ACTION == "order" or (_STEPUP_ACTION == "auto" and a_share_session_open())
        if order:
            path = f"/api/accounts/{self.account}/orders"
            body: dict[str, Any] = {**BIG_ORDER, "side": "buy", "type": "limit", "price": 1436.0,
                                    "client_order_id": f"su-{self.rng.getrandbits(48):x}"}
        else:
            path = f"/api/accounts/{self.account}/transfers"
            body = {"direction": "in", "amount": 100, "bank_account_id": BANK_ACCOUNTS.get(self.account, "")}
        try:
            result = self.stepup.request_sync(self.send, "POST", path, body, expect=(201,))
        except StepUpError as exc:  # e.g. totp_exhausted: the pacing is too fast for one account
            events.request.fire(request_type="POST", name="step-up: totp", response_time=0, response_length=0,
                                exception=exc, context={})
            return
        doc = result.response.json() if result.response.status == 201 else None
        order_id = doc.get("order_id") if isinstance(doc, dict) else None
        if order and isinstance(order_id, str):  # give alice's buying power back
            cancel = f"{path}/{order_id}"
            self.client.delete(cancel, headers=self.stepup.headers("DELETE", f"{self.host}{cancel}"),
                               name="/api/accounts/[account]/orders/[id]")


_ENCRYPTED = os.environ.get("PORTCULLIS_ENCRYPTED", "0") == "1"
ENCRYPTED_ORDER = "/api/accounts/[account]/orders [encrypted]"


def _pinned_agreement_key() -> bytes | None:
    value = os.environ.get("PORTCULLIS_AGREEMENT_KEY", "").strip()
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)) if value else None


class EncryptedOrderUser(FastHttpUser):
    """Orders in SM4-GCM envelopes through the SDK's sans-I/O client (see the module doc)."""

    abstract = _BENCH_PATH is not None or not _ENCRYPTED
    fixed_count = int(os.environ.get("PORTCULLIS_ENCRYPTED_USERS", "2"))
    host = "http://127.0.0.1:8080"
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        sub = os.environ.get("PORTCULLIS_SUB", "alice")
        self.account = os.environ.get("PORTCULLIS_ACCOUNT", "A1")
        device = DeviceKey.generate()  # a session key is bound to the device key and the customer
        self.sdk = StepUpClient(self.host, _mint_token(device, sub, self.account), None, device=device,
                                pinned=_pinned_agreement_key())
        self.rng = random.Random()
        self.last: dict[str, float] = dict(ORDER_SYMBOLS)

    def send(self, req: HttpRequest) -> HttpResponse:
        """One leg under its own name; the gateway refusing what it should refuse is not a failure."""
        with self.client.request(req.method, req.path, data=req.body, headers=req.headers, name=req.name,
                                 catch_response=True) as resp:
            out = _sdk_response(resp)
            if resp.status_code in req.expect or _error_code(resp) in GATEWAY_REFUSALS:
                resp.success()
            else:
                resp.failure(f"status {resp.status_code}: {out.body[:200]!r}")
            return out

    @tag("trade")
    @task
    def place_encrypted_order(self) -> None:
        if self.sdk.envelope is None:
            try:
                drive_sync(self.sdk.agree_session(), self.send)
            except KeyAgreementError:
                return  # e.g. 429 rate_limited: already a failure in the stats; again next turn
        symbol = self.rng.choice(list(ORDER_SYMBOLS))
        order = {"symbol": symbol, "side": "buy", "qty": 100, "type": "limit",
                 "price": limit_price(self.last[symbol], self.rng),
                 "client_order_id": f"enc-{self.rng.getrandbits(48):x}"}
        path = f"/api/accounts/{self.account}/orders"
        try:
            result = self.sdk.request_sync(self.send, "POST", path, order, expect=(201,), name=ENCRYPTED_ORDER)
        except StepUpError:
            return  # a challenge (no TOTP here): counted as the gateway's answer, nothing placed
        placed = result.response.json() if result.response.status == 201 else None  # opened by the SDK
        order_id = placed.get("order_id") if isinstance(placed, dict) else None
        if isinstance(order_id, str):  # give the buying power back
            cancel = f"{path}/{order_id}"
            self.client.delete(cancel, headers=self.sdk.headers("DELETE", f"{self.host}{cancel}"),
                               name="/api/accounts/[account]/orders/[id]")


class BenchUser(FastHttpUser):
    """The single request of ``portcullis bench --tool locust``, as fast or as paced as asked."""

    abstract = _BENCH_PATH is None
    host = "http://127.0.0.1:8080"
    wait_time = constant(0)

    def on_start(self) -> None:
        self.path = _BENCH_PATH or "/"
        self.headers: dict[str, str] = json.loads(os.environ.get("PORTCULLIS_BENCH_HEADERS", "{}"))

    @task
    def get(self) -> None:
        self.client.get(self.path, headers=self.headers)


@events.init.add_listener
def _pace_bench(environment: Any, **_: Any) -> None:
    """With PORTCULLIS_BENCH_RATE, spread that total rate evenly over the users."""
    rate = os.environ.get("PORTCULLIS_BENCH_RATE")
    users = getattr(environment.parsed_options, "num_users", None)
    if _BENCH_PATH is not None and rate and users:
        BenchUser.wait_time = constant_throughput(float(rate) / int(users))
