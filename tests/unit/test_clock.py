import random

from streamer.audio import FRAME_NS
from streamer.clock import TickSchedule


def simulate(n_ticks: int, jitter_ns: int, late_at: dict[int, int] | None = None, seed: int = 1):
    """Drive the schedule like the tick thread does, with wake-up jitter and stalls."""
    rng = random.Random(seed)
    sched = TickSchedule(start_ns=1_000_000_000)
    now = sched.start_ns
    run_times = []
    late_at = late_at or {}
    while len(run_times) < n_ticks:
        wait = sched.sleep_ns(now)
        now += wait + rng.randint(0, jitter_ns)  # the OS wakes us a little late
        k = sched.begin_tick(now)
        run_times.append((k, now))
        now += 300_000 + late_at.get(k, 0)  # work done in the tick (plus an occasional stall)
    return sched, run_times


def test_mean_period_error_below_0_1_percent_over_10000_ticks():
    sched, runs = simulate(10_000, jitter_ns=2_000_000)
    (k0, t0), (k1, t1) = runs[0], runs[-1]
    mean_period = (t1 - t0) / (k1 - k0)
    assert abs(mean_period - FRAME_NS) / FRAME_NS < 0.001
    # and no tick drifted: every tick ran within the jitter bound of its own target
    assert all(t - sched.deadline(k) <= 2_000_000 + 1 for k, t in runs)


def test_late_tick_does_not_shift_later_ticks():
    # tick 100 stalls for 55 ms (almost three periods)
    sched, runs = simulate(300, jitter_ns=0, late_at={100: 55_000_000})
    by_k = dict(runs)
    # the ticks that fell due during the stall run at once (catch up)...
    assert by_k[101] - sched.deadline(101) > 0
    # ...and from then on every tick runs exactly at its own target again
    for k in range(104, 300):
        assert by_k[k] == sched.deadline(k)
    assert sched.late_ticks >= 1
    assert sched.skipped_ticks == 0


def test_long_stall_skips_instead_of_bursting():
    sched, runs = simulate(100, jitter_ns=0, late_at={10: 2_000_000_000})
    assert sched.skipped_ticks > 50
    ks = [k for k, _ in runs]
    assert ks == sorted(ks) and len(set(ks)) == len(ks)
    # after the skip, ticks are back on their targets
    assert runs[-1][1] == sched.deadline(runs[-1][0])


# -- phase alignment (issue 17): the phase moves, the period never does -----------------------
def test_align_moves_the_phase_within_half_a_period_of_the_origin_and_keeps_the_period():
    for start, phase, move in ((1_000_000_000, 7_000_000, 7_000_000),       # later by 7 ms
                               (1_000_000_000, 13_000_000, -7_000_000),     # earlier by 7 ms
                               (1_003_000_000, 1_000_000, -2_000_000),
                               (1_019_000_000, 1_000_000, 2_000_000)):      # across the wrap
        s = TickSchedule(start_ns=start)
        s.k = 40
        before = s.deadline()
        assert s.align(phase) == move
        assert s.phase_ns == phase
        assert s.deadline() == before + move
        assert s.deadline(s.k + 1) - s.deadline() == FRAME_NS
        assert s.phase_shifts == 1


def test_align_within_tolerance_does_nothing():
    s = TickSchedule(start_ns=1_000_000_000 + 5_000_000)
    assert s.align(6_500_000, tolerance_ns=2_000_000) == 0
    assert s.phase_ns == 5_000_000 and s.phase_shifts == 0
    assert s.align(7_500_000, tolerance_ns=2_000_000) == 2_500_000


def test_alignments_never_drift_the_clock():
    """Talkers' phases one after another, in any order: the ticks never wander more than half
    a period from the original grid (no tick gained or lost, however many moves), and going
    back to the original phase puts them exactly where they were."""
    rng = random.Random(7)
    s = TickSchedule(start_ns=2_000_000_000 + 3_000_000)
    origin = s.start_ns
    for _ in range(500):
        s.align(rng.randrange(FRAME_NS))
        assert -FRAME_NS // 2 <= s.start_ns - origin < FRAME_NS // 2
    s.align(origin % FRAME_NS)
    assert s.start_ns == origin


# -- real-time priority of the voice path's threads (issue 17); the OS calls are replaced ------
def _refuse(*a):
    raise PermissionError("not permitted")


def test_real_time_priority_first_and_not_inherited_by_later_threads(monkeypatch):
    import os

    from streamer.clock import RECEIVE_FIFO_PRIORITY, TICK_FIFO_PRIORITY, raise_thread_priority
    got = []
    monkeypatch.setattr(os, "sched_setscheduler",
                        lambda pid, pol, p: got.append((pid, pol, p.sched_priority)))
    monkeypatch.setattr(os, "setpriority", _refuse)
    assert raise_thread_priority(RECEIVE_FIFO_PRIORITY) == "SCHED_FIFO"
    # the calling thread only, FIFO, and threads it starts get the normal policy back
    assert got == [(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, RECEIVE_FIFO_PRIORITY)]
    # the tick above the receive thread: a tick that wakes while a frame decodes runs at once
    assert TICK_FIFO_PRIORITY > RECEIVE_FIFO_PRIORITY


def test_nice_then_normal_when_real_time_is_refused(monkeypatch):
    import os

    from streamer.clock import raise_thread_priority
    niced = []
    monkeypatch.setattr(os, "sched_setscheduler", _refuse)
    monkeypatch.setattr(os, "setpriority", lambda which, who, v: niced.append(v))
    assert raise_thread_priority(9) == "nice -10" and niced == [-10]
    assert raise_thread_priority(9, nice=False) == "normal" and niced == [-10]
    monkeypatch.setattr(os, "setpriority", _refuse)
    assert raise_thread_priority(9) == "normal"
