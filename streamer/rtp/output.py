"""The RTP output: programme frames in, packets out to every zone's receivers.

Fed once per tick with the tick's programmes (which zones hear which programme) and each
programme's encoded frame, it builds and sends:

- the programme packets: one sequence space for the node (every programme packet of a tick has
  the same SSRC, sequence number and timestamp), so a programme's packet is byte-identical for
  every zone that hears it and a zone that switches programme sees one continuous RTP stream;
  the marker bit goes to the zones whose talk spurt starts;
- RFC 2198 redundant packets (this frame + the previous one) for registered receivers on lossy
  links;
- 40/60 ms packets for cellular receivers: receivers are spread over the 2 (3) ticks of a window
  by a fixed phase of their address, one sequence space per packet time and phase;
- SRTP (protected once per packet, sent to many) for registered receivers; static destinations
  (stock clients playing the SDP, multicast groups) get plain RTP.

It also keeps the fan-out's destination lists: per zone a key for 20 ms plain/SRTP receivers,
per packet time and phase for long packets, one for redundant packets. The keys of a set of
zones are computed once and the same tuple handed to the fan-out every tick, which finds it by
identity.

Another output (HTTP/Ogg listening, an archive) sits beside this one: anything with
`on_tick(k, programs, frames, markers)` (see `Output`) is fed the same programme frames.
"""
from __future__ import annotations

import secrets
import zlib
from collections import deque
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamer.audio import FRAME_SAMPLES
from streamer.core.carve import Carve, nested_addrs, split_destinations
from streamer.rtp import red
from streamer.rtp.opus import OpusRepacketizer
from streamer.rtp.packet import HEADER_SIZE, write_header
from streamer.zones import PTIMES, Zone, ZoneTree

if TYPE_CHECKING:
    from streamer.mixer.programs import ProgramKey

__all__ = ["Output", "ProgramFrame", "RtpOutput", "addr_phase", "fanout_key"]

Dest = tuple[Any, ...]   # (host, port[, ptime[, redundant]])
_NONE: frozenset[str] = frozenset()


class ProgramFrame(Protocol):
    """One programme's frame this tick: its PCM (after mix and limiter) and its Opus payload,
    written at `buf[HEADER_SIZE:n]` so a header can go in front of it without a copy."""
    bus: np.ndarray
    buf: bytearray
    view: memoryview
    n: int


class Output(Protocol):
    def on_tick(self, k: int, programs: Mapping[ProgramKey, tuple[str, ...]],
                frames: Mapping[ProgramKey, ProgramFrame],
                markers: Mapping[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]] | None
                ) -> None:
        """Tick `k`: `programs` (key -> the zones hearing it; the same object while the plan
        holds), `frames` (key -> its frame), `markers` (key -> (zones continuing, zones whose
        talk spurt starts); None: nobody's starts)."""
        ...


def addr_phase(addr: tuple[str, int], per: int) -> int:
    """Which of the `per` ticks a receiver's long (40/60 ms) packets leave on: by address, so
    a zone of 10,000 cellular clusters sends half (a third) of its packets on each tick
    instead of all of them every other tick. Stable across restarts (CRC-32 of "host:port")."""
    return zlib.crc32(f"{addr[0]}:{addr[1]}".encode()) % per


def fanout_key(zone_id: str, ptime: int, secure: bool, phase: int = 0) -> str:
    """Fan-out key: `zone` (20 ms), `zone|40~1` (40 ms packets, receivers of phase 1),
    `#s` appended for SRTP destinations."""
    base = zone_id if ptime == 20 else f"{zone_id}|{ptime}~{phase}"
    return base + "#s" if secure else base


def _dest_signature(zone: Zone) -> tuple[Any, ...]:
    """What the output takes from the tree for one zone (registered receivers aside)."""
    return (zone.multicast, tuple(zone.unicast),
            tuple(sorted(zone.ptime.items())) if zone.ptime else ())


