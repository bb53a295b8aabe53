"""The engine: sources → arbitration → mix → one Opus encode per distinct program → RTP fan-out.

Runs its 20 ms tick in a dedicated thread (see clock.py). Control talks to it through the small
public API of `Engine` (start/stop broadcasts, edit zones, read status); every call is short and
thread-safe. Events go out through the `on_event` callback, which must not block.

One sequence space: each tick every program packet carries the same SSRC, sequence number and
timestamp, so the packet of a program is byte-identical for every zone that hears it and a zone
that switches program still sees one continuous RTP stream. Only the payload's encoder changes.
"""
from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from streamer.audio import DTYPE, FRAME_MS, FRAME_SAMPLES, SILENCE, db_to_gain
from streamer.clock import TickThread, name_os_thread
from streamer.ingest.base import Source
from streamer.mixer.arbitration import Claim, Level, arbitrate, live_conflict
from streamer.mixer.mix import GainRamp, SoftLimiter, add_scaled
from streamer.rtp.fanout import Fanout
from streamer.rtp.opus import OpusEncoder, OpusRepacketizer, OpusSettings
from streamer.rtp import red
from streamer.rtp.packet import HEADER_SIZE, write_header
from streamer.zones import PTIMES, ZoneError, ZoneTree

log = logging.getLogger("loa.engine")

SourceFactory = Callable[[float], Source]


def utc_now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class BroadcastRefused(Exception):
    def __init__(self, reason: str, holder: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.holder = holder


@dataclass
class EngineSettings:
    opus: OpusSettings = field(default_factory=OpusSettings)
    payload_type: int = 111
    duck_db: float = -15.0
    duck_ramp_ms: float = 200.0
    resume_rewind_s: float = 2.0
    limiter_ceiling_db: float = -0.1
    idle_channel_ttl_s: float = 10.0
    realtime: bool = True  # SCHED_FIFO (or nice -10) for the tick thread where permitted
    dest_apply_interval_s: float = 0.25  # registered receivers' address changes, batched
    # A program's encoder plans for the worst loss its zones' receivers report (in-band FEC
    # where that is high enough); after a rise it keeps the higher value this long.
    loss_hold_s: float = 30.0
    loss_apply_interval_s: float = 1.0   # reported-loss changes reach the encoders at most this often


@dataclass
class BroadcastSpec:
    targets: list[str]
    level: Level
    source_factory: SourceFactory
    kind: str
    description: dict = field(default_factory=dict)
    mode: str = "preempt"
    gain_db: float = 0.0
    live: bool = False
    owner: str = ""  # the account (unique): ownership checks
    duration_s: float | None = None
    id: str | None = None
    owner_name: str = ""  # what people see ("Ông Nguyễn Văn An"); defaults to owner
    title: str = ""  # what the dashboard and the as-run log call it


def _addr_phase(addr: tuple[str, int], per: int) -> int:
    """Which of the `per` ticks a receiver's long (40/60 ms) packets leave on: by address, so
    a zone of 10,000 cellular clusters sends half (a third) of its packets on each tick
    instead of all of them every other tick. Stable across restarts."""
    return zlib.crc32(f"{addr[0]}:{addr[1]}".encode()) % per


class Playhead:
    """One cursor through a broadcast's audio, serving a set of zones."""

    _ids = itertools.count(1)

    def __init__(self, source: Source, zones: set[str], paused: bool = False,
                 rewound: bool = False) -> None:
        self.id = next(self._ids)
        self.source = source
        self.zones = zones
        self.paused = paused
        self.rewound = rewound  # a fork already starts before its cut point
        self.started = False  # produced its first frame
        self.was_cut = False  # a fork made for zones that were preempted mid-item
        self.finished = False
        self.frame: np.ndarray = SILENCE


class Broadcast:
    def __init__(self, spec: BroadcastSpec, order: int, zones: set[str]) -> None:
        self.spec = spec
        self.id = spec.id or secrets.token_hex(6)
        self.order = order
        self.level = spec.level
        self.zones = zones  # every zone the targets reach (recomputed when the tree changes)
        self.done_zones: set[str] = set()
        self.playheads: list[Playhead] = []
        self.state = "queued"  # queued → playing ⇄ paused → finished | stopped
        self.created = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.audible: set[str] = set()
        self.ducked: set[str] = set()
        self.preempted: set[str] = set()
        self.gain = db_to_gain(spec.gain_db)
        self.error: str | None = None
        self.created_ns = time.monotonic_ns()
        self.ready_ns: int | None = None
        self.first_packet_ns: int | None = None

    def claim(self) -> Claim:
        ready = any(p.started or p.source.ready() or p.source.finished
                    for p in self.playheads if not p.finished)
        return Claim(self.id, self.level, frozenset(self.zones - self.done_zones), self.order,
                     self.spec.mode, self.spec.live, ready, self.spec.owner)

    def playhead_for(self, zone: str) -> Playhead | None:
        for p in self.playheads:
            if zone in p.zones:
                return p
        return None

    def position_s(self) -> float:
        return max((p.source.position_s for p in self.playheads), default=0.0)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "zones": list(self.spec.targets),
            "reached_zones": sorted(self.zones),
            "level": self.level.label,
            "mode": self.spec.mode,
            "source": dict(self.spec.description, kind=self.spec.kind),
            "live": self.spec.live,
            "owner": self.spec.owner,
            "owner_name": self.spec.owner_name or self.spec.owner,
            "state": self.state,
            "on_air_zones": sorted(self.audible),
            "preempted_zones": sorted(self.preempted),
            "created_at": utc_now_iso(self.created),
            "started_at": utc_now_iso(self.started_at) if self.started_at else None,
            "ended_at": utc_now_iso(self.ended_at) if self.ended_at else None,
            "position_s": round(self.position_s(), 2),
            "duration_s": self.spec.duration_s,
            "error": self.error,
            "timing": self.timing(),
            "title": self.spec.title,
        }

    def timing(self) -> dict:
        def ms(a, b):
            return round((b - a) / 1e6, 3) if a is not None and b is not None else None
        return {"created_to_first_packet_ms": ms(self.created_ns, self.first_packet_ns),
                "ready_to_first_packet_ms": ms(self.ready_ns, self.first_packet_ns)}


