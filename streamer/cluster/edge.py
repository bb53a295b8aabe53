"""The edge's side of the media path: envelopes from the origin in, packets to receivers out.

An edge holds receivers (their registrations, heartbeats, reports, NAT addresses, SRTP: the
receiver endpoint `streamer.rtp.link` runs on the edge's media socket exactly as on a single
node) and the fan-out to them. It does not mix or encode: `EdgeNode` subscribes to the zones it
needs (those with receivers registered here, and those with static destinations in its own
tree, e.g. its LAN's multicast groups), takes each tick's envelope from the origin, and feeds
the programme frames to its own `RtpOutput` with the origin's SSRC, sequence number and
timestamp, so the packets are those the origin would have sent; SRTP is applied with the
edge's keyring (receivers registered here got their keys from here).

A zone is pulled when its first receiver registers here and dropped (the origin stops sending
it at the next subscription) when its last one leaves. Nothing here waits on Redis.

`TickAssembler` (pure) puts the parts of a tick together and drops duplicates: during an origin
failover two origins may send the same tick; a replayed envelope is refused by its age.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.audio import FRAME_SAMPLES
from streamer.cluster.envelope import (EnvelopeError, Programme, TickEnvelope, TickReader,
                                       pack_subscription)
from streamer.clock import name_os_thread
from streamer.cluster.lease import FenceGate
from streamer.port import OnAir, SetDestinations, ZoneSnapshot
from streamer.rtp.output import RtpOutput
from streamer.rtp.packet import HEADER_SIZE
from streamer.zones import Zone, ZoneTree

if TYPE_CHECKING:
    from streamer.cluster.envelope import Entry
    from streamer.mixer.programs import ProgramKey

__all__ = ["TickAssembler", "EdgeNode", "SUBSCRIBE_EVERY_S"]

log = logging.getLogger("loa.cluster.edge")

Addr = tuple[str, int]
SUBSCRIBE_EVERY_S = 1.0
ON_AIR_HOLD_S = 0.5     # a zone heard within this long is on air here
HEARD_EVERY_S = 0.1     # how often a steady stream refreshes its zones' last-heard times
FEED_TIMEOUT_S = 0.2    # the feed thread looks at its stop flag (and subscriptions) this often
FRAME_ROOM = 2048       # a frame buffer: RTP header + any payload an envelope can carry


class TickAssembler:
    """Envelope parts → whole ticks, in order, once each. Pure."""

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.last_k = -1
        self.duplicates = 0
        self.origin_switches = 0
        self._k = -1
        self._parts: list[TickEnvelope] = []

    def feed(self, env: TickEnvelope) -> list[TickEnvelope]:
        out: list[TickEnvelope] = []
        if env.ssrc != self.ssrc:
            # another origin's stream (a standby took over, or the origin restarted): its tick
            # indexes are its own
            if self._parts:
                out.append(self._merge())
            self.ssrc = env.ssrc
            self.last_k = -1
            self.origin_switches += 1
        if env.k <= self.last_k:
            self.duplicates += 1
            return out
        if self._parts and env.k != self._k:
            out.append(self._merge())       # a part of the previous tick was lost: play the rest
        self._k = env.k
        self._parts.append(env)
        if env.last:
            out.append(self._merge())
        return out

    def whole(self, ssrc: int, k: int) -> bool | None:
        """A tick that came whole in one datagram, taken without building it: whether to play
        it (False: a duplicate, or late), or None while parts of another tick are pending (then
        it goes through `feed`). The same bookkeeping as `feed`."""
        if self._parts:
            return None
        if ssrc != self.ssrc:
            self.ssrc = ssrc
            self.last_k = -1
            self.origin_switches += 1
        if k <= self.last_k:
            self.duplicates += 1
            return False
        self._k = self.last_k = k
        return True

    def _merge(self) -> TickEnvelope:
        parts, self._parts = self._parts, []
        first = parts[0]
        self.last_k = first.k
        if len(parts) == 1:
            return first
        progs = tuple(p for e in parts for p in e.programmes)
        return TickEnvelope(first.k, first.seq, first.ts, first.ssrc, first.wall_ms, progs,
                            fence=first.fence)


_NO_PCM = np.zeros(0, dtype=np.float32)


class _Frame:
    """What RtpOutput reads of a programme frame: the payload after room for the header (the
    edge has no PCM: outputs that need it run at the origin). Reused from tick to tick: `load`
    copies the next payload into the same buffer."""
    __slots__ = ("buf", "view", "n", "bus")

    def __init__(self, payload: bytes | bytearray | memoryview = b"",
                 room: int = FRAME_ROOM) -> None:
        self.buf = bytearray(max(room, HEADER_SIZE + len(payload)))
        self.view = memoryview(self.buf)
        self.bus: np.ndarray = _NO_PCM
        self.n = HEADER_SIZE
        self.load(payload)

    def load(self, payload: bytes | bytearray | memoryview) -> None:
        n = HEADER_SIZE + len(payload)
        if n > len(self.buf):        # never from an envelope (MAX_DATAGRAM): kept for safety
            self.buf = bytearray(n)
            self.view = memoryview(self.buf)
        self.buf[HEADER_SIZE:n] = payload     # same length: copied in place
        self.n = n


Inputs = tuple[dict["ProgramKey", tuple[str, ...]], dict["ProgramKey", _Frame],
               dict["ProgramKey", tuple[tuple[str, ...], tuple[str, ...]]],
               list[tuple["ProgramKey", int]]]


def layout_inputs(entries: Iterable[Entry], known: Mapping[str, Any]) -> Inputs:
    """(programs, frames, markers, slots) for RtpOutput.on_tick from a tick's programme entries
    as `TickReader` gives them, made once while they hold: the frames are filled each tick
    from the payloads (`slots`: which frame takes which entry's payload). Zones this edge does
    not know are left out; the keys are opaque to the output: the n-th entry of the tick."""
    programs: dict[ProgramKey, tuple[str, ...]] = {}
    frames: dict[ProgramKey, _Frame] = {}
    markers: dict[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    slots: list[tuple[ProgramKey, int]] = []
    for i, (zones, marked) in enumerate(entries):
        zs = tuple(z for z in zones if z in known)
        ms = tuple(z for z in marked if z in known)
        if not zs and not ms:
            continue
        key: ProgramKey = ((i, 0.0, 0.0),)
        programs[key] = zs + ms
        frames[key] = _Frame()
        markers[key] = (zs, ms)
        slots.append((key, i))
    return programs, frames, markers, slots


def tick_inputs(progs: Iterable[Programme], known: Mapping[str, Any]
                ) -> tuple[dict[ProgramKey, tuple[str, ...]], dict[ProgramKey, _Frame],
                           dict[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]]]:
    """(programs, frames, markers) for RtpOutput.on_tick. Entries with the same payload are one
    programme (their packets are byte-identical anyway); zones this edge does not know are
    left out. The keys are opaque to the output: the n-th programme of the tick."""
    plain: dict[bytes, list[str]] = {}
    marked: dict[bytes, list[str]] = {}
    for p in progs:
        plain.setdefault(p.payload, []).extend(z for z in p.zones if z in known)
        marked.setdefault(p.payload, []).extend(z for z in p.marked if z in known)
    programs: dict[ProgramKey, tuple[str, ...]] = {}
    frames: dict[ProgramKey, _Frame] = {}
    markers: dict[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for i, (payload, zs) in enumerate(plain.items()):
        ms = marked[payload]
        if not zs and not ms:
            continue
        key: ProgramKey = ((i, 0.0, 0.0),)
        programs[key] = tuple(zs) + tuple(ms)
        frames[key] = _Frame(payload)
        markers[key] = (tuple(zs), tuple(ms))
    return programs, frames, markers


def _same_payloads(r: TickReader) -> bool:
    """Whether two of the tick's entries carry the same payload (two programmes that happen to
    encode to the same bytes: one programme for the output, as in tick_inputs)."""
    spans = r.spans
    return any(spans[i][1] == spans[j][1] and r.payload(i) == r.payload(j)
               for i in range(len(spans)) for j in range(i))


class EdgeNode:
    """One edge: implements what the receiver endpoint needs of an engine (`LinkRuntime`)."""

    def __init__(self, node_id: str, key: bytes, origins: list[Addr], fanout: Any, *,
                 tree: ZoneTree | None = None, keyring: Any = None, payload_type: int = 111,
                 feed_bind: Addr = ("0.0.0.0", 0), gate: FenceGate | None = None) -> None:
        if not key:
            raise ValueError("the cluster key is empty")
        self.node_id = node_id
        self.key = key
        self.fanout = fanout
        self.tree = tree or ZoneTree()
        self.rtp = RtpOutput(fanout, payload_type, keyring)
        self.lock = threading.Lock()
        self.assembler = TickAssembler()
        #: the newest fencing token seen (shared with the command consumer): envelopes from an
        #: origin with an older one (it lost the lease) are refused
        self.gate = gate or FenceGate()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(feed_bind)
        # a blocking socket with kernel timeouts, not settimeout(): Python polls before every
        # receive on a socket with a timeout, a second system call (and wait-queue work) per
        # envelope; this way a receive is one call and still returns every FEED_TIMEOUT_S
        self.sock.settimeout(None)
        tv = struct.pack("ll", 0, int(FEED_TIMEOUT_S * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        #: reads envelopes; decodes a tick's zone lists only when they changed
        self.reader = TickReader(key)
        self._inputs: tuple[tuple[Entry, ...], Inputs] | None = None   # for reader.entries
        self._heard_next = 0.0
        self.origins: list[Addr] = []
        self._origin_set: set[Addr] = set()
        self.set_origins(origins)
        self.counters = {"envelopes": 0, "ticks": 0, "refused": 0, "foreign": 0,
                         "subscriptions_sent": 0}
        self._receivers: dict[str, int] = {}       # zone -> registered receivers here
        self._heard: dict[str, float] = {}          # zone -> monotonic time last heard
        self._status: dict[str, ZoneSnapshot] = {}
        self._wanted: frozenset[str] = frozenset()
        self._dropped: set[str] = set()             # zones a `zone.drop` command took away
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        with self.lock:
            for zid in list(self.tree.zones):
                self.rtp.apply_zone(self.tree, zid, force=True)
        self._update_wanted()

    # -- configuration ------------------------------------------------------------------------
    def set_origins(self, origins: Iterable[Addr]) -> None:
        resolved = []
        for h, p in origins:
            try:
                resolved.append((socket.gethostbyname(h), int(p)))
            except OSError:
                log.warning("origin %s:%s does not resolve", h, p)
        self.origins = resolved
        self._origin_set = set(resolved)

    @property
    def address(self) -> Addr:
        h, p = self.sock.getsockname()[:2]
        return (str(h), int(p))

    @property
    def wanted(self) -> frozenset[str]:
        return self._wanted

    def _update_wanted(self) -> bool:
        static = {z.id for z in self.tree.zones.values() if z.unicast or z.multicast}
        w = frozenset(static | {z for z, n in self._receivers.items() if n}) - self._dropped
        changed = w != self._wanted
        self._wanted = w
        return changed

    def set_static(self, zone: str, multicast: Addr | None, unicast: Iterable[Addr],
                   ptime: Mapping[Addr, int] | None = None) -> None:
        """A `zone.set` command: this edge's own destinations for a zone (its LAN's multicast
        group, fixed receivers, with their packet times); the zone is pulled while it has any."""
        with self.lock:
            self._dropped.discard(zone)
            self.tree.add(Zone(id=zone, name=zone, multicast=multicast, unicast=list(unicast),
                               ptime=dict(ptime or {})))
            self.rtp.apply_zone(self.tree, zone, force=True)
            self._inputs = None
            changed = self._update_wanted()
        if changed:
            self.subscribe_now()

    def drop_zone(self, zone: str) -> None:
        """A `zone.drop` command: the zone is gone at the origin. Its static destinations here
        are removed and it is no longer pulled, even for receivers still registered here (until
        a `zone.set` names it again)."""
        with self.lock:
            self._dropped.add(zone)
            if zone in self.tree.zones:
                self.tree.add(Zone(id=zone, name=zone))
                self.rtp.apply_zone(self.tree, zone, force=True)
            self._inputs = None
            changed = self._update_wanted()
        if changed:
            self.subscribe_now()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loa-edge-feed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()

    def subscribe_now(self) -> None:
        data = pack_subscription(self.key, self.node_id, int(time.time() * 1000), self._wanted)
        for o in self.origins:
            try:
                self.sock.sendto(data, o)
                self.counters["subscriptions_sent"] += 1
            except OSError:
                pass

    def _run(self) -> None:
        name_os_thread("loa-edge-feed")
        sock, stop = self.sock, self._stop
        buf = bytearray(65535)        # every envelope is received into this one buffer
        view = memoryview(buf)
        next_sub = 0.0
        now = time.monotonic()
        while not stop.is_set():
            if now >= next_sub:
                self.subscribe_now()
                next_sub = now + SUBSCRIBE_EVERY_S
            try:
                n, addr = sock.recvfrom_into(buf)
            except OSError:           # the receive timed out (EAGAIN), or the socket closed
                if stop.is_set():
                    return
                now = time.monotonic()
                continue
            now = time.monotonic()
            self.datagram_received(view[:n], addr, now, time.time())

    def datagram_received(self, data: bytes | bytearray | memoryview, addr: Addr, now: float,
                          wall: float) -> None:
        if addr not in self._origin_set:
            self.counters["foreign"] += 1
            return
        r = self.reader
        try:
            r.read(data, wall)
        except EnvelopeError:
            self.counters["refused"] += 1
            return
        if not self.gate.admit_media(r.fence):
            return
        self.counters["envelopes"] += 1
        play = self.assembler.whole(r.ssrc, r.k) if r.last and r.part == 0 else None
        if play is None:              # a tick in several parts: put together, then played
            for tick in self.assembler.feed(r.envelope()):
                self._play(tick, now)
        elif play:
            self._play_read(r, now)

    def _play_read(self, r: TickReader, now: float) -> None:
        """A whole tick straight from the reader: the output's inputs are those made for these
        entries, their frames refilled with this tick's payloads."""
        entries = r.entries
        if len(entries) > 1 and _same_payloads(r):
            self._play(r.envelope(), now)    # merged by payload, as tick_inputs does
            return
        with self.lock:
            cached = self._inputs
            if cached is None or cached[0] is not entries:
                cached = self._inputs = (entries, layout_inputs(entries, self.tree.zones))
                self._heard_next = 0.0
            programs, frames, markers, slots = cached[1]
            if not programs:
                return
            for key, i in slots:
                frames[key].load(r.payload(i))
            rtp = self.rtp
            rtp.ssrc = r.ssrc
            rtp.seq = (r.seq - 1) & 0xFFFF           # on_tick steps it to this tick's number
            rtp.ts0 = (r.ts - r.k * FRAME_SAMPLES) & 0xFFFFFFFF
            rtp.on_tick(r.k, programs, frames, markers)
            if now >= self._heard_next:
                self._mark_heard(programs, now)
                self._heard_next = now + HEARD_EVERY_S
            self.counters["ticks"] += 1

    def _mark_heard(self, programs: Mapping[Any, tuple[str, ...]], now: float) -> None:
        heard = self._heard
        for zs in programs.values():
            for z in zs:
                heard[z] = now

    def _play(self, tick: TickEnvelope, now: float) -> None:
        with self.lock:
            programs, frames, markers = tick_inputs(tick.programmes, self.tree.zones)
            if not programs:
                return
            rtp = self.rtp
            rtp.ssrc = tick.ssrc
            rtp.seq = (tick.seq - 1) & 0xFFFF        # on_tick steps it to this tick's number
            rtp.ts0 = (tick.ts - tick.k * FRAME_SAMPLES) & 0xFFFFFFFF
            rtp.on_tick(tick.k, programs, frames, markers)
            self._mark_heard(programs, now)
            self._heard_next = now + HEARD_EVERY_S
            self.counters["ticks"] += 1

    # -- what the receiver endpoint uses (streamer.rtp.link.LinkRuntime) ------------------------
    @property
    def ssrc(self) -> int:
        return self.rtp.ssrc

    @property
    def media_socket(self) -> socket.socket:
        sock: socket.socket = self.fanout.listen_sock
        return sock

    def zone_status(self) -> Mapping[str, ZoneSnapshot]:
        """Zones heard from the origin within `ON_AIR_HOLD_S` are on air (the origin's own
        broadcast records stay at the origin; receivers here only need on air or not)."""
        now = time.monotonic()
        with self.lock:
            on = {z for z, t in self._heard.items() if now - t < ON_AIR_HOLD_S}
        if on != set(self._status):
            self._status = {z: ZoneSnapshot(z, (OnAir("relay", "normal"),)) for z in on}
        return self._status

    def rtp_clock(self) -> tuple[int, int, int, int]:
        r = self.rtp
        return r.ssrc, r.ts0, r.tick_index, r.packets_built

    def submit(self, cmd: SetDestinations) -> object:
        """The registered receivers of a zone changed (from the receiver endpoint)."""
        if not isinstance(cmd, SetDestinations):
            raise TypeError(f"an edge takes only SetDestinations, not {cmd!r}")
        addrs = [(d.host, d.port, d.ptime, d.redundant) for d in cmd.destinations]
        with self.lock:
            if cmd.zone not in self.tree.zones:
                self.tree.add(Zone(id=cmd.zone, name=cmd.zone))
                self._inputs = None
            self.rtp.set_dynamic(self.tree, cmd.zone, list(addrs))
            self._receivers[cmd.zone] = len(addrs)
            changed = self._update_wanted()
        if changed:
            self.subscribe_now()   # the first receiver of a zone hears it within a tick or two
        return None

    def stats(self) -> dict[str, Any]:
        return {"node": self.node_id, "role": "edge", "zones": sorted(self._wanted),
                "receivers": sum(self._receivers.values()), **self.counters,
                "duplicates": self.assembler.duplicates,
                "media_refused": self.gate.media_refused,
                "origin_switches": self.assembler.origin_switches,
                "fanout": self.fanout.stats()}
