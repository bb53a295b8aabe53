"""As-run reports, sans IO: what aired per zone and local day (when, how long, at which level,
what was preempted, missed or skipped and why) and hours aired per level per zone per month,
from the broadcasts' stored rows and the schedule runs. CSV through the csv module, with every
cell made single-line (CR, LF, U+0085, U+2028/2029 would break a line-oriented reader).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable

from control.schedule.rules import LEVELS, zone_info

NOT_AIRED = ("missed", "skipped_busy", "refused", "interrupted", "disabled", "held")
COLUMNS = ("zone", "day", "start", "end", "aired_s", "level", "kind", "title", "state",
           "preempted", "reason", "broadcast", "schedule", "occurrence", "owner")


def _t(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def asrun_rows(broadcasts: Iterable[dict], runs: Iterable[dict], tz: str,
               zones: set[str] | None = None) -> list[dict]:
    """One row per zone and broadcast that aired (or schedule occurrence that did not)."""
    z = zone_info(tz)
    out: list[dict] = []
    for b in broadcasts:
        start = _t(b.get("started_at"))
        if start is None:
            continue  # never on air (refused, stopped while queued): not an as-run line
        end = _t(b.get("ended_at"))
        wall = (end - start).total_seconds() if end else None
        pos = b.get("position_s")
        aired = float(pos) if isinstance(pos, (int, float)) and pos > 0 else wall
        src = b.get("source") or {}
        preempted = bool(b.get("preempted_zones")) or bool(src.get("was_preempted"))
        for zone in b.get("reached_zones") or []:
            if zones is not None and zone not in zones:
                continue
            out.append({"zone": zone, "day": start.astimezone(z).date().isoformat(),
                        "start": b.get("started_at"), "end": b.get("ended_at"),
                        "aired_s": round(aired, 1) if aired is not None else None,
                        "level": b.get("level", ""), "kind": src.get("kind", ""),
                        "title": b.get("title") or src.get("title") or "",
                        "state": b.get("state", ""), "preempted": preempted,
                        "reason": b.get("error") or "", "broadcast": b.get("id"),
                        "schedule": src.get("schedule_id"),
                        "occurrence": src.get("occurrence"), "owner": b.get("owner", "")})
    for r in runs:
        if r.get("outcome") not in NOT_AIRED:
            continue
        at = _t(r["occurrence"])
        if at is None:
            continue
        for zone in r.get("zones") or []:
            if zones is not None and zone not in zones:
                continue
            out.append({"zone": zone, "day": at.astimezone(z).date().isoformat(),
                        "start": r["occurrence"], "end": None, "aired_s": 0.0,
                        "level": r.get("level", ""), "kind": "schedule",
                        "title": r.get("title", ""), "state": r["outcome"], "preempted": False,
                        "reason": r.get("reason", ""), "broadcast": r.get("broadcast_id"),
                        "schedule": r["schedule_id"], "occurrence": r["occurrence"],
                        "owner": ""})
    out.sort(key=lambda x: (x["zone"], x["start"] or ""))
    return out


def hours_per_level(rows: Iterable[dict], tz: str) -> dict[str, dict[str, dict[str, float]]]:
    """{zone: {month (YYYY-MM, local): {level: hours}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        if not r.get("aired_s"):
            continue
        month = str(r["day"])[:7]
        per = out.setdefault(r["zone"], {}).setdefault(month, {lv: 0.0 for lv in LEVELS})
        per[r["level"]] = per.get(r["level"], 0.0) + float(r["aired_s"]) / 3600.0
    for zone in out.values():
        for m in zone.values():
            for lv in m:
                m[lv] = round(m[lv], 4)
    return out


def _cell(v: object) -> str:
    s = "" if v is None else str(v)
    for ch in ("\r\n", "\r", "\n", "\x85", "\u2028", "\u2029"):
        s = s.replace(ch, " ")
    if s[:1] in ("=", "+", "-", "@") and not _numeric(s):  # spreadsheet formulas
        s = "'" + s
    return s


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def to_csv(rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in COLUMNS])
    return buf.getvalue()
