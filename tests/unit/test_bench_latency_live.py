"""bench/latency_live.py, the pure parts: one run's row of the per-run table (load, latency,
the claim's queue, concealment, the voice path's scheduling delay)."""
from bench.latency_live import run_row


def _run(**kw):
    r = {"sender": "chromium", "valid": True, "run": 2, "cpu_hog": 4, "loadavg": [5.1, 3, 2],
         "latency_ms": {"p50": 101.0, "p95": 121.5, "max": 122.0},
         "server_receive": {"claim_queue_frames": 1,
                            "source": {"concealed": 30, "frames_read": 1000}},
         "sched": {"server": [{"thread": "main (event loop)", "wait_per_wakeup_ms": 0.5},
                              {"thread": "loa-webrtc-rx", "wait_per_wakeup_ms": 0.01},
                              {"thread": "loa-tick", "wait_per_wakeup_ms": 0.0}],
                   "receiver": [{"thread": "main (event loop)", "wait_per_wakeup_ms": 0.02}]}}
    r.update(kw)
    return r


def test_a_run_row_has_load_latency_queue_and_concealment():
    row = run_row(_run())
    assert (row["run"], row["sender"], row["load"], row["cpu_hog"]) == (2, "chromium", 5.1, 4)
    assert (row["p50"], row["p95"], row["max"]) == (101.0, 121.5, 122.0)
    assert row["claim_frames"] == 1 and row["concealed"] == 30 and row["concealed_pct"] == 3.0
    assert row["wait server main (event loop)"] == 0.5
    assert row["wait server loa-webrtc-rx"] == 0.01
    assert row["wait receiver main (event loop)"] == 0.02


def test_a_run_without_server_stats_or_threads_still_has_a_row():
    row = run_row(_run(server_receive=None, sched=None, latency_ms=None, loadavg=None))
    assert row["p95"] is None and row["concealed_pct"] is None and row["claim_frames"] is None
    assert row["load"] is None and row["wait server loa-tick"] is None
    row = run_row(_run(server_receive={"source": {"concealed": 0, "frames_read": 0}}))
    assert row["concealed_pct"] is None   # nothing read: no rate
