"""The engine as control sees it: `Runtime` implements `streamer.port.EnginePort`.

    runtime = Runtime(fanout, settings, keyring=keyring, catalogue=Catalogue(loudness_target))
    runtime.subscribe(hub.publish)            # EngineEvent objects
    runtime.submit(ReplaceZones(zones, groups))
    runtime.start()                           # the tick thread starts here, never before
    snap = runtime.submit(StartBroadcast(id="", targets=("z1",), level=Level.NORMAL,
                                         source=FileAudio(path, loudness_lufs=-20.1)))
    ...
    runtime.stop()

Commands are data (`streamer.port`); the catalogue (`streamer.ingest.catalogue`) turns their
source descriptions into Sources on this side.
"""
from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

from streamer.engine import BroadcastRefused, BroadcastSpec, Engine, EngineSettings
from streamer.ingest.base import Source
from streamer.ingest.catalogue import Catalogue, duration_of
from streamer.port import (BroadcastSnapshot, Command, Conflict, EngineEvent, EngineStats,
                           LiveAudio, OnAir, Refused, ReplaceZones, SetDestinations, SetZoneLoss,
                           StartBroadcast, StopBroadcast, UnknownBroadcast, UpdateZones,
                           ZoneSnapshot)
from streamer.rtp.fanout import Fanout
from streamer.zones import Zone, ZoneTree

__all__ = ["Runtime", "EngineSettings", "snapshot_from_dict"]

log = logging.getLogger("loa.runtime")


def snapshot_from_dict(d: Mapping[str, Any]) -> BroadcastSnapshot:
    """A broadcast's API dict (as stored in the as-run log) as a snapshot."""
    return BroadcastSnapshot(
        id=d["id"], targets=tuple(d.get("zones") or ()),
        reached_zones=tuple(d.get("reached_zones") or ()), level=d["level"], mode=d["mode"],
        source=dict(d.get("source") or {}), live=bool(d.get("live")), owner=d.get("owner", ""),
        owner_name=d.get("owner_name", ""), state=d["state"],
        on_air_zones=tuple(d.get("on_air_zones") or ()),
        preempted_zones=tuple(d.get("preempted_zones") or ()), created_at=d["created_at"],
        started_at=d.get("started_at"), ended_at=d.get("ended_at"),
        position_s=float(d.get("position_s") or 0.0), duration_s=d.get("duration_s"),
        error=d.get("error"), timing=dict(d.get("timing") or {}), title=d.get("title") or "")


