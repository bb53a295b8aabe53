"""Starting and stopping broadcasts: the one use case behind the HTTP API, the live page
(WebRTC), RTP ingest and the CLI (`loa play` goes through the HTTP API, so through here).

    start:  policy (level, scope, raw paths) → media look-up / file analysis → a source
            description → `port.submit(StartBroadcast)`
    stop:   policy (may this caller stop it) → `port.submit(StopBroadcast)`

Zones are resolved in control's own tree (the one control/service.py keeps and sends to the
engine), so a policy decision never asks the engine. The engine's refusals come back as
domain errors (control/errors.py), which the HTTP layer maps to statuses.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from control.db import Database
from control.errors import Conflict, Forbidden, Invalid, NotFound
from control.limits import NON_DECODING, Active, StartLimiter, StartLimits, Ticket
from control import playout
from control.pinned import Pin, PinnedFiles
from control.policy import Policy, Principal
from control.settings import Settings
from control.sources import (BroadcastRequest, FileSpec, MediaSpec, TtsSpec, describe_request,
                             describe_source)
from control.sources import PlaylistSpec, RelaySpec
from streamer.ingest.base import MediaError
from streamer.ingest.catalogue import analyse, analysed
from streamer.mixer.arbitration import Level
from streamer.port import (BroadcastSnapshot, EnginePort, LiveAudio, PlaylistAudio, Refused,
                           SourceDescription, StartBroadcast, StopBroadcast, UnknownBroadcast)
from streamer.port import Conflict as PortConflict
from streamer.zones import ZoneError, ZoneTree


def system_principal(name: str) -> Principal:
    """An input the administrator configured (an RTP ingest port): it acts with admin rights
    under its own name."""
    return Principal(name, "admin", via="config")


class Broadcasts:
    def __init__(self, port: EnginePort, tree: Callable[[], ZoneTree], db: Database,
                 settings: Settings) -> None:
        self.port = port
        self.tree = tree  # control's zone tree
        self.db = db
        self.settings = settings
        #: shared while a media item is looked up and started, exclusive while one is deleted:
        #: a recording cannot disappear between its look-up and its first frame, and starts
        #: never wait for each other (one lock for all starts made an emergency wait 3.75 s
        #: behind a burst of 300 lower starts)
        self.media_lock = MediaLock()
        #: raw server-side files: opened, then checked, then played from what was opened
        self.pins = PinnedFiles(self._alive)
        self.limits = StartLimiter(StartLimits(
            active_per_principal=settings.limit_active_per_principal,
            starts_per_minute_per_principal=settings.limit_starts_per_minute_per_principal,
            decoders_per_principal=settings.limit_decoders_per_principal,
            active_per_zone=settings.limit_active_per_zone,
            starts_per_minute_per_zone=settings.limit_starts_per_minute_per_zone))
        #: file checks and engine submits: urgent starts (emergencies, alert authorities) have
        #: threads of their own, so they never queue behind lower starts, uploads or decodes
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="loa-start")
        self._urgent_pool = ThreadPoolExecutor(2, thread_name_prefix="loa-start-urgent")
        #: texts are checked with the engine's TTS service before anything airs (app.py sets
        #: it), and read in each zone's voice and language variants (control/variants.py)
        self.tts: Any = None
        self.zone_speech: Callable[[], Mapping[str, tuple[str | None, list[str]]]] = dict

    def _alive(self, broadcast_id: str) -> bool:
        snap = self.port.broadcast(broadcast_id)
        return snap is not None and not snap.ended

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._urgent_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ limits
    @staticmethod
    def urgent(principal: Principal, level: Level) -> bool:
        return level >= Level.EMERGENCY or principal.role == "alert_authority"

    def admit(self, principal: Principal, reached: set[str], level: Level,
              kind: str) -> Ticket | None:
        """Count this start against its principal's and its zones' limits (TooMany, a 429,
        when over); None for inputs the administrator configured (RTP ingest ports)."""
        if principal.via == "config":
            return None
        active = []
        for b in self.port.broadcasts():
            try:
                lvl = Level.parse(b.level)
            except ValueError:
                continue
            src = b.source or {}
            active.append(Active(str(src.get("owner_id") or b.owner), frozenset(b.reached_zones),
                                 lvl, str(src.get("kind", "")) not in NON_DECODING))
        return self.limits.admit(principal.id, reached, level, kind not in NON_DECODING,
                                 active, time.monotonic())

    def release(self, ticket: Ticket | None) -> None:
        if ticket is not None:
            self.limits.release(ticket)

    # ------------------------------------------------------------------ start
    def _reach(self, targets: list[str] | tuple[str, ...]) -> set[str]:
        try:
            return self.tree().resolve(list(targets))
        except ZoneError as e:
            raise NotFound("unknown_zone", str(e)) from None

    def authorize_start(self, principal: Principal, targets: list[str] | tuple[str, ...],
                        level: Level, kind: str) -> set[str]:
        """The zones `targets` reach, if this caller may start a `kind` broadcast of `level`
        there (NotFound, Forbidden otherwise)."""
        reached = self._reach(targets)
        Policy.check_broadcast(principal, self.tree(), reached, level, kind)
        return reached

    async def start(self, principal: Principal, req: BroadcastRequest, *,
                    start_at: float | None = None, offset_s: float = 0.0,
                    extra: dict[str, Any] | None = None) -> BroadcastSnapshot:
        """POST /broadcasts, and a schedule's start (control/schedule/runner.py): `start_at`
        (wall clock) prepares it now and airs it at that instant, `offset_s` joins it in
        progress, `extra` adds to what the broadcast shows (the schedule, the occurrence)."""
        reached = self.authorize_start(principal, req.zones, req.level_enum, req.source.kind)
        if isinstance(req.source, FileSpec):
            Policy.check_raw_path(principal, req.source.path, self.settings.media_dirs)
        ticket = self.admit(principal, reached, req.level_enum, req.source.kind)
        try:
            return await self._start(principal, req, start_at, offset_s, extra)
        finally:
            self.release(ticket)

    async def _start(self, principal: Principal, req: BroadcastRequest,
                     start_at: float | None = None, offset_s: float = 0.0,
                     extra: dict[str, Any] | None = None) -> BroadcastSnapshot:
        loop = asyncio.get_running_loop()
        urgent = self.urgent(principal, req.level_enum)
        pool = self._urgent_pool if urgent else self._pool
        async with self.media_lock.shared():
            if isinstance(req.source, (RelaySpec, PlaylistSpec)):   # control/playout.py
                return await playout.start(self, principal, req, pool, start_at, offset_s, extra)
            if req.variants or isinstance(req.source, TtsSpec):
                return await self._start_spoken(principal, req, pool, start_at, offset_s, extra)
            media = analysis = None
            pin: Pin | None = None
            try:
                if isinstance(req.source, MediaSpec):
                    media = await self.db.media(req.source.id)
                    if media is None:
                        raise NotFound("unknown_media", f"no media with id {req.source.id!r}")
                    # still there and readable (cached while unchanged); measured at upload
                    await self._analyse(urgent, pool, media["path"], None)
                elif isinstance(req.source, FileSpec):
                    # the file checked is the file measured and played, whatever its name
                    # points at later (a swapped symlink)
                    pin = self.pins.pin(req.source.path, self.settings.media_dirs,
                                        bool(self.settings.media_dirs)) if urgent else \
                        await loop.run_in_executor(pool, self.pins.pin, req.source.path,
                                                   self.settings.media_dirs,
                                                   bool(self.settings.media_dirs))
                    try:
                        analysis = await self._analyse(urgent, pool, pin.path,
                                                       self.settings.loudness_target_lufs)
                    except BaseException:
                        self.pins.release(pin)
                        raise
                    req = req.model_copy(update={"source": req.source.model_copy(
                        update={"path": pin.path})})
            except MediaError as e:
                raise Invalid("media_unplayable", str(e)) from None
            desc, details = describe_request(req, self.settings.emergency_attention,
                                             media=media, analysis=analysis)
            if pin is not None:
                details["path"] = pin.real
            cmd = StartBroadcast(id=req.id or "", targets=tuple(req.zones), level=req.level_enum,
                                 source=desc, mode=req.mode, gain_db=req.gain_db,
                                 owner=principal.name, owner_name=principal.label,
                                 title=str(details.get("title") or ""),
                                 details=dict(details, **(extra or {}), owner_id=principal.id),
                                 start_at=start_at, offset_s=offset_s)
            if pin is None:
                return self.submit(cmd) if urgent else \
                    await loop.run_in_executor(pool, self.submit, cmd)
            try:
                snap = self.submit(cmd) if urgent else \
                    await loop.run_in_executor(pool, self.submit, cmd)
            except BaseException:
                self.pins.release(pin)
                raise
            self.pins.attach(pin, snap.id)
            return snap

    async def _start_spoken(self, principal: Principal, req: BroadcastRequest, pool: Any,
                            start_at: float | None, offset_s: float,
                            extra: dict[str, Any] | None) -> BroadcastSnapshot:
        """A text, or language variants: each zone's voice and variants (control/variants.py),
        every text and recording checked before anything airs, then one engine broadcast per
        group of zones that air the same (one, with the request's targets, unless zones
        differ; a refused group stops the groups already started)."""
        from control import variants
        loop = asyncio.get_running_loop()
        groups = variants.plan(req, self._reach(req.zones), self.tree(), self.zone_speech())
        # every variant is checked, also one no zone reached airs (an unknown recording or a
        # bad text is a mistake in the request all the same: 4xx, nothing airs)
        every = groups + ([variants.Group(tuple((v.language, v.source) for v in req.variants),
                                          frozenset(), ())] if req.variants else [])
        for spec in variants.texts(every):
            await loop.run_in_executor(pool, self.check_text, spec)
        rows: dict[str, dict] = {}
        for mid in variants.media_ids(every):
            row = await self.db.media(mid)
            if row is None:
                raise NotFound("unknown_media", f"no media with id {mid!r}")
            try:
                await loop.run_in_executor(pool, analyse, row["path"], None)
            except MediaError as e:
                raise Invalid("media_unplayable", f"media {mid}: {e}") from None
            rows[mid] = row
        base = req.id or secrets.token_hex(6)
        ids = ([req.id or ""] if len(groups) == 1
               else [base] + [f"{base}.{i}" for i in range(2, len(groups) + 1)])
        started: list[BroadcastSnapshot] = []
        try:
            for gid, g in zip(ids, groups):
                parts = [describe_source(src, media=rows.get(src.id) if isinstance(src, MediaSpec)
                                         else None) for _, src in g.parts]
                described: tuple[SourceDescription, dict[str, Any]]
                if not req.variants:
                    described = parts[0]
                else:
                    # the zone's variants in its order: a playlist, one item (streamer.port)
                    described = (PlaylistAudio(tuple(d for d, _ in parts)),
                                 {"kind": "variants", "title": parts[0][1].get("title"),
                                  "languages": g.languages,
                                  "variants": [dict(d, language=lang)
                                               for (_, d), lang in zip(parts, g.languages)]})
                desc, details = describe_request(req, self.settings.emergency_attention,
                                                 described=described)
                if len(groups) > 1:
                    details.update(variant_group=base, variant_broadcasts=ids,
                                   group_zones=sorted(g.zones))
                cmd = StartBroadcast(id=gid, targets=g.targets, alone=g.alone,
                                     level=req.level_enum,
                                     source=desc, mode=req.mode, gain_db=req.gain_db,
                                     owner=principal.name, owner_name=principal.label,
                                     title=str(details.get("title") or ""),
                                     details=dict(details, **(extra or {}),
                                                  owner_id=principal.id),
                                     start_at=start_at, offset_s=offset_s)
                started.append(await loop.run_in_executor(pool, self.submit, cmd))
        except BaseException:
            for snap in started:
                self.end(snap.id, "another group of its zones was refused")
            raise
        return started[0]

    def check_text(self, spec: TtsSpec) -> None:
        """A text the engine will accept, or Invalid naming the problem (unknown_voice,
        text_too_long, unreadable_script...). Pure CPU: normalisation."""
        if self.tts is None:
            return
        from streamer.tts.text import TextError
        try:
            self.tts.prepare(spec.text, spec.engine, spec.voice, spec.rate)
        except TextError as e:
            raise Invalid(e.code, e.message) from None

    @staticmethod
    async def _analyse(urgent: bool, pool: ThreadPoolExecutor, path: str,
                       loudness_target: float | None) -> tuple[Any, float | None]:
        """`analyse` off the loop, except an urgent start's already analysed file: that, its
        pin (open, fstat, readlink) and its submit (the engine lock, a source handed to the
        decoder pool: under a millisecond) run on the loop. Each hop to a thread and back
        waits for the core again: measured at 5,000 receivers, 5-40 ms per hop while the
        fan-out sends, which was most of what was left of API → first packet."""
        if urgent:
            hit = analysed(path, loudness_target)
            if hit is not None:
                return hit
        return await asyncio.get_running_loop().run_in_executor(pool, analyse, path,
                                                                 loudness_target)

    def start_live(self, principal: Principal, targets: list[str] | tuple[str, ...],
                   level: Level, source: Any, via: str, details: dict[str, Any] | None = None
                   ) -> BroadcastSnapshot:
        """A live input (a phone's WebRTC track, an encoder's RTP stream): registered with the
        engine and aired. Thread-safe and short (RTP ingest calls it from its own thread)."""
        reached = self.authorize_start(principal, targets, level, via)
        ticket = self.admit(principal, reached, level, "live")
        try:
            input_id = self.port.add_live_input(source)
            cmd = StartBroadcast(id="", targets=tuple(targets), level=level,
                                 source=LiveAudio(input_id, via=via), owner=principal.name,
                                 owner_name=principal.label,
                                 details=dict(details or {}, owner_id=principal.id))
            return self.submit(cmd)
        finally:
            self.release(ticket)

    def submit(self, cmd: StartBroadcast) -> BroadcastSnapshot:
        """The port's refusals as domain errors."""
        try:
            snap = self.port.submit(cmd)
        except Refused as e:
            holder = e.holder.to_dict() if e.holder is not None else {}
            raise Conflict("zone_busy", e.reason, holder=holder) from None
        except ZoneError as e:
            raise NotFound("unknown_zone", str(e)) from None
        except PortConflict as e:
            raise Conflict("conflict", str(e)) from None
        except MediaError as e:  # a text's refusal carries its code (streamer.tts.text)
            raise Invalid(getattr(e, "code", "media_unplayable"), str(e)) from None
        assert snap is not None
        return snap

    # ------------------------------------------------------------------ RTP ingest
    def rtp_callbacks(self, port: int) -> tuple[Callable[..., str], Callable[[str, str], None]]:
        """`start_live` and `stop` for streamer.ingest.rtp_in.RtpIngest (called from its
        thread). A zone held by a live talker raises port.Refused, which the ingest retries."""
        def start(name: str, zones: tuple[str, ...], level: Level, source: Any) -> str:
            try:
                return self.start_live(system_principal(name), zones, level, source, "rtp",
                                       {"port": port, "name": name}).id
            except Conflict as e:
                if e.code == "zone_busy":
                    raise Refused(e.message) from None
                raise

        def stop(broadcast_id: str, reason: str) -> None:
            self.end(broadcast_id, reason)
        return start, stop

    # ------------------------------------------------------------------ stop
    def end(self, broadcast_id: str, reason: str) -> BroadcastSnapshot | None:
        """Ends a broadcast this node started for somebody already authorised (a hang-up, an
        idle RTP stream); None if it had ended."""
        try:
            return self.port.submit(StopBroadcast(broadcast_id, reason=reason))
        except UnknownBroadcast:
            return None

    async def find(self, broadcast_id: str) -> dict:
        """An active or past broadcast as the API shows it (NotFound)."""
        snap = self.port.broadcast(broadcast_id)
        b = snap.to_dict() if snap is not None else await self.db.broadcast(broadcast_id)
        if b is None:
            raise NotFound("unknown_broadcast", f"no broadcast with id {broadcast_id!r}")
        return b

    async def stop(self, principal: Principal, broadcast_id: str) -> BroadcastSnapshot:
        """DELETE /broadcasts/{id}."""
        current = await self.find(broadcast_id)
        if not Policy.may_stop(principal, self.tree(), current):
            raise Forbidden(f"you may not stop broadcast {broadcast_id} (not yours or outside "
                            "your scope)")
        snap = self.end(broadcast_id, f"stopped by {principal.name}")
        if snap is None:
            raise Conflict("already_ended", f"broadcast {broadcast_id} has already ended")
        return snap

    def media_users(self, media_id: str) -> list[str]:
        """Active broadcasts playing this library item."""
        return [b.id for b in self.port.broadcasts()
                if (b.source or {}).get("media_id") == media_id]



class MediaLock:
    """Starts share it; deleting a media item holds it alone (`async with lock:`)."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writer = True

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self._writer = False
            self._cond.notify_all()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()
