"""control/schedule_next.py: the next scheduled items of a zone from the schedule calculator's
occurrences (pure), and the cache that answers boards synchronously."""
from __future__ import annotations

import asyncio
import datetime as dt

from control.schedule_next import ScheduleNext, next_items

UTC = dt.UTC
NOW = dt.datetime(2026, 7, 1, 9, 30, tzinfo=UTC)


def occ(start: str, title: str) -> dict:
    return {"schedule": "s-" + title, "title": title, "level": "normal", "start": start,
            "end": start, "local_start": start, "zones": ["xa1"], "source": "tone"}


def test_next_items_skips_started_ones_and_keeps_order_and_limit():
    items = [occ("2026-07-01T09:00:00Z", "past"), occ("2026-07-01T09:30:00Z", "now"),
             occ("2026-07-01T10:00:00Z", "a"), occ("2026-07-01T22:00:00Z", "b"),
             occ("2026-07-02T05:00:00Z", "c")]
    got = next_items(items, NOW, 2)
    assert [g["title"] for g in got] == ["now", "a"]
    assert got[1]["at"] == "2026-07-01T10:00:00Z" and got[1]["kind"] == "tone"
    assert next_items(items, NOW + dt.timedelta(days=2), 5) == []


def test_cache_answers_at_once_and_refreshes_when_stale():
    calls: list[tuple] = []
    t = [0.0]

    async def airing(principal, frm, to, zone):
        calls.append((principal.role, frm, to, zone))
        return [occ("2026-07-01T10:00:00Z", f"n{len(calls)}")]

    async def run() -> None:
        sn = ScheduleNext(airing, horizon_h=24, ttl_s=30, clock=lambda: t[0], now=lambda: NOW)
        assert sn.get("xa1") == []                      # cold: answers now, refreshes behind
        await asyncio.sleep(0)
        assert [i["title"] for i in sn.get("xa1")] == ["n1"]
        assert calls[0] == ("admin", NOW, NOW + dt.timedelta(hours=24), "xa1")
        t[0] = 10.0
        assert [i["title"] for i in await sn.ensure("xa1")] == ["n1"]   # fresh: no call
        t[0] = 40.0
        assert [i["title"] for i in await sn.ensure("xa1")] == ["n2"]   # stale: asks again
        assert len(calls) == 2

        async def broken(*a):
            raise RuntimeError("store locked")
        sn.airing = broken
        t[0] = 100.0
        assert [i["title"] for i in await sn.ensure("xa1")] == ["n2"]   # keeps what it knew
    asyncio.run(run())
