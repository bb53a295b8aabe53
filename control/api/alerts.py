"""Disaster alerts: CAP 1.2 push, the list, one alert with its decisions, airings and delivery."""
from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from control.alerts.intake import AlertIntake
from control.alerts.signature import SignatureError, Unsigned
from control.db import Database
from control.errors import NotFound
from control.http import HttpError, Route, json_response, q

CAP_TYPES = ("application/cap+xml", "application/xml", "text/xml")


class AlertHandlers:
    def __init__(self, intake: AlertIntake, db: Database, registry: Any) -> None:
        self.intake = intake
        self.db = db
        self.registry = registry

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("POST", "/alerts", self.push, "alerts.push",
              "Push a CAP 1.2 alert (application/cap+xml), XML-signed by a registered authority: "
              "201 with what airs where, 200 for a duplicate or a message that is only logged",
              body_kind="cap", ok=201, errors=(400, 401, 403, 413, 415, 422, 503)),
            R("GET", "/alerts", self.list_alerts, "alerts.read",
              "Alerts received (newest first), with intake counters",
              query=[q("state", enum=["active", "logged", "superseded", "cancelled", "expired"])],
              errors=(401,)),
            R("GET", "/alerts/{id}", self.get_alert, "alerts.read",
              "One alert: the message, its decisions, each airing and per-receiver delivery",
              errors=(401, 404)),
        ]

    async def push(self, request: web.Request) -> web.Response:
        if request.content_type not in CAP_TYPES:
            raise HttpError(415, "unsupported_media_type",
                            "send the CAP message as application/cap+xml or application/xml")
        limit = self.intake.max_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, "alert_too_large", f"the limit is {limit} bytes")
        data = await request.content.read(limit + 1)
        if not self.intake.leader():   # several origins (issue 19): one intake, never twice
            who = await self.intake.leader_info() if self.intake.leader_info else {}
            request["audit_detail"] = {"refused": "not_leader", **who}
            raise HttpError(503, "not_leader", "this origin does not hold the leadership lease: "
                            + (f"send alerts to {who['leader']} at {who.get('http') or '?'}"
                               if who.get("leader") else "no origin holds it right now; retry")
                            + " (nothing was stored or aired here)", **who)
        principal = request["principal"]
        allow = (self.intake.settings.alerts_allow_unsigned_push
                 and principal.role == "alert_authority")
        try:
            out = await self.intake.ingest(data, "push", principal.name, allow_unsigned=allow)
        except Unsigned as e:
            request["audit_detail"] = {"refused": e.code}
            raise HttpError(401, e.code, e.message + " (registered authorities must sign; "
                            "alerts_allow_unsigned_push is off)") from None
        except SignatureError as e:
            request["audit_detail"] = {"refused": e.code}
            raise HttpError(403, e.code, e.message) from None
        b = out.body
        request["audit_target"] = b.get("id", "")
        request["audit_detail"] = {k: b.get(k) for k in ("identifier", "sender", "outcome",
                                                         "level", "broadcast")}
        return json_response(b, status=out.status)

    async def list_alerts(self, request: web.Request) -> web.Response:
        rows = await self.intake.store.recent(request.query.get("state") or None)
        for r in rows:
            d = r.pop("decision", None) or {}
            parts = [z for z in (d.get("parts") or {}) if z not in (d.get("targets") or [])]
            r["zones"] = list(d.get("targets") or []) + parts   # a polygon's zones too
            r["text"] = str(d.get("text") or "")[:300]   # what is read out (the dashboard)
        return json_response({"alerts": rows, **self.intake.status()})

    async def get_alert(self, request: web.Request) -> web.Response:
        aid = request.match_info["id"]
        row = await self.intake.store.get(aid)
        if row is None:
            raise NotFound("unknown_alert", f"no alert with id {aid!r}")
        airings = await self.intake.store.airings(aid)
        d = row.get("decision") or {}
        parts = {z: set(rx) for z, rx in (d.get("parts") or {}).items()}
        zones = set(d.get("zones") or [])
        # of a zone reached in part (a polygon/circle), the receivers inside only
        expected = [(r["id"], r["zone"]) for r in await self.db.receivers(status="provisioned")
                    if r["zone"] in zones and (r["zone"] not in parts or r["id"] in parts[r["zone"]])]
        for a in airings:
            bid = a.get("broadcast_id")
            snap = self.intake.port.broadcast(bid) if bid else None
            b = snap.to_dict() if snap is not None else (await self.db.broadcast(bid) if bid else None)
            a["broadcast"] = b
            a["delivery"] = (self.registry.delivery_report(b, expected=expected, wall=time.time())
                             if b is not None and self.registry is not None else None)
        row["airings"] = airings
        stages = self.intake.stages.get(aid)
        if stages is not None:   # received by this process: where its intake's time went
            row["stages_ms"] = stages
        return json_response(row)
