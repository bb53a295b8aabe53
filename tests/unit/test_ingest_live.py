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


# -- a frame after its tick: concealed, then played, never skipped (issue 17) ----------------
def _frame(v: float) -> np.ndarray:
    return np.full(FRAME_SAMPLES, v, dtype=np.float32)


def test_an_empty_queue_mid_stream_gets_the_concealment_and_the_late_frame_still_plays():
    calls = []

    def conceal():
        calls.append(1)
        return _frame(-1.0)

    s = LiveSource(max_frames=4, prime_frames=1, trim_after=3, conceal=conceal)
    s.push(_frame(1))
    assert s.read()[0] == 1
    got = s.read()                            # frame 2 is late: the tick gets a stand-in
    assert got is not None and got[0] == -1.0 and s.concealed == 1 and s.underruns == 0
    for v in (2, 3):                          # the late frame, then the next one on time
        s.push(_frame(v))
    for v in range(4, 12):                    # ... and steady from then on, one per tick
        assert s.read()[0] == v - 2
        s.push(_frame(v))
    # the late frame played after the stand-in, and with speech going on nothing was dropped to
    # catch up (the drift trim would have after 3 deep reads): the queue is a frame deeper
    assert s.dropped_trim == 0 and s.dropped_overflow == 0 and s.caught_up == 0
    assert len(calls) == 1 and s.depth == 2
    # a pause: the quiet frame is left out and the queue is back to one frame
    s.push(_frame(0.001))
    assert s.read()[0] == 10
    s.push(_frame(12))
    assert s.read()[0] == 11 and s.depth == 2
    assert s.read()[0] == 12 and s.caught_up == 1 and s.depth == 0   # 0.001 left out
    s.push(_frame(13))
    assert s.read()[0] == 13 and s.dropped_trim == 0 and s.stats()["caught_up"] == 1


def test_concealment_is_bounded_and_absent_without_a_callback():
    s = LiveSource(max_frames=3, conceal=lambda: _frame(0.5), max_conceal=2)
    s.push(_frame(1))
    assert s.read() is not None
    assert s.read()[0] == 0.5 and s.read()[0] == 0.5
    assert s.read() is None and s.underruns == 1 and s.concealed == 2   # the talker stopped
    plain = LiveSource(max_frames=3)
    plain.push(_frame(1))
    plain.read()
    assert plain.read() is None and plain.underruns == 1 and plain.stats()["concealed"] == 0


def test_no_concealment_after_the_end_or_when_the_decoder_declines():
    s = LiveSource(max_frames=3, conceal=lambda: None)
    s.push(_frame(1))
    s.read()
    assert s.read() is None and s.underruns == 1          # declined (decoder busy): as before
    e = LiveSource(max_frames=3, conceal=lambda: _frame(0.5))
    e.push(_frame(1))
    e.read()
    e.end()
    assert e.read() is None and e.concealed == 0


def test_a_tick_the_decoder_could_not_conceal_is_taken_back_in_a_pause_not_by_the_trim():
    s = LiveSource(max_frames=4, prime_frames=1, trim_after=3, conceal=lambda: None)
    s.push(_frame(1))
    assert s.read()[0] == 1
    assert s.read() is None and s.underruns == 1          # late, and the decoder was busy
    for v in (2, 3):
        s.push(_frame(v))
    for v in range(4, 10):                                # speech: nothing dropped
        assert s.read()[0] == v - 2
        s.push(_frame(v))
    assert s.dropped_trim == 0 and s.depth == 2
    s.push(_frame(0.0))                                   # a pause takes the tick back
    assert s.read()[0] == 8
    s.push(_frame(10))
    assert s.read()[0] == 9
    assert s.read()[0] == 10                              # the pause was left out
    assert s.caught_up == 1 and s.depth == 0 and s.dropped_trim == 0


def _talk(s: LiveSource, late_every: int, reads: int, quiet_every: int = 10) -> None:
    """A talker whose frame comes after its tick once every `late_every` ticks, with a quiet
    frame (a pause) every `quiet_every`: push what arrived by each tick, then read."""
    v = 1
    pending = 0
    for k in range(reads):
        if k % late_every == late_every - 1:
            pending += 1                       # this tick's frame comes after the tick
        else:
            for _ in range(pending + 1):
                s.push(_frame(0.001 if v % quiet_every == 0 else 0.5))
                v += 1
            pending = 0
        s.read()


