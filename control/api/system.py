"""Health, the OpenAPI document, Prometheus metrics, the audit log and the dashboard page."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from control.access import Access
from control.db import Database
from control.errors import NotFound
from control.http import Route, json_response, q, since_limit
from control.metrics import Metrics
from control.openapi import build_openapi
from streamer.port import EnginePort

VERSION = "0.1.0"
STATIC = Path(__file__).resolve().parent.parent / "static"


class SystemHandlers:
    def __init__(self, port: EnginePort, db: Database, access: Access, registry: Any,
                 route_table: Callable[[], list[Route]]) -> None:
        self.port = port
        self.db = db
        self.access = access
        self.registry = registry
        self.route_table = route_table  # the whole table, for the OpenAPI document
        self.metrics_ = Metrics(port, registry)
        self.started = time.time()
        #: more parts of /health, by name (e.g. "storage": the write-ahead queue's status;
        #: a part whose "writable" is False makes the status "degraded")
        self.health_parts: dict[str, Callable[[], dict[str, Any]]] = {}

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/health", self.health, "health.read", "Liveness and engine clock statistics"),
            R("GET", "/openapi.json", self.openapi, "openapi.read", "This document"),
            R("GET", "/audit", self.audit_log, "audit.read", "The audit log (append-only)",
              query=[q("since", "integer", minimum=0), q("actor"), q("action"),
                     q("limit", "integer", minimum=1, maximum=10000)], errors=(400, 401, 403)),
            R("GET", "/metrics", self.metrics, "metrics.read", "Prometheus metrics", root=True),
            # the dashboard page is public HTML; everything it shows comes from the API with
            # the viewer's own credentials
            R("GET", "/dashboard", self.dashboard_page, "pages.read", "The dashboard", root=True),
            R("GET", "/dashboard/{name}", self.dashboard_asset, "pages.read",
              "The dashboard's script and style", root=True),
        ]

    async def health(self, request: web.Request) -> web.Response:
        st = self.port.stats()
        return json_response({
            "status": "ok", "version": VERSION, "uptime_s": round(time.time() - self.started, 1),
            "clock": st.clock, "encoders_active": st.encoders_active, "encoders": st.encoders,
            "broadcasts_active": st.broadcasts_active, "fanout": st.fanout,
            "bootstrap_mode": await self.access.bootstrap_active(),
            "receiver_port": st.receiver_port,
            "receivers_online": sum(self.registry.online_by_zone().values()) if self.registry else 0,
            **self._parts(),
        })

    def _parts(self) -> dict[str, Any]:
        parts: dict[str, Any] = {name: fn() for name, fn in self.health_parts.items()}
        if any(p.get("writable") is False for p in parts.values()):
            parts["status"] = "degraded"
        return parts

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(build_openapi(VERSION, self.route_table()))

    async def metrics(self, request: web.Request) -> web.Response:
        body, ctype = self.metrics_.render()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def audit_log(self, request: web.Request) -> web.Response:
        since, limit = since_limit(request, 500)
        rows = await self.db.audit_log(since, limit, request.query.get("actor"),
                                       request.query.get("action"))
        return json_response({"entries": rows})

    async def dashboard_page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-cache"})

    async def dashboard_asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("dashboard.js", "dashboard.css", "dashboard-asrun.js"):
            raise NotFound("not_found", f"no such resource: {request.path}")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})
