"""Adaptive playout delay (60-400 ms from measured jitter, outliers capped) and clock drift
absorption, driven sans-IO through the reference receiver with real Opus packets."""
from __future__ import annotations

import random

import numpy as np

from receivers.adaptive import PlayoutDelay, crossfade
from receivers.output import NullSink
from receivers.receiver import Receiver
from streamer.rtp.opus import OpusEncoder, OpusSettings
from streamer.rtp.packet import RtpPacket

FRAME = 960


def packets(n, seq0=65000, ts0=0xFFFF0000):
    enc = OpusEncoder(OpusSettings(application="voip"))
    t = np.arange(FRAME, dtype=np.float32) / 48000
    out = []
    for k in range(n):
        pcm = (0.3 * np.sin(2 * np.pi * 440 * (t + k * 0.02))).astype(np.float32)
        out.append(RtpPacket(111, (seq0 + k) & 0xFFFF, (ts0 + k * FRAME) & 0xFFFFFFFF, 7,
                             k == 0, bytes(enc.encode(pcm))).serialize())
    enc.close()
    return out


def run(rx, pkts, delay_of, clock=1.0, seconds=None):
    """Send packet k at k*20 ms (+ its network delay); the receiver's clock runs `clock` times
    as fast as the sender's. Ticks every 5 ms of receiver time."""
    arrivals = sorted((clock * (k * 0.02 + delay_of(k)), k) for k in range(len(pkts)))
    end = arrivals[-1][0] + 1.0
    i, now, buffered = 0, 0.0, []
    while now < end:
        while i < len(arrivals) and arrivals[i][0] <= now:
            rx.datagram_received(pkts[arrivals[i][1]], arrivals[i][0])
            i += 1
        rx.tick(now)
        if rx.jitter.playing:
            buffered.append((now, rx.jitter.buffered))
        now += 0.005
    return buffered


def test_target_follows_jitter_and_ignores_outliers():
    d = PlayoutDelay()
    for k in range(500):
        d.observe(k * 0.0 + (0.005 if k % 2 else 0.0))
    assert d.target == 0.06                               # low jitter: the floor
    rnd = random.Random(1)
    for k in range(500):
        d.observe(rnd.uniform(0, 0.15) if k % 50 else 3.0)   # spikes of 3 s, 2 %
    assert 0.15 < d.target < 0.2, d.target                # p95 of 0..150 ms + 20 ms margin
    for _ in range(500):
        d.observe(rnd.uniform(0, 1.0))
    assert d.target == 0.4                                # ceiling


def test_jittery_network_adapts_without_late_packets():
    rnd = random.Random(2)
    pk = packets(1500)                                   # 30 s
    net = [rnd.uniform(0.0, 0.12) for _ in pk]
    rx = Receiver(NullSink(), adaptive=True)
    run(rx, pk, lambda k: net[k])
    st = rx.jitter.stats
    assert 0.12 <= rx.delay.target <= 0.16, rx.delay.target
    # after the first seconds of learning, nothing arrives too late to play
    assert st.late < 40, st
    assert rx.stats.stretched >= 1
    fixed = Receiver(NullSink(), adaptive=False)
    run(fixed, pk, lambda k: net[k])
    assert fixed.jitter.stats.late > 5 * max(1, st.late)


def test_clock_drift_is_absorbed_without_growing_delay():
    for clock in (1.002, 0.998):                          # ±0.2 %: 240 ms over 2 minutes
        pk = packets(6000)
        rx = Receiver(NullSink(), adaptive=True)
        buf = run(rx, pk, lambda k: 0.01, clock=clock)
        late = [b for t, b in buf if t > 100]
        early = [b for t, b in buf if 10 < t < 20]
        assert abs(np.mean(late) - np.mean(early)) < 0.03, (clock, np.mean(early), np.mean(late))
        # a fast receiver clock drains the buffer (stretch); a slow one fills it (shrink)
        corr = rx.stats.stretched if clock > 1 else rx.stats.shrunk
        assert 6 <= corr <= 20, (clock, rx.stats)
        assert rx.jitter.stats.late == 0 and rx.jitter.stats.lost == 0
        assert rx.jitter.stats.resets == 0


def test_crossfade_has_no_step():
    a = np.ones(960, dtype=np.float32)
    b = -np.ones(960, dtype=np.float32)
    c = crossfade(a, b)
    assert len(c) == 960 and c[0] == 1.0 and c[-1] == -1.0
    assert np.max(np.abs(np.diff(c))) < 0.01
