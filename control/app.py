"""The server's assembly: every service built once, the handlers composed from them, one route
table, and the start-up and shut-down order. Nothing here handles a request.

    create_app(settings) -> aiohttp Application;  app["loa"] is the `Server`

The engine is reached only through its port (`streamer.port.EnginePort`; here the in-process
`streamer.runtime.Runtime`): control keeps its own zone tree (ControlState) and sends the engine
ReplaceZones/UpdateZones when it changes; broadcasts start and stop through the one use case
(control/broadcasts.py) whoever asks (API, /live, RTP ingest).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from control.access import Access
from control.alerts.intake import AlertIntake
from control.api.alerts import AlertHandlers
from control.api.broadcasts import BroadcastHandlers
from control.api.media import MediaHandlers
from control.media_refs import MediaReferences, source_uses
from control.api.receivers import ReceiverHandlers
from control.api.sessions import SessionHandlers
from control.api.system import SystemHandlers
from control.api.users import UserHandlers
from control.api.zones import ZoneHandlers
from control.asrun import AsRunWriter
from control.auth import SecretBox
from control.broadcasts import Broadcasts
from control.db import Database
from control.events import EventHub
from control.http import Route, error_middleware
from control.journal import Journal, WriteAhead, storage_fault
from control.recovery import RecordingRuntime, Recovery
from control.storage import StorageCollector, storage_middleware
from control.outputs import Outputs
from control.schedule_next import ScheduleNext
from control.metrics import AlertCollector
from control.live import LIVE_SESSIONS, RTP_INGESTS, LiveApi, RtpIngests
from control.live_talk import TalkApi
from control.receiver_secrets import ReceiverSecrets
from control.schedule.api import ScheduleHandlers
from control.schedule.runner import ScheduleRunner
from control.schedule.service import Schedules
from control.schedule.store import ScheduleStore
from control.service import ControlState
from control.settings import Settings
from control.streams import StreamGuard
from streamer.ingest.catalogue import Catalogue
from control.tts import TtsHandlers, build_tts
from streamer.mixer.meter import ProgrammeLevels
from streamer.port import EngineEvent, ReplaceZones, SetZoneLoss, UpdateZones
from streamer.rtp.fanout import Fanout
from streamer.rtp.opus import OpusSettings
from streamer.runtime import EngineSettings, Runtime
from streamer.zones import Zone, ZoneTree, parse_hostport

if TYPE_CHECKING:
    from streamer.rtp.link import ReceiverLink

log = logging.getLogger("loa.control")


class HasRoutes(Protocol):
    def routes(self) -> list[Route]: ...

__all__ = ["create_app", "build_tree", "Server"]


def build_tree(settings: Settings) -> ZoneTree:
    """The tree the TOML file alone describes (used to check a config file before serving)."""
    tree = ZoneTree()
    for zc in settings.effective_zones():
        tree.add(Zone(
            id=zc.id, name=zc.name or zc.id, parent=zc.parent,
            multicast=parse_hostport(zc.multicast, "multicast") if zc.multicast else None,
            unicast=[parse_hostport(u, "unicast destination") for u in zc.unicast],
            level=zc.level, code=zc.code, language=zc.language))
    tree.validate()
    for g in settings.groups:
        tree.set_group(g.id, g.zones)
    return tree


def build_runtime(settings: Settings, outputs: list[Any] | None = None
                  ) -> tuple[Runtime, Fanout, Any]:
    """This node's engine, with its media socket and its SRTP keyring (None without SRTP)."""
    from streamer import cpus   # engine_cpus, reserved by `loa serve` before anything started
    fanout = Fanout(bind=("0.0.0.0", settings.send_port), multicast_ttl=settings.multicast_ttl,
                    multicast_if=settings.multicast_if, workers=settings.fanout_workers,
                    batch=settings.fanout_batch, realtime=settings.engine_realtime,
                    cpus=tuple(sorted(cpus.RESERVED)))
    eng_settings = EngineSettings(
        opus=OpusSettings(bitrate=settings.opus_bitrate, complexity=settings.opus_complexity,
                          fec=settings.opus_fec, packet_loss_perc=settings.opus_packet_loss_perc,
                          application=settings.opus_application),
        payload_type=settings.payload_type, duck_db=settings.duck_db,
        duck_ramp_ms=settings.duck_ramp_ms, resume_rewind_s=settings.resume_rewind_s,
        realtime=settings.engine_realtime, cpus=tuple(sorted(cpus.RESERVED)))
    if settings.decode_workers:
        from streamer.ingest import decode_pool
        decode_pool.configure(settings.decode_workers)
    keyring = None
    if settings.srtp:
        from streamer.rtp.srtp import MediaKeyring
        keyring = MediaKeyring(time.monotonic(), rotate_every_s=settings.media_key_rotate_h * 3600)
    # the commands it starts are kept as data (a crash is resumed from them: control/recovery)
    runtime = RecordingRuntime(fanout, eng_settings, keyring=keyring, outputs=outputs,
                      catalogue=Catalogue(settings.loudness_target_lufs, tts=build_tts(settings),
                                          relay_allow_hosts=tuple(settings.relay_allow_hosts)))
    return runtime, fanout, keyring


