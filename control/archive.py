"""The replay archive's control side (issue 18): engine events start and finish recordings
(streamer/outputs/archive.py), and `GET /api/v1/archive` lists and searches what the caller may
hear (by zone, UTC date, text); `GET /api/v1/archive/{id}.ogg` downloads one."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from aiohttp import web

from control.errors import NotFound
from control.http import HttpError, Route, json_response, q
from control.listening import Audience
from streamer.outputs.archive import ArchiveIndex, ArchiveRecorder
from streamer.outputs.listen import ListenHub
from streamer.port import EngineEvent, EnginePort

log = logging.getLogger("loa.archive")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def describe(port: EnginePort, bid: str) -> dict[str, Any] | None:
    b = port.broadcast(bid)
    if b is None:
        return None
    src = dict(b.source)
    return {"title": b.title or str(src.get("title") or ""), "zones": list(b.reached_zones),
            "level": b.level, "kind": str(src.get("kind") or ""), "started_at": b.started_at,
            "text": str(src.get("text") or b.title or ""), "risk_level": src.get("risk_level")}


class Archive:
    def __init__(self, port: EnginePort, hub: ListenHub, audience: Audience, index: ArchiveIndex,
                 max_age_s: float, max_bytes: int) -> None:
        self.port = port
        self.hub = hub
        self.audience = audience
        self.index = index
        self.recorder = ArchiveRecorder(index, port.zone_status, lambda bid: describe(port, bid),
                                        hub.add_consumer, hub.remove_consumer, max_age_s,
                                        max_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        port.subscribe(self._on_engine_event)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.index.apply_retention(time.time(), self.recorder.max_age_s,
                                   self.recorder.max_bytes)

    def close(self) -> None:
        self._loop = None
        self.recorder.close()

    def _on_engine_event(self, ev: EngineEvent) -> None:   # the tick thread: never blocks
        loop = self._loop
        if loop is None or ev.type not in ("broadcast.started", "broadcast.finished",
                                           "broadcast.stopped"):
            return
        try:
            loop.call_soon_threadsafe(self._handle, ev)
        except RuntimeError:   # the loop is closing
            pass

    def _handle(self, ev: EngineEvent) -> None:
        if ev.type == "broadcast.started":
            self.recorder.started(ev.broadcast, ev.level, ev.zones)
            return
        self.recorder.ended(ev.broadcast)
        # the last packets are still in the ring: let two pumps deliver them first
        assert self._loop is not None
        self._loop.call_later(self.hub.pump_s * 3, self._finish, ev.broadcast)

    def _finish(self, bid: str) -> None:
        try:
            entries = self.recorder.finish_all(bid)
        except OSError:
            log.exception("archiving broadcast %s failed", bid)
            return
        for e in entries:
            log.info("archived %s (%s, zones %s, %.1f s, %d bytes)", e.id, e.title,
                     ",".join(e.zones), e.duration_s, e.size)

    # ------------------------------------------------------------------ HTTP
    def routes(self) -> list[Route]:
        return [
            Route("GET", "/archive", self.list, "archive.read",
                  "Archived broadcasts the caller may hear, newest first",
                  query=[q("zone"), q("date", pattern=r"^\d{4}-\d{2}-\d{2}$"), q("q"),
                         q("limit", "integer", minimum=1, maximum=1000)], errors=(400,)),
            Route("GET", "/archive/{id}.ogg", self.download, "archive.read",
                  "One archived broadcast as Ogg/Opus", produces="audio/ogg",
                  errors=(401, 403, 404)),
        ]

    async def list(self, request: web.Request) -> web.Response:
        qs = request.query
        date = qs.get("date")
        if date is not None and not _DATE.match(date):
            raise HttpError(400, "invalid_query", "date must be YYYY-MM-DD")
        try:
            limit = min(max(int(qs.get("limit", "100")), 1), 1000)
        except ValueError:
            raise HttpError(400, "invalid_query", "limit must be an integer") from None
        visible = set(self.audience.visible(request))
        if "zone" in qs:
            self.audience.zone(request, qs["zone"])
            zones = {qs["zone"]}
        else:
            zones = visible
        text = qs.get("q")
        if text is not None and len(text) > 200:
            raise HttpError(400, "invalid_query", "q is at most 200 characters")
        found = self.index.search(zones, date, text, limit)
        return json_response({"entries": [e.to_api() for e in found], "count": len(found)})

    async def download(self, request: web.Request) -> web.StreamResponse:
        bid = request.match_info["id"]
        e = self.index.entries.get(bid)
        if e is None:
            raise NotFound("not_found", f"no archived broadcast {bid!r}")
        visible = set(self.audience.visible(request))
        if not visible.intersection(e.zones):
            if request.get("principal") is None:
                raise HttpError(401, "unauthenticated", "sign in to hear this replay")
            raise HttpError(403, "forbidden", "this replay is not in your zones")
        path = self.index.file(bid)
        if path is None or not path.exists():
            raise NotFound("not_found", f"the file of {bid!r} is gone")
        return web.FileResponse(path, headers={
            "Content-Type": "audio/ogg", "Access-Control-Allow-Origin": "*",
            "Content-Disposition": f'inline; filename="{bid}.ogg"'})
