"""The engine (streamer.runtime.Runtime over streamer.core) driven tick by tick with explicit
times: no thread, no socket, no patched clock. Programs, encoders, preemption and resume,
ducking, queueing, long packets, SRTP, loss-driven FEC."""
import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE
from streamer.ingest.sequence import Part, SequenceSource, SkipSource
from streamer.ingest.tones import ToneSource
from streamer.mixer.arbitration import Level
from streamer.port import Refused, StartBroadcast, StopBroadcast, ToneAudio
from streamer.rtp.opus import OpusDecoder
from streamer.rtp.output import addr_phase
from streamer.rtp.packet import RtpPacket
from streamer.zones import Zone, ZoneTree
from tests.unit.engine_rig import Rig, decode_zone, dominant_freq, long_key


def tone_factory(freq, seconds, amp=-16.0):
    def make(start_s):
        src = ToneSource(freq_hz=freq, seconds=seconds, amplitude_dbfs=amp)
        return SkipSource(src, start_s) if start_s > 0 else src
    return make


def make_rig(n_zones=3, **kw):
    tree = ZoneTree()
    tree.add(Zone("province"))
    for i in range(n_zones):
        tree.add(Zone(f"z{i}", parent="province", unicast=[("127.0.0.1", 20000 + i)]))
    rig = Rig(tree, **kw)
    return rig, rig.fan, rig.events


def test_one_encoder_for_500_zones_and_two_when_an_emergency_takes_20():
    eng, fan, _ = make_rig(500)
    eng.start(["province"], seconds=5)
    eng.run(5)
    assert eng.rt.encoders_active == 1
    # one packet per tick for the whole province
    assert len([s for s in fan.sent if s[0] == 4]) == 1
    assert len(fan.sent[-1][2]) == 501
    eng.start([f"z{i}" for i in range(20)], level="emergency", freq=500, seconds=2)
    eng.run(5)
    assert eng.rt.encoders_active == 2


def test_emergency_preempts_subzone_next_tick_and_programme_resumes_2s_before_cut():
    eng, fan, events = make_rig(3, resume_rewind_s=2.0)
    # programme: 4 s of 400 Hz then 4 s of 800 Hz, as one source (tones in sequence)
    parts = [Part(tone_factory(400, 4.0), 4.0), Part(tone_factory(800, 4.0), 4.0)]
    eng.play("programme", lambda s: SequenceSource(parts, s), zones=["province"])
    k = eng.run(250)  # 5 s: now 1 s into the 800 Hz part
    cut_tick = k
    eng.start(["z1"], level="emergency", freq=1500, seconds=1.0)
    k = eng.run(1)
    # next tick: z1 hears the emergency (marker set), z0 and z2 keep the programme
    last = {z: fan.by_zone(z)[-1] for z in ("z0", "z1", "z2")}
    assert last["z1"][1].marker
    assert not last["z0"][1].marker
    assert eng.rt.encoders_active == 2
    k = eng.run(60)  # the emergency ends after 1 s; z1 resumes
    k = eng.run(200)
    types = [e.type for e in events]
    assert "broadcast.preempted" in types and "broadcast.resumed" in types
    # z0 had no gap: one packet every tick from its start
    ticks_z0 = [t for t, _ in fan.by_zone("z0")]
    assert ticks_z0 == list(range(ticks_z0[0], ticks_z0[0] + len(ticks_z0)))
    # z1: one continuous RTP stream across both switches (same SSRC, contiguous seq/ts)
    pk = [p for _, p in fan.by_zone("z1")]
    assert len({p.ssrc for p in pk}) == 1
    seqs = [p.sequence_number for p in pk]
    assert all((b_ - a_) & 0xFFFF == 1 for a_, b_ in zip(seqs, seqs[1:]))
    tss = [p.timestamp for p in pk]
    assert all((b_ - a_) & 0xFFFFFFFF == FRAME_SAMPLES for a_, b_ in zip(tss, tss[1:]))
    # content: after the alert, z1 resumes 2 s before the cut: 400 Hz tail (cut was at 5 s,
    # so resume at 3 s = 1 s of 400 Hz) then 800 Hz
    pcm = decode_zone(fan, "z1")
    start_tick = fan.by_zone("z1")[0][0]
    def at(tick, dur_ticks=10):
        i = (tick - start_tick) * FRAME_SAMPLES
        return dominant_freq(pcm[i:i + dur_ticks * FRAME_SAMPLES])
    assert abs(at(cut_tick + 10) - 1500) < 20  # the alert
    resume_tick = cut_tick + 1 + 50
    assert abs(at(resume_tick + 10, 20) - 400) < 20  # rewound into the 400 Hz part
    assert abs(at(resume_tick + 70, 20) - 800) < 20


