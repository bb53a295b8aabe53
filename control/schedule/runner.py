"""The schedule runner: the thin asyncio shell around control/schedule/rules.py.

Every `period_s` it looks at each enabled schedule's occurrences near now and moves each one
along: `prepare_ahead_s` before its instant it is started through the broadcast use case with
`start_at` (the engine opens and decodes/synthesises the source at once and holds it queued
until the first tick at or after the instant, so its first packet leaves within one tick of
it); `decide_lead_s` before the instant the decision is taken with what holds its zones (on_busy
wait/cut/skip, a higher level holding a zone → held, then the missed policy) and recorded in
`schedule_runs` before it airs. A start found past its instant (the server was down, the zones
were held) is decided by the missed policy (skip, late within a window, join at the offset).

Restart-safe: a decision is one row per (schedule, occurrence), inserted once; a run that was on
air when the server stopped is marked `suspended` at shut-down (or found `interrupted` after a
crash) and at the next start it is rejoined at the right offset when its policy is `join`, or
recorded `interrupted`: nothing airs twice.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.broadcasts import Broadcasts
from control.db import Database
from control.errors import DomainError
from control.schedule.rules import LEVELS, ON_TIME_S, UTC, Decision, Holder, When, decide, iso
from control.schedule.service import principal_from_dict, when_of
from control.schedule.store import ScheduleStore
from control.sources import BroadcastRequest
from streamer.mixer.arbitration import Level
from streamer.port import EnginePort

log = logging.getLogger("loa.schedule")

AIRED = ("started", "started_late", "joined", "rejoined")
FINAL = AIRED + ("missed", "skipped_busy", "refused", "interrupted", "disabled")


@dataclass
class Pending:
    """An occurrence started ahead (held by the engine until its instant), not yet decided."""
    broadcast: str
    at: dt.datetime


class ScheduleRunner:
    def __init__(self, store: ScheduleStore, broadcasts: Broadcasts, port: EnginePort,
                 db: Database, emit: Callable[[dict], None], *, prepare_ahead_s: float = 30.0,
                 decide_lead_s: float = 1.0, period_s: float = 0.25,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.broadcasts = broadcasts
        self.port = port
        self.db = db
        self.emit = emit
        self.prepare_ahead_s = max(prepare_ahead_s, decide_lead_s + 0.5)
        self.decide_lead_s = decide_lead_s
        self.period_s = period_s
        self.clock = clock
        self._rows: list[dict] = []
        self._whens: dict[str, When] = {}
        self._version = -1
        self._outcome: dict[tuple[str, str], str] = {}
        self._pending: dict[tuple[str, str], Pending] = {}
        self._task: asyncio.Task | None = None
        self._checked: set[tuple[str, str]] = set()  # occurrences whose stored run was read
        self._timers: list[asyncio.TimerHandle] = []
        # the next look per schedule (epoch seconds; inf: none due) and a heap of them
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._by_id: dict[str, dict] = {}
        self.looks = 0        # schedules looked at (counters: the cost of the runner)
        #: several nodes (issue 19): only the origin holding the lease runs schedules
        self.leader: Callable[[], bool] = lambda: True
        self.expansions = 0   # RRULE expansions

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loa-schedule-runner")

    async def close(self) -> None:
        """Before the engine stops: what is on air now is `suspended` (the next start rejoins or
        records it, by its policy); what was only prepared is let go."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for t in self._timers:
            t.cancel()
        active = {b.id for b in self.port.broadcasts()}
        for (sid, occ), outcome in list(self._outcome.items()):
            if outcome in AIRED:
                run = await self._run_row(sid, occ)
                if run and run.get("broadcast_id") in active:
                    await self.store.redecide(sid, occ, AIRED, outcome="suspended",
                                              reason=f"server stopped while on air ({outcome})")
        for p in self._pending.values():
            self.broadcasts.end(p.broadcast, "server shutting down before its instant")

    async def _run(self) -> None:
        while True:
            try:
                if self.leader():
                    await self.step(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("schedule runner step failed")
            await asyncio.sleep(self.period_s)

    async def _run_row(self, sid: str, occ: str) -> dict | None:
        rows = await self.store.runs(occ, occ + "\x7f", sid)
        return rows[0] if rows else None

    # ------------------------------------------------------------------ one step
    async def _reload(self) -> None:
        """Read the schedules again after a change: an unchanged schedule keeps its cached
        next look; a new or changed one is looked at on the next step."""
        before = {r["id"]: r for r in self._rows}
        self._rows = [r for r in await self.store.all() if r["enabled"]]
        whens: dict[str, When] = {}
        for r in self._rows:
            same = before.get(r["id"]) == r and r["id"] in self._whens
            try:
                whens[r["id"]] = self._whens[r["id"]] if same else when_of(r)
            except DomainError as e:
                log.error("schedule %s cannot be read: %s", r["id"], e.message)
        due = {sid: (self._due.get(sid, -math.inf) if before.get(sid) == r else -math.inf)
               for sid, r in ((r["id"], r) for r in self._rows) if sid in whens}
        self._whens, self._due = whens, due
        self._by_id = {r["id"]: r for r in self._rows}
        self._heap = [(d, sid) for sid, d in due.items() if d != math.inf]
        heapq.heapify(self._heap)
        self._version = self.store.version

    def _lookback_s(self, r: dict, w: When) -> float:
        """How far back occurrences are looked at: while one could still be on air (a run cut
        by a restart is then rejoined or recorded), and a start missed while the server was
        down is decided (and logged) by its policy."""
        back = max(ON_TIME_S + self.decide_lead_s, w.duration_s)
        if r["missed"] == "late":
            back = max(back, float(r["missed_window_s"]))
        return min(back, 86_400.0) + ON_TIME_S

    async def step(self, now: float) -> None:
        """Look at the schedules whose cached next look has come: each one's occurrences near
        now are moved along; one with an occurrence still undecided (prepared, held) is looked
        at again next step, the others not before their next occurrence comes within
        `prepare_ahead_s` (found once, by `When.first_start`): thousands of idle schedules
        cost a heap peek per step, not an RRULE expansion each."""
        if self._version != self.store.version:
            await self._reload()
        now_dt = dt.datetime.fromtimestamp(now, UTC)
        again: list[tuple[float, str]] = []
        while self._heap and self._heap[0][0] <= now:
            d, sid = heapq.heappop(self._heap)
            if self._due.get(sid) != d:
                continue   # superseded by a newer entry
            r, w = self._by_id[sid], self._whens[sid]
            self.looks += 1
            try:
                wake = await self._look(r, w, now_dt)
            except Exception:
                log.exception("schedule %s: look failed", sid)
                self._due[sid] = now + 1.0   # retried a second later, not spun on
                again.append((now + 1.0, sid))
                continue
            if wake is not None:
                nxt: float = max(now, wake)
            else:
                after = w.first_start(now_dt + dt.timedelta(seconds=self.prepare_ahead_s))
                nxt = math.inf if after is None else after.timestamp() - self.prepare_ahead_s
            self._due[sid] = nxt
            if nxt != math.inf:
                again.append((nxt, sid))
        for item in again:
            heapq.heappush(self._heap, item)

    async def _look(self, r: dict, w: When, now_dt: dt.datetime) -> float | None:
        """One schedule's occurrences near now, moved along. While one is undecided: when to
        look again (a prepared one at its decision time, a held one at once); else None."""
        back = self._lookback_s(r, w)
        frm = now_dt - dt.timedelta(seconds=back)
        to = now_dt + dt.timedelta(seconds=self.prepare_ahead_s)
        starts = w.starts(frm, to)
        self.expansions += 1
        if not starts:
            return None
        if any((r["id"], iso(s)) not in self._checked for s in starts):
            for run in await self.store.runs(iso(frm), iso(to), r["id"]):
                key = (r["id"], run["occurrence"])
                if key in self._checked:
                    continue
                self._outcome.setdefault(key, run["outcome"])
                if run["outcome"] in AIRED + ("suspended",):
                    await self._after_restart(r, w, run, now_dt)
            self._checked.update((r["id"], iso(s)) for s in starts)
        for s in starts:
            await self._occurrence(r, w, s, now_dt)
        wake: float | None = None
        for s in starts:
            key = (r["id"], iso(s))
            outcome = self._outcome.get(key)
            if outcome in FINAL or outcome == "suspended":
                continue
            t = (s.timestamp() - self.decide_lead_s
                 if outcome is None and key in self._pending else now_dt.timestamp())
            wake = t if wake is None else min(wake, t)
        return wake

    async def _occurrence(self, r: dict, w: When, at: dt.datetime, now: dt.datetime) -> None:
        key = (r["id"], iso(at))
        outcome = self._outcome.get(key)
        if outcome in FINAL or outcome == "suspended":
            return
        lead = (at - now).total_seconds()
        pending = self._pending.get(key)
        if outcome is None and pending is None and lead > self.decide_lead_s:
            await self._prepare(r, at, key)
            return
        if outcome is None and lead > self.decide_lead_s:
            return  # prepared, waiting for the decision time
        holders = self._holders(r, exclude=pending.broadcast if pending else None)
        # prepared and decided on time: the engine starts it at its instant
        decided_at = at if pending is not None and outcome is None else now
        d = decide(scheduled=at, now=decided_at, level=LEVELS.index(r["level"]),
                   on_busy=r["on_busy"], missed=r["missed"],
                   window_s=float(r["missed_window_s"]), duration_s=w.duration_s,
                   holders=holders)
        await self._apply(r, at, key, d, pending, outcome)

    def _holders(self, r: dict, exclude: str | None) -> list[Holder]:
        try:
            reached = self.broadcasts.tree().resolve(r["zones"])
        except Exception:
            return []
        found: dict[str, Holder] = {}
        status = self.port.zone_status()
        for z in reached:
            snap = status.get(z)
            if snap is None:
                continue
            for on in snap.on_air:
                if on.broadcast == exclude or on.broadcast in found:
                    continue
                try:
                    lvl = int(Level.parse(on.level))
                except ValueError:
                    continue
                found[on.broadcast] = Holder(on.broadcast, lvl, (z,))
        return list(found.values())

    def _request(self, r: dict) -> BroadcastRequest:
        return BroadcastRequest.model_validate(r["request"])

    async def _principal(self, r: dict) -> Any:
        """The owner as it is now (a user's role and scope may have changed since)."""
        p = principal_from_dict(r["owner"])
        if p.user_id is None:
            return p
        u = await self.db.user(p.user_id)
        if u is None or u.get("disabled"):
            return None
        scope = u.get("scope") or []
        return type(p)(u["username"], u["role"], p.user_id, tuple(scope), p.via,
                       u.get("display_name") or "")

    async def _start(self, r: dict, at: dt.datetime, *, start_at: float | None,
                     offset_s: float = 0.0) -> str:
        """Through the broadcast use case, as the schedule's owner. Raises DomainError."""
        principal = await self._principal(r)
        if principal is None:
            from control.errors import Forbidden
            raise Forbidden("the schedule's owner no longer exists or is disabled",
                            code="owner_gone")
        snap = await self.broadcasts.start(
            principal, self._request(r), start_at=start_at, offset_s=offset_s,
            extra={"schedule_id": r["id"], "occurrence": iso(at),
                   "title": r["title"] or None, "offset_s": round(offset_s, 3)})
        return snap.id

    async def _prepare(self, r: dict, at: dt.datetime, key: tuple[str, str]) -> None:
        try:
            bid = await self._start(r, at, start_at=at.timestamp())
        except DomainError as e:
            await self._refused(r, at, key, e)
            return
        self._pending[key] = Pending(bid, at)

    async def _refused(self, r: dict, at: dt.datetime, key: tuple[str, str],
                       e: DomainError) -> None:
        """A start the use case refused is recorded and announced, never silently skipped; a
        schedule whose media item is gone is disabled."""
        outcome = "refused"
        if e.code in ("unknown_media", "media_unplayable"):
            outcome = "disabled"
            await self.store.disable(r["id"], f"{e.code}: {e.message}")
            self.emit({"type": "schedule.disabled", "schedule": r["id"], "reason": e.message,
                       "code": e.code, "occurrence": iso(at)})
        await self._record(r, at, key, outcome, f"{e.code}: {e.message}")
        self.emit({"type": "schedule.refused", "schedule": r["id"], "occurrence": iso(at),
                   "code": e.code, "reason": e.message})

    async def _record(self, r: dict, at: dt.datetime, key: tuple[str, str], outcome: str,
                      reason: str, bid: str | None = None, offset_s: float = 0.0,
                      previous: str | None = None) -> bool:
        run = {"schedule_id": r["id"], "occurrence": iso(at), "outcome": outcome,
               "reason": reason, "broadcast_id": bid, "offset_s": round(offset_s, 3),
               "zones": r["zones"], "level": r["level"], "title": r["title"]}
        if previous is None:
            ok = await self.store.decide(run)
        else:
            ok = await self.store.redecide(r["id"], iso(at), (previous,), outcome=outcome,
                                           reason=reason, broadcast_id=bid,
                                           offset_s=round(offset_s, 3))
        if ok:
            self._outcome[key] = outcome
            self.emit({"type": f"schedule.{outcome}", "schedule": r["id"],
                       "occurrence": iso(at), "broadcast": bid, "reason": reason or None,
                       "offset_s": round(offset_s, 3) if offset_s else None})
        else:  # decided already (by a previous process): take that decision
            row = await self._run_row(r["id"], iso(at))
            self._outcome[key] = row["outcome"] if row else outcome
        return ok

    async def _apply(self, r: dict, at: dt.datetime, key: tuple[str, str], d: Decision,
                     pending: Pending | None, previous: str | None) -> None:
        if d.action == "hold":
            if pending is not None:  # not behind the emergency from position 0: decide later
                self.broadcasts.end(pending.broadcast, "zones held at a higher level")
                self._pending.pop(key, None)
            if previous is None:
                await self._record(r, at, key, "held", d.reason)
            return
        if d.action == "skip":
            if pending is not None:
                self.broadcasts.end(pending.broadcast, f"schedule: {d.reason}")
                self._pending.pop(key, None)
            await self._record(r, at, key, d.outcome, d.reason, previous=previous)
            return
        # start
        bid = pending.broadcast if pending is not None else None
        if bid is None:
            try:
                bid = await self._start(r, at, start_at=None, offset_s=d.offset_s)
            except DomainError as e:
                if previous is None:
                    await self._refused(r, at, key, e)
                else:
                    await self._record(r, at, key, "refused", f"{e.code}: {e.message}",
                                       previous=previous)
                return
        ok = await self._record(r, at, key, d.outcome, d.reason, bid, d.offset_s,
                                previous=previous)
        self._pending.pop(key, None)
        if not ok:
            self.broadcasts.end(bid, "this occurrence was decided already")
            return
        if d.stop:
            delay = max(0.0, at.timestamp() - self.clock())
            loop = asyncio.get_running_loop()
            for other in d.stop:
                self._timers.append(loop.call_later(
                    delay, self.broadcasts.end, other, f"cut by schedule {r['id']}"))

    async def _after_restart(self, r: dict, w: When, run: dict, now: dt.datetime) -> None:
        """A run that was on air: still on air here → nothing to do; cut by a stop or a crash
        of the server → rejoin at the offset (policy join, still within the programme) or
        record it interrupted."""
        bid = run.get("broadcast_id")
        if run["outcome"] != "suspended":
            snap = self.port.broadcast(bid) if bid else None
            if snap is not None:
                return
            stored = await self.db.broadcast(bid) if bid else None
            if stored is None or stored.get("state") != "interrupted":
                return
        at = dt.datetime.fromisoformat(run["occurrence"].replace("Z", "+00:00"))
        key = (r["id"], run["occurrence"])
        elapsed = (now - at).total_seconds()
        if r["missed"] == "join" and elapsed < w.duration_s:
            try:
                new = await self._start(r, at, start_at=None, offset_s=max(0.0, elapsed))
            except DomainError as e:
                await self._record(r, at, key, "interrupted", f"rejoin refused: {e.message}",
                                   previous=run["outcome"])
                return
            ok = await self._record(r, at, key, "rejoined",
                                    f"rejoined at {elapsed:.1f} s after a restart", new,
                                    elapsed, previous=run["outcome"])
            if not ok:
                self.broadcasts.end(new, "this occurrence was decided already")
            return
        await self._record(r, at, key, "interrupted",
                           f"the server stopped during it; policy {r['missed']} does not "
                           "air it again", bid, previous=run["outcome"])
