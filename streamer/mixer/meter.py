"""What each zone's loudspeakers are getting: the level of every programme after mix and limiter.

An engine output (`Runtime(outputs=[...])`, fed each tick like the RTP output): per distinct
programme it keeps a peak with a 60 dB/s fall-back and a 100 ms RMS, from the very PCM that is
encoded and sent. Per tick and programme that is two numpy reductions to scalars, no array is
allocated. `snapshot()` (any thread) maps them to zones. The live page shows it to the talker
while on air, so a muted or broken microphone shows as silence at the speakers within a second.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamer.audio import FRAME_MS, FRAME_SAMPLES

FLOOR_DB = -120.0


def to_db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 1e-6 else FLOOR_DB


class ProgrammeLevels:
    """Engine output: per programme peak (held, falling 60 dB/s) and RMS (100 ms)."""

    def __init__(self, fall_db_per_s: float = 60.0, rms_ms: float = 100.0) -> None:
        self._fall = 10 ** (-fall_db_per_s * FRAME_MS / 1000.0 / 20.0)   # per tick, linear
        self._alpha = min(1.0, FRAME_MS / rms_ms)
        self._lock = threading.Lock()
        self._levels: dict[Any, list[float]] = {}     # key -> [peak, mean square]
        self._programs: Mapping[Any, tuple[str, ...]] = {}
        self.tick = -1

    def on_tick(self, k: int, programs: Mapping[Any, tuple[str, ...]],
                frames: Mapping[Any, Any], markers: Any) -> None:
        levels = self._levels
        fall, a = self._fall, self._alpha
        with self._lock:
            self._programs = programs
            self.tick = k
            for key in programs:
                f = frames.get(key)
                if f is None:
                    continue
                bus: np.ndarray = f.bus
                peak = float(max(bus.max(), -bus.min()))
                ms = float(np.dot(bus, bus)) / FRAME_SAMPLES
                lv = levels.get(key)
                if lv is None:
                    levels[key] = [peak, ms]
                    continue
                lv[0] = peak if peak > lv[0] * fall else lv[0] * fall
                lv[1] += a * (ms - lv[1])
            if len(levels) > 2 * len(programs) + 8:   # programmes that are gone
                for key in [key for key in levels if key not in programs]:
                    del levels[key]

    def snapshot(self, zones: list[str] | tuple[str, ...] | None = None
                 ) -> dict[str, dict[str, float]]:
        """{zone: {peak_db, rms_db}} for the zones hearing a programme now (all, or `zones`)."""
        want = set(zones) if zones is not None else None
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for key, zs in self._programs.items():
                lv = self._levels.get(key)
                if lv is None:
                    continue
                entry = {"peak_db": round(to_db(lv[0]), 1),
                         "rms_db": round(to_db(math.sqrt(max(lv[1], 0.0))), 1)}
                for z in zs:
                    if want is None or z in want:
                        out[z] = entry
        return out
