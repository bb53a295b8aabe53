"""HTTP listening: each zone's programme as one Ogg/Opus stream, remuxed from the packets the
zone's receivers get (no encode per listener or per zone).

Two sides, joined by one ring per zone:

- `ListenOutput` is an `streamer.rtp.output.Output`: every tick it copies the Opus payload of
  the programme each *subscribed* zone hears into that zone's `ZoneRing` (256 preallocated
  slots, 5.12 s), or marks the slot silent when the zone has nothing on air. It never waits,
  never allocates a buffer, and does nothing at all for zones nobody subscribed to.
- `ListenHub` runs on the event loop: per subscribed zone one pump task wakes every
  `pump_s`, reads the ring's new slots (a seqlock per slot: a slot overwritten while read is
  dropped, never half-read), turns them into one Ogg page (built once per zone) and hands the
  same bytes to every listener of the zone and to any other consumer (the archive, HLS).
  A listener is a `Sink` (a transport-like object): the hub writes without awaiting, and a sink
  whose unsent bytes exceed `max_buffer` is a slow reader: it is closed, so a stalled phone
  never holds memory or slows anything. The HTTP side hands over a `SocketSink`
  (`streamer.outputs.listen_socket`): the connection's own socket once the response head is
  sent, so a page costs one send(2) per listener and a listener holds no HTTP server state.

Limits (`ListenLimits`): listeners per zone, in total and per address; `admit` raises
`ListenRefused` (with a retry-after) before anything is sent.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from streamer.outputs.listen_socket import SocketSink
from streamer.outputs.ogg import OggOpusPager, silence_packet
from streamer.rtp.packet import HEADER_SIZE

if TYPE_CHECKING:
    from streamer.mixer.programs import ProgramKey
    from streamer.rtp.output import ProgramFrame

__all__ = ["ListenHub", "ListenLimits", "ListenOutput", "ListenRefused", "Sink", "ZoneRing",
           "PacketConsumer"]

log = logging.getLogger("loa.listen")

SLOTS = 256            # a power of two <= 256: the slot index k & 255 is a cached small int
SLOT_BYTES = 1500      # Opus's largest 20 ms packet is 1275 bytes
SILENT = 0             # a slot's length when the zone had nothing on air


class ZoneRing:
    """The last 256 ticks of one zone: payload bytes, lengths, the programme's hash (which
    broadcast it was, for the archive) and the tick each slot holds (-1 while being written)."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.buf = bytearray(SLOTS * SLOT_BYTES)
        self.view = memoryview(self.buf)
        self.lens = [0] * SLOTS
        self.programs: list[int | None] = [None] * SLOTS
        self.ticks = [-1] * SLOTS
        self.last = -1              # newest tick written
        self.key: ProgramKey | None = None   # the programme the zone hears (tick side)
        self.key_hash: int | None = None

    def write(self, k: int, frame: ProgramFrame | None) -> None:
        i = k & (SLOTS - 1)
        self.ticks[i] = -1
        if frame is None:
            self.lens[i] = SILENT
            self.programs[i] = None
        else:
            n = frame.n - HEADER_SIZE
            off = i * SLOT_BYTES
            self.view[off:off + n] = frame.view[HEADER_SIZE:frame.n]
            self.lens[i] = n
            self.programs[i] = self.key_hash
        self.ticks[i] = k
        self.last = k

    def read(self, k: int) -> tuple[bytes | None, int | None]:
        """Tick k's packet (None: silent or no longer there) and its programme hash."""
        i = k & (SLOTS - 1)
        if self.ticks[i] != k:
            return None, None
        n = self.lens[i]
        prog = self.programs[i]
        data = bytes(self.view[i * SLOT_BYTES:i * SLOT_BYTES + n]) if n else None
        if self.ticks[i] != k:   # overwritten while read
            return None, None
        return data, prog


