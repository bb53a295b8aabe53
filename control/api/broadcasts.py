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
from control.errors import NotFound
from control.sources import BroadcastRequest
from control.streams import StreamGuard
from control.visibility import ReadScope


class BroadcastHandlers:
    def __init__(self, broadcasts: Broadcasts, db: Database, hub: EventHub,
                 registry: Any, streams: StreamGuard | None = None) -> None:
        self.broadcasts = broadcasts
        self.streams = streams  # event streams: a cap per principal, credentials re-checked
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

    def scope(self, request: web.Request) -> ReadScope:
        """What the caller may read (control/visibility.py)."""
        return ReadScope(request.get("principal"), self.broadcasts.tree())

    async def visible(self, request: web.Request, broadcast_id: str) -> dict:
        """A broadcast the caller may read; one outside its scope is not found, like one that
        never was (its existence is information too)."""
        b = await self.broadcasts.find(broadcast_id)
        if not self.scope(request).broadcast(b):
            raise NotFound("unknown_broadcast", f"no broadcast with id {broadcast_id!r}")
        return b

    async def start_broadcast(self, request: web.Request) -> web.Response:
        req = await parse_body(request, BroadcastRequest)
        request["audit_detail"] = {"zones": req.zones[:50], "level": req.level,
                                   "source": req.source.kind}
        snap = await self.broadcasts.start(request["principal"], req)
        request["audit_target"] = snap.id
        return json_response(snap.to_dict(), status=201)

    async def list_broadcasts(self, request: web.Request) -> web.Response:
        past = request.query.get("past", "").lower() in ("1", "true", "yes")
        scope = self.scope(request)
        live = scope.filter_broadcasts(
            b.to_dict() for b in self.broadcasts.port.broadcasts(include_past=past))
        if not past:
            return json_response({"broadcasts": live})
        merged = {b["id"]: b for b in scope.filter_broadcasts(await self.db.broadcasts(limit=500))}
        merged.update({b["id"]: b for b in live})
        out = sorted(merged.values(), key=lambda b: b.get("created_at") or "")
        return json_response({"broadcasts": out})

    async def get_broadcast(self, request: web.Request) -> web.Response:
        return json_response(await self.visible(request, request.match_info["id"]))

    async def stop_broadcast(self, request: web.Request) -> web.Response:
        snap = await self.broadcasts.stop(request["principal"], request.match_info["id"])
        return json_response(snap.to_dict())

    async def delivery(self, request: web.Request) -> web.Response:
        """Which receivers played a broadcast from start to end, partly, or never, and how long
        each took from the broadcast's start to its first audio (from receiver reports)."""
        scope = self.scope(request)
        b = await self.visible(request, request.match_info["id"])
        zones = {z for z in b.get("reached_zones") or [] if scope.sees_zone(z)}
        expected = [(r["id"], r["zone"]) for r in await self.db.receivers(status="provisioned")
                    if r["zone"] in zones]
        # receivers outside the reader's scope are not expected, so not listed
        return json_response(self.registry.delivery_report(b, expected=expected, wall=time.time()))

    async def asrun(self, request: web.Request) -> web.Response:
        since, limit = since_limit(request, 1000)
        scope = self.scope(request)
        kw = {"broadcast": request.query.get("broadcast"), "type_": request.query.get("type")}
        events = await self.db.asrun(since, limit=limit, **kw)
        if not scope.everything:
            # filtered after reading: read on (a bounded number of pages) so a scoped reader
            # still gets up to `limit` of its own records
            out = scope.filter_events(events)
            pages = 0
            while len(out) < limit and len(events) == limit and pages < 20:
                pages += 1
                events = await self.db.asrun(events[-1]["seq"], limit=limit, **kw)
                out += scope.filter_events(events)
            events = out[:limit]
        return json_response({"events": events})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every engine event as it happens (replays from Last-Event-ID)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        lease = self.streams.open(request, "events.read") if self.streams else None
        try:
            await resp.prepare(request)
        except BaseException:
            if lease is not None:
                lease.close()
            raise
        wait_s = min(15.0, self.streams.recheck_s) if self.streams else 15.0
        quiet_since = time.monotonic()
        q_ = self.hub.subscribe()
        scope = self.scope(request)
        try:
            last = request.headers.get("Last-Event-ID") or request.query.get("since")
            if last and last.isascii() and last.isdigit() and len(last) < 19:
                for ev in self.hub.since(int(last)):
                    if scope.event(ev):
                        await resp.write(EventHub.sse(ev))
            await resp.write(b": connected\n\n")
            while True:
                try:
                    ev = await asyncio.wait_for(q_.get(), timeout=wait_s)
                    if ev is None:  # the server is shutting down
                        break
                    if lease is not None and not await lease.valid():
                        break  # revoked, disabled, demoted, expired or signed out
                    if scope.event(ev):
                        await resp.write(EventHub.sse(ev))
                except TimeoutError:
                    if lease is not None and not await lease.valid():
                        break
                    if time.monotonic() - quiet_since >= 15.0:
                        await resp.write(b": keep-alive\n\n")
                        quiet_since = time.monotonic()
                    continue
                quiet_since = time.monotonic()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(q_)
            if lease is not None:
                lease.close()
        return resp
