"""A text read aloud as a Source: synthesised sentence by sentence in the TTS pool, ahead of
playout (the first sentence airs while the rest is rendered), loudness applied per sentence.

Sentences are whole frames (the last frame of each padded with silence), so every sentence
starts on a frame boundary. That is what makes resume clean:
- a paused item rewinds to the start of the sentence it was cut in (`rewind`), not mid-word;
- a source reopened at an offset (a fork for zones cut from a playing item, which the core opens
  `resume_hint_s` before the cut) starts at the start of the sentence that holds the cut. The
  sentence lengths learned by any source of one item are shared (`Timeline`), so the offset maps
  to a sentence without synthesising anything.

Engine failures: an urgent item (an emergency) whose engine fails or misses the deadline falls
back to espeak-ng at once, for the rest of the item, and says so in `notice` (the core publishes
it as a broadcast.notice event); a normal item ends with `error` naming the engine's answer.
Nothing here blocks: `read` takes a prepared frame or underruns.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES
from streamer.ingest.base import Source
from streamer.tts.engines import TtsEngine, TtsError
from streamer.tts.service import TtsService

__all__ = ["TtsSource", "Timeline"]


class Timeline:
    """Sentence lengths in frames, as learned (None: not rendered yet), shared by the sources of
    one item."""

    def __init__(self, n: int) -> None:
        self.frames: list[int | None] = [None] * n

    def locate(self, start_s: float) -> tuple[int, int]:
        """(sentence index, frames before it) of the sentence holding `start_s`; past what is
        known, the first sentence not rendered yet."""
        target = int(max(0.0, start_s) * 1000 / FRAME_MS)
        before = 0
        for i, n in enumerate(self.frames):
            if n is None or before + n > target:
                return i, before
            before += n
        return len(self.frames), before

    @property
    def known_s(self) -> float | None:
        if any(n is None for n in self.frames):
            return None
        return sum(n or 0 for n in self.frames) * FRAME_MS / 1000.0


def to_frames(pcm: np.ndarray, gain: float) -> np.ndarray:
    """Samples → (n, 960) read-only frames, gained, the last padded with silence."""
    n = max(1, -(-pcm.shape[0] // FRAME_SAMPLES))
    out = np.zeros((n, FRAME_SAMPLES), dtype=DTYPE)
    flat = out.reshape(-1)
    flat[: pcm.shape[0]] = pcm
    if gain != 1.0:
        flat *= np.float32(gain)
    out.setflags(write=False)
    return out


class TtsSource(Source):
    kind = "tts"

    def __init__(self, service: TtsService, sentences: tuple[str, ...] | list[str],
                 engine: str, voice: str, rate: float = 1.0, *, urgent: bool = False,
                 start_s: float = 0.0, timeline: Timeline | None = None,
                 resume_hint_s: float = 0.0, ahead_s: float = 30.0) -> None:
        super().__init__()
        self.service = service
        self.sentences = tuple(sentences)
        self.engine: TtsEngine = service.engine(engine)
        self.voice = voice
        self.rate = rate
        self.urgent = urgent
        self.timeline = timeline or Timeline(len(self.sentences))
        #: a notice for the events (an emergency fell back to espeak-ng); the core takes it
        self.notice: str | None = None
        self.fell_back = False
        self._ahead_frames = int(ahead_s * 1000 / FRAME_MS)
        start = max(0.0, start_s) + (resume_hint_s if start_s > 0 else 0.0)
        self.start_index, self._base = self.timeline.locate(start)
        self._cur = self.start_index       # sentence being read
        self._fi = 0                       # next frame in it
        self._audio: dict[int, np.ndarray] = {}
        self._end = len(self.sentences)    # sentences that will be read (less after a failure)
        self._synth_done = self.start_index >= self._end
        self._parked: int | None = None    # the next sentence to render once the buffer drains
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self.rendered = 0

    # -- synthesis (pool threads) -----------------------------------------------------------
    def start(self) -> None:
        if self._started or self._closed:
            return
        self._started = True
        if not self._synth_done:
            self._submit(self.start_index)

    def _submit(self, i: int) -> None:
        try:
            self.service.pool.submit(lambda: self._work(i), urgent=self.urgent)
        except TtsError as e:
            self._fail(i, e.message)

    def _fail(self, i: int, message: str) -> None:
        self.error = f"text to speech failed at sentence {i + 1}: {message}"
        self._end = i
        self._synth_done = True

    def _render(self, i: int) -> np.ndarray:
        """Sentence `i` at the loudness target (in a synthesis worker process when the service
        has them: resampling and loudness off the server's GIL)."""
        s = self.sentences[i]
        engine = self.engine
        espeak = self.service.espeak
        deadline = None if engine is espeak else self.service.deadline_s
        try:
            return self.service.render_gained(s, engine, self.voice, self.rate, deadline,
                                              self.urgent)
        except TtsError as e:
            if not self.urgent or engine is espeak:
                raise
            # an emergency does not wait for a failing cloud engine: espeak-ng reads the rest
            self.engine = espeak
            self.voice = espeak.default_voice
            self.fell_back = True
            self.notice = (f"TTS engine {engine.name} failed ({e.message}); read by espeak-ng "
                           f"from sentence {i + 1}")
            return self.service.render_gained(s, espeak, self.voice, self.rate, None, True)

    def _work(self, i: int) -> None:
        if self._closed:
            return
        try:
            frames = to_frames(self._render(i), 1.0)
        except TtsError as e:
            self._fail(i, e.message)
            return
        except Exception as e:  # a bug or a codec surprise must not pass silently
            self._fail(i, repr(e))
            return
        self.timeline.frames[i] = frames.shape[0]
        self._audio[i] = frames
        self.rendered += 1
        if self.ready_ns is None:
            self.ready_ns = time.monotonic_ns()
        nxt = i + 1
        if nxt >= self._end:
            self._synth_done = True
            return
        with self._lock:
            if self._buffered() >= self._ahead_frames:
                self._parked = nxt
                return
        self._submit(nxt)

    def _buffered(self) -> int:
        """Frames rendered and not yet read."""
        return int(sum(a.shape[0] for j, a in list(self._audio.items()) if j >= self._cur)) - self._fi

    # -- Source interface (the tick) ---------------------------------------------------------
    def ready(self) -> bool:
        return not self._closed and self._cur in self._audio

    def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        a = self._audio.get(self._cur)
        if a is None:
            if not self.finished and self._started:
                self.underruns += 1
            return None
        f: np.ndarray = a[self._fi]
        self._fi += 1
        self.frames_read += 1
        if self._fi >= a.shape[0]:
            # the sentence is read: the next one is where a resume would start
            self._audio.pop(self._cur - 1, None)
            self._base += a.shape[0]
            self._cur += 1
            self._fi = 0
            if self._parked is not None:
                self._wake()
        return f

    def _wake(self) -> None:
        """A parked renderer goes on once the buffer ahead is under half its target (once per
        sentence, off the steady path)."""
        with self._lock:
            nxt = self._parked
            if nxt is None or self._buffered() >= self._ahead_frames // 2:
                return
            self._parked = None
        self._submit(nxt)

    @property
    def finished(self) -> bool:
        if self._closed:
            return True
        return self._synth_done and self._cur >= self._end

    def rewind(self, seconds: float) -> None:
        """Back to the start of the sentence being read (the cut was in it)."""
        if seconds <= 0 or self._fi == 0:
            return
        self.frames_read = max(0, self.frames_read - self._fi)
        self._fi = 0

    @property
    def position_s(self) -> float:
        return (self._base + self._fi) * FRAME_MS / 1000.0

    @property
    def sentence_index(self) -> int:
        return self._cur

    def close(self) -> None:
        self._closed = True
        self._parked = None
        self._audio.clear()

    def __repr__(self) -> str:
        return (f"TtsSource({len(self.sentences)} sentences, at {self._cur}, "
                f"engine={self.engine.name}, error={self.error!r})")