def test_duck_lowers_programme_by_15_db():
    eng, fan, events = make_rig(1)
    eng.start(["z0"], level="background", freq=300, seconds=10)
    eng.run(100)
    # a nearly silent announcement: measure the bed under it
    eng.start(["z0"], mode="duck", source=ToneAudio(3000, 3.0, amplitude_dbfs=-60.0))
    eng.run(100)
    pcm = decode_zone(fan, "z0")
    def band_rms(x, f):
        s = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        fr = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
        return np.sqrt(np.sum(s[(fr > f - 30) & (fr < f + 30)] ** 2))
    before = band_rms(pcm[40 * FRAME_SAMPLES:90 * FRAME_SAMPLES], 300)
    during = band_rms(pcm[140 * FRAME_SAMPLES:190 * FRAME_SAMPLES], 300)
    drop = 20 * np.log10(during / before)
    assert -17 <= drop <= -13, drop
    assert any(e.type == "broadcast.ducked" for e in events)


def test_second_live_talker_is_refused_naming_the_holder():
    eng, fan, events = make_rig(2)
    eng.start(["z0"], live=True, owner="Nguyễn Văn An")
    with pytest.raises(Refused, match="Nguyễn Văn An"):
        eng.start(["province"], live=True, owner="Trần Thị Bình")
    assert events[-1].type == "broadcast.refused"
    # another zone is free
    eng.start(["z1"], live=True, owner="Trần Thị Bình")


def test_same_level_files_queue_first_come_first_served():
    eng, fan, events = make_rig(1)
    a = eng.start(["z0"], freq=500, seconds=1)
    b = eng.start(["z0"], freq=900, seconds=1)
    eng.run(120)
    pcm = decode_zone(fan, "z0")
    assert abs(dominant_freq(pcm[10 * 960:40 * 960]) - 500) < 20
    assert abs(dominant_freq(pcm[60 * 960:90 * 960]) - 900) < 20
    fin = [e.broadcast for e in events if e.type == "broadcast.finished"]
    assert fin == [a.id, b.id]


@pytest.mark.parametrize("ptime", [40, 60])
def test_cellular_destinations_get_longer_packets(ptime):
    from streamer.rtp.opus import packet_samples
    tree = ZoneTree()
    tree.add(Zone("z", unicast=[("127.0.0.1", 1), ("127.0.0.1", 2)],
                  ptime={("127.0.0.1", 2): ptime}))
    eng = Rig(tree)
    fan = eng.fan
    eng.start(["z"], freq=700, seconds=2.0)
    eng.run(60)
    lk = long_key("z", ptime, ("127.0.0.1", 2))
    assert fan.dests["z"] == [("127.0.0.1", 1)] and fan.dests[lk] == [("127.0.0.1", 2)]
    short = [RtpPacket.parse(p) for _, p, keys in fan.sent if "z" in keys]
    long_ = [RtpPacket.parse(p) for _, p, keys in fan.sent if lk in keys]
    per = ptime // 20
    assert len(short) == 60
    # an encoder's first frames may switch Opus mode, and such frames cannot share a packet
    assert 60 // per - 1 <= len(long_) <= 60 // per + 2
    # the zone's window phase may leave the last frame(s) for the next tick
    assert 960 * (60 - per) <= sum(packet_samples(p.payload) for p in long_) <= 960 * 60
    assert sum(packet_samples(p.payload) == 960 * per for p in long_) >= 60 // per - 2
    assert long_[0].marker and not any(p.marker for p in long_[1:])
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(long_, long_[1:]))
    # timestamps are contiguous: each packet starts where the previous one's audio ended
    assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == packet_samples(a.payload)
               for a, b in zip(long_, long_[1:]))
    assert {p.ssrc for p in long_} == {short[0].ssrc}
    # the long packets carry the same audio: decode and compare frequency
    dec = OpusDecoder()
    pcm = np.concatenate([dec.decode(p.payload) for p in long_])
    assert abs(dominant_freq(pcm[4800:]) - 700) < 10


def test_dynamic_destinations_with_ptime():
    eng, fan, _ = make_rig(1)
    eng.run(1)
    eng.set_destinations("z0", [("10.0.0.1", 5000), ("10.0.0.2", 5000, 40)])
    lk = long_key("z0", 40, ("10.0.0.2", 5000))
    assert ("10.0.0.1", 5000) in fan.dests["z0"] and fan.dests[lk] == [("10.0.0.2", 5000)]
    eng.set_destinations("z0", [])
    assert fan.dests[lk] == [] and ("10.0.0.1", 5000) not in fan.dests["z0"]


