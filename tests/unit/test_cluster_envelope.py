"""The origin → edge envelope, the edge's tick assembly and the origin's subscription table."""
from __future__ import annotations

import pytest

from streamer.cluster.edge import TickAssembler, _Frame, layout_inputs, tick_inputs
from streamer.cluster.envelope import (MAX_DATAGRAM, EnvelopeError, Programme, Subscription,
                                       TickReader, pack_subscription, pack_tick,
                                       unpack_subscription, unpack_tick)
from streamer.rtp.packet import HEADER_SIZE
from streamer.cluster.feed import Subscriptions, select

KEY = b"k" * 32
WALL = 1_750_000_000.0


def test_tick_round_trip_keeps_continuity_and_markers():
    progs = [Programme(b"\xfcopus-a", ("z1", "z2"), ("z3",)), Programme(b"\xfcopus-b", ("z4",))]
    [d] = pack_tick(KEY, 123456, 0xFFFF, 0xFFFFFFF0, 0xDEADBEEF, int(WALL * 1000), progs)
    env = unpack_tick(KEY, d, WALL + 0.1)
    assert (env.k, env.seq, env.ts, env.ssrc, env.last) == (123456, 0xFFFF, 0xFFFFFFF0,
                                                            0xDEADBEEF, True)
    assert env.programmes == tuple(progs)


@pytest.mark.parametrize("mutate", [
    lambda d: d[:-1] + bytes([d[-1] ^ 1]),            # MAC
    lambda d: d[:30] + bytes([d[30] ^ 1]) + d[31:],   # body
    lambda d: b"LOAX" + d[4:],                        # magic
    lambda d: d[:20],                                 # truncated
])
def test_tampered_envelopes_are_refused(mutate):
    [d] = pack_tick(KEY, 1, 2, 3, 4, int(WALL * 1000), [Programme(b"x", ("z1",))])
    with pytest.raises(EnvelopeError):
        unpack_tick(KEY, mutate(d), WALL)
    with pytest.raises(EnvelopeError):
        unpack_tick(b"other-key" * 4, d, WALL)


def test_old_and_future_envelopes_are_refused():
    [d] = pack_tick(KEY, 1, 2, 3, 4, int(WALL * 1000), [Programme(b"x", ("z1",))])
    unpack_tick(KEY, d, WALL + 4.9)
    for now in (WALL + 5.1, WALL - 5.1):
        with pytest.raises(EnvelopeError):
            unpack_tick(KEY, d, now)


def test_many_zones_split_into_parts_within_the_datagram_size():
    zones = tuple(f"xa-{i:04d}-{'x' * 20}" for i in range(300))
    ds = pack_tick(KEY, 7, 1, 2, 3, int(WALL * 1000), [Programme(b"p" * 120, zones),
                                                        Programme(b"q" * 80, ("z",))])
    assert len(ds) > 1 and all(len(d) <= MAX_DATAGRAM for d in ds)
    envs = [unpack_tick(KEY, d, WALL) for d in ds]
    assert [e.last for e in envs] == [False] * (len(ds) - 1) + [True]
    asm = TickAssembler()
    ticks = [t for e in envs for t in asm.feed(e)]
    assert len(ticks) == 1
    programs, frames, markers = tick_inputs(ticks[0].programmes, dict.fromkeys(zones + ("z",)))
    assert sorted(len(z) for z in programs.values()) == [1, 300]


def test_assembler_drops_duplicates_and_follows_a_new_origin():
    asm = TickAssembler()

    def env(k, ssrc=1):
        [d] = pack_tick(KEY, k, k, k * 960, ssrc, int(WALL * 1000), [Programme(b"x", ("z",))])
        return unpack_tick(KEY, d, WALL)
    assert [t.k for t in asm.feed(env(10))] == [10]
    assert asm.feed(env(10)) == [] and asm.feed(env(9)) == []    # duplicate, late
    assert asm.duplicates == 2
    assert [t.k for t in asm.feed(env(11))] == [11]
    assert [t.k for t in asm.feed(env(3, ssrc=2))] == [3]        # a standby's stream
    assert asm.origin_switches == 2


