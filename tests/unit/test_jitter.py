"""The receiver's jitter buffer (and the Receiver core around it), driven with explicit times:
no clock, no sockets."""
from __future__ import annotations

import math
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from receivers.jitter import Action, Arrival, JitterBuffer, Playout
from receivers.output import NullSink
from receivers.receiver import Receiver
from streamer.rtp.opus import OpusEncoder
from streamer.rtp.packet import RtpPacket

F = 960          # samples per 20 ms frame at 48 kHz
T = 0.020        # frame period, seconds
TICK0 = 0.001    # ticks run 1 ms after each 20 ms boundary: no float ties with due times


def pkt(seq: int, ts: int | None = None, *, ssrc: int = 7, marker: bool = False) -> RtpPacket:
    if ts is None:
        ts = seq * F
    return RtpPacket(sequence_number=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF, ssrc=ssrc,
                     marker=marker, payload=b"p%d" % (seq & 0xFFFF))


Arrivals = list[tuple[float, RtpPacket] | tuple[float, RtpPacket, int]]


def simulate(jb: JitterBuffer, arrivals: Arrivals, until: float) -> list[tuple[float, Playout]]:
    """Push each packet at its time; at every tick pop everything that is due."""
    arrivals = sorted(arrivals, key=lambda a: a[0])
    out: list[tuple[float, Playout]] = []
    i = 0
    k = 0
    while True:
        now = k * T + TICK0
        if now > until:
            break
        while i < len(arrivals) and arrivals[i][0] <= now:
            a = arrivals[i]
            jb.push(a[1], a[0], a[2] if len(a) > 2 else None)
            i += 1
        for _ in range(1000):
            p = jb.pop(now)
            if p is None:
                break
            out.append((now, p))
        k += 1
    return out


def steady(seqs, *, delay: float = 0.0,
           start_seq: int | None = None) -> list[tuple[float, RtpPacket]]:
    """Packets sent every 20 ms (by position in `seqs`'s own numbering) arriving after `delay`."""
    seqs = list(seqs)
    base = seqs[0] if start_seq is None else start_seq
    return [((s - base) * T + delay, pkt(s)) for s in seqs]


def actions(out) -> list[tuple[str, int | None]]:
    return [(p.action.value, p.sequence_number) for _, p in out]


def decoded(out) -> list[int]:
    return [p.sequence_number for _, p in out if p.action is Action.DECODE]


def test_in_order_stream_plays_after_target_delay_and_goes_idle_without_counting_the_tail():
    jb = JitterBuffer(0.060)
    out = simulate(jb, steady(range(10)), until=1.0)
    assert decoded(out) == list(range(10))
    first_time, first = out[0]
    assert first.action is Action.DECODE and first.spurt_start
    assert 0.060 <= first_time < 0.060 + T
    # after the last packet: dry_slots of concealment, then idle (nothing more)
    tail = [p.action for _, p in out[10:]]
    assert tail == [Action.PLC] * jb.dry_slots
    assert not jb.playing
    s = jb.stats
    assert (s.received, s.lost, s.late, s.duplicate) == (10, 0, 0, 0)
    assert (s.concealed_fec, s.concealed_plc, s.played, s.spurts) == (0, 0, 10, 1)


def test_pop_is_none_until_due_and_catches_up_when_called_late():
    jb = JitterBuffer(0.060)
    for s in range(5):
        assert jb.push(pkt(s), 0.0) is Arrival.ACCEPTED
    assert jb.pop(0.0) is None
    assert jb.pop(0.0599) is None
    assert abs(jb.next_due - 0.060) < 1e-9
    late_now = 0.060 + 2 * T + 0.001      # three slots due by now
    got = []
    while (p := jb.pop(late_now)) is not None:
        got.append(p.sequence_number)
    assert got == [0, 1, 2]
    assert abs(jb.next_due - (0.060 + 3 * T)) < 1e-9
    assert jb.depth == 2
    assert abs(jb.buffered - 2 * T) < 1e-9