def test_a_big_cellular_zone_spreads_its_long_packets_over_the_ticks():
    """10,000 clusters on 40 ms packets in one zone: about half of them get their packet on
    each tick (never all on one tick and none on the next), each gets one every 40 ms with
    consecutive sequence numbers and timestamps 40 ms apart."""
    addrs = [(f"10.1.{i // 250}.{i % 250 + 1}", 5004) for i in range(10_000)]
    tree = ZoneTree()
    tree.add(Zone("big", unicast=addrs, ptime={a: 40 for a in addrs}))
    eng = Rig(tree)
    fan = eng.fan
    eng.start(["big"], freq=700, seconds=2.0)
    eng.run(40)
    n = {ph: len(fan.dests[f"big|40~{ph}"]) for ph in (0, 1)}
    assert n[0] + n[1] == 10_000 and min(n.values()) > 4_500
    per_tick: dict[int, int] = {}
    by_phase: dict[int, list] = {0: [], 1: []}
    for t, p, keys in fan.sent:
        for ph in (0, 1):
            if f"big|40~{ph}" in keys:
                per_tick[t] = per_tick.get(t, 0) + n[ph]
                by_phase[ph].append(RtpPacket.parse(p))
    busy = [per_tick.get(t, 0) for t in range(5, 39)]
    assert max(busy) <= max(n.values()) * 2 and min(busy) > 4_400, busy
    assert sorted(busy)[len(busy) // 2] < 5_600, busy   # split windows aside, half per tick
    for pkts in by_phase.values():
        assert len(pkts) >= 18
        assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1
                   for a, b in zip(pkts, pkts[1:]))
        # contiguous audio (a window around an encoder mode switch may go out as 2 packets)
        from streamer.rtp.opus import packet_samples
        assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == packet_samples(a.payload)
                   for a, b in zip(pkts, pkts[1:]))
        assert sum(packet_samples(p.payload) == 1920 for p in pkts) >= len(pkts) - 4


def test_registered_receivers_get_srtp_static_destinations_plain_rtp():
    import time as _t

    from streamer.rtp.srtp import MediaAuthError, MediaKeyring, MediaUnprotector
    tree = ZoneTree()
    tree.add(Zone("a", unicast=[("127.0.0.1", 1)]))
    tree.add(Zone("b"))
    keyring = MediaKeyring(_t.monotonic())
    eng = Rig(tree, keyring=keyring)
    fan = eng.fan
    eng.run(1)
    eng.set_destinations("a", [("10.0.0.1", 4000)])
    eng.set_destinations("b", [("10.0.0.2", 4000)])
    assert fan.dests["a#s"] == [("10.0.0.1", 4000)] and fan.dests["a"] == [("127.0.0.1", 1)]
    eng.start(["a"], freq=500, seconds=1)
    eng.start(["b"], freq=900, seconds=1)  # a second program in the same ticks
    fan.sent.clear()
    eng.run(20)
    plain = [p for _, p, keys in fan.sent if keys == ["a"]]
    secure_a = [p for _, p, keys in fan.sent if keys == ["a#s"]]
    secure_b = [p for _, p, keys in fan.sent if keys == ["b#s"]]
    assert len(plain) == len(secure_a) == len(secure_b) == 20
    RtpPacket.parse(plain[0])  # stock clients read it as is
    rx = MediaUnprotector()
    rx.set_keys(keyring.for_receivers())
    dec = OpusDecoder()
    pcm = np.concatenate([dec.decode(RtpPacket.parse(rx.unprotect(p)).payload) for p in secure_a])
    assert abs(dominant_freq(pcm[4800:]) - 500) < 15
    # same seq, different programs: different key slots, so no keystream is ever reused
    from streamer.rtp.srtp import TRAILER
    slots = {TRAILER.unpack_from(p, len(p) - TRAILER.size)[1] for p in (secure_a[5], secure_b[5])}
    assert len(slots) == 2
    with pytest.raises(MediaAuthError):
        rx.unprotect(plain[0])


