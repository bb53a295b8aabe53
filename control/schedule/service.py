"""The schedule use cases: create, edit, delete, list, what airs when (per zone), conflicts and
the iCalendar export. A schedule is checked as its owner would be for a broadcast now (level,
zone scope, raw paths: control/broadcasts.py's `authorize_start`), and its source is a
broadcast request's (control/sources.py), so whatever may be broadcast may be scheduled.
"""
from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control.broadcasts import Broadcasts
from control.db import Database
from control.errors import Forbidden, Invalid, NotFound
from control.policy import ROLE_LIMITS, Policy, Principal, owns
from control.schedule.rules import (LEVELS, UTC, Exdates, Slot, When, conflicts, iso,
                                    parse_instant, zone_info)
from control.schedule.store import ScheduleStore
from control import playout
from control.sources import (BroadcastRequest, FileSpec, MediaSpec, PlaylistSpec, RelaySpec,
                             SourceSpec)

#: how far conflicts are looked for when a schedule is made or changed
CONFLICT_DAYS = 31
#: a listing spans at most this much
MAX_LISTING_DAYS = 62
#: an item of unknown length counts this long in listings and conflict checks
DEFAULT_DURATION_S = 300.0


class ScheduleRequest(BaseModel):
    """POST /schedules: what a broadcast takes, plus when."""
    model_config = ConfigDict(extra="forbid")
    zones: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1,
                                                                              max_length=1000)
    level: Literal["background", "normal", "priority", "emergency"] = "normal"
    mode: Literal["preempt", "duck", "mix"] = "preempt"
    source: SourceSpec
    gain_db: float = Field(0.0, ge=-40, le=12)
    attention: bool | None = None
    attention_kind: Literal["chime", "siren"] | None = None
    repeat: int = Field(1, ge=1, le=50)
    repeat_pause_s: float = Field(2.0, ge=0, le=600)
    title: str = Field("", max_length=200)
    start: str = Field(min_length=10, max_length=40,
                       description="ISO 8601 with an offset: 2026-03-01T06:00:00+07:00")
    rrule: str | None = Field(None, min_length=4, max_length=500,
                              description="RFC 5545 RRULE, e.g. FREQ=DAILY;BYHOUR=6,17")
    until: str | None = Field(None, min_length=10, max_length=40)
    exdates: list[Annotated[str, Field(min_length=10, max_length=40)]] = Field(
        default_factory=list, max_length=1000)
    duration_s: float | None = Field(None, gt=0, le=24 * 3600)
    on_busy: Literal["wait", "cut", "skip"] = "wait"
    missed: Literal["skip", "late", "join"] = "skip"
    missed_window_s: float = Field(600.0, ge=0, le=24 * 3600)
    enabled: bool = True

    def broadcast_request(self) -> BroadcastRequest:
        return BroadcastRequest.model_validate(self.model_dump(
            include={"zones", "level", "mode", "source", "gain_db", "attention",
                     "attention_kind", "repeat", "repeat_pause_s"}))


class ScheduleUpdate(BaseModel):
    """PATCH /schedules/{id}: any of the fields; the result is checked as a whole."""
    model_config = ConfigDict(extra="forbid")
    zones: list[str] | None = None
    level: str | None = None
    mode: str | None = None
    source: dict | None = None
    gain_db: float | None = None
    attention: bool | None = None
    attention_kind: str | None = None
    repeat: int | None = None
    repeat_pause_s: float | None = None
    title: str | None = None
    start: str | None = None
    rrule: str | None = None
    until: str | None = None
    exdates: list[str] | None = None
    duration_s: float | None = None
    on_busy: str | None = None
    missed: str | None = None
    missed_window_s: float | None = None
    enabled: bool | None = None


def principal_to_dict(p: Principal) -> dict:
    return {"name": p.name, "role": p.role, "user_id": p.user_id, "scope": list(p.scope),
            "via": p.via, "display_name": p.display_name}


def principal_from_dict(d: dict) -> Principal:
    return Principal(d["name"], d["role"], d.get("user_id"), tuple(d.get("scope") or ()),
                     d.get("via", "token"), d.get("display_name", ""))


def when_of(row: dict) -> When:
    return When(parse_instant(row["start"]), tz=row["tz"], rrule=row.get("rrule"),
                until=parse_instant(row["until"], "until") if row.get("until") else None,
                exdates=Exdates.parse(row.get("exdates") or []),
                duration_s=float(row.get("duration_s") or DEFAULT_DURATION_S))


