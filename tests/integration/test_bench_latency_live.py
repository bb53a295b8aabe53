"""`loa bench latency --source webrtc`: the plumbing of both senders (numbers belong to the
benchmark, not here). A real `loa serve` on loopback, a reference receiver, 5 onsets."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import require_tool
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def run_live(sender: str, tmp_path, timeout: float = 150, extra: tuple[str, ...] = ()) -> dict:
    out = tmp_path / f"{sender}.json"
    p = subprocess.run([sys.executable, "-m", "bench.latency_live", "--source", "webrtc",
                        "--sender", sender, "--onsets", "5", "--json", str(out), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text())


def check(report: dict, sender: str) -> dict:
    assert report["valid"] and report["source"] == "webrtc"
    (run,) = report["runs"]
    assert run["sender"] == sender and run["valid"], run["invalid_reasons"]
    lat = run["latency_ms"]
    assert lat["n"] == 5 and run["onsets_matched"] == 5
    # the receiver's 60 ms jitter buffer plus a 20 ms capture frame set a floor; a broken clock
    # pairing (or an onset paired with its neighbour) would not land in this range
    assert 20 < lat["p50"] < 1000 and lat["max"] < 1000
    assert run["receiver"]["lost"] == 0 and run["server_alive"]
    assert report["machine"]["nproc"] >= 1
    return run


def test_webrtc_latency_with_aiortc_as_the_phone(tmp_path):
    run = check(run_live("aiortc", tmp_path), "aiortc")
    assert run["connection"] == "connected"
    # the voice path's threads and how late the kernel ran them (schedstat), per process
    threads = {t["thread"]: t for t in run["sched"]["server"]}
    assert {"main (event loop)", "loa-webrtc-rx", "loa-tick"} <= set(threads)
    assert threads["loa-webrtc-rx"]["wakeups"] > 100
    assert "main (event loop)" in {t["thread"] for t in run["sched"]["receiver"]}
    sv = run["server_receive"]
    assert sv["claim_arrivals"]["frames"] >= 25 and sv["claim_queue_frames"] in (1, 2)
    if os.geteuid() == 0:   # make test runs as root: real-time where it matters
        assert sv["receive_priority"] == "SCHED_FIFO" and sv["loop_priority"] == "SCHED_FIFO"
        assert run["sender_priority"] == "SCHED_FIFO"


def test_runs_under_load_on_purpose_print_a_row_each(tmp_path):
    report = run_live("aiortc", tmp_path, timeout=240, extra=("--runs", "2", "--cpu-hog", "2"))
    assert report["settings"]["runs"] == 2 and report["settings"]["cpu_hog"] == 2
    runs = report["runs"]
    assert [r["run"] for r in runs] == [1, 2] and all(r["cpu_hog"] == 2 for r in runs)
    for r in runs:
        check({**report, "runs": [r]}, "aiortc")
        assert len(r["loadavg"]) == 3
        assert r["server_receive"]["source"]["frames_read"] > 100
    # the hogs are gone with the bench
    assert not [c for c in _cmdlines() if b"import time\nend = time.monotonic()" in c]


def _cmdlines() -> list[bytes]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    out.append(f.read())
            except OSError:   # gone meanwhile
                pass
    return out


def test_webrtc_latency_with_chromium_on_the_live_page(tmp_path):
    require_tool("chromium", "the phone is a real browser")
    run = check(run_live("chromium", tmp_path), "chromium")
    assert run["probe"]["kind"] == "MediaStreamTrackProcessor" and not run["probe"]["error"]
    cal = run["capture_calibration"]
    assert cal["buffers"] > 100 and abs(cal["timeline_rate"] - 1) < 0.01


def test_rtp_latency_with_an_encoder_on_rtp_ingest(tmp_path):
    out = tmp_path / "rtp.json"
    p = subprocess.run([sys.executable, "-m", "bench.latency_live", "--source", "rtp",
                        "--onsets", "5", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["valid"] and report["source"] == "rtp"
    (run,) = report["runs"]
    assert run["sender"] == "rtp" and run["valid"], run["invalid_reasons"]
    assert run["latency_ms"]["n"] == 5 and 20 < run["latency_ms"]["p50"] < 1000
    assert run["receiver"]["lost"] == 0 and run["server_alive"]
    # the budget found the server's marks of RTP ingest: every onset cut into its stages
    b = run["budget"]
    assert b["onsets"] == 5 and b["unmatched"] == 0
    assert abs(sum(s["mean"] for s in b["stages"]) - b["total"]["mean"]) < 0.5


def test_webrtc_latency_over_a_lossy_link_reports_loss_jitter_and_added_delay(tmp_path):
    out = tmp_path / "lossy.json"
    p = subprocess.run([sys.executable, "-m", "bench.latency_live", "--source", "webrtc",
                        "--sender", "aiortc", "--loss", "5", "--net-jitter-ms", "80",
                        "--onsets", "5", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(out.read_text())
    clean, lossy = report["runs"]
    assert "link" not in clean and lossy["link"]["loss_pct"] == 5
    up = lossy["link"]["sender_to_server"]
    assert up["datagrams"] > 100 and 0 < up["lost"] and 20 < up["delay_ms_mean"] < 70
    assert lossy["inband_fec"] and any("useinbandfec=1" in ln for ln in lossy["answer_fmtp"])
    assert lossy["server_receive"]["receive"]["fec_recovered"] > 0
    # the link's delay and the deeper queue show up end to end
    assert report["added_delay_ms"]["p50"] > 40 and "added delay" in p.stdout
