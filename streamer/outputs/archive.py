"""The replay archive: every finished broadcast at normal level or above, kept as Ogg/Opus made
from the packets that aired (no re-encode), with what people search it by.

`ArchiveRecorder` is a `streamer.outputs.listen.PacketConsumer`: when a broadcast starts it
follows one zone the broadcast reaches (its reference zone) through the listening hub's ring,
learns which programme hashes are that broadcast (from the engine's zone status, sampled each
pump) and writes those packets as Ogg pages to `<dir>/YYYY/MM/DD/<id>.ogg` as they come (a
one-hour live talk never sits in memory). A preemption in the reference zone leaves a gap, as
it did on air. When the broadcast ends the file gets its end page and an entry in
`<dir>/index.jsonl`. `retention` (pure) says which entries go, by age and by total size.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from streamer.outputs.ogg import FRAME_GRANULE, OggOpusPager
from streamer.timefmt import utc_iso

__all__ = ["ArchiveEntry", "ArchiveIndex", "ArchiveRecorder", "retention", "ARCHIVED_LEVELS"]

log = logging.getLogger("loa.archive")
ARCHIVED_LEVELS = frozenset({"normal", "priority", "emergency"})


@dataclass
class ArchiveEntry:
    id: str
    title: str
    zones: list[str]
    level: str
    kind: str
    started_at: str
    duration_s: float
    size: int
    path: str             # relative to the archive directory
    text: str = ""
    risk_level: int | None = None
    created: float = 0.0  # wall clock (s) when archived: retention by age

    def to_api(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d.pop("created")
        d["url"] = f"/api/v1/archive/{self.id}.ogg"
        return d


def retention(entries: Iterable[ArchiveEntry], now: float, max_age_s: float, max_bytes: int
              ) -> tuple[list[ArchiveEntry], list[ArchiveEntry]]:
    """(kept, dropped): entries older than max_age_s go, then the oldest until the rest fit in
    max_bytes."""
    keep: list[ArchiveEntry] = []
    drop: list[ArchiveEntry] = []
    for e in sorted(entries, key=lambda e: e.created):
        (drop if now - e.created > max_age_s else keep).append(e)
    total = sum(e.size for e in keep)
    while keep and total > max_bytes:
        e = keep.pop(0)
        total -= e.size
        drop.append(e)
    return keep, drop


class ArchiveIndex:
    """The entries, in memory, with the file they are kept in (one JSON object a line)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "index.jsonl"
        self.entries: dict[str, ArchiveEntry] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = ArchiveEntry(**json.loads(line))
                    except (ValueError, TypeError):
                        continue   # a torn last line after a crash
                    self.entries[e.id] = e
        except OSError:
            pass

    def add(self, e: ArchiveEntry) -> None:
        self.entries[e.id] = e
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")

    def apply_retention(self, now: float, max_age_s: float, max_bytes: int) -> int:
        keep, drop = retention(self.entries.values(), now, max_age_s, max_bytes)
        if not drop:
            return 0
        for e in drop:
            try:
                (self.root / e.path).unlink()
            except OSError:
                pass
        self.entries = {e.id: e for e in keep}
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for e in keep:
                f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)
        return len(drop)

    def search(self, zones: set[str] | None = None, date: str | None = None,
               text: str | None = None, limit: int = 100) -> list[ArchiveEntry]:
        """Newest first; `zones`: any of them; `date`: YYYY-MM-DD (UTC) prefix of the start;
        `text`: case-insensitive in the title or the text."""
        needle = text.casefold() if text else None
        out = []
        for e in sorted(self.entries.values(), key=lambda e: e.started_at, reverse=True):
            if zones is not None and not zones.intersection(e.zones):
                continue
            if date and not e.started_at.startswith(date):
                continue
            if needle and needle not in e.title.casefold() and needle not in e.text.casefold():
                continue
            out.append(e)
            if len(out) >= limit:
                break
        return out

    def file(self, entry_id: str) -> Path | None:
        e = self.entries.get(entry_id)
        return self.root / e.path if e is not None else None


@dataclass
class _Recording:
    id: str
    zone: str
    started: float
    f: BinaryIO
    rel: str
    pager: OggOpusPager
    programs: set[int] = field(default_factory=set)
    packets: int = 0
    ending: bool = False