def test_subscription_round_trip_replay_and_expiry():
    d = pack_subscription(KEY, "edge-1", int(WALL * 1000), {"z2", "z1"})
    sub = unpack_subscription(KEY, d, WALL)
    assert sub == Subscription("edge-1", int(WALL * 1000), frozenset({"z1", "z2"}))
    with pytest.raises(EnvelopeError):
        unpack_subscription(KEY, d[:-1] + b"\x00", WALL)
    with pytest.raises(EnvelopeError):
        unpack_subscription(KEY, d, WALL + 6)
    subs = Subscriptions(ttl_s=3.0)
    assert subs.update(sub, ("10.0.0.1", 4000), now=0.0)
    assert subs.targets == ((("10.0.0.1", 4000), frozenset({"z1", "z2"})),)
    older = Subscription("edge-1", int(WALL * 1000) - 1, frozenset({"z9"}))
    assert not subs.update(older, ("10.0.0.1", 4000), now=0.5)    # replayed: ignored
    # the node moved (new NAT mapping): fed at its new address only
    newer = Subscription("edge-1", int(WALL * 1000) + 1000, frozenset({"z1"}))
    assert subs.update(newer, ("10.0.0.1", 4001), now=1.0)
    assert subs.targets == ((("10.0.0.1", 4001), frozenset({"z1"})),)
    assert subs.expire(3.9) == []
    assert subs.expire(4.0) == ["edge-1"] and subs.targets == ()


class _F:
    def __init__(self, payload: bytes) -> None:
        self.buf = bytearray(12) + payload
        self.n = len(self.buf)


def test_select_keeps_only_the_edges_zones_and_markers():
    programs = {"a": ("z1", "z2", "z3"), "b": ("z4",)}
    frames = {"a": _F(b"AA"), "b": _F(b"BB")}
    markers = {"a": (("z1", "z3"), ("z2",)), "b": (("z4",), ())}
    got = select(programs, markers, frozenset({"z2", "z3"}), frames)
    assert got == [Programme(b"AA", ("z3",), ("z2",))]
    assert select(programs, None, frozenset({"z4"}), frames) == [Programme(b"BB", ("z4",))]
    assert select(programs, None, frozenset({"z9"}), frames) == []


def _tick(k, progs, wall=WALL, **kw):
    [d] = pack_tick(KEY, k, k, k * 960, 0xABC, int(wall * 1000), progs, **kw)
    return d


def test_reader_reads_what_unpack_tick_reads():
    progs = [Programme(b"\xfcopus-a", ("z1", "z2"), ("z3",)), Programme(b"\xfcopus-bb", ("z4",))]
    d = _tick(42, progs, fence=7)
    r = TickReader(KEY)
    buf = bytearray(2048)
    buf[:len(d)] = d
    r.read(memoryview(buf)[:len(d)], WALL)          # as the edge reads: a view of its buffer
    assert r.envelope() == unpack_tick(KEY, d, WALL)
    assert (r.k, r.seq, r.ts, r.ssrc, r.fence, r.part, r.last) == (42, 42, 42 * 960, 0xABC, 7,
                                                                    0, True)
    assert r.entries == ((("z1", "z2"), ("z3",)), (("z4",), ()))
    assert bytes(r.payload(0)) == b"\xfcopus-a" and bytes(r.payload(1)) == b"\xfcopus-bb"


def test_reader_decodes_zone_lists_only_when_they_change():
    r = TickReader(KEY)
    r.read(_tick(1, [Programme(b"a", ("z1", "z2"))]), WALL)
    entries = r.entries
    for k, payload in ((2, b"bb"), (3, b"c" * 200)):     # new payloads, other lengths
        r.read(_tick(k, [Programme(payload, ("z1", "z2"))]), WALL)
        assert r.entries is entries and bytes(r.payload(0)) == payload and r.k == k
    assert r.decoded == 1
    r.read(_tick(4, [Programme(b"d", ("z1",), ("z2",))]), WALL)   # z2 starts a talk spurt
    assert r.entries == ((("z1",), ("z2",)),) and r.decoded == 2
    r.read(_tick(5, [Programme(b"e", ("z1",), ("z2",)), Programme(b"f", ("z9",))]), WALL)
    assert r.entries == ((("z1",), ("z2",)), (("z9",), ())) and r.decoded == 3
    assert bytes(r.payload(1)) == b"f"
    r.read(_tick(6, [Programme(b"g", ("z1",), ("z2",))]), WALL)   # the other one stopped
    assert r.entries == ((("z1",), ("z2",)),) and bytes(r.payload(0)) == b"g"


@pytest.mark.parametrize("mutate", [
    lambda d: d[:-1] + bytes([d[-1] ^ 1]),            # MAC
    lambda d: d[:50] + bytes([d[50] ^ 1]) + d[51:],   # body
    lambda d: b"LOAX" + d[4:],                        # magic
    lambda d: d[:20],                                 # truncated
])
def test_reader_refuses_what_unpack_tick_refuses(mutate):
    r = TickReader(KEY)
    good = _tick(1, [Programme(b"x", ("z1",))])
    r.read(good, WALL)
    with pytest.raises(EnvelopeError):
        r.read(mutate(good), WALL)
    for now in (WALL + 5.1, WALL - 5.1):
        with pytest.raises(EnvelopeError):
            r.read(good, now)
    with pytest.raises(EnvelopeError):
        TickReader(b"other-key" * 4).read(good, WALL)