def test_reordering_within_the_target_delay_is_repaired():
    arr = steady(range(12))
    times = {p.sequence_number: t for t, p in arr}
    # 4 overtakes 3; 6 comes after 8; 0 comes after 1 (reordering while priming)
    times[3], times[4] = times[4], times[3]
    times[6] = times[8] + 0.001
    times[0], times[1] = times[1], times[0] - 0.001
    jb = JitterBuffer(0.060)
    out = simulate(jb, [(times[s], pkt(s)) for s in range(12)], until=1.0)
    assert decoded(out) == list(range(12))
    assert jb.stats.lost == 0 and jb.stats.late == 0
    assert jb.stats.concealed_fec == jb.stats.concealed_plc == 0


def test_duplicates_are_dropped_whether_buffered_or_already_played():
    jb = JitterBuffer(0.060)
    assert jb.push(pkt(0), 0.0) is Arrival.ACCEPTED
    assert jb.push(pkt(1), 0.02) is Arrival.ACCEPTED
    assert jb.push(pkt(1), 0.021) is Arrival.DUPLICATE          # still buffered
    assert jb.pop(0.061).sequence_number == 0
    assert jb.push(pkt(0), 0.062) is Arrival.DUPLICATE          # already played
    assert jb.pop(0.081).sequence_number == 1
    assert jb.push(pkt(1), 0.082) is Arrival.DUPLICATE
    assert jb.stats.duplicate == 3
    assert jb.stats.received == 2
    assert jb.stats.late == 0


def test_single_loss_with_next_packet_buffered_uses_fec_from_it():
    jb = JitterBuffer(0.060)
    arr = [a for a in steady(range(10)) if a[1].sequence_number != 5]
    out = simulate(jb, arr, until=1.0)
    acts = actions(out)
    i = acts.index(("fec", None))
    assert acts[i - 1] == ("decode", 4) and acts[i + 1] == ("decode", 6)
    assert out[i][1].payload == b"p6"      # recovered from the *next* packet's FEC data
    assert out[i][1].samples == F
    assert jb.stats.lost == 1
    assert (jb.stats.concealed_fec, jb.stats.concealed_plc) == (1, 0)
    assert jb.stats.received == 9


def test_two_losses_in_a_row_conceal_then_use_fec_for_the_second():
    jb = JitterBuffer(0.060)
    arr = [a for a in steady(range(10)) if a[1].sequence_number not in (5, 6)]
    out = simulate(jb, arr, until=1.0)
    acts = [a for a, _ in actions(out)]
    j = decoded(out).index(4)
    i = [k for k, (_, p) in enumerate(out) if p.sequence_number == 4][0]
    assert acts[i + 1:i + 4] == ["plc", "fec", "decode"]
    assert out[i + 2][1].payload == b"p7"
    assert j == 4
    assert jb.stats.lost == 2
    assert (jb.stats.concealed_fec, jb.stats.concealed_plc) == (1, 1)


def test_loss_with_nothing_buffered_is_concealed_and_counted_when_the_stream_goes_on():
    jb = JitterBuffer(0.060)
    for s in range(5):
        jb.push(pkt(s), s * T)
    now = 0.061
    got = []
    for _ in range(5):
        got.append(jb.pop(now).action)
        now += T
    assert got == [Action.DECODE] * 5
    p = jb.pop(now)                          # slot 5: nothing buffered at all
    assert p.action is Action.PLC and p.payload is None
    jb.push(pkt(6), now + 0.005)
    now += T
    p = jb.pop(now)
    assert (p.action, p.sequence_number) == (Action.DECODE, 6)
    assert jb.stats.lost == 1
    assert jb.stats.concealed_plc == 1     # not reclassified: the stream went on


def test_late_packet_after_its_successor_played_moves_from_lost_to_late():
    jb = JitterBuffer(0.060)
    arr = [a for a in steady(range(10)) if a[1].sequence_number != 5]
    arr.append((0.30, pkt(5)))               # its slot (due at 0.16) is long gone
    out = simulate(jb, arr, until=1.0)
    assert 5 not in decoded(out)
    s = jb.stats
    assert (s.lost, s.late, s.received) == (0, 1, 9)
    assert s.concealed_fec == 1
    # a second copy of that late packet is a duplicate, not another late one
    assert jb.push(pkt(5), 1.0) is Arrival.DUPLICATE


