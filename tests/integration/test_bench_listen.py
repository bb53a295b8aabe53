"""`loa bench listen`'s plumbing with a handful of listeners (numbers belong to the bench):
both servers are measured with every listener connected and fed, the ratios and the Loa tick's
counters are reported, the UDP receivers are accounted for."""
import json
import subprocess
import sys

import pytest

from tests.conftest import require_tool
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_listen_bench_measures_loa_and_icecast(tmp_path):
    require_tool("icecast2", "the listening peer the bench compares with")
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "loa.cli", "bench", "listen", "--listeners", "8",
                        "--receivers", "10", "--seconds", "2", "--idle-seconds", "1",
                        "--rounds", "2", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["valid"], r["invalid_reasons"]
    for name in ("loa", "icecast"):
        s = r["servers"][name]
        assert s["connected"] == 8, s
        c = s["clients"]
        assert c["ended_early"] == 0 and c["connect_failures"] == 0, c
        assert c["bytes_min"] > 4096, c            # every listener got audio
        assert s["rss_idle"] > 0 and s["steady_cpu_per_s"] >= 0
    assert r["late_ticks"] is not None and r["ratio"]["rss_per_listener"] is not None
    # both servers in every round, in turn; per thread accounting; a ratio per round
    assert len(r["rounds"]) == 2
    for one in r["rounds"]:
        assert one["loa"]["connected"] == one["icecast"]["connected"] == 8
        assert one["loa"]["serving_threads"] == "main"
        assert one["icecast"]["serving_threads"] == "threads"
        assert one["loa"]["steady_rates"]["main"] > 0   # the event loop served them
    serving = r["summary"]["serving_cpu_per_listener_s"]
    assert len(serving["rounds"]) <= 2 and serving["median"] == r["ratio"][
        "serving_cpu_per_listener_s"]
    rc = r["receivers"]
    assert rc["packets_expected"] > 0 and rc["packets_delivered"] > 0
    assert isinstance(r["receivers_lost"], bool)
