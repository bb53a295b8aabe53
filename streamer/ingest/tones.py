"""Synthesised sources: test tone, attention chime, emergency siren, silence.

Every one is a closed-form function of time, so `rewind` is exact (no history needed) and
nothing runs in a thread. Construction is cheap (no rendering), so a source can be built on
the event loop when an alert arrives:
- a tone renders each frame when read (a few vectorised numpy calls over 960 samples, ~20 us);
- the siren renders one sweep period once per process (cached by its parameters) and loops it;
- the chime is rendered once per process per parameter set (cached) and handed out as views.
Frames returned by read() are read-only.
"""
from __future__ import annotations

import functools
import math
import time
import wave
from pathlib import Path

import numpy as np

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, SILENCE, db_to_gain
from streamer.ingest.base import Source

_OFFSETS = np.arange(FRAME_SAMPLES, dtype=np.float64)
_TONE_PERIOD_MAX = 50   # frames of a periodic tone kept (at most 50 × 3.8 KB)
_ONES = np.ones(FRAME_SAMPLES, dtype=np.float64)
_ONES.flags.writeable = False


def _frame_times(index: int) -> np.ndarray:
    return (index * FRAME_SAMPLES + _OFFSETS) / SAMPLE_RATE


def _fade_envelope(t: np.ndarray, total_s: float, fade_s: float) -> np.ndarray:
    """Raised-cosine fade in over [0, fade_s] and out over [total_s - fade_s, total_s];
    zero outside [0, total_s]."""
    if len(t) == FRAME_SAMPLES and t[0] >= fade_s and t[-1] < total_s - fade_s:
        return _ONES       # the common case: a frame in the steady part, nothing to shape
    env = np.ones_like(t)
    if fade_s > 0:
        fade_s = min(fade_s, total_s / 2)
        a = np.clip(t / fade_s, 0.0, 1.0)
        b = np.clip((total_s - t) / fade_s, 0.0, 1.0)
        env = (0.5 - 0.5 * np.cos(np.pi * a)) * (0.5 - 0.5 * np.cos(np.pi * b))
    env[(t < 0) | (t >= total_s)] = 0.0
    return env


def _read_only(frame: np.ndarray) -> np.ndarray:
    frame.flags.writeable = False
    return frame