def test_late_packet_before_its_successor_played_is_never_counted_as_lost():
    jb = JitterBuffer(0.060)
    for s in range(5):
        jb.push(pkt(s), s * T)
    now = 0.061
    for _ in range(5):
        jb.pop(now)
        now += T
    assert jb.pop(now).action is Action.PLC     # slot 5 concealed
    assert jb.push(pkt(5), now + 0.001) is Arrival.LATE
    jb.push(pkt(6), now + 0.002)
    now += T
    assert jb.pop(now).sequence_number == 6
    s = jb.stats
    assert (s.lost, s.late, s.received) == (0, 1, 6)


def test_sequence_number_wrap_with_reordering_and_loss():
    seqs = list(range(65530, 65536)) + list(range(0, 8))
    arr = []
    for i, s in enumerate(seqs):
        if s == 2:
            continue                                  # lost after the wrap
        t = i * T
        if s == 0:
            t += 1.5 * T                              # 0 arrives after 1 (and after 65535)
        arr.append((t, pkt(s, ts=1_000 + i * F)))
    jb = JitterBuffer(0.060)
    out = simulate(jb, arr, until=1.0)
    assert decoded(out) == [s for s in seqs if s != 2]
    assert jb.stats.lost == 1 and jb.stats.late == 0
    assert jb.stats.concealed_fec == 1


def test_timestamp_wrap_keeps_playout_continuous():
    base = 0xFFFFFFFF - 3 * F + 1
    arr = [(i * T, pkt(100 + i, ts=base + i * F)) for i in range(8)]
    jb = JitterBuffer(0.060)
    out = simulate(jb, arr, until=1.0)
    assert decoded(out) == list(range(100, 108))
    assert jb.stats.lost == 0 and jb.stats.resets == 0


def test_marker_after_idle_gap_restarts_cleanly_without_counting_the_gap():
    jb = JitterBuffer(0.060)
    a = [(i * T, pkt(100 + i, ts=10_000 + i * F)) for i in range(10)]
    # the zone is idle for 1 s; the shared sequence space moved on by 37 and time by 1.2 s
    t0 = 10 * T + 1.0
    b = [(t0 + i * T, pkt(147 + i, ts=10_000 + (10 + 60) * F + i * F, marker=(i == 0)))
         for i in range(10)]
    out = simulate(jb, a + b, until=3.0)
    assert decoded(out) == list(range(100, 110)) + list(range(147, 157))
    s = jb.stats
    assert (s.lost, s.late, s.concealed_fec, s.concealed_plc) == (0, 0, 0, 0)
    assert s.spurts == 2 and s.resets == 0
    acts = [p.action for _, p in out]
    assert acts[10:10 + jb.dry_slots] == [Action.PLC] * jb.dry_slots
    assert acts[10 + jb.dry_slots] is Action.DECODE            # nothing in between: idle
    t_b, p_b = out[10 + jb.dry_slots]
    assert p_b.spurt_start and p_b.sequence_number == 147
    assert t0 + 0.060 <= t_b < t0 + 0.060 + T                  # re-primed with the target delay


def test_marker_arriving_before_the_buffer_ran_dry_restarts_at_its_own_timestamp():
    jb = JitterBuffer(0.060, dry_slots=10)
    a = [(i * T, pkt(100 + i)) for i in range(5)]
    # only 30 ms of silence on the wire, but the timestamps/sequence jumped (shared spaces)
    t0 = 5 * T + 0.030
    b = [(t0 + i * T, pkt(120 + i, ts=(105 + 40) * F + i * F, marker=(i == 0))) for i in range(5)]
    out = simulate(jb, a + b, until=2.0)
    assert decoded(out) == list(range(100, 105)) + list(range(120, 125))
    s = jb.stats
    assert (s.lost, s.concealed_fec, s.concealed_plc) == (0, 0, 0)
    assert s.spurts == 2
    i = [k for k, (_, p) in enumerate(out) if p.sequence_number == 120][0]
    assert all(p.action is Action.PLC for _, p in out[5:i])      # only the tail, no 40-frame gap
    assert i - 5 <= 5


def test_marker_in_a_continuous_stream_is_played_through():
    # a program switch: same RTP stream, marker on the new talk spurt, no gap
    arr = [(i * T, pkt(i, marker=(i == 5))) for i in range(10)]
    jb = JitterBuffer(0.060)
    out = simulate(jb, arr, until=1.0)
    assert decoded(out) == list(range(10))
    assert jb.stats.spurts == 1 and jb.stats.lost == 0


