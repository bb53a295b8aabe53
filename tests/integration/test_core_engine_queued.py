"""Two emergencies on one zone (issue 13, finding 6j): the second waits, and the wait is said
(broadcast.queued naming the holder, its owner and the held zones) in the events stream and
the as-run log, through the API."""
from __future__ import annotations

import asyncio

import pytest

from tests.integration.test_control_policy import ADM, app_client, read_sse, user

pytestmark = pytest.mark.integration


async def test_a_second_emergency_on_a_busy_zone_says_who_holds_it(tmp_path):
    async with app_client(tmp_path) as c:
        off = await user(c, "an", "official", ["xa-a"])
        first = await (await c.post("/api/v1/broadcasts", json={
            "zones": ["xa-a"], "level": "emergency",
            "source": {"kind": "tone", "freq_hz": 500, "seconds": 30}}, headers=ADM)).json()
        r = await c.post("/api/v1/broadcasts", json={
            "zones": ["thon-a1"], "level": "emergency",
            "source": {"kind": "tone", "freq_hz": 900, "seconds": 5}}, headers=ADM)
        assert r.status == 201, await r.text()
        second = await r.json()
        # a priority item of the official's behind it; a normal one says nothing
        prio = await (await c.post("/api/v1/broadcasts", json={
            "zones": ["thon-a1"], "level": "priority",
            "source": {"kind": "tone", "freq_hz": 700, "seconds": 2}}, headers=off)).json()
        normal = await (await c.post("/api/v1/broadcasts", json={
            "zones": ["thon-a1"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 800, "seconds": 2}}, headers=off)).json()
        events: list = []
        async with asyncio.timeout(10):
            while len(events) < 2:
                await asyncio.sleep(0.1)
                r = await c.get("/api/v1/asrun?type=broadcast.queued", headers=ADM)
                events = (await r.json())["events"]
        by = {e["broadcast"]: e for e in events}
        assert set(by) == {second["id"], prio["id"]}, events
        q = by[second["id"]]
        assert q["holder"] == first["id"] and q["holder_owner"] == first["owner"] != ""
        assert q["zones"] == ["thon-a1"] and q["level"] == "emergency"
        assert first["id"] in q["reason"] and "emergency" in q["reason"]
        assert normal["id"] not in by
        sse = await read_sse(c, ADM)
        assert "event: broadcast.queued" in sse and second["id"] in sse
        # the official reads its own item's wait (its zone), with the holder named
        st = await (await c.get("/api/v1/asrun?type=broadcast.queued", headers=off)).json()
        assert prio["id"] in {e["broadcast"] for e in st["events"]}
        for b in (first, second, prio, normal):
            await c.delete(f"/api/v1/broadcasts/{b['id']}", headers=ADM)
