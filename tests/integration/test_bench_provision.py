"""`loa bench provision`'s own plumbing: a real server, real requests, every field in the JSON
(how fast this machine is belongs to the benchmark, not here)."""
from __future__ import annotations

import json

import pytest

from bench.cli import main as bench_main

pytestmark = pytest.mark.integration

RESULT_FIELDS = {"total_s", "receivers_per_s", "requests", "request_ms", "apply_s", "late_ticks",
                 "skipped_ticks", "tick_overruns", "ticks", "max_tick_us", "max_tick_us_exact",
                 "max_tick_us_server_before", "max_tick_us_server_after", "sampled_tick_us",
                 "steady_after", "destinations_expected", "destinations", "programme_state",
                 "fanout", "failures"}


def check(report: dict, n: int, requests: int) -> dict:
    assert report["benchmark"] == "provision"
    assert report["valid"] is True, report["invalid_reasons"]
    for k in ("nproc", "cpu_model", "kernel", "python"):
        assert report["machine"][k]
    r = report["results"]
    assert RESULT_FIELDS <= set(r), RESULT_FIELDS - set(r)
    assert r["destinations"] == r["destinations_expected"] == n
    assert r["requests"] == requests == r["request_ms"]["n"] and r["failures"] == []
    assert r["total_s"] > 0 and r["receivers_per_s"] > 0 and r["ticks"] > 0
    assert r["programme_state"] == "playing"
    # the run's late ticks are the server's own counter taken over the run (not a sample, not
    # the server's lifetime total), and a tick can only be late once
    before, after = report["server_clock_before"], report["server_clock_after"]
    assert r["late_ticks"] == after["late_ticks"] - before["late_ticks"]
    assert r["ticks"] == after["ticks"] - before["ticks"]
    assert 0 <= r["late_ticks"] <= r["ticks"]
    assert r["max_tick_us"] is not None and r["max_tick_us"] > 0
    assert report["server_clock_after"]["ticks"] > report["server_clock_before"]["ticks"]
    return r


def test_bulk_run(tmp_path):
    out = tmp_path / "bulk.json"
    code = bench_main(["provision", "--receivers", "500", "--batch", "200", "--zones", "3",
                       "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report["invalid_reasons"]
    check(report, 500, 3)
    s = report["settings"]
    assert (s["receivers"], s["batch"], s["zones"], s["mode"]) == (500, 200, 3, "bulk")


def test_single_run_and_usage(tmp_path):
    out = tmp_path / "single.json"
    code = bench_main(["provision", "--receivers", "40", "--single", "--concurrency", "4",
                       "--programme", "separate", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report["invalid_reasons"]
    r = check(report, 41, 40)  # 40 receivers + the programme zone's own destination
    assert report["settings"]["mode"] == "single"
    assert r["request_ms"]["p50"] > 0
    for bad in (["--receivers", "0"], ["--batch", "20000"], ["--zones", "0"],
                ["--concurrency", "0"]):
        assert bench_main(["provision", *bad]) == 2
