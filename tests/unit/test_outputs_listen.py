"""The listening output (streamer/outputs/listen.py): the tick side's rings, and the hub's
pump, limits and slow-reader rule with fake sinks (no sockets)."""
from __future__ import annotations

import asyncio

import pytest

from streamer.outputs.listen import (SLOTS, ListenHub, ListenLimits, ListenOutput,
                                     ListenRefused, ZoneRing)
from streamer.rtp.packet import HEADER_SIZE


class Frame:
    def __init__(self, payload: bytes) -> None:
        self.buf = bytearray(HEADER_SIZE) + bytearray(payload) + bytearray(100)
        self.view = memoryview(self.buf)
        self.n = HEADER_SIZE + len(payload)


class FakeSink:
    def __init__(self, stalled: bool = False) -> None:
        self.data = bytearray()
        self.stalled = stalled
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return len(self.data) if self.stalled else 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def test_only_subscribed_zones_are_copied_and_silence_marks_idle_zones():
    out = ListenOutput()
    ka, kb = ((1, 1.0, 1.0),), ((2, 1.0, 1.0),)
    programs = {ka: ("z1", "z2"), kb: ("z3",)}
    frames = {ka: Frame(b"AAAA"), kb: Frame(b"BB")}
    out.on_tick(0, programs, frames, None)   # nobody subscribed: nothing at all
    r1 = out.subscribe("z1")
    r4 = out.subscribe("z4")   # hears nothing
    out.on_tick(1, programs, frames, None)
    assert r1.read(1)[0] == b"AAAA" and r1.read(1)[1] == hash(ka)
    assert r4.read(1) == (None, None) and r4.ticks[1] == 1
    # the plan changes: z1 now hears kb
    programs2 = {kb: ("z1", "z3")}
    out.on_tick(2, programs2, frames, None)
    assert r1.read(2)[0] == b"BB"
    assert r1.read(1)[0] == b"AAAA"


def test_ring_slot_overwritten_is_not_read_as_the_old_tick():
    r = ZoneRing("z")
    r.key_hash = 5
    r.write(3, Frame(b"old"))
    r.write(3 + SLOTS, Frame(b"new"))
    assert r.read(3) == (None, None)
    assert r.read(3 + SLOTS)[0] == b"new"


def _feed(out: ListenOutput, k0: int, n: int, payload: bytes = b"PPPP") -> None:
    key = ((1, 1.0, 1.0),)
    programs = {key: ("z1",)}
    frames = {key: Frame(payload)}
    for k in range(k0, k0 + n):
        out.on_tick(k, programs, frames, None)


def test_pump_sends_the_same_page_to_every_listener_and_chunks_for_http11():
    async def run() -> None:
        out = ListenOutput()
        hub = ListenHub(out, pump_s=3600)
        a, b = hub.admit("z1", "1.1.1.1"), hub.admit("z1", "2.2.2.2")
        sa, sb = FakeSink(), FakeSink()
        ta = asyncio.ensure_future(hub.serve(a, sa, chunked=False))
        tb = asyncio.ensure_future(hub.serve(b, sb, chunked=True))
        await asyncio.sleep(0)
        _feed(out, 0, 10)
        hub.pump(hub._zones["z1"])
        assert sa.data.startswith(b"OggS") and sa.data.count(b"PPPP") >= 9
        assert sb.data == b"%x\r\n%b\r\n" % (len(sa.data), bytes(sa.data))
        assert hub.counts() == {"z1": 2}
        hub.close()
        assert await ta == "shutdown" and await tb == "shutdown"
        assert hub.total == 0 and out.zones == ()
    asyncio.run(run())


def test_limits_refuse_and_slow_reader_is_dropped():
    async def run() -> None:
        out = ListenOutput()
        hub = ListenHub(out, ListenLimits(max_per_zone=2, max_total=3, max_per_address=1,
                                          max_buffer=10), pump_s=3600)
        hub.admit("z1", "a")
        with pytest.raises(ListenRefused) as e:
            hub.admit("z1", "a")
        assert e.value.code == "address_listeners_full"
        slow = hub.admit("z1", "b")
        with pytest.raises(ListenRefused) as e:
            hub.admit("z1", "c")
        assert e.value.code == "zone_listeners_full"
        hub.admit("z2", "d")
        with pytest.raises(ListenRefused) as e:
            hub.admit("z3", "e")
        assert e.value.code == "listeners_full"
        sink = FakeSink(stalled=True)
        t = asyncio.ensure_future(hub.serve(slow, sink))
        await asyncio.sleep(0)
        for k0 in (0, 10):
            _feed(out, k0, 10)
            hub.pump(hub._zones["z1"])
        assert await t == "slow reader" and hub.dropped_slow == 1 and sink.closed
        assert hub.counts()["z1"] == 1
        hub.close()
    asyncio.run(run())