class Server:
    """Everything one `loa serve` runs, built once and handed to the handlers that need it."""

    def __init__(self, settings: Settings) -> None:
        from streamer.rtp.registry import ReceiverRegistry
        self.settings = settings
        self.hub = EventHub()
        #: the engine port (only EnginePort methods are used, and `start`/`stop`)
        self.outputs = Outputs(settings)   # listening, archive, e-boards (issue 18)
        #: several nodes (issue 19): the origin's part, None without Redis (nothing imported)
        self.cluster: Any = None
        if settings.redis_url:
            from control.cluster import OriginCluster
            self.cluster = OriginCluster(settings)
        self.engine, self.fanout, keyring = build_runtime(
            settings, self.outputs.engine_outputs + ([self.cluster.feed] if self.cluster else []))
        self.engine.subscribe(self._on_engine_event)
        self.db = Database(settings.database_path, busy_timeout_ms=settings.db_busy_timeout_ms)
        #: as-run and audit records: journaled, retried, never dropped (control/journal.py)
        self.records = WriteAhead(self.db.write_records,
                                  Journal(settings.data_dir / "records.journal",
                                          settings.journal_reserve_kb * 1024),
                                  on_alarm=self.hub.publish)
        box = SecretBox.load(settings.secret_key.get_secret_value() if settings.secret_key else None,
                             settings.data_dir / "secret.key")
        self.state = ControlState(self.db, settings, box, apply_tree=self._send_tree,
                                  apply_zones=self._send_zones,
                                  receivers_changed=self._receivers_changed)
        self.receiver_secrets = ReceiverSecrets(self.db, self.state, on_stale=self._reload)
        self.registry = ReceiverRegistry(
            self.receiver_secrets.lookup, on_event=self.hub.publish,
            on_zone_loss=self._send_zone_loss,
            keyring=keyring, heartbeat_s=settings.receiver_heartbeat_s)
        self.registry.is_pending = self.receiver_secrets.pending
        self.access = Access(self.db, settings, self.tree)
        self.broadcasts = Broadcasts(self.engine, self.tree, self.db, settings)
        self.broadcasts.tts = self.engine.catalogue.tts   # texts checked before they air
        self.broadcasts.zone_speech = lambda: self.state.zone_speech  # voices, languages
        self.asrun = AsRunWriter(self.db, self.engine, self.hub)
        self.live = LiveApi.from_settings(self.broadcasts, self.engine, self.access, settings)
        self.levels = ProgrammeLevels()   # what each zone's speakers get (live talk-back)
        self.engine.outputs.append(self.levels)
        self.talk = TalkApi(self.broadcasts, self.engine, self.access, self.levels,
                            grace_s=float(settings.webrtc_grace_s),
                            ice_servers=list(settings.webrtc_ice_servers or []),
                            realtime=bool(settings.engine_realtime))
        self.rtp_ingest = RtpIngests(self.broadcasts, list(settings.rtp_ingest))
        self.alerts = AlertIntake(self.engine, self.tree, lambda: self.state.zone_codes, self.db,
                                  settings, self.hub.publish)
        self.alerts.registered = self.registry.address_of   # a polygon reaches receivers alone
        self.recovery = Recovery(self.db, self.records, self.engine, settings, self.alerts)
        self.media_refs = MediaReferences()   # who uses a media item (issue 13): each room
        self.media_refs.register("broadcasts", "media_in_use", "broadcast(s)", self._media_on_air)
        self.media_refs.register("alerts", "media_in_use", "active alert(s)",
                                 self.alerts.using_media)
        self.handlers: list[HasRoutes] = [
            SystemHandlers(self.engine, self.db, self.access, self.registry, self.route_table),
            SessionHandlers(self.db, settings),
            ZoneHandlers(self.state, self.engine, self.db, settings, self.tree),
            ReceiverHandlers(self.state, self.db, self.registry, self.receiver_secrets, self.tree),
            MediaHandlers(self.db, settings, self.broadcasts, self.media_refs),
            BroadcastHandlers(self.broadcasts, self.db, self.hub, self.registry,
                              StreamGuard(self.access, settings.event_streams_per_principal,
                                          settings.event_stream_recheck_s)),
            UserHandlers(self.state, self.db, self.access),
            TtsHandlers(self.engine.catalogue.tts, self.db, settings),
            self.live, self.talk, self.rtp_ingest,
            AlertHandlers(self.alerts, self.db, self.registry),
        ]
        system = self.handlers[0]
        assert isinstance(system, SystemHandlers)
        system.metrics_.register(StorageCollector(self.records))
        system.metrics_.register(AlertCollector(self.alerts))
        system.health_parts["storage"] = self.records.status
        self.schedule_store = ScheduleStore(self.db)
        self.schedules = Schedules(self.schedule_store, self.broadcasts, self.db,
                                   lambda: settings.timezone, self._publish_now)
        self.schedule_runner = ScheduleRunner(
            self.schedule_store, self.broadcasts, self.engine, self.db, self._publish_now,
            prepare_ahead_s=settings.schedule_prepare_ahead_s)
        self.handlers.append(ScheduleHandlers(self.schedules, self.schedule_store, self.db))
        self.media_refs.register("schedules", "media_scheduled", "schedule(s)",
                                 self.schedule_store.using_media)
        if self.cluster is not None:   # schedules and alert intake only on the lease holder
            self.schedule_runner.leader = self.alerts.leader = self.cluster.leader
            system.health_parts["cluster"] = self.cluster.status
            self.alerts.leader_info = self.cluster.leader_info
            self.cluster.bind_zones(lambda: self.state.tree, self._resend_tree)
            self.talk.gate = self.cluster.require_leader   # live talk only at the leader
            self.cluster.on_follower.append(lambda why: self.talk.close_all(reason=why))
        self.outputs.bind(self.engine, self.tree, self.handlers, self.hub)
        self.outputs.public.stored = lambda: self.state.zone_public
        self.outputs.public.store = lambda z, v: self.state.update_zone(z, {"public": v})
        self.schedule_next = ScheduleNext(self.schedules.airing)   # boards, /nghe, listen API
        self.outputs.schedule_next = self.schedule_next.get
        self.outputs.listen.prime_next = self.schedule_next.ensure
        self.handlers += self.outputs.handlers
        self.link: ReceiverLink | None = None
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ wiring
    def tree(self) -> ZoneTree:
        """Control's zone tree (empty until the database is read)."""
        return self.state.tree if self.state.tree is not None else _EMPTY

    def route_table(self) -> list[Route]:
        return [r for h in self.handlers for r in h.routes()]

    def register(self, app: web.Application) -> None:
        for r in self.route_table():
            route = app.router.add_route(r.method, r.url, r.handler)
            self.access.actions[route] = r.action

    async def _media_on_air(self, media_id: str) -> list[str]:
        """Active broadcasts playing this library item (in any part of their source)."""
        return [b.id for b in self.engine.broadcasts() if source_uses(b.source, media_id)]

    def _publish_now(self, ev: dict) -> None:
        from streamer.timefmt import utc_iso
        self.hub.publish(dict(ev, time=utc_iso(time.time())))

    def _on_engine_event(self, ev: EngineEvent) -> None:  # tick thread: must not block
        self.hub.publish(ev.to_dict())

    def _send_tree(self, tree: ZoneTree) -> None:
        zones = tuple(tree.zones.values())
        if self.cluster is not None:   # the edges follow; what an edge sends is not sent here
            zones = self.cluster.engine_zones(zones)
            self.cluster.zones_changed()
        self.engine.submit(ReplaceZones(zones, {g: tuple(m) for g, m in tree.groups.items()}))
        if self._tasks:  # receivers may have been added, moved or retired by another process
            asyncio.get_running_loop().create_task(self.receiver_secrets.refresh())

    def _resend_tree(self) -> None:
        if self.state.tree is not None:
            self._send_tree(self.state.tree)

    def _send_zones(self, tree: ZoneTree, changed: set[str]) -> None:
        zones = tuple(tree.zones[z] for z in changed)
        if self.cluster is not None:
            zones = self.cluster.engine_zones(zones)
            self.cluster.zones_changed()
        self.engine.submit(UpdateZones(zones))

    def _send_zone_loss(self, zone: str, loss_perc: int | None) -> None:
        self.engine.submit(SetZoneLoss(zone, loss_perc))

    def _receivers_changed(self, rows: list[dict], secrets: dict[str, bytes]) -> None:
        self.receiver_secrets.changed(rows, secrets)
        if getattr(self, "alerts", None) is not None:
            self.alerts.receivers_changed()   # coordinates count for the next alert at once

    async def _reload(self) -> None:
        """Everything from the database again (the tree, then the secrets through _send_tree):
        another process changed it and the watcher has not said so yet."""
        async with self.state.lock:
            await self.state.reload_tree()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, storage: bool = True) -> None:
        """Everything, in order. `storage=False` (a standby origin whose data directory's lock
        is not free yet, control/standby.py): the engine and the cluster only, with the tree
        the caller handed the engine; `open_storage()` does the rest once the lock is free."""
        self.hub.bind(asyncio.get_running_loop())
        if storage:
            await self._open_storage()
        await self._start_engine(records=self.records if storage else None)
        if storage:
            await self._start_services()

    async def open_storage(self) -> None:
        """The second half of `start(storage=False)`."""
        await self._open_storage()
        if self.cluster is not None:
            self.cluster.set_records(self.records)
        await self._start_services()

    async def _open_storage(self) -> None:
        await self.db.open()
        self.records.open()  # what the journal kept from the last run is written first
        self.db.records = self.records
        self.records.start()
        # before anything is read: a write by another process from here on is seen as a change
        baseline = await self.state.data_version()
        try:
            await self.state.apply_config()
        except Exception as e:  # a full disk / locked database: serve what is stored
            why = storage_fault(e)
            if why is None:
                raise
            log.error("*** STORAGE ALARM at start: %s. Serving read-only with the stored zone "
                      "tree (the settings file's zones are not applied); writes answer 503, "
                      "records wait in the journal. ***", why)
            self.hub.publish({"type": "storage.unavailable", "reason": why, "at": "start"})
            async with self.state.lock:
                await self.state.reload_tree()
        gone = await self.recovery.mark_interrupted()
        await self.records.flush(2.0)  # the schedule runner reads these states
        if gone:
            log.warning("%d broadcast(s) were on air when the server last stopped; recorded as "
                        "interrupted: %s", len(gone), ", ".join(gone))
        await self.access.open()
        self.asrun.start()
        self._tasks = [asyncio.create_task(self.state.watch(baseline=baseline),
                                            name="loa-db-watch")]
        await self.receiver_secrets.refresh()

    async def _start_engine(self, records: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, prewarm)
        # The tick shares the GIL with this whole process, and a full garbage collection walks
        # every tracked object: ~100,000 after start-up (modules, models, codecs), 45-60 ms on
        # a small VM, enough to make ticks late whenever allocation (thousands of receivers
        # provisioned one request at a time, say) triggers one. They live as long as the
        # server: move them out of the collector's way.
        gc.collect()
        gc.freeze()
        self.engine.start()
        if self.cluster is not None:
            await self.cluster.start(self.engine, lambda: self.receiver_secrets.secrets, self.hub,
                                     records)
            self.recovery.skip = self.cluster.carried

    async def _start_services(self) -> None:
        from streamer.rtp.link import start_receiver_endpoint
        self.link = await start_receiver_endpoint(self.engine, self.registry)
        self.receiver_secrets.on_found = self.link.retry
        self.rtp_ingest.start()
        await self.outputs.start()
        await self.alerts.start()
        await self.recovery.resume()  # urgent broadcasts a crash cut, from their current repeat
        self.schedule_runner.start()
        st = self.engine.stats()
        log.info("engine started: %d zones, ssrc %08x, media/receiver port %s",
                 len(self.tree().zones), st.ssrc, st.receiver_port)

    async def shutdown(self) -> None:
        self.hub.close_streams()  # open event streams end now, not at their next keep-alive
        await self.live.close_all()
        await self.talk.close_all()
        await self.outputs.close()   # listeners end now

    async def close(self) -> None:
        await self.schedule_runner.close()   # before the engine: what is on air is suspended
        await self.alerts.close()
        if self.cluster is not None:
            await self.cluster.close()
        await self.rtp_ingest.stop()
        if self.link is not None:
            self.link.close()
        self.engine.stop()
        self.broadcasts.close()
        self.engine.catalogue.tts.close()
        self.fanout.close()
        await self.asrun.close()
        await self.records.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.db.close()


_EMPTY = ZoneTree()


def create_app(settings: Settings) -> web.Application:
    server = Server(settings)
    app = web.Application(middlewares=[error_middleware, server.access.middleware,
                                       storage_middleware],
                          client_max_size=settings.max_body_mb * 1024 * 1024)
    server.register(app)
    app["loa"] = server
    app[LIVE_SESSIONS] = server.live.sessions
    app[RTP_INGESTS] = server.rtp_ingest.ingests

    async def on_startup(app: web.Application) -> None:
        await server.start()

    async def on_shutdown(app: web.Application) -> None:
        await server.shutdown()

    async def on_cleanup(app: web.Application) -> None:
        await server.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def prewarm() -> None:
    """Load the decoders and render the attention signals before the first alert needs them."""
    try:
        import av  # noqa: F401

        from streamer.ingest import file as _file  # noqa: F401
        from streamer.ingest.tones import ChimeSource, SirenSource
        from streamer.mixer import loudness as _loudness  # noqa: F401
        ChimeSource().read()
        SirenSource(seconds=1.0).read()
    except Exception:  # never fatal: it only saves time later
        log.exception("prewarm failed")
