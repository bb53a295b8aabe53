"""Some receivers of a zone, not the whole zone (StartBroadcast.only, streamer/core/carve.py):
the pure helpers, and the engine driven tick by tick (no thread, no socket) with a fan-out that
records which *address* got which packet: the chosen receivers hear the broadcast, their zone's
other receivers keep the programme, and when it ends everyone is back on the zone's programme,
one packet per tick and one RTP stream throughout."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from streamer.core.carve import Carve, carve_zone, restore_carves, split_destinations
from streamer.mixer.arbitration import Level
from streamer.port import (Destination, ReplaceZones, SetDestinations, StartBroadcast,
                           StopBroadcast, ToneAudio, ZoneError, carve_id)
from streamer.rtp.opus import OpusDecoder
from streamer.rtp.packet import RtpPacket
from streamer.zones import Zone, ZoneTree
from tests.unit.engine_rig import RecordingFanout, Rig, dominant_freq

A = [("127.0.0.1", 21000 + i) for i in range(6)]      # static receivers of z
REG = [("127.0.0.2", 22000 + i) for i in range(2)]    # registered (observed) receivers of z


# ------------------------------------------------------------------ pure
def test_split_destinations_keeps_or_leaves_out_the_carved_addresses():
    plain = {20: [("239.1.1.1", 5004), A[0], A[1]], 40: [A[2]]}
    dyn = [(*REG[0], 20, False), (*REG[1], 60, True)]
    taken = frozenset({A[1], A[2], REG[1], ("9.9.9.9", 1)})
    mine, mine_dyn = split_destinations(plain, dyn, taken, take=True)
    assert mine == {20: [A[1]], 40: [A[2]]} and mine_dyn == [(*REG[1], 60, True)]
    rest, rest_dyn = split_destinations(plain, dyn, taken, take=False)
    # a multicast group is never a receiver's address: it stays with the zone
    assert rest == {20: [("239.1.1.1", 5004), A[0]], 40: []} and rest_dyn == [(*REG[0], 20, False)]


def test_restore_carves_puts_back_those_whose_zone_is_still_there():
    tree = ZoneTree()
    tree.add(Zone("p"))
    tree.add(Zone("z", parent="p", language="bahnar"))
    carves = {"z~b1": Carve("z", "b1", frozenset({A[0]})), "gone~b1": Carve("gone", "b1", frozenset())}
    assert restore_carves(tree, carves) == ["gone~b1"]
    assert list(carves) == ["z~b1"]
    c = tree.zones["z~b1"]
    assert (c.parent, c.level, c.language, c.unicast) == ("z", "carve", "bahnar", [])
    assert carve_zone(tree.zones["z"], "x").parent == "z"


# ------------------------------------------------------------------ the engine
class AddrFanout(RecordingFanout):
    """Records, per destination address, the ticks and packets it was sent."""

    def __init__(self):
        super().__init__()
        self.heard: dict[tuple[str, int], list[tuple[int, bytes]]] = defaultdict(list)

    def send(self, packet, keys):
        data = bytes(packet)
        for k in keys:
            for a in self.dests.get(k, ()):
                self.heard[(a[0], a[1])].append((self.tick, data))
        return super().send(packet, keys)


def make(extra_zone=False):
    tree = ZoneTree()
    tree.add(Zone("province"))
    tree.add(Zone("z", parent="province", unicast=list(A)))
    if extra_zone:
        tree.add(Zone("y", parent="province", unicast=[("127.0.0.3", 23000)]))
    rig = Rig(tree)
    fan = AddrFanout()
    fan.dests = dict(rig.fan.dests)   # the lists the rig's fan-out was given
    rig.fan = rig.rt.fanout = rig.rt.rtp.fanout = fan
    rig.rt.submit(SetDestinations("z", tuple(Destination(*a) for a in REG)))
    return rig, fan


def alert(rig, addrs, level="emergency", freq=440.0, seconds=30.0, targets=(), bid="alert-1"):
    return rig.rt.submit(StartBroadcast(id=bid, targets=tuple(targets), level=Level.parse(level),
                                        source=ToneAudio(freq_hz=freq, seconds=seconds),
                                        only={"z": tuple(addrs)}))


def freq_between(fan, addr, t0, t1):
    """The dominant frequency an address heard from tick t0 to t1 (its own decoder, fed every
    packet it got, as a receiver would)."""
    dec = OpusDecoder()
    pcm = [(t, dec.decode(RtpPacket.parse(p).payload)) for t, p in fan.heard[addr]]
    x = np.concatenate([f for t, f in pcm if t0 <= t < t1])
    return dominant_freq(x)


def one_stream(fan, addr, t0, t1):
    """Exactly one packet per tick from t0 to t1, one SSRC, contiguous numbers."""
    got = [(t, RtpPacket.parse(p)) for t, p in fan.heard[addr] if t0 <= t < t1]
    assert [t for t, _ in got] == list(range(t0, t1)), addr
    assert len({p.ssrc for _, p in got}) == 1
    seqs = [p.sequence_number for _, p in got]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))


def test_only_the_chosen_receivers_hear_it_and_all_are_back_on_the_programme_after():
    rig, fan = make()
    rig.start(["province"], freq=1000, seconds=60)
    rig.run(50)
    inside = [A[1], A[4], REG[0]]
    outside = [A[0], A[2], A[3], A[5], REG[1]]
    snap = alert(rig, inside)
    assert snap is not None and carve_id("z", "alert-1") in snap.reached_zones
    t_on = rig.k
    rig.run(100)
    t_stop = rig.k
    rig.rt.submit(StopBroadcast("alert-1", reason="alert cancelled"))
    rig.run(100)
    end = rig.k
    for a in inside:
        assert abs(freq_between(fan, a, t_on + 5, t_stop) - 440) < 20, a
        assert abs(freq_between(fan, a, t_stop + 5, end) - 1000) < 20, a
    for a in outside:
        assert abs(freq_between(fan, a, 0, end) - 1000) < 20, a
    for a in inside + outside:
        one_stream(fan, a, 2, end)     # no gap, no double packet, one RTP stream
    # after: the same packets as their neighbours (the zone's programme, not a rewound fork)
    after_in = [p for t, p in fan.heard[A[1]] if t >= t_stop]
    after_out = [p for t, p in fan.heard[A[0]] if t >= t_stop]
    assert after_in == after_out
    assert not rig.rt.core.carves and carve_id("z", "alert-1") not in rig.rt.core.tree.zones
    # the programme's fork for the carve was let go (nobody hears it)
    prog = [b for b in rig.rt.core.broadcasts.values()][0]
    assert sum(1 for p in prog.playheads if not p.finished) == 1


def test_a_broadcast_that_finishes_gives_its_receivers_back_in_the_same_tick():
    rig, fan = make()
    rig.start(["province"], freq=1000, seconds=60)
    rig.run(10)
    alert(rig, [A[2]], seconds=1.0)
    rig.run(120)
    assert "broadcast.finished" in rig.types
    one_stream(fan, A[2], 2, rig.k)
    assert abs(freq_between(fan, A[2], rig.k - 40, rig.k) - 1000) < 20
    # it differs from its neighbour's for the alert's 50 frames exactly: not one tick of
    # anything else (the programme's fork for the carve) between the alert and the programme
    mine, theirs = dict(fan.heard[A[2]]), dict(fan.heard[A[0]])
    differ = [t for t in mine if mine[t] != theirs[t]]
    assert len(differ) == 50 and differ == list(range(differ[0], differ[0] + 50))


def test_the_tree_sent_again_keeps_the_carve_and_a_higher_level_on_the_zone_still_reaches_it():
    rig, fan = make(extra_zone=True)
    rig.start(["province"], freq=1000, seconds=60)
    rig.run(10)
    alert(rig, [A[3]], level="priority", freq=440)
    rig.run(30)
    # control sends its tree (which knows nothing of carves): the carve stays
    tree = ZoneTree()
    tree.add(Zone("province"))
    tree.add(Zone("z", parent="province", unicast=list(A)))
    tree.add(Zone("y", parent="province", unicast=[("127.0.0.3", 23000)]))
    rig.rt.submit(ReplaceZones(tuple(tree.zones.values())))
    t0 = rig.k
    rig.run(50)
    assert abs(freq_between(fan, A[3], t0 + 5, rig.k) - 440) < 20
    assert abs(freq_between(fan, A[0], t0 + 5, rig.k) - 1000) < 20
    # an emergency to the whole province reaches the carved receiver too (it sits below z)
    rig.start(["province"], level="emergency", freq=2000, seconds=30)
    t1 = rig.k
    rig.run(50)
    for a in (A[3], A[0], ("127.0.0.3", 23000)):
        assert abs(freq_between(fan, a, t1 + 5, rig.k) - 2000) < 30, a
    one_stream(fan, A[3], 2, rig.k)


def test_only_names_an_unknown_zone_or_a_carve():
    rig, _ = make()
    with pytest.raises(ZoneError):
        rig.rt.submit(StartBroadcast(id="x", targets=(), level=Level.EMERGENCY,
                                     source=ToneAudio(), only={"nowhere": (A[0],)}))
    alert(rig, [A[0]])
    with pytest.raises(ZoneError):
        rig.rt.submit(StartBroadcast(id="y", targets=(), level=Level.EMERGENCY,
                                     source=ToneAudio(), only={carve_id("z", "alert-1"): (A[0],)}))


def test_place_nests_a_receiver_already_carved_and_release_moves_the_inner_carve_up():
    from streamer.core.carve import innermost, nested_addrs, place, release
    carves = place({}, "z", "a", [A[1], A[2]])
    assert carves == {"z~a": Carve("z", "a", frozenset({A[1], A[2]}), "z")}
    b = place(carves, "z", "b", [A[2], A[3]])
    assert b == {"z~a~b": Carve("z", "b", frozenset({A[2]}), "z~a"),
                 "z~b": Carve("z", "b", frozenset({A[3]}), "z")}
    carves.update(b)
    assert nested_addrs(carves) == {"z": frozenset({A[1], A[2], A[3]}), "z~a": frozenset({A[2]})}
    assert innermost(carves) == {A[1]: "z~a", A[2]: "z~a~b", A[3]: "z~b"}
    gone, moved = release(carves, "a")
    assert gone == ["z~a"] and moved == {"z~a~b": "z"}
    assert carves["z~a~b"].parent == "z" and innermost(carves) == {A[2]: "z~a~b", A[3]: "z~b"}


def test_overlapping_areas_each_receiver_gets_one_packet_per_tick_from_the_higher_level():
    rig, fan = make()
    rig.start(["province"], freq=1000, seconds=60)
    rig.run(10)
    alert(rig, [A[1], A[2]], level="priority", freq=440, bid="flood")
    rig.run(20)
    alert(rig, [A[2], A[3]], level="emergency", freq=2000, bid="quake")
    t0 = rig.k
    rig.run(50)
    heard = {a: freq_between(fan, a, t0 + 5, rig.k) for a in A + REG}
    assert abs(heard[A[1]] - 440) < 20 and abs(heard[A[2]] - 2000) < 30
    assert abs(heard[A[3]] - 2000) < 30
    assert all(abs(heard[a] - 1000) < 20 for a in (A[0], A[4], A[5], *REG))
    # the first ends: its inner carve moves up; A[2] keeps the quake, A[1] is back
    rig.rt.submit(StopBroadcast("flood"))
    t1 = rig.k
    rig.run(50)
    assert abs(freq_between(fan, A[2], t1 + 5, rig.k) - 2000) < 30
    assert abs(freq_between(fan, A[1], t1 + 5, rig.k) - 1000) < 20
    rig.rt.submit(StopBroadcast("quake"))
    t2 = rig.k
    rig.run(50)
    for a in A + REG:
        assert abs(freq_between(fan, a, t2 + 5, rig.k) - 1000) < 20, a
        one_stream(fan, a, 2, rig.k)
    assert not rig.rt.core.carves and not [z for z in rig.rt.core.tree.zones if "~" in z]


def test_a_big_carve_s_lists_are_handed_over_by_the_tick_nothing_packed_by_the_submitter():
    """StartBroadcast with `only` does no per-address work on the submitting thread for the
    fan-out (every ms of it, on a core the fan-out shares, waited ~4 ms before the first
    packet): the tick that applies the carve hands the fan-out the carve's list and its
    zone's rest (with the real fan-out they are cut out of the zone's packed list there:
    tests/integration/test_carve_fanout.py)."""
    class Preparing(RecordingFanout):
        def __init__(self):
            super().__init__()
            self.prepared: list[tuple] = []

        def prepare(self, addrs):
            self.prepared.append(tuple(addrs))

    many = [(f"127.0.{i // 250}.{i % 250 + 1}", 40000) for i in range(1000)]
    tree = ZoneTree()
    tree.add(Zone("z", unicast=list(many)))
    rig = Rig(tree)
    fan = Preparing()
    fan.dests = dict(rig.fan.dests)
    rig.fan = rig.rt.fanout = rig.rt.rtp.fanout = fan
    rig.start(["z"], seconds=60)
    rig.run(3)
    alert(rig, many[::3])
    assert fan.prepared == []
    rig.run(1)
    assert fan.dests[carve_id("z", "alert-1")] == many[::3]
    assert fan.dests["z"] == [a for i, a in enumerate(many) if i % 3]


def test_the_alert_s_packet_is_handed_to_the_fan_out_before_the_zone_s_programme():
    """In a tick where a polygon alert's carve and the rest of its zone hear different
    programmes, the most urgent one is sent first (the fan-out sends in that order: the alert's
    receivers do not wait behind the programme's)."""
    rig, fan = make()
    rig.start(["province"], freq=1000, seconds=60)
    rig.run(5)
    alert(rig, [A[1], A[4]])
    k = rig.k
    rig.run(3)
    cid = carve_id("z", "alert-1")
    for t in range(k, k + 3):
        sent = [keys for tick, _p, keys in fan.sent if tick == t]
        assert len(sent) >= 2 and cid in sent[0] and cid not in sent[-1], (t, sent)
