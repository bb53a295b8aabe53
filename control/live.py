"""Going live: the /live page (a phone's microphone over WebRTC) and RTP ingest (studio mixers,
encoder boxes), both starting their broadcasts through the one use case (control/broadcasts.py).

The live routes are in the one route table (so in the OpenAPI document); they authorise
themselves through `Access.authorize` (the decision needs the body's zones and level, or the
broadcast concerned), with the same policy and audit log as every other route:
"live.start" (offer), "live.stop" (hang-up), "live.status".

Handlers stay short: port calls are thread-safe and brief, SDP negotiation is aiortc's
coroutine, and the audio path (aiortc's decoder thread → LiveSource queue → tick) never passes
through an HTTP handler.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, Field

from control import textsafe
from control.access import Access
from control.broadcasts import Broadcasts
from control.errors import Conflict, Forbidden, NotFound
from control.http import HttpError, Route, json_response
from control.policy import Policy
from control.settings import Settings
from control.visibility import ReadScope
from streamer.ingest.live import LiveSource
from streamer.ingest.rtp_in import RtpIngest, RtpIngestConfig
from streamer.ingest.webrtc import WebRtcSession, restrict_ice_to_loopback
from streamer.mixer.arbitration import Level
from streamer.port import EnginePort

log = logging.getLogger("loa.live")
STATIC = Path(__file__).resolve().parent / "static"
LIVE_LEVELS = ("normal", "priority", "emergency")
MAX_SDP = 64 * 1024

LIVE_SESSIONS = web.AppKey("loa_live_sessions", dict)
RTP_INGESTS = web.AppKey("loa_rtp_ingests", list)


class LiveOffer(BaseModel):
    """POST /live/offer (documented; the handler checks it field by field to name the field)."""
    sdp: str = Field(min_length=1, max_length=MAX_SDP)
    type: str = "offer"
    zones: list[str] = Field(min_length=1, max_length=1000)
    level: str = "normal"


class LiveApi:
    def __init__(self, broadcasts: Broadcasts, port: EnginePort, access: Access, *,
                 grace_s: float = 3.0, ice_servers: list[str] | None = None,
                 realtime: bool = True) -> None:
        self.broadcasts = broadcasts
        self.realtime = realtime   # the voice path's threads at real-time priority (webrtc)
        self.port = port
        self.access = access
        self.grace_s = grace_s
        self.ice_servers = ice_servers or []
        self.sessions: dict[str, WebRtcSession] = {}

    @classmethod
    def from_settings(cls, broadcasts: Broadcasts, port: EnginePort, access: Access,
                      settings: Settings) -> LiveApi:
        if settings.webrtc_loopback_only:
            restrict_ice_to_loopback(True)
        return cls(broadcasts, port, access, grace_s=float(settings.webrtc_grace_s),
                   ice_servers=list(settings.webrtc_ice_servers or []),
                   realtime=bool(settings.engine_realtime))

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/live", self.page, "pages.read", "The live page", root=True),
            R("GET", "/live/{name}", self.asset, "pages.read", "The live page's script and style",
              root=True),
            R("POST", "/live/offer", self.offer, "live.start",
              "Go live: a WebRTC offer from the microphone; the answer starts a live broadcast",
              body=LiveOffer, ok=201, errors=(400, 401, 403, 404, 409, 422, 500)),
            R("GET", "/live/{broadcast}", self.status, "live.status",
              "A live broadcast and its WebRTC connection", errors=(401, 403, 404)),
            R("DELETE", "/live/{broadcast}", self.hangup, "live.stop", "Hang up",
              errors=(401, 403, 404)),
            R("POST", "/live/{broadcast}/hangup", self.hangup, "live.stop",
              "Hang up (sendBeacon when the page closes)", body_kind="none",
              errors=(401, 403, 404)),
        ]

    # ------------------------------------------------------------------ pages
    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "live.html", headers={"Cache-Control": "no-cache"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("live.js", "live.css", "live-text.js", "live-text.css"):
            raise NotFound("not_found", f"no such resource: {request.path}")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ API
    async def offer(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            body = textsafe.loads(raw) if raw else None
        except ValueError as e:  # textsafe.BadInput: depth, huge numbers, lone surrogates
            raise HttpError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HttpError(422, "invalid_request", "the body must be a JSON object "
                            "{sdp, type, zones, level}")
        sdp, typ = body.get("sdp"), body.get("type", "offer")
        zones, level_s = body.get("zones"), body.get("level", "normal")
        if not isinstance(sdp, str) or not sdp.strip() or len(sdp) > MAX_SDP:
            raise HttpError(422, "invalid_request", "sdp: an SDP offer (text) is required")
        if typ != "offer":
            raise HttpError(422, "invalid_request", "type: must be \"offer\"")
        if (not isinstance(zones, list) or not zones
                or not all(isinstance(z, str) and z for z in zones) or len(zones) > 1000):
            raise HttpError(422, "invalid_request", "zones: a non-empty list of zone ids is required")
        if not isinstance(level_s, str) or level_s.lower() not in LIVE_LEVELS:
            raise HttpError(422, "invalid_request",
                            f"level: one of {', '.join(LIVE_LEVELS)} is required")
        level_s = level_s.lower()
        user = await self.access.authorize(request, "live.start", zones, level_s)
        source = LiveSource(kind="webrtc")
        try:
            b = self.broadcasts.start_live(user, zones, Level.parse(level_s), source, "webrtc",
                                           {"role": user.role})
        except Conflict as e:
            if e.code == "zone_busy":
                holder = e.extra.get("holder") or {}
                e.extra["holder_name"] = holder.get("owner_name") or holder.get("owner", "")
            raise
        bid = b.id

        def ended(reason: str) -> None:
            self.sessions.pop(bid, None)
            self.broadcasts.end(bid, reason)

        session = WebRtcSession(source, grace_s=self.grace_s, ice_servers=self.ice_servers,
                                on_end=ended, realtime=self.realtime)
        self.sessions[bid] = session
        try:
            answer = await session.accept(sdp, typ)
        except ValueError as e:
            session.finish("bad SDP offer")
            raise HttpError(400, "invalid_sdp", str(e)) from None
        except Exception:
            log.exception("webrtc negotiation failed")
            session.finish("negotiation failed")
            raise HttpError(500, "webrtc_failed", "could not negotiate the audio connection") from None
        now = self.port.broadcast(bid) or b
        return json_response({"sdp": answer["sdp"], "type": answer["type"],
                              "broadcast": now.to_dict()}, status=201)

    def _live(self, bid: str) -> dict:
        snap = self.port.broadcast(bid)
        if snap is None or not snap.live:
            raise NotFound("unknown_broadcast", f"no live broadcast with id {bid!r}")
        return snap.to_dict()

    async def hangup(self, request: web.Request) -> web.Response:
        bid = request.match_info["broadcast"]
        b = self._live(bid)
        user = await self.access.authorize(request, "live.stop", list(b["zones"]), b["level"])
        if not Policy.may_hang_up(user, b):
            raise Forbidden("only the talker (or an administrator) can end this live broadcast")
        session = self.sessions.pop(bid, None)
        if b["state"] in ("finished", "stopped"):
            return json_response(b)
        if session is not None:
            await session.close("hung up")
        self.broadcasts.end(bid, "hung up")
        now = self.port.broadcast(bid)
        return json_response(now.to_dict() if now is not None else b)

    async def status(self, request: web.Request) -> web.Response:
        bid = request.match_info["broadcast"]
        b = self._live(bid)
        user = await self.access.authorize(request, "live.status", list(b["zones"]), b["level"])
        if not ReadScope(user, self.broadcasts.tree()).broadcast(b):
            raise NotFound("unknown_broadcast", f"no live broadcast {bid!r}")
        s = self.sessions.get(bid)
        return json_response({"broadcast": b, "webrtc": s.stats() if s else None})

    async def close_all(self, app: web.Application | None = None) -> None:
        for s in list(self.sessions.values()):
            await s.close("server shutting down")
        self.sessions.clear()


class RtpIngests:
    """One RtpIngest per configured port, airing through the broadcast use case. A bad config
    raises ValueError at once; a zone the tree does not know fails the server's start."""

    def __init__(self, broadcasts: Broadcasts, configs: list[dict | RtpIngestConfig]) -> None:
        self.broadcasts = broadcasts
        self.ingests: list[RtpIngest] = []
        for c in configs:
            cfg = c if isinstance(c, RtpIngestConfig) else RtpIngestConfig.from_dict(c)
            start, stop = broadcasts.rtp_callbacks(cfg.port)
            self.ingests.append(RtpIngest(cfg, start, stop))

    def routes(self) -> list[Route]:
        return [Route("GET", "/live/ingest/rtp", self.status, "live.ingest.read",
                      "RTP ingest ports: what they hear and air")]

    def start(self) -> None:
        """After the zone tree is loaded (from the database)."""
        tree = self.broadcasts.tree()
        for ing in self.ingests:
            tree.resolve(list(ing.config.zones))  # unknown zones: ZoneError, at start-up
        for ing in self.ingests:
            ing.start()

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for ing in self.ingests:
            await loop.run_in_executor(None, ing.stop)

    async def status(self, request: web.Request) -> web.Response:
        scope = ReadScope(request.get("principal"), self.broadcasts.tree())
        return json_response({"rtp_ingest": [i.status() for i in self.ingests
                                             if scope.sees_zones(i.config.zones)]})
