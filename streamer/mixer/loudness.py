"""Integrated loudness after ITU-R BS.1770-4 (LUFS), mono.

K-weighting = a high shelf (+4 dB above ~1.7 kHz) followed by the RLB high-pass (~38 Hz). The
two biquads are built from their analog prototypes (the parameters libebur128 derived from the
standard's 48 kHz coefficients), so at 48 kHz they reproduce the coefficients printed in
BS.1770 and at any other rate they are the same filters. Gating: 400 ms blocks with 75 %
overlap, absolute gate -70 LUFS, relative gate -10 LU below the ungated loudness.

The meter is streaming: it keeps the filter state and one energy sum per 100 ms step, so an
hour of audio costs ~36,000 floats, never the samples. `measure_file` measures what Loa will
actually air: the file decoded, resampled to 48 kHz and downmixed to mono exactly as
FileSource does it (streamer.ingest.file.decode_mono48).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
BLOCK_S = 0.4
STEP_S = 0.1
_SUBS_PER_BLOCK = 4  # BLOCK_S / STEP_S


def k_weighting(rate: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((b, a) of the pre-filter shelf, (b, a) of the RLB high-pass) at `rate` Hz."""
    f0 = 1681.974450955533
    gain_db = 3.999843853973347
    q = 0.7071752369554196
    k = math.tan(math.pi * f0 / rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh ** 0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf_b = np.array([(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0,
                        (vh - vb * k / q + k * k) / a0])
    shelf_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0])

    f0 = 38.13547087602444
    q = 0.5003270373238773
    k = math.tan(math.pi * f0 / rate)
    a0 = 1.0 + k / q + k * k
    hp_b = np.array([1.0, -2.0, 1.0])
    hp_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0])
    return (shelf_b, shelf_a), (hp_b, hp_a)


def _lufs(mean_square: float) -> float:
    return -0.691 + 10.0 * math.log10(mean_square) if mean_square > 0 else -math.inf


class LoudnessMeter:
    """Feed mono float samples in any chunk sizes; ask `integrated()` at any time."""

    def __init__(self, rate: int = 48_000) -> None:
        if rate <= 0:
            raise ValueError("sample rate must be positive")
        self.rate = int(rate)
        (self._b1, self._a1), (self._b2, self._a2) = k_weighting(self.rate)
        self._z1 = np.zeros(2)
        self._z2 = np.zeros(2)
        self.samples = 0
        self.peak = 0.0                  # sample peak of the input (linear)
        self._subs: list[float] = []     # energy sum of each complete 100 ms step
        self._sub_lens: list[int] = []
        self._acc = 0.0                  # energy of the step being filled
        self._sub_start = 0              # sample index where that step began
        self._next_boundary = self._boundary(1)

    def _boundary(self, k: int) -> int:
        # steps are 100 ms on average even when 0.1 * rate is not a whole number of samples
        return int(round(k * self.rate * STEP_S))

    def feed(self, samples: np.ndarray) -> LoudnessMeter:
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        n = x.shape[0]
        if n == 0:
            return self
        self.peak = max(self.peak, float(np.max(np.abs(x))))
        y, self._z1 = lfilter(self._b1, self._a1, x, zi=self._z1)
        y, self._z2 = lfilter(self._b2, self._a2, y, zi=self._z2)
        np.square(y, out=y)
        cs = np.cumsum(y)
        start = self.samples          # absolute index of x[0]
        end = start + n
        booked = 0.0                  # cs value at the last boundary booked (cs[rel-1])
        while self._next_boundary <= end:
            rel = self._next_boundary - start
            total = float(cs[rel - 1]) if rel > 0 else 0.0
            self._acc += total - booked
            booked = total
            self._subs.append(self._acc)
            self._sub_lens.append(self._next_boundary - self._sub_start)
            self._acc = 0.0
            self._sub_start = self._next_boundary
            self._next_boundary = self._boundary(len(self._subs) + 1)
        self._acc += float(cs[-1]) - booked
        self.samples = end
        return self

    def block_loudness(self) -> np.ndarray:
        """Mean square (K-weighted) of every complete 400 ms block, 100 ms apart."""
        subs = np.asarray(self._subs)
        lens = np.asarray(self._sub_lens, dtype=np.float64)
        if subs.shape[0] < _SUBS_PER_BLOCK:
            return np.zeros(0)
        kernel = np.ones(_SUBS_PER_BLOCK)
        energy = np.convolve(subs, kernel, mode="valid")
        length = np.convolve(lens, kernel, mode="valid")
        return energy / length

    def integrated(self) -> float:
        """Gated integrated loudness in LUFS; -inf for silence (nothing above -70 LUFS).

        Audio shorter than one 400 ms block is measured as a single block, so a short beep
        gets a usable value instead of none.
        """
        z = self.block_loudness()
        if z.shape[0] == 0:
            if self.samples == 0:
                return -math.inf
            z = np.array([(sum(self._subs) + self._acc) / self.samples])
        with np.errstate(divide="ignore"):
            lj = -0.691 + 10.0 * np.log10(z)
        z = z[lj > ABSOLUTE_GATE_LUFS]
        if z.shape[0] == 0:
            return -math.inf
        relative_gate = _lufs(float(np.mean(z))) + RELATIVE_GATE_LU
        with np.errstate(divide="ignore"):
            lj = -0.691 + 10.0 * np.log10(z)
        z = z[lj > relative_gate]
        return _lufs(float(np.mean(z))) if z.shape[0] else -math.inf

    @property
    def peak_dbfs(self) -> float:
        return 20.0 * math.log10(self.peak) if self.peak > 0 else -math.inf

    @property
    def duration_s(self) -> float:
        return self.samples / self.rate


def integrated_loudness(samples: np.ndarray, rate: int) -> float:
    """Integrated loudness (LUFS) of mono float samples; -inf for silence."""
    return LoudnessMeter(rate).feed(samples).integrated()


@dataclass(frozen=True)
class LoudnessResult:
    integrated_lufs: float   # -inf for silence
    peak_dbfs: float         # sample peak of the 48 kHz mono signal Loa plays
    duration_s: float        # audio measured (capped by max_seconds)


def analyse_file(path: str | os.PathLike[str], max_seconds: float | None = None) -> LoudnessResult:
    """Loudness, peak and duration of a media file as Loa plays it. Blocking (decodes the
    file): call it from a worker thread or executor. Raises MediaError if the file cannot be
    decoded (including a file that breaks part-way)."""
    from streamer.audio import SAMPLE_RATE
    from streamer.ingest.file import decode_mono48

    meter = LoudnessMeter(SAMPLE_RATE)
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    gen = decode_mono48(path)
    pending: list[np.ndarray] = []   # decoder-sized chunks, fed ~1 s at a time (fewer calls)
    pending_n = 0
    try:
        for chunk in gen:
            if limit is not None and meter.samples + pending_n + chunk.shape[0] >= limit:
                pending.append(chunk[: limit - meter.samples - pending_n])
                break
            pending.append(chunk)
            pending_n += chunk.shape[0]
            if pending_n >= SAMPLE_RATE:
                meter.feed(np.concatenate(pending))
                pending, pending_n = [], 0
    finally:
        gen.close()
    if pending:
        meter.feed(np.concatenate(pending))
    return LoudnessResult(meter.integrated(), meter.peak_dbfs, meter.duration_s)


def measure_file(path: str | os.PathLike[str], max_seconds: float | None = None) -> float:
    """Integrated loudness (LUFS) of a media file as Loa plays it (see analyse_file)."""
    return analyse_file(path, max_seconds).integrated_lufs

