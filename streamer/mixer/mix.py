"""The mix bus: float32 sums, gain ramps and a soft limiter before the encoder.

All state lives in small objects the engine keeps per program; buffers are preallocated so the
per-tick path does not allocate.
"""
from __future__ import annotations

import numpy as np

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES, db_to_gain

_RAMP = np.linspace(0.0, 1.0, FRAME_SAMPLES, endpoint=False, dtype=DTYPE) + DTYPE(1.0 / FRAME_SAMPLES)


class GainRamp:
    """A gain that moves to its target linearly in dB over `ramp_ms`, sample-smooth within a frame."""

    __slots__ = ("current_db", "target_db", "step_db")

    def __init__(self, gain_db: float = 0.0, ramp_ms: float = 200.0) -> None:
        self.current_db = gain_db
        self.target_db = gain_db
        self.step_db = 0.0
        self.set_ramp(ramp_ms)

    def set_ramp(self, ramp_ms: float, span_db: float = 15.0) -> None:
        ticks = max(1.0, ramp_ms / FRAME_MS)
        self.step_db = span_db / ticks

    def advance(self) -> tuple[float, float]:
        """Gains (linear) at the start and end of this frame."""
        start = self.current_db
        if self.current_db != self.target_db:
            d = self.target_db - self.current_db
            if abs(d) <= self.step_db:
                self.current_db = self.target_db
            else:
                self.current_db += self.step_db if d > 0 else -self.step_db
        return db_to_gain(start), db_to_gain(self.current_db)

    @property
    def settled(self) -> bool:
        return self.current_db == self.target_db


def add_scaled(bus: np.ndarray, frame: np.ndarray, g0: float, g1: float,
               scratch: np.ndarray) -> None:
    """bus += frame * gain, the gain moving from g0 to g1 across the frame."""
    if g0 == g1:
        if g0 == 1.0:
            bus += frame
        else:
            np.multiply(frame, DTYPE(g0), out=scratch)
            bus += scratch
        return
    np.multiply(_RAMP, DTYPE(g1 - g0), out=scratch)
    scratch += DTYPE(g0)
    scratch *= frame
    bus += scratch


class SoftLimiter:
    """Keeps the bus under `ceiling_db` without wrapping or hard clipping.

    Gain reduction attacks within the frame where a peak appears and releases smoothly; a final
    soft knee (tanh) catches what the envelope leaves. Material below `knee_db` passes unchanged
    while no gain reduction is active.
    """

    __slots__ = ("ceiling", "knee", "gain", "release", "_scratch", "reductions")

    def __init__(self, ceiling_db: float = -0.1, knee_db: float = -3.0,
                 release_ms: float = 250.0) -> None:
        self.ceiling = db_to_gain(ceiling_db)
        self.knee = db_to_gain(knee_db)
        self.gain = 1.0
        # per-frame multiplicative release towards unity
        self.release = 10.0 ** ((6.0 / 20.0) * FRAME_MS / release_ms)  # 6 dB per release_ms
        self._scratch = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
        self.reductions = 0

    def process(self, bus: np.ndarray) -> np.ndarray:
        # two reductions, no |bus| temporary: this runs once per program per tick
        peak = max(float(bus.max()), -float(bus.min()))
        start = self.gain
        want = min(1.0, self.knee / peak) if peak > self.knee else 1.0
        if want < start:
            target = want  # attack: reach the needed gain within this frame
            self.reductions += 1
        else:
            target = min(want, start * self.release, 1.0)
        self.gain = target
        if start != 1.0 or target != 1.0:
            if start == target:
                bus *= DTYPE(target)
            else:
                # a sample-smooth move, but never above what this frame's peak allows
                np.multiply(_RAMP, DTYPE(target - start), out=self._scratch)
                self._scratch += DTYPE(start)
                if target < start:
                    np.minimum(self._scratch, DTYPE(max(target, want)), out=self._scratch)
                bus *= self._scratch
        # soft knee above `knee`: y = knee + (ceil-knee) * tanh((|x|-knee)/(ceil-knee))
        if start != 1.0 or target != 1.0:   # the gain moved the samples: measure again
            peak = max(float(bus.max()), -float(bus.min()))
        if peak > self.knee:
            span = self.ceiling - self.knee
            mag = np.abs(bus)
            over = mag > self.knee
            soft = self.knee + span * np.tanh((mag[over] - self.knee) / span)
            bus[over] = np.sign(bus[over]) * soft
        return bus