def test_late_frames_that_keep_coming_are_absorbed_by_the_frame_kept_not_concealed_each_time():
    # a late frame every 0.8 s (a loaded machine), pauses every 0.2 s
    eager = LiveSource(max_frames=4, conceal=lambda: _frame(-1.0))
    _talk(eager, late_every=40, reads=1000)
    assert eager.concealed >= 20 and eager.caught_up >= 20   # caught up, then late again
    held = LiveSource(max_frames=4, conceal=lambda: _frame(-1.0), catchup_after=100)
    _talk(held, late_every=40, reads=1000)
    assert held.concealed == 1 and held.caught_up == 0      # the kept frame absorbs the rest
    assert held.dropped_trim == 0 and held.underruns == 0


def test_a_one_off_late_frame_is_still_taken_back_after_the_hold():
    s = LiveSource(max_frames=4, conceal=lambda: _frame(-1.0), catchup_after=100)
    _talk(s, late_every=10_000, reads=10_000 - 1)   # never late: nothing concealed or kept
    assert s.concealed == 0 and s.caught_up == 0
    s2 = LiveSource(max_frames=4, conceal=lambda: _frame(-1.0), catchup_after=100)
    _talk(s2, late_every=50, reads=51)               # one late frame at the 50th tick
    assert s2.concealed == 1
    _talk(s2, late_every=10_000, reads=90)           # within the hold: the frame is kept
    assert s2.caught_up == 0 and s2.depth == 1       # (after the read: one frame kept)
    _talk(s2, late_every=10_000, reads=30)           # after it, the next pause takes it back
    assert s2.caught_up == 1 and s2.depth == 0 and s2.dropped_trim == 0


def test_only_one_frame_is_kept_more_owed_is_taken_back_in_the_next_pause():
    s = LiveSource(max_frames=8, conceal=lambda: _frame(-1.0), catchup_after=100)
    s.push(_frame(0.5))
    s.read()
    for _ in range(3):                 # three ticks without their frame (a jitter burst)
        s.read()
    assert s.concealed == 3
    for v in (0.001, 0.5, 0.5, 0.001, 0.5, 0.001, 0.5):   # they come, with pauses among them
        s.push(_frame(v))
    for _ in range(4):
        s.read()
    # two of the three owed frames taken back in pauses at once; one kept for the hold
    assert s.caught_up == 2 and s._late_debt == 1


def test_a_claim_starts_with_start_frames_and_grows_to_what_late_frames_ask():
    """A press on a link whose jitter asked for 6 frames starts as soon as 2 are queued
    (`start_frames`); each late frame is concealed and adds a frame of queue, up to what the
    arrivals ask; an underrun after that re-primes to the full `prime_frames`."""
    s = LiveSource(max_frames=8, prime_frames=6, start_frames=2, conceal=lambda: _frame(-1.0),
                   max_conceal=1)
    s.push(_frame(1))
    assert not s.ready() and s.read() is None and s.underruns == 0
    s.push(_frame(2))
    assert s.ready() and s.read()[0] == 1          # 2 queued: on air, not after 6
    assert s.read()[0] == 2
    assert s.read()[0] == -1.0 and s.concealed == 1   # frame 3 late: concealed, owed
    for v in (3, 4):                               # it comes, with the next: one frame deeper
        s.push(_frame(v))
    assert s.read()[0] == 3 and s.depth == 1
    # nothing is taken back while the queue is not deeper than the depth the jitter asked for
    for v in range(5, 20):
        s.push(_frame(v))
        assert s.read()[0] == v - 1
    assert s.caught_up == 0 and s.dropped_trim == 0 and s.depth == 1
    assert s.read()[0] == 19
    assert s.read()[0] == -1.0                     # one concealment allowed in a row
    assert s.read() is None and s.underruns == 1   # then silence and a re-prime ...
    for v in range(20, 25):
        s.push(_frame(v))
        assert s.read() is None                    # ... to the full depth this time
    s.push(_frame(25))
    assert s.read()[0] == 20


def test_start_frames_defaults_to_prime_frames_and_cannot_exceed_it():
    s = LiveSource(max_frames=4, prime_frames=3)
    assert s.start_frames == 3
    with pytest.raises(ValueError):
        LiveSource(max_frames=4, prime_frames=2, start_frames=3)
    with pytest.raises(ValueError):
        LiveSource(max_frames=4, prime_frames=2, start_frames=0)
