from __future__ import annotations

import os
import time

import numpy as np
import pytest

import streamer.ingest.file as file_mod
from streamer.audio import FRAME_SAMPLES
from streamer.ingest.base import MediaError
from streamer.ingest.file import FileSource, probe
from tests.conftest import tone, write_wav


def drain(src: FileSource, timeout: float = 5.0, limit: int | None = None) -> list[np.ndarray]:
    """Read until finished (or `limit` frames), copying each frame, polling on underrun."""
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    while not src.finished and (limit is None or len(frames) < limit):
        f = src.read()
        if f is None:
            assert time.monotonic() < deadline, "source did not finish in time"
            time.sleep(0.001)
            continue
        assert f.shape == (FRAME_SAMPLES,) and f.dtype == np.float32
        frames.append(f.copy())
    return frames


def play(path, **kw) -> tuple[FileSource, list[np.ndarray]]:
    src = FileSource(path, **kw)
    src.start()
    try:
        frames = drain(src)
    finally:
        src.close()
    return src, frames


# --------------------------------------------------------------------------- formats


def test_probe_is_fast(tone_files):
    path, _ = tone_files["stereo_44k1.mp3"]
    t0 = time.perf_counter()
    for _ in range(5):
        probe(path)
    assert (time.perf_counter() - t0) / 5 < 0.5


# --------------------------------------------------------------------------- bad input

def _assert_rejected(path, *words):
    with pytest.raises(MediaError) as ei:
        probe(path)
    msg = str(ei.value)
    assert msg and os.path.basename(os.fspath(path).rstrip("/")) in msg
    for w in words:
        assert w in msg.lower(), msg
    # the source fails the same way: error set, nothing played, finished, thread gone
    src = FileSource(path)
    src.start()
    assert drain(src, timeout=3.0) == []
    assert src.error and src.finished
    src.close()
    assert not src.worker_alive
    return msg


def test_permission_denied_message(tmp_path, monkeypatch):
    p = write_wav(tmp_path / "secret.wav", tone(440, 0.2, 8000), 8000)
    real_open = os.open

    def deny(path, *a, **kw):
        if os.fspath(path) == str(p):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(file_mod.os, "open", deny)
    with pytest.raises(MediaError, match="permission denied"):
        probe(p)


# --------------------------------------------------------------------------- rewind


# --------------------------------------------------------------------------- threading


# --------------------------------------------------------------------------- gain


def test_loudness_normalisation_and_clamp(segments_wav):
    src = FileSource(segments_wav, loudness_target_lufs=-23.0, measured_lufs=-17.0)
    assert src.gain_db == pytest.approx(-6.0)
    src = FileSource(segments_wav, loudness_target_lufs=-16.0, measured_lufs=-60.0, gain_db=1.0)
    assert src.gain_db == pytest.approx(21.0)   # +20 clamp, then the operator's +1
    src = FileSource(segments_wav, loudness_target_lufs=-16.0, measured_lufs=None)
    assert src.gain_db == 0.0
    src = FileSource(segments_wav, loudness_target_lufs=-16.0, measured_lufs=float("-inf"))
    assert src.gain_db == 0.0


