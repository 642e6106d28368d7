"""Microseconds per one-time-code verification, against an ES256 signature check in the same run.

    .venv/bin/python loadtests/otp_cost.py [--n 3000] [--rounds 5] [--redis redis://127.0.0.1:6379/0]

The issue's target: "TOTP and SMS verification are sub-millisecond apart from
I/O". Cases, each on a fresh customer or purpose so every check is a success:

* ``totp_verify``: `Totp.verify` of the current code (open the SM4-sealed secret,
  +-1 step drift, constant-time compare, the replay marker, the attempt counters);
* ``sms_verify``: `SmsOtp.verify` of a sent code (HMAC-SHA256 of the code, attempt
  counter, single-use `getdel`);
* ``step_up_token``: signing a step-up token and checking it (`StepUpTokens`).

With the memory store the time is the CPU cost (the state-store calls included, no
network); with ``--redis`` the same on real Redis, where the round trips dominate.
The baseline ``es256_verify`` (one P-256 signature check with ``cryptography``) ties
the numbers to the machine. Prints one JSON object: per store and case the median
over rounds of p50 and p99 in microseconds and the ratio of p50 to ``es256_verify``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import delete_redis_prefix  # noqa: E402

from gateway.crypto.secretbox import SecretBox  # noqa: E402
from gateway.mfa.sms import SmsOtp  # noqa: E402
from gateway.mfa.tokens import StepUpTokens  # noqa: E402
from gateway.mfa.totp import Totp  # noqa: E402
from gateway.state.base import StateStore  # noqa: E402
from gateway.state.memory import MemoryStore  # noqa: E402


class Outbox:
    """Keeps the last text "sent" (the benchmark reads the code back from it)."""

    def __init__(self) -> None:
        self.text = ""

    async def send(self, phone: str, text: str) -> None:
        self.text = text


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _time(n: int, prepare: Callable[[int], Awaitable[Any]], run: Callable[[Any], Awaitable[Any]]
                ) -> list[float]:
    out = []
    for i in range(n):
        arg = await prepare(i)
        t0 = time.perf_counter()
        await run(arg)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


async def cases(store: StateStore, n: int, tag: str) -> dict[str, list[float]]:
    box = SecretBox.generate()
    totp = Totp(store, box)
    outbox = Outbox()
    sms = SmsOtp(store, outbox, hmac_key=secrets.token_bytes(32), per_phone=(10**9, 3600.0),
                 per_ip=(10**9, 3600.0))
    async def prep_totp(i: int) -> str:
        # Enrolled the customer's way (begin + confirm spends the current code): the app's next code.
        enrolment = await totp.begin_enrolment(f"{tag}-u{i}", "bench")
        await totp.confirm_enrolment(f"{tag}-u{i}", pyotp.TOTP(enrolment.secret).now())
        return f"{tag}-u{i}|{pyotp.TOTP(enrolment.secret).at(time.time() + 30)}"

    async def run_totp(arg: str) -> None:
        sub, c = arg.split("|")
        await totp.verify(sub, c)

    async def prep_sms(i: int) -> tuple[str, str]:
        purpose = f"challenge:{tag}-{i}"
        await sms.send(purpose, "+8613800000001", ip=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}")
        return purpose, outbox.text.split("code: ")[1][:6]

    async def run_sms(arg: tuple[str, str]) -> None:
        await sms.verify(*arg)

    tokens = StepUpTokens(secrets.token_bytes(32))

    async def prep_none(i: int) -> int:
        return i

    async def run_token(i: int) -> None:
        now = int(time.time())
        token, _ = tokens.issue(sub="alice", acr="urn:portcullis:acr:mfa", amr=["otp"], auth_time=now, ttl=120,
                                cid="c" * 32, ath="ath", jkt="jkt", txn="txn", now=now)
        tokens.verify(token, now)

    return {"totp_verify": await _time(n, prep_totp, run_totp),
            "sms_verify": await _time(n, prep_sms, run_sms),
            "step_up_token": await _time(n, prep_none, run_token)}


def es256(n: int) -> list[float]:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    sig = key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        pub.verify(sig, b"payload", ec.ECDSA(hashes.SHA256()))
        out.append((time.perf_counter() - t0) * 1e6)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--redis", default=None)
    args = ap.parse_args()
    stores: dict[str, Callable[[], StateStore]] = {"memory": MemoryStore}
    prefix = f"bench-otp-{secrets.token_hex(4)}:"
    if args.redis:
        from gateway.state.redis import RedisStore
        stores["redis"] = lambda: RedisStore(args.redis, prefix, timeout=2.0)
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    base: list[tuple[float, float]] = []
    for r in range(args.rounds):
        b = es256(args.n)
        base.append((_pct(b, 0.5), _pct(b, 0.99)))
        for name, make in stores.items():
            store = make()
            try:
                for case, values in (await cases(store, args.n, f"r{r}")).items():
                    results.setdefault(name, {}).setdefault(case, []).append((_pct(values, 0.5), _pct(values, 0.99)))
            finally:
                if name == "redis":
                    await delete_redis_prefix(args.redis, prefix)
                await store.close()
    es_p50 = statistics.median(p for p, _ in base)
    out: dict[str, Any] = {"es256_verify": {"p50_us": round(es_p50, 1),
                                            "p99_us": round(statistics.median(p for _, p in base), 1)}}
    for name, per_case in results.items():
        out[name] = {case: {"p50_us": round(statistics.median(p for p, _ in v), 1),
                            "p99_us": round(statistics.median(p for _, p in v), 1),
                            "p50_vs_es256": round(statistics.median(p for p, _ in v) / es_p50, 2)}
                     for case, v in per_case.items()}
    out["n"], out["rounds"] = args.n, args.rounds
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
