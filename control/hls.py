"""HLS listening (issue 18): `/listen/{zone}/index.m3u8` and its 2 s segments, for phones whose
browser does not play Ogg/Opus (iPhones). The encoding is `streamer.outputs.hls` (one AAC
encode per zone, only while someone fetches); this module checks who may hear the zone, starts
the zone's rendition on the first fetch, waits (bounded) for its first segment and serves the
files. A sweep every second stops renditions nobody fetched for three segments."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from control.errors import NotFound
from control.http import Route, error_response
from control.listening import Audience
from streamer.outputs.hls import SEGMENT_NAME, HlsBusy, HlsZones
from streamer.outputs.listen import ListenHub

log = logging.getLogger("loa.hls")
_HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate",
            "Access-Control-Allow-Origin": "*"}


class HlsHandlers:
    def __init__(self, hub: ListenHub, audience: Audience, root: Path | None = None,
                 max_zones: int = 16, first_segment_wait_s: float = 8.0) -> None:
        self.hub = hub
        self.audience = audience
        self.zones = HlsZones(root, hub.add_consumer, hub.remove_consumer,
                              max_zones=max_zones)
        self.first_segment_wait_s = first_segment_wait_s
        self._task: asyncio.Task[None] | None = None

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/listen/{zone}/index.m3u8", self.playlist, "listen.read",
                  "A zone's programme as HLS (AAC in MPEG-TS, 2 s segments)", root=True,
                  produces="application/vnd.apple.mpegurl"),
            Route("GET", "/listen/{zone}/{segment}", self.segment, "listen.read",
                  "One HLS segment of a zone", root=True, produces="video/mp2t"),
        ]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweeper(), name="loa-hls")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.zones.close()

    def counts(self) -> dict[str, int]:
        return self.zones.counts(asyncio.get_running_loop().time())

    async def _sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            for z in self.zones.sweep(loop.time()):
                log.info("HLS of zone %s stopped: nobody fetched it", z)

    def _client(self, request: web.Request) -> str:
        return f"{request.remote}|{request.headers.get('User-Agent', '')[:100]}"

    async def playlist(self, request: web.Request) -> web.StreamResponse:
        zid = self.audience.zone(request)
        loop = asyncio.get_running_loop()
        try:
            enc = self.zones.touch(zid, self._client(request), loop.time())
        except HlsBusy as e:
            resp = error_response(503, "hls_busy", str(e))
            resp.headers["Retry-After"] = "15"
            return resp
        deadline = loop.time() + self.first_segment_wait_s
        while not enc.ready():   # the first fetch waits for the first segment (~2 s)
            if enc.failed is not None or loop.time() > deadline:
                resp = error_response(503, "hls_starting", "the stream is starting")
                resp.headers["Retry-After"] = "2"
                return resp
            await asyncio.sleep(0.2)
            self.zones.touch(zid, self._client(request), loop.time())
        try:
            text = enc.playlist.read_text()
        except OSError:
            resp = error_response(503, "hls_starting", "the stream is starting")
            resp.headers["Retry-After"] = "2"
            return resp
        return web.Response(text=text, content_type="application/vnd.apple.mpegurl",
                            headers=_HEADERS)

    async def segment(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["segment"]
        if not SEGMENT_NAME.match(name):
            raise NotFound("not_found", f"no such resource: {request.path}")
        zid = self.audience.zone(request)
        enc = self.zones.encoders.get(zid)
        path = enc.dir / name if enc is not None else None
        if path is None or not path.is_file():
            raise NotFound("segment_gone", f"segment {name} of zone {zid} is not kept")
        self.zones.touch(zid, self._client(request), asyncio.get_running_loop().time())
        try:
            data = path.read_bytes()
        except OSError:
            raise NotFound("segment_gone", f"segment {name} of zone {zid} is not kept") from None
        return web.Response(body=data, content_type="video/mp2t", headers=_HEADERS)
