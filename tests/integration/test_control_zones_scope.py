"""GET /zones, /zones/{id} and /groups filtered by the reader's scope (issue 13, finding 6k):
a scoped official sees its zones and the names of those above them, never another commune,
and unicast destinations (receivers' addresses) only to roles that read receivers."""
from __future__ import annotations

import pytest

from tests.integration.test_control_policy import ADM, app_client, user

pytestmark = pytest.mark.integration

ZONES = [{"id": "tinh", "name": "Tỉnh"}, {"id": "xa-a", "parent": "tinh", "name": "Xã A"},
         {"id": "thon-a1", "parent": "xa-a", "name": "Thôn A1",
          "unicast": ["10.1.1.1:5004"]},
         {"id": "thon-a2", "parent": "xa-a", "unicast": ["10.1.1.2:5004"]},
         {"id": "xa-b", "parent": "tinh", "unicast": ["10.9.9.9:5004"]},
         {"id": "thon-b1", "parent": "xa-b"}]
GROUPS = [{"id": "coast", "zones": ["thon-a1", "xa-b"]}, {"id": "north", "zones": ["xa-b"]}]


async def test_zone_reads_follow_the_readers_scope(tmp_path):
    async with app_client(tmp_path, zones=ZONES, groups=GROUPS) as c:
        off = await user(c, "an", "official", ["thon-a1"])
        op_a = await user(c, "anh", "operator", ["xa-a"])
        view = await user(c, "xem", "viewer", [])

        async def get(path, h):
            r = await c.get(path, headers=h)
            return r.status, await r.json()

        # the official of thon-a1: its village; xa-a and tinh by name only; not thon-a2, xa-b
        st, body = await get("/api/v1/zones", off)
        assert st == 200
        rows = {z["id"]: z for z in body["zones"]}
        assert set(rows) == {"thon-a1", "xa-a", "tinh"}
        assert rows["thon-a1"]["name"] == "Thôn A1" and rows["thon-a1"]["unicast"] == []
        assert rows["xa-a"] == {"id": "xa-a", "name": "Xã A", "parent": "tinh", "level": "",
                                "code": "", "ancestor": True}
        text = str(body)
        assert "10.1.1" not in text and "10.9.9.9" not in text and "xa-b" not in text
        assert body["groups"] == [{"id": "coast", "zones": ["thon-a1"]}]
        assert (await get("/api/v1/zones/xa-b", off))[0] == 404
        assert (await get("/api/v1/zones/thon-a2", off))[0] == 404
        st, one = await get("/api/v1/zones/thon-a1", off)
        assert st == 200 and one["unicast"] == [] and one["children"] == []
        st, anc = await get("/api/v1/zones/xa-a", off)
        assert st == 200 and anc.get("ancestor") and "children" not in anc and "unicast" not in anc
        st, groups = await get("/api/v1/groups", off)
        assert st == 200 and "xa-b" not in str(groups) and "north" not in str(groups)
        # an operator of xa-a (reads receivers): its commune with destinations, not xa-b's
        st, body = await get("/api/v1/zones", op_a)
        rows = {z["id"]: z for z in body["zones"]}
        assert set(rows) == {"tinh", "xa-a", "thon-a1", "thon-a2"}
        assert rows["thon-a2"]["unicast"] == ["10.1.1.2:5004"] and "10.9.9.9" not in str(body)
        st, one = await get("/api/v1/zones/xa-a", op_a)
        assert st == 200 and sorted(one["children"]) == ["thon-a1", "thon-a2"]
        # a province-wide viewer and the admin read everything, destinations included
        for h in (view, ADM):
            st, body = await get("/api/v1/zones", h)
            rows = {z["id"]: z for z in body["zones"]}
            assert set(rows) == {z["id"] for z in ZONES}
            assert rows["xa-b"]["unicast"] == ["10.9.9.9:5004"]
            assert {g["id"] for g in body["groups"]} == {"coast", "north"}
            assert (await get("/api/v1/zones/xa-b", h))[0] == 200
