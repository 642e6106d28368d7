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

``BenchUser`` is what ``portcullis bench --tool locust`` drives: one GET of
``$PORTCULLIS_BENCH_PATH`` with the headers in ``$PORTCULLIS_BENCH_HEADERS``
(JSON), paced to ``$PORTCULLIS_BENCH_RATE`` requests/s in total when set.
Exactly one of the two classes is active, depending on those variables.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from locust import between, constant, constant_throughput, events, tag, task
from locust.contrib.fasthttp import FastHttpUser

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the client SDK, gateway/client (a leaf: no server code comes with it)

from gateway.client import DeviceKey  # noqa: E402

DEFAULT_CLI = str(REPO_ROOT / ".venv" / "bin" / "portcullis")

QUOTE_SYMBOLS = ("600519.SH", "601318.SH", "000001.SZ", "688981.SH", "300750.SZ",
                 "00700.HK", "09988.HK")
# Limit orders only on main-board A-shares: lots of 100, 0.01 CNY ticks, +-10% bands.
ORDER_SYMBOLS = {"600519.SH": 1450.00, "601318.SH": 57.20, "000001.SZ": 11.50}

_BENCH_PATH = os.environ.get("PORTCULLIS_BENCH_PATH")


_DPOP = os.environ.get("PORTCULLIS_DPOP", "1") != "0"


def _mint_token(device: DeviceKey | None = None) -> str:
    token = os.environ.get("PORTCULLIS_TOKEN")
    if token:
        return token.strip()
    cli = shlex.split(os.environ.get("PORTCULLIS_CLI", DEFAULT_CLI))
    sub = os.environ.get("PORTCULLIS_SUB", "alice")
    account = os.environ.get("PORTCULLIS_ACCOUNT", "A1")
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