def test_silence_fills_ticks_without_programme_so_granules_keep_counting():
    async def run() -> None:
        out = ListenOutput()
        hub = ListenHub(out, pump_s=3600)
        lst = hub.admit("z1", "a")
        sink = FakeSink()
        t = asyncio.ensure_future(hub.serve(lst, sink))
        await asyncio.sleep(0)
        _feed(out, 0, 5)
        for k in range(5, 10):
            out.on_tick(k, {}, {}, None)   # nothing on air: the engine sends nothing
        hub.pump(hub._zones["z1"])
        s = hub._zones["z1"]
        assert s.pager.granule == 10 * 960
        hub.close()
        await t
    asyncio.run(run())


def test_listeners_are_written_once_per_flush_with_every_page_in_order():
    async def run() -> None:
        out = ListenOutput()
        hub = ListenHub(out, pump_s=0.2, flush_s=1.0)
        assert hub.flush_every == 5
        a = hub.admit("z1", "1.1.1.1")
        sa = FakeSink()
        ta = asyncio.ensure_future(hub.serve(a, sa, chunked=True))
        await asyncio.sleep(0)
        writes = []
        real = sa.write

        def count(data: bytes) -> None:
            writes.append(len(data))
            real(data)
        sa.write = count   # type: ignore[method-assign]
        for i in range(10):
            _feed(out, i * 10, 10)
            hub.pump(hub._zones["z1"])
        assert len(writes) == 2                        # ten pumps, two writes
        body = bytes(sa.data)
        size, _, rest = body.partition(b"\r\n")
        first = rest[:int(size, 16)]
        assert first.count(b"OggS") == 5               # the five pages of the first second
        seqs = [int.from_bytes(first[i + 18:i + 22], "little")
                for i in range(len(first)) if first.startswith(b"OggS", i)]
        assert seqs == [2, 3, 4, 5, 6]
        hub.close()
        assert await ta == "shutdown"
    asyncio.run(run())


class WatchedSink(FakeSink):
    """A sink that tells the hub when its client leaves (as SocketSink does)."""
    def __init__(self, stalled: bool = False) -> None:
        super().__init__(stalled)
        self.gone = None

    def watch(self, gone) -> None:
        self.gone = gone


def test_attached_listeners_are_owned_by_the_hub_and_freed_once():
    async def run() -> None:
        out = ListenOutput()
        hub = ListenHub(out, ListenLimits(max_per_address=1, max_buffer=10), pump_s=3600)
        ended: list[str] = []
        a, b = hub.admit("z1", "1.1.1.1"), hub.admit("z1", "2.2.2.2")
        a.on_end = lambda: ended.append("a")
        b.on_end = lambda: ended.append("b")
        sa, sb = WatchedSink(), WatchedSink(stalled=True)
        assert hub.attach(a, sa) and hub.attach(b, sb, chunked=True)
        assert sa.gone is not None and hub.counts() == {"z1": 2}
        for k0 in (0, 10):
            _feed(out, k0, 10)
            hub.pump(hub._zones["z1"])
        # the stalled one is dropped and its place freed, nobody awaiting it
        assert ended == ["b"] and sb.closed and hub.dropped_slow == 1
        assert hub.counts() == {"z1": 1} and hub.total == 1
        assert sa.data.count(b"OggS") == 2
        sa.gone()            # the client left: freed at once
        sa.gone()            # told twice: freed once
        assert ended == ["b", "a"] and sa.closed and hub.total == 0
        assert hub.counts() == {} and out.zones == ()
        hub.admit("z1", "1.1.1.1")   # the address's place is free again
        late = hub.admit("z2", "3.3.3.3")
        hub.close()
        assert not hub.attach(late, WatchedSink())   # shut down meanwhile: refused, closed
        assert hub.total == 0
    asyncio.run(run())