class ArchiveRecorder:
    """Recordings in progress (see module doc). `program_of(zone)` -> (broadcast id on air
    first there, its programme hash) from the engine's zone status; `describe(id)` -> the
    broadcast's snapshot fields at its end; `follow(zone, consumer)` / `unfollow` attach to
    the listening hub."""

    def __init__(self, index: ArchiveIndex, program_of: Callable[[str], tuple[str, int] | None],
                 describe: Callable[[str], Mapping[str, Any] | None],
                 follow: Callable[[str, Any], None], unfollow: Callable[[str, Any], None],
                 max_age_s: float = 90 * 86400, max_bytes: int = 2 * 1024 ** 3) -> None:
        self.index = index
        self.program_of = program_of
        self.describe = describe
        self.follow = follow
        self.unfollow = unfollow
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._by_zone: dict[str, list[_Recording]] = {}
        self._by_id: dict[str, _Recording] = {}
        self.errors = 0

    def started(self, broadcast_id: str, level: str, zones: Iterable[str]) -> None:
        if level not in ARCHIVED_LEVELS or broadcast_id in self._by_id:
            return
        zs = sorted(zones)
        if not zs:
            return
        zone = zs[0]
        now = time.time()
        day = time.strftime("%Y/%m/%d", time.gmtime(now))
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in broadcast_id)[:80]
        rel = f"{day}/{safe}-{secrets.token_hex(3)}.ogg"
        path = self.index.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pager = OggOpusPager(secrets.randbits(32), broadcast_id)
        f = open(path, "wb")
        f.write(pager.headers)
        rec = _Recording(broadcast_id, zone, now, f, rel, pager)
        self._by_id[broadcast_id] = rec
        first = zone not in self._by_zone
        self._by_zone.setdefault(zone, []).append(rec)
        if first:
            self.follow(zone, self)

    def on_packets(self, zone: str, first_k: int, packets: list[bytes | None],
                   programs: list[int | None]) -> None:
        recs = self._by_zone.get(zone)
        if not recs:
            return
        now_on = self.program_of(zone)
        for rec in recs:
            if now_on is not None and now_on[0] == rec.id:
                rec.programs.add(now_on[1])
            mine = [p for p, prog in zip(packets, programs, strict=True)
                    if p is not None and prog is not None and prog in rec.programs]
            if mine:
                rec.f.write(rec.pager.pages(mine))
                rec.packets += len(mine)

    def ended(self, broadcast_id: str) -> None:
        """The broadcast finished or was stopped: call again after the pump has delivered the
        last packets (`finish`)."""
        rec = self._by_id.get(broadcast_id)
        if rec is not None:
            rec.ending = True

    def finish(self, broadcast_id: str) -> ArchiveEntry | None:
        rec = self._by_id.pop(broadcast_id, None)
        if rec is None:
            return None
        recs = self._by_zone.get(rec.zone, [])
        if rec in recs:
            recs.remove(rec)
        if not recs:
            self._by_zone.pop(rec.zone, None)
            self.unfollow(rec.zone, self)
        rec.f.write(rec.pager.end())
        rec.f.close()
        path = self.index.root / rec.rel
        if rec.packets == 0:   # never aired in its reference zone (refused, cut at once)
            path.unlink(missing_ok=True)
            return None
        d = dict(self.describe(broadcast_id) or {})
        entry = ArchiveEntry(
            id=broadcast_id, title=str(d.get("title") or broadcast_id),
            zones=list(d.get("zones") or [rec.zone]), level=str(d.get("level") or ""),
            kind=str(d.get("kind") or ""), started_at=str(d.get("started_at") or
                                                         utc_iso(rec.started)),
            duration_s=round(rec.packets * FRAME_GRANULE / 48_000, 2),
            size=path.stat().st_size, path=rec.rel, text=str(d.get("text") or ""),
            risk_level=d.get("risk_level"), created=time.time())
        self.index.add(entry)
        self.index.apply_retention(time.time(), self.max_age_s, self.max_bytes)
        return entry

    def ending(self) -> list[str]:
        return [r.id for r in self._by_id.values() if r.ending]

    def close(self) -> None:
        for bid in list(self._by_id):
            try:
                self.finish(bid)
            except OSError:
                self.errors += 1
