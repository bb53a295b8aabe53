"""A playlist with a text (real espeak-ng) joined in progress past the text: the text is
measured before the start (streamer/ingest/sequence.py SequenceSource.place), with the length
its own source plays, so the join lands in the next item at the right offset. Measured: the time
the measuring adds before the first frame (uncached, then from the TTS cache)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from streamer.ingest.catalogue import Catalogue
from streamer.port import PlaylistAudio, ToneAudio, TtsAudio
from streamer.tts.cache import TtsCache
from streamer.tts.service import TtsService
from tests.conftest import require_tool

pytestmark = pytest.mark.integration

TEXT = ("Thông báo của Ủy ban nhân dân xã. Ngày mai có mưa lớn. "
        "Bà con chú ý giữ an toàn và theo dõi loa truyền thanh.")


def read_all(src, limit_s: float = 30.0) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    deadline = time.monotonic() + limit_s
    while not src.finished and time.monotonic() < deadline:
        f = src.read()
        if f is None:
            time.sleep(0.005)
            continue
        out.append(f.copy())
    return out


def dominant_hz(frames: list[np.ndarray]) -> float:
    x = np.concatenate(frames)
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * 48_000 / len(x))


def test_a_playlist_joined_past_a_text_lands_in_the_next_item(tmp_path):
    require_tool("espeak-ng", "the offline TTS engine")
    # the text's length as its own source plays it (another catalogue: nothing shared)
    alone = Catalogue(loudness_target=-16.0).open(TtsAudio(TEXT))
    alone.start()
    text_frames = len(read_all(alone))
    alone.close()
    text_s = text_frames * 0.02
    assert text_s > 3.0

    # the server's TTS cache is a directory (sentences rendered before are read back)
    svc = TtsService(cache=TtsCache(tmp_path / "tts"), loudness_target=-16.0)
    cat = Catalogue(loudness_target=-16.0, tts=svc)
    make = cat.factory(PlaylistAudio((TtsAudio(TEXT), ToneAudio(800.0, 30.0, -6.0))))
    src = make(text_s + 1.0)
    t0 = time.monotonic()
    src.start()
    first_s = time.monotonic() - t0
    try:
        assert src._index == 1 and src._offset == pytest.approx(1.0, abs=0.021)
        assert src.parts[0].duration_s == pytest.approx(text_s, abs=1e-6)
        frames = [src.read() for _ in range(25)]
        assert all(f is not None for f in frames)
        assert abs(dominant_hz(frames) - 800.0) < 10
        assert src.position_s == pytest.approx(text_s + 1.5, abs=0.03)
    finally:
        src.close()
    # again from this factory's knowledge, and a new factory from the TTS cache
    again = make(text_s + 2.0)
    assert again._placed and again._index == 1
    misses = svc.cache.misses
    cached = Catalogue(loudness_target=-16.0, tts=svc).factory(
        PlaylistAudio((TtsAudio(TEXT), ToneAudio(800.0, 30.0))))(text_s + 2.0)
    t1 = time.monotonic()
    cached.place()
    cached_s = time.monotonic() - t1
    assert cached._index == 1 and svc.cache.misses == misses   # nothing rendered again
    print(f"text {text_s:.2f} s; measuring before the first frame: uncached {first_s * 1000:.0f}"
          f" ms (measured_s {src.measured_s * 1000:.0f} ms), from the cache {cached_s * 1000:.1f} ms")
