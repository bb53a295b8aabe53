"""The replay archive: every finished broadcast at normal level or above, kept as Ogg/Opus made
from the packets that aired (no re-encode), with what people search it by.

`ArchiveRecorder` is a `streamer.outputs.listen.PacketConsumer`. A broadcast's zones do not all
hear the same thing: one may be preempted for a while (it hears the alert, then a fork of the
broadcast resumed a little before where it stopped) while the others go on. So a recording keeps
*tracks*: zones whose audio of the broadcast has been the same so far share one track and one
file, made from the packets of one of them (its followed zone) through the listening hub's ring.
Each pump the recorder looks at what every zone of the broadcast hears now (the engine's zone
status: a programme id per zone; zones with equal ids hear byte-identical packets); zones that
now hear another of the broadcast's programmes than their track's followed zone, or that no
longer hear it while it does (or the reverse), part: they get a track of their own, starting
as a copy of the file so far, and their own followed zone. What is not this broadcast (another
broadcast, silence) leaves a gap, as it did on air. Files go to `<dir>/YYYY/MM/DD/<id>.ogg` as
packets come (a one-hour live talk never sits in memory). When the broadcast ends each track
that aired something gets its end page and an entry in `<dir>/index.jsonl` whose `zones` are the
zones whose audio it is: the track of the most zones (on a tie the oldest) keeps the broadcast's
id, others are
`<id>~2`, `<id>~3`... (`broadcast` and `broadcast_zones` name the broadcast and all its zones).
A split is seen at a pump (every 0.2 s): the zones that part keep what aired up to the previous
pump and, of that pump's packets, those of the programme they hear now; so at a split at most
one pump of audio can be missing from the parting zones' file, never audio they did not air.
`retention` (pure) says which entries go, by age and by total size.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from streamer.outputs.ogg import FRAME_GRANULE, OggOpusPager
from streamer.port import ZoneSnapshot
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
    #: the broadcast this is (its id; an entry written before tracks existed: its own id)
    broadcast: str = ""
    #: every zone the broadcast reached (`zones`: those whose audio this file is)
    broadcast_zones: list[str] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d.pop("created")
        d["broadcast"] = self.broadcast or self.id
        d["broadcast_zones"] = self.broadcast_zones or list(self.zones)
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


@dataclass(eq=False)
class _Track:
    """Zones whose audio of one broadcast has been the same so far, and its file."""
    rec: _Recording
    zones: list[str]
    follow: str           # the zone whose packets are written
    f: BinaryIO
    rel: str
    pager: OggOpusPager
    packets: int = 0


@dataclass(eq=False)
class _Recording:
    id: str
    zones: list[str]
    started: float
    programs: set[int] = field(default_factory=set)
    tracks: list[_Track] = field(default_factory=list)
    ending: bool = False


class ArchiveRecorder:
    """Recordings in progress (see module doc). `zone_status()` -> the engine's zone status
    (`EnginePort.zone_status`: what each zone hears, the first of `on_air` winning, and its
    programme id); `describe(id)` -> the broadcast's snapshot fields at its end;
    `follow(zone, consumer)` / `unfollow` attach to the listening hub."""

    def __init__(self, index: ArchiveIndex,
                 zone_status: Callable[[], Mapping[str, ZoneSnapshot]],
                 describe: Callable[[str], Mapping[str, Any] | None],
                 follow: Callable[[str, Any], None], unfollow: Callable[[str, Any], None],
                 max_age_s: float = 90 * 86400, max_bytes: int = 2 * 1024 ** 3) -> None:
        self.index = index
        self.zone_status = zone_status
        self.describe = describe
        self.follow = follow
        self.unfollow = unfollow
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._by_zone: dict[str, list[_Track]] = {}   # followed zone -> its tracks
        self._by_id: dict[str, _Recording] = {}
        self.errors = 0
        self.splits = 0

    def started(self, broadcast_id: str, level: str, zones: Iterable[str]) -> None:
        if level not in ARCHIVED_LEVELS or broadcast_id in self._by_id:
            return
        zs = sorted(set(zones))
        if not zs:
            return
        rec = _Recording(broadcast_id, zs, time.time())
        self._by_id[broadcast_id] = rec
        self._new_track(rec, zs, None)

    def _new_track(self, rec: _Recording, zones: list[str], parent: _Track | None) -> _Track:
        """A track for `zones`: a new file, or a copy of `parent`'s so far."""
        day = time.strftime("%Y/%m/%d", time.gmtime(rec.started))
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in rec.id)[:80]
        rel = f"{day}/{safe}-{secrets.token_hex(3)}.ogg"
        path = self.index.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if parent is None:
            pager = OggOpusPager(secrets.randbits(32), rec.id)
            f = open(path, "wb")
            f.write(pager.headers)
            packets = 0
        else:
            parent.f.flush()
            shutil.copyfile(self.index.root / parent.rel, path)
            pager = copy.copy(parent.pager)
            f = open(path, "ab")
            packets = parent.packets
        tr = _Track(rec, zones, zones[0], f, rel, pager, packets)
        rec.tracks.append(tr)
        first = tr.follow not in self._by_zone
        self._by_zone.setdefault(tr.follow, []).append(tr)
        if first:
            self.follow(tr.follow, self)
        return tr

    def on_packets(self, zone: str, first_k: int, packets: list[bytes | None],
                   programs: list[int | None]) -> None:
        tracks = self._by_zone.get(zone)
        if not tracks:
            return
        status = self.zone_status()
        for tr in list(tracks):
            rec = tr.rec
            if rec.id not in self._by_id:
                continue
            # what each zone of the track hears now, as far as this broadcast goes: one of its
            # programmes (learnt where it is on air first), or None (anything else)
            now: dict[str, int | None] = {}
            for z in tr.zones:
                st = status.get(z)
                prog = st.program if st is not None else None
                if st is not None and st.on_air and st.on_air[0].broadcast == rec.id \
                        and prog is not None:
                    rec.programs.add(prog)
                now[z] = prog
            mine = rec.programs
            ref = now[tr.follow] if now[tr.follow] in mine else None
            parting: dict[int | None, list[str]] = {}
            for z in tr.zones:
                p = now[z] if now[z] in mine else None
                if p != ref:
                    parting.setdefault(p, []).append(z)
            for p, zs in parting.items():
                # these zones' audio differs from here: a copy of the file so far, and of this
                # pump's packets those of the programme they hear now
                new = self._new_track(rec, zs, tr)
                self.splits += 1
                if p is not None:
                    self._write(new, [pk for pk, prog in zip(packets, programs, strict=True)
                                      if pk is not None and prog == p])
            if parting:
                gone = {z for zs in parting.values() for z in zs}
                tr.zones = [z for z in tr.zones if z not in gone]
            self._write(tr, [pk for pk, prog in zip(packets, programs, strict=True)
                             if pk is not None and prog is not None and prog in mine])

    def _write(self, tr: _Track, packets: list[bytes]) -> None:
        if packets:
            tr.f.write(tr.pager.pages(packets))
            tr.packets += len(packets)

    def ended(self, broadcast_id: str) -> None:
        """The broadcast finished or was stopped: call again after the pump has delivered the
        last packets (`finish`)."""
        rec = self._by_id.get(broadcast_id)
        if rec is not None:
            rec.ending = True

    def finish(self, broadcast_id: str) -> ArchiveEntry | None:
        """Close the broadcast's files and index those that hold audio; the entry that keeps
        the broadcast's id (the others are in the index too), None if nothing aired."""
        entries = self.finish_all(broadcast_id)
        return entries[0] if entries else None

    def finish_all(self, broadcast_id: str) -> list[ArchiveEntry]:
        rec = self._by_id.pop(broadcast_id, None)
        if rec is None:
            return []
        for tr in rec.tracks:
            tracks = self._by_zone.get(tr.follow, [])
            if tr in tracks:
                tracks.remove(tr)
            if not tracks and tr.follow in self._by_zone:
                del self._by_zone[tr.follow]
                self.unfollow(tr.follow, self)
            tr.f.write(tr.pager.end())
            tr.f.close()
        aired = []
        for tr in rec.tracks:
            if tr.packets == 0:   # never aired in these zones (refused, held, cut at once)
                (self.index.root / tr.rel).unlink(missing_ok=True)
            else:
                aired.append(tr)
        if not aired:
            return []
        order = {id(t): i for i, t in enumerate(rec.tracks)}
        aired.sort(key=lambda t: (-len(t.zones), order[id(t)]))   # most zones, then oldest
        d = dict(self.describe(broadcast_id) or {})
        everywhere = sorted(set(d.get("zones") or ()) | {z for t in aired for z in t.zones})
        out = []
        for i, tr in enumerate(aired):
            entry = ArchiveEntry(
                id=broadcast_id if i == 0 else f"{broadcast_id}~{i + 1}",
                title=str(d.get("title") or broadcast_id), zones=sorted(tr.zones),
                level=str(d.get("level") or ""), kind=str(d.get("kind") or ""),
                started_at=str(d.get("started_at") or utc_iso(rec.started)),
                duration_s=round(tr.packets * FRAME_GRANULE / 48_000, 2),
                size=(self.index.root / tr.rel).stat().st_size, path=tr.rel,
                text=str(d.get("text") or ""), risk_level=d.get("risk_level"),
                created=time.time(), broadcast=broadcast_id, broadcast_zones=everywhere)
            self.index.add(entry)
            out.append(entry)
        self.index.apply_retention(time.time(), self.max_age_s, self.max_bytes)
        return out

    def ending(self) -> list[str]:
        return [r.id for r in self._by_id.values() if r.ending]

    def close(self) -> None:
        for bid in list(self._by_id):
            try:
                self.finish(bid)
            except OSError:
                self.errors += 1
