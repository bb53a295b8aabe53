"""Where a receiver's audio goes: a WAV file, nowhere, or the sound card.

A sink gets float32 mono 48 kHz blocks, only while something plays: between talk spurts the
receiver writes nothing, so a file holds the audio that was played, back to back.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Protocol

import numpy as np

from streamer.audio import SAMPLE_RATE, to_int16

_MAX_BLOCK = SAMPLE_RATE * 120 // 1000     # the longest Opus packet: 120 ms


class Sink(Protocol):
    description: str
    samples_written: int

    def write(self, pcm: np.ndarray) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Discards audio (still counts it)."""

    def __init__(self, description: str = "null") -> None:
        self.description = description
        self.samples_written = 0

    def write(self, pcm: np.ndarray) -> None:
        self.samples_written += len(pcm)

    def close(self) -> None:
        pass


class WavSink:
    """48 kHz mono 16-bit WAV, valid at all times (up to the last header update).

    Written unbuffered, so every block is in the kernel as soon as it is played; the two size
    fields of the header are rewritten every `header_interval` seconds of audio and on close, so
    a killed receiver still leaves a readable file. (The stdlib `wave` module rewrites the header
    through a buffered file object on every write, and loses the tail on SIGKILL.)
    """

    _LIMIT = 0xFFFFFFFF - 36      # RIFF sizes are 32-bit

    def __init__(self, path: str | os.PathLike, header_interval: float = 0.5) -> None:
        self.path = os.fspath(path)
        self.description = f"wav:{self.path}"
        self.samples_written = 0
        self.truncated = False
        self._f = open(self.path, "wb", buffering=0)
        self._fd = self._f.fileno()
        self._f.write(self._header(0))
        self._data_bytes = 0
        self._header_bytes = 0
        self._header_every = max(1, int(header_interval * SAMPLE_RATE)) * 2
        self._pcm16 = np.empty(_MAX_BLOCK, dtype="<i2")

    @staticmethod
    def _header(data_bytes: int) -> bytes:
        return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
                + b"data" + struct.pack("<I", data_bytes))

    def write(self, pcm: np.ndarray) -> None:
        if self._f.closed:
            return
        n = len(pcm)
        if n > _MAX_BLOCK:
            for i in range(0, n, _MAX_BLOCK):
                self.write(pcm[i:i + _MAX_BLOCK])
            return
        if self._data_bytes + 2 * n > self._LIMIT:
            self.truncated = True
            return
        out = self._pcm16[:n]
        to_int16(pcm, out=out)
        self._f.write(out.data)
        self._data_bytes += 2 * n
        self.samples_written += n
        if self._data_bytes - self._header_bytes >= self._header_every:
            self._update_header()

    def _update_header(self) -> None:
        os.pwrite(self._fd, struct.pack("<I", 36 + self._data_bytes), 4)
        os.pwrite(self._fd, struct.pack("<I", self._data_bytes), 40)
        self._header_bytes = self._data_bytes

    def close(self) -> None:
        if not self._f.closed:
            self._update_header()
            self._f.close()


class SoundCardSink:
    """The default ALSA device through an `ffmpeg -f alsa` pipe (kept simple and optional)."""

    def __init__(self, ffmpeg: str, device: str = "default",
                 notice: Callable[[str], None] | None = None) -> None:
        self.description = f"alsa:{device} (via ffmpeg)"
        self.samples_written = 0
        self._notice = notice or _stderr
        self._proc: subprocess.Popen | None = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(SAMPLE_RATE),
             "-ac", "1", "-i", "pipe:0", "-f", "alsa", device],
            stdin=subprocess.PIPE, bufsize=0)
        self._pcm16 = np.empty(_MAX_BLOCK, dtype="<i2")

    def write(self, pcm: np.ndarray) -> None:
        self.samples_written += len(pcm)
        if self._proc is None:
            return
        out = self._pcm16[:len(pcm)]
        to_int16(pcm[:_MAX_BLOCK], out=out)
        stdin = self._proc.stdin
        assert stdin is not None     # opened with stdin=PIPE
        try:
            stdin.write(out.data)
        except (BrokenPipeError, OSError):
            self._notice("loa receiver: the sound card output (ffmpeg) stopped; "
                         "discarding audio from now on")
            self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2)

    def close(self) -> None:
        self._stop()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def has_sound_card() -> bool:
    return os.path.isdir("/dev/snd") and any(n.startswith("pcm") for n in os.listdir("/dev/snd"))


def open_sink(spec: str, notice: Callable[[str], None] | None = None) -> Sink:
    """`null`, `default` (the sound card, or null when there is none), or a `.wav` path."""
    notice = notice or _stderr
    if spec == "null":
        return NullSink()
    if spec == "default":
        if not has_sound_card():
            notice("loa receiver: no sound card on this machine (no playback device in /dev/snd); "
                   "audio is discarded (output: null)")
            return NullSink("null (no sound card)")
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            notice("loa receiver: a sound card exists but ffmpeg is not installed to play to it; "
                   "audio is discarded (output: null)")
            return NullSink("null (no ffmpeg)")
        return SoundCardSink(ffmpeg, notice=notice)
    if spec.lower().endswith(".wav"):
        return WavSink(spec)
    raise ValueError(f"output must be a .wav file, 'null' or 'default', not {spec!r}")
