"""The decision part of the engine, sans IO: `Core`.

Broadcast lifecycle (queued → playing ⇄ paused → finished | stopped), arbitration per zone,
playheads (one cursor through a broadcast's audio per set of zones), preemption and resume (a
preempted item pauses and later resumes a little before its cut; zones cut from a playing item
get a fork of it reopened there), and the plan of each tick: which playheads are read, which
zones share a programme (one encode) and which zones start a talk spurt.

No thread, lock, socket or clock in here: the runtime (`streamer.runtime`) holds the lock, reads
the clock and passes the time in, reads the planned playheads' sources, and carries out what the
core asks for in its outboxes: `events` to publish, sources to close (`to_close`) and sources to
open off the tick (`to_open`: a fork's reopened source, attached with `attach`).

Steady state (nothing started, stopped, finished, moved or ramping since the last tick): the
previous tick's plan object is returned again, so per-tick work is per programme and per
playhead, never per zone.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.audio import SILENCE, db_to_gain
from streamer.core.carve import CARVE_LEVEL, Carve, carve_zone, place, release, restore_carves
from streamer.ingest.base import Source
from streamer.mixer.arbitration import Claim, Level, arbitrate, live_conflict
from streamer.mixer.mix import GainRamp
from streamer.mixer.programs import ProgramKey
from streamer.port import (BroadcastSnapshot, Conflict, EngineEvent, OnAir, Refused,
                           UnknownBroadcast, ZoneSnapshot, carve_id)
from streamer.rtp.opus import OpusSettings
from streamer.timefmt import utc_iso
from streamer.zones import ZoneError, ZoneTree

__all__ = ["Core", "EngineSettings", "BroadcastSpec", "Broadcast", "Playhead", "Plan",
           "SourceFactory", "PendingSource"]

SourceFactory = Callable[[float], Source]
MODES = ("preempt", "duck", "mix")


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
    cpus: tuple[int, ...] = ()  # the CPUs the tick thread pins itself to (streamer.cpus)
    dest_apply_interval_s: float = 0.25  # registered receivers' address changes, batched
    # A program's encoder plans for the worst loss its zones' receivers report (in-band FEC
    # where that is high enough); after a rise it keeps the higher value this long.
    loss_hold_s: float = 30.0
    loss_apply_interval_s: float = 1.0   # reported-loss changes reach the encoders at most this often


@dataclass
class BroadcastSpec:
    """What the core keeps of a StartBroadcast: the description shown, and how to (re)open the
    audio (`source_factory(start_s)`, from the catalogue)."""
    targets: list[str]
    level: Level
    source_factory: SourceFactory
    kind: str
    description: dict[str, Any] = field(default_factory=dict)
    mode: str = "preempt"
    gain_db: float = 0.0
    live: bool = False
    owner: str = ""  # the account (unique): ownership checks
    duration_s: float | None = None
    id: str = ""
    owner_name: str = ""  # what people see ("Ông Nguyễn Văn An"); defaults to owner
    title: str = ""
    start_at: float | None = None  # wall clock: held (queued, source open) until then
    alone: tuple[str, ...] = ()  # targets that reach that zone only (StartBroadcast.alone)
    #: zone -> the receivers' addresses to reach there, not the whole zone (StartBroadcast.only)
    only: dict[str, frozenset[tuple[str, int]]] = field(default_factory=dict)


class PendingSource(Source):
    """Stands in for a fork's source until the runtime has opened it off the tick: not ready,
    not finished, silent, positioned where the fork starts."""
    kind = "pending"

    def __init__(self, start_s: float) -> None:
        super().__init__()
        self.start_s = start_s

    def ready(self) -> bool:
        return False

    def read(self) -> np.ndarray | None:
        return None

    @property
    def finished(self) -> bool:
        return False

    @property
    def position_s(self) -> float:
        return self.start_s


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
    def __init__(self, spec: BroadcastSpec, order: int, zones: set[str], wall: float,
                 now_ns: int) -> None:
        self.spec = spec
        self.id = spec.id
        self.order = order
        self.level = spec.level
        self.zones = zones  # every zone the targets reach (recomputed when the tree changes)
        self.done_zones: set[str] = set()
        self.playheads: list[Playhead] = []
        self.state = "queued"  # queued → playing ⇄ paused → finished | stopped
        self.created = wall
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.audible: set[str] = set()
        self.ducked: set[str] = set()
        self.preempted: set[str] = set()
        self.gain = db_to_gain(spec.gain_db)
        self.error: str | None = None
        #: the broadcast it was last said to wait behind (broadcast.queued, once per holder)
        self.queued_behind: str | None = None
        self.created_ns = now_ns
        self.ready_ns: int | None = None
        self.first_packet_ns: int | None = None
        #: not on air before spec.start_at (a scheduled start): arbitration skips it until
        #: the first tick at or after that instant (decided by the tick's time, never here)
        self.held = spec.start_at is not None

    def claim(self) -> Claim:
        ready = not self.held and any(p.started or p.source.ready() or p.source.finished
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

    def snapshot(self) -> BroadcastSnapshot:
        def ms(a: int | None, b: int | None) -> float | None:
            return round((b - a) / 1e6, 3) if a is not None and b is not None else None
        s = self.spec
        return BroadcastSnapshot(
            id=self.id, targets=tuple(s.targets), reached_zones=tuple(sorted(self.zones)),
            level=self.level.label, mode=s.mode, source=dict(s.description, kind=s.kind),
            live=s.live, owner=s.owner, owner_name=s.owner_name or s.owner, state=self.state,
            on_air_zones=tuple(sorted(self.audible)),
            preempted_zones=tuple(sorted(self.preempted)), created_at=utc_iso(self.created),
            started_at=utc_iso(self.started_at) if self.started_at else None,
            ended_at=utc_iso(self.ended_at) if self.ended_at else None,
            position_s=round(self.position_s(), 2), duration_s=s.duration_s, error=self.error,
            timing={"created_to_first_packet_ms": ms(self.created_ns, self.first_packet_ns),
                    "ready_to_first_packet_ms": ms(self.ready_ns, self.first_packet_ns)},
            title=s.title)


@dataclass
class Plan:
    """One tick's decisions. The same object comes back while the plan holds (`fast`)."""
    programs: dict[ProgramKey, tuple[str, ...]]   # programme -> the zones hearing it
    winners: dict[str, int]                       # zone -> winning playhead id
    reads: list[Playhead]                         # playheads read this tick
    #: programme -> (zones continuing, zones whose talk spurt starts); None: no marker
    markers: dict[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]] | None = None
    fast: bool = False