def test_straggler_after_the_spurt_ended_is_late_and_does_not_restart_playout():
    jb = JitterBuffer(0.060)
    arr = [a for a in steady(range(6)) if a[1].sequence_number != 3]
    arr.append((0.60, pkt(3)))
    out = simulate(jb, arr, until=1.0)
    assert not jb.playing
    assert jb.stats.late == 1 and jb.stats.spurts == 1
    assert decoded(out) == [0, 1, 2, 4, 5]


def test_ssrc_change_resets_after_probation_and_a_stray_packet_does_not():
    jb = JitterBuffer(0.060)
    for s in range(4):
        jb.push(pkt(s, ssrc=1), s * T)
    assert jb.pop(0.061).sequence_number == 0
    assert jb.push(pkt(5000, ssrc=2), 0.062) is Arrival.PROBATION      # lone stray
    assert jb.push(pkt(4, ssrc=1), 0.063) is Arrival.ACCEPTED
    assert jb.ssrc == 1 and jb.stats.foreign == 1
    # a real new stream: two in sequence
    assert jb.push(pkt(900, ts=5, ssrc=3), 0.070) is Arrival.PROBATION
    assert jb.push(pkt(901, ts=5 + F, ssrc=3), 0.071) is Arrival.ACCEPTED
    assert jb.ssrc == 3
    assert jb.stats.resets == 1
    assert jb.stats.discarded == 4                      # 1..4 of the old stream
    got = []
    now = 0.0
    while now < 0.5:
        while (p := jb.pop(now)) is not None:
            got.append((p.action, p.sequence_number))
        now += 0.005
    assert got[:2] == [(Action.DECODE, 900), (Action.DECODE, 901)]
    assert jb.stats.foreign == 1


def test_new_ssrc_while_idle_switches_at_once():
    jb = JitterBuffer(0.060)
    simulate(jb, steady(range(3)), until=0.5)
    assert not jb.playing
    assert jb.push(pkt(77, ssrc=99), 0.6) is Arrival.ACCEPTED
    assert jb.ssrc == 99 and jb.playing


def test_timestamp_jump_far_beyond_the_buffer_restarts_playout():
    jb = JitterBuffer(0.060, max_ahead=1.0)
    for s in range(3):
        jb.push(pkt(s), s * T)
    assert jb.pop(0.061).sequence_number == 0
    assert jb.push(pkt(3, ts=3 * F + 48_000 * 5), 0.062) is Arrival.ACCEPTED
    assert jb.stats.resets == 1 and jb.stats.discarded == 2
    assert jb.pop(0.1) is None
    assert jb.pop(0.062 + 0.060).sequence_number == 3


def test_multi_frame_packets_are_placed_by_timestamp():
    # 40 ms packets, then 60 ms packets, one 40 ms packet lost
    arr = []
    ts = 0
    t = 0.0
    seq = 0
    durations = [1920] * 6 + [2880] * 4
    for d in durations:
        if seq != 3:
            arr.append((t, pkt(seq, ts=ts), d))
        ts += d
        t += d / 48_000
        seq += 1
    jb = JitterBuffer(0.060)
    out = simulate(jb, arr, until=2.0)
    assert decoded(out) == [s for s in range(10) if s != 3]
    dec = [p for _, p in out if p.action is Action.DECODE]
    assert [p.samples for p in dec] == [d for i, d in enumerate(durations) if i != 3]
    # the 40 ms hole: 20 ms of PLC, then the last 20 ms from the next packet's FEC
    i = [k for k, (_, p) in enumerate(out) if p.sequence_number == 2][0]
    assert [p.action for _, p in out[i + 1:i + 3]] == [Action.PLC, Action.FEC]
    assert sum(p.samples for _, p in out[i + 1:i + 3]) == 1920
    assert jb.stats.lost == 1
    # slots are due by timestamp: a 60 ms packet is followed 60 ms later by the next
    times = {p.sequence_number: t for t, p in out if p.action is Action.DECODE}
    assert abs((times[8] - times[7]) - 0.060) < T


