"""Adaptive playout delay and clock-drift absorption, sans-IO.

`PlayoutDelay` watches each arriving packet's relative transit time (arrival minus its RTP
timestamp, in seconds) and derives:

- the target delay: the 95th percentile of transit above the window's minimum (single spikes
  are outliers and do not move it; each sample is capped at the upper bound) plus a 20 ms
  margin, clamped to 60..400 ms;
- the correction the playout timeline needs: the jitter buffer's playout offset (when a
  timestamp plays, minus the timestamp) should sit `target` above the minimum transit of the
  last few seconds. Clock drift between server and receiver moves the minimum transit slowly;
  jitter changes move the target. Either way the receiver corrects in whole frames, at most one
  per `min_interval` seconds: one concealment frame to delay more (Opus PLC, a natural
  continuation) or a crossfade of two frames into one to delay less. No clicks, no growing
  delay.

The receiver asks `advice(offset)` once per tick and applies it (see `Receiver`).
"""
from __future__ import annotations

from collections import deque

import numpy as np

STRETCH = 1
SHRINK = -1


class PlayoutDelay:
    def __init__(self, lo: float = 0.060, hi: float = 0.400, *, window: int = 500,
                 margin: float = 0.020, quantile: float = 0.95, band: float = 0.015,
                 min_interval: float = 0.2, frame: float = 0.020) -> None:
        self.lo, self.hi = lo, hi
        self.margin = margin
        self.quantile = quantile
        self.band = band
        self.min_interval = min_interval
        self.frame = frame
        self._transit: deque[float] = deque(maxlen=window)
        self._last_change = -1e9
        self.target = lo
        self._n = 0
        self.stretched = 0
        self.shrunk = 0

    def reset(self) -> None:
        self._transit.clear()
        self._n = 0

    def observe(self, transit: float) -> None:
        """One packet's arrival time minus its media time (any constant offset)."""
        tr = self._transit
        if tr:
            base = min(tr)
            if abs(transit - base) > 5.0:       # a new stream timeline: start over
                tr.clear()
            elif transit - base > self.hi:
                transit = base + self.hi         # cap outliers
        tr.append(transit)
        self._n += 1
        if self._n % 10 == 0 or len(tr) < 10:
            self._update()

    def _update(self) -> None:
        tr = self._transit
        if len(tr) < 5:
            return
        arr = np.fromiter(tr, dtype=np.float64, count=len(tr))
        base = arr.min()
        spread = float(np.quantile(arr - base, self.quantile))
        self.target = min(self.hi, max(self.lo, spread + self.margin))

    @property
    def min_transit(self) -> float | None:
        return min(self._transit) if self._transit else None

    def advice(self, offset: float, now: float) -> int:
        """STRETCH (+1 frame of delay), SHRINK (-1 frame) or 0, for a playout offset `offset`
        (due time of a timestamp minus that timestamp, same clock and origin as `observe`)."""
        base = self.min_transit
        if base is None or len(self._transit) < 25 or now - self._last_change < self.min_interval:
            return 0
        err = offset - (base + self.target)
        if err > self.band + self.frame / 2:
            self._last_change = now
            self.shrunk += 1
            return SHRINK
        if err < -self.band:
            self._last_change = now
            self.stretched += 1
            return STRETCH
        return 0


def crossfade(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two consecutive frames into one of a's length: fade a out while b fades in (no click)."""
    n = min(len(a), len(b))
    w = np.linspace(0.0, 1.0, n, dtype=np.float32)
    out = a[:n] * (1.0 - w) + b[:n] * w
    return out.astype(np.float32, copy=False)
