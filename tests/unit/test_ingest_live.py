"""LiveSource: the bounded jitter queue between a live input and the tick."""

import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES
from streamer.ingest.live import LiveSource


def ramp(n, start=0):
    return (np.arange(start, start + n) % 1000).astype(np.float32) / 1000


def test_rechunks_any_length_into_960_sample_frames():
    s = LiveSource(max_frames=10)
    x = ramp(960 * 3)
    for chunk in (x[:100], x[100:1500], x[1500:2880]):
        s.push(chunk)
    out = [s.read() for _ in range(3)]
    assert all(f is not None and f.shape == (FRAME_SAMPLES,) and f.dtype == np.float32 for f in out)
    assert np.array_equal(np.concatenate(out), x)
    assert s.read() is None and s.underruns == 1


def test_overflow_drops_oldest_and_counts():
    s = LiveSource(max_frames=3)
    for i in range(5):
        s.push(np.full(FRAME_SAMPLES, i, dtype=np.float32))
    assert s.depth == 3 and s.dropped_overflow == 2
    assert s.latency_ms == 60
    assert [int(s.read()[0]) for _ in range(3)] == [2, 3, 4]


def test_not_ready_until_primed_then_underrun_reprimes():
    s = LiveSource(max_frames=3, prime_frames=2)
    assert not s.ready() and s.read() is None and s.underruns == 0  # never started: no underrun
    s.push(np.ones(FRAME_SAMPLES, np.float32))
    assert not s.ready() and s.read() is None
    s.push(np.ones(FRAME_SAMPLES, np.float32))
    assert s.ready()
    assert s.read() is not None and s.read() is not None
    assert s.read() is None and s.underruns == 1
    s.push(np.ones(FRAME_SAMPLES, np.float32))
    assert s.read() is None  # priming again after an underrun
    assert s.underruns == 2


def test_drift_trim_pulls_latency_back_down():
    s = LiveSource(max_frames=3, prime_frames=1, trim_after=10)
    s.push(np.zeros(FRAME_SAMPLES * 3, np.float32))
    for _ in range(40):  # producer a frame ahead of the consumer, steadily
        s.push(np.zeros(FRAME_SAMPLES, np.float32))
        assert s.read() is not None
    assert s.dropped_trim >= 1
    assert s.depth <= 2


def test_end_finishes_after_queue_drains_and_close_runs_callbacks_once():
    s = LiveSource()
    calls = []
    s.on_close(lambda: calls.append(1))
    s.push(np.zeros(FRAME_SAMPLES, np.float32))
    s.end()
    assert not s.finished and s.live
    assert s.read() is not None
    assert s.finished
    s.push(np.zeros(FRAME_SAMPLES, np.float32))  # ignored after the end
    assert s.depth == 0
    s.close()
    s.close()
    assert calls == [1]


def test_bad_parameters():
    with pytest.raises(ValueError):
        LiveSource(max_frames=2, prime_frames=3)