def test_program_encoder_plans_for_the_worst_reported_loss_of_its_zones():
    """Receivers' loss reports reach the program's encoder: no report -> the assumed loss
    (opus.packet_loss_perc, 10); the worst zone of the program counts; a rise applies at the
    next application pass, a fall only after loss_hold_s; in-band FEC appears in the packets
    (SILK/hybrid TOC) only while the planned loss is high."""
    eng, fan, _ = make_rig(3, loss_hold_s=30.0, loss_apply_interval_s=1.0)
    eng.start(["z0", "z1"], seconds=300)
    k = eng.run(3)
    (ch,) = eng.rt.bank.channels.values()
    assert ch.encoder.loss_perc == 10 and eng.rt.encoder_stats["planning_loss"] == 1

    def step(seconds, ticks=2):
        nonlocal k
        eng.wait(seconds)
        k = eng.run(ticks)

    def toc_config():
        return fan.by_zone("z0")[-1][1].payload[0] >> 3   # 0-15 SILK/hybrid, 16-31 CELT

    assert toc_config() < 16                      # FEC on at the assumed 10 %
    eng.set_zone_loss("z0", 0)                    # z1 reports nothing yet: still 10
    step(1.1)
    assert ch.encoder.loss_perc == 10
    eng.set_zone_loss("z1", 0)
    step(1.1)
    assert ch.encoder.loss_perc == 0 and toc_config() >= 16
    eng.set_zone_loss("z1", 12)
    step(0.2)                                     # within the application interval
    assert ch.encoder.loss_perc == 0
    step(1.0)
    assert ch.encoder.loss_perc == 12 and toc_config() < 16
    eng.set_zone_loss("z2", 25)                   # not in this program
    eng.set_zone_loss("z1", 1)
    step(1.1)
    assert ch.encoder.loss_perc == 12             # a fall waits for the hold
    step(27.0)                                    # 28.1 s after the rise
    assert ch.encoder.loss_perc == 12
    step(2.0)
    assert ch.encoder.loss_perc == 1 and eng.rt.encoder_stats["max_loss_perc"] == 1
    eng.set_zone_loss("z1", None)                 # nobody reports there any more: assumed 10
    step(1.1)
    assert ch.encoder.loss_perc == 10


def test_long_packet_phase_is_a_fixed_function_of_the_address():
    """Stable across runs and versions (CRC-32 of "host:port"): a receiver keeps its phase
    after a restart, and a zone's receivers spread over the phases."""
    assert [addr_phase(("10.0.0.1", 5004), 2), addr_phase(("10.0.0.1", 5004), 3),
            addr_phase(("10.0.0.2", 5004), 3), addr_phase(("192.168.1.20", 6000), 3)] == \
        [zlib_phase("10.0.0.1:5004", 2), zlib_phase("10.0.0.1:5004", 3),
         zlib_phase("10.0.0.2:5004", 3), zlib_phase("192.168.1.20:6000", 3)]
    assert addr_phase(("10.0.0.1", 5004), 2) == 0   # crc32(b"10.0.0.1:5004") is even
    counts = [0, 0, 0]
    for i in range(3000):
        counts[addr_phase((f"10.2.{i // 250}.{i % 250 + 1}", 5004), 3)] += 1
    assert min(counts) > 900


def zlib_phase(text, per):
    import binascii
    return binascii.crc32(text.encode()) % per


def test_a_broadcast_held_until_its_start_at_goes_on_air_on_that_tick():
    """StartBroadcast.start_at: the source opens at once, the broadcast stays queued, and its
    first packet leaves on the first tick at or after the instant (here 1.005 s ahead: tick 51
    at +1.02 s). A same-level item started meanwhile keeps the zone (it came on air first)."""
    eng, fan, events = make_rig(2)
    at = eng.wall + 1.005
    snap = eng.rt.submit(StartBroadcast(id="sched", targets=("z0",), level=Level.NORMAL,
                                        source=ToneAudio(700.0, 1.0), start_at=at))
    assert snap.state == "queued"
    eng.run(51)
    assert fan.by_zone("z0") == [] and eng.rt.broadcast("sched").state == "queued"
    eng.run(1)
    first = fan.by_zone("z0")[0]
    assert first[0] == 51 and first[1].marker
    started = [e for e in events if e.type == "broadcast.started" and e.broadcast == "sched"]
    assert started and started[0].tick == 51
    # a held item waits behind a same-level item that came on air before its instant
    eng.rt.submit(StartBroadcast(id="later", targets=("z1",), level=Level.NORMAL,
                                 source=ToneAudio(500.0, 1.0), start_at=eng.wall + 0.5))
    eng.start(["z1"], freq=900, seconds=2.0)
    eng.run(40)
    assert eng.rt.broadcast("later").state == "queued"
    pcm = decode_zone(fan, "z1")
    assert abs(dominant_freq(pcm[-4800:]) - 900) < 20
    # a held broadcast can be stopped before its instant: it never airs
    eng.rt.submit(StartBroadcast(id="never", targets=("z0",), level=Level.EMERGENCY,
                                 source=ToneAudio(300.0, 1.0), start_at=eng.wall + 0.2))
    eng.rt.submit(StopBroadcast("never"))
    eng.run(20)
    assert not [e for e in events if e.broadcast == "never" and e.type == "broadcast.started"]


