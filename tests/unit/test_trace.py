"""streamer/trace.py: onsets and one frame in N are marked; a LiveSource stamps the read of a
marked frame; the tick stamps only when asked."""
from __future__ import annotations

import numpy as np

from streamer.ingest import live as live_mod
from streamer.trace import M_ONSET, M_OFFSET, M_QUEUED, M_READ, LatencyTrace, FrameMarker


def test_marker_marks_onsets_and_every_nth() -> None:
    tr = LatencyTrace(every=5)
    m = FrameMarker(tr)
    quiet = np.zeros(960, np.float32)
    loud = quiet.copy()
    loud[100:] = 0.5
    slots = [m.frame(f, 1.0 + i * 0.02, i * 960)
             for i, f in enumerate([quiet, quiet, loud, loud, quiet, quiet, quiet, loud])]
    marked = [i for i, s in enumerate(slots) if s >= 0]
    assert marked == [2, 4, 7]          # onset, the 5th frame, onset again
    assert tr.marks[slots[2], M_ONSET] == 1 and tr.marks[slots[2], M_OFFSET] == 100
    assert tr.marks[slots[4], M_ONSET] == 0


def test_live_source_stamps_the_marked_frame_and_the_tick_follows(monkeypatch) -> None:
    tr = LatencyTrace(every=1000)
    tr.enabled = True
    monkeypatch.setattr(live_mod, "TRACE", tr)
    src = live_mod.LiveSource(max_frames=5)
    slot = tr.mark(123, 0, True)
    src.push(np.zeros(960, np.float32))
    src.push(np.ones(960, np.float32) * 0.1, mark=slot)
    assert tr.marks[slot, M_QUEUED] > 0 and tr.marks[slot, M_READ] == 0
    assert not tr.want_tick(1)
    src.read()
    assert tr.marks[slot, M_READ] == 0     # the first frame was not the marked one
    src.read()
    assert tr.marks[slot, M_READ] >= tr.marks[slot, M_QUEUED]
    assert tr.want_tick(1)
    tr.tick(1, 10, 11, 12, 13)
    assert not tr.want_tick(1) and tr.want_tick(1000)
    snap = tr.snapshot()
    assert snap["ticks"] == [[1, 10, 11, 12, 13]] and len(snap["marks"]) == 1
