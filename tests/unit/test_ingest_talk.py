"""Press to talk, the pure parts: the pre-roll a claim starts with, the release fade, and the
receive queue depth asked for by arrival jitter."""
import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES
from streamer.ingest.talk import (EDGE_PCT, MARGIN_NS, ArrivalJitter, ArrivalPhase, FadeOut,
                                  Preroll)


def frame(v: float) -> np.ndarray:
    return np.full(FRAME_SAMPLES, v, dtype=np.float32)


def test_preroll_starts_at_the_unmute():
    p = Preroll(capacity=8)
    for v in (0.0, 0.0, 0.0, 0.2, 0.3, 0.001):   # muted, then the press, then a quiet frame
        p.push(frame(v))
    got = p.since_unmute()
    assert [float(f[0]) for f in got] == pytest.approx([0.2, 0.3, 0.001])


def test_preroll_is_empty_while_the_live_edge_is_muted():
    p = Preroll(capacity=4)
    for v in (0.5, 0.5, 0.0):
        p.push(frame(v))
    assert p.since_unmute() == []


def test_preroll_keeps_only_the_newest_frames():
    p = Preroll(capacity=5)
    for i in range(12):
        p.push(frame(0.01 * (i + 1)))
    assert len(p) == 5
    got = p.since_unmute(max_frames=3)
    assert [round(float(f[0]), 2) for f in got] == [0.10, 0.11, 0.12]
    with pytest.raises(ValueError):
        Preroll(0)


def test_fade_out_ramps_to_silence_over_its_frames():
    f = FadeOut(frames=3)
    outs = [f.apply(frame(1.0)) for _ in range(3)]
    assert f.done
    x = np.concatenate(outs)
    assert x[0] == pytest.approx(1.0, abs=1e-3) and x[-1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(x) <= 1e-7)          # never gets louder
    assert not np.any(f.apply(frame(1.0)))      # after the fade: silence
    with pytest.raises(ValueError):
        FadeOut(0)


def test_clean_link_needs_one_frame_of_queue():
    j = ArrivalJitter()
    for k in range(100):
        j.add(k * 960, 10.0 + k * 0.02 + 0.0003 * (k % 3))
    assert j.depth_frames() == 1


def test_jittery_link_asks_for_a_deeper_queue_and_the_rtp_clock_may_wrap():
    rng = np.random.default_rng(7)
    j = ArrivalJitter()
    ts0 = 0xFFFFFFFF - 960 * 30   # the timestamp wraps around a third of the way in
    for k in range(100):
        j.add((ts0 + k * 960) & 0xFFFFFFFF, 5.0 + k * 0.02 + float(rng.uniform(0, 0.08)))
    assert 60 < j.spread_ms < 80
    assert 4 <= j.depth_frames() <= 5


# -- the arrival phase the tick lines up with (issue 17) -------------------------------------
def _arrivals(phase_ns: int, jitter_ns: list[int], t0: int = 5_000_000_000) -> ArrivalPhase:
    a = ArrivalPhase(window=50)
    for i, j in enumerate(jitter_ns):
        a.add(t0 + i * 20_000_000 + phase_ns + j)
    return a


@pytest.mark.parametrize("phase_ms", [0.5, 3.0, 11.0, 19.7])
def test_arrival_phase_puts_the_tick_just_after_the_late_edge(phase_ms):
    rng = np.random.default_rng(3)
    jit = [int(x) for x in rng.integers(0, 2_000_000, 60)]   # 0..2 ms late
    a = _arrivals(int(phase_ms * 1e6), jit)
    got = a.phase_ns(margin_ns=1_000_000)
    assert got is not None
    # the late edge is the arrivals' EDGE_PCT percentile (the window holds all 60)
    want = (phase_ms + 1.0 + np.percentile(jit, EDGE_PCT) / 1e6) % 20
    # circular distance to the expected phase (the wrap at 20 ms included)
    d = abs((got / 1e6 - want + 10) % 20 - 10)
    assert d < 0.5, (got, want)


def test_arrival_phase_needs_enough_frames_and_a_narrow_spread():
    assert _arrivals(4_000_000, [0] * 10).phase_ns() is None
    assert _arrivals(4_000_000, [0] * 30).phase_ns() is not None
    rng = np.random.default_rng(1)
    wide = [int(x) for x in rng.integers(0, 18_000_000, 60)]
    assert _arrivals(4_000_000, wide).phase_ns() is None


# -- the receive queue depth against the tick's phase ----------------------------------------
@pytest.mark.parametrize("phase_ms", [0.4, 7.0, 18.9])
def test_one_frame_of_queue_when_the_arrivals_all_come_before_the_aligned_tick(phase_ms):
    rng = np.random.default_rng(11)
    jit = [int(x) for x in rng.normal(0, 600_000, 60)]         # ~0.6 ms arrival jitter
    a = _arrivals(int(phase_ms * 1e6), jit)
    tick = a.phase_ns()
    assert tick is not None
    assert a.queue_frames(tick) == 1
    # anywhere in the window before the arrivals (they come just after a tick): one frame too
    assert a.queue_frames((int(phase_ms * 1e6) - 6_000_000) % 20_000_000) == 1


@pytest.mark.parametrize("phase_ms", [0.2, 10.0, 19.8])
def test_two_frames_when_the_arrivals_straddle_the_tick(phase_ms):
    rng = np.random.default_rng(5)
    jit = [int(x) for x in rng.uniform(-1_500_000, 1_500_000, 60)]   # ±1.5 ms around it
    a = _arrivals(int(phase_ms * 1e6), jit)
    # a tick in the middle of the arrivals, at either edge of them, wrapped around the period
    for off_ms in (0.0, 1.2, -1.2):
        assert a.queue_frames(int((phase_ms + off_ms) * 1e6) % 20_000_000) == 2, off_ms
    # the same arrivals with the tick 3 ms after them: one
    assert a.queue_frames(int((phase_ms + 3.0) * 1e6) % 20_000_000) == 1