class Runtime:
    """The engine port of this node: owns the engine, its tick thread and its catalogue.

    `fanout` is the node's media socket (also the receiver endpoint's). Nothing starts before
    `start()`; `stop()` ends every broadcast and joins the threads."""

    def __init__(self, fanout: Fanout, settings: EngineSettings | None = None, *,
                 keyring: Any = None, catalogue: Catalogue | None = None,
                 tree: ZoneTree | None = None) -> None:
        self.fanout = fanout
        self.settings = settings or EngineSettings()
        self.catalogue = catalogue or Catalogue()
        self._subscribers: list[Callable[[EngineEvent], None]] = []
        self._live_inputs: dict[str, str] = {}   # broadcast id -> live input id it took
        self._lock = threading.Lock()
        self._engine = Engine(tree or ZoneTree(), fanout, self.settings, on_event=self._on_event,
                              keyring=keyring)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._engine.start()

    def stop(self) -> None:
        self._engine.stop()

    # -- the port -------------------------------------------------------------------------
    @property
    def ssrc(self) -> int:
        return int(self._engine.ssrc)

    def subscribe(self, fn: Callable[[EngineEvent], None]) -> None:
        self._subscribers.append(fn)

    def add_live_input(self, source: Source) -> str:
        return self.catalogue.add_live(source)

    def submit(self, cmd: Command) -> BroadcastSnapshot | None:
        if isinstance(cmd, StartBroadcast):
            return self._start(cmd)
        if isinstance(cmd, StopBroadcast):
            try:
                b = self._engine.stop_broadcast(cmd.id, reason=cmd.reason)
            except KeyError:
                raise UnknownBroadcast(cmd.id) from None
            return snapshot_from_dict(b.to_dict())
        if isinstance(cmd, ReplaceZones):
            self._replace_zones(cmd.zones, cmd.groups)
        elif isinstance(cmd, UpdateZones):
            self._update_zones(cmd.zones)
        elif isinstance(cmd, SetDestinations):
            self._engine.set_dynamic_destinations(
                cmd.zone, [(d.host, d.port, d.ptime, d.redundant) for d in cmd.destinations])
        elif isinstance(cmd, SetZoneLoss):
            self._engine.set_zone_loss(cmd.zone, cmd.loss_perc)
        else:
            raise TypeError(f"not a command: {cmd!r}")
        return None

    def broadcast(self, broadcast_id: str) -> BroadcastSnapshot | None:
        d = self._engine.get(broadcast_id)
        return snapshot_from_dict(d) if d is not None else None

    def broadcasts(self, include_past: bool = False) -> list[BroadcastSnapshot]:
        return [snapshot_from_dict(d) for d in self._engine.list_broadcasts(include_past)]

    def zone_status(self) -> Mapping[str, ZoneSnapshot]:
        raw = self._engine.zone_status()
        with self._lock:
            cached = getattr(self, "_zs_cache", None)
            if cached is not None and cached[0] is raw:
                return cached[1]  # type: ignore[no-any-return]
        out = {z: ZoneSnapshot(z, tuple(OnAir(o["broadcast"], o["level"], o["ducked"])
                                        for o in s["on_air"]), s["program"])
               for z, s in raw.items()}
        with self._lock:
            self._zs_cache = (raw, out)
        return out

    def stats(self) -> EngineStats:
        e = self._engine
        return EngineStats(clock=e.clock_stats, encoders_active=e.encoders_active,
                           encoders=e.encoder_stats, broadcasts_active=len(e.broadcasts),
                           fanout=self.fanout.stats(), receiver_port=self.receiver_port,
                           ssrc=self.ssrc)

    # -- more than the port: for this node's receiver endpoint and the CLI ------------------
    @property
    def receiver_port(self) -> int | None:
        sock = getattr(self.fanout, "sock", None)
        return int(sock.getsockname()[1]) if sock is not None else None

    def rtp_clock(self) -> tuple[int, int, int, int]:
        """(ssrc, RTP timestamp of tick 0, last tick index, packets built): sender reports."""
        e = self._engine
        return e.ssrc, e.ts0, e.tick_index, e.packets_built

    def resolve(self, targets: list[str] | tuple[str, ...]) -> set[str]:
        """The zones these zone/group ids reach in the engine's tree (ZoneError if unknown)."""
        with self._engine.lock:
            return self._engine.tree.resolve(list(targets))

    # -- internals ------------------------------------------------------------------------
    def _on_event(self, ev: dict[str, Any]) -> None:
        event = EngineEvent.from_dict(ev)
        if event.type in ("broadcast.finished", "broadcast.stopped"):
            with self._lock:
                input_id = self._live_inputs.pop(event.broadcast, None)
            if input_id is not None:
                self.catalogue.drop_live(input_id)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # an observer must never break the tick
                log.exception("event subscriber failed")

    def _start(self, cmd: StartBroadcast) -> BroadcastSnapshot:
        factory = self.catalogue.factory(cmd.source)
        duration = cmd.duration_s if cmd.duration_s is not None else duration_of(cmd.source)
        bid = cmd.id or secrets.token_hex(6)
        spec = BroadcastSpec(targets=list(cmd.targets), level=cmd.level, source_factory=factory,
                             kind=cmd.kind, description=dict(cmd.details), mode=cmd.mode,
                             gain_db=cmd.gain_db, live=cmd.live, owner=cmd.owner,
                             duration_s=duration, id=bid, owner_name=cmd.owner_name,
                             title=cmd.title)
        if isinstance(cmd.source, LiveAudio):
            with self._lock:
                self._live_inputs[bid] = cmd.source.input_id
        try:
            b = self._engine.start_broadcast(spec)
        except BroadcastRefused as e:
            self._forget_live(bid, cmd)
            raise Refused(e.reason, snapshot_from_dict(e.holder) if e.holder else None) from None
        except ValueError as e:
            self._forget_live(bid, cmd)
            if "already exists" in str(e):
                raise Conflict(str(e)) from None
            raise
        return snapshot_from_dict(b.to_dict())

    def _forget_live(self, bid: str, cmd: StartBroadcast) -> None:
        """A start that failed lets go of the live input it named (the caller's next try
        registers a new one)."""
        if isinstance(cmd.source, LiveAudio):
            with self._lock:
                if self._live_inputs.get(bid) == cmd.source.input_id:
                    self._live_inputs.pop(bid, None)
            self.catalogue.drop_live(cmd.source.input_id)

    def _replace_zones(self, zones: tuple[Zone, ...], groups: Mapping[str, tuple[str, ...]]
                       ) -> None:
        zmap = {z.id: z for z in zones}
        gmap = {g: list(m) for g, m in groups.items()}
        self._engine.prepare_destinations(zmap.values())  # outside the engine lock

        def swap(t: ZoneTree) -> None:
            t.zones, t.groups = zmap, gmap
            t.version += 1
        self._engine.edit_tree(swap)

    def _update_zones(self, zones: tuple[Zone, ...]) -> None:
        zmap = {z.id: z for z in zones}
        self._engine.prepare_destinations(zmap.values())

        def swap(t: ZoneTree) -> None:
            unknown = set(zmap) - set(t.zones)
            if unknown:
                from streamer.zones import ZoneError
                raise ZoneError(f"unknown zone(s): {', '.join(sorted(unknown))}")
            t.zones.update(zmap)
            t.version += 1
        self._engine.edit_tree(swap, dests_changed=set(zmap))
