"""What every input (file, tone, TTS, WebRTC mic, RTP in) looks like to the engine.

A Source hands the engine one 48 kHz mono float32 frame of 960 samples per tick. Its `read`
never blocks: decoding, resampling and synthesis happen in worker threads that fill a bounded
queue; when the queue is empty the source has underrun (the engine plays silence for it and the
counter goes up), it never makes the tick wait.
"""
from __future__ import annotations

import numpy as np


class MediaError(ValueError):
    """Input audio that cannot be played: unreadable, corrupt, unsupported. Message is for users."""


class Source:
    kind: str = "abstract"
    #: live sources (microphone, RTP in) cannot pause: when preempted they are told, not paused
    live: bool = False

    def __init__(self) -> None:
        self.underruns = 0
        self.frames_read = 0
        self.error: str | None = None
        #: monotonic ns when the first frame became available (for latency accounting)
        self.ready_ns: int | None = None
        #: something people should know, published once as a broadcast.notice event (a TTS
        #: emergency fell back to espeak-ng...); the core takes it and sets it back to None
        self.notice: str | None = None

    def start(self) -> None:
        """Begin producing (start worker threads). Called once, off the tick."""

    def ready(self) -> bool:
        """True once a frame can be read without underrun."""
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        """Next frame (float32, 960 samples; the engine does not modify it), or None when no
        frame is available this tick. Never blocks."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """True when every frame has been read and no more will come."""
        raise NotImplementedError

    def rewind(self, seconds: float) -> None:
        """Step back up to `seconds` of already-read audio (resume after a preemption)."""

    @property
    def position_s(self) -> float:
        from streamer.audio import FRAME_MS
        return self.frames_read * FRAME_MS / 1000.0

    def close(self) -> None:
        """Stop workers and free resources. Idempotent."""