def test_the_arrivals_late_edge_decides_not_their_mean():
    # most frames at 5 ms, one in ten 4 ms later (a busy core): a tick at 7 ms would catch the
    # mean but miss those; at 10 ms it catches them all
    jit = [4_000_000 if i % 10 == 0 else 0 for i in range(60)]
    a = _arrivals(5_000_000, jit)
    assert a.queue_frames(7_000_000) == 2
    assert a.queue_frames(10_000_000) == 1


# -- one definition for the alignment and the depth (issue 17) --------------------------------
def _skewed(rng: np.random.Generator, n: int = 100) -> list[int]:
    """What a loaded machine gives: most frames within ~0.5 ms, a tail of some late by
    1-6 ms (a receive path scheduled late), a share of them chosen at random."""
    base = rng.normal(0, rng.uniform(50_000, 700_000), n)
    late = rng.random(n) < rng.uniform(0.0, 0.15)
    tail = rng.uniform(1_000_000, rng.uniform(1_500_000, 6_000_000), n)
    return [int(x) for x in base + late * tail]


@pytest.mark.parametrize("seed", range(40))
def test_the_aligned_tick_always_gets_one_frame(seed):
    # the tick is placed from the arrivals' edges and the depth judged from the same edges and
    # margin: wherever phase_ns puts the tick, queue_frames says 1 (before, the alignment used
    # p90 + 1 ms and the depth p5..p95 + 0.25 ms: a tail between p90 and p95 gave 2 frames
    # right after aligning, a third of claims under load)
    rng = np.random.default_rng(seed)
    a = ArrivalPhase(window=100)
    phase = int(rng.integers(0, 20_000_000))
    for i, j in enumerate(_skewed(rng)):
        a.add(9_000_000_000 + i * 20_000_000 + phase + j)
    tick = a.phase_ns()
    if tick is None:   # spread too wide for any phase: nothing to align
        return
    assert a.queue_frames(tick) == 1
    # and the depth rule's boundary is the tick's margin after the same late edge
    mean, lo, hi = a.edges()
    just_before = int(round(mean + hi + 0.5 * MARGIN_NS)) % 20_000_000
    assert a.queue_frames(just_before) == 2


def test_late_edge_and_margin_are_the_ones_of_the_module():
    # 8 % of frames 3 ms late: the tick goes 1 ms after them, not amid them
    jit = [3_000_000 if i % 12 == 0 else 0 for i in range(100)]
    a = ArrivalPhase(window=100)
    for i, j in enumerate(jit):
        a.add(3_000_000_000 + i * 20_000_000 + 5_000_000 + j)
    tick = a.phase_ns()
    assert tick is not None
    mean, lo, hi = a.edges()
    assert hi > 2_500_000   # the late frames are the edge
    assert abs((tick - (mean + hi + MARGIN_NS)) % 20_000_000) < 2   # ns rounding
    assert a.queue_frames(tick) == 1
    assert a.queue_frames(int(mean + 2_000_000)) == 2   # a tick among the late frames


def test_describe_reports_the_spread_and_where_the_tick_falls():
    a = _arrivals(4_000_000, [0] * 40 + [2_000_000] * 10)
    d = a.describe(tick_phase_ns=7_000_000)
    assert d["frames"] == 50 and d["min_ms"] < 0 < d["max_ms"]
    assert d["p1_ms"] <= d["p50_ms"] <= d["p99_ms"] <= d["max_ms"]
    assert abs(d["max_ms"] - d["min_ms"] - 2.0) < 1e-6
    assert 2.0 < d["tick_after_mean_ms"] < 3.0   # 7 ms against a mean of 4.4 ms
    assert ArrivalPhase().describe() == {}


def test_queue_depth_by_phase_needs_enough_arrivals():
    assert _arrivals(4_000_000, [0] * 10).queue_frames(6_000_000) is None
    assert _arrivals(4_000_000, [0] * 30).queue_frames(6_000_000) == 1


def test_the_claim_depth_comes_from_the_phase_only_on_a_link_with_little_jitter():
    from streamer.ingest.talk import claim_queue_frames
    a = _arrivals(4_000_000, [0] * 50)
    assert claim_queue_frames(2, a, 6_000_000) == 1     # the spread asked for 2: the phase says 1
    assert claim_queue_frames(1, a, 4_000_000) == 2     # a tick amid the arrivals
    assert claim_queue_frames(2, a, None) == 2          # phase unknown (remote engine)
    assert claim_queue_frames(5, a, 6_000_000) == 5     # a jittery link keeps its depth
    assert claim_queue_frames(2, ArrivalPhase(), 6_000_000) == 2   # no arrivals measured yet


@pytest.mark.parametrize("depth,pre,conceal,want", [
    (1, 0, True, 1), (2, 1, True, 2),          # shallow: the depth itself
    (8, 1, True, 2), (10, 0, True, 2),         # deep, little pre-roll: start with 2
    (8, 5, True, 5), (8, 12, True, 8),         # the pre-roll already holds frames: use them
    (8, 1, False, 8), (3, 0, False, 3),        # no decoder to conceal: the full depth
])
def test_a_claim_starts_with_the_frames_it_has_where_late_frames_can_be_concealed(
        depth, pre, conceal, want):
    from streamer.ingest.talk import START_FRAMES, claim_start_frames
    assert START_FRAMES == 2
    assert claim_start_frames(depth, pre, conceal) == want