def test_rfc3550_jitter_estimate():
    jb = JitterBuffer(0.060)
    for i in range(300):
        jb.push(pkt(i), i * T + 0.005)
        while jb.pop(i * T) is not None:
            pass
    assert jb.jitter < 1e-6
    jb2 = JitterBuffer(0.060)
    for i in range(300):
        jb2.push(pkt(i), i * T + (0.010 if i % 2 else 0.0))   # |D| = 10 ms every packet
        while jb2.pop(i * T) is not None:
            pass
    assert 0.009 < jb2.jitter < 0.0105


def test_fixed_target_delay_is_configurable():
    for target in (0.0, 0.060, 0.200):
        jb = JitterBuffer(target)
        out = simulate(jb, steady(range(3)), until=1.0)
        assert target <= out[0][0] < target + T


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "ok", "ok", "ok", "drop", "dup"]),
                          st.floats(0.0, 0.039)), min_size=3, max_size=80),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_property_network_chaos_within_the_target_delay(events, seq0, ts0):
    jb = JitterBuffer(0.060, dry_slots=60)    # never runs dry inside a burst of drops
    arr = []
    sent = []
    for i, (what, delay) in enumerate(events):
        p = pkt(seq0 + i, ts=ts0 + i * F)
        if what == "drop":
            continue
        sent.append(i)
        arr.append((i * T + delay, p))
        if what == "dup":
            arr.append((i * T + delay + 0.001, p))
    if not sent:
        return
    out = simulate(jb, arr, until=len(events) * T + 0.060 + 61 * T + 0.1)
    assert not jb.playing                                  # ran dry after the last packet
    played = [(p.sequence_number - seq0) & 0xFFFF for _, p in out if p.action is Action.DECODE]
    assert played == sent                                  # in order, once each
    interior_drops = (sent[-1] - sent[0] + 1) - len(sent)
    s = jb.stats
    assert s.late == 0
    assert s.lost == interior_drops
    assert s.received == len(sent)
    assert s.duplicate == sum(1 for i, (w, _) in enumerate(events) if w == "dup")
    concealed_in_stream = [p for _, p in out if p.action is not Action.DECODE
                           and (p.timestamp - ts0) % 2**32 < sent[-1] * F]
    assert len(concealed_in_stream) == interior_drops
    assert s.concealed_fec + s.concealed_plc == interior_drops


def test_history_is_forgotten_after_a_long_idle_period():
    jb = JitterBuffer(0.060, forget_after=60.0)
    simulate(jb, steady(range(3)), until=0.5)
    assert not jb.playing
    # 2 minutes later the shared timestamp space looks "behind" (e.g. the server restarted)
    assert jb.push(pkt(1, ts=5), 120.0) is Arrival.ACCEPTED
    assert jb.pop(120.061).sequence_number == 1
    # ...whereas shortly after a spurt such a packet is a straggler
    jb2 = JitterBuffer(0.060, forget_after=60.0)
    simulate(jb2, steady(range(3)), until=0.5)
    assert jb2.push(pkt(1, ts=5), 1.0) is not Arrival.ACCEPTED


# -- the Receiver around it: same sans-IO core, with the real Opus decoder ---------------------


class _ListSink(NullSink):
    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[np.ndarray] = []

    def write(self, pcm: np.ndarray) -> None:
        super().write(pcm)
        self.blocks.append(pcm)


def _opus_stream(n: int) -> list[bytes]:
    enc = OpusEncoder()
    x = (0.4 * np.sin(2 * np.pi * 1000 * np.arange(n * F) / 48_000)).astype(np.float32)
    return [RtpPacket(111, i, i * F, 42, i == 0,
                      bytes(enc.encode(x[i * F:(i + 1) * F]))).serialize() for i in range(n)]


_STREAM = _opus_stream(30)