class ListenOutput:
    """The tick side: copies each subscribed zone's packet into its ring (see module doc)."""

    def __init__(self) -> None:
        self._rings: dict[str, ZoneRing] = {}
        self._active: tuple[ZoneRing, ...] = ()   # replaced, never mutated: the tick reads it
        self._mapped_for: object = None
        self._mapped_active: tuple[ZoneRing, ...] = ()
        self._lock = threading.Lock()
        self._subs: dict[str, int] = {}

    def subscribe(self, zone: str) -> ZoneRing:
        with self._lock:
            ring = self._rings.get(zone) or ZoneRing(zone)
            self._rings[zone] = ring
            self._subs[zone] = self._subs.get(zone, 0) + 1
            self._active = tuple(self._rings[z] for z in self._subs)
            return ring

    def unsubscribe(self, zone: str) -> None:
        with self._lock:
            n = self._subs.get(zone, 0) - 1
            if n > 0:
                self._subs[zone] = n
            else:
                self._subs.pop(zone, None)
                self._rings.pop(zone, None)
            self._active = tuple(self._rings[z] for z in self._subs)

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(r.zone for r in self._active)

    def on_tick(self, k: int, programs: Mapping[ProgramKey, tuple[str, ...]],
                frames: Mapping[ProgramKey, ProgramFrame],
                markers: Mapping[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]] | None
                ) -> None:
        active = self._active
        if not active:
            return
        if programs is not self._mapped_for or active is not self._mapped_active:
            self._remap(programs, active)
        for ring in active:
            key = ring.key
            ring.write(k, frames[key] if key is not None else None)

    def _remap(self, programs: Mapping[ProgramKey, tuple[str, ...]],
               active: tuple[ZoneRing, ...]) -> None:
        """Which programme each subscribed zone hears: only when the plan changes."""
        by_zone = {r.zone: r for r in active}
        for r in active:
            r.key = None
            r.key_hash = None
        for key, zones in programs.items():
            for z in zones:
                hit = by_zone.get(z)
                if hit is not None:
                    hit.key = key
                    hit.key_hash = hash(key)
        self._mapped_for = programs
        self._mapped_active = active


class Sink(Protocol):
    """A listener's connection as the hub needs it (an asyncio transport fits)."""
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class PacketConsumer(Protocol):
    """Anything else fed a zone's packets by its pump (the archive, HLS): `first_k` is the tick
    of packets[0]; a None packet was silence; `programs` the programme hash of each."""
    def on_packets(self, zone: str, first_k: int, packets: list[bytes | None],
                   programs: list[int | None]) -> None: ...


