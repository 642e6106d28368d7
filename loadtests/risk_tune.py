"""Tune the risk points and level thresholds on the tuning seeds only, and print the curve.

    .venv/bin/python loadtests/risk_tune.py                      # tune on seeds 1-4, curve on them
    .venv/bin/python loadtests/risk_tune.py --curve-seeds 101 102 103 --no-tune   # the held-out curve

Tuning is a coordinate search. Each full run (loadtests/risk_eval.py) records
every scored request's factor codes, so a candidate set of points and level
thresholds is judged by re-scoring those records (milliseconds) instead of
re-running the engine; learning depends on the scores (only low-risk requests
teach a profile), so after each search the chosen settings are run for real
on the tuning seeds and the search repeats from the new records
(``--iterations``, default 2). The objective is the mean detection rate over
the scenarios minus ``--penalty`` x the legitimate step-up share, with the
share held at or below ``--budget``; points stay between 5 and 60, so no
signal is switched off and none decides alone, the pig-butchering and bot
signals aside, which may reach a level on their own.

The curve: with the chosen points, every level threshold moved by the same
offset (-20 .. +20), one full run per offset on ``--curve-seeds``, printing
the detection per scenario and the legitimate step-up share, one JSON line per
offset. Nothing here reads the held-out seeds unless asked with --curve-seeds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from risk_eval import STEP_UP_AT, TUNE_SEEDS, Outcome, run, stepped_up, summary
from risk_traffic import SCENARIOS, TrafficConfig, generate, network

from gateway.risk.scorer import DEFAULT_LEVELS, level_for
from gateway.risk.signals import DEFAULT_POINTS, RiskSettings

Levels = tuple[tuple[int, str], ...]
CANDIDATES = tuple(range(5, 65, 5))
RULE_FLOORS: Mapping[str, int] = {"new_bank_account_transfer": 30}
"""Points a rule of the broker fixes from below: a transfer to a new bank account is stepped up (RULES.md)."""
MIN_GAIN = 0.01
"""A change must buy this much objective (a few sessions, not one): smaller gains are noise of the tuning seeds."""


def allowed(code: str) -> tuple[int, ...]:
    """Candidate points: re-weighting, never switching a signal off (at least half its default)."""
    floor = max(5, DEFAULT_POINTS[code] // 2, RULE_FLOORS.get(code, 0))
    return tuple(v for v in CANDIDATES if v >= floor)


def rescore(outcomes: Sequence[Outcome], points: Mapping[str, int], levels: Levels) -> dict[str, float]:
    """Detection per scenario and the legitimate step-up share, had these points and levels been used."""
    cache: dict[tuple[str, tuple[str, ...]], bool] = {}

    def up(key: tuple[str, tuple[str, ...]]) -> bool:
        hit = cache.get(key)
        if hit is None:
            score = min(100, sum(points[c] for c in key[1]))
            hit = cache[key] = stepped_up(key[0], level_for(score, levels))
        return hit

    legit = legit_up = 0
    sessions = dict.fromkeys(SCENARIOS, 0)
    caught = dict.fromkeys(SCENARIOS, 0)
    for out in outcomes:
        for key, n in out.legit.items():
            legit += n
            legit_up += n if up(key) else 0
        for sid, (label, reqs) in out.attacks.items():
            if sid in out.harmed:
                sessions[label] += 1
                caught[label] += any(up(k) for k in reqs)
    result = {s: caught[s] / sessions[s] if sessions[s] else 1.0 for s in SCENARIOS}
    result["legit_share"] = legit_up / legit if legit else 0.0
    return result


def objective(r: Mapping[str, float], budget: float, penalty: float) -> float:
    if r["legit_share"] > budget:
        return -1.0 - r["legit_share"]
    return sum(r[s] for s in SCENARIOS) / len(SCENARIOS) - penalty * r["legit_share"]


def shifted(levels: Levels, offset: int) -> Levels:
    return tuple((max(1, t + offset) if t else 0, name) for t, name in levels)


def search(outcomes: Sequence[Outcome], points: dict[str, int], levels: Levels, budget: float,
           penalty: float) -> tuple[dict[str, int], Levels]:
    codes = sorted({c for o in outcomes for (_, cs) in o.legit for c in cs}
                   | {c for o in outcomes for (_, reqs) in o.attacks.values() for (_, cs) in reqs for c in cs})
    best = objective(rescore(outcomes, points, levels), budget, penalty)
    for _ in range(3):
        improved = False
        for code in codes:
            choice, choice_score = points[code], best
            for value in allowed(code):
                score = objective(rescore(outcomes, {**points, code: value}, levels), budget, penalty)
                if score > choice_score + 1e-9:
                    choice, choice_score = value, score
            if choice_score >= best + MIN_GAIN:
                best, points, improved = choice_score, {**points, code: choice}, True
        thresholds = dict((name, t) for t, name in levels)
        for name, options in (("medium", range(20, 45, 5)), ("high", range(45, 80, 5)),
                              ("critical", range(70, 100, 5))):
            for value in options:
                trial_t = {**thresholds, name: value}
                if not trial_t["low"] < trial_t["medium"] < trial_t["high"] < trial_t["critical"]:
                    continue
                trial_levels = tuple(sorted(((t, n) for n, t in trial_t.items()), reverse=True))
                score = objective(rescore(outcomes, points, trial_levels), budget, penalty)
                if score >= best + MIN_GAIN:
                    best, levels, thresholds, improved = score, trial_levels, trial_t, True
        if not improved:
            break
    return points, levels


def full_runs(seeds: Sequence[int], config: TrafficConfig, points: Mapping[str, int],
              levels: Levels) -> list[Outcome]:
    settings = RiskSettings(points=dict(points))
    intel = network()
    return [asyncio.run(run(generate(seed, config), settings, levels, intel)) for seed in seeds]


def curve_point(outcomes: Sequence[Outcome], offset: int, levels: Levels) -> dict[str, Any]:
    s = summary(outcomes)
    return {"offset": offset, "levels": {name: t for t, name in sorted(levels)},
            "detection": {k: v["rate"] for k, v in s["scenarios"].items()},
            "legit_share": s["legit"]["share"]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--tune-seeds", type=int, nargs="+", default=list(TUNE_SEEDS))
    p.add_argument("--curve-seeds", type=int, nargs="+", default=None, help="default: the tuning seeds")
    p.add_argument("--budget", type=float, default=0.015, help="highest legitimate step-up share allowed")
    p.add_argument("--penalty", type=float, default=10.0, help="detection given up per unit of legit share")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--no-tune", action="store_true", help="use the current defaults (signals.py) as they are")
    p.add_argument("--offsets", type=int, nargs="+", default=[-20, -15, -10, -5, 0, 5, 10, 20])
    args = p.parse_args(argv)
    config = TrafficConfig()
    points: dict[str, int] = dict(DEFAULT_POINTS)
    levels: Levels = tuple(DEFAULT_LEVELS)
    if not args.no_tune:
        for i in range(args.iterations):
            outcomes = full_runs(args.tune_seeds, config, points, levels)
            before = rescore(outcomes, points, levels)
            points, levels = search(outcomes, points, levels, args.budget, args.penalty)
            after = rescore(outcomes, points, levels)
            print(json.dumps({"iteration": i, "before": before, "after_rescored": after,
                              "changed": {k: v for k, v in points.items() if DEFAULT_POINTS[k] != v},
                              "levels": {n: t for t, n in sorted(levels)}}), file=sys.stderr, flush=True)
        check = summary(full_runs(args.tune_seeds, config, points, levels))
        print(json.dumps({"tuned_on": args.tune_seeds, "points_changed": {
            k: v for k, v in points.items() if DEFAULT_POINTS[k] != v},
            "levels": {n: t for t, n in sorted(levels)}, "step_up_at": dict(STEP_UP_AT),
            "check": {"detection": {k: v["rate"] for k, v in check["scenarios"].items()},
                      "legit_share": check["legit"]["share"]}}), flush=True)
    for offset in args.offsets:
        moved = shifted(levels, offset)
        outcomes = full_runs(args.curve_seeds or args.tune_seeds, config, points, moved)
        print(json.dumps({"seeds": args.curve_seeds or args.tune_seeds, **curve_point(outcomes, offset, moved)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