def test_receiver_core_decodes_conceals_and_counts_bad_datagrams():
    sink = _ListSink()
    rx = Receiver(sink, jitter_ms=60)
    bad = [b"", b"x" * 5, bytes([0x40]) + bytes(20),
           RtpPacket(111, 3, 3 * F, 42, False, b"").serialize(),          # empty payload
           RtpPacket(200 - 128, 3, 0, 42, True, b"abcd").serialize()]     # RTCP-looking
    for i, d in enumerate(_STREAM):
        if i != 7:
            rx.datagram_received(d, i * T)
        if i == 3:
            for b in bad:
                rx.datagram_received(b, i * T)
        rx.tick(i * T + TICK0)
    for k in range(30, 40):
        rx.tick(k * T + TICK0)
    snap = rx.snapshot()
    assert (snap["invalid"], snap["bad_payload"], snap["received"], snap["lost"]) == (4, 1, 29, 1)
    assert snap["concealed_fec"] == 1 and snap["decode_errors"] == 0
    assert all(b.shape == (F,) and b.dtype == np.float32 for b in sink.blocks)
    assert sink.samples_written == (30 + rx.jitter.dry_slots) * F   # then idle: nothing more
    y = np.concatenate(sink.blocks)[4800:30 * F]
    assert float(np.sqrt(np.mean(y ** 2))) > 0.2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=60),
    st.tuples(st.sampled_from(range(len(_STREAM))), st.integers(0, 200), st.integers(0, 255)),
), max_size=40))
def test_receiver_never_crashes_on_garbage_or_corrupted_packets(items):
    rx = Receiver(NullSink(), payload_type=111)
    t = 0.0
    for it in items:
        if isinstance(it, bytes):
            data = it
        else:
            i, pos, val = it
            b = bytearray(_STREAM[i])
            b[pos % len(b)] = val                      # corrupt one byte anywhere
            data = bytes(b)
        rx.datagram_received(data, t)
        rx.tick(t)
        t += 0.007
    rx.tick(t + 5.0)
    s = rx.stats
    jb = rx.jitter.stats
    assert s.datagrams == len(items)
    pushed = s.datagrams - s.invalid - s.wrong_payload_type - s.bad_payload
    assert pushed == jb.received + jb.late + jb.duplicate + jb.foreign


def test_timestamp_going_far_back_is_a_restarted_sender_not_a_flood_of_late_packets():
    for gap in (0.0, 0.5):                      # while still playing / after going idle
        jb = JitterBuffer(0.060, max_ahead=1.0)
        simulate(jb, steady(range(5)), until=0.1 + gap)
        t = 0.2 + gap
        assert jb.push(pkt(9, ts=0xFFFFFFFF - 48_000 * 3), t) is Arrival.ACCEPTED
        assert jb.push(pkt(10, ts=0xFFFFFFFF - 48_000 * 3 + F), t + T) is Arrival.ACCEPTED
        assert jb.stats.resets == 1 and jb.stats.late == 0
        got = [jb.pop(t + 0.061), jb.pop(t + 0.081)]
        assert [p.sequence_number for p in got] == [9, 10]


# -- the reference receiver's playout grid follows the spurt (issue 17) -----------------------
def test_grid_phase_moves_earlier_to_a_slot_due_before_the_next_grid_point():
    from receivers.receiver import grid_phase
    from streamer.audio import FRAME_NS
    start = 1_000_000_000
    # a slot due 7 ms before tick 5's grid point: tick 5 happens then, later ticks 20 ms apart
    s = grid_phase(start, 5, start + 5 * FRAME_NS - 7_000_000)
    assert s + 5 * FRAME_NS == start + 5 * FRAME_NS - 7_000_000
    # due later than the grid point, exactly on it, a period or more before, or idle: unchanged
    for due in (start + 5 * FRAME_NS + 1, start + 5 * FRAME_NS, start + 4 * FRAME_NS,
                start + 3 * FRAME_NS, None):
        assert grid_phase(start, 5, due) == start


def test_playout_starts_at_first_packet_plus_target_not_at_the_next_grid_point():
    """Drive the jitter buffer with the grid the receiver's loop keeps: the first slot plays at
    arrival + target (the old grid would have played it up to 20 ms later)."""
    from receivers.receiver import grid_phase
    from streamer.audio import FRAME_NS
    for arrival_ms in (3.0, 11.5, 19.0):
        jb = JitterBuffer(0.060)
        start, k = 0, 0
        arrival = 1.0 + arrival_ms / 1000
        jb.push(pkt(0, marker=True), arrival)
        played_at = None
        while played_at is None:
            k += 1
            d = jb.next_due
            start = grid_phase(start, k, None if d is None else math.ceil(d * 1e9))
            now = (start + k * FRAME_NS) / 1e9
            if now > arrival:
                p = jb.pop(now)
                if p is not None:
                    played_at = now
        assert abs(played_at - (arrival + 0.060)) < 1e-6   # not up to 20 ms later
