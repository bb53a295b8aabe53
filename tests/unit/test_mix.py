import numpy as np

from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE, db_to_gain
from streamer.mixer.mix import GainRamp, SoftLimiter, add_scaled


def tone(freq, amp, n_frames, phase=0.0):
    t = np.arange(n_frames * FRAME_SAMPLES) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32).reshape(n_frames, -1)


def run_limiter(frames):
    lim = SoftLimiter(ceiling_db=-0.1)
    out = []
    for f in frames:
        bus = f.copy()
        lim.process(bus)
        out.append(bus)
    return np.concatenate(out)


def test_two_full_scale_sources_never_exceed_ceiling_or_wrap():
    a, b = tone(1000, 1.0, 100), tone(1000, 1.0, 100)  # in phase: sum peaks at 2.0
    c = tone(440, 1.0, 100)
    for mixed in (a + b, a + c):
        out = run_limiter(mixed)
        assert np.max(np.abs(out)) <= db_to_gain(-0.1) + 1e-6
        # no wrap: the sign of the output follows the input wherever the input is large
        big = np.abs(mixed.reshape(-1)) > 0.1
        assert np.all(np.sign(out[big]) == np.sign(mixed.reshape(-1)[big]))
        # and int16 conversion of it cannot overflow
        assert np.max(np.abs(np.rint(out * 32767))) <= 32767


def test_quiet_material_is_untouched():
    q = tone(1000, db_to_gain(-12), 50)
    out = run_limiter(q)
    assert np.array_equal(out, q.reshape(-1))


def test_limiter_releases_back_to_unity():
    loud = tone(1000, 2.0, 10)
    quiet = tone(1000, 0.25, 200)
    out = run_limiter(np.concatenate([loud, quiet]))
    tail = out[-FRAME_SAMPLES * 10:]
    assert abs(np.max(np.abs(tail)) - 0.25) < 0.01


def test_gain_ramp_moves_in_about_200ms():
    r = GainRamp(0.0, ramp_ms=200)
    r.target_db = -15.0
    steps = 0
    while not r.settled:
        r.advance()
        steps += 1
    assert 9 <= steps <= 11
    assert r.current_db == -15.0


def test_add_scaled_ramp_is_continuous():
    bus = np.zeros(FRAME_SAMPLES, np.float32)
    scratch = np.zeros_like(bus)
    add_scaled(bus, np.ones(FRAME_SAMPLES, np.float32), 1.0, 0.5, scratch)
    assert bus[0] <= 1.0 and abs(bus[-1] - 0.5) < 1e-3
    assert np.all(np.diff(bus) <= 0)
