"""The preempt and latency benchmarks' own plumbing (numbers belong to `loa bench`, not here)."""
import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def run_bench(args, tmp_path, timeout=120):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "loa.cli", "bench", *args, "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return json.loads(out.read_text())


def test_preempt_bench_measures_every_alert(tmp_path):
    r = run_bench(["preempt", "--receivers", "50", "--alerts", "3"], tmp_path)
    assert r["valid"] and len(r["rounds"]) == 3
    for key in ("api_to_packet_ms", "ready_to_packet_ms", "created_to_packet_ms"):
        assert r[key]["n"] == 3 and r[key]["p50"] is not None and r[key]["p50"] >= 0
    assert r["machine"]["nproc"] >= 1 and r["settings"]["receivers"] == 50
    assert r["server_clock"]["ticks"] > 0


def test_latency_bench_finds_every_onset(tmp_path):
    r = run_bench(["latency", "--source", "file", "--onsets", "5"], tmp_path)
    assert r["valid"], r["invalid_reasons"]
    lat = r["latency_ms"]
    assert lat["n"] == 5
    # the receiver's 60 ms jitter buffer alone sets a floor; a broken clock pairing would not
    assert 40 < lat["p50"] < 1000
