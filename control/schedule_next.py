"""The zones' next scheduled items for the e-boards, `/nghe` and the listening API (issue 18),
from the schedule room's calculator (`Schedules.airing`: what airs per zone in a window).

The boards and pages ask synchronously and often (every SSE tick, every page poll), the
calculator is async (it reads the schedule store): `get(zone)` answers from a per-zone cache and,
when the entry is older than `ttl_s` (or missing), refreshes it in the background; `refresh`
awaits one zone (the listen API's zone info calls it, so the first answer is complete). Every
schedule counts, whoever owns it: the public sees what its speakers will air.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from control.policy import Principal

log = logging.getLogger("loa.schedule")
UTC = dt.UTC
#: the server itself reading the schedule (an admin-role principal: every schedule)
READER = Principal("schedule-listing", "admin", via="bootstrap", display_name="Loa")

Airing = Callable[[Principal, dt.datetime, dt.datetime, str | None], Awaitable[list[dict]]]


def next_items(items: list[dict], now: dt.datetime, limit: int) -> list[dict[str, Any]]:
    """Pure: the calculator's occurrences → the next `limit` that have not started, in the
    shape the boards and AzuraCast's `playing_next` use (`at` UTC, `local_start` in the
    schedule's own time zone)."""
    t = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for i in items:
        if i["start"] < t:
            continue
        out.append({"title": i.get("title") or "", "at": i["start"], "end": i.get("end"),
                    "local_start": i.get("local_start"), "level": i.get("level"),
                    "schedule": i.get("schedule"), "kind": i.get("source")})
        if len(out) >= limit:
            break
    return out


class ScheduleNext:
    def __init__(self, airing: Airing, horizon_h: float = 24.0, limit: int = 5,
                 ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC)) -> None:
        self.airing = airing
        self.horizon = dt.timedelta(hours=horizon_h)
        self.limit = limit
        self.ttl_s = ttl_s
        self.clock = clock
        self.now = now
        self.cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._pending: dict[str, asyncio.Task[Any]] = {}

    def get(self, zone: str) -> list[dict[str, Any]]:
        hit = self.cache.get(zone)
        if (hit is None or self.clock() - hit[0] > self.ttl_s) and zone not in self._pending:
            try:
                task = asyncio.get_running_loop().create_task(self.refresh(zone))
            except RuntimeError:   # no loop: nothing to refresh with
                return hit[1] if hit else []
            self._pending[zone] = task
            task.add_done_callback(lambda _t: self._pending.pop(zone, None))
        return hit[1] if hit else []

    async def refresh(self, zone: str) -> list[dict[str, Any]]:
        now = self.now()
        try:
            items = await self.airing(READER, now, now + self.horizon, zone)
        except Exception as e:   # an unknown zone, a locked store: keep what was known
            log.debug("next items of %s: %s", zone, e)
            hit = self.cache.get(zone)
            return hit[1] if hit else []
        out = next_items(items, now, self.limit)
        self.cache[zone] = (self.clock(), out)
        return out

    async def ensure(self, zone: str) -> list[dict[str, Any]]:
        """The zone's items, awaited when the cache has none or stale ones."""
        hit = self.cache.get(zone)
        if hit is not None and self.clock() - hit[0] <= self.ttl_s:
            return hit[1]
        return await self.refresh(zone)

    def invalidate(self) -> None:
        """Schedules changed: the next `get` of every zone asks again."""
        self.cache.clear()
