"""bench/latency_budget.py: the stages of each onset add up to its latency, and land where the
trace's stamps put them."""
from __future__ import annotations

from bench.latency_budget import STAGES, budget

MS = 1_000_000


def _trace(arrival_ms: float, queued_ms: float, read_ms: float, tick_start_ms: float) -> dict:
    ns = lambda ms: int(round(ms * MS))
    ticks = [[k, ns(tick_start_ms + 20 * k), ns(tick_start_ms + 20 * k + 0.1),
              ns(tick_start_ms + 20 * k + 0.4), ns(tick_start_ms + 20 * k + 0.5)]
             for k in range(-3, 4)]
    ticks[3][2] = ns(read_ms + 0.05)
    ticks[3][3] = ns(read_ms + 0.35)
    ticks[3][4] = ns(read_ms + 0.45)
    return {"wall_minus_mono_s": 1000.0, "every": 25,
            "marks": [[ns(arrival_ms), 0, ns(queued_ms), ns(read_ms), 1, 0],
                      [ns(arrival_ms + 1), 0, ns(queued_ms + 1), 0, 0, 0]],  # never read
            "ticks": ticks}


def test_stages_add_up_and_split_alignment_from_queue() -> None:
    # captured at 0 ms (wall 1000 s + 0), arrived 21 ms, queued 21.3, the tick at 40 would have
    # read it but it was read by the tick at 60 (one frame of queue)
    tr = _trace(arrival_ms=21.0, queued_ms=21.3, read_ms=60.05, tick_start_ms=60.0)
    played = 1000.0 + 0.150
    b = budget(tr, [(1000.0, played)], {"network (rtt/2)": 0.5})
    assert b["onsets"] == 1 and b["unmatched"] == 0
    st = {s["stage"]: s["p50"] for s in b["stages"]}
    assert st[STAGES[0]] == 21.0
    assert st[STAGES[1]] == 0.3
    assert st["tick alignment"] == 18.7
    assert st["server queue (whole ticks)"] == 20.0
    assert abs(sum(st.values()) - b["total"]["p50"]) < 0.05
    assert b["total"]["p50"] == 150.0
    assert b["sender_split"]["capture + encode (the rest, mean)"] == 20.5


def test_frame_queued_during_its_tick_has_no_alignment() -> None:
    tr = _trace(arrival_ms=59.8, queued_ms=60.02, read_ms=60.05, tick_start_ms=60.0)
    b = budget(tr, [(1000.0 + 0.040, 1000.2)])
    st = {s["stage"]: s["p50"] for s in b["stages"]}
    assert st["tick alignment"] == 0.0 and st["server queue (whole ticks)"] == 0.0


def test_onset_without_a_trace_is_unmatched() -> None:
    assert "error" in budget(None, [(1.0, 1.1)])
    tr = _trace(arrival_ms=21.0, queued_ms=21.3, read_ms=60.05, tick_start_ms=60.0)
    b = budget(tr, [(2000.0, 2000.1)])   # captured long after anything the server saw
    assert b["onsets"] == 0 and b["unmatched"] == 1