class Core:
    def __init__(self, settings: EngineSettings | None = None,
                 tree: ZoneTree | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.tree = tree or ZoneTree()
        self.broadcasts: dict[str, Broadcast] = {}
        self.history: list[BroadcastSnapshot] = []  # ended broadcasts (bounded)
        self._order = itertools.count(1)
        # outboxes, emptied by the runtime
        self.events: list[EngineEvent] = []
        self.to_close: list[Source] = []
        self.to_open: list[tuple[Broadcast, Playhead, SourceFactory, float]] = []
        # tree sync
        self._tree_version = -1
        self._tree_hint: set[str] | None = None
        self._hint_version: int | None = None
        self._hint_applied_at = -1e18
        self._known_zones: set[str] = set()
        # the plan
        self._plan: Plan | None = None
        self._plan_sig: tuple[Any, ...] | None = None
        self._zone_key: dict[str, ProgramKey] = {}  # program key each zone heard last tick
        self._zone_winner: dict[str, int] = {}    # winning playhead id per zone, last tick
        self._ramps: dict[tuple[str, str], GainRamp] = {}
        self._zone_status: tuple[Any, dict[str, ZoneSnapshot]] | None = None
        self._steady = False
        self._release_at: float | None = None  # the earliest start_at of a held broadcast
        #: carve zone id -> its carve (streamer.core.carve): some receivers of a zone, for as
        #: long as their broadcast lasts; `carve_version` bumps whenever the set changes
        self.carves: dict[str, Carve] = {}
        self.carve_version = 0

    # ---------------------------------------------------------------- events
    def _emit(self, type_: str, b: Broadcast, wall: float, **fields: Any) -> None:
        for k in ("zones", "targets"):
            if k in fields and fields[k] is not None:
                fields[k] = tuple(fields[k])
        self.events.append(EngineEvent(type=type_, time=utc_iso(wall), broadcast=b.id,
                                       level=b.level.label, kind=b.spec.kind,
                                       owner=b.spec.owner, **fields))

    # ---------------------------------------------------------------- commands
    def admit(self, spec: BroadcastSpec, wall: float, now_ns: int) -> Broadcast:
        """Check a new broadcast (raises ValueError for a bad mode, ZoneError, Conflict for an
        id in use, Refused when a live talker holds a zone); it is not added yet: open its
        source (off the lock) and `add` it."""
        if spec.mode not in MODES:
            raise ValueError(f"unknown mode {spec.mode!r}; expected preempt, duck or mix")
        zones = self.tree.resolve(spec.targets, spec.alone)
        if spec.only:
            unknown = [z for z in spec.only if z not in self.tree.zones
                       or self.tree.zones[z].level == CARVE_LEVEL]
            if unknown:
                raise ZoneError(f"unknown zone: {', '.join(sorted(unknown))}")
            zones |= {carve_id(z, spec.id) for z in spec.only}
        if not zones:
            raise ZoneError("the targets reach no zone")
        if spec.id in self.broadcasts:
            raise Conflict(f"broadcast {spec.id!r} already exists")
        b = Broadcast(spec, next(self._order), zones, wall, now_ns)
        conflict = live_conflict(b.claim(), (x.claim() for x in self.broadcasts.values()))
        if conflict is not None:
            holder = self.broadcasts[conflict.id]
            who = holder.spec.owner_name or holder.spec.owner or holder.id
            shared = sorted(holder.zones & zones)
            reason = (f"zone {', '.join(shared)} is held by live broadcast {holder.id} "
                      f"({who}, level {holder.level.label})")
            self._emit("broadcast.refused", b, wall, zones=sorted(zones), reason=reason,
                       holder=holder.id, holder_owner=holder.spec.owner)
            raise Refused(reason, holder.snapshot())
        return b

    def add(self, b: Broadcast, source: Source, wall: float) -> BroadcastSnapshot:
        """The admitted broadcast, its source started. Raises Conflict if its id was taken
        meanwhile (the caller then closes the source)."""
        if b.id in self.broadcasts:
            raise Conflict(f"broadcast {b.id!r} already exists")
        if b.spec.only:
            self._carve(b)
        b.playheads.append(Playhead(source, set(b.zones)))
        self.broadcasts[b.id] = b
        if b.held and b.spec.start_at is not None and (
                self._release_at is None or b.spec.start_at < self._release_at):
            self._release_at = b.spec.start_at
        self._emit("broadcast.created", b, wall, zones=sorted(b.zones),
                   targets=list(b.spec.targets))
        return b.snapshot()

    def _carve(self, b: Broadcast) -> None:
        """Its `only` receivers get a zone of their own below theirs (below the carve of an
        earlier broadcast that holds them: streamer.core.carve.place), which it targets: they
        hear what they heard (same programme key, same talk spurt) until it comes on air."""
        tree, added = self.tree, []
        keys, winners = dict(self._zone_key), dict(self._zone_winner)
        b.zones -= {carve_id(z, b.id) for z in b.spec.only}   # admit's placeholders
        for z, addrs in b.spec.only.items():
            if z not in tree.zones or not addrs:
                continue
            for cid, c in place(self.carves, z, b.id, addrs).items():
                if cid in tree.zones or c.parent not in tree.zones:
                    continue
                self.carves[cid] = c
                tree.add(carve_zone(tree.zones[c.parent], cid))
                added.append(cid)
                if c.parent in keys:
                    keys[cid] = keys[c.parent]
                if c.parent in winners:
                    winners[cid] = winners[c.parent]
        self._zone_key, self._zone_winner = keys, winners
        b.zones |= set(added)
        b.spec.targets = list(b.spec.targets) + added
        self.carve_version += 1

    def _uncarve(self, b: Broadcast) -> None:
        """Its carves go: their receivers are back in their zones' lists (next sync), and the
        carves below them (a later broadcast's) move up to their parents."""
        gone, moved = release(self.carves, b.id)
        for child, parent in moved.items():
            z = self.tree.zones.get(child)
            if z is not None:
                z.parent = parent
        for cid in gone:
            if cid in self.tree.zones:
                self.tree.remove(cid)
        if gone:
            self.tree.version += 1
            self.carve_version += 1

    def restore_carves(self, tree: ZoneTree) -> None:
        """`tree` (about to replace the core's, from control) with the carves put back."""
        if self.carves:
            if restore_carves(tree, self.carves):
                self.carve_version += 1

    def stop(self, broadcast_id: str, reason: str, wall: float) -> BroadcastSnapshot:
        b = self.broadcasts.get(broadcast_id)
        if b is None:
            raise UnknownBroadcast(broadcast_id)
        return self._end(b, "stopped", wall, reason=reason)

    def stop_all(self, reason: str, wall: float) -> None:
        for b in list(self.broadcasts.values()):
            self._end(b, "stopped", wall, reason=reason)

    def attach(self, playhead: Playhead, source: Source) -> bool:
        """A fork's source, opened off the tick. False (close it) when nobody needs it now."""
        if playhead.finished or not isinstance(playhead.source, PendingSource) or \
                not any(playhead in b.playheads for b in self.broadcasts.values()):
            return False
        playhead.source = source
        return True

    def edit_tree(self, fn: Callable[[ZoneTree], Any], dests_changed: set[str] | None = None
                  ) -> Any:
        """Apply a change to the zone tree; it takes effect on the next tick.

        `dests_changed` (zone ids) promises that the change only replaced these zones'
        destinations (no zone added, removed or moved, no group changed): the next tick then
        looks at these zones only, instead of comparing every zone of the tree."""
        before = self.tree.version
        out = fn(self.tree)
        if self.tree.version != before:
            hint = self._tree_hint
            if dests_changed is not None and hint is not None and self._hint_version == before:
                hint.update(dests_changed)
                self._hint_version = self.tree.version
            else:
                self._tree_hint = None  # unknown change: compare every zone
        return out

    # ---------------------------------------------------------------- status
    def get(self, broadcast_id: str) -> BroadcastSnapshot | None:
        b = self.broadcasts.get(broadcast_id)
        if b is not None:
            return b.snapshot()
        for h in reversed(self.history):
            if h.id == broadcast_id:
                return h
        return None

    def snapshots(self, include_past: bool = False) -> list[BroadcastSnapshot]:
        out = [b.snapshot() for b in sorted(self.broadcasts.values(), key=lambda x: x.order)]
        if include_past:
            out = list(reversed(self.history)) + out
        return out

    def zone_status(self) -> dict[str, ZoneSnapshot]:
        """What each zone is hearing. The same object while the plan holds: the receiver
        endpoint asks several times a second, and with thousands of zones rebuilding it each
        time would hold the engine lock (and so the tick) for milliseconds."""
        sig = self._plan_sig
        cached = self._zone_status
        if sig is not None and cached is not None and cached[0] == sig:
            return cached[1]
        on: dict[str, list[OnAir]] = {}
        for b in sorted(self.broadcasts.values(), key=lambda x: x.order):
            for zid in b.audible:
                on.setdefault(zid, []).append(OnAir(b.id, b.level.label, zid in b.ducked))
        zk = self._zone_key
        out = {zid: ZoneSnapshot(zid, tuple(on.get(zid, ())),
                                 hash(zk[zid]) if zid in zk else None)
               for zid in self.tree.zones}
        self._zone_status = (sig, out)
        return out

    # ---------------------------------------------------------------- the tick
    @property
    def tree_changed(self) -> bool:
        return self.tree.version != self._tree_version

    def sync_tree(self, now: float, throttle: bool) -> tuple[list[str], list[str]]:
        """Zones whose destinations may have changed (to re-apply) and zones gone (to drop),
        since the last call; broadcasts follow the tree. Destination-only changes are applied
        at most every `dest_apply_interval_s` when `throttle` (receivers added one request at a
        time change a zone every tick: re-sending a 10,000-address zone to the fan-out every
        20 ms would swamp it)."""
        tree = self.tree
        if tree.version == self._tree_version:
            return [], []
        hint = self._tree_hint if self._hint_version == tree.version else None
        if hint is not None and throttle:
            if now - self._hint_applied_at < self.settings.dest_apply_interval_s:
                return [], []
            self._hint_applied_at = now
        self._tree_version = tree.version
        self._tree_hint, self._hint_version = set(), tree.version
        tz = tree.zones
        if hint is not None and len(tz) == len(self._known_zones) and all(z in tz for z in hint):
            return list(hint), []   # destinations only: the structure did not change
        known = set(tz)
        gone = list(self._known_zones - known)
        for zid in gone:
            self._zone_key.pop(zid, None)
        self._known_zones = known
        for b in self.broadcasts.values():
            try:
                zones = tree.resolve([t for t in b.spec.targets
                                      if t in tree.zones or t in tree.groups], b.spec.alone)
            except ZoneError:
                zones = set()
            added = zones - b.zones
            for p in b.playheads:
                had = bool(p.zones)
                p.zones &= zones
                if had and not p.zones and not p.finished and \
                        sum(1 for q in b.playheads if not q.finished) > 1:
                    # a fork whose zones all left the tree (a carve gone): nobody hears it
                    p.finished = True
                    if not isinstance(p.source, PendingSource):
                        self.to_close.append(p.source)
            if added and b.playheads:
                live = [p for p in b.playheads if not p.finished]
                if live:
                    live[0].zones |= added
            b.zones = zones
            b.done_zones &= zones
        return list(known), gone

    def plan(self, k: int, wall: float, dest_version: int) -> Plan:
        """Retire what finished, then decide this tick: the previous plan while nothing that
        arbitration looks at changed, a new one otherwise. Read `plan.reads`, then call
        `frames_read`."""
        if self._release_at is not None and wall >= self._release_at:
            self._release(wall)
        for b in list(self.broadcasts.values()):
            for p in b.playheads:
                if p.source.notice is not None:   # rare: a source has something to tell
                    self._emit("broadcast.notice", b, wall, zones=sorted(p.zones),
                               notice=p.source.notice)
                    p.source.notice = None
                if p.finished or not p.source.finished:
                    continue
                p.finished = True
                b.done_zones |= p.zones
                if p.source.error and not b.error:
                    b.error = p.source.error
                if p.started:
                    self.to_close.append(p.source)
            if all(p.finished for p in b.playheads) or (
                    len(b.done_zones) >= len(b.zones) and b.zones <= b.done_zones):
                self._end(b, "finished", wall)
        sig = self._signature(dest_version)
        if sig == self._plan_sig and self._plan is not None:
            self._plan.fast = True
            return self._plan
        return self._arbitrate(k, wall)

    def _release(self, wall: float) -> None:
        """Held broadcasts whose instant has come join arbitration this tick, in the order
        they come on air (a same-level item already playing keeps the zone: it came first)."""
        nxt: float | None = None
        for b in sorted(self.broadcasts.values(), key=lambda x: x.order):
            at = b.spec.start_at
            if not b.held or at is None:
                continue
            if at <= wall:
                b.held = False
                b.order = next(self._order)
            elif nxt is None or at < nxt:
                nxt = at
        self._release_at = nxt
        self._plan_sig = None  # arbitrate again

    def _arbitrate(self, k: int, wall: float) -> Plan:
        claims = [b.claim() for b in self.broadcasts.values()]
        layers = arbitrate(claims, duck_db=self.settings.duck_db)
        audible: dict[str, set[str]] = {b: set() for b in self.broadcasts}
        ducked: dict[str, set[str]] = {b: set() for b in self.broadcasts}
        for z, ls in layers.items():
            for layer in ls:
                audible[layer.claim_id].add(z)
                if layer.gain_db < 0:
                    ducked[layer.claim_id].add(z)
        for b in list(self.broadcasts.values()):
            self._manage_playheads(b, audible[b.id], wall)
            newly_ducked = ducked[b.id] - b.ducked
            if newly_ducked:
                self._emit("broadcast.ducked", b, wall, zones=sorted(newly_ducked),
                           duck_db=self.settings.duck_db)
            if b.state == "queued" and audible[b.id]:
                b.state = "playing"
                self._emit("broadcast.started", b, wall, zones=sorted(audible[b.id]), tick=k)
            elif b.state == "playing" and not audible[b.id]:
                b.state = "paused"
            elif b.state == "paused" and audible[b.id]:
                b.state = "playing"
            b.audible = audible[b.id]
            b.ducked = ducked[b.id]
        for b in self.broadcasts.values():
            if b.level >= Level.PRIORITY and not b.held:
                self._say_queued(b, wall)
        reads = []
        for b in self.broadcasts.values():
            for p in b.playheads:
                if p.finished:
                    continue
                if p.paused and not b.spec.live:
                    continue
                if not (p.zones & b.audible) and not b.spec.live:
                    continue
                reads.append(p)
        # programs: zones with the same layers (playhead, gain ramp) share one encode
        programs: dict[ProgramKey, list[str]] = {}
        urgency: dict[ProgramKey, int] = {}   # the level of the broadcast each one is led by
        winners: dict[str, int] = {}
        steady = True
        for z, ls in layers.items():
            key_items: list[tuple[int, float, float]] = []
            lead = 0
            for layer in ls:
                b = self.broadcasts[layer.claim_id]
                ph = b.playhead_for(z)
                if ph is None or ph.finished or (ph.paused and not b.spec.live):
                    continue
                ramp = self._ramps.get((z, b.id))
                if ramp is None:
                    ramp = self._ramps[(z, b.id)] = GainRamp(layer.gain_db,
                                                             self.settings.duck_ramp_ms)
                ramp.target_db = layer.gain_db
                g0, g1 = ramp.advance()
                if g0 != g1 or not ramp.settled:
                    steady = False
                if not key_items:
                    lead = int(b.level)
                key_items.append((ph.id, round(g0 * b.gain, 5), round(g1 * b.gain, 5)))
            if not key_items:
                continue
            key = tuple(key_items)
            urgency[key] = max(urgency.get(key, 0), lead)
            winners[z] = key_items[0][0]
            programs.setdefault(key, []).append(z)
        if len(self._ramps) > 4 * max(1, len(layers)):   # drop ramps of pairs that are gone
            live_pairs = {(z, la.claim_id) for z, ls in layers.items() for la in ls}
            for pair in list(self._ramps):
                if pair not in live_pairs:
                    del self._ramps[pair]
        markers = {}
        prev = self._zone_winner
        for key, zones in programs.items():
            pl = tuple(z for z in zones if prev.get(z) == winners[z])
            mk = tuple(z for z in zones if prev.get(z) != winners[z])
            markers[key] = (pl, mk)
        # the most urgent programme first: the outputs send in this order each tick, so an
        # emergency's packet is handed to the fan-out before a programme's to other receivers
        # (a polygon alert's carve shares the tick with its zone's programme)
        order = sorted(programs, key=lambda key: -urgency[key])
        plan = Plan({key: tuple(programs[key]) for key in order}, winners, reads,
                    {key: markers[key] for key in order}, fast=False)
        self._plan = plan
        self._steady = steady
        return plan

    def _say_queued(self, b: Broadcast, wall: float) -> None:
        """An urgent broadcast admitted but kept off air (in all or some of its zones, before
        it played there) because a broadcast of its level or higher holds them: said once per
        holder (issue 13: a second emergency waited 8.8 s with nothing saying why; a cut is
        broadcast.preempted). Only when arbitration runs, never per tick."""
        zones = b.zones - b.done_zones - b.audible - b.preempted
        if not zones:
            return
        holder: Broadcast | None = None
        for h in self.broadcasts.values():
            if h is b or h.level < b.level or not (h.audible & zones):
                continue
            if holder is None or (h.level, -h.order) > (holder.level, -holder.order):
                holder = h
        if holder is None or holder.id == b.queued_behind:
            return
        b.queued_behind = holder.id
        held = sorted(holder.audible & zones)
        who = holder.spec.owner_name or holder.spec.owner or holder.id
        self._emit("broadcast.queued", b, wall, zones=held, holder=holder.id,
                   holder_owner=holder.spec.owner,
                   reason=f"zone {', '.join(held[:10])}{' ...' if len(held) > 10 else ''} "
                          f"is held by {holder.level.label} broadcast {holder.id} ({who})")

    def frames_read(self, plan: Plan, dest_version: int) -> None:
        """After the runtime read `plan.reads` (each playhead's `frame`, and `started` set for
        those that gave one): on a new plan, remember what each zone hears, and whether the
        plan may be reused (every ramp settled and every playhead started: the first frame
        flips `started`, part of the signature)."""
        if plan.fast:
            return
        new_keys: dict[str, ProgramKey] = {}
        for key, zones in plan.programs.items():
            for z in zones:
                new_keys[z] = key
        self._zone_key = new_keys
        self._zone_winner = plan.winners
        self._plan_sig = self._signature(dest_version) if self._steady else None

    def first_packets(self, sent_ns: int) -> None:
        """Programme packets left at `sent_ns`: the timing of broadcasts just on air."""
        for b in self.broadcasts.values():
            if b.first_packet_ns is None and b.audible:
                b.first_packet_ns = sent_ns
                if b.playheads:
                    b.ready_ns = b.playheads[0].source.ready_ns

    @property
    def zone_keys(self) -> dict[str, ProgramKey]:
        """The programme key each zone heard last tick."""
        return self._zone_key

    def _signature(self, dest_version: int) -> tuple[Any, ...]:
        """Cheap (per broadcast and playhead): changes whenever arbitration could decide
        differently."""
        return (self.tree.version, dest_version, tuple(
            (b.id, b.state, len(b.done_zones), len(b.zones),
             any(p.started or p.source.ready() or p.source.finished
                 for p in b.playheads if not p.finished),
             tuple((p.id, p.paused, p.finished, p.started, len(p.zones), type(p.source))
                   for p in b.playheads))
            for b in self.broadcasts.values()))

    def _end(self, b: Broadcast, state: str, wall: float, reason: str = ""
             ) -> BroadcastSnapshot:
        if b.state in ("finished", "stopped"):
            return b.snapshot()
        b.state = state
        b.ended_at = wall
        if b.spec.only:
            self._uncarve(b)
        for p in b.playheads:
            if not isinstance(p.source, PendingSource):
                self.to_close.append(p.source)
            if p.source.error and not b.error:
                b.error = p.source.error
        self.broadcasts.pop(b.id, None)
        b.audible = set()
        snap = b.snapshot()
        self.history.append(snap)
        if len(self.history) > 1000:
            del self.history[: len(self.history) - 1000]
        self._emit(f"broadcast.{state}", b, wall, zones=sorted(b.zones), reason=reason,
                   error=b.error, position_s=snap.position_s)
        return snap

    def _fork(self, b: Broadcast, zones: set[str], cut_s: float,
              rewind: bool = True) -> Playhead:
        """A paused playhead for zones cut from a playing item, to resume a little before the
        cut (`rewind`; else exactly there: zones that never heard it). Its source is opened
        by the runtime off the tick (`to_open`, then `attach`)."""
        start = max(0.0, cut_s - self.settings.resume_rewind_s) if rewind else max(0.0, cut_s)
        fork = Playhead(PendingSource(start), zones, paused=True, rewound=True)
        fork.was_cut = cut_s > 0 and rewind
        b.playheads.append(fork)
        self.to_open.append((b, fork, b.spec.source_factory, start))
        return fork

    def _resume(self, b: Broadcast, p: Playhead, zones: set[str], wall: float) -> None:
        """A paused playhead plays again: a little before where it was cut, unless it is a fork
        that was opened there already."""
        p.paused = False
        if not p.rewound and p.started:
            p.source.rewind(self.settings.resume_rewind_s)
        p.rewound = False
        if p.started or p.was_cut:
            b.preempted -= zones
            self._emit("broadcast.resumed", b, wall, zones=sorted(zones),
                       position_s=round(p.source.position_s, 2))

    def _manage_playheads(self, b: Broadcast, audible: set[str], wall: float) -> None:
        if b.spec.live:
            if audible and b.started_at is None:
                b.started_at = wall
            lost = b.audible - audible
            if lost and b.started_at:
                self._emit("broadcast.preempted", b, wall, zones=sorted(lost),
                           notice="live talk preempted on these zones")
                b.preempted |= lost
            back = audible & b.preempted
            if back:
                b.preempted -= back
                self._emit("broadcast.resumed", b, wall, zones=sorted(back))
            return
        for p in list(b.playheads):
            if p.finished or not p.zones:
                continue
            aud = p.zones & audible
            if aud == p.zones:
                if p.paused:
                    self._resume(b, p, p.zones, wall)
            elif not aud:
                if not p.paused:
                    p.paused = True
                    if p.started:
                        b.preempted |= p.zones
                        self._emit("broadcast.preempted", b, wall, zones=sorted(p.zones),
                                   position_s=round(p.source.position_s, 2))
            else:
                rest = p.zones - aud
                cut = p.source.position_s
                p.zones = aud
                if p.started:
                    self._fork(b, rest, cut)
                    if not p.paused:
                        b.preempted |= rest
                        self._emit("broadcast.preempted", b, wall, zones=sorted(rest),
                                   position_s=round(cut, 2))
                else:
                    # never played yet: the waiting zones start later where this playhead
                    # starts (the beginning, or a joined item's offset), not rewound
                    self._fork(b, rest, p.source.position_s, rewind=False)
                if p.paused:
                    self._resume(b, p, aud, wall)
        if audible and b.started_at is None:
            b.started_at = wall

