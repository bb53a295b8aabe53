"""Schedule handlers: /schedules (CRUD, conflicts in the answer), /schedule (what airs per zone,
JSON or iCalendar), /reports/asrun and /reports/hours, and the /schedule page."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from aiohttp import web

from control.db import Database
from control.http import HttpError, Route, json_response, parse_body, q
from control.schedule.reports import asrun_rows, hours_per_level, to_csv
from control.schedule.rules import UTC, iso, parse_instant
from control.schedule.service import (ScheduleRequest, Schedules, ScheduleUpdate, listing_window,
                                      public)
from control.schedule.store import ScheduleStore

STATIC = Path(__file__).resolve().parent.parent / "static"
SCHEDULE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422)


class ScheduleHandlers:
    def __init__(self, schedules: Schedules, store: ScheduleStore, db: Database) -> None:
        self.schedules = schedules
        self.store = store
        self.db = db

    def routes(self) -> list[Route]:
        R = Route
        win = [q("zone"), q("from", format="date-time"), q("to", format="date-time")]
        return [
            R("POST", "/schedules", self.create, "schedules.write",
              "Create a schedule (what a broadcast takes, plus start, rrule, until, exdates, "
              "on_busy, missed); the answer lists its conflicts", body=ScheduleRequest, ok=201,
              errors=SCHEDULE_ERRORS),
            R("GET", "/schedules", self.list_schedules, "schedules.read", "Schedules", errors=(401,)),
            R("GET", "/schedules/{id}", self.get, "schedules.read", "One schedule, with its "
              "next occurrences and recent runs", errors=(401, 404)),
            R("PATCH", "/schedules/{id}", self.update, "schedules.write",
              "Change a schedule (checked as a whole; conflicts in the answer)",
              body=ScheduleUpdate, errors=SCHEDULE_ERRORS),
            R("DELETE", "/schedules/{id}", self.delete, "schedules.write", "Delete a schedule",
              errors=(401, 403, 404)),
            R("GET", "/schedule", self.airing, "schedules.read",
              "What airs when per zone (default: the next 7 days); ?format=ics for iCalendar",
              query=[*win, q("format", enum=["json", "ics"])], errors=(400, 401, 404, 422)),
            R("GET", "/schedule.ics", self.airing_ics, "schedules.read",
              "What airs when, as an iCalendar feed", query=win, errors=(400, 401, 404, 422),
              produces="text/calendar"),
            R("GET", "/reports/asrun", self.asrun, "asrun.read",
              "As-run report per zone and day: what aired, when, how long, at which level, "
              "what was preempted, missed or skipped and why (?format=csv)",
              query=[*win, q("format", enum=["json", "csv"])], errors=(400, 401, 422)),
            R("GET", "/reports/hours", self.hours, "asrun.read",
              "Hours aired per level per zone per month",
              query=[q("zone"), q("month", pattern=r"^\d{4}-\d{2}$"),
                     q("format", enum=["json", "csv"])], errors=(400, 401, 422)),
            R("GET", "/schedule", self.page, "pages.read", "The schedule page", root=True),
            R("GET", "/schedule/{name}", self.asset, "pages.read",
              "The schedule page's script and style", root=True),
        ]

    # ------------------------------------------------------------------ CRUD
    async def create(self, request: web.Request) -> web.Response:
        req = await parse_body(request, ScheduleRequest)
        request["audit_detail"] = {"zones": req.zones[:50], "level": req.level,
                                   "source": req.source.kind, "start": req.start,
                                   "rrule": req.rrule}
        out = await self.schedules.create(request["principal"], req)
        request["audit_target"] = out["id"]
        return json_response(out, status=201)

    async def list_schedules(self, request: web.Request) -> web.Response:
        rows = await self.schedules.visible(request["principal"])
        return json_response({"schedules": [public(r) for r in rows],
                              "tz": self.schedules.tz()})

    async def get(self, request: web.Request) -> web.Response:
        from control.schedule.service import when_of
        row = await self.schedules.get(request["principal"], request.match_info["id"])
        now = dt.datetime.now(UTC)
        nxt = when_of(row).starts(now, now + dt.timedelta(days=31))[:20]
        runs = await self.store.runs(iso(now - dt.timedelta(days=31)), "9999", row["id"])
        return json_response(dict(public(row), next=[iso(t) for t in nxt], runs=runs[-50:]))

    async def update(self, request: web.Request) -> web.Response:
        patch = await parse_body(request, ScheduleUpdate)
        request["audit_target"] = request.match_info["id"]
        request["audit_detail"] = {"changes": sorted(patch.model_fields_set)}
        return json_response(await self.schedules.update(request["principal"],
                                                         request.match_info["id"], patch))

    async def delete(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        request["audit_target"] = sid
        await self.schedules.delete(request["principal"], sid)
        return json_response({"deleted": sid})

    # ------------------------------------------------------------------ listing
    def _window(self, request: web.Request, days: int = 7) -> tuple[dt.datetime, dt.datetime]:
        return listing_window(dict(request.query), days)

    async def airing(self, request: web.Request) -> web.Response:
        if request.query.get("format") == "ics":
            return await self.airing_ics(request)
        frm, to = self._window(request)
        zone = request.query.get("zone") or None
        items = await self.schedules.airing(request["principal"], frm, to, zone)
        return json_response({"from": iso(frm), "to": iso(to), "zone": zone,
                              "tz": self.schedules.tz(), "items": items})

    async def airing_ics(self, request: web.Request) -> web.Response:
        frm, to = self._window(request)
        zone = request.query.get("zone") or None
        items = await self.schedules.airing(request["principal"], frm, to, zone)
        body = self.schedules.ics(items, f"Loa {zone or ''}".strip())
        return web.Response(body=body, content_type="text/calendar", charset="utf-8",
                            headers={"Content-Disposition":
                                     'attachment; filename="loa-schedule.ics"'})

    # ------------------------------------------------------------------ reports
    async def _rows(self, request: web.Request, frm: dt.datetime, to: dt.datetime
                    ) -> list[dict]:
        zone = request.query.get("zone") or None
        if to <= frm or to - frm > dt.timedelta(days=366):
            raise HttpError(422, "invalid_query", "from must be before to, at most 366 days")
        cur = await self.db.conn.execute(
            "SELECT data FROM broadcasts WHERE created_at>=? AND created_at<? "
            "ORDER BY created_at", (iso(frm - dt.timedelta(days=1)), iso(to)))
        import json
        bs = []
        for (data,) in await cur.fetchall():
            b = json.loads(data)
            if (b.get("started_at") or "") >= iso(frm) and (b.get("started_at") or "") < iso(to):
                bs.append(b)
        runs = await self.store.runs(iso(frm), iso(to))
        return asrun_rows(bs, runs, self.schedules.tz(), {zone} if zone else None)

    async def asrun(self, request: web.Request) -> web.Response:
        now = dt.datetime.now(UTC)
        frm = parse_instant(request.query["from"], "from") if request.query.get("from") \
            else now - dt.timedelta(days=1)
        to = parse_instant(request.query["to"], "to") if request.query.get("to") else now
        rows = await self._rows(request, frm, to)
        if request.query.get("format") == "csv":
            return web.Response(text=to_csv(rows), content_type="text/csv", charset="utf-8",
                                headers={"Content-Disposition":
                                         'attachment; filename="loa-asrun.csv"'})
        return json_response({"from": iso(frm), "to": iso(to), "rows": rows})

    async def hours(self, request: web.Request) -> web.Response:
        month = request.query.get("month") or dt.datetime.now(UTC).strftime("%Y-%m")
        try:
            first = dt.datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise HttpError(400, "invalid_query", "month is YYYY-MM") from None
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        rows = await self._rows(request, first - dt.timedelta(hours=14),
                                nxt + dt.timedelta(hours=14))
        per = hours_per_level([r for r in rows if str(r["day"]).startswith(month)],
                              self.schedules.tz())
        if request.query.get("format") == "csv":
            lines = ["zone,month,level,hours"]
            for zone, months in sorted(per.items()):
                for m, levels in sorted(months.items()):
                    lines += [f"{zone},{m},{lv},{h}" for lv, h in levels.items()]
            return web.Response(text="\r\n".join(lines) + "\r\n", content_type="text/csv",
                                charset="utf-8")
        return json_response({"month": month, "hours": per})

    # ------------------------------------------------------------------ page
    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "schedule.html", headers={"Cache-Control": "no-cache"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("schedule.js", "schedule.css"):
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})