def public(row: dict) -> dict:
    """A schedule as the API shows it."""
    req = dict(row["request"])
    out = {"id": row["id"], "title": row["title"], "zones": row["zones"], "level": row["level"],
           "mode": req.get("mode", "preempt"), "source": req.get("source"),
           "start": row["start"], "tz": row["tz"], "rrule": row.get("rrule"),
           "until": row.get("until"), "exdates": row.get("exdates") or [],
           "duration_s": row.get("duration_s"), "on_busy": row["on_busy"],
           "missed": row["missed"], "missed_window_s": row["missed_window_s"],
           "enabled": row["enabled"], "disabled_reason": row.get("disabled_reason"),
           "owner": (row.get("owner") or {}).get("name"),
           "created_at": row.get("created_at"), "updated_at": row.get("updated_at")}
    for k in ("gain_db", "attention", "attention_kind", "repeat", "repeat_pause_s"):
        out[k] = req.get(k)
    return out


class Schedules:
    def __init__(self, store: ScheduleStore, broadcasts: Broadcasts, db: Database,
                 tz: Callable[[], str], emit: Callable[[dict], None]) -> None:
        self.store = store
        self.broadcasts = broadcasts
        self.db = db
        self.tz = tz          # the installation's time zone now (a setting)
        self.emit = emit      # events (schedule.created, schedule.disabled, ...)

    # ------------------------------------------------------------------ checks
    async def _duration(self, req: ScheduleRequest) -> float | None:
        if req.duration_s is not None:
            return req.duration_s
        s = req.source
        base: float | None
        if isinstance(s, MediaSpec):
            m = await self.db.media(s.id)
            base = float(m["duration_s"]) if m and m.get("duration_s") else None
        elif s.kind in ("tone", "siren"):
            base = float(getattr(s, "seconds", 0.0)) or None
        elif s.kind == "chime":
            base = 2.0
        elif isinstance(s, RelaySpec):
            base = s.seconds
        elif isinstance(s, PlaylistSpec):
            lengths: list[float | None] = []
            for it in s.items:
                if isinstance(it, MediaSpec):
                    m = await self.db.media(it.id)
                    lengths.append(float(m["duration_s"]) if m and m.get("duration_s") else None)
                else:
                    lengths.append(float(getattr(it, "seconds", 0.0)) or (
                        max(2.0, len(getattr(it, "text", "")) / 14.0) if it.kind == "tts"
                        else 2.0))
            known = None if any(n is None for n in lengths) else sum(n or 0.0 for n in lengths)
            # a playlist that fills a slot repeats its items until the slot's end
            base = known if s.slot_s is None else s.slot_s
        elif s.kind == "tts":
            base = max(2.0, len(getattr(s, "text", "")) / 14.0)  # ~14 characters a second
        else:
            base = None
        if base is None:
            return None
        return base * req.repeat + req.repeat_pause_s * (req.repeat - 1)

    async def check(self, principal: Principal, req: ScheduleRequest, now: float,
                    existing: dict | None = None) -> tuple[dict, set[str]]:
        """The stored row for this request, checked: policy as the owner, zones, media,
        times. Raises before anything is written."""
        breq = req.broadcast_request()
        reached = self.broadcasts.authorize_start(principal, breq.zones, breq.level_enum,
                                                  breq.source.kind)
        if isinstance(breq.source, FileSpec):
            Policy.check_raw_path(principal, breq.source.path,
                                  self.broadcasts.settings.media_dirs)
        media_ids: list[str] = []
        if isinstance(breq.source, MediaSpec):
            if await self.db.media(breq.source.id) is None:
                raise NotFound("unknown_media", f"no media with id {breq.source.id!r}")
            media_ids.append(breq.source.id)
        if isinstance(breq.source, (RelaySpec, PlaylistSpec)):
            # the URL, the playlist's items and the relay's fallback: checked now, as at start
            import asyncio
            await playout.describe(breq.source, self.db, self.broadcasts.settings,
                                   asyncio.get_running_loop(), None)
            media_ids.extend(playout.media_ids(breq.source, self.broadcasts.settings))
        tz = existing["tz"] if existing is not None else self.tz()
        zone_info(tz)
        start = parse_instant(req.start, "start")
        until = parse_instant(req.until, "until") if req.until else None
        row = {"title": req.title or _title(req), "request": breq.model_dump(mode="json"),
               "zones": list(req.zones), "level": req.level, "start": iso(start), "tz": tz,
               "rrule": req.rrule, "until": iso(until) if until else None,
               "exdates": list(req.exdates), "duration_s": await self._duration(req),
               "on_busy": req.on_busy, "missed": req.missed,
               "missed_window_s": req.missed_window_s, "media_ids": media_ids,
               "enabled": req.enabled, "disabled_reason": None}
        when = when_of(row)   # RRULE, until, exdates: Invalid now
        now_dt = dt.datetime.fromtimestamp(now, UTC)
        # off the event loop: dateutil searches a rule that matches nothing (BYMONTHDAY=30
        # in February) year by year to 9999, seconds of CPU the loop must not wait on
        import asyncio
        first = await asyncio.get_running_loop().run_in_executor(
            None, lambda: when.first_start(now_dt, horizon_days=3660))
        if first is None:
            if req.rrule is None:
                raise Invalid("start_in_past", f"start {req.start} is in the past")
            raise Invalid("never_airs", "this schedule has no occurrence from now on (start, "
                          "until, RRULE and exdates leave none)")
        return row, reached

    async def _conflicts(self, sid: str, row: dict, reached: set[str], now: float
                         ) -> list[dict]:
        frm = dt.datetime.fromtimestamp(now, UTC)
        to = frm + dt.timedelta(days=CONFLICT_DAYS)
        mine = Slot(sid, when_of(row), frozenset(reached), LEVELS.index(row["level"]),
                    row["on_busy"], row["title"])
        others = []
        tree = self.broadcasts.tree()
        for o in await self.store.all():
            if o["id"] == sid or not o["enabled"]:
                continue
            try:
                z = tree.resolve(o["zones"])
                others.append(Slot(o["id"], when_of(o), frozenset(z), LEVELS.index(o["level"]),
                                   o["on_busy"], o["title"]))
            except Exception:  # a schedule whose zones are gone conflicts with nothing
                continue
        return conflicts(mine, others, frm, to)

    # ------------------------------------------------------------------ use cases
    async def create(self, principal: Principal, req: ScheduleRequest, now: float | None = None
                     ) -> dict:
        now = time.time() if now is None else now
        row, reached = await self.check(principal, req, now)
        sid = secrets.token_hex(6)
        row.update(id=sid, owner=principal_to_dict(principal))
        found = await self._conflicts(sid, row, reached, now)
        await self.store.insert(row)
        self.emit({"type": "schedule.created", "schedule": sid, "owner": principal.name,
                   "conflicts": len(found)})
        stored = await self.store.get(sid)
        assert stored is not None
        return dict(public(stored), conflicts=found)

    async def get(self, principal: Principal, sid: str) -> dict:
        row = await self.store.get(sid)
        if row is None:
            raise NotFound("unknown_schedule", f"no schedule with id {sid!r}")
        return row

    def may_edit(self, principal: Principal, row: dict) -> bool:
        """Its owner, an admin, or an operator whose scope covers its zones and whose role may
        start its level (the rule for stopping somebody else's broadcast)."""
        as_broadcast = {"source": {"owner_id": principal_from_dict(row["owner"]).id},
                        "owner": row["owner"]["name"], "level": row["level"]}
        if owns(principal, as_broadcast) or principal.role == "admin":
            return True
        try:
            reached = self.broadcasts.tree().resolve(row["zones"])
        except Exception:
            reached = set(row["zones"])
        return Policy.may_stop(principal, self.broadcasts.tree(),
                               dict(as_broadcast, reached_zones=sorted(reached)))

    async def update(self, principal: Principal, sid: str, patch: ScheduleUpdate,
                     now: float | None = None) -> dict:
        now = time.time() if now is None else now
        row = await self.get(principal, sid)
        if not self.may_edit(principal, row):
            raise Forbidden(f"you may not change schedule {sid} (not yours or outside your "
                            "scope)")
        merged = dict(row["request"], title=row["title"], start=row["start"],
                      rrule=row.get("rrule"), until=row.get("until"),
                      exdates=row.get("exdates") or [], on_busy=row["on_busy"],
                      missed=row["missed"], missed_window_s=row["missed_window_s"],
                      enabled=row["enabled"])
        if row.get("duration_s") is not None and "duration_s" in patch.model_fields_set:
            merged["duration_s"] = patch.duration_s
        merged.pop("id", None)
        # fields a broadcast request gained since it was stored, unset (variants: None) are
        # not the schedule's to carry
        for k in [k for k, v in merged.items() if v is None and k not in ScheduleRequest.model_fields]:
            merged.pop(k)
        merged.update(patch.model_dump(exclude_unset=True))
        try:
            req = ScheduleRequest.model_validate(merged)
        except ValidationError as e:
            from control.http import validation_error
            raise validation_error(e) from None
        # the editor becomes the owner only if it is the owner already; otherwise it edits
        # with its own rights checked and the owner stays
        new, reached = await self.check(principal, req, now, existing=row)
        found = await self._conflicts(sid, new, reached, now)
        await self.store.update(sid, new)
        self.emit({"type": "schedule.updated", "schedule": sid, "by": principal.name,
                   "conflicts": len(found)})
        stored = await self.store.get(sid)
        assert stored is not None
        return dict(public(stored), conflicts=found)

    async def delete(self, principal: Principal, sid: str) -> None:
        row = await self.get(principal, sid)
        if not self.may_edit(principal, row):
            raise Forbidden(f"you may not delete schedule {sid} (not yours or outside your "
                            "scope)")
        await self.store.delete(sid)
        self.emit({"type": "schedule.deleted", "schedule": sid, "by": principal.name})

    async def visible(self, principal: Principal) -> list[dict]:
        """Schedules the caller may see: all for roles acting anywhere, else those reaching
        its scope."""
        rows = await self.store.all()
        allowed = Policy.scope_zones(principal, self.broadcasts.tree()) \
            if principal.role in ROLE_LIMITS else set()
        if allowed is None:
            return rows
        out = []
        tree = self.broadcasts.tree()
        for r in rows:
            try:
                reached = tree.resolve(r["zones"])
            except Exception:
                reached = set(r["zones"])
            if reached & allowed or owns(principal, {"source": {"owner_id": principal_from_dict(
                    r["owner"]).id}, "owner": r["owner"]["name"]}):
                out.append(r)
        return out

    async def airing(self, principal: Principal, frm: dt.datetime, to: dt.datetime,
                     zone: str | None = None) -> list[dict]:
        """What airs in [frm, to), per zone reached: occurrence, end, level, schedule."""
        if to <= frm:
            raise Invalid("invalid_query", "to must be after from")
        if to - frm > dt.timedelta(days=MAX_LISTING_DAYS):
            raise Invalid("invalid_query", f"a listing spans at most {MAX_LISTING_DAYS} days")
        tree = self.broadcasts.tree()
        if zone is not None and zone not in tree.zones:
            raise NotFound("unknown_zone", f"no zone {zone!r}")
        out = []
        for r in await self.visible(principal):
            if not r["enabled"]:
                continue
            try:
                reached = tree.resolve(r["zones"])
            except Exception:
                continue
            if zone is not None:
                # a zone hears what targets it or an ancestor (a zone reaches its subtree)
                if zone not in reached:
                    continue
                zones = [zone]
            else:
                zones = sorted(reached)
            w = when_of(r)
            for s in w.overlapping(frm, to):
                out.append({"schedule": r["id"], "title": r["title"], "level": r["level"],
                            "start": iso(s), "end": iso(s + dt.timedelta(seconds=w.duration_s)),
                            "local_start": s.astimezone(zone_info(r["tz"])).isoformat(),
                            "zones": zones[:200], "on_busy": r["on_busy"],
                            "source": (r["request"].get("source") or {}).get("kind")})
        out.sort(key=lambda x: (x["start"], -LEVELS.index(x["level"])))
        return out

    def ics(self, items: list[dict], name: str) -> bytes:
        """The listing as an iCalendar document (one VEVENT per occurrence, UTC times)."""
        from icalendar import Calendar, Event
        cal = Calendar()
        cal.add("prodid", "-//Loa//schedule//VI")
        cal.add("version", "2.0")
        cal.add("x-wr-calname", name)
        cal.add("x-wr-timezone", self.tz())
        stamp = dt.datetime.now(UTC).replace(microsecond=0)
        for it in items:
            ev = Event()
            ev.add("uid", f"{it['schedule']}-{it['start']}@loa")
            ev.add("dtstamp", stamp)
            ev.add("dtstart", parse_instant(it["start"]))
            ev.add("dtend", parse_instant(it["end"]))
            ev.add("summary", f"[{it['level']}] {it['title']}")
            ev.add("description", f"zones: {', '.join(it['zones'][:50])}")
            ev.add("categories", [it["level"]])
            cal.add_component(ev)
        return bytes(cal.to_ical())


def _title(req: ScheduleRequest) -> str:
    s = req.source
    if s.kind == "tts":
        return str(getattr(s, "text", ""))[:80]
    if s.kind == "media":
        return f"media {getattr(s, 'id', '')}"
    return s.kind


def listing_window(q: dict[str, str], default_days: int = 7) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(UTC).replace(microsecond=0)
    frm = parse_instant(q["from"], "from") if q.get("from") else now
    to = parse_instant(q["to"], "to") if q.get("to") else frm + dt.timedelta(days=default_days)
    return frm, to
