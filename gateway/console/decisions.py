"""The decisions dashboard: decisions per minute by outcome, step-up rate, top deny reasons, risk score
distribution and the latest denials, refreshed live (docs/CONSOLE.md).

The numbers are the sum over every gateway process sharing the state store (gateway/decision_stats.py);
this page only reads them and draws them: the charts are SVG drawn here, on the server (the page's
Content-Security-Policy allows no inline script or style), and console.js refetches the page every few
seconds and swaps the ``data-refresh`` element. Opening the page is audited (it names customers and
accounts); its refreshes are not (they are the same view).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from gateway.console.app import CONSOLE_KEY, officer_session
from gateway.decision_stats import OUTCOMES, Snapshot

REFRESH_SECONDS = 3
LABELS = {"allow": "allowed", "step_up": "step-up asked", "deny": "denied"}

# The per-minute chart's drawing area, in SVG user units (the SVG scales to the page's width).
CHART_W, CHART_H = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 28
RISK_W = 480


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    css: str


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a chart: its rectangles (stacked), what it says in words, its label if any."""
    rects: list[Rect]
    title: str
    label: str | None
    x: float
    anchor: str = "middle"


@dataclass(frozen=True, slots=True)
class Tick:
    y: float
    text: str


def nice_max(value: int) -> int:
    """The axis top: ``value`` rounded up to 1, 2 or 5 times a power of ten (at least 1)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if value <= m * step:
                return m * step
        step *= 10


def _ticks(top: int, height: float) -> list[Tick]:
    base = CHART_H - BOTTOM
    # Counts are whole: no half-way line when half the top is not a whole number.
    return [Tick(round(base - height * f, 1), str(int(top * f))) for f in (0.0, 0.5, 1.0) if top * f == int(top * f)]


def minute_bars(snap: Snapshot) -> tuple[list[Bar], list[Tick]]:
    """The stacked bars of decisions per minute (allowed at the bottom, then step-ups, then denials)."""
    n = max(len(snap.minutes), 1)
    width = (CHART_W - LEFT - RIGHT) / n
    height = CHART_H - TOP - BOTTOM
    top = nice_max(max((sum(c.values()) for _, c in snap.minutes), default=0))
    bars: list[Bar] = []
    for i, (start, counts) in enumerate(snap.minutes):
        x = LEFT + i * width
        y = float(CHART_H - BOTTOM)
        rects: list[Rect] = []
        for outcome in OUTCOMES:
            h = height * counts[outcome] / top
            if h > 0:
                y -= h
                rects.append(Rect(round(x + 1, 2), round(y, 2), round(max(width - 2, 1), 2), round(h, 2),
                                  f"bar-{outcome}"))
        hhmm = datetime.fromtimestamp(start, UTC).strftime("%H:%M")
        words = ", ".join(f"{counts[o]} {LABELS[o]}" for o in OUTCOMES)
        last = i == n - 1  # the newest minute's label ends at the chart's edge
        bars.append(Bar(rects, f"{hhmm} UTC: {words}", hhmm if (i % 10 == 0 and i < n - 5) or last else None,
                        round(x + width, 2) if last else round(x + width / 2, 2), "end" if last else "middle"))
    return bars, _ticks(top, height)


def risk_bars(snap: Snapshot) -> tuple[list[Bar], list[Tick]]:
    """The histogram of risk scores by tens."""
    n = len(snap.risk)
    width = (RISK_W - LEFT - RIGHT) / n
    height = CHART_H - TOP - BOTTOM
    top = nice_max(max(snap.risk, default=0))
    bars: list[Bar] = []
    for i, count in enumerate(snap.risk):
        x = LEFT + i * width
        h = height * count / top
        span = f"{i * 10} to {i * 10 + 9}" if i < 9 else "90 to 100"
        rects = [Rect(round(x + 2, 2), round(CHART_H - BOTTOM - h, 2), round(width - 4, 2), round(h, 2), "bar-risk")]
        bars.append(Bar(rects if h > 0 else [], f"risk score {span}: {count} decisions", str(i * 10), round(x + 2, 2),
                        "start"))
    return bars, _ticks(top, height)


def percent(share: float | None) -> str:
    return "none yet" if share is None else f"{share * 100:.1f}%"


async def decisions_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    snap = await console.gw.decision_stats.snapshot()
    # A browser's refresh is a fetch (Sec-Fetch-Mode: cors); opening the page is a navigation (or a
    # client that does not say: audited too).
    if request.headers.get("Sec-Fetch-Mode", "navigate") == "navigate":
        console.audit({"sub": officer_session(request).sub, "action": "decisions_view", "via": "console"})
    minutes, minute_ticks = minute_bars(snap)
    risk, risk_ticks = risk_bars(snap)
    top_reason = snap.reasons[0][1] if snap.reasons else 1
    return console.render(
        request, "decisions.html", active="decisions", snap=snap, refresh=REFRESH_SECONDS,
        labels=LABELS, outcomes=OUTCOMES, minutes=minutes, minute_ticks=minute_ticks, risk=risk,
        risk_ticks=risk_ticks, chart_w=CHART_W, chart_h=CHART_H, risk_w=RISK_W, left=LEFT, right=RIGHT,
        base=CHART_H - BOTTOM, reasons=snap.reasons[:10], top_reason=top_reason,
        step_up_rate=percent(snap.rate("step_up")), deny_rate=percent(snap.rate("deny")))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/decisions", decisions_page)