class ListenRefused(Exception):
    def __init__(self, code: str, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after_s = code, message, retry_after_s


@dataclass
class ListenLimits:
    max_per_zone: int = 500
    max_total: int = 2000
    max_per_address: int = 4
    #: unsent bytes a listener may have before it counts as a slow reader and is dropped
    #: (~16 s of 32 kbit/s Opus)
    max_buffer: int = 64 * 1024
    retry_after_s: int = 15


@dataclass(eq=False, slots=True)   # itself only (hashed by identity: O(1) removal)
class Listener:
    zone: str
    address: str
    sink: Sink | None
    chunked: bool
    user_agent: str = ""
    connected_at: float = 0.0
    done: asyncio.Future[str] | None = None
    sent: int = 0
    #: called once when the listener's place is freed (the server's connection accounting)
    on_end: Callable[[], None] | None = None


@dataclass
class _Zone:
    ring: ZoneRing
    pager: OggOpusPager
    cursor: int
    listeners: dict[Listener, None] = field(default_factory=dict)   # in arrival order
    consumers: list[PacketConsumer] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    peak: int = 0
    pages: int = 0
    pending: list[bytes] = field(default_factory=list)   # pages not yet written to listeners


class ListenHub:
    """The event-loop side (see module doc). `title(zone)` names a zone's stream."""

    def __init__(self, output: ListenOutput, limits: ListenLimits | None = None,
                 pump_s: float = 0.2, title: Callable[[str], str] | None = None,
                 clock: Callable[[], float] | None = None, flush_s: float = 0.0) -> None:
        self.output = output
        self.limits = limits or ListenLimits()
        self.pump_s = pump_s
        #: listeners are written every `flush_every` pumps (consumers every pump): a write is a
        #: send(2) per listener, and on loopback the receive side is charged to the sender too,
        #: so the cost of a listener is per write: one per second (Icecast's cadence with
        #: ffmpeg's 1 s Ogg pages) costs a fifth of five, one every 2 s (the server's default,
        #: `listen_flush_s`) about half of one per second (measured by `loa bench listen`)
        self.flush_every = max(1, round(flush_s / pump_s)) if flush_s > 0 else 1
        self.title = title or (lambda z: z)
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self._zones: dict[str, _Zone] = {}
        self._by_addr: dict[str, int] = {}
        self.total = 0
        self.dropped_slow = 0
        self.refused = 0
        self.served = 0
        self._silence = silence_packet()

    # ------------------------------------------------------------------ counts
    def counts(self) -> dict[str, int]:
        return {z: len(s.listeners) for z, s in self._zones.items() if s.listeners}

    def peaks(self) -> dict[str, int]:
        return {z: s.peak for z, s in self._zones.items()}

    def listeners(self, zone: str) -> list[Listener]:
        s = self._zones.get(zone)
        return list(s.listeners) if s else []

    # ------------------------------------------------------------------ admission
    def admit(self, zone: str, address: str, user_agent: str = "") -> Listener:
        """Take a listener's place (counted at once) or raise ListenRefused when a limit is
        reached: call before answering, then `serve` it (or `release` it if answering fails)."""
        lim = self.limits
        s = self._zones.get(zone)
        if self.total >= lim.max_total:
            self.refused += 1
            raise ListenRefused("listeners_full", f"the server has {self.total} listeners, "
                                f"its limit", lim.retry_after_s)
        if s is not None and len(s.listeners) >= lim.max_per_zone:
            self.refused += 1
            raise ListenRefused("zone_listeners_full", f"zone {zone} has {len(s.listeners)} "
                                "listeners, its limit", lim.retry_after_s)
        if self._by_addr.get(address, 0) >= lim.max_per_address:
            self.refused += 1
            raise ListenRefused("address_listeners_full", f"{address} already has "
                                f"{lim.max_per_address} streams open", lim.retry_after_s)
        s = self._zone(zone)
        lst = Listener(zone, address, None, False, user_agent, self.clock())
        s.listeners[lst] = None
        s.peak = max(s.peak, len(s.listeners))
        self.total += 1
        self._by_addr[address] = self._by_addr.get(address, 0) + 1
        return lst

    def headers(self, zone: str) -> bytes:
        """The zone stream's header pages (a new listener's first bytes)."""
        return self._zone(zone).pager.headers

    async def serve(self, lst: Listener, sink: Sink, chunked: bool = False) -> str:
        """Feed an admitted listener whose response headers and header pages are sent; returns
        why it ended (client gone, slow reader, shutdown)."""
        s = self._zones.get(lst.zone)
        if s is None or lst not in s.listeners:
            return "shutdown"
        lst.done = asyncio.get_running_loop().create_future()
        self.attach(lst, sink, chunked)
        try:
            return await lst.done
        finally:
            self._detach(s, lst)

    def attach(self, lst: Listener, sink: Sink, chunked: bool = False) -> bool:
        """Feed an admitted listener without anybody awaiting it (a `SocketSink` taken out of
        the HTTP server): the hub owns it from here and frees its place when it ends. A sink
        with `watch(gone)` tells the hub when the client leaves. False if its place is gone."""
        s = self._zones.get(lst.zone)
        if s is None or lst not in s.listeners:
            sink.abort()
            return False
        lst.chunked = chunked
        lst.sink = sink
        self.served += 1
        watch = getattr(sink, "watch", None)
        if watch is not None:
            watch(lambda: self._end(lst, "client gone"))
        return True

    def release(self, lst: Listener) -> None:
        s = self._zones.get(lst.zone)
        if s is not None:
            self._detach(s, lst)

    def add_consumer(self, zone: str, consumer: PacketConsumer) -> None:
        self._zone(zone).consumers.append(consumer)

    def remove_consumer(self, zone: str, consumer: PacketConsumer) -> None:
        s = self._zones.get(zone)
        if s is not None and consumer in s.consumers:
            s.consumers.remove(consumer)
            self._maybe_idle(s)

    def close(self) -> None:
        for s in list(self._zones.values()):
            for lst in list(s.listeners):
                self._end(lst, "shutdown")
                self._detach(s, lst)
            s.consumers.clear()
            self._maybe_idle(s)

    # ------------------------------------------------------------------ internals
    def _zone(self, zone: str) -> _Zone:
        s = self._zones.get(zone)
        if s is None:
            ring = self.output.subscribe(zone)
            s = self._zones[zone] = _Zone(ring, OggOpusPager(secrets.randbits(32),
                                                             self.title(zone)), ring.last)
            s.task = asyncio.get_running_loop().create_task(self._pump(s),
                                                             name=f"loa-listen-{zone}")
        return s

    def _detach(self, s: _Zone, lst: Listener) -> None:
        if s.listeners.pop(lst, False) is None:
            self.total -= 1
            n = self._by_addr.get(lst.address, 0) - 1
            if n > 0:
                self._by_addr[lst.address] = n
            else:
                self._by_addr.pop(lst.address, None)
            if lst.on_end is not None:
                try:
                    lst.on_end()
                except Exception:
                    log.exception("a listener's end hook failed")
        self._maybe_idle(s)

    def _maybe_idle(self, s: _Zone) -> None:
        if s.listeners or s.consumers:
            return
        zone = s.ring.zone
        if self._zones.get(zone) is s:
            del self._zones[zone]
            self.output.unsubscribe(zone)
            if s.task is not None:
                s.task.cancel()

    def _end(self, lst: Listener, why: str) -> None:
        if lst.done is not None and not lst.done.done():
            lst.done.set_result(why)
        if lst.sink is not None:
            try:
                lst.sink.abort()   # not close(): that would wait to flush what a stalled reader
            except Exception:   # never takes (a broken transport is as good as closed)
                pass
        if lst.done is None:   # attached: nobody awaits it, its place is freed here
            s = self._zones.get(lst.zone)
            if s is not None:
                self._detach(s, lst)

    async def _pump(self, s: _Zone) -> None:
        try:
            while True:
                await asyncio.sleep(self.pump_s)
                self.pump(s)
        except asyncio.CancelledError:
            pass

    def pump(self, s: _Zone) -> None:
        """Move the ring's new packets to the zone's listeners and consumers (one page)."""
        ring = s.ring
        last = ring.last
        if last < 0:
            s.cursor = last
            return
        if s.cursor < 0 or last - s.cursor > SLOTS - 8:
            s.cursor = max(s.cursor, last - SLOTS // 2)   # fell behind (or first read)
        if last <= s.cursor:
            return
        packets: list[bytes | None] = []
        progs: list[int | None] = []
        first = s.cursor + 1
        for k in range(first, last + 1):
            data, prog = ring.read(k)
            packets.append(data)
            progs.append(prog)
        s.cursor = last
        for c in list(s.consumers):
            try:
                c.on_packets(ring.zone, first, packets, progs)
            except Exception:
                log.exception("a packet consumer of zone %s failed", ring.zone)
        if not s.listeners:
            s.pending.clear()
            return
        silence = self._silence
        s.pending.append(s.pager.pages([p if p is not None else silence for p in packets]))
        s.pages += 1
        if len(s.pending) < self.flush_every:
            return
        data = s.pending[0] if len(s.pending) == 1 else b"".join(s.pending)
        s.pending.clear()
        chunk = b"%x\r\n%b\r\n" % (len(data), data)
        size, chunk_size = len(data), len(chunk)
        limit = self.limits.max_buffer
        for lst in list(s.listeners):
            sink = lst.sink
            if sink is None:
                continue   # admitted, still answering
            if type(sink) is SocketSink and not sink.queued:
                # the common case, kept to one send(2) and little else: a socket that took
                # everything so far (a partial send goes to the sink's backlog)
                out, n_out = (chunk, chunk_size) if lst.chunked else (data, size)
                try:
                    n = sink.send(out)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    self._end(lst, "write failed")
                    continue
                if n != n_out:
                    sink.keep(out, n)
                lst.sent += size
                continue
            if sink.is_closing():
                self._end(lst, "client gone")
                continue
            if sink.get_write_buffer_size() > limit:
                self.dropped_slow += 1
                self._end(lst, "slow reader")
                continue
            try:
                sink.write(chunk if lst.chunked else data)
            except Exception:
                self._end(lst, "write failed")
                continue
            lst.sent += len(data)


def status_json(hub: ListenHub, zones: Mapping[str, Any], base_url: str,
                hls: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Icecast's /status-json.xsl shape (`icestats.source`), for tools that read it: one source
    per zone, its `listeners` the Ogg listeners plus the HLS clients (`hls`: zone -> clients
    that fetched within the last segments), also given apart (`ogg_listeners`,
    `hls_listeners`)."""
    counts = hub.counts()
    peaks = hub.peaks()
    hls = hls or {}
    sources = []
    for zid, z in zones.items():
        ogg, h = counts.get(zid, 0), hls.get(zid, 0)
        sources.append({
            "listenurl": f"{base_url}/listen/{zid}.ogg", "server_name": getattr(z, "name", zid),
            "server_type": "audio/ogg", "listeners": ogg + h, "ogg_listeners": ogg,
            "hls_listeners": h, "listener_peak": max(peaks.get(zid, 0), ogg + h),
            "genre": "public announcements",
        })
    return {"icestats": {"admin": "", "host": base_url, "server_id": "loa",
                         "source": sources}}
