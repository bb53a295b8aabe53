"""The engine as control sees it: `Runtime` implements `streamer.port.EnginePort`, and it is the
thin IO shell around the sans-IO parts:

    core (streamer.core.engine.Core)       decisions: broadcasts, arbitration, playheads, plan
    bank (streamer.mixer.programs)         mix + limiter + one Opus encode per programme
    loss (streamer.core.loss.LossPolicy)   what loss each programme's encoder plans for
    outputs (streamer.rtp.output.RtpOutput, and any other `Output`) fed the programme frames
    catalogue (streamer.ingest.catalogue)  source descriptions → Sources

The runtime owns the tick thread (`streamer.clock.TickThread`), the lock, the source opener and
closer threads and the process's GIL switch interval, and it is the only place on the hot path
that reads the clock. Nothing starts before `start()`.

    runtime = Runtime(fanout, settings, keyring=keyring, catalogue=Catalogue(loudness_target))
    runtime.subscribe(hub.publish)            # EngineEvent objects
    runtime.submit(ReplaceZones(zones, groups))
    runtime.start()
    snap = runtime.submit(StartBroadcast(id="", targets=("z1",), level=Level.NORMAL,
                                         source=FileAudio(path, loudness_lufs=-20.1)))
    ...
    runtime.stop()

Without a tick thread nothing ticks by itself: tools and tests call `run_tick(k, now_ns, wall)`
with explicit times, and sources are then opened and closed inline. Not started, zone and
destination commands take effect at once; after `start(tick_thread=False)` they wait for the
next tick, as with the thread.
"""
from __future__ import annotations

import logging
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from streamer.audio import FRAME_MS, SILENCE
from streamer.clock import TickThread, name_os_thread
from streamer.core.engine import (Broadcast, BroadcastSpec, Core, EngineSettings, Playhead,
                                  SourceFactory)
from streamer.core.carve import innermost
from streamer.core.loss import LossPolicy
from streamer.ingest.base import Source
from streamer.ingest.catalogue import Catalogue, duration_of
from streamer.mixer.programs import ProgramBank, ProgramKey
from streamer.port import (AlignTick, BroadcastSnapshot, Command, EngineEvent, EngineStats,
                           LiveAudio,
                           ReplaceZones, SetDestinations, SetZoneLoss, StartBroadcast,
                           StopBroadcast, UpdateZones, ZoneError, ZoneSnapshot)
from streamer.rtp.output import Output, RtpOutput
from streamer.trace import TRACE
from streamer.zones import Zone, ZoneTree

__all__ = ["Runtime", "EngineSettings"]

log = logging.getLogger("loa.engine")


