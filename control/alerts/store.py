"""The alerts' rows in the control database (tables of migration 3): one row per message
received, one per airing. Plain SQL through the shared aiosqlite connection."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from control.alerts.cap import Key
from control.alerts.rules import Decision, Record
from control.db import Database, now_iso


def alert_id(key: Key) -> str:
    """A short stable id for URLs (the key itself has commas, colons and at-signs)."""
    return hashlib.sha256("\x1f".join(key).encode()).hexdigest()[:16]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


class AlertStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, rec: Record, xml: bytes, authority: str, via: str) -> None:
        a, d = rec.alert, rec.decision
        row = {"id": alert_id(d.key), "sender": a.sender, "identifier": a.identifier,
               "sent": d.key[2], "status": a.status, "msg_type": a.msg_type, "state": rec.state,
               "outcome": d.outcome, "level": d.level, "risk_level": d.risk_level,
               "risk_colour": d.risk_colour, "authority": authority, "via": via,
               "received_at": now_iso(), "expires": _iso(d.expires), "next_at": _iso(rec.next_at),
               "airings": rec.airings, "decision": json.dumps(d.to_dict(), ensure_ascii=False),
               "xml": xml.decode("utf-8", "replace"), "updated_at": now_iso()}
        cols = list(row)
        await self.db.conn.execute(
            f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            "ON CONFLICT(id) DO NOTHING", [row[c] for c in cols])

    async def update_state(self, rec: Record) -> None:
        await self.db.conn.execute(
            "UPDATE alerts SET state=?, next_at=?, airings=?, updated_at=? WHERE id=?",
            (rec.state, _iso(rec.next_at), rec.airings, now_iso(), alert_id(rec.decision.key)))

    async def airing(self, key: Key, broadcast_id: str | None, n: int, source: str,
                     receipt_to_submit_ms: float | None, error: str | None = None) -> None:
        await self.db.conn.execute(
            "INSERT INTO alert_airings (alert_id, broadcast_id, n, time, source, "
            "receipt_to_submit_ms, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (alert_id(key), broadcast_id, n, now_iso(), source, receipt_to_submit_ms, error))

    async def recent(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql = ("SELECT id, sender, identifier, sent, status, msg_type, state, outcome, level, "
               "risk_level, risk_colour, authority, via, received_at, expires, next_at, airings, "
               "decision FROM alerts")
        args: list[Any] = []
        if state:
            sql += " WHERE state=?"
            args.append(state)
        sql += " ORDER BY received_at DESC LIMIT ?"
        args.append(limit)
        return [_decoded(dict(r)) for r in await (await self.db.conn.execute(sql, args)).fetchall()]

    async def get(self, aid: str) -> dict[str, Any] | None:
        r = await (await self.db.conn.execute("SELECT * FROM alerts WHERE id=?", (aid,))).fetchone()
        return _decoded(dict(r)) if r is not None else None

    async def airings(self, aid: str) -> list[dict[str, Any]]:
        cur = await self.db.conn.execute(
            "SELECT broadcast_id, n, time, source, receipt_to_submit_ms, error FROM alert_airings "
            "WHERE alert_id=? ORDER BY seq", (aid,))
        return [dict(r) for r in await cur.fetchall()]

    async def active(self) -> list[dict[str, Any]]:
        cur = await self.db.conn.execute("SELECT * FROM alerts WHERE state='active'")
        return [_decoded(dict(r)) for r in await cur.fetchall()]


def _decoded(d: dict[str, Any]) -> dict[str, Any]:
    if isinstance(d.get("decision"), str):
        d["decision"] = json.loads(d["decision"])
    return d


def decision_from_dict(key: Key, d: dict[str, Any]) -> Decision:
    """A stored decision back as the rules' Decision (for restart: repeats and expiry go on)."""
    from control.alerts.cap import Resource
    res = d.get("resource")
    return Decision(
        key=key, outcome=d["outcome"], reason=d.get("reason", ""),
        level=d.get("level"), risk_level=d.get("risk_level"), risk_colour=d.get("risk_colour"),
        risk_colour_name=d.get("risk_colour_name"), zones=tuple(d.get("zones") or ()),
        targets=tuple(d.get("targets") or ()), receivers=tuple(d.get("receivers") or ()),
        by_geocode=tuple(d.get("by_geocode") or ()), text=d.get("text", ""),
        parts=tuple((z, tuple(r)) for z, r in (d.get("parts") or {}).items()),
        language=d.get("language", ""),
        resource=Resource("", res["mime_type"], res.get("uri"), res.get("size"), res.get("digest"))
        if res else None,
        repeat_every_s=d.get("repeat_every_s"),
        expires=datetime.fromisoformat(d["expires"]) if d.get("expires") else None,
        drill=bool(d.get("drill")))