class RtpOutput:
    def __init__(self, fanout: Any, payload_type: int = 111, keyring: Any = None) -> None:
        self.fanout = fanout
        self.payload_type = payload_type
        self.keyring = keyring
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.ts0 = secrets.randbits(32)
        self.tick_index = 0
        self.packets_built = 0
        #: bumps whenever a zone's destinations change (the planner's signature includes it)
        self.version = 0
        #: receivers that registered themselves (address observed, e.g. behind NAT), per zone
        self.dynamic: dict[str, list[Dest]] = {}
        self._applied_sig: dict[str, tuple[Any, ...]] = {}
        # zones with destinations on longer packet times (40/60 ms), and those packets' state
        self._zone_ptimes: dict[str, set[int]] = {}
        # (zone, ptime, secure) -> the phases whose fan-out keys have receivers
        self._phase_keys: dict[tuple[str, int, bool], frozenset[int]] = {}
        self._frame_hist: deque[tuple[int, dict[str, bytes]]] = deque(maxlen=3)
        self._ptime_seq: dict[tuple[int, int], int] = {}  # (packet time, phase) -> last seq
        self._ptime_base: dict[int, int] = {}
        # numbers taken by split windows, per (packet time, phase): a phase's receivers never
        # see a number skipped because a window of the other phase was split
        self._ptime_extra: dict[tuple[int, int], int] = {}
        self._ptime_active: dict[tuple[int, int], set[str]] = {}
        self._repacketizer: OpusRepacketizer | None = None
        self._protectors: dict[int, Any] = {}
        self._secure_zones: dict[int, set[str]] = {pt: set() for pt in PTIMES}
        self._red_zones: set[str] = set()  # zones with receivers on redundant (RFC 2198) packets
        self._key_cache: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._slow_for: tuple[Any, int] | None = None   # (programs, version) _slow is for
        self._slow: dict[ProgramKey, tuple[str, ...]] = {}
        #: carves (streamer.core.carve): carve zone -> its carve; zone -> its carve zones;
        #: zone or carve -> the addresses of the carves below it (out of its lists)
        self._carves: dict[str, Carve] = {}
        self._carved: dict[str, list[str]] = {}
        self._nested: dict[str, frozenset[tuple[str, int]]] = {}
        #: while set_carves applies them: zone or new carve -> its 20 ms list, already cut
        self._cut: dict[str, list[tuple[str, int]]] = {}

    # ---------------------------------------------------------------- destinations
    def zone_changed(self, zone: Zone) -> bool:
        """Whether this zone's static destinations differ from those last applied."""
        return self._applied_sig.get(zone.id) != _dest_signature(zone)

    def apply_zone(self, tree: ZoneTree, zone_id: str, force: bool = False) -> None:
        """(Re)apply a zone's destinations, unless its static ones are unchanged (`force`: a
        registered receiver changed)."""
        sig = _dest_signature(tree.zones[zone_id])
        if not force and self._applied_sig.get(zone_id) == sig:
            return
        self._applied_sig[zone_id] = sig
        self._apply(tree, zone_id)
        self._apply_carves_of(tree, zone_id)

    def set_carves(self, tree: ZoneTree, carves: Mapping[str, Carve]) -> None:
        """The carves now (streamer.core.carve): every zone whose carves changed gets its
        lists and its carves' rebuilt (a carve gone is dropped by the tree sync; its receivers
        are back in their zone's lists, or their outer carve's, here)."""
        if carves == self._carves:
            return
        old = self._carves
        touched = {c.zone for cid, c in old.items() if carves.get(cid) != c}
        touched.update(c.zone for cid, c in carves.items() if old.get(cid) != c)
        per_zone: dict[str, int] = {}
        for c in carves.values():
            per_zone[c.zone] = per_zone.get(c.zone, 0) + 1
        self._cut = {}
        for cid, c in carves.items():
            if cid not in old and c.parent == c.zone:
                # a new carve of a big zone: its lists and the zone's are cut out of the
                # zone's packed list (array indexing) before they are applied below, here in
                # the tick (real-time, ~0.5 ms for 5,000) rather than on the submitting thread,
                # whose every ms waited for the core behind the fan-out before the first packet
                lists = self.cut_carve(tree, c.zone, c.addrs)
                zone = tree.zones.get(c.zone)
                if lists is not None and per_zone[c.zone] == 1 and zone is not None and \
                        not zone.ptime and not self.dynamic.get(c.zone):
                    # the only carve of an all-20 ms zone: _apply takes these lists as they
                    # are instead of splitting the zone's again
                    self._cut[cid], self._cut[c.zone] = lists
        self._carves = dict(carves)
        self._carved = {}
        for cid, c in carves.items():
            self._carved.setdefault(c.zone, []).append(cid)
        self._nested = nested_addrs(carves)
        for z in touched:
            for zid in [z, *self._carved.get(z, ())]:
                if zid in tree.zones:
                    self._applied_sig[zid] = _dest_signature(tree.zones[zid])
                    self._apply(tree, zid)
        self._cut = {}

    def cut_carve(self, tree: ZoneTree, zone_id: str, addrs: frozenset[tuple[str, int]],
                  min_addrs: int = 256) -> tuple[list[tuple[str, int]], list[tuple[str, int]]] | None:
        """The 20 ms lists a new carve of these receivers will give its zone and itself, cut
        out of the zone's packed list the fan-out holds (`Fanout.prepare_split`), for the
        plain case (no carve below the zone yet, registered receivers not in the plain
        lists). Returns (the carve's list, the zone's rest), or None when not that case."""
        split = getattr(self.fanout, "prepare_split", None)
        zone = tree.zones.get(zone_id)
        if split is None or zone is None or zone_id in self._nested or \
                len(zone.unicast) < min_addrs or (self.keyring is None and self.dynamic.get(zone_id)):
            return None
        base = tree.destinations_by_ptime(zone_id).get(20, [])
        out = split(fanout_key(zone_id, 20, False), base, addrs, min_addrs)
        return out if isinstance(out, tuple) else None

    def _apply_carves_of(self, tree: ZoneTree, zone_id: str) -> None:
        for cid in self._carved.get(zone_id, ()):
            if cid in tree.zones:
                self._apply(tree, cid)

    def set_dynamic(self, tree: ZoneTree, zone_id: str, addrs: list[Dest]) -> None:
        if addrs:
            self.dynamic[zone_id] = addrs
        else:
            self.dynamic.pop(zone_id, None)
        if zone_id in tree.zones:
            self._applied_sig[zone_id] = _dest_signature(tree.zones[zone_id])
            self._apply(tree, zone_id)
            self._apply_carves_of(tree, zone_id)

    def prepare(self, zones: Any, min_addrs: int = 256) -> int:
        """Packs big destination lists ahead (call outside the engine lock, before the zones
        reach the tree): 10,000 addresses take ~10 ms, so the tick that applies them only swaps
        the packed arrays in. Only a cache; returns how many lists were prepared."""
        prep = getattr(self.fanout, "prepare", None)
        if prep is None:
            return 0
        n = 0
        for z in zones:
            if len(z.unicast) < min_addrs or not self.zone_changed(z):
                continue
            if self.keyring is None and self.dynamic.get(z.id):
                continue  # registered receivers join the plain lists: left to the tick
            one = ZoneTree()
            one.zones[z.id] = z
            # the 20 ms list goes to the fan-out as it is; longer packet times are split by
            # phase in the tick (and their addresses' packed forms are remembered anyway)
            addrs = one.destinations_by_ptime(z.id)[20]
            if len(addrs) >= min_addrs:
                prep(addrs)
                n += 1
        return n

    def _apply(self, tree: ZoneTree, zone_id: str) -> None:
        self.version += 1
        self._key_cache = {}
        carve = self._carves.get(zone_id)
        src = carve.zone if carve is not None else zone_id
        cut = self._cut.get(zone_id)
        dyn: list[Dest]
        if cut is not None:       # a new carve's list or its zone's rest, cut in set_carves
            plain, dyn = {20: cut}, []
        elif carve is not None and src not in tree.zones:
            plain, dyn = {}, []
        else:
            plain = tree.destinations_by_ptime(src)
            dyn = self.dynamic.get(src) or []
        if carve is not None and cut is None:   # its receivers only, from its zone's lists
            plain, dyn = split_destinations(plain, dyn, carve.addrs, take=True)
        taken = self._nested.get(zone_id) if cut is None else None
        if taken:                 # without the receivers of the carves below it
            plain, dyn = split_destinations(plain, dyn, taken, take=False)
        secure: dict[int, list[tuple[str, int]]] = {}
        seen = {a for lst in plain.values() for a in lst} if dyn else set()   # dyn: dedup only
        target = secure if self.keyring is not None else plain
        red_addrs: list[tuple[str, int]] = []
        for d in dyn:
            addr, pt = (d[0], d[1]), (d[2] if len(d) > 2 else 20)
            if addr in seen:
                continue
            seen.add(addr)
            if len(d) > 3 and d[3] and pt == 20:
                red_addrs.append(addr)  # a lossy link: RFC 2198 packets instead
            else:
                target.setdefault(pt if pt in PTIMES else 20, []).append(addr)
        red_key = f"{zone_id}#r{'s' if self.keyring is not None else ''}"
        if red_addrs or zone_id in self._red_zones:
            self.fanout.set_destinations(red_key, red_addrs)
        if red_addrs:
            self._red_zones.add(zone_id)
        else:
            self._red_zones.discard(zone_id)
        slow = set()
        for pt in PTIMES:
            for is_secure, groups in ((False, plain), (True, secure)):
                addrs = groups.get(pt, [])
                if pt == 20:
                    had = zone_id in self._secure_zones[pt] if is_secure else True
                    if addrs or had:
                        self.fanout.set_destinations(fanout_key(zone_id, pt, is_secure), addrs)
                    continue
                if addrs:
                    slow.add(pt)
                per = pt // 20
                split: list[list[tuple[str, int]]] = [[] for _ in range(per)]
                for a in addrs:
                    split[addr_phase(a, per)].append(a)
                pk = (zone_id, pt, is_secure)
                had_phases = self._phase_keys.get(pk, ())
                for ph in range(per):
                    if split[ph] or ph in had_phases:
                        self.fanout.set_destinations(fanout_key(zone_id, pt, is_secure, ph),
                                                     split[ph])
                now_phases = frozenset(ph for ph in range(per) if split[ph])
                if now_phases:
                    self._phase_keys[pk] = now_phases
                else:
                    self._phase_keys.pop(pk, None)
            if secure.get(pt):
                self._secure_zones[pt].add(zone_id)
            else:
                self._secure_zones[pt].discard(zone_id)
        if slow:
            self._zone_ptimes[zone_id] = slow
        else:
            self._zone_ptimes.pop(zone_id, None)

    def drop_zone(self, zone_id: str) -> None:
        """A zone left the tree: empty its fan-out keys."""
        self.version += 1
        self._key_cache = {}
        self._applied_sig.pop(zone_id, None)
        for pt in PTIMES:
            for is_secure in (False, True):
                if pt == 20:
                    self.fanout.set_destinations(fanout_key(zone_id, pt, is_secure), [])
                    continue
                for ph in self._phase_keys.pop((zone_id, pt, is_secure), ()):
                    self.fanout.set_destinations(fanout_key(zone_id, pt, is_secure, ph), [])
            self._secure_zones[pt].discard(zone_id)
        for suffix in ("#r", "#rs"):
            self.fanout.set_destinations(zone_id + suffix, [])
        self._red_zones.discard(zone_id)
        self._zone_ptimes.pop(zone_id, None)

    # ---------------------------------------------------------------- the tick
    def on_tick(self, k: int, programs: Mapping[ProgramKey, tuple[str, ...]],
                frames: Mapping[ProgramKey, ProgramFrame],
                markers: Mapping[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]] | None
                ) -> None:
        if programs:
            seq = self.seq = (self.seq + 1) & 0xFFFF
        else:
            seq = self.seq
        ts = (self.ts0 + k * FRAME_SAMPLES) & 0xFFFFFFFF
        pt, ssrc = self.payload_type, self.ssrc
        keep = bool(self._zone_ptimes or self._red_zones)
        slow_frames: dict[str, bytes] | None = {} if keep else None
        if keep and self._slow_for != (programs, self.version):
            zp, rz = self._zone_ptimes, self._red_zones
            self._slow = {key: tuple(z for z in zones if z in zp or z in rz)
                          for key, zones in programs.items()}
            self._slow_for = (programs, self.version)
        spurt_starts: set[str] | None = None   # made only on ticks where a talk spurt starts
        plain: tuple[str, ...]
        marked: tuple[str, ...]
        for key, zones in programs.items():
            ch = frames[key]
            n = ch.n
            buf = ch.buf
            if markers is None:
                plain, marked = zones, ()
            else:
                plain, marked = markers[key]
            if plain:
                write_header(buf, pt, seq, ts, ssrc, marker=False)
                self._send(ch.view[:n], plain)
            if marked:
                write_header(buf, pt, seq, ts, ssrc, marker=True)
                self._send(ch.view[:n], marked)
                if spurt_starts is None:
                    spurt_starts = set(marked)
                else:
                    spurt_starts.update(marked)
            self.packets_built += 1
            if slow_frames is not None:
                slow = self._slow.get(key, ())
                if slow:
                    payload_bytes = bytes(buf[HEADER_SIZE:n])
                    for z in slow:
                        slow_frames[z] = payload_bytes
        if slow_frames is not None:
            self._frame_hist.append((k, slow_frames))
            if self._zone_ptimes:
                self._send_long_packets(k)
            if self._red_zones:
                self._send_redundant(k, slow_frames, seq, ts, spurt_starts or _NONE)
        elif self._frame_hist:
            self._frame_hist.clear()
        self.tick_index = k

    def _protector(self, ptime: int) -> Any:
        p = self._protectors.get(ptime)
        if p is None:
            from streamer.rtp.srtp import MediaProtector
            p = self._protectors[ptime] = MediaProtector(self.keyring)
        return p

    def _send(self, packet: Any, zones: Any, ptime: int = 20, phase: int = 0) -> None:
        """Plain RTP to the zones' static destinations; SRTP (protected once) to their
        registered receivers. Long packets go to the receivers of one phase."""
        if type(zones) is not tuple:
            zones = tuple(zones)
        self.fanout.send(packet, zones if ptime == 20 else
                         self._keys(zones, ptime, phase, False))
        if self._secure_zones[ptime]:
            keys = self._keys(zones, ptime, phase, True)
            if keys:
                self.fanout.send(self._protector(ptime).protect(packet), keys)

    def _keys(self, zones: tuple[str, ...], ptime: int, phase: int, secure: bool
              ) -> tuple[str, ...]:
        """The fan-out keys of these zones (only those with SRTP receivers when `secure`),
        remembered until destinations change: the same tuple object comes back each tick,
        which the fan-out then finds by identity."""
        ck = (ptime, phase, secure, zones)
        keys = self._key_cache.get(ck)
        if keys is None:
            sec = self._secure_zones[ptime]
            keys = tuple(fanout_key(z, ptime, secure, phase) for z in zones
                         if not secure or z in sec)
            if len(self._key_cache) >= 1024:
                self._key_cache = {}
            self._key_cache[ck] = keys
        return keys

    def _send_redundant(self, k: int, frames: dict[str, bytes], seq: int, ts: int,
                        marked: AbstractSet[str]) -> None:
        """RFC 2198 packets (this tick's frame + the previous one) for registered receivers on
        lossy links: built once per distinct frame pair, same sequence number and timestamp as
        the plain packet of this tick. The marker bit is the plain packet's (a talk spurt
        starts): a zone whose receivers just switched to redundancy continues its stream, and a
        marker there would make a receiver that lost the packet before it restart its timeline
        (skipping the hole instead of concealing it)."""
        prev = self._frame_hist[-2][1] if len(self._frame_hist) > 1 and \
            self._frame_hist[-2][0] == k - 1 else {}
        groups: dict[tuple[Any, ...], list[str]] = {}
        for z in self._red_zones:
            cur = frames.get(z)
            if cur is not None:
                groups.setdefault((prev.get(z), cur, z in marked), []).append(z)
        secure = self.keyring is not None
        for (before, cur, marker), zones in groups.items():
            payload = red.build(self.payload_type, cur, before, FRAME_SAMPLES)
            pkt = bytearray(HEADER_SIZE + len(payload))
            pkt[HEADER_SIZE:] = payload
            write_header(pkt, red.RED_PT, seq, ts, self.ssrc, marker=marker)
            keys = [f"{z}#r{'s' if secure else ''}" for z in zones]
            self.fanout.send(self._protector(20).protect(pkt) if secure else pkt, keys)

    def _send_long_packets(self, k: int) -> None:
        """Join each cellular zone's last 2 (3) Opus frames into one 40 (60) ms packet, built once
        per distinct frame sequence and sent to every zone that heard it. Receivers are spread
        over the 2 (3) ticks by a fixed phase of their address, so the long packets of a zone
        (and of a province) go out evenly, not as one burst every other tick: each tick sends
        the windows that end now to the receivers of this phase. One sequence space per packet
        time and phase: window n is numbered base + n in every zone. The SSRC is the node's;
        the timestamp is that of the packet's first frame. (A window whose frames cannot share
        one Opus packet, around an encoder mode switch, goes out as two packets; later windows
        of that phase are numbered one higher.)"""
        pt = self.payload_type
        for ptime in (40, 60):
            per = ptime // 20
            phase = (k + 1) % per  # receivers of this phase complete a window now
            hist = [h for h in self._frame_hist if h[0] > k - per]
            groups: dict[tuple[Any, ...], list[str]] = {}
            pk = self._phase_keys
            for zone, pts in self._zone_ptimes.items():
                if ptime not in pts or (phase not in pk.get((zone, ptime, False), ())
                                        and phase not in pk.get((zone, ptime, True), ())):
                    continue
                seq_frames = tuple((kk, fr[zone]) for kk, fr in hist if zone in fr)
                if seq_frames:
                    groups.setdefault(seq_frames, []).append(zone)
            sk = (ptime, phase)
            active_before = self._ptime_active.get(sk, set())
            if not groups:
                self._ptime_active[sk] = set()
                continue
            # one sequence space per packet time and phase: window n is numbered base + n (+ the
            # split windows of this phase) in every zone, so a receiver sees one numbering
            base = self._ptime_base.setdefault(ptime, secrets.randbits(16))
            seq = self._ptime_seq[sk] = (base + k // per + self._ptime_extra.get(sk, 0)) & 0xFFFF
            if self._repacketizer is None:
                self._repacketizer = OpusRepacketizer()
            active = set()
            for seq_frames, zones in groups.items():
                parts = self._join_runs(seq_frames)
                for i, (payload, pts_) in enumerate(parts):
                    pkt = bytearray(HEADER_SIZE + len(payload))
                    pkt[HEADER_SIZE:] = payload
                    new = [z for z in zones if z not in active_before]
                    old = [z for z in zones if z in active_before]
                    if i:  # a split window: later parts continue the same spurt
                        old, new = old + new, []
                    s = seq if i == 0 else (self._ptime_seq[sk] + 1) & 0xFFFF
                    if i:
                        self._ptime_seq[sk] = s
                        self._ptime_extra[sk] = self._ptime_extra.get(sk, 0) + 1
                    for keys, marker in ((old, False), (new, True)):
                        if keys:
                            write_header(pkt, pt, s, pts_, self.ssrc, marker=marker)
                            self._send(pkt, keys, ptime, phase)
                active.update(zones)
            self._ptime_active[sk] = active

    def _join_runs(self, seq_frames: tuple[tuple[int, bytes], ...]) -> list[tuple[bytes, int]]:
        """(payload, timestamp) packets: as few as the frames' Opus configurations allow (frames
        of different modes, e.g. around an encoder's mode switch, cannot share a packet)."""
        rp = self._repacketizer
        assert rp is not None
        out: list[tuple[bytes, int]] = []
        run: list[bytes] = []
        run_k = 0
        joined: bytes | None = None
        for kk, p in seq_frames:
            if not run:
                run, run_k, joined = [p], kk, p
                continue
            j = rp.join(run + [p])
            if j is None:
                assert joined is not None
                out.append((joined, (self.ts0 + run_k * FRAME_SAMPLES) & 0xFFFFFFFF))
                run, run_k, joined = [p], kk, p
            else:
                run.append(p)
                joined = j
        if run:
            assert joined is not None
            out.append((joined, (self.ts0 + run_k * FRAME_SAMPLES) & 0xFFFFFFFF))
        return out
