"""Going live from a phone: the /live page and its offer/answer API; RTP ingest wiring.

    setup_live(app, engine, hub, authorize)
    setup_rtp_ingest(app, engine, [{"port": 5004, "allow": ["10.0.0.5"], "zones": ["xa-a"],
                                    "level": "priority", "codec": "opus"}])

`authorize(request, action, zones, level)` is a coroutine from the auth layer: it returns the
user {"name", "role", "zones"} or raises an aiohttp HTTP error. Actions used here:
"live.start" (offer) and "live.stop" (hang-up).

Handlers stay short: the engine calls take its lock for microseconds, SDP negotiation is
aiortc's coroutine, and the audio path (aiortc's decoder thread → LiveSource queue → tick)
never passes through an HTTP handler.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from streamer.engine import BroadcastRefused, BroadcastSpec, Engine
from streamer.ingest.live import LiveSource
from streamer.ingest.rtp_in import RtpIngest, RtpIngestConfig
from streamer.ingest.webrtc import WebRtcSession, restrict_ice_to_loopback
from streamer.mixer.arbitration import Level
from streamer.zones import ZoneError

log = logging.getLogger("loa.live")
API = "/api/v1"
STATIC = Path(__file__).resolve().parent / "static"
LIVE_LEVELS = ("normal", "priority", "emergency")
#: roles that may hang up somebody else's live talk (everyone may hang up their own)
HANGUP_ANY_ROLES = {"admin"}
MAX_SDP = 64 * 1024

Authorize = Callable[[web.Request, str, list[str], str], Awaitable[dict]]

LIVE_SESSIONS = web.AppKey("loa_live_sessions", dict)
RTP_INGESTS = web.AppKey("loa_rtp_ingests", list)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _json({"error": {"code": code, "message": message, **extra}}, status)


class LiveApi:
    def __init__(self, engine: Engine, hub, authorize: Authorize, *, grace_s: float = 3.0,
                 ice_servers: list[str] | None = None) -> None:
        self.engine = engine
        self.hub = hub
        self.authorize = authorize
        self.grace_s = grace_s
        self.ice_servers = ice_servers or []
        self.sessions: dict[str, WebRtcSession] = {}

    # ------------------------------------------------------------------ pages
    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "live.html", headers={"Cache-Control": "no-cache"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("live.js", "live.css"):
            return _error(404, "not_found", f"no such resource: {request.path}")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ API
    async def offer(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(400, "malformed_json", f"the body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return _error(422, "invalid_request", "the body must be a JSON object "
                          "{sdp, type, zones, level}")
        sdp, typ = body.get("sdp"), body.get("type", "offer")
        zones, level_s = body.get("zones"), body.get("level", "normal")
        if not isinstance(sdp, str) or not sdp.strip() or len(sdp) > MAX_SDP:
            return _error(422, "invalid_request", "sdp: an SDP offer (text) is required")
        if typ != "offer":
            return _error(422, "invalid_request", "type: must be \"offer\"")
        if (not isinstance(zones, list) or not zones
                or not all(isinstance(z, str) and z for z in zones) or len(zones) > 1000):
            return _error(422, "invalid_request", "zones: a non-empty list of zone ids is required")
        if not isinstance(level_s, str) or level_s.lower() not in LIVE_LEVELS:
            return _error(422, "invalid_request",
                          f"level: one of {', '.join(LIVE_LEVELS)} is required")
        level_s = level_s.lower()
        user = await self.authorize(request, "live.start", zones, level_s)
        try:
            self.engine.tree.resolve(zones)
        except ZoneError as e:
            return _error(404, "unknown_zone", str(e))
        source = LiveSource(kind="webrtc")
        owner = str(user.get("name") or "")
        spec = BroadcastSpec(targets=list(zones), level=Level.parse(level_s),
                             source_factory=lambda start_s: source, kind="webrtc", live=True,
                             owner=owner, owner_name=str(user.get("display_name") or owner),
                             description={"role": user.get("role")})
        try:
            b = self.engine.start_broadcast(spec)
        except BroadcastRefused as e:
            holder = e.holder or {}
            return _error(409, "zone_busy", e.reason, holder=holder,
                          holder_name=holder.get("owner_name") or holder.get("owner", ""))
        except ZoneError as e:
            return _error(404, "unknown_zone", str(e))
        bid = b.id

        def ended(reason: str) -> None:
            self.sessions.pop(bid, None)
            try:
                self.engine.stop_broadcast(bid, reason=reason)
            except KeyError:
                pass

        session = WebRtcSession(source, grace_s=self.grace_s, ice_servers=self.ice_servers,
                                on_end=ended)
        self.sessions[bid] = session
        try:
            answer = await session.accept(sdp, typ)
        except ValueError as e:
            session.finish("bad SDP offer")
            return _error(400, "invalid_sdp", str(e))
        except Exception:
            log.exception("webrtc negotiation failed")
            session.finish("negotiation failed")
            return _error(500, "webrtc_failed", "could not negotiate the audio connection")
        return _json({"sdp": answer["sdp"], "type": answer["type"],
                      "broadcast": self.engine.get(bid) or b.to_dict()}, status=201)

    async def _hangup(self, request: web.Request) -> web.Response:
        bid = request.match_info["broadcast"]
        b = self.engine.get(bid)
        if b is None or not b.get("live"):
            return _error(404, "unknown_broadcast", f"no live broadcast with id {bid!r}")
        user = await self.authorize(request, "live.stop", list(b["zones"]), b["level"])
        if b.get("owner") != user.get("name") and user.get("role") not in HANGUP_ANY_ROLES:
            return _error(403, "forbidden", "only the talker (or an administrator) can end this "
                          "live broadcast")
        session = self.sessions.pop(bid, None)
        if b["state"] in ("finished", "stopped"):
            return _json(b)
        if session is not None:
            await session.close("hung up")
        try:
            self.engine.stop_broadcast(bid, reason="hung up")
        except KeyError:
            pass
        return _json(self.engine.get(bid) or b)

    async def hangup(self, request: web.Request) -> web.Response:
        return await self._hangup(request)

    async def status(self, request: web.Request) -> web.Response:
        bid = request.match_info["broadcast"]
        b = self.engine.get(bid)
        if b is None or not b.get("live"):
            return _error(404, "unknown_broadcast", f"no live broadcast with id {bid!r}")
        await self.authorize(request, "live.status", list(b["zones"]), b["level"])
        s = self.sessions.get(bid)
        return _json({"broadcast": b, "webrtc": s.stats() if s else None})

    async def close_all(self, app: web.Application) -> None:
        for s in list(self.sessions.values()):
            await s.close("server shutting down")
        self.sessions.clear()


def setup_live(app: web.Application, engine: Engine, hub, authorize: Authorize, *,
               grace_s: float | None = None, ice_servers: list[str] | None = None,
               loopback_only: bool | None = None) -> LiveApi:
    """Register GET /live (+ /live/live.js, /live/live.css), POST /api/v1/live/offer,
    DELETE /api/v1/live/{broadcast}, POST /api/v1/live/{broadcast}/hangup (sendBeacon on page
    close) and GET /api/v1/live/{broadcast}.

    Unset keyword options come from app["loa"].settings when present (webrtc_grace_s,
    webrtc_ice_servers, webrtc_loopback_only), else the defaults (3 s, none, False).
    """
    settings = getattr(app.get("loa"), "settings", None) if "loa" in app else None
    if grace_s is None:
        grace_s = float(getattr(settings, "webrtc_grace_s", 3.0))
    if ice_servers is None:
        ice_servers = list(getattr(settings, "webrtc_ice_servers", []) or [])
    if loopback_only is None:
        loopback_only = bool(getattr(settings, "webrtc_loopback_only", False))
    if loopback_only:
        restrict_ice_to_loopback(True)
    api = LiveApi(engine, hub, authorize, grace_s=grace_s, ice_servers=ice_servers)
    r = app.router
    r.add_get("/live", api.page)
    r.add_get("/live/{name}", api.asset)
    r.add_post(f"{API}/live/offer", api.offer)
    r.add_delete(f"{API}/live/{{broadcast}}", api.hangup)
    r.add_post(f"{API}/live/{{broadcast}}/hangup", api.hangup)
    r.add_get(f"{API}/live/{{broadcast}}", api.status)
    app[LIVE_SESSIONS] = api.sessions
    app.on_shutdown.append(api.close_all)
    return api


def setup_rtp_ingest(app: web.Application, engine: Engine,
                     configs: list[dict | RtpIngestConfig]) -> list[RtpIngest]:
    """One RtpIngest per config, started with the app and stopped at cleanup. A bad config
    raises ValueError at once; a zone the tree does not know fails the app's start-up."""
    ingests = [RtpIngest(c if isinstance(c, RtpIngestConfig) else RtpIngestConfig.from_dict(c),
                         engine) for c in configs]

    async def on_startup(app: web.Application) -> None:
        # after the app's own start-up has filled the zone tree (from the database)
        for ing in ingests:
            engine.tree.resolve(ing.config.zones)  # unknown zones: fail at start-up, clearly
        for ing in ingests:
            ing.start()

    async def on_cleanup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        for ing in ingests:
            await loop.run_in_executor(None, ing.stop)

    app.on_startup.append(on_startup)
    app.on_cleanup.insert(0, on_cleanup)
    app[RTP_INGESTS] = ingests

    async def status(request: web.Request) -> web.Response:
        return _json({"rtp_ingest": [i.status() for i in ingests]})
    app.router.add_get(f"{API}/live/ingest/rtp", status)
    return ingests
