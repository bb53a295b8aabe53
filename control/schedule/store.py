"""Schedules and their runs in the one SQLite file (tables: migration 5 of control/db.py).

`schedules` holds what a schedule says (the broadcast request it makes, when, its policies, its
owner); `schedule_runs` one row per occurrence decided: its outcome (started, started_late,
joined, rejoined, missed, skipped_busy, held, suspended, refused, interrupted, disabled), why,
and the broadcast it started. The primary key (schedule, occurrence) is what makes a restart
safe: an occurrence is decided once, whichever process decides it.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from control.db import Database, now_iso

_JSON = ("request", "zones", "exdates", "media_ids", "owner")
COLUMNS = ("id", "title", "request", "zones", "level", "start", "tz", "rrule", "until",
           "exdates", "duration_s", "on_busy", "missed", "missed_window_s", "media_ids",
           "enabled", "disabled_reason", "owner")


def _decode(row: Any) -> dict:
    d = dict(row)
    for k in _JSON:
        if k in d and isinstance(d[k], str):
            d[k] = json.loads(d[k])
    if "enabled" in d:
        d["enabled"] = bool(d["enabled"])
    return d


def _enc(v: Any) -> Any:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v


class ScheduleStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        #: bumped on every write through this store: the runner reloads when it moves
        self.version = 0

    async def all(self) -> list[dict]:
        cur = await self.db.conn.execute("SELECT * FROM schedules ORDER BY created_at, id")
        return [_decode(r) for r in await cur.fetchall()]

    async def get(self, sid: str) -> dict | None:
        cur = await self.db.conn.execute("SELECT * FROM schedules WHERE id=?", (sid,))
        r = await cur.fetchone()
        return _decode(r) if r is not None else None

    async def insert(self, row: dict) -> None:
        now = now_iso()
        cols = [c for c in COLUMNS if c in row] + ["created_at", "updated_at"]
        vals = [_enc(row[c]) for c in cols[:-2]] + [now, now]
        await self.db.conn.execute(
            f"INSERT INTO schedules ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            vals)
        self.version += 1

    async def update(self, sid: str, row: dict) -> None:
        fields = {c: row[c] for c in COLUMNS if c in row and c != "id"}
        fields["updated_at"] = now_iso()
        sets = ", ".join(f"{k}=?" for k in fields)
        await self.db.conn.execute(f"UPDATE schedules SET {sets} WHERE id=?",
                                   [_enc(v) for v in fields.values()] + [sid])
        self.version += 1

    async def delete(self, sid: str) -> bool:
        cur = await self.db.conn.execute("DELETE FROM schedules WHERE id=?", (sid,))
        self.version += 1
        return cur.rowcount > 0

    async def disable(self, sid: str, reason: str) -> None:
        await self.db.conn.execute(
            "UPDATE schedules SET enabled=0, disabled_reason=?, updated_at=? WHERE id=?",
            (reason, now_iso(), sid))
        self.version += 1

    async def using_media(self, media_id: str) -> list[str]:
        """Enabled schedules that play this library item."""
        cur = await self.db.conn.execute(
            "SELECT id FROM schedules WHERE enabled=1 AND EXISTS "
            "(SELECT 1 FROM json_each(schedules.media_ids) WHERE value=?)", (media_id,))
        return [r[0] for r in await cur.fetchall()]

    # ------------------------------------------------------------------ runs
    async def decide(self, run: dict) -> bool:
        """Record an occurrence's decision; False if it was decided already (by this process
        earlier or by the one before a restart): nothing is done twice."""
        now = now_iso()
        try:
            await self.db.conn.execute(
                "INSERT INTO schedule_runs (schedule_id, occurrence, outcome, reason, "
                "broadcast_id, offset_s, zones, level, title, decided_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run["schedule_id"], run["occurrence"], run["outcome"], run.get("reason", ""),
                 run.get("broadcast_id"), run.get("offset_s", 0.0),
                 json.dumps(run.get("zones", [])), run.get("level", ""), run.get("title", ""),
                 now, now))
        except sqlite3.IntegrityError:
            return False
        return True

    async def redecide(self, sid: str, occurrence: str, from_outcomes: tuple[str, ...],
                       **fields: Any) -> bool:
        """Move a run from one of `from_outcomes` to a new outcome (a held start decided, a
        run interrupted by a restart); False if another decision got there first."""
        fields["updated_at"] = now_iso()
        sets = ", ".join(f"{k}=?" for k in fields)
        cur = await self.db.conn.execute(
            f"UPDATE schedule_runs SET {sets} WHERE schedule_id=? AND occurrence=? AND outcome IN "
            f"({', '.join('?' * len(from_outcomes))})",
            [_enc(v) for v in fields.values()] + [sid, occurrence, *from_outcomes])
        return cur.rowcount > 0

    async def runs(self, frm: str, to: str, schedule_id: str | None = None) -> list[dict]:
        sql = "SELECT * FROM schedule_runs WHERE occurrence>=? AND occurrence<?"
        args: list[Any] = [frm, to]
        if schedule_id:
            sql += " AND schedule_id=?"
            args.append(schedule_id)
        cur = await self.db.conn.execute(sql + " ORDER BY occurrence", args)
        return [_decode(r) for r in await cur.fetchall()]
