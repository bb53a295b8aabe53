"""The HTTP API (aiohttp) around the engine.

Handlers never touch audio: they validate, then call the engine's short thread-safe methods.
Blocking work (probing and measuring files) runs in the default executor.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from control.events import EventHub
from control.settings import Settings
from control.sources import BroadcastRequest, build_source
from streamer.engine import BroadcastRefused, BroadcastSpec, Engine, EngineSettings
from streamer.ingest.base import MediaError
from streamer.rtp.fanout import Fanout
from streamer.rtp.opus import OpusSettings
from streamer.zones import Zone, ZoneError, ZoneTree, parse_hostport

log = logging.getLogger("loa.control")
VERSION = "0.1.0"
API = "/api/v1"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, **e.extra)
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(413, "body_too_large", e.text or "request body too large")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        msg = {404: f"no such resource: {request.path}",
               405: f"{request.method} is not allowed on {request.path}"}.get(e.status, e.reason)
        return error_response(e.status, code, msg)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal server error (logged on the server)")


def build_tree(settings: Settings) -> ZoneTree:
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


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "", "application/octet-stream", "text/plain"):
        raise ApiError(415, "unsupported_media_type", "send a JSON body (Content-Type: application/json)")
    raw = await request.read()
    if not raw:
        raise ApiError(400, "empty_body", "the request body is empty; a JSON object is expected")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None


def validation_error(e: ValidationError) -> ApiError:
    problems = []
    for err in e.errors(include_url=False, include_input=False):
        loc = ".".join(str(x) for x in err.get("loc", ()))
        problems.append({"field": loc, "problem": err.get("msg", "")})
    summary = "; ".join(f"{p['field']}: {p['problem']}" if p["field"] else p["problem"]
                        for p in problems[:5])
    return ApiError(422, "invalid_request", summary or "invalid request", problems=problems)


class LoaApp:
    def __init__(self, settings: Settings, engine: Engine, hub: EventHub) -> None:
        self.settings = settings
        self.engine = engine
        self.hub = hub
        self.started = time.time()

    # ------------------------------------------------------------------ handlers
    async def health(self, request: web.Request) -> web.Response:
        return json_response({
            "status": "ok", "version": VERSION, "uptime_s": round(time.time() - self.started, 1),
            "clock": self.engine.clock_stats, "encoders_active": self.engine.encoders_active,
            "broadcasts_active": len(self.engine.broadcasts), "fanout": self.engine.fanout.stats(),
        })

    def _zone(self, zid: str) -> Zone:
        z = self.engine.tree.zones.get(zid)
        if z is None:
            raise ApiError(404, "unknown_zone", f"no zone with id {zid!r}")
        return z

    async def zones(self, request: web.Request) -> web.Response:
        status = self.engine.zone_status()
        out = []
        for z in self.engine.tree.zones.values():
            d = z.to_dict()
            d["on_air"] = status.get(z.id, {}).get("on_air", [])
            d["sdp"] = f"{API}/zones/{z.id}/sdp"
            out.append(d)
        groups = [{"id": g, "zones": m} for g, m in self.engine.tree.groups.items()]
        return json_response({"zones": out, "groups": groups})

    async def zone(self, request: web.Request) -> web.Response:
        z = self._zone(request.match_info["zone"])
        d = z.to_dict()
        d["on_air"] = self.engine.zone_status().get(z.id, {}).get("on_air", [])
        return json_response(d)

    async def sdp(self, request: web.Request) -> web.Response:
        z = self._zone(request.match_info["zone"])
        dest = request.query.get("dest")
        if dest:
            try:
                host, port = parse_hostport(dest, "dest")
            except ZoneError as e:
                raise ApiError(400, "invalid_dest", str(e)) from None
            if (host, port) not in z.unicast and z.multicast != (host, port):
                raise ApiError(404, "unknown_dest", f"{dest} is not a destination of zone {z.id}")
        elif z.multicast:
            host, port = z.multicast
        elif z.unicast:
            host, port = z.unicast[0]
        else:
            raise ApiError(409, "no_destination",
                           f"zone {z.id} has no multicast group or static destination to describe")
        import ipaddress
        ttl = f"/{max(self.settings.multicast_ttl, 1)}" if ipaddress.ip_address(host).is_multicast else ""
        pt = self.settings.payload_type
        ip_ver = "IP6" if ":" in host else "IP4"
        # RFC 7587: rtpmap is always opus/48000/2; sprop-stereo=0 says we send mono
        body = (
            "v=0\r\n"
            f"o=- {self.engine.ssrc} 1 IN {ip_ver} 127.0.0.1\r\n"
            f"s=Loa zone {z.id}\r\n"
            f"i={z.name}\r\n"
            f"c=IN {ip_ver} {host}{ttl}\r\n"
            "t=0 0\r\n"
            f"m=audio {port} RTP/AVP {pt}\r\n"
            f"a=rtpmap:{pt} opus/48000/2\r\n"
            f"a=fmtp:{pt} sprop-stereo=0;stereo=0;useinbandfec=1;"
            f"maxaveragebitrate={self.settings.opus_bitrate}\r\n"
            "a=ptime:20\r\n"
            "a=recvonly\r\n"
        )
        return web.Response(text=body, content_type="application/sdp")

    async def start_broadcast(self, request: web.Request) -> web.Response:
        data = await read_json(request)
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_request", "the body must be a JSON object")
        try:
            req = BroadcastRequest.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from None
        try:
            self.engine.tree.resolve(req.zones)
        except ZoneError as e:
            raise ApiError(404, "unknown_zone", str(e)) from None
        loop = asyncio.get_running_loop()
        try:
            make, desc, duration = await loop.run_in_executor(
                None, build_source, req, self.settings.loudness_target_lufs,
                self.settings.emergency_attention)
        except MediaError as e:
            raise ApiError(422, "media_unplayable", str(e)) from None
        spec = BroadcastSpec(targets=req.zones, level=req.level_enum, source_factory=make,
                             kind=req.source.kind, description=desc, mode=req.mode,
                             gain_db=req.gain_db, owner=request.get("user", ""),
                             duration_s=duration, id=req.id)
        try:
            b = await loop.run_in_executor(None, self.engine.start_broadcast, spec)
        except BroadcastRefused as e:
            raise ApiError(409, "zone_busy", e.reason, holder=e.holder) from None
        except ZoneError as e:
            raise ApiError(404, "unknown_zone", str(e)) from None
        except ValueError as e:
            raise ApiError(409, "conflict", str(e)) from None
        return json_response(b.to_dict(), status=201)

    async def list_broadcasts(self, request: web.Request) -> web.Response:
        past = request.query.get("past", "").lower() in ("1", "true", "yes")
        return json_response({"broadcasts": self.engine.list_broadcasts(include_past=past)})

    async def get_broadcast(self, request: web.Request) -> web.Response:
        b = self.engine.get(request.match_info["id"])
        if b is None:
            raise ApiError(404, "unknown_broadcast", f"no broadcast with id {request.match_info['id']!r}")
        return json_response(b)

    async def stop_broadcast(self, request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        try:
            b = self.engine.stop_broadcast(bid)
        except KeyError:
            if self.engine.get(bid) is not None:
                raise ApiError(409, "already_ended", f"broadcast {bid} has already ended") from None
            raise ApiError(404, "unknown_broadcast", f"no broadcast with id {bid!r}") from None
        return json_response(b.to_dict())

    async def asrun(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise ApiError(400, "invalid_query", "since must be an integer event sequence") from None
        bid = request.query.get("broadcast")
        return json_response({"events": self.hub.since(since, broadcast=bid)})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every engine event as it happens (replays from Last-Event-ID)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q = self.hub.subscribe()
        try:
            last = request.headers.get("Last-Event-ID") or request.query.get("since")
            if last and last.isdigit():
                for ev in self.hub.since(int(last)):
                    await resp.write(EventHub.sse(ev))
            await resp.write(b": connected\n\n")
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=15.0)
                    await resp.write(EventHub.sse(ev))
                except asyncio.TimeoutError:
                    await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(q)
        return resp

    async def openapi(self, request: web.Request) -> web.Response:
        from control.openapi import build_openapi
        return json_response(build_openapi(VERSION))

    async def metrics(self, request: web.Request) -> web.Response:
        from control.metrics import render_metrics
        body, ctype = render_metrics(self.engine)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def not_found(self, request: web.Request) -> web.Response:
        raise ApiError(404, "not_found", f"no such resource: {request.path}")

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{API}/health", self.health)
        r.add_get(f"{API}/zones", self.zones)
        r.add_get(f"{API}/zones/{{zone}}", self.zone)
        r.add_get(f"{API}/zones/{{zone}}/sdp", self.sdp)
        r.add_post(f"{API}/broadcasts", self.start_broadcast)
        r.add_get(f"{API}/broadcasts", self.list_broadcasts)
        r.add_get(f"{API}/broadcasts/{{id}}", self.get_broadcast)
        r.add_delete(f"{API}/broadcasts/{{id}}", self.stop_broadcast)
        r.add_get(f"{API}/asrun", self.asrun)
        r.add_get(f"{API}/events", self.events)
        r.add_get(f"{API}/openapi.json", self.openapi)
        r.add_get("/metrics", self.metrics)


def create_app(settings: Settings) -> web.Application:
    hub = EventHub()
    tree = build_tree(settings)
    mif = settings.multicast_if
    fanout = Fanout(bind=("0.0.0.0", settings.send_port), multicast_ttl=settings.multicast_ttl,
                    multicast_if=mif)
    eng_settings = EngineSettings(
        opus=OpusSettings(bitrate=settings.opus_bitrate, complexity=settings.opus_complexity,
                          fec=settings.opus_fec, packet_loss_perc=settings.opus_packet_loss_perc,
                          application=settings.opus_application),
        payload_type=settings.payload_type, duck_db=settings.duck_db,
        duck_ramp_ms=settings.duck_ramp_ms, resume_rewind_s=settings.resume_rewind_s)
    engine = Engine(tree, fanout, eng_settings, on_event=hub.publish)
    app = web.Application(middlewares=[error_middleware],
                          client_max_size=settings.max_body_mb * 1024 * 1024)
    loa = LoaApp(settings, engine, hub)
    loa.routes(app)
    app["loa"] = loa

    async def on_startup(app: web.Application) -> None:
        hub.bind(asyncio.get_running_loop())
        engine.start()
        log.info("engine started: %d zones, ssrc %08x", len(tree.zones), engine.ssrc)

    async def on_cleanup(app: web.Application) -> None:
        engine.stop()
        fanout.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
