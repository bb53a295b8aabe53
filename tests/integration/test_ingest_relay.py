"""The relay source (streamer/ingest/relay.py) against a local upstream served by aiohttp at
real-time pace: it plays the stream, reconnects after the upstream is cut and restored, raises
dead air after `silence_s`, and plays the fallback meanwhile. Read at the tick's pace (20 ms)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from streamer.ingest.base import MediaError
from streamer.ingest.relay import RelaySource
from streamer.ingest.tones import ToneSource
from tests.integration.relay_upstream import Upstream, make_stream

pytestmark = pytest.mark.integration


def dominant_hz(frames: list[np.ndarray]) -> float:
    x = np.concatenate(frames)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * 48_000 / len(x))


def tick(src: RelaySource, seconds: float, notices: list[str]) -> list[np.ndarray]:
    """Read like the engine's tick for `seconds`: one frame per 20 ms, never waiting on it."""
    out: list[np.ndarray] = []
    t0 = time.monotonic()
    n = int(seconds * 50)
    for k in range(n):
        time.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))
        r0 = time.perf_counter()
        f = src.read()
        assert time.perf_counter() - r0 < 0.005, "read() must not block"
        if src.notice:
            notices.append(src.notice)
            src.notice = None
        if f is not None:
            assert f.shape == (960,) and f.dtype == np.float32
            out.append(f)
    return out


@pytest.mark.parametrize("fmt,ctype,freq", [("mp3", "audio/mpeg", 1000.0),
                                            ("ogg", "application/ogg", 700.0)])
def test_relay_plays_reconnects_and_falls_back_on_dead_air(tmp_path, fmt, ctype, freq):
    stream = make_stream(tmp_path / f"a.{fmt}", freq, fmt=fmt)
    up = Upstream(stream, content_type=ctype, bytes_per_s=8000 if fmt == "mp3" else 12000)
    src = RelaySource(up.url, fallback=lambda s: ToneSource(440.0, 1.5), silence_s=1.0,
                      reconnect_max_s=1.0)
    notices: list[str] = []
    try:
        src.start()
        deadline = time.monotonic() + 10
        while not src.ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert src.connects == 1, src.last_error
        live = tick(src, 2.0, notices)
        assert len(live) >= 90
        assert abs(dominant_hz(live[-50:]) - freq) < 10
        assert notices == []

        up.cut()
        down = tick(src, 3.5, notices)   # the queue's second drains, then 1 s of dead air
        assert src.dead_air_events == 1, (notices, src.last_error)
        assert any(n.startswith("dead air") for n in notices), notices
        assert src.fallback_frames > 40
        assert abs(dominant_hz(down[-50:]) - 440.0) < 10   # the fallback is on air
        assert src.drops >= 1

        up.restore()
        back = tick(src, 4.0, notices)
        assert src.connects >= 2 and up.connections >= 2   # it reconnected by itself
        assert src.restores == 1 and any(n.startswith("relay restored") for n in notices)
        assert abs(dominant_hz(back[-50:]) - freq) < 10
        assert src.dead_air_events == 1   # raised once per outage
    finally:
        src.close()
        up.close()


def test_silent_upstream_is_dead_air_and_a_finished_fallback_loops(tmp_path):
    tone = make_stream(tmp_path / "t.mp3", 1000.0)
    quiet = make_stream(tmp_path / "q.mp3", 1000.0, amplitude=0.0)
    up = Upstream(tone, silent=quiet)
    src = RelaySource(up.url, fallback=lambda s: ToneSource(440.0, 0.3), silence_s=0.6,
                      reconnect_max_s=1.0)
    notices: list[str] = []
    try:
        src.start()
        deadline = time.monotonic() + 10
        while not src.ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        tick(src, 1.0, notices)
        up.muted = True
        out = tick(src, 4.0, notices)
        assert src.dead_air_events == 1 and src.connects == 1   # connected, but silent
        # a 0.3 s fallback looped for the rest of the silence
        assert src.fallback_frames > 60, src.fallback_frames
        assert abs(dominant_hz(out[-30:]) - 440.0) < 15
    finally:
        src.close()
        up.close()


def test_a_relay_ends_after_its_seconds_and_counts_a_join(tmp_path):
    up = Upstream(make_stream(tmp_path / "a.mp3", 1000.0))
    src = RelaySource(up.url, silence_s=5.0, seconds=3.0, start_s=2.0)
    try:
        src.start()
        assert src.position_s == 2.0
        tick(src, 1.2, [])
        assert src.finished and abs(src.position_s - 3.0) < 0.03
    finally:
        src.close()
        up.close()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.mp3", "http:///nohost",
                                 "rtmp://127.0.0.1/live", "javascript:alert(1)"])
def test_only_http_urls_are_relayed(url):
    with pytest.raises(MediaError):
        RelaySource(url)
