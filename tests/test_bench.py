"""``portcullis bench``: parsing wrk and locust output, the summary, and one real run.

The wrk samples below are real outputs captured on the development machine
(wrk 4.1.0 against the demo backend), one per latency unit. Nothing here
asserts a timing or a ratio: those depend on the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway import bench
from gateway.bench import LoadResult
from gateway.config import parse

REPO_ROOT = Path(__file__).resolve().parents[1]

WRK_MICROSECONDS = """\
Running 2s test @ http://127.0.0.1:19123/healthz
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.11ms    1.60ms  15.25ms   89.28%
    Req/Sec     5.99k     2.08k   10.16k    65.00%
  Latency Distribution
     50%  434.00us
     75%  847.00us
     90%    2.86ms
     99%    8.12ms
  11944 requests in 2.01s, 1.81MB read
Requests/sec:   5941.59
Transfer/sec:      0.90MB
"""

WRK_MILLISECONDS = """\
Running 2s test @ http://127.0.0.1:19123/__debug/slow?delay=0.004
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.91ms    1.49ms  12.48ms   82.84%
    Req/Sec   675.95     63.40   800.00     70.00%
  Latency Distribution
     50%    5.21ms
     75%    6.36ms
     90%    8.43ms
     99%   10.16ms
  1350 requests in 2.01s, 230.71KB read
Requests/sec:    672.88
Transfer/sec:    114.99KB
"""

# wrk pads the seconds unit with a trailing space.
WRK_SECONDS = """\
Running 3s test @ http://127.0.0.1:19123/__debug/slow?delay=1.2
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20s    75.56us   1.20s    50.00%
    Req/Sec     1.00      0.00     1.00    100.00%
  Latency Distribution
     50%    1.20s\x20
     75%    1.20s\x20
     90%    1.20s\x20
     99%    1.20s\x20
  4 requests in 3.01s, 692.00B read
Requests/sec:      1.33
Transfer/sec:     230.24B
"""

WRK_NON_2XX = """\
Running 2s test @ http://127.0.0.1:19123/api/quotes/600519.SH
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.72ms    2.06ms  17.17ms   87.15%
    Req/Sec     3.43k     1.16k    6.01k    80.00%
  Latency Distribution
     50%  628.00us
     75%    2.32ms
     90%    4.38ms
     99%    9.98ms
  6827 requests in 2.00s, 1.73MB read
  Non-2xx or 3xx responses: 6827
Requests/sec:   3406.54
Transfer/sec:      0.86MB
"""

WRK_SOCKET_ERRORS = """\
Running 3s test @ http://127.0.0.1:19123/__debug/slow?delay=1.5
  1 threads and 3 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     1.00      0.00     1.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  3 requests in 3.00s, 519.00B read
  Socket errors: connect 0, read 0, write 0, timeout 3
