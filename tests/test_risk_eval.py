"""The risk evaluation (loadtests/risk_traffic.py, risk_eval.py): structure and that every scenario is scored.

Rates are not asserted: they depend on the tuned points, and a test must not
depend on tuning luck.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

import risk_eval  # noqa: E402
import risk_traffic  # noqa: E402

SMALL = risk_traffic.TrafficConfig(customers=40, warmup_days=3, eval_days=2, stuffing_waves=1, stuffing_accounts=6,
                                   takeovers=5, mule_farms=1, bots=3, pig_butchering=3)


def test_the_generator_is_reproducible_from_its_seed() -> None:
    a, b, c = (risk_traffic.generate(s, SMALL) for s in (7, 7, 8))
    key = [(r.t, r.sub, r.route, r.ip, r.device) for r in a.requests]
    assert key == [(r.t, r.sub, r.route, r.ip, r.device) for r in b.requests]
    assert key != [(r.t, r.sub, r.route, r.ip, r.device) for r in c.requests]
    assert [r.t for r in a.requests] == sorted(r.t for r in a.requests)


def test_every_attack_session_has_exactly_one_harm_request() -> None:
    traffic = risk_traffic.generate(7, SMALL)
    harms: dict[int, int] = {}
    for r in traffic.requests:
        harms[r.sid] = harms.get(r.sid, 0) + r.harm
    for s in traffic.sessions:
        expected = 1 if s.label != risk_traffic.LEGIT and s.scored else 0
        assert harms.get(s.sid, 0) == expected, s


def test_eval_scores_every_scenario_and_the_legit_traffic() -> None:
    result = risk_eval.evaluate([7], tune_seeds=[1], config=SMALL)
    assert set(result["scenarios"]) == set(risk_traffic.SCENARIOS)
    for name, s in result["scenarios"].items():
        assert s["sessions"] > 0, name
        assert 0 <= s["detected"] <= s["sessions"] and s["rate"] == round(s["detected"] / s["sessions"], 4)
    legit = result["legit"]
    assert legit["requests"] > 0 and 0 <= legit["stepped_up"] <= legit["requests"]
    assert set(legit["by_tier"]) == set(risk_eval.STEP_UP_AT)
    assert sum(t["requests"] for t in legit["by_tier"].values()) == legit["requests"]
    assert result["settings"]["step_up_at"] == dict(risk_eval.STEP_UP_AT)
    assert result["seeds"] == [7] and result["requests"] > legit["requests"]


def test_eval_refuses_a_tuning_seed_as_a_report_seed() -> None:
    with pytest.raises(ValueError, match="used for tuning"):
        risk_eval.evaluate([1, 101], tune_seeds=[1, 2], config=SMALL)


@pytest.mark.parametrize(("tier", "level", "up"), [
    ("read", "high", False), ("read", "critical", True), ("trade", "medium", False), ("trade", "high", True),
    ("transfer", "low", False), ("transfer", "medium", True),
])
def test_step_up_mapping(tier: str, level: str, up: bool) -> None:
    assert risk_eval.stepped_up(tier, level) is up


def test_cli_prints_one_json_line() -> None:
    # The command as installed (gateway.cli.main), in a fresh interpreter that then checks its modules.
    script = ("import sys\nfrom gateway.cli import main\n"
              "rc = main(['risk', 'eval', '--seeds', '11', '--customers', '30', '--warmup-days', '2', "
              "'--eval-days', '1'])\n"
              "assert not any(m.split('.')[0] == 'locust' for m in sys.modules), 'locust imported'\n"
              "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["seeds"] == [11] and set(result["scenarios"]) == set(risk_traffic.SCENARIOS)
    refused = subprocess.run([sys.executable, "-m", "gateway", "risk", "eval", "--seeds", "1", "--tune-seeds", "1"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert refused.returncode == 2 and "used for tuning" in refused.stderr