class ProgramChannel:
    """Encoder + limiter + packet buffer for one distinct program. Reused across ticks."""

    def __init__(self, opus: OpusSettings, ceiling_db: float) -> None:
        self.encoder = OpusEncoder(opus)
        self.limiter = SoftLimiter(ceiling_db)
        self.bus = self.encoder.input   # mixed in place: the encoder reads it without a copy
        assert self.bus.dtype == DTYPE and len(self.bus) == FRAME_SAMPLES
        self.scratch = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
        self.buf = bytearray(HEADER_SIZE + 1500)
        self.view = memoryview(self.buf)
        self.last_used = 0.0
        self.loss_raised = -1e18  # monotonic time of the last rise of the encoder's planned loss

    def close(self) -> None:
        self.encoder.close()


class Engine:
    def __init__(self, tree: ZoneTree, fanout: Fanout, settings: EngineSettings | None = None,
                 on_event: Callable[[dict], None] | None = None, keyring=None) -> None:
        self.tree = tree
        self.fanout = fanout
        self.settings = settings or EngineSettings()
        self.on_event = on_event or (lambda e: None)
        self.lock = threading.RLock()
        self.broadcasts: dict[str, Broadcast] = {}
        self.history: list[dict] = []  # finished broadcasts (bounded)
        self._order = itertools.count(1)
        self._tree_version = -1
        #: receivers that registered themselves (address observed, e.g. behind NAT), per zone
        self.dynamic_dests: dict[str, list[tuple]] = {}
        self._known_zones: set[str] = set()
        #: zones with destinations on longer packet times (40/60 ms), and those packets' state
        self._zone_ptimes: dict[str, set[int]] = {}
        # (zone, ptime, secure) -> the phases whose fan-out keys have receivers
        self._phase_keys: dict[tuple[str, int, bool], frozenset[int]] = {}
        # Incremental tree sync: the zones a destinations-only change touched (None: unknown,
        # compare every zone), for which tree version; what each zone's destinations were when
        # last applied; when a hinted change was last applied (they are rate-limited).
        self._tree_hint: set[str] | None = None
        self._hint_version: int | None = None
        self._applied_sig: dict[str, tuple] = {}
        self._hint_applied_at = 0.0
        self._frame_hist: collections.deque = collections.deque(maxlen=3)  # (k, {zone: payload})
        self._ptime_seq: dict[tuple[int, int], int] = {}  # (packet time, phase) -> last seq
        self._ptime_base: dict[int, int] = {}
        # numbers taken by split windows, per (packet time, phase): a phase's receivers never
        # see a number skipped because a window of the other phase was split
        self._ptime_extra: dict[tuple[int, int], int] = {}
        self._ptime_active: dict[tuple[int, int], set[str]] = {}
        self._repacketizer: OpusRepacketizer | None = None
        # Registered receivers get SRTP (one protect per program packet, per packet time);
        # static destinations (stock clients playing the SDP, multicast groups) stay plain RTP.
        self.keyring = keyring
        self._protectors: dict[int, object] = {}
        self._secure_zones: dict[int, set[str]] = {pt: set() for pt in PTIMES}
        self._red_zones: set[str] = set()  # zones with receivers on redundant (RFC 2198) packets
        # zone -> worst loss (%) its registered receivers report (set_zone_loss); a zone from
        # which nobody reports counts as `opus.packet_loss_perc`
        self._zone_loss: dict[str, int] = {}
        self._loss_version = 0
        self._loss_applied = -1
        self._loss_next = 0.0   # earliest time the next reported change is applied
        self._loss_due = 0.0    # a held fall to apply then (0: none)
        self._dest_version = 0
        self._pending_dests: dict[str, list[tuple]] = {}
        self._pending_lock = threading.Lock()
        self._dests_applied_at = 0.0
        self._plan: dict = {}
        self._plan_sig: tuple | None = None
        self._key_cache: dict = {}  # (ptime, phase, secure, zones) -> fan-out keys (_keys)
        self._zone_status_cache: tuple | None = None
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.ts0 = secrets.randbits(32)
        self.tick_index = 0
        self._channels: dict[tuple, ProgramChannel] = {}
        self._free_channels: list[ProgramChannel] = []
        self._zone_key: dict[str, tuple] = {}  # program key each zone heard last tick
        self._zone_winner: dict[str, int] = {}  # winning playhead id per zone, last tick
        self._ramps: dict[tuple[str, str], GainRamp] = {}
        self._thread: TickThread | None = None
        # sources are closed off the tick: joining a decoder thread can take a while
        import queue as _queue
        self._closing: _queue.SimpleQueue = _queue.SimpleQueue()
        self._closer = threading.Thread(target=self._close_worker, name="loa-source-closer",
                                        daemon=True)
        self._closer.start()
        # metrics
        self.encoders_active = 0
        self.ticks = 0
        self.tick_overruns = 0
        self.last_tick_us = 0.0
        self.max_tick_us = 0.0
        self.packets_built = 0
        self.first_packet_listeners: list[Callable[[str, float], None]] = []

    def _close_worker(self) -> None:
        name_os_thread("loa-closer")
        while True:
            src = self._closing.get()
            if src is None:
                return
            try:
                src.close()
            except Exception:
                log.exception("closing a source failed")

    def _retire(self, source: Source) -> None:
        self._closing.put(source)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # The tick thread shares the GIL with HTTP handlers and decoder threads. With the default
        # 5 ms switch interval a tick that crosses many GIL release points (numpy, ctypes, sends)
        # can queue behind busy Python threads for tens of ms; 0.5 ms keeps that wait short.
        import sys
        if sys.getswitchinterval() > 0.0005:
            sys.setswitchinterval(0.0005)
        self._thread = TickThread(self._tick, realtime=self.settings.realtime)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._thread.stop()
        with self.lock:
            for b in list(self.broadcasts.values()):
                self._end(b, "stopped", reason="server shutting down")
            for ch in list(self._channels.values()) + self._free_channels:
                ch.close()
            self._channels.clear()
            self._free_channels.clear()
        self._closing.put(None)
        self._closer.join(5)

    @property
    def clock_stats(self) -> dict:
        s = self._thread.schedule if self._thread else None
        return {
            "ticks": self.ticks,
            "late_ticks": s.late_ticks if s else 0,
            "skipped_ticks": s.skipped_ticks if s else 0,
            "max_late_ms": round(s.max_late_ns / 1e6, 3) if s else 0.0,
            "last_tick_us": round(self.last_tick_us, 1),
            "max_tick_us": round(self.max_tick_us, 1),
            "tick_overruns": self.tick_overruns,
            "tick_priority": self._thread.priority if self._thread else None,
        }

    @property
    def encoder_stats(self) -> dict:
        """How many program encoders plan for loss (in-band FEC where it is high enough)."""
        losses = [ch.encoder.loss_perc for ch in list(self._channels.values())]
        return {"encoders": len(losses), "planning_loss": sum(1 for v in losses if v > 0),
                "max_loss_perc": max(losses, default=0),
                "reporting_zones": len(self._zone_loss)}

    def set_zone_loss(self, zone_id: str, perc: int | None) -> None:
        """The worst packet loss (whole %) the registered receivers of a zone report; None
        when none of them reports (the zone's links then count as `opus.packet_loss_perc`).
        Safe from any thread: the tick applies it to the program encoders within
        `loss_apply_interval_s`, a rise at once and a fall after `loss_hold_s`."""
        if perc is None:
            if self._zone_loss.pop(zone_id, None) is None:
                return
        else:
            perc = max(0, min(100, int(perc)))
            if self._zone_loss.get(zone_id) == perc:
                return
            self._zone_loss[zone_id] = perc
        self._loss_version += 1

    def _apply_loss(self, programs: dict, used: dict, now: float) -> None:
        """Per program: plan for the worst loss of its zones. O(zones): runs on plan changes
        and at most once per `loss_apply_interval_s` otherwise."""
        self._loss_applied = self._loss_version
        self._loss_next = now + self.settings.loss_apply_interval_s
        default = self.settings.opus.packet_loss_perc
        zl = self._zone_loss
        hold = self.settings.loss_hold_s
        due = 0.0
        for key, zones in programs.items():
            ch = used[key]
            want = max([zl.get(z, default) for z in zones]) if zl else default
            enc = ch.encoder
            if want > enc.loss_perc:
                enc.set_packet_loss(want)
                ch.loss_raised = now
            elif want < enc.loss_perc:
                at = ch.loss_raised + hold
                if now >= at:
                    enc.set_packet_loss(want)
                elif not due or at < due:
                    due = at
        self._loss_due = due

    # ---------------------------------------------------------------- control API
    def emit(self, type_: str, b: Broadcast | None = None, **fields) -> None:
        ev = {"type": type_, "time": utc_now_iso()}
        if b is not None:
            ev.update(broadcast=b.id, level=b.level.label, kind=b.spec.kind, owner=b.spec.owner)
        ev.update(fields)
        try:
            self.on_event(ev)
        except Exception:  # an observer must never break the tick
            log.exception("event observer failed")

    def start_broadcast(self, spec: BroadcastSpec) -> Broadcast:
        if spec.mode not in ("preempt", "duck", "mix"):
            raise ValueError(f"unknown mode {spec.mode!r}; expected preempt, duck or mix")
        with self.lock:
            zones = self.tree.resolve(spec.targets)
            if not zones:
                raise ZoneError("the targets reach no zone")
            if spec.id and spec.id in self.broadcasts:
                raise ValueError(f"broadcast {spec.id!r} already exists")
            b = Broadcast(spec, next(self._order), zones)
            conflict = live_conflict(b.claim(), (x.claim() for x in self.broadcasts.values()))
            if conflict is not None:
                holder = self.broadcasts[conflict.id]
                who = holder.spec.owner_name or holder.spec.owner or holder.id
                shared = sorted(holder.zones & zones)
                reason = (f"zone {', '.join(shared)} is held by live broadcast {holder.id} "
                          f"({who}, level {holder.level.label})")
                self.emit("broadcast.refused", b, zones=sorted(zones), reason=reason,
                          holder=holder.id, holder_owner=holder.spec.owner)
                raise BroadcastRefused(reason, holder.to_dict())
        # open the source outside the lock: starting decode threads can take a moment
        source = spec.source_factory(0.0)
        source.start()
        with self.lock:
            b.playheads.append(Playhead(source, set(zones)))
            self.broadcasts[b.id] = b
        self.emit("broadcast.created", b, zones=sorted(zones), targets=list(spec.targets))
        return b

    def stop_broadcast(self, broadcast_id: str, reason: str = "stopped by request") -> Broadcast:
        with self.lock:
            b = self.broadcasts.get(broadcast_id)
            if b is None:
                raise KeyError(broadcast_id)
            self._end(b, "stopped", reason=reason)
            return b

    def get(self, broadcast_id: str) -> dict | None:
        with self.lock:
            b = self.broadcasts.get(broadcast_id)
            if b is not None:
                return b.to_dict()
            for h in reversed(self.history):
                if h["id"] == broadcast_id:
                    return h
        return None

    def list_broadcasts(self, include_past: bool = False) -> list[dict]:
        with self.lock:
            out = [b.to_dict() for b in sorted(self.broadcasts.values(), key=lambda x: x.order)]
            if include_past:
                out = list(reversed(self.history)) + out
            return out

    def zone_status(self) -> dict[str, dict]:
        """What each zone is hearing. Cached while the plan holds: the receiver endpoint asks
        several times a second, and with thousands of zones rebuilding it each time would hold
        the engine lock (and so the tick) for milliseconds."""
        with self.lock:
            sig = self._plan_sig
            cached = self._zone_status_cache
            if sig is not None and cached is not None and cached[0] == sig:
                return cached[1]
            out = {zid: {"on_air": [], "program": None} for zid in self.tree.zones}
            for b in sorted(self.broadcasts.values(), key=lambda x: x.order):
                item = {"broadcast": b.id, "level": b.level.label}
                for zid in b.audible:
                    if zid in out:
                        out[zid]["on_air"].append(dict(item, ducked=zid in b.ducked))
            for zid, key in self._zone_key.items():
                if zid in out:
                    out[zid]["program"] = hash(key)
            self._zone_status_cache = (sig, out)
            return out

    def set_dynamic_destinations(self, zone_id: str, addrs: list[tuple]) -> None:
        """Registered receivers of a zone: (host, port) or (host, port, ptime_ms) as observed
        (e.g. behind NAT). Takes effect at once; call only when membership or an address
        changes, never per tick."""
        # Recorded under a small lock of its own and applied by the tick at most every
        # `dest_apply_interval_s`: provisioning thousands of receivers one by one must neither
        # wait for the tick nor make it rebuild its destination arrays thousands of times.
        with self._pending_lock:
            self._pending_dests[zone_id] = list(addrs)
        if self._thread is None:  # not ticking (tests, tools): apply at once
            with self.lock:
                self._apply_pending_dests(force=True)

    def _apply_pending_dests(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._dests_applied_at < self.settings.dest_apply_interval_s:
            return
        with self._pending_lock:
            if not self._pending_dests:
                return
            pending, self._pending_dests = self._pending_dests, {}
        self._dests_applied_at = now
        for zone_id, addrs in pending.items():
            if addrs:
                self.dynamic_dests[zone_id] = addrs
            else:
                self.dynamic_dests.pop(zone_id, None)
            if zone_id in self.tree.zones:
                self._apply_dests(zone_id)

    @staticmethod
    def _key(zone_id: str, ptime: int, secure: bool, phase: int = 0) -> str:
        """Fan-out key: `zone` (20 ms), `zone|40~1` (40 ms packets, receivers of phase 1),
        `#s` appended for SRTP destinations."""
        base = zone_id if ptime == 20 else f"{zone_id}|{ptime}~{phase}"
        return base + "#s" if secure else base

    def _apply_dests(self, zone_id: str) -> None:
        self._dest_version += 1
        self._key_cache = {}
        plain = self.tree.destinations_by_ptime(zone_id)
        secure: dict[int, list[tuple[str, int]]] = {}
        dyn = self.dynamic_dests.get(zone_id) or []
        seen = {a for lst in plain.values() for a in lst}
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
                        self.fanout.set_destinations(self._key(zone_id, pt, is_secure), addrs)
                    continue
                if addrs:
                    slow.add(pt)
                per = pt // 20
                split: list[list[tuple[str, int]]] = [[] for _ in range(per)]
                for a in addrs:
                    split[_addr_phase(a, per)].append(a)
                pk = (zone_id, pt, is_secure)
                had_phases = self._phase_keys.get(pk, ())
                for ph in range(per):
                    if split[ph] or ph in had_phases:
                        self.fanout.set_destinations(self._key(zone_id, pt, is_secure, ph),
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

    def _drop_dests(self, zone_id: str) -> None:
        self._dest_version += 1
        self._key_cache = {}
        for pt in PTIMES:
            for is_secure in (False, True):
                if pt == 20:
                    self.fanout.set_destinations(self._key(zone_id, pt, is_secure), [])
                    continue
                for ph in self._phase_keys.pop((zone_id, pt, is_secure), ()):
                    self.fanout.set_destinations(self._key(zone_id, pt, is_secure, ph), [])
            self._secure_zones[pt].discard(zone_id)
        for suffix in ("#r", "#rs"):
            self.fanout.set_destinations(zone_id + suffix, [])
        self._red_zones.discard(zone_id)
        self._zone_ptimes.pop(zone_id, None)

    def _protector(self, ptime: int):
        p = self._protectors.get(ptime)
        if p is None:
            from streamer.rtp.srtp import MediaProtector
            p = self._protectors[ptime] = MediaProtector(self.keyring)
        return p

    def _send(self, packet, zones, ptime: int = 20, phase: int = 0) -> None:
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

    def _keys(self, zones: tuple, ptime: int, phase: int, secure: bool) -> tuple:
        """The fan-out keys of these zones (only those with SRTP receivers when `secure`),
        remembered until destinations or the plan change: the same tuple object comes back
        each tick, which the fan-out then finds by identity."""
        ck = (ptime, phase, secure, zones)
        keys = self._key_cache.get(ck)
        if keys is None:
            sec = self._secure_zones[ptime]
            keys = tuple(self._key(z, ptime, secure, phase) for z in zones
                         if not secure or z in sec)
            if len(self._key_cache) >= 1024:
                self._key_cache = {}
            self._key_cache[ck] = keys
        return keys

    def edit_tree(self, fn: Callable[[ZoneTree], object], dests_changed=None):
        """Apply a change to the zone tree; takes effect on the next tick.

        `dests_changed` (zone ids) promises that the change only replaced these zones'
        destinations (no zone added, removed or moved, no group changed): the next tick then
        looks at these zones only, instead of comparing every zone of the tree. Without it
        (or after any change made without it) the tick compares them all."""
        with self.lock:
            before = self.tree.version
            out = fn(self.tree)
            if self.tree.version != before:
                hint = self._tree_hint
                if (dests_changed is not None and hint is not None
                        and self._hint_version == before):
                    hint.update(dests_changed)
                    self._hint_version = self.tree.version
                else:
                    self._tree_hint = None  # unknown change: compare every zone
            return out

    @staticmethod
    def _dest_signature(zone) -> tuple:
        """What `_apply_dests` takes from the tree for one zone (dynamic destinations aside)."""
        return (zone.multicast, tuple(zone.unicast),
                tuple(sorted(zone.ptime.items())) if zone.ptime else ())

    def prepare_destinations(self, zones, min_addrs: int = 256) -> int:
        """Call outside the engine lock, before the `edit_tree` that gives these zones (Zone
        objects) new destinations: packs their big destination lists now (10,000 addresses take
        ~10 ms), so the tick that applies them only swaps the packed arrays in. Returns how many
        lists were prepared. Only a cache: a list that does not match is packed by the tick."""
        prep = getattr(self.fanout, "prepare", None)
        if prep is None:
            return 0
        applied = self._applied_sig
        n = 0
        for z in zones:
            if len(z.unicast) < min_addrs or applied.get(z.id) == self._dest_signature(z):
                continue
            if self.keyring is None and self.dynamic_dests.get(z.id):
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

    def _reapply_if_changed(self, zid: str, sigs: dict) -> None:
        sig = self._dest_signature(self.tree.zones[zid])
        if sigs.get(zid) != sig:
            self._apply_dests(zid)
            sigs[zid] = sig

    # ---------------------------------------------------------------- the tick
    def _end(self, b: Broadcast, state: str, reason: str = "") -> None:
        if b.state in ("finished", "stopped"):
            return
        b.state = state
        b.ended_at = time.time()
        for p in b.playheads:
            self._retire(p.source)
            if p.source.error and not b.error:
                b.error = p.source.error
        self.broadcasts.pop(b.id, None)
        b.audible = set()
        d = b.to_dict()
        self.history.append(d)
        if len(self.history) > 1000:
            del self.history[: len(self.history) - 1000]
        self.emit(f"broadcast.{state}", b, zones=sorted(b.zones), reason=reason,
                  error=b.error, position_s=d["position_s"])

    def _sync_tree(self) -> None:
        """Re-apply the destinations of the zones whose destinations changed, and only those:
        adding receivers to one zone costs that zone, not the whole tree."""
        if self.tree.version == self._tree_version:
            return
        hint = self._tree_hint
        if self._hint_version != self.tree.version:
            hint = None
        if hint is not None and self._thread is not None:
            # Receivers added one request at a time change a zone every tick: re-sending a
            # 10,000-address zone to the fan-out every 20 ms would swamp it. Like registered
            # receivers, such changes go out at most every `dest_apply_interval_s`.
            now = time.monotonic()
            last = self._hint_applied_at
            if now - last < self.settings.dest_apply_interval_s:
                return
            self._hint_applied_at = now
        self._tree_version = self.tree.version
        self._tree_hint, self._hint_version = set(), self.tree.version
        sigs = self._applied_sig
        tz = self.tree.zones
        if hint is not None and len(tz) == len(self._known_zones) and all(z in tz for z in hint):
            for zid in hint:  # destinations only: the structure did not change
                self._reapply_if_changed(zid, sigs)
            return
        known = set(tz)
        for zid in known:
            self._reapply_if_changed(zid, sigs)
        for zid in self._known_zones - known:
            self._zone_key.pop(zid, None)
            self._drop_dests(zid)
            sigs.pop(zid, None)
        self._known_zones = known
        for b in self.broadcasts.values():
            try:
                zones = self.tree.resolve([t for t in b.spec.targets
                                           if t in self.tree.zones or t in self.tree.groups])
            except ZoneError:
                zones = set()
            added = zones - b.zones
            for p in b.playheads:
                p.zones &= zones
            if added and b.playheads:
                live = [p for p in b.playheads if not p.finished]
                if live:
                    live[0].zones |= added
            b.zones = zones
            b.done_zones &= zones

    def _fork(self, b: Broadcast, p: Playhead, zones: set[str], cut_s: float) -> Playhead:
        start = max(0.0, cut_s - self.settings.resume_rewind_s)
        src = b.spec.source_factory(start)
        src.start()
        fork = Playhead(src, zones, paused=True, rewound=True)
        fork.was_cut = cut_s > 0
        b.playheads.append(fork)
        return fork

    def _resume(self, b: Broadcast, p: Playhead, zones: set[str]) -> None:
        """A paused playhead plays again: a little before where it was cut, unless it is a fork
        that was opened there already."""
        p.paused = False
        if not p.rewound and p.started:
            p.source.rewind(self.settings.resume_rewind_s)
        p.rewound = False
        if p.started or p.was_cut:
            b.preempted -= zones
            self.emit("broadcast.resumed", b, zones=sorted(zones),
                      position_s=round(p.source.position_s, 2))

    def _manage_playheads(self, b: Broadcast, audible: set[str]) -> None:
        now = time.time()
        if b.spec.live:
            if audible and b.started_at is None:
                b.started_at = now
            lost = b.audible - audible
            if lost and b.started_at:
                self.emit("broadcast.preempted", b, zones=sorted(lost),
                          notice="live talk preempted on these zones")
                b.preempted |= lost
            back = audible & b.preempted
            if back:
                b.preempted -= back
                self.emit("broadcast.resumed", b, zones=sorted(back))
            return
        for p in list(b.playheads):
            if p.finished or not p.zones:
                continue
            aud = p.zones & audible
            if aud == p.zones:
                if p.paused:
                    self._resume(b, p, p.zones)
            elif not aud:
                if not p.paused:
                    p.paused = True
                    if p.started:
                        b.preempted |= p.zones
                        self.emit("broadcast.preempted", b, zones=sorted(p.zones),
                                  position_s=round(p.source.position_s, 2))
            else:
                rest = p.zones - aud
                cut = p.source.position_s
                p.zones = aud
                if p.started:
                    self._fork(b, p, rest, cut)
                    if not p.paused:
                        b.preempted |= rest
                        self.emit("broadcast.preempted", b, zones=sorted(rest),
                                  position_s=round(cut, 2))
                else:
                    # never played yet: the waiting zones start from the beginning later
                    self._fork(b, p, rest, 0.0)
                if p.paused:
                    self._resume(b, p, aud)
        if audible and b.started_at is None:
            b.started_at = now

    def _send_redundant(self, k: int, frames: dict[str, bytes], seq: int, ts: int,
                        marked: set[str]) -> None:
        """RFC 2198 packets (this tick's frame + the previous one) for registered receivers on
        lossy links: built once per distinct frame pair, same sequence number and timestamp as
        the plain packet of this tick. The marker bit is the plain packet's (a talk spurt
        starts): a zone whose receivers just switched to redundancy continues its stream, and a
        marker there would make a receiver that lost the packet before it restart its timeline
        (skipping the hole instead of concealing it)."""
        prev = self._frame_hist[-2][1] if len(self._frame_hist) > 1 and \
            self._frame_hist[-2][0] == k - 1 else {}
        groups: dict[tuple, list[str]] = {}
        for z in self._red_zones:
            cur = frames.get(z)
            if cur is not None:
                groups.setdefault((prev.get(z), cur, z in marked), []).append(z)
        secure = self.keyring is not None
        for (before, cur, marker), zones in groups.items():
            payload = red.build(self.settings.payload_type, cur, before, FRAME_SAMPLES)
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
        pt = self.settings.payload_type
        for ptime in (40, 60):
            per = ptime // 20
            phase = (k + 1) % per  # receivers of this phase complete a window now
            hist = [h for h in self._frame_hist if h[0] > k - per]
            groups: dict[tuple, list[str]] = {}
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

    def _join_runs(self, seq_frames: tuple) -> list[tuple[bytes, int]]:
        """(payload, timestamp) packets: as few as the frames' Opus configurations allow (frames
        of different modes, e.g. around an encoder's mode switch, cannot share a packet)."""
        rp = self._repacketizer
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
                out.append((joined, (self.ts0 + run_k * FRAME_SAMPLES) & 0xFFFFFFFF))
                run, run_k, joined = [p], kk, p
            else:
                run.append(p)
                joined = j
        if run:
            out.append((joined, (self.ts0 + run_k * FRAME_SAMPLES) & 0xFFFFFFFF))
        return out

    def _tick(self, k: int, lateness_ns: int = 0) -> None:
        t0 = time.perf_counter_ns()
        with self.lock:
            self._tick_locked(k)
        dt = (time.perf_counter_ns() - t0) / 1000.0
        self.last_tick_us = dt
        if dt > self.max_tick_us:
            self.max_tick_us = dt
        if dt > FRAME_MS * 1000:
            self.tick_overruns += 1
        self.ticks += 1

    def _tick_locked(self, k: int) -> None:
        self._sync_tree()
        if self._pending_dests:
            self._apply_pending_dests()
        # 1. retire finished playheads and broadcasts
        for b in list(self.broadcasts.values()):
            for p in b.playheads:
                if not p.finished and p.source.finished and p.started:
                    p.finished = True
                    b.done_zones |= p.zones
                    if p.source.error and not b.error:
                        b.error = p.source.error
                    self._retire(p.source)
                elif not p.finished and p.source.finished and not p.started:
                    # ended before producing anything (empty or broken input)
                    p.finished = True
                    b.done_zones |= p.zones
                    b.error = b.error or p.source.error
            if all(p.finished for p in b.playheads) or (
                    len(b.done_zones) >= len(b.zones) and b.zones <= b.done_zones):
                self._end(b, "finished")
        # Steady state (nothing started, stopped, finished, moved or ramping since the last tick):
        # the previous tick's plan (who plays where, which zones share a program) still holds,
        # so per-tick work is per program and per playhead, never per zone.
        sig = self._plan_signature()
        if sig == self._plan_sig:
            self._run_plan(k, self._plan, fast=True)
            return
        # 2. arbitration
        claims = [b.claim() for b in self.broadcasts.values()]
        layers = arbitrate(claims, duck_db=self.settings.duck_db)
        audible: dict[str, set[str]] = {b: set() for b in self.broadcasts}
        ducked: dict[str, set[str]] = {b: set() for b in self.broadcasts}
        for z, ls in layers.items():
            for i, layer in enumerate(ls):
                audible[layer.claim_id].add(z)
                if layer.gain_db < 0:
                    ducked[layer.claim_id].add(z)
        for b in list(self.broadcasts.values()):
            self._manage_playheads(b, audible[b.id])
            newly_ducked = ducked[b.id] - b.ducked
            if newly_ducked:
                self.emit("broadcast.ducked", b, zones=sorted(newly_ducked),
                          duck_db=self.settings.duck_db)
            if b.state == "queued" and audible[b.id]:
                b.state = "playing"
                self.emit("broadcast.started", b, zones=sorted(audible[b.id]),
                          tick=k)
            elif b.state == "playing" and not audible[b.id]:
                b.state = "paused"
            elif b.state == "paused" and audible[b.id]:
                b.state = "playing"
            b.audible = audible[b.id]
            b.ducked = ducked[b.id]
        # 3. which playheads play this tick
        reads = []
        for b in self.broadcasts.values():
            for p in b.playheads:
                if p.finished:
                    continue
                if p.paused and not b.spec.live:
                    continue
                if not (p.zones & b.audible) and not b.spec.live:
                    continue
                reads.append((b, p))
        # 4. programs: zones with the same layers (playhead, gain ramp) share one encode
        programs: dict[tuple, list[str]] = {}
        winners: dict[str, int] = {}
        steady = True
        for z, ls in layers.items():
            key_items = []
            for layer in ls:
                b = self.broadcasts[layer.claim_id]
                p = b.playhead_for(z)
                if p is None or p.finished or (p.paused and not b.spec.live):
                    continue
                ramp = self._ramps.get((z, b.id))
                if ramp is None:
                    ramp = self._ramps[(z, b.id)] = GainRamp(layer.gain_db, self.settings.duck_ramp_ms)
                ramp.target_db = layer.gain_db
                g0, g1 = ramp.advance()
                if g0 != g1 or not ramp.settled:
                    steady = False
                key_items.append((p.id, round(g0 * b.gain, 5), round(g1 * b.gain, 5)))
            if not key_items:
                continue
            key = tuple(key_items)
            winners[z] = key_items[0][0]
            programs.setdefault(key, []).append(z)
        # drop ramps of pairs that are gone
        if len(self._ramps) > 4 * max(1, len(layers)):
            live_pairs = {(z, l.claim_id) for z, ls in layers.items() for l in ls}
            for pair in list(self._ramps):
                if pair not in live_pairs:
                    del self._ramps[pair]
        plan = {
            "programs": {key: tuple(zones) for key, zones in programs.items()},
            "winners": winners,
            "reads": reads,
            "slow": {key: tuple(z for z in zones if z in self._zone_ptimes or z in self._red_zones)
                     for key, zones in programs.items()},
        }
        self._run_plan(k, plan, fast=False)
        self._plan = plan
        # a plan is reused only once every ramp has settled and every playhead has started
        # (the first frame flips `started`, which is part of the signature)
        self._plan_sig = self._plan_signature() if steady else None
        self._key_cache = {}

    def _plan_signature(self) -> tuple:
        """Cheap (per broadcast and playhead): changes whenever arbitration could decide
        differently."""
        return (self.tree.version, self._dest_version, tuple(
            (b.id, b.state, len(b.done_zones), len(b.zones),
             any(p.started or p.source.ready() or p.source.finished
                 for p in b.playheads if not p.finished),
             tuple((p.id, p.paused, p.finished, p.started, len(p.zones)) for p in b.playheads))
            for b in self.broadcasts.values()))

    def _run_plan(self, k: int, plan: dict, fast: bool) -> None:
        """Read, mix, encode once per program, send. `fast`: the plan is last tick's, so no
        zone changed program (no marker bits) and nothing per zone needs recomputing."""
        programs: dict[tuple, tuple] = plan["programs"]
        winners = plan["winners"]
        frames: dict[int, np.ndarray] = {}
        for b, p in plan["reads"]:
            f = p.source.read()
            if f is None:
                p.frame = SILENCE
            else:
                p.frame = f
                p.started = True
            frames[p.id] = p.frame
        if programs:
            seq = self.seq = (self.seq + 1) & 0xFFFF
        else:
            seq = self.seq
        ts = (self.ts0 + k * FRAME_SAMPLES) & 0xFFFFFFFF
        now = time.monotonic()
        if fast:
            used = self._channels
            if (self._loss_version != self._loss_applied and now >= self._loss_next) or \
                    (self._loss_due and now >= self._loss_due):
                self._apply_loss(programs, used, now)
        else:
            used = self._assign_channels(programs, now)
            self._apply_loss(programs, used, now)
        pt = self.settings.payload_type
        slow_frames: dict[str, bytes] | None = {} if (self._zone_ptimes or self._red_zones) \
            else None
        spurt_starts: set[str] = set()
        for key, zones in programs.items():
            ch = used[key]
            ch.last_used = now
            bus = ch.bus
            if len(key) == 1 and key[0][1] == 1.0 and key[0][2] == 1.0:
                np.copyto(bus, frames[key[0][0]])    # one source at unity: the common case
            else:
                bus.fill(0.0)
                for pid, g0, g1 in key:
                    add_scaled(bus, frames[pid], g0, g1, ch.scratch)
            ch.limiter.process(bus)
            payload = ch.encoder.encode_input()
            n = HEADER_SIZE + len(payload)
            buf = ch.buf
            buf[HEADER_SIZE:n] = payload
            if fast:
                plain, marked = zones, ()
            else:
                pl, mk = [], []
                for z in zones:
                    (mk if self._zone_winner.get(z) != winners[z] else pl).append(z)
                plain, marked = tuple(pl), tuple(mk)
            if plain:
                write_header(buf, pt, seq, ts, self.ssrc, marker=False)
                self._send(ch.view[:n], plain)
            if marked:
                write_header(buf, pt, seq, ts, self.ssrc, marker=True)
                self._send(ch.view[:n], marked)
                spurt_starts.update(marked)
            self.packets_built += 1
            if slow_frames is not None:
                slow = plan["slow"].get(key, ())
                if slow:
                    payload_bytes = bytes(buf[HEADER_SIZE:n])
                    for z in slow:
                        slow_frames[z] = payload_bytes
        self.encoders_active = len(programs)
        if slow_frames is not None:
            self._frame_hist.append((k, slow_frames))
            if self._zone_ptimes:
                self._send_long_packets(k)
            if self._red_zones:
                self._send_redundant(k, slow_frames, seq, ts, spurt_starts)
        elif self._frame_hist:
            self._frame_hist.clear()
        if programs:
            sent_ns = time.monotonic_ns()
            for b in self.broadcasts.values():
                if b.first_packet_ns is None and b.audible:
                    b.first_packet_ns = sent_ns
                    if b.playheads:
                        b.ready_ns = b.playheads[0].source.ready_ns
        if not fast:
            new_keys = {}
            for key, zones in programs.items():
                for z in zones:
                    new_keys[z] = key
            self._zone_key = new_keys
            self._zone_winner = winners
        self.tick_index = k

    def _assign_channels(self, programs: dict, now: float) -> dict:
        used: dict[tuple, ProgramChannel] = {}
        for key in programs:
            ch = self._channels.get(key)
            if ch is not None:
                used[key] = ch
        released = [ch for kk, ch in self._channels.items() if kk not in programs]
        for key, zones in programs.items():
            if key in used:
                continue
            # hand over the encoder of the program these zones heard before (a gain ramp or a
            # switch), so their decoders see one continuous Opus stream where possible
            prev = self._channels.get(self._zone_key.get(zones[0]))  # type: ignore[arg-type]
            if prev is not None and prev in released:
                released.remove(prev)
                ch = prev
            elif released:
                ch = released.pop()
            elif self._free_channels:
                ch = self._free_channels.pop()
            else:
                ch = ProgramChannel(self.settings.opus, self.settings.limiter_ceiling_db)
            used[key] = ch
        self._free_channels.extend(released)
        if self._free_channels:
            keep = []
            for ch in self._free_channels:
                if now - ch.last_used > self.settings.idle_channel_ttl_s:
                    ch.close()
                else:
                    keep.append(ch)
            self._free_channels = keep
        self._channels = used
        return used