Requests/sec:      1.00
Transfer/sec:     172.75B
"""


# --------------------------------------------------------------------------
# wrk output


@pytest.mark.parametrize(("text", "ms"), [
    ("434.00us", 0.434), ("8.12ms", 8.12), ("1.20s", 1200.0), ("1.20s ", 1200.0),
    ("2.00m", 120_000.0), ("1.00h", 3_600_000.0), ("17", None), ("fast", None),
])
def test_parse_time_ms_converts_each_wrk_unit(text: str, ms: float | None) -> None:
    if ms is None:
        with pytest.raises(ValueError):
            bench.parse_time_ms(text)
    else:
        assert bench.parse_time_ms(text) == pytest.approx(ms)


def test_parse_wrk_reads_microsecond_percentiles() -> None:
    r = bench.parse_wrk(WRK_MICROSECONDS)
    assert (r.rps, r.requests, r.errors) == (5941.59, 11944, 0)
    assert r.p50_ms == pytest.approx(0.434)
    assert r.p99_ms == pytest.approx(8.12)


def test_parse_wrk_reads_millisecond_percentiles() -> None:
    r = bench.parse_wrk(WRK_MILLISECONDS)
    assert r.rps == 672.88
    assert r.p50_ms == pytest.approx(5.21)
    assert r.p99_ms == pytest.approx(10.16)


def test_parse_wrk_reads_second_percentiles_with_trailing_space() -> None:
    r = bench.parse_wrk(WRK_SECONDS)
    assert r.rps == 1.33
    assert r.p50_ms == pytest.approx(1200.0)
    assert r.p99_ms == pytest.approx(1200.0)


def test_parse_wrk_counts_non_2xx_responses_as_errors() -> None:
    assert bench.parse_wrk(WRK_NON_2XX).errors == 6827


def test_parse_wrk_counts_socket_errors() -> None:
    assert bench.parse_wrk(WRK_SOCKET_ERRORS).errors == 3


def test_parse_wrk_without_latency_distribution_is_an_error() -> None:
    no_distribution = "\n".join(
        line for line in WRK_MILLISECONDS.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(ValueError, match="50%"):
        bench.parse_wrk(no_distribution)


def test_parse_wrk_without_requests_per_second_is_an_error() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


# --------------------------------------------------------------------------
# locust output

LOCUST_STATS = """\
Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,\
80%,90%,95%,98%,99%,99.9%,99.99%,100%
GET,/api/quotes/600519.SH,2000,3,4,4.8,1.2,60.1,412.0,198.7,0.3,4,5,5,6,7,9,12,15,40,60,60
,Aggregated,2000,3,4,4.8,1.2,60.1,412.0,198.7,0.3,4,5,5,6,7,9,12,15,40,60,60
"""


def test_parse_locust_stats_reads_the_aggregated_row() -> None:
    r = bench.parse_locust_stats(LOCUST_STATS)
    assert r == LoadResult(rps=198.7, p50_ms=4.0, p99_ms=15.0, requests=2000, errors=3)


def test_parse_locust_stats_without_aggregated_row_is_an_error() -> None:
    with pytest.raises(ValueError, match="Aggregated"):
        bench.parse_locust_stats(LOCUST_STATS.rsplit("\n", 2)[0] + "\n")


# --------------------------------------------------------------------------
# Summary and ratios


def _target(rps: float, fixed_p50: float) -> dict[str, object]:
    return bench.target_summary(LoadResult(rps, 1.0, 2.0), LoadResult(490.0, fixed_p50, 3.0),
                                500)


def test_compute_ratios_divides_throughputs_and_subtracts_fixed_p50() -> None:
    targets = {"direct": _target(4000, 0.8), "bare": _target(2000, 1.0),
               "gateway": _target(1500, 1.6)}
    assert bench.compute_ratios(targets) == {
        "gateway_over_bare_rps": 0.75, "gateway_over_direct_rps": 0.375,
        "bare_over_direct_rps": 0.5, "gateway_minus_bare_p50_ms_fixed": 0.6,
    }


def test_compute_ratios_is_none_when_a_throughput_is_zero() -> None:
    targets = {"direct": _target(0, 0.8), "bare": _target(2000, 1.0),
               "gateway": _target(1500, 1.6)}
    ratios = bench.compute_ratios(targets)
    assert ratios["gateway_over_direct_rps"] is None
    assert ratios["bare_over_direct_rps"] is None


def test_summary_has_the_documented_shape() -> None:
    targets = {"direct": _target(4000, 0.8), "bare": _target(2000, 1.0),
               "gateway": _target(1500, 1.6)}
    out = bench.summary(tool="wrk", path="/api/quotes/600519.SH", duration_s=10,
                        connections=32, machine={"cpus": 2, "model": "x"}, targets=targets,
                        pinned=True)
    assert {"tool", "path", "duration_s", "connections", "machine", "targets",
            "ratios"} <= set(out)
    fixed = out["targets"]["gateway"]["fixed"]
    assert set(fixed) >= {"rate", "rps", "p50_ms", "p99_ms"}
    assert fixed["rate"] == 500
    json.dumps(out)  # plain JSON data all the way down


# --------------------------------------------------------------------------
# Configuration written for the proxies


def test_toml_dumps_round_trips_nested_tables_and_arrays_of_tables() -> None:
    data = {"gateway": {"name": "a \"quoted\" name", "security": False, "n": 3, "x": 0.5},
            "routes": [{"name": "r1", "methods": ["GET", "HEAD"]}, {"name": "r2"}],
            "upstreams": {"trading": {"url": "http://127.0.0.1:9"}}}
    assert tomllib.loads(bench.toml_dumps(data)) == data


@pytest.mark.parametrize("security", [False, True])
def test_proxy_config_from_the_example_is_valid(tmp_path: Path, security: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_BACKEND_INTERNAL_TOKEN", "t" * 32)
    example = tomllib.loads(bench.EXAMPLE_CONFIG.read_text("utf-8"))
    key = tmp_path / "identity.pem"
    key.write_text("unused: the configuration only names it")
    cfg = bench.proxy_config(example, security=security, port=18080,
                             backend_url="http://127.0.0.1:19000",
                             issuer_jwks=tmp_path / "jwks.json", identity_key=key,
                             identity_hmac=tmp_path / "upstream.key", audit_dir=tmp_path / "audit")
    parsed = parse(tomllib.loads(bench.toml_dumps(cfg)), tmp_path)
    assert parsed.gateway.security is security
    assert parsed.gateway.access_log is security
    assert parsed.public.port == 18080
    assert {u.url for u in parsed.upstreams.values()} == {"http://127.0.0.1:19000"}
    assert {u.identity_hmac_key for u in parsed.upstreams.values()} == {tmp_path / "upstream.key"}
    assert parsed.audit.path == tmp_path / "audit"


# --------------------------------------------------------------------------
# One real run


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_bench_end_to_end_prints_one_json_line_with_three_targets() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "bench", "--duration", "1", "--connections", "4",
         "--rate", "50", "--rounds", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert result["tool"] == "wrk"
    assert set(result["targets"]) == {"direct", "bare", "gateway"}
    for name, target in result["targets"].items():
        assert target["rps"] > 0, name
        assert target["fixed"]["rps"] > 0, name
    assert set(result["ratios"]) == {"gateway_over_bare_rps", "gateway_over_direct_rps",
                                     "bare_over_direct_rps", "gateway_minus_bare_p50_ms_fixed"}
    assert result["rounds"] == 2 and len(result["rounds_ratios"]) == 2


def test_median_tree_takes_fieldwise_medians_and_sums_errors() -> None:
    rounds = [{"rps": 1.0, "errors": 1, "fixed": {"p50_ms": 3.0}, "tool": "wrk"},
              {"rps": 5.0, "errors": 0, "fixed": {"p50_ms": 1.0}, "tool": "wrk"},
              {"rps": 2.0, "errors": 2, "fixed": {"p50_ms": 2.0}, "tool": "wrk"}]
    assert bench.median_tree(rounds) == {"rps": 2.0, "errors": 3, "fixed": {"p50_ms": 2.0}, "tool": "wrk"}


def test_step_costs_script_times_every_security_step() -> None:
    """loadtests/step_costs.py runs (it is the per-step table of docs/PERFORMANCE.md)."""
    script = Path(__file__).resolve().parents[1] / "loadtests" / "step_costs.py"
    out = subprocess.run([sys.executable, str(script), "--n", "50"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    costs = json.loads(out)
    for step in ("authenticate", "require_role", "bind_account", "score", "decide", "audit",
                 "identity_headers"):
        assert costs[step] > 0, costs


def test_risk_cost_script_measures_every_case_on_both_stores(redis_url: str) -> None:
    """loadtests/risk_cost.py runs on memory and Redis (the risk rows of docs/PERFORMANCE.md)."""
    script = Path(__file__).resolve().parents[1] / "loadtests" / "risk_cost.py"
    out = subprocess.run([sys.executable, str(script), "--n", "30", "--rounds", "1", "--redis", redis_url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    result = json.loads(out)
    for store in ("memory", "redis"):
        cases = result[store]
        assert cases["baseline_one_get"]["p50_vs_baseline"] == 1.0
        for name in ("no_device", "known_device", "trade"):
            assert cases[name]["p50_us"] > 0 and cases[name]["p99_us"] >= cases[name]["p50_us"], cases
