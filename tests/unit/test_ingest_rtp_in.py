"""RTP ingest core: reorder buffer, G.711 tables, allow list, decoding into a live broadcast
(started and stopped through the two callbacks the ingest is given; no engine, no socket)."""
import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE
from streamer.ingest.rtp_in import (ALAW, ULAW, ReorderBuffer, RtpIngest, RtpIngestConfig,
                                    g711_decode)
from streamer.mixer.arbitration import Level
from streamer.port import Refused
from streamer.rtp.opus import OpusEncoder, OpusSettings
from streamer.rtp.packet import RtpPacket


def test_reorder_in_order_passes_straight_through():
    r = ReorderBuffer(depth=3)
    for s in (65534, 65535, 0, 1):  # across the wrap
        assert r.push(s, s) == [(s, s)]
    assert r.lost == 0


def test_reorder_swaps_back_and_declares_loss_after_depth():
    r = ReorderBuffer(depth=3)
    assert r.push(10, "a") == [(10, "a")]
    assert r.push(12, "c") == []
    assert r.push(11, "b") == [(11, "b"), (12, "c")]
    assert r.push(13, "d") == [(13, "d")]
    assert r.push(15, "f") == []  # 14 missing
    assert r.push(16, "g") == []
    assert r.push(17, "h") == [(14, None), (15, "f"), (16, "g"), (17, "h")]
    assert r.lost == 1
    assert r.push(14, "late") == [] and r.late == 1
    assert r.push(17, "dup") == [] and r.late == 2


def test_reorder_restart_on_big_jump():
    r = ReorderBuffer(depth=3)
    r.push(100, 1)
    assert r.push(30000, 2) == [(30000, 2)] and r.restarts == 1


def test_g711_tables_match_reference_values():
    # ITU-T G.711 reference points: silence and full-scale codes
    assert ULAW[0xFF] == 0 and ULAW[0x7F] == 0
    assert ULAW[0x00] == -32124 and ULAW[0x80] == 32124
    assert ALAW[0xD5] == 8 and ALAW[0x55] == -8
    assert ALAW[0xAA] == 32256 and ALAW[0x2A] == -32256
    try:
        import audioop  # deprecated, still in 3.11/3.12: an independent implementation
    except ImportError:
        return
    codes = bytes(range(256))
    ref_u = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype="<i2")
    ref_a = np.frombuffer(audioop.alaw2lin(codes, 2), dtype="<i2")
    assert np.array_equal(g711_decode(codes, ULAW), ref_u)
    assert np.array_equal(g711_decode(codes, ALAW), ref_a)


