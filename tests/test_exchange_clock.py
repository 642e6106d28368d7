"""The input's clock keeps the fields of the last whole second: it must equal an uncached computation."""

from __future__ import annotations

import random

from gateway.policy.facts import exchange_clock, exchange_time


def _uncached(now: float) -> dict[str, object]:
    t = exchange_time(now)
    return {"date": t.date().isoformat(), "weekday": t.isoweekday(), "time": t.strftime("%H:%M:%S"),
            "second_of_day": t.hour * 3600 + t.minute * 60 + t.second}


def test_cached_clock_equals_datetime_including_microsecond_rounding() -> None:
    rng = random.Random(5)
    for _ in range(5000):
        base = rng.randint(0, 2**32)
        # fromtimestamp rounds to the microsecond: x.9999996 shows as the next second
        for now in (base + rng.random(), base + 0.9999996, base + 0.9999994, float(base), base - 1e-7):
            clock = exchange_clock(now, True)
            assert {k: clock[k] for k in ("date", "weekday", "time", "second_of_day")} == _uncached(now), now
            assert clock["epoch"] == now and clock["tz"] == "Asia/Shanghai" and clock["trading_day"] is True


def test_same_second_then_next_day() -> None:
    midnight = 1795536000.0  # 2026-11-25 00:00:00 Shanghai
    assert exchange_clock(midnight - 0.25, None)["date"] == "2026-11-24"
    assert exchange_clock(midnight - 0.5, None)["time"] == "23:59:59"
    assert exchange_clock(midnight, None)["date"] == "2026-11-25"
    assert exchange_clock(midnight + 0.5, None)["second_of_day"] == 0
