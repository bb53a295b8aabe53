"""What is on air at the leader, kept in Redis so that a standby origin can carry it on.

The chosen state model (issue 19): the broadcast *records* stay in the database, which a standby
origin reaches on the same data directory (shared storage: see control/cluster.py); what is on
air *now* is in Redis, one small hash per broadcast (`Keys.onair(id)`, indexed by
`Keys.onair_index`): the engine's `StartBroadcast` as data (`command_to_dict`), when it went on
air at offset 0 (`start_ms`, wall clock) and the leader's fencing token. The leader rewrites
the whole set every second with a TTL (`ONAIR_TTL_S`), so a Redis that restarted empty has it
again a second later, and deletes an entry when its broadcast ends. Why Redis and not only the
database: the database's rows lag behind the engine (the as-run writer batches) and are
written by the origin that may just have died; the leader's Redis entries are at most a second
old.

A standby that takes the lease resumes every entry under the same broadcast id at the offset it
has reached by now (`plan_takeover`, pure): its position when the leader last looked plus the
time since (a broadcast paused under a preemption resumes where it was paused: what preempted
it goes on too if it is carried over, and live talk is not); now − start without a position;
one that had not gone on air yet (queued) is submitted as it was. Live talk is not kept: the
phone's WebRTC connection ends with the origin that had it (control/cluster.py says why).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from streamer.cluster.keys import ONAIR_TTL_S, Keys
from streamer.ingest.catalogue import duration_of
from streamer.port import LiveAudio, StartBroadcast, command_from_dict

__all__ = ["OnAirEntry", "plan_takeover", "OnAirBook"]


@dataclasses.dataclass
class OnAirEntry:
    """One broadcast the leader has on air (start_ms None: queued, not on air yet)."""
    cmd: dict[str, Any]
    start_ms: int | None = None
    fence: int = 0
    #: where it was in its source (s) when the leader last looked (`pos_ms`, unix ms), and
    #: whether it was paused then (preempted in every zone, e.g. under live talk)
    pos: float | None = None
    pos_ms: int | None = None
    paused: bool = False

    def fields(self) -> dict[str, str]:
        out = {"cmd": json.dumps(self.cmd, separators=(",", ":")), "fence": str(self.fence)}
        if self.start_ms is not None:
            out["start_ms"] = str(self.start_ms)
        if self.pos is not None and self.pos_ms is not None:
            out.update(pos=f"{self.pos:.3f}", pos_ms=str(self.pos_ms),
                       paused="1" if self.paused else "0")
        return out

    @classmethod
    def parse(cls, raw: Mapping[Any, Any]) -> OnAirEntry:
        d = {(k.decode() if isinstance(k, bytes) else str(k)):
             (v.decode() if isinstance(v, bytes) else str(v)) for k, v in raw.items()}
        cmd = json.loads(d["cmd"])
        if not isinstance(cmd, dict):
            raise ValueError("cmd is not an object")
        start = d.get("start_ms")
        pos, pos_ms = d.get("pos"), d.get("pos_ms")
        return cls(cmd, int(start) if start else None, int(d.get("fence") or 0),
                   float(pos) if pos else None, int(pos_ms) if pos_ms else None,
                   d.get("paused") == "1")


def plan_takeover(entry: OnAirEntry, now_ms: int) -> tuple[StartBroadcast | None, str]:
    """The command that carries `entry` on at `now_ms` (wall clock), or None and why not."""
    try:
        cmd = command_from_dict(entry.cmd)
    except (ValueError, KeyError, TypeError) as e:
        return None, f"unreadable command: {e}"
    if not isinstance(cmd, StartBroadcast):
        return None, "not a start"
    if isinstance(cmd.source, LiveAudio):
        return None, "live audio is not carried over"
    if entry.start_ms is None:
        return cmd, "queued: submitted as it was"
    if entry.pos is not None and entry.pos_ms is not None:
        # where it was when the leader last looked, plus what has played since: nothing if it
        # was paused (what preempted it, live talk say, is not carried over: it goes on now)
        offset = entry.pos if entry.paused else entry.pos + max(0, now_ms - entry.pos_ms) / 1e3
    else:
        offset = max(0, now_ms - entry.start_ms) / 1000.0
    total = duration_of(cmd.source)
    if total is not None and offset >= total:
        return None, "it has played to its end by now"
    duration = cmd.duration_s
    if duration is not None:
        duration -= offset - cmd.offset_s
        if duration <= 0:
            return None, "its duration is over by now"
    return dataclasses.replace(cmd, offset_s=round(offset, 3), start_at=None,
                               duration_s=duration), f"resumed at {offset:.1f} s"


class OnAirBook:
    """The Redis side (redis.asyncio): `write` is the leader's whole set (replaces what was
    there), `read` what a new leader finds."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._written: set[str] = set()

    async def write(self, entries: Mapping[str, OnAirEntry]) -> None:
        k = self.keys
        ttl = int(ONAIR_TTL_S)
        pipe = self.redis.pipeline(transaction=True)
        for bid in self._written - set(entries):
            pipe.delete(k.onair(bid))
        pipe.delete(k.onair_index)
        for bid, e in entries.items():
            key = k.onair(bid)
            pipe.delete(key)
            pipe.hset(key, mapping=e.fields())
            pipe.expire(key, ttl)
        if entries:
            pipe.sadd(k.onair_index, *entries)
            pipe.expire(k.onair_index, ttl)
        await asyncio.wait_for(pipe.execute(), 2.0)
        self._written = set(entries)

    async def read(self) -> dict[str, OnAirEntry]:
        ids = [m.decode() if isinstance(m, bytes) else str(m)
               for m in await self.redis.smembers(self.keys.onair_index)]
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for bid in ids:
            pipe.hgetall(self.keys.onair(bid))
        out: dict[str, OnAirEntry] = {}
        for bid, raw in zip(ids, await pipe.execute(), strict=True):
            if not raw:
                continue
            try:
                out[bid] = OnAirEntry.parse(raw)
            except (ValueError, KeyError, TypeError):
                continue
        return out
