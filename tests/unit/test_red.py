"""RFC 2198 redundancy: the packet format (streamer.rtp.red), the RTP output's redundant packets
for registered receivers on lossy links (a Runtime driven tick by tick), a reference receiver
recovering lost packets from them, and the registry's on/off decision from loss reports."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from receivers.receiver import Receiver
from streamer.rtp import control_protocol as cp
from streamer.rtp.packet import RtpPacket
from streamer.rtp.red import RedError, build, parse
from streamer.rtp.registry import ReceiverRegistry, _Receiver
from streamer.rtp.srtp import MediaKeyring, MediaUnprotector
from streamer.zones import Zone, ZoneTree
from tests.unit.engine_rig import Rig


def test_round_trip_with_previous_frame():
    p = build(111, b"cur" * 30, b"prev" * 20, 960)
    blocks = parse(p)
    assert [(b.payload_type, b.ts_offset, b.data) for b in blocks] == [
        (111, 960, b"prev" * 20), (111, 0, b"cur" * 30)]


def test_primary_only_when_there_is_no_previous_frame():
    assert [b.data for b in parse(build(111, b"x" * 50, None, 960))] == [b"x" * 50]


@pytest.mark.parametrize("bad", [b"", b"\x80", b"\x80\x00\x0f\x00", b"\x80\x00\x3c\xff\x6f"])
def test_malformed_is_an_error(bad):
    with pytest.raises(RedError):
        parse(bad)


@given(st.binary(max_size=300))
def test_parser_never_crashes(data):
    try:
        parse(data)
    except RedError:
        pass


def _rig(keyring):
    tree = ZoneTree()
    tree.add(Zone("z"))
    return Rig(tree, keyring=keyring)


def _engine_with_red_receiver():
    keyring = MediaKeyring(1000.0)
    rig = _rig(keyring)
    rig.run(1)
    rig.set_destinations("z", [("10.0.0.1", 4000, 20, False), ("10.0.0.2", 4000, 20, True)])
    rig.start(["z"], freq=600, seconds=2)
    rig.fan.sent.clear()
    rig.run(100)
    return rig.fan, keyring


def test_lossy_receivers_get_red_packets_built_once_per_tick():
    fan, keyring = _engine_with_red_receiver()
    assert fan.dests["z#s"] == [("10.0.0.1", 4000)]
    assert fan.dests["z#rs"] == [("10.0.0.2", 4000)]
    plain = [p for _, p, keys in fan.sent if keys == ["z#s"]]
    redp = [p for _, p, keys in fan.sent if keys == ["z#rs"]]
    assert len(plain) == len(redp) == 100
    rx = MediaUnprotector()
    rx.set_keys(keyring.for_receivers())
    a = [RtpPacket.parse(rx.unprotect(p)) for p in plain]
    b = [RtpPacket.parse(rx.unprotect(p)) for p in redp]
    assert [x.sequence_number for x in a] == [x.sequence_number for x in b]
    assert all(x.payload_type == 121 for x in b)
    for i in range(1, 100):
        blocks = parse(b[i].payload)
        assert blocks[-1].data == a[i].payload and blocks[0].data == a[i - 1].payload
    assert len(parse(b[0].payload)) == 1 and b[0].marker


def test_receiver_recovers_lost_packets_from_red_copies():

    class Sink:
        samples_written = 0
        description = "mem"

        def __init__(self):
            self.chunks = []

        def write(self, pcm):
            self.chunks.append(pcm)
            self.samples_written += len(pcm)

        def close(self):
            pass
    fan, keyring = _engine_with_red_receiver()
    un = MediaUnprotector()
    un.set_keys(keyring.for_receivers())
    redp = [un.unprotect(p) for _, p, keys in fan.sent if keys == ["z#rs"]]
    rx = Receiver(Sink())
    t = 100.0
    dropped = 0
    for i, p in enumerate(redp):
        if i % 7 == 3:  # one packet in seven never arrives
            dropped += 1
        else:
            rx.datagram_received(p, t)
        t += 0.02
        rx.tick(t)
    for _ in range(20):
        t += 0.02
        rx.tick(t)
    snap = rx.snapshot()
    assert snap["red_recovered"] == dropped
    assert snap["concealed_plc"] == 0 and snap["lost"] == 0
    assert snap["received"] == len(redp) - dropped
    pcm = np.concatenate(rx.sink.chunks)
    assert len(pcm) >= 98 * 960


def test_registry_turns_redundancy_on_at_loss_and_off_only_after_a_quiet_hold():
    dests, events = {}, []
    reg = ReceiverRegistry(lambda rid: None, on_event=events.append,
                           on_destinations=lambda z, a: dests.__setitem__(z, list(a)))
    r = _Receiver("rx1", "z1", cp.ReplayGuard(), addr=("203.0.113.9", 5000), online=True)
    reg._rx["rx1"] = r
    reg._take_report(r, {"fraction_lost": 0.005}, 1000.0)
    assert not r.redundant and dests == {}
    reg._take_report(r, {"fraction_lost": 0.06}, 1005.0)
    assert r.redundant and dests["z1"] == [("203.0.113.9", 5000, 20, True)]
    reg._take_report(r, {"fraction_lost": 0.0}, 1010.0)  # repaired loss looks low: hold on
    assert r.redundant
    reg._take_report(r, {"fraction_lost": 0.0}, 1070.0)
    assert not r.redundant and dests["z1"] == [("203.0.113.9", 5000, 20, False)]
    assert [e["on"] for e in events if e["type"] == "receiver.redundancy"] == [True, False]
    assert reg.status("rx1")["redundancy"] is False


def test_idle_reports_keep_a_lossy_receiver_on_redundancy():
    """Between broadcasts a receiver reports 0 % loss of nothing: that is no measurement, so
    a lossy link still gets redundant packets when the next broadcast starts."""
    reg = ReceiverRegistry(lambda rid: None)
    r = _Receiver("rx1", "z1", cp.ReplayGuard(), addr=("203.0.113.9", 5000), online=True)
    reg._rx["rx1"] = r
    reg._take_report(r, {"fraction_lost": 0.08, "received": 1000}, 1000.0)
    assert r.redundant
    for t in range(1005, 1200, 5):                      # idle: nothing arrives
        reg._take_report(r, {"fraction_lost": 0.0, "received": 1000}, float(t))
    assert r.redundant
    reg._take_report(r, {"fraction_lost": 0.0, "received": 1250}, 1205.0)   # measured clean
    assert not r.redundant


def test_switching_to_red_mid_stream_sets_no_marker():
    """A receiver moved onto redundant packets while its zone plays continues the same stream:
    no marker bit (a receiver that lost the packet before it would restart its timeline and
    skip the hole instead of concealing it)."""
    keyring = MediaKeyring(1000.0)
    rig = _rig(keyring)
    fan = rig.fan
    rig.set_destinations("z", [("10.0.0.2", 4000, 20, False)])
    rig.start(["z"], freq=600, seconds=2)
    rig.run(20)
    fan.sent.clear()
    rig.set_destinations("z", [("10.0.0.2", 4000, 20, True)])
    rig.run(30)
    un = MediaUnprotector()
    un.set_keys(keyring.for_receivers())
    redp = [RtpPacket.parse(un.unprotect(p)) for _, p, keys in fan.sent if keys == ["z#rs"]]
    assert redp, "the receiver gets redundant packets"
    assert not any(p.marker for p in redp)
