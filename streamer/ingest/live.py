"""A live input (microphone over WebRTC, RTP from an encoder box) as a Source.

Whoever receives the audio (an aiortc coroutine, an RTP thread) calls `push` with 48 kHz mono
float32 samples of any length; the engine's tick calls `read` for one 960-sample frame. Between
them sits a small bounded jitter queue:

- `read` hands out a frame as soon as `prime_frames` are queued (after an underrun; at the start
  `start_frames`, which may be fewer), so the queue adds at most a frame or two of delay. A
  press to talk on a link whose jitter asks for a deep queue starts with the frames it has
  (`start_frames`) instead of waiting for that depth: the queue then grows, a concealment per
  late frame, only as far as the arrivals really ask (issue 17);
- the queue never holds more than `max_frames` (default 3 = 60 ms): on overflow the oldest frame
  is dropped and counted, because for a live talker being late is worse than losing 20 ms;
- clocks drift (the phone's capture clock against our tick): when the queue stays deeper than
  `prime_frames` for `trim_after` reads in a row, one frame is dropped to pull latency back down;
- with a `conceal` callback (the WebRTC receive path's Opus decoder), a tick that finds the queue
  empty mid-stream gets a concealment frame instead of silence and a re-prime (at most
  `max_conceal` in a row): a frame that arrives just after its tick is then played on the next
  one, nothing is skipped. The queue is then a frame deeper than it needs; it catches up by
  leaving out a *quiet* frame (peak under `QUIET_PEAK`: a pause between words), never by the
  drift trim's blind drop, so a late frame never costs a frame of speech. With `catchup_after`
  it keeps one such frame for at least so many reads after the last late frame: on a loaded
  machine late frames come again and again, and the extra frame then absorbs them instead of
  each costing a concealment (a one-off late frame is still taken back in a later pause; more
  than one frame owed is taken back at once, so the queue never creeps up to overflow).

Live sources are read every tick even when inaudible (the engine drains them), so the queue
never fills up with stale speech while an emergency holds the zone.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import numpy as np

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES
from streamer.ingest.base import Source
from streamer.trace import TRACE

#: a frame this quiet (peak, -40 dBFS) is a pause: leaving it out to catch up is not heard
QUIET_PEAK = 0.01


class LiveSource(Source):
    kind = "live"
    live = True

    def __init__(self, kind: str = "live", max_frames: int = 3, prime_frames: int = 1,
                 trim_after: int = 50, conceal: Callable[[], np.ndarray | None] | None = None,
                 max_conceal: int = 3, catchup_after: int = 0,
                 start_frames: int | None = None) -> None:
        super().__init__()
        if max_frames < 1 or not 1 <= prime_frames <= max_frames:
            raise ValueError("need 1 <= prime_frames <= max_frames")
        if start_frames is not None and not 1 <= start_frames <= prime_frames:
            raise ValueError("need 1 <= start_frames <= prime_frames")
        self.kind = kind
        self.max_frames = max_frames
        self.prime_frames = prime_frames
        #: frames the first read waits for (then `prime_frames` after each underrun)
        self.start_frames = prime_frames if start_frames is None else start_frames
        self._need = self.start_frames   # what the current priming waits for
        self.trim_after = trim_after
        self.conceal = conceal   # called from the tick's thread, never under this queue's lock
        self.max_conceal = max_conceal
        self._concealing = 0     # concealment frames handed out in a row
        self._late_debt = 0      # frames of delay concealments added, to leave out in a pause
        self.catchup_after = catchup_after   # reads after the last late frame before that
        self._since_late = 0     # reads since the last tick that found no frame
        self._scratch = np.empty(FRAME_SAMPLES, dtype=DTYPE)
        self._q: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self._partial = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
        self._partial_n = 0
        self._priming = True
        self._deep_reads = 0
        self._ended = False
        self._closed = False
        self._close_callbacks: list[Callable[[], None]] = []
        self._mark_frame: np.ndarray | None = None   # a frame the latency trace follows
        self._mark_slot = -1
        # counters
        self.frames_pushed = 0
        self.dropped_overflow = 0  # oldest frames dropped because the queue was full
        self.dropped_trim = 0  # frames dropped to undo clock drift
        self.concealed = 0  # ticks that found the queue empty and got a concealment frame
        self.caught_up = 0  # quiet frames left out to take back a concealment's delay
        self.max_depth = 0

    # ------------------------------------------------------------------ producer side
    def push(self, samples: np.ndarray, mark: int = -1) -> None:
        """Queue 48 kHz mono samples (any length). Thread-safe; never blocks for long.
        `mark`: the latency trace's slot for the last frame these samples complete."""
        if self._ended or self._closed:
            return
        x = np.asarray(samples, dtype=DTYPE).reshape(-1)
        with self._lock:
            i = 0
            n = len(x)
            while i < n:
                take = min(FRAME_SAMPLES - self._partial_n, n - i)
                self._partial[self._partial_n:self._partial_n + take] = x[i:i + take]
                self._partial_n += take
                i += take
                if self._partial_n == FRAME_SAMPLES:
                    done = self._partial
                    self._q.append(done)
                    self._partial = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
                    self._partial_n = 0
                    self.frames_pushed += 1
                    if mark >= 0:
                        self._mark_frame, self._mark_slot = done, mark
                        TRACE.queued(mark, time.monotonic_ns())
                    while len(self._q) > self.max_frames:
                        self._q.popleft()
                        self.dropped_overflow += 1
            depth = len(self._q)
            if depth > self.max_depth:
                self.max_depth = depth

    def ensure_capacity(self, frames: int) -> None:
        """Let the queue hold at least `frames` (a sender whose packets carry more audio than
        the queue would otherwise keep, e.g. 128 ms G.711 packets from ffmpeg)."""
        if frames > self.max_frames:
            self.max_frames = min(frames, 50)

    def end(self) -> None:
        """No more audio will come (hang-up, stream gone). Already queued frames still play."""
        self._ended = True

    @property
    def ended(self) -> bool:
        return self._ended

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call `fn` (from whatever thread closes the source) when the engine lets go of it."""
        self._close_callbacks.append(fn)

    # ------------------------------------------------------------------ Source interface
    @property
    def depth(self) -> int:
        return len(self._q)

    @property
    def latency_ms(self) -> float:
        """Audio currently waiting in the queue."""
        return len(self._q) * FRAME_MS + self._partial_n / FRAME_SAMPLES * FRAME_MS

    def ready(self) -> bool:
        return len(self._q) >= (self._need if self._priming else 1)

    def read(self) -> np.ndarray | None:
        with self._lock:
            depth = len(self._q)
            if self._priming:
                if depth < self._need or depth == 0:
                    if self.frames_read:
                        self.underruns += 1
                    return None
                self._priming = False
                self._need = self.prime_frames
            if depth == 0:
                if (self.conceal is None or self._ended
                        or self._concealing >= self.max_conceal):
                    self.underruns += 1
                    self._priming = True
                    if self.conceal is not None and not self._ended:
                        self._owe_a_frame()
                    return None
                stand_in = True
            else:
                stand_in = False
                self._concealing = 0
                self._since_late += 1
                if self._late_debt and depth <= self.prime_frames:
                    self._since_late = 0   # late again, absorbed by the frame kept for it
                if depth > self.prime_frames and self._late_debt:
                    # a concealment stood in for a late frame, which still plays: take that
                    # frame of delay back in a pause, never by dropping speech, and not while
                    # late frames keep coming (catchup_after)
                    self._deep_reads = 0
                    head = self._q[0]
                    if ((self._since_late >= self.catchup_after or self._late_debt > 1)
                            and head is not self._mark_frame and len(head) == FRAME_SAMPLES
                            and float(np.abs(head, out=self._scratch).max()) < QUIET_PEAK):
                        self._q.popleft()
                        self._late_debt -= 1
                        self.caught_up += 1
                elif depth > self.prime_frames:
                    self._deep_reads += 1
                    if self._deep_reads >= self.trim_after and depth > 1:
                        self._q.popleft()
                        self.dropped_trim += 1
                        self._deep_reads = 0
                else:
                    self._deep_reads = 0
                frame = self._q.popleft()
                if frame is self._mark_frame:
                    TRACE.read(self._mark_slot, time.monotonic_ns())
                    self._mark_frame = None
        if stand_in:
            return self._stand_in()
        self.frames_read += 1
        return frame

    def _stand_in(self) -> np.ndarray | None:
        """A concealment frame for a tick that found the queue empty mid-stream; the frame it
        stands in for comes late and plays next tick (outside the lock: the callback takes the
        decoder's lock, whose holder may be pushing into this queue)."""
        conceal = self.conceal
        try:
            f = conceal() if conceal is not None else None
        except Exception:   # a stand-in must never break the tick
            f = None
        with self._lock:
            self._owe_a_frame()   # the late frame still comes, and plays
            if f is None or len(f) != FRAME_SAMPLES:
                self.underruns += 1
                self._priming = True
                return None
            self.concealed += 1
            self._concealing += 1
        self.frames_read += 1
        return f

    def _owe_a_frame(self) -> None:
        """A tick passed without the frame due (concealed, or silence when the decoder could
        not conceal): the frames after it play a tick later, until a pause takes it back."""
        self._late_debt = min(self._late_debt + 1, self.max_frames)
        self._since_late = 0

    @property
    def finished(self) -> bool:
        return self._closed or (self._ended and not self._q)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ended = True
        with self._lock:
            self._q.clear()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:  # a callback must never break the engine's tick
                pass

    def stats(self) -> dict[str, int]:
        return {
            "frames_pushed": self.frames_pushed, "frames_read": self.frames_read,
            "underruns": self.underruns, "dropped_overflow": self.dropped_overflow,
            "dropped_trim": self.dropped_trim, "depth": self.depth, "max_depth": self.max_depth,
            "concealed": self.concealed, "caught_up": self.caught_up,
        }