class Runtime:
    """The engine port of this node. `fanout` is the node's media socket (also the receiver
    endpoint's); `keyring` (streamer.rtp.srtp.MediaKeyring) turns on SRTP for registered
    receivers; `catalogue` carries the loudness target and the live inputs."""

    def __init__(self, fanout: Any, settings: EngineSettings | None = None, *,
                 keyring: Any = None, catalogue: Catalogue | None = None,
                 outputs: list[Output] | None = None) -> None:
        self.fanout = fanout
        self.settings = s = settings or EngineSettings()
        self.catalogue = catalogue or Catalogue()
        self.catalogue.resume_rewind_s = s.resume_rewind_s  # a TTS fork maps back to the cut
        self.core = Core(s)
        self.loss = LossPolicy(s.opus.packet_loss_perc, s.loss_hold_s, s.loss_apply_interval_s)
        self.bank = ProgramBank(s.opus, s.limiter_ceiling_db, s.idle_channel_ttl_s,
                                on_close=self.loss.forget)
        self.rtp = RtpOutput(fanout, s.payload_type, keyring)
        self.outputs: list[Output] = [self.rtp, *(outputs or [])]
        self.lock = threading.RLock()
        self._subscribers: list[Callable[[EngineEvent], None]] = []
        self._deliver = threading.Lock()   # events reach subscribers in order, one at a time
        self._live_inputs: dict[str, str] = {}   # broadcast id -> live input id it took
        self._pending_dests: dict[str, list[tuple[Any, ...]]] = {}
        self._pending_lock = threading.Lock()
        self._dests_applied_at = -1e18
        self._carves_applied = 0   # the core's carve_version the output has
        self._carved: dict[tuple[str, int], str] = {}
        self._carved_for = 0
        self._frames: dict[int, np.ndarray] = {}
        self._thread: TickThread | None = None
        self._driven = False   # started without a thread: the caller runs the ticks
        self._closing: queue.SimpleQueue[Source | None] = queue.SimpleQueue()
        self._opening: queue.SimpleQueue[tuple[Playhead, SourceFactory, float] | None] = \
            queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        # metrics
        self.ticks = 0
        self.tick_overruns = 0
        self.last_tick_us = 0.0
        self.max_tick_us = 0.0
        self.encoders_active = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self, *, tick_thread: bool = True) -> None:
        """Start ticking. `tick_thread=False`: the caller runs the ticks (`run_tick`) with times
        of its own, and commands wait for the next tick exactly as with the thread (destination
        batching included); no thread is started and sources open and close inline."""
        if not tick_thread:
            self._driven = True
            return
        # The tick thread shares the GIL with HTTP handlers and decoder threads. With the default
        # 5 ms switch interval a tick that crosses many GIL release points (numpy, ctypes, sends)
        # can queue behind busy Python threads for tens of ms; 0.5 ms keeps that wait short.
        if sys.getswitchinterval() > 0.0005:
            sys.setswitchinterval(0.0005)
        # sources are opened and closed off the tick: starting or joining a decoder thread can
        # take a while
        self._workers = [threading.Thread(target=self._close_worker, name="loa-source-closer",
                                          daemon=True),
                         threading.Thread(target=self._open_worker, name="loa-source-opener",
                                          daemon=True)]
        for w in self._workers:
            w.start()
        self._thread = TickThread(self._on_tick, realtime=self.settings.realtime,
                                  cpus=self.settings.cpus)
        self._thread.start()

    def stop(self) -> None:
        self._driven = False
        if self._thread:
            self._thread.stop()
        with self.lock:
            self.core.stop_all("server shutting down", time.time())
            self.bank.close()
        self._after()
        if self._workers:
            self._closing.put(None)
            self._opening.put(None)
            for w in self._workers:
                w.join(5)
            self._workers = []

    @property
    def running(self) -> bool:
        return self._thread is not None or self._driven

    # ---------------------------------------------------------------- the port
    @property
    def ssrc(self) -> int:
        return self.rtp.ssrc

    def subscribe(self, fn: Callable[[EngineEvent], None]) -> None:
        self._subscribers.append(fn)

    def add_live_input(self, source: Source) -> str:
        return self.catalogue.add_live(source)

    def submit(self, cmd: Command) -> BroadcastSnapshot | None:
        try:
            if isinstance(cmd, StartBroadcast):
                return self._start(cmd)
            if isinstance(cmd, StopBroadcast):
                with self.lock:
                    return self.core.stop(cmd.id, cmd.reason, time.time())
            if isinstance(cmd, ReplaceZones):
                self._replace_zones(cmd.zones, cmd.groups)
            elif isinstance(cmd, UpdateZones):
                self._update_zones(cmd.zones)
            elif isinstance(cmd, SetDestinations):
                self._set_destinations(cmd.zone, [(d.host, d.port, d.ptime, d.redundant)
                                                  for d in cmd.destinations])
            elif isinstance(cmd, SetZoneLoss):
                with self.lock:
                    self.loss.report(cmd.zone, cmd.loss_perc)
            elif isinstance(cmd, AlignTick):
                t = self._thread
                sched = t.schedule if t is not None else None
                if sched is not None:   # driven by the caller's own times: nothing to move
                    sched.align(cmd.phase_ns, cmd.tolerance_ns)
            else:
                raise TypeError(f"not a command: {cmd!r}")
            return None
        finally:
            self._after()

    def broadcast(self, broadcast_id: str) -> BroadcastSnapshot | None:
        with self.lock:
            return self.core.get(broadcast_id)

    def broadcasts(self, include_past: bool = False) -> list[BroadcastSnapshot]:
        with self.lock:
            return self.core.snapshots(include_past)

    def zone_status(self) -> Mapping[str, ZoneSnapshot]:
        with self.lock:
            return self.core.zone_status()

    def stats(self) -> EngineStats:
        with self.lock:
            active = len(self.core.broadcasts)
        return EngineStats(clock=self.clock_stats, encoders_active=self.encoders_active,
                           encoders=self.encoder_stats, broadcasts_active=active,
                           fanout=self.fanout.stats(), receiver_port=self.receiver_port,
                           ssrc=self.ssrc)

    # -- more than the port: for this node's receiver endpoint, metrics and the CLI ---------
    @property
    def clock_stats(self) -> dict[str, Any]:
        t = self._thread
        s = t.schedule if t else None
        return {
            "ticks": self.ticks,
            "late_ticks": s.late_ticks if s else 0,
            "skipped_ticks": s.skipped_ticks if s else 0,
            "max_late_ms": round(s.max_late_ns / 1e6, 3) if s else 0.0,
            "last_tick_us": round(self.last_tick_us, 1),
            "max_tick_us": round(self.max_tick_us, 1),
            "tick_overruns": self.tick_overruns,
            "tick_priority": t.priority if t else None,
            # the CPUs the tick pinned itself to (engine_cpus, streamer.cpus); [] not pinned
            "tick_cpus": sorted(t.cpus) if t is not None and t.pinned else [],
            "phase_ns": s.phase_ns if s else None,
            "phase_shifts": s.phase_shifts if s else 0,
            # why the late ticks were late (streamer.tickprobe): counts by cause and the last
            # records (lateness split into GIL wait / CPU wait / host steal, where the other
            # threads stood)
            **(t.probe.stats() if t is not None and t.probe is not None else {}),
        }

    @property
    def encoder_stats(self) -> dict[str, Any]:
        """How many program encoders plan for loss (in-band FEC where it is high enough)."""
        losses = [ch.encoder.loss_perc for ch in list(self.bank.channels.values())]
        return {"encoders": len(losses), "planning_loss": sum(1 for v in losses if v > 0),
                "max_loss_perc": max(losses, default=0),
                "reporting_zones": len(self.loss.zone_loss)}

    @property
    def receiver_port(self) -> int | None:
        sock = getattr(self.fanout, "sock", None)
        return int(sock.getsockname()[1]) if sock is not None else None

    @property
    def media_socket(self) -> Any:
        """The media port's incoming side (the receiver endpoint listens there)."""
        return self.fanout.listen_sock

    def rtp_clock(self) -> tuple[int, int, int, int]:
        """(ssrc, RTP timestamp of tick 0, last tick index, packets built): sender reports."""
        r = self.rtp
        return r.ssrc, r.ts0, r.tick_index, r.packets_built

    def carved_addresses(self) -> Mapping[tuple[str, int], str]:
        """Receivers some broadcast reaches alone (StartBroadcast.only): address -> the carve
        zone they hear while it lasts (the receiver endpoint tells them what is on air there).
        The same mapping object while the carves do not change."""
        with self.lock:
            if self._carved_for != self.core.carve_version:
                self._carved = innermost(self.core.carves)
                self._carved_for = self.core.carve_version
            return self._carved

    def resolve(self, targets: list[str] | tuple[str, ...]) -> set[str]:
        """The zones these zone/group ids reach in the engine's tree (ZoneError if unknown)."""
        with self.lock:
            return self.core.tree.resolve(list(targets))

    # ---------------------------------------------------------------- commands
    def _start(self, cmd: StartBroadcast) -> BroadcastSnapshot:
        bid = cmd.id or secrets.token_hex(6)
        try:
            factory = self.catalogue.factory(cmd.source, priority=int(cmd.level))
            duration = cmd.duration_s if cmd.duration_s is not None else duration_of(cmd.source)
            spec = BroadcastSpec(targets=list(cmd.targets), level=cmd.level,
                                 source_factory=factory, kind=cmd.kind,
                                 description=dict(cmd.details), mode=cmd.mode,
                                 gain_db=cmd.gain_db, live=cmd.live, owner=cmd.owner,
                                 duration_s=duration, id=bid, owner_name=cmd.owner_name,
                                 title=cmd.title, start_at=cmd.start_at,
                                 alone=tuple(cmd.alone),
                                 only={z: frozenset(a) for z, a in cmd.only.items() if a})
            with self.lock:
                b: Broadcast = self.core.admit(spec, time.time(), time.monotonic_ns())
            # open the source outside the lock (a file's decoding goes to the shared pool)
            source = factory(cmd.offset_s)
            source.start()
        except BaseException:
            self._forget_live(bid, cmd)
            raise
        if isinstance(cmd.source, LiveAudio):
            with self.lock:
                self._live_inputs[bid] = cmd.source.input_id
        try:
            with self.lock:
                return self.core.add(b, source, time.time())
        except BaseException:
            self._forget_live(bid, cmd)
            self._retire(source)
            raise

    def _forget_live(self, bid: str, cmd: StartBroadcast) -> None:
        """A start that failed lets go of the live input it named (the caller's next try
        registers a new one)."""
        if isinstance(cmd.source, LiveAudio):
            with self.lock:
                if self._live_inputs.get(bid) == cmd.source.input_id:
                    self._live_inputs.pop(bid, None)
            self.catalogue.drop_live(cmd.source.input_id)

    def _replace_zones(self, zones: tuple[Zone, ...], groups: Mapping[str, tuple[str, ...]]
                       ) -> None:
        zmap = {z.id: z for z in zones}
        gmap = {g: list(m) for g, m in groups.items()}
        self.rtp.prepare(zmap.values())  # outside the engine lock

        def swap(t: ZoneTree) -> None:
            t.zones, t.groups = zmap, gmap
            self.core.restore_carves(t)   # control's tree knows nothing of them
            t.version += 1
        with self.lock:
            self.core.edit_tree(swap)
        if not self.running:
            self._sync_tree(throttle=False)

    def _update_zones(self, zones: tuple[Zone, ...]) -> None:
        zmap = {z.id: z for z in zones}
        self.rtp.prepare(zmap.values())

        def swap(t: ZoneTree) -> None:
            unknown = set(zmap) - set(t.zones)
            if unknown:
                raise ZoneError(f"unknown zone(s): {', '.join(sorted(unknown))}")
            t.zones.update(zmap)
            t.version += 1
        with self.lock:
            self.core.edit_tree(swap, dests_changed=set(zmap))
        if not self.running:
            self._sync_tree(throttle=False)

    def _set_destinations(self, zone_id: str, addrs: list[tuple[Any, ...]]) -> None:
        """Registered receivers of a zone. Recorded under a small lock of its own and applied
        by the tick at most every `dest_apply_interval_s`: provisioning thousands of receivers
        one by one must neither wait for the tick nor make it rebuild its destination arrays
        thousands of times. Not ticking (tools, tests): applied at once."""
        with self._pending_lock:
            self._pending_dests[zone_id] = addrs
        if not self.running:
            with self.lock:
                self._apply_pending_dests(0.0, force=True)

    def _apply_pending_dests(self, now: float, force: bool = False) -> None:
        if not force and now - self._dests_applied_at < self.settings.dest_apply_interval_s:
            return
        with self._pending_lock:
            if not self._pending_dests:
                return
            pending, self._pending_dests = self._pending_dests, {}
        self._dests_applied_at = now
        tree = self.core.tree
        for zone_id, addrs in pending.items():
            self.rtp.set_dynamic(tree, zone_id, addrs)

    def _sync_tree(self, throttle: bool, now: float = 0.0) -> None:
        with self.lock:
            changed, gone = self.core.sync_tree(now, throttle)
            tree = self.core.tree
            if self.core.carve_version != self._carves_applied:
                self._carves_applied = self.core.carve_version
                self.rtp.set_carves(tree, self.core.carves)
            for zid in changed:
                if zid in tree.zones:
                    self.rtp.apply_zone(tree, zid)
            for zid in gone:
                self.rtp.drop_zone(zid)

    # ---------------------------------------------------------------- the tick
    def _on_tick(self, k: int) -> None:
        t0 = time.perf_counter_ns()
        self.run_tick(k, time.monotonic_ns(), time.time())
        dt = (time.perf_counter_ns() - t0) / 1000.0
        self.last_tick_us = dt
        if dt > self.max_tick_us:
            self.max_tick_us = dt
        if dt > FRAME_MS * 1000:
            self.tick_overruns += 1

    def run_tick(self, k: int, now_ns: int, wall: float) -> None:
        """Tick `k` at monotonic `now_ns` and wall-clock `wall`: plan, read, mix, encode, send."""
        now = now_ns / 1e9
        core, rtp = self.core, self.rtp
        with self.lock:
            if core.tree_changed:
                self._sync_tree(self.running, now)
            if self._pending_dests:
                self._apply_pending_dests(now, force=not self.running)
            plan = core.plan(k, wall, rtp.version)
            if core.carve_version != self._carves_applied:
                # a broadcast that just ended took its carves (streamer.core.carve) along: their
                # receivers hear their zone's programme again from this very tick
                self._sync_tree(False, now)
                plan = core.plan(k, wall, rtp.version)
            frames = self._frames
            if not plan.fast:
                frames.clear()
            for p in plan.reads:
                f = p.source.read()
                if f is None:
                    p.frame = SILENCE
                else:
                    p.frame = f
                    p.started = True
                frames[p.id] = p.frame
            tr = TRACE if TRACE.enabled and TRACE.want_tick(k) else None
            t_read = time.monotonic_ns() if tr is not None else 0
            programs = plan.programs
            bank = self.bank
            if plan.fast:
                if self.loss.due(now):
                    self._apply_loss(programs, now)
            else:
                bank.assign(programs, core.zone_keys, now)
                self._apply_loss(programs, now)
            bank.mix_encode(frames, now)
            t_enc = time.monotonic_ns() if tr is not None else 0
            markers = None if plan.fast else plan.markers
            channels = bank.channels
            for out in self.outputs:
                out.on_tick(k, programs, channels, markers)
            if tr is not None:
                tr.tick(k, now_ns, t_read, t_enc, time.monotonic_ns())
            self.encoders_active = len(programs)
            if programs and not plan.fast:
                core.first_packets(time.monotonic_ns())
            core.frames_read(plan, rtp.version)
            self.ticks += 1
        if core.events or core.to_close or core.to_open:
            self._after()

    def _apply_loss(self, programs: Mapping[ProgramKey, tuple[str, ...]], now: float) -> None:
        channels = self.bank.channels
        for key, perc in self.loss.plan(programs, self.bank.loss(), now).items():
            channels[key].encoder.set_packet_loss(perc)

    # ---------------------------------------------------------------- after a tick/command
    def _after(self) -> None:
        """Outside the lock: publish the core's events, hand sources to the closer and the
        opener (inline when not running)."""
        with self._deliver:
            with self.lock:
                core = self.core
                events, core.events = core.events, []
                closing, core.to_close = core.to_close, []
                opening, core.to_open = core.to_open, []
            for src in closing:
                self._retire(src)
            for _b, playhead, factory, start_s in opening:
                if self._workers:
                    self._opening.put((playhead, factory, start_s))
                else:
                    self._open(playhead, factory, start_s)
            for ev in events:
                if ev.type in ("broadcast.finished", "broadcast.stopped"):
                    with self.lock:
                        input_id = self._live_inputs.pop(ev.broadcast, None)
                    if input_id is not None:
                        self.catalogue.drop_live(input_id)
                for fn in list(self._subscribers):
                    try:
                        fn(ev)
                    except Exception:  # an observer must never break the tick
                        log.exception("event subscriber failed")

    def _retire(self, source: Source) -> None:
        if self._workers:
            self._closing.put(source)
        else:
            self._close(source)

    @staticmethod
    def _close(source: Source) -> None:
        try:
            source.close()
        except Exception:
            log.exception("closing a source failed")

    def _open(self, playhead: Playhead, factory: SourceFactory, start_s: float) -> None:
        """A fork's source: made and started here, off the tick, then attached."""
        try:
            src = factory(start_s)
            src.start()
        except Exception:
            log.exception("reopening a source at %.2f s failed", start_s)
            return
        with self.lock:
            ok = self.core.attach(playhead, src)
        if not ok:
            self._retire(src)

    def _close_worker(self) -> None:
        name_os_thread("loa-closer")
        while True:
            src = self._closing.get()
            if src is None:
                return
            self._close(src)

    def _open_worker(self) -> None:
        name_os_thread("loa-opener")
        while True:
            item = self._opening.get()
            if item is None:
                return
            self._open(*item)
