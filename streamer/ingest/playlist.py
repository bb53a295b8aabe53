"""A playlist cut to its slot: the inner source (a SequenceSource of the playlist's items) ends
at `slot_s` (measured from the playlist's start, so a joined playlist ends on time too), the
last `fade_s` faded out linearly so the cut is not heard as one.

The fade is applied into two preallocated buffers used in turn (a frame handed to the engine is
never written again while it may still be in use), so the tick allocates nothing.
"""
from __future__ import annotations

import numpy as np

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES
from streamer.ingest.base import Source


class SlotSource(Source):
    kind = "playlist"

    def __init__(self, inner: Source, slot_s: float, fade_s: float = 3.0,
                 start_s: float = 0.0) -> None:
        super().__init__()
        self.inner = inner
        self.slot_frames = max(0, int(round(slot_s * 1000 / FRAME_MS)))
        self.fade_frames = max(0, min(int(round(fade_s * 1000 / FRAME_MS)), self.slot_frames))
        self._pos = int(round(max(0.0, start_s) * 1000 / FRAME_MS))   # frames into the slot
        self._bufs = (np.zeros(FRAME_SAMPLES, dtype=DTYPE), np.zeros(FRAME_SAMPLES, dtype=DTYPE))
        self._flip = 0
        self._ramp = (np.arange(FRAME_SAMPLES, dtype=DTYPE) / FRAME_SAMPLES)

    def start(self) -> None:
        self.inner.start()

    @property
    def ready_ns(self) -> int | None:
        return self.inner.ready_ns

    @ready_ns.setter
    def ready_ns(self, value: int | None) -> None:
        pass

    def ready(self) -> bool:
        return self.inner.ready() or self.finished

    def gain_at(self, frame: int) -> float:
        """The fade's gain at the start of slot frame `frame` (1 before the fade, 0 at the end)."""
        if self.fade_frames == 0:
            return 1.0
        left = self.slot_frames - frame
        return max(0.0, min(1.0, left / self.fade_frames))

    def read(self) -> np.ndarray | None:
        if self._pos >= self.slot_frames:
            return None
        f = self.inner.read()
        if f is None:
            if not self.inner.finished:
                self.underruns += 1
            return None
        i = self._pos
        self._pos += 1
        self.frames_read += 1
        if i < self.slot_frames - self.fade_frames:
            return f
        g0, g1 = self.gain_at(i), self.gain_at(i + 1)
        buf = self._bufs[self._flip]
        self._flip ^= 1
        np.multiply(self._ramp, g1 - g0, out=buf)
        buf += g0
        buf *= f
        return buf

    @property
    def finished(self) -> bool:
        return self._pos >= self.slot_frames or self.inner.finished

    @property
    def notice(self) -> str | None:
        return self.inner.notice

    @notice.setter
    def notice(self, value: str | None) -> None:
        if hasattr(self, "inner"):
            self.inner.notice = value

    @property
    def error(self) -> str | None:
        return self.inner.error

    @error.setter
    def error(self, value: str | None) -> None:
        pass

    def rewind(self, seconds: float) -> None:
        before = self.inner.frames_read
        self.inner.rewind(seconds)
        back = before - self.inner.frames_read
        self._pos = max(0, self._pos - back)
        self.frames_read = max(0, self.frames_read - back)

    @property
    def position_s(self) -> float:
        return self.inner.position_s

    def close(self) -> None:
        self.inner.close()
