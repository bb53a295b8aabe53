"""Latency trace of the live path, for the budget of `loa bench latency` (issue 17).

Off unless `LOA_LATENCY_TRACE` names a file (or a test calls `TRACE.enable`). When on:

- a live receive path (WebRTC tap, RTP ingest) marks a few decoded frames — every onset (level
  rising above -30 dBFS after quiet) and one frame in `every` — with `mark(arrival, rtp_ts)`:
  the monotonic time its packet arrived, then `queued()` when the frame entered the LiveSource;
- the LiveSource stamps the read of a marked frame (`read(slot)`: the tick read it);
- the tick stamps itself (start, reads done, mix+encode done, outputs sent) only when it read a
  marked frame or every `every`-th tick, into a preallocated ring: the steady path costs one
  attribute test, never an allocation of the trace's own.

The arrays are preallocated numpy rings (monotonic ns); `snapshot()` copies them out with the
wall-clock offset, and a daemon thread writes that JSON to the file every second (never the
tick). Rows written while a snapshot is copied can be torn: the bench drops rows whose stamps
are not in order.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import numpy as np

#: columns of `marks`
M_ARRIVAL, M_RTP_TS, M_QUEUED, M_READ, M_ONSET, M_OFFSET = range(6)
#: columns of `ticks`
T_K, T_START, T_READ, T_ENCODED, T_SENT = range(5)


class LatencyTrace:
    def __init__(self, marks: int = 4096, ticks: int = 8192, every: int = 25) -> None:
        self.enabled = False
        self.every = every
        self.marks = np.zeros((marks, 6), np.int64)
        self.ticks = np.zeros((ticks, 5), np.int64)
        self.n_marks = 0
        self.n_ticks = 0
        self.marked_read = False   # a marked frame was read in the current tick
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self.path: str | None = None

    def enable(self, path: str | None = None) -> None:
        self.enabled = True
        self.path = path
        if path and self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                            name="loa-latency-trace")
            self._writer.start()

    # ------------------------------------------------------------ the receive path (not the tick)
    def mark(self, arrival_ns: int, rtp_ts: int, onset: bool, offset: int = 0) -> int:
        """A marked frame's packet arrived at `arrival_ns`; returns its slot."""
        with self._lock:
            i = self.n_marks % len(self.marks)
            self.n_marks += 1
        row = self.marks[i]
        row[:] = 0
        row[M_ARRIVAL] = arrival_ns
        row[M_RTP_TS] = rtp_ts
        row[M_ONSET] = 1 if onset else 0
        row[M_OFFSET] = offset
        return i

    def queued(self, slot: int, now_ns: int) -> None:
        self.marks[slot, M_QUEUED] = now_ns

    # ------------------------------------------------------------ the tick
    def read(self, slot: int, now_ns: int) -> None:
        self.marks[slot, M_READ] = now_ns
        self.marked_read = True

    def want_tick(self, k: int) -> bool:
        return self.marked_read or k % self.every == 0

    def tick(self, k: int, start_ns: int, read_ns: int, encoded_ns: int, sent_ns: int) -> None:
        self.marked_read = False
        t = self.ticks
        i = self.n_ticks % len(t)
        self.n_ticks += 1
        t[i, T_K] = k
        t[i, T_START] = start_ns
        t[i, T_READ] = read_ns
        t[i, T_ENCODED] = encoded_ns
        t[i, T_SENT] = sent_ns

    # ------------------------------------------------------------ out
    def snapshot(self) -> dict[str, Any]:
        nm = min(self.n_marks, len(self.marks))
        nt = min(self.n_ticks, len(self.ticks))
        return {"wall_minus_mono_s": time.time() - time.monotonic(), "every": self.every,
                "marks_cols": ["arrival_ns", "rtp_ts", "queued_ns", "read_ns", "onset",
                               "offset"],
                "ticks_cols": ["k", "start_ns", "read_ns", "encoded_ns", "sent_ns"],
                "marks": self.marks[:nm].tolist(), "ticks": self.ticks[:nt].tolist()}

    def write(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, path)

    def _write_loop(self) -> None:
        while True:
            time.sleep(1.0)
            if self.path:
                try:
                    self.write(self.path)
                except OSError:
                    pass


class FrameMarker:
    """On a live receive path (not the tick): decides which decoded frames get marked."""

    def __init__(self, trace: LatencyTrace, threshold: float = 0.0316) -> None:
        self.trace = trace
        self.threshold = threshold   # -30 dBFS peak
        self.loud = False
        self.n = 0

    def frame(self, pcm: np.ndarray, arrival_s: float, rtp_ts: int) -> int:
        """The slot of a marked frame, or -1."""
        self.n += 1
        above = np.flatnonzero(np.abs(pcm) > self.threshold)
        onset = len(above) > 0 and not self.loud
        self.loud = len(above) > 0
        if not onset and self.n % self.trace.every:
            return -1
        return self.trace.mark(int(arrival_s * 1e9), rtp_ts, onset,
                               int(above[0]) if onset else 0)


TRACE = LatencyTrace()
if os.environ.get("LOA_LATENCY_TRACE"):
    TRACE.enable(os.environ["LOA_LATENCY_TRACE"])