class Broadcasts:
    """What control's broadcast use case looks like to the ingest: start_live / stop."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.active: dict[str, dict] = {}
        self.ended: list[tuple[str, str]] = []
        self.calls = 0

    def start_live(self, name, zones, level, source) -> str:
        self.calls += 1
        if self.refuse:
            raise Refused(self.refuse)
        bid = f"b{self.calls}"
        self.active[bid] = {"name": name, "zones": zones, "level": level, "source": source}
        return bid

    def stop(self, bid: str, reason: str) -> None:
        if bid not in self.active:
            raise KeyError(bid)
        del self.active[bid]
        self.ended.append((bid, reason))


@pytest.fixture
def door():
    return Broadcasts()


def ingest(config, door):
    return RtpIngest(config, door.start_live, door.stop)


def opus_packets(freq=1000.0, n=50, pt=111, ssrc=7, seq0=100):
    enc = OpusEncoder(OpusSettings())
    out = []
    for k in range(n):
        t = (np.arange(FRAME_SAMPLES) + k * FRAME_SAMPLES) / SAMPLE_RATE
        payload = bytes(enc.encode((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)))
        out.append(RtpPacket(payload_type=pt, sequence_number=seq0 + k, timestamp=k * 960,
                             ssrc=ssrc, payload=payload).serialize())
    enc.close()
    return out


def test_not_allow_listed_is_dropped_before_anything_else(door):
    ing = ingest(RtpIngestConfig(port=5004, zones=["z1"], allow=["10.1.2.0/24"]), door)
    for p in opus_packets(n=5):
        ing.datagram_received(p, ("10.9.9.9", 4000), 1.0)
    assert ing.stats.dropped_not_allowed == 5 and ing.stats.accepted == 0
    assert door.calls == 0
    assert ing.allowed("10.1.2.77") and ing.allowed("::ffff:10.1.2.3") and not ing.allowed("junk")


def test_opus_stream_becomes_a_live_broadcast_and_idle_ends_it(door):
    ing = ingest(RtpIngestConfig(port=5004, zones=["z1"], level="priority", name="studio"), door)
    pkts = opus_packets(n=10)
    ing.datagram_received(b"\x00garbage", ("127.0.0.1", 1), 0.0)
    for i, p in enumerate(pkts):
        if i == 4:
            continue  # lost: concealed (or FEC) once 3 later packets are waiting
        ing.datagram_received(p, ("127.0.0.1", 4000), 1.0 + i * 0.02)
    assert ing.stats.invalid == 1 and ing.stats.accepted == 9
    (b,) = door.active.values()
    assert b["level"] == Level.PRIORITY and b["name"] == "studio" and b["zones"] == ("z1",)
    assert b["source"] is ing.source and b["source"].kind == "rtp" and b["source"].live
    assert ing.stats.concealed + ing.stats.fec_recovered == 1
    frames = ing.source.frames_pushed
    assert frames == 10  # 9 decoded + 1 concealed, 20 ms each (queue keeps the newest 4)
    got = []
    while (f := ing.source.read()) is not None:
        got.append(f)
    assert len(got) == 4
    x = np.concatenate(got)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    assert abs(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[np.argmax(spec)] - 1000) < 15
    ing.poll(1.3)
    assert door.active  # within idle_s: kept
    ing.poll(10.0)
    assert door.active == {} and door.ended == [("b1", "no RTP for 3 s")]
    assert ing.source is None and ing.broadcast_id is None


def test_wrong_payload_type_is_counted(door):
    ing = ingest(RtpIngestConfig(port=5004, zones=["z1"], codec="pcmu"), door)
    for p in opus_packets(n=3):
        ing.datagram_received(p, ("127.0.0.1", 4000), 1.0)
    assert ing.stats.wrong_payload == 3 and door.calls == 0


def test_pcmu_decodes_to_48k(door):
    ing = ingest(RtpIngestConfig(port=5004, zones=["z1"], codec="auto"), door)
    t = np.arange(8000) / 8000
    x = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    import audioop
    u = audioop.lin2ulaw(x.tobytes(), 2)
    for k in range(10):
        ing.datagram_received(RtpPacket(payload_type=0, sequence_number=k, timestamp=k * 160,
                                        ssrc=1, payload=u[k * 160:(k + 1) * 160]).serialize(),
                              ("127.0.0.1", 1), 1.0)
    assert ing.stats.accepted == 10
    assert ing.source.frames_pushed >= 8  # resampler latency keeps a few samples back


def test_refused_start_is_counted_and_retried_a_second_later():
    door = Broadcasts(refuse="zone z1 is held by live broadcast x (Ông A, level priority)")
    ing = ingest(RtpIngestConfig(port=5004, zones=["z1"], level="normal"), door)
    pkts = opus_packets(n=60)
    for i, p in enumerate(pkts[:3]):
        ing.datagram_received(p, ("127.0.0.1", 4000), 1.0 + i * 0.02)
    assert ing.stats.refused == 1 and door.calls == 1 and ing.broadcast_id is None
    door.refuse = None          # the talker hung up
    ing.datagram_received(pkts[3], ("127.0.0.1", 4000), 1.5)   # too soon: no retry yet
    assert door.calls == 1
    ing.datagram_received(pkts[4], ("127.0.0.1", 4000), 2.1)
    assert door.calls == 2 and ing.broadcast_id == "b2" and ing.stats.broadcasts == 1


def test_operator_stop_keeps_it_off_until_the_stream_pauses(door):
    ing = ingest(RtpIngestConfig(port=5004, zones=["z1"], idle_s=2.0), door)
    pkts = opus_packets(n=40)
    t = 1.0
    for p in pkts[:5]:
        ing.datagram_received(p, ("127.0.0.1", 4000), t)
        t += 0.02
    assert ing.broadcast_id == "b1"
    door.active.clear()
    ing.source.close()          # the engine let go of it: an operator stopped the broadcast
    for p in pkts[5:20]:        # the encoder keeps sending: stays off
        ing.datagram_received(p, ("127.0.0.1", 4000), t)
        t += 0.02
    assert door.calls == 1 and ing.broadcast_id is None
    t += 3.0                    # a pause longer than idle_s: a new talk spurt starts again
    ing.datagram_received(pkts[20], ("127.0.0.1", 4000), t)
    assert door.calls == 2 and ing.broadcast_id == "b2"


def test_stop_of_an_already_ended_broadcast_is_ignored(door):
    ing = ingest(RtpIngestConfig(port=5004, zones=["z1"], idle_s=2.0), door)
    for i, p in enumerate(opus_packets(n=3)):
        ing.datagram_received(p, ("127.0.0.1", 4000), 1.0 + i * 0.02)
    door.active.clear()         # ended elsewhere; the source was not closed yet
    ing.poll(10.0)
    assert ing.broadcast_id is None and door.ended == []


def test_bad_config():
    with pytest.raises(ValueError):
        RtpIngestConfig(port=0, zones=["z1"])
    with pytest.raises(ValueError):
        RtpIngestConfig(port=5004, zones=["z1"], codec="mp3")
    with pytest.raises(ValueError):
        RtpIngestConfig(port=5004, zones=[])
    with pytest.raises(ValueError):
        RtpIngestConfig(port=5004, zones=["z1"], allow=["not-an-ip"])
