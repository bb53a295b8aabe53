"""A source made of parts played one after another: attention chime, message, pause, repeat.

Each part is made lazily by a factory that takes a start offset in seconds, so a sequence can be
re-opened part-way through (a fork that resumes a preempted item where it was cut). A looping
sequence (a playlist that fills its slot) starts again at its first part after its last, and
a start offset past its length lands in the right round; it ends only when its owner cuts it
(streamer/ingest/playlist.py SlotSource), or when a whole round played nothing.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamer.audio import FRAME_MS
from streamer.ingest.base import Source

SourceFactory = Callable[[float], Source]


@dataclass(frozen=True, slots=True)
class Part:
    factory: SourceFactory
    duration_s: float  # best known length; used only to place a start offset
    label: str = ""
    #: for a part whose length is not known yet (math.inf: a text not rendered):
    #: measure(need_s) finds out whether it is longer than `need_s` -> (seconds, complete),
    #: rendering no more than that (blocking; the TTS cache answers what was rendered before),
    #: so a sequence opened part-way (a programme joined in progress) lands in the right part
    measure: Callable[[float], tuple[float, bool]] | None = None


class SkipSource(Source):
    """Wraps a source that cannot seek: drops the first `skip_s` seconds as they arrive."""

    def __init__(self, inner: Source, skip_s: float) -> None:
        super().__init__()
        self.inner = inner
        self.kind = inner.kind
        self.live = inner.live
        self._skip = int(round(skip_s * 1000 / FRAME_MS))

    def start(self) -> None:
        self.inner.start()

    def _drain(self) -> None:
        while self._skip > 0:
            f = self.inner.read()
            if f is None:
                return
            self._skip -= 1

    @property
    def ready_ns(self) -> int | None:
        return self.inner.ready_ns

    @ready_ns.setter
    def ready_ns(self, value: int | None) -> None:
        pass

    def ready(self) -> bool:
        self._drain()
        return self._skip == 0 and self.inner.ready()

    def read(self) -> np.ndarray | None:
        self._drain()
        if self._skip:
            if not self.inner.finished:
                self.underruns += 1
            return None
        f = self.inner.read()
        if f is None:
            if not self.inner.finished:
                self.underruns += 1
        else:
            self.frames_read += 1
        return f

    @property
    def finished(self) -> bool:
        return self.inner.finished

    @property
    def notice(self) -> str | None:
        return self.inner.notice

    @notice.setter
    def notice(self, value: str | None) -> None:
        if hasattr(self, "inner"):
            self.inner.notice = value

    def rewind(self, seconds: float) -> None:
        before = self.inner.frames_read
        self.inner.rewind(seconds)
        self.frames_read = max(0, self.frames_read - (before - self.inner.frames_read))

    def close(self) -> None:
        self.inner.close()

    @property
    def error(self) -> str | None:
        return self.inner.error

    @error.setter
    def error(self, value: str | None) -> None:
        pass


class SequenceSource(Source):
    def __init__(self, parts: list[Part], start_s: float = 0.0, kind: str = "sequence",
                 loop: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.parts = parts
        self.loop = loop and bool(parts)
        self._index = 0
        self._offset = 0.0
        self._round_frames = 0   # frames read since the round began (a looping sequence)
        self._start_s = max(0.0, start_s)
        #: placed before `start` (which measures first, off the tick, when that is needed)
        self._placed = not (self._start_s > 0 and self._needs_measure())
        if self._placed:
            self._place()
        #: seconds spent finding out lengths before the start (status, tests)
        self.measured_s = 0.0
        self._current: Source | None = None
        self._next: Source | None = None
        self._started = False
        # where it starts: the offset within the part counts too (the part skips or seeks it)
        self._base_frames = int(round(max(0.0, start_s) * 1000 / FRAME_MS)) if parts else 0

    def _needs_measure(self) -> bool:
        """A part of unknown length that can be measured lies before the start offset (a
        looping sequence's offset past its first round needs the whole round)."""
        t = self._start_s
        for p in self.parts:
            if p.duration_s == math.inf:
                return p.measure is not None
            t -= p.duration_s
            if t < 0:
                return False
        return False

    def place(self) -> None:
        """Find the part and the offset in it where the sequence starts. Parts of unknown
        length on the way are measured first (blocking: called by `start`, off the tick); one
        that cannot be measured counts as endless (the start lands in it)."""
        if self._placed:
            return
        t0 = time.monotonic()
        t = self._start_s
        for i, p in enumerate(self.parts):
            if p.duration_s == math.inf and p.measure is not None:
                try:
                    seconds, complete = p.measure(t)
                except Exception:   # an engine down: placed as before, in this part
                    break
                if not complete:    # longer than what is left: the start lands in it
                    break
                self.parts[i] = Part(p.factory, seconds, p.label, p.measure)
            t -= self.parts[i].duration_s
            if t < 0:
                break
        self.measured_s = time.monotonic() - t0
        self._placed = True
        self._place()

    def _place(self) -> None:
        parts = self.parts
        self._index = 0
        t = self._start_s
        round_s = sum(p.duration_s for p in parts)
        if self.loop and 0 < round_s < math.inf:
            t = math.fmod(t, round_s)
        while self._index < len(parts) - 1 and t >= parts[self._index].duration_s:
            t -= parts[self._index].duration_s
            self._index += 1
        self._offset = t

    def _open(self, i: int, offset: float) -> Source:
        s = self.parts[i].factory(offset)
        s.start()
        return s

    def start(self) -> None:
        if self._started or not self.parts:
            return
        self.place()
        self._started = True
        self._current = self._open(self._index, self._offset)

    def _following(self) -> int:
        """The index of the part after the current one (len(parts): none)."""
        i = self._index + 1
        return 0 if self.loop and i >= len(self.parts) else i

    def _advance(self) -> bool:
        """Move to the next part; False when there is none."""
        if self._current is not None:
            self._current.close()
        self._index = self._following()
        if self._index == 0:
            if self._round_frames == 0:   # a round of nothing: looping would spin
                self._index = len(self.parts)
                if self._next is not None:
                    self._next.close()
                    self._next = None
            self._round_frames = 0
        if self._index >= len(self.parts):
            self._current = None
            return False
        self._current = self._next or self._open(self._index, 0.0)
        self._next = None
        return True

    def _prefetch(self) -> None:
        # open the next part a little early so the switch does not underrun
        nxt = self._following()
        if self._next is None and nxt < len(self.parts) and self._current is not None:
            if self._current.finished or self._current.position_s >= self.parts[self._index].duration_s - 1.0:
                self._next = self._open(nxt, 0.0)

    @property
    def ready_ns(self) -> int | None:
        return self._current.ready_ns if self._current is not None else None

    @ready_ns.setter
    def ready_ns(self, value: int | None) -> None:
        pass

    def ready(self) -> bool:
        return self._current is not None and (self._current.ready() or self._current.finished)

    def read(self) -> np.ndarray | None:
        while self._current is not None:
            f = self._current.read()
            if f is not None:
                self.frames_read += 1
                self._round_frames += 1
                self._prefetch()
                return f
            if self._current.finished:
                if self._current.error and not self.error:
                    self.error = self._current.error
                if not self._advance():
                    return None
                continue
            self.underruns += 1
            return None
        return None

    @property
    def finished(self) -> bool:
        return self._started and self._current is None

    @property
    def notice(self) -> str | None:
        cur = getattr(self, "_current", None)
        return cur.notice if cur is not None else None

    @notice.setter
    def notice(self, value: str | None) -> None:
        cur = getattr(self, "_current", None)
        if cur is not None:
            cur.notice = value

    @property
    def part_label(self) -> str:
        return self.parts[self._index].label if self._index < len(self.parts) else ""

    def rewind(self, seconds: float) -> None:
        if self._current is not None:
            before = self._current.frames_read
            self._current.rewind(seconds)
            self.frames_read = max(0, self.frames_read - (before - self._current.frames_read))

    @property
    def position_s(self) -> float:
        return (self._base_frames + self.frames_read) * FRAME_MS / 1000.0

    def close(self) -> None:
        for s in (self._current, self._next):
            if s is not None:
                s.close()
        self._current = self._next = None
        self._index = len(self.parts)
