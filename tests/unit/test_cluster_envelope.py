"""The origin → edge envelope, the edge's tick assembly and the origin's subscription table."""
from __future__ import annotations

import pytest

from streamer.cluster.edge import TickAssembler, tick_inputs
from streamer.cluster.envelope import (MAX_DATAGRAM, EnvelopeError, Programme, Subscription,
                                       pack_subscription, pack_tick, unpack_subscription,
                                       unpack_tick)
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
