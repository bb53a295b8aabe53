"""The frame format every part of Loa agrees on.

Audio inside Loa is 48 kHz mono float32 in [-1, 1], cut into 20 ms frames of 960 samples.
Float keeps headroom on the mix bus; the limiter brings it back under full scale before the
encoder sees it.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 48_000
CHANNELS = 1
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
FRAME_NS = FRAME_MS * 1_000_000
DTYPE = np.float32

SILENCE = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
SILENCE.setflags(write=False)


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def to_int16(frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [-1, 1] -> int16, saturating (never wrapping)."""
    if out is None:
        out = np.empty(frame.shape, dtype=np.int16)
    tmp = np.clip(frame * 32767.0, -32768.0, 32767.0)
    np.rint(tmp, out=tmp)
    out[:] = tmp
    return out