def test_reader_refuses_a_well_signed_but_malformed_body():
    import hashlib
    import hmac
    import struct
    head = struct.pack("!4sBBBxQQQHIIH", b"LOAE", 2, 1, 0, int(WALL * 1000), 0, 1, 1, 1, 1, 1)
    for body in (b"\x00\x01\x00\x09z",              # a zone longer than the datagram
                 b"\x00\x00\x00\x09abc",            # a payload longer than the datagram
                 b"\x00\x00\x00\x01ab",             # trailing bytes
                 b"\x00\x01\x00\x00\x00\x01a"):     # an empty zone id
        data = head + body
        data += hmac.new(KEY, data, hashlib.sha256).digest()[:16]
        with pytest.raises(EnvelopeError):
            TickReader(KEY).read(data, WALL)
        with pytest.raises(EnvelopeError):
            unpack_tick(KEY, data, WALL)


def test_reader_refused_after_a_zone_change_forgets_the_old_lists():
    """A signed datagram whose zone list changed but whose body is refused further on must not
    leave the reader matching the next datagram against lists it already dropped."""
    import hashlib
    import hmac
    import struct
    r = TickReader(KEY)
    r.read(_tick(1, [Programme(b"a", ("z1",))]), WALL)
    head = struct.pack("!4sBBBxQQQHIIH", b"LOAE", 2, 1, 0, int(WALL * 1000), 0, 2, 2, 2, 0xABC, 1)
    body = b"\x00\x01\x00\x02z2" + b"\x00\x09abc"        # zone z2, a payload too long
    data = head + body
    data += hmac.new(KEY, data, hashlib.sha256).digest()[:16]
    with pytest.raises(EnvelopeError):
        r.read(data, WALL)
    r.read(_tick(3, [Programme(b"c", ("z1",))]), WALL)      # the old list again: decoded anew
    assert r.entries == ((("z1",), ()),) and bytes(r.payload(0)) == b"c"


def test_assembler_whole_keeps_the_books_of_feed():
    asm = TickAssembler()
    assert asm.whole(1, 10) is True and asm.last_k == 10
    assert asm.whole(1, 10) is False and asm.whole(1, 9) is False and asm.duplicates == 2
    assert asm.whole(2, 3) is True and asm.origin_switches == 2     # a standby's stream
    # while parts of a tick are pending, whole ticks go through feed (it plays those parts)
    ds = pack_tick(KEY, 4, 4, 4 * 960, 2, int(WALL * 1000),
                   [Programme(b"p" * 100, tuple(f"zone-{i:04d}-{'x' * 30}" for i in range(60)))])
    assert len(ds) > 1
    assert asm.feed(unpack_tick(KEY, ds[0], WALL)) == []
    assert asm.whole(2, 5) is None
    [d5] = pack_tick(KEY, 5, 5, 5 * 960, 2, int(WALL * 1000), [Programme(b"x", ("z",))])
    assert [t.k for t in asm.feed(unpack_tick(KEY, d5, WALL))] == [4, 5]
    assert asm.whole(2, 6) is True


def test_layout_inputs_leave_out_unknown_zones_and_keep_markers():
    entries = ((("z1", "zx"), ("z2",)), (("zy",), ()), (("z3",), ()))
    programs, frames, markers, slots = layout_inputs(entries, dict.fromkeys(("z1", "z2", "z3")))
    assert sorted(programs.values()) == [("z1", "z2"), ("z3",)]
    assert sorted(markers.values()) == [(("z1",), ("z2",)), (("z3",), ())]
    assert sorted(i for _key, i in slots) == [0, 2]
    assert set(frames) == set(programs) == {key for key, _i in slots}


def test_frame_load_refills_the_same_buffer():
    f = _Frame(b"first")
    buf, view = f.buf, f.view
    for payload in (b"second-longer", b"3", bytes(1300)):
        f.load(memoryview(bytearray(payload)))
        assert f.buf is buf and f.view is view
        assert f.n == HEADER_SIZE + len(payload) and bytes(f.buf[HEADER_SIZE:f.n]) == payload
    f.load(bytes(5000))                           # larger than any envelope's: grows
    assert f.n == HEADER_SIZE + 5000 and len(f.buf) >= f.n
