"""Broadcasts (start, list, stop, delivery report), the as-run log and the event stream."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from control.broadcasts import Broadcasts
from control.db import Database
from control.events import EventHub
from control.http import Route, json_response, parse_body, q, since_limit
from control.sources import BroadcastRequest


class BroadcastHandlers:
    def __init__(self, broadcasts: Broadcasts, db: Database, hub: EventHub,
                 registry: Any) -> None:
        self.broadcasts = broadcasts
        self.db = db
        self.hub = hub
        self.registry = registry  # receiver reports: the delivery report

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/broadcasts", self.list_broadcasts, "broadcasts.read",
              "Active broadcasts (past too with ?past=1)",
              query=[q("past", enum=["0", "1"])], errors=(401,)),
            R("POST", "/broadcasts", self.start_broadcast, "broadcasts.start", "Start a broadcast",
              body=BroadcastRequest, ok=201, errors=(400, 401, 403, 404, 409, 413, 415, 422)),
            R("GET", "/broadcasts/{id}", self.get_broadcast, "broadcasts.read",
              "One broadcast (active or past)", errors=(401, 404)),
            R("DELETE", "/broadcasts/{id}", self.stop_broadcast, "broadcasts.stop",
              "Stop a broadcast", errors=(401, 403, 404, 409)),
            R("GET", "/broadcasts/{id}/delivery", self.delivery, "receivers.read",
              "Delivery report: which receivers played it fully, partly or never, and their time "
              "to first audio", errors=(401, 403, 404)),
            R("GET", "/asrun", self.asrun, "asrun.read", "As-run log (engine events, persisted)",
              query=[q("since", "integer", minimum=0), q("broadcast"), q("type"),
                     q("limit", "integer", minimum=1, maximum=10000)], errors=(400, 401)),
            R("GET", "/events", self.events, "events.read", "Server-Sent Events stream",
              errors=(401,), produces="text/event-stream"),
        ]

    async def start_broadcast(self, request: web.Request) -> web.Response:
        req = await parse_body(request, BroadcastRequest)
        request["audit_detail"] = {"zones": req.zones[:50], "level": req.level,
                                   "source": req.source.kind}
        snap = await self.broadcasts.start(request["principal"], req)
        request["audit_target"] = snap.id
        return json_response(snap.to_dict(), status=201)

    async def list_broadcasts(self, request: web.Request) -> web.Response:
        past = request.query.get("past", "").lower() in ("1", "true", "yes")
        live = [b.to_dict() for b in self.broadcasts.port.broadcasts(include_past=past)]
        if not past:
            return json_response({"broadcasts": live})
        merged = {b["id"]: b for b in await self.db.broadcasts(limit=500)}
        merged.update({b["id"]: b for b in live})
        out = sorted(merged.values(), key=lambda b: b.get("created_at") or "")
        return json_response({"broadcasts": out})

    async def get_broadcast(self, request: web.Request) -> web.Response:
        return json_response(await self.broadcasts.find(request.match_info["id"]))

    async def stop_broadcast(self, request: web.Request) -> web.Response:
        snap = await self.broadcasts.stop(request["principal"], request.match_info["id"])
        return json_response(snap.to_dict())

    async def delivery(self, request: web.Request) -> web.Response:
        """Which receivers played a broadcast from start to end, partly, or never, and how long
        each took from the broadcast's start to its first audio (from receiver reports)."""
        b = await self.broadcasts.find(request.match_info["id"])
        zones = set(b.get("reached_zones") or [])
        expected = [(r["id"], r["zone"]) for r in await self.db.receivers(status="provisioned")
                    if r["zone"] in zones]
        return json_response(self.registry.delivery_report(b, expected=expected, wall=time.time()))

    async def asrun(self, request: web.Request) -> web.Response:
        since, limit = since_limit(request, 1000)
        events = await self.db.asrun(since, broadcast=request.query.get("broadcast"),
                                     limit=limit, type_=request.query.get("type"))
        return json_response({"events": events})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every engine event as it happens (replays from Last-Event-ID)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q_ = self.hub.subscribe()
        try:
            last = request.headers.get("Last-Event-ID") or request.query.get("since")
            if last and last.isdigit():
                for ev in self.hub.since(int(last)):
                    await resp.write(EventHub.sse(ev))
            await resp.write(b": connected\n\n")
            while True:
                try:
                    ev = await asyncio.wait_for(q_.get(), timeout=15.0)
                    if ev is None:  # the server is shutting down
                        break
                    await resp.write(EventHub.sse(ev))
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(q_)
        return resp