class SynthSource(Source):
    """A Source defined by `_render(t)`: samples at absolute times t (seconds, float64)."""

    kind = "tone"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError("seconds must be a finite number >= 0")
        self.seconds = float(seconds)
        self.total_frames = int(math.ceil(round(self.seconds * SAMPLE_RATE) / FRAME_SAMPLES))
        self._index = 0  # next frame to read
        self.ready_ns = time.monotonic_ns()  # generated on demand: ready at once

    def _render(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def frame_at(self, index: int) -> np.ndarray:
        return _read_only(self._render(_frame_times(index)).astype(DTYPE))

    # -- Source interface
    def ready(self) -> bool:
        return self._index < self.total_frames

    def read(self) -> np.ndarray | None:
        if self._index >= self.total_frames:
            return None
        frame = self.frame_at(self._index)
        self._index += 1
        self.frames_read += 1
        return frame

    @property
    def finished(self) -> bool:
        return self._index >= self.total_frames

    def rewind(self, seconds: float) -> None:
        step = int(round(max(0.0, seconds) * 1000 / FRAME_MS))
        self._index = max(0, self._index - step)

    def seek(self, seconds: float) -> None:
        """Start `seconds` in (an item joined in progress): frames are rendered on demand, so
        nothing before it is computed, and position_s counts from the start of the item."""
        self._index = min(self.total_frames, max(0, int(round(seconds * 1000 / FRAME_MS))))

    @property
    def position_s(self) -> float:
        return self._index * FRAME_MS / 1000.0

    def close(self) -> None:
        self._index = self.total_frames


class ToneSource(SynthSource):
    """A sine at `amplitude_dbfs` peak (-16 dBFS peak = about -19 LUFS), with raised-cosine
    fades so it starts and stops without a click."""

    def __init__(self, freq_hz: float = 1000.0, seconds: float = 3.0,
                 amplitude_dbfs: float = -16.0, fade_ms: float = 5.0) -> None:
        super().__init__(seconds)
        if not 0 < freq_hz < SAMPLE_RATE / 2:
            raise ValueError("freq_hz must be between 0 and 24 kHz")
        self.freq_hz = float(freq_hz)
        self.amplitude = db_to_gain(amplitude_dbfs)
        self.fade_s = max(0.0, fade_ms) / 1000.0

        # A tone whose frequency is a multiple of 50/m Hz repeats every m frames (1 kHz: every
        # frame is the same): steady frames (outside the fades) are rendered once and reused.
        self._period = next((m for m in range(1, _TONE_PERIOD_MAX + 1)
                             if abs(freq_hz * m / 50 - round(freq_hz * m / 50)) < 1e-9), 0)
        self._steady: dict[int, np.ndarray] = {}

    def _render(self, t: np.ndarray) -> np.ndarray:
        out: np.ndarray = (self.amplitude * np.sin(2 * np.pi * self.freq_hz * t)
                           * _fade_envelope(t, self.seconds, self.fade_s))
        return out

    def frame_at(self, index: int) -> np.ndarray:
        m = self._period
        if m and index * FRAME_SAMPLES >= self.fade_s * SAMPLE_RATE and \
                (index + 1) * FRAME_SAMPLES <= (self.seconds - self.fade_s) * SAMPLE_RATE:
            frame = self._steady.get(index % m)
            if frame is None:
                t = _frame_times(index % m)   # same phase, smaller argument: no less exact
                frame = self._steady[index % m] = _read_only(
                    (self.amplitude * np.sin(2 * np.pi * self.freq_hz * t)).astype(DTYPE))
            return frame
        return super().frame_at(index)


class ChimeSource(SynthSource):
    """A four-note attention chime (rising G4-C5-E5-G5 by default, or falling) of bell-like
    tones: a few partials, the upper ones slightly inharmonic and dying away faster, each
    note struck with a 4 ms attack and left to ring. About 2.6 s; peak at `amplitude_dbfs`."""

    kind = "chime"
    # (frequency ratio to the note, relative level, decay time constant in s)
    PARTIALS = ((1.0, 1.0, 0.55), (2.0, 0.45, 0.30), (3.01, 0.22, 0.18), (4.17, 0.12, 0.10))
    ATTACK_S = 0.004
    RELEASE_S = 0.12  # the tail is faded to exact zero at the end
    MAX_S = 30.0

    def __init__(self, notes_hz: tuple[float, ...] = (392.0, 523.25, 659.25, 783.99),
                 descending: bool = False, note_spacing_s: float = 0.38,
                 ring_s: float = 1.45, amplitude_dbfs: float = -12.0) -> None:
        notes = tuple(sorted((float(f) for f in notes_hz), reverse=descending))
        if not notes or not all(0 < f < SAMPLE_RATE / 10 for f in notes):
            raise ValueError("a chime needs notes between 0 and 4.8 kHz")
        seconds = note_spacing_s * (len(notes) - 1) + ring_s
        if not 0 < seconds <= self.MAX_S or note_spacing_s < 0:
            raise ValueError(f"a chime lasts between 0 and {self.MAX_S} s")
        super().__init__(seconds)
        self.notes_hz = notes
        self.onsets_s = tuple(i * note_spacing_s for i in range(len(notes)))
        self.amplitude = db_to_gain(amplitude_dbfs)
        self._frames = _chime_frames(notes, self.onsets_s, self.seconds, self.amplitude)

    def frame_at(self, index: int) -> np.ndarray:
        frame: np.ndarray = self._frames[index]
        return frame

    def _render(self, t: np.ndarray) -> np.ndarray:
        return _chime_raw(self.notes_hz, self.onsets_s, self.seconds, t) * (
            self.amplitude / _chime_peak(self.notes_hz, self.onsets_s, self.seconds))


def _chime_raw(notes: tuple[float, ...], onsets: tuple[float, ...], seconds: float,
               t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t)
    for f0, onset in zip(notes, onsets):
        local = t - onset
        active = local >= 0
        if not active.any():
            continue
        lt = local[active]
        attack = np.clip(lt / ChimeSource.ATTACK_S, 0.0, 1.0)
        note = np.zeros_like(lt)
        for ratio, level, tau in ChimeSource.PARTIALS:
            note += level * np.exp(-lt / tau) * np.sin(2 * np.pi * f0 * ratio * lt)
        out[active] += attack * note
    tail = np.clip((seconds - t) / ChimeSource.RELEASE_S, 0.0, 1.0)
    out *= 0.5 - 0.5 * np.cos(np.pi * tail)
    out[(t < 0) | (t >= seconds)] = 0.0
    return out


def _chime_peak(notes: tuple[float, ...], onsets: tuple[float, ...], seconds: float) -> float:
    n = int(math.ceil(round(seconds * SAMPLE_RATE) / FRAME_SAMPLES)) * FRAME_SAMPLES
    return _chime_unscaled(notes, onsets, seconds, n)[1]


@functools.lru_cache(maxsize=8)
def _chime_unscaled(notes: tuple[float, ...], onsets: tuple[float, ...], seconds: float,
                    n: int) -> tuple[np.ndarray, float]:
    raw = _chime_raw(notes, onsets, seconds, np.arange(n, dtype=np.float64) / SAMPLE_RATE)
    raw.flags.writeable = False
    return raw, float(np.max(np.abs(raw))) or 1.0


@functools.lru_cache(maxsize=8)
def _chime_frames(notes: tuple[float, ...], onsets: tuple[float, ...], seconds: float,
                  amplitude: float) -> np.ndarray:
    """Rendered once per process per parameter set (~40 ms), then shared by every chime."""
    n = int(math.ceil(round(seconds * SAMPLE_RATE) / FRAME_SAMPLES)) * FRAME_SAMPLES
    raw, peak = _chime_unscaled(notes, onsets, seconds, n)
    frames: np.ndarray = (raw * (amplitude / peak)).astype(DTYPE).reshape(-1, FRAME_SAMPLES)
    frames.flags.writeable = False
    return frames


class SirenSource(SynthSource):
    """A wailing siren for emergency attention: the pitch glides smoothly between `low_hz`
    and `high_hz` and back every `period_s`, starting low. A little third harmonic gives it
    the horn-like edge that carries on outdoor loudspeakers."""

    kind = "siren"

    def __init__(self, seconds: float = 10.0, low_hz: float = 600.0, high_hz: float = 1200.0,
                 period_s: float = 4.0, amplitude_dbfs: float = -10.0,
                 fade_ms: float = 50.0) -> None:
        super().__init__(seconds)
        if not 0 < low_hz < high_hz < SAMPLE_RATE / 6:
            raise ValueError("need 0 < low_hz < high_hz < 8 kHz")
        if not 0 < period_s <= 60:
            raise ValueError("period_s must be in (0, 60]")
        self.low_hz, self.high_hz, self.period_s = float(low_hz), float(high_hz), float(period_s)
        self.amplitude = db_to_gain(amplitude_dbfs)
        self.fade_s = max(0.0, fade_ms) / 1000.0
        self._fade_frames = int(math.ceil(self.fade_s * 1000 / FRAME_MS))
        self._period = _siren_period(self.low_hz, self.high_hz, self.period_s, self.amplitude)

    def frame_at(self, index: int) -> np.ndarray:
        if self._period is None:
            return super().frame_at(index)
        frame: np.ndarray = self._period[index % self._period.shape[0]]
        if index < self._fade_frames or index >= self.total_frames - self._fade_frames - 1:
            t = _frame_times(index)
            frame = _read_only((frame * _fade_envelope(t, self.seconds, self.fade_s))
                               .astype(DTYPE))
        return frame

    def instantaneous_hz(self, t: np.ndarray | float) -> np.ndarray | float:
        centre = (self.low_hz + self.high_hz) / 2
        depth = (self.high_hz - self.low_hz) / 2
        return centre - depth * np.cos(2 * np.pi * np.asarray(t) / self.period_s)

    def _render(self, t: np.ndarray) -> np.ndarray:
        out: np.ndarray = (_siren_wave(self.low_hz, self.high_hz, self.period_s, self.amplitude, t)
                           * _fade_envelope(t, self.seconds, self.fade_s))
        return out


def _siren_wave(low_hz: float, high_hz: float, period_s: float, amplitude: float,
                t: np.ndarray) -> np.ndarray:
    centre = (low_hz + high_hz) / 2
    depth = (high_hz - low_hz) / 2
    w = 2 * np.pi / period_s
    # phase = 2*pi * integral of the instantaneous frequency: closed form, any frame stands alone
    phase = 2 * np.pi * (centre * t - depth * np.sin(w * t) / w)
    out: np.ndarray = amplitude * (np.sin(phase) + 0.25 * np.sin(3 * phase)) / 1.25
    return out


@functools.lru_cache(maxsize=8)
def _siren_period(low_hz: float, high_hz: float, period_s: float,
                  amplitude: float) -> np.ndarray | None:
    """One sweep period (whole frames, whole carrier cycles) rendered once per process and
    looped; None when the phase would not close over a period (then frames are rendered
    one at a time)."""
    centre = (low_hz + high_hz) / 2
    frames = period_s * 1000 / FRAME_MS
    cycles = centre * period_s
    if abs(frames - round(frames)) > 1e-9 or abs(cycles - round(cycles)) > 1e-9:
        return None
    t = np.arange(int(round(frames)) * FRAME_SAMPLES, dtype=np.float64) / SAMPLE_RATE
    period = _siren_wave(low_hz, high_hz, period_s, amplitude, t).astype(DTYPE)
    period = period.reshape(-1, FRAME_SAMPLES)
    period.flags.writeable = False
    return period


class SilenceSource(SynthSource):
    """`seconds` of digital silence: a pause between items."""

    kind = "silence"

    def __init__(self, seconds: float = 1.0) -> None:
        super().__init__(seconds)

    def frame_at(self, index: int) -> np.ndarray:
        return SILENCE

    def _render(self, t: np.ndarray) -> np.ndarray:
        return np.zeros_like(t)


def write_tone_wav(path: str | Path, freq: float, seconds: float, rate: int = 48_000,
                   channels: int = 1, amplitude: float = 0.5) -> Path:
    """A 16-bit PCM WAV of a sine (the same in every channel), for tests and benchmarks."""
    path = Path(path)
    n = int(round(seconds * rate))
    x = amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)
    pcm = np.clip(np.rint(x * 32767.0), -32768, 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path
