"""The fan-out benchmark's own plumbing, end to end: real processes, real UDP on loopback.

Checks that the harness counts right (every receiver got every packet, per-receiver accounting,
the JSON has every field), not that the machine is fast.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main as bench_main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_FIELDS = {"packets_expected", "packets_delivered", "loss_pct", "max_seq_gap",
              "receivers_complete", "min_delivered", "expected_per_receiver", "cpu_s",
              "cpu_us_per_pkt", "ipi_ms_p50", "ipi_ms_p99", "ipi_ms_max", "realtime_ratio",
              "rss_bytes", "rss_per_receiver", "wall_s", "sustained", "process_cpu_s",
              "softirqd_cpu_s", "process_cpu_us_per_pkt"}
MEDIAN_FIELDS = {"packets_delivered", "loss_pct", "max_seq_gap", "cpu_us_per_pkt",
                 "ipi_ms_p50", "ipi_ms_p99", "ipi_ms_max", "realtime_ratio",
                 "rss_per_receiver", "valid_runs", "sustained_runs"}


def check_report(report: dict, kind: str, receivers: int, seconds: float) -> dict:
    assert report["benchmark"] == "fanout"
    for k in ("nproc", "cpu_model", "kernel", "python"):
        assert report["machine"][k]
    s = report["settings"]
    assert s["receivers"] == receivers and s["seconds"] == seconds and s["frame_ms"] == 20
    assert {"sender_cpus", "sink_cpu", "nice", "opus"} <= set(s)
    # every sender encodes the same stream, and the JSON says which
    assert s["opus"]["complexity"] == 5 and s["opus"]["fec"] is False
    assert report["valid"] is True, report["invalid_reasons"]
    runs = [r for r in report["runs"] if r["kind"] == kind]
    assert runs
    for r in runs:
        m = r["metrics"]
        assert RUN_FIELDS <= set(m), RUN_FIELDS - set(m)
        assert r["sink"]["sink_drops"] == 0 and r["sink"]["unknown_destination"] == 0
        assert r["sink"]["unparsed"] == 0 and r["sink"]["duplicates"] == 0
        assert m["cpu_s"] > 0 and m["cpu_us_per_pkt"] > 0 and m["rss_bytes"] > 0
        assert m["ipi_ms_p50"] is not None and 10 < m["ipi_ms_p50"] < 40
        assert 0.8 < m["realtime_ratio"] < 1.2
    med = report["median"][kind]
    assert MEDIAN_FIELDS <= set(med), MEDIAN_FIELDS - set(med)
    return runs[0]["metrics"]


def test_bare_run_every_receiver_gets_every_packet(tmp_path):
    out = tmp_path / "bare.json"
    code = bench_main(["fanout", "--receivers", "200", "--seconds", "3", "--target", "bare",
                       "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    m = check_report(report, "bare", 200, 3.0)
    # The bare sender sends exactly ceil(3 s / 20 ms) packets; every receiver got all of them.
    assert m["expected_per_receiver"] == 150
    assert m["packets_expected"] == 200 * 150 == m["packets_delivered"]
    assert m["receivers_complete"] == 200 and m["min_delivered"] == 150
    assert m["loss_pct"] == 0 and m["max_seq_gap"] == 0
    assert report["runs"][0]["sender"]["fanout"]["sent"] == 200 * 150


def test_invalid_usage_is_exit_2_not_a_crash(tmp_path):
    assert bench_main(["fanout", "--receivers", "0", "--target", "bare"]) == 2
    assert bench_main(["nosuch"]) == 2
    # the same entry point through the installed command
    r = subprocess.run([sys.executable, "-m", "loa.cli", "bench", "fanout", "--receivers",
                        "5", "--seconds", "0", "--target", "bare"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2


def test_loa_serve_run_every_receiver_gets_every_packet(tmp_path):
    out = tmp_path / "loa.json"
    code = bench_main(["fanout", "--receivers", "200", "--seconds", "3", "--target", "loa",
                       "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report["invalid_reasons"]
    m = check_report(report, "loa", 200, 3.0)
    assert m["receivers_complete"] == 200 and m["loss_pct"] == 0 and m["max_seq_gap"] == 0
    # a 3 s tone at 20 ms is at least 150 packets per receiver
    assert m["expected_per_receiver"] >= 148
    # memory: the run's RSS minus a server without receivers, per receiver
    assert m["rss_baseline_bytes"] > 0
    assert m["rss_marginal_per_receiver"] == round((m["rss_bytes"] - m["rss_baseline_bytes"]) / 200, 1)
    assert m["cpu_s"] == round(m["process_cpu_s"] + m["softirqd_cpu_s"], 3) or \
        abs(m["cpu_s"] - m["process_cpu_s"] - m["softirqd_cpu_s"]) < 0.002