def test_offset_s_starts_the_item_inside():
    eng, fan, events = make_rig(1)
    eng.rt.submit(StartBroadcast(id="joined", targets=("z0",), level=Level.NORMAL,
                                 source=ToneAudio(700.0, 3.0), offset_s=2.0))
    eng.run(80)
    ends = [e for e in events if e.type == "broadcast.finished" and e.broadcast == "joined"]
    assert ends, "a 3 s tone joined at 2 s ends after about 1 s"


def test_a_joined_item_preempted_before_its_first_frame_keeps_its_offset():
    """A programme joined at 2.0 s whose second zone is held by an emergency when it starts:
    that zone hears it later from 2.0 s (1 s of a 3 s tone), not from the beginning."""
    eng, fan, events = make_rig(2)
    eng.start(["z1"], level="emergency", freq=400, seconds=0.5)
    eng.run(2)
    eng.rt.submit(StartBroadcast(id="joined", targets=("z0", "z1"), level=Level.NORMAL,
                                 source=ToneAudio(700.0, 3.0), offset_s=2.0))
    eng.run(300)
    assert eng.rt.broadcast("joined") is None or eng.rt.broadcast("joined").state == "finished"
    z1 = decode_zone(fan, "z1")
    heard_700 = [p for p in np.split(z1[: len(z1) // 960 * 960], len(z1) // 960)
                 if np.max(np.abs(p)) > 0.05 and abs(dominant_freq(p) - 700) < 60]
    assert 40 <= len(heard_700) <= 60, len(heard_700)   # ~1 s, not 3 s
    assert not [e for e in events if e.broadcast == "joined" and e.type == "broadcast.resumed"]


def test_a_tone_joined_mid_way_reports_its_position_in_the_item():
    eng, fan, events = make_rig(1)
    eng.rt.submit(StartBroadcast(id="t", targets=("z0",), level=Level.NORMAL,
                                 source=ToneAudio(700.0, 10.0), offset_s=4.0))
    eng.run(26)
    assert eng.rt.broadcast("t").position_s == pytest.approx(4.5, abs=0.05)


def test_an_urgent_broadcast_kept_off_air_says_who_holds_its_zones():
    """Issue 13: a second emergency on a busy zone waited with nothing saying why. Queueing at
    emergency and priority level is an event naming the holder (once per holder); same-level
    normal items and preemptions say nothing of the kind."""
    eng, fan, events = make_rig(3)
    bg = eng.start(["z0"], level="normal", freq=300, seconds=5, owner="config:studio")
    first = eng.start(["z0", "z1"], level="emergency", freq=500, seconds=0.6,
                      owner="user:7")
    eng.run(5)
    second = eng.start(["z0"], level="emergency", freq=900, seconds=0.4, owner="user:9")
    prio = eng.start(["z1", "z2"], level="priority", freq=700, seconds=0.2, owner="user:11")
    normal = eng.start(["z1"], level="normal", freq=800, seconds=0.2)
    eng.run(3)
    queued = [e for e in events if e.type == "broadcast.queued"]
    assert [(e.broadcast, e.holder, e.holder_owner, e.zones) for e in queued] == [
        (second.id, first.id, "user:7", ("z0",)), (prio.id, first.id, "user:7", ("z1",))]
    assert "emergency broadcast" in (queued[0].reason or "") and queued[0].level == "emergency"
    assert queued[0].to_dict()["holder"] == first.id
    eng.run(20)   # more ticks and plans: nothing said twice
    assert len([e for e in events if e.type == "broadcast.queued"]) == 2
    # the holder ends: the queued emergency plays; the priority item plays in z1 after it
    eng.run(60)
    started = [e.broadcast for e in events if e.type == "broadcast.started"]
    assert started.index(first.id) < started.index(second.id)
    assert prio.id in started
    assert all(e.broadcast not in (bg.id, normal.id, first.id) for e in events
               if e.type == "broadcast.queued")
    assert len(fan.sent) > 0
