"""The engine interface and the offline engine, espeak-ng.

An engine turns one sentence (already normalised: words, not digits) into 48 kHz mono float32
audio, yielded in chunks as it is produced. Engines are blocking and run in the synthesis pool's
threads (streamer.tts.service), never on the tick or the event loop.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Protocol

import av
import numpy as np

from streamer.audio import SAMPLE_RATE
from streamer.tts import priority

__all__ = ["TtsEngine", "TtsError", "EspeakEngine", "ESPEAK_VOICES", "resample_to_48k",
           "decode_audio_bytes"]

#: the Vietnamese voices of espeak-ng (Debian espeak-ng 1.51)
ESPEAK_VOICES = ("vi", "vi-vn-x-central", "vi-vn-x-south")
#: espeak-ng's words per minute at rate 1.0
ESPEAK_WPM = 165
#: the priority an espeak-ng child is given (streamer.tts.priority); None: it keeps what it
#: inherits (a synthesis worker process sets this, its own priority being low already)
CHILD_PRIORITY: tuple[str, int] | None = priority.CHILD


class TtsError(Exception):
    """An engine could not render a sentence. `message` is for people; `status` is the HTTP
    status the service answered (None: no answer); `rate_limited` for a 429 / quota answer."""

    def __init__(self, message: str, *, status: int | None = None, rate_limited: bool = False,
                 timeout: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.rate_limited = rate_limited
        self.timeout = timeout


class TtsEngine(Protocol):
    """A sentence in, PCM out, streamed."""
    name: str
    kind: str
    voices: tuple[str, ...]
    default_voice: str

    def synthesize(self, sentence: str, voice: str, rate: float,
                   deadline_s: float | None = None) -> Iterator[np.ndarray]:
        """48 kHz mono float32 chunks of the sentence read aloud. Raises TtsError. With
        `deadline_s`, gives up (TtsError timeout) when the engine has not answered by then."""
        ...


def resample_to_48k(pcm: np.ndarray, rate: int, resampler: av.AudioResampler | None = None
                    ) -> tuple[np.ndarray, av.AudioResampler]:
    """Mono int16 or float32 samples at `rate` → 48 kHz float32 (PyAV/FFmpeg's resampler, kept
    between calls so a stream is resampled without seams). An empty `pcm` flushes it."""
    rs = resampler or av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    if pcm.size == 0:
        frames = rs.resample(None)
    else:
        fmt = "s16" if pcm.dtype == np.int16 else "flt"
        if fmt == "s16":
            frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16, copy=False).reshape(1, -1),
                                               format=fmt, layout="mono")
        else:
            frame = av.AudioFrame.from_ndarray(pcm.astype(np.float32, copy=False).reshape(1, -1),
                                               format=fmt, layout="mono")
        frame.sample_rate = rate
        frames = rs.resample(frame)
    out = [f.to_ndarray().reshape(-1) for f in frames]
    return (np.concatenate(out).astype(np.float32, copy=False) if out
            else np.zeros(0, np.float32)), rs


def decode_audio_bytes(data: bytes, what: str = "audio") -> np.ndarray:
    """Any audio file's bytes (mp3, wav, ogg...) → 48 kHz mono float32, through PyAV."""
    import io
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise TtsError(f"{what} is not playable audio ({e})") from None
    try:
        if not container.streams.audio:
            raise TtsError(f"{what} contains no audio")
        rs = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        parts: list[np.ndarray] = []
        try:
            for frame in container.decode(audio=0):
                frame.pts = None
                parts.extend(f.to_ndarray().reshape(-1) for f in rs.resample(frame))
            parts.extend(f.to_ndarray().reshape(-1) for f in rs.resample(None))
        except av.FFmpegError as e:
            raise TtsError(f"{what} is corrupt ({e})") from None
    finally:
        container.close()
    if not parts:
        raise TtsError(f"{what} contains no decodable audio")
    return np.concatenate(parts).astype(np.float32, copy=False)


class EspeakEngine:
    """espeak-ng as a child process per sentence: text on stdin, a WAV stream (22,050 Hz s16
    mono) on stdout, resampled to 48 kHz as it arrives. Fast (a sentence in tens of ms) and
    offline: the engine every emergency can fall back to."""
    kind: str = "espeak"
    voices: tuple[str, ...] = ESPEAK_VOICES

    def __init__(self, name: str = "espeak", default_voice: str = "vi",
                 binary: str = "espeak-ng") -> None:
        self.name = name
        self.default_voice = default_voice
        self.binary = binary

    @property
    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def synthesize(self, sentence: str, voice: str, rate: float,
                   deadline_s: float | None = None) -> Iterator[np.ndarray]:
        if voice not in self.voices:
            raise TtsError(f"espeak-ng has no voice {voice!r} (voices: {', '.join(self.voices)})")
        wpm = str(max(80, min(450, int(round(ESPEAK_WPM * rate)))))
        t_end = time.monotonic() + deadline_s if deadline_s else None
        try:
            proc = subprocess.Popen([self.binary, "-v", voice, "-s", wpm, "-b", "1", "--stdout"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        except OSError as e:
            raise TtsError(f"espeak-ng cannot start: {e}") from None
        if CHILD_PRIORITY is not None:
            # synthesis runs far ahead of playout (100x real time and more): it yields the CPU
            # to the server's threads (streamer.tts.priority). In a synthesis worker the child
            # has inherited the worker's own policy (CHILD_PRIORITY is None there).
            priority.lower(CHILD_PRIORITY, proc.pid)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # -b 1: the input is UTF-8; a final newline ends the sentence
            proc.stdin.write(sentence.replace("\n", " ").encode("utf-8") + b"\n")
            proc.stdin.close()
            header = b""
            while len(header) < 44:
                b = proc.stdout.read(44 - len(header))
                if not b:
                    break
                header += b
            if len(header) < 44 or header[:4] != b"RIFF":
                raise TtsError("espeak-ng produced no audio")
            src_rate = int.from_bytes(header[24:28], "little")
            resampler: av.AudioResampler | None = None
            odd = b""
            while True:
                if t_end is not None and time.monotonic() > t_end:
                    raise TtsError("espeak-ng is slower than the deadline", timeout=True)
                b = os.read(proc.stdout.fileno(), 16384)
                if not b:
                    break
                b = odd + b
                cut = len(b) - (len(b) % 2)
                odd = b[cut:]
                chunk, resampler = resample_to_48k(np.frombuffer(b[:cut], "<i2"), src_rate,
                                                   resampler)
                if chunk.size:
                    yield chunk
            if resampler is not None:
                tail, _ = resample_to_48k(np.zeros(0, np.int16), src_rate, resampler)
                if tail.size:
                    yield tail
            if proc.wait(timeout=5) != 0:
                raise TtsError(f"espeak-ng failed (exit status {proc.returncode})")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
