"""Who may see and touch what, on a real app on loopback (issue 13, finding 6): ownership by
identity, reserved principal names, read scope."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "policy-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ZONES = [{"id": "tinh"}, {"id": "xa-a", "parent": "tinh"}, {"id": "thon-a1", "parent": "xa-a"},
         {"id": "xa-b", "parent": "tinh"}]


@contextlib.asynccontextmanager
async def app_client(tmp_path, **settings: Any) -> AsyncIterator[TestClient]:
    from control.app import create_app
    from control.settings import Settings
    kw: dict[str, Any] = {"data_dir": tmp_path, "admin_token": ADMIN_TOKEN, "zones": ZONES,
                          "send_port": 0}
    kw.update(settings)
    app = create_app(Settings(**kw))
    async with TestClient(TestServer(app)) as c:
        yield c


async def user(c: TestClient, name: str, role: str, scope: list[str]) -> dict[str, str]:
    r = await c.post("/api/v1/users", json={"username": name, "role": role, "scope": scope},
                     headers=ADM)
    assert r.status == 201, await r.text()
    u = await r.json()
    t = await (await c.post(f"/api/v1/users/{u['id']}/tokens", json={}, headers=ADM)).json()
    return {"Authorization": f"Bearer {t['token']}"}


TONE = {"kind": "tone", "freq_hz": 440, "seconds": 30}


@pytest.mark.parametrize("name", ["admin-token", "ADMIN-TOKEN", "local-bootstrap", "studio"])
async def test_builtin_and_configured_principal_names_are_reserved(tmp_path, name):
    from tests.integration.conftest import free_udp_ports
    ingest = [{"port": free_udp_ports(1)[0], "zones": ["xa-b"], "name": "studio", "level": "priority"}]
    async with app_client(tmp_path, rtp_ingest=ingest) as c:
        r = await c.post("/api/v1/users", json={"username": name, "role": "official",
                                                "scope": ["thon-a1"]}, headers=ADM)
        assert r.status == 422, await r.text()
        assert (await r.json())["error"]["code"] == "reserved_username"


async def test_an_admin_token_emergency_is_not_stopped_by_a_namesake_account(tmp_path):
    """The database may hold a user named like a built-in principal (made before names were
    reserved): it owns nothing the built-in principal started."""
    async with app_client(tmp_path) as c:
        r = await c.post("/api/v1/broadcasts", json={"zones": ["thon-a1"], "level": "emergency",
                                                     "source": TONE}, headers=ADM)
        assert r.status == 201, await r.text()
        b = await r.json()
        assert b["owner"] == "admin-token" and b["source"]["owner_id"] == "admin-token:admin-token"
        db = c.server.app["loa"].db
        uid = await db.insert_user("admin-token", "official", ["thon-a1"], None, "")
        t = await (await c.post(f"/api/v1/users/{uid}/tokens", json={}, headers=ADM)).json()
        namesake = {"Authorization": f"Bearer {t['token']}"}
        r = await c.delete(f"/api/v1/broadcasts/{b['id']}", headers=namesake)
        assert r.status == 403, await r.text()
        # ...while an official stops what it started itself
        off = await user(c, "an", "official", ["thon-a1"])
        r = await c.post("/api/v1/broadcasts", json={"zones": ["thon-a1"], "level": "priority",
                                                     "source": TONE}, headers=off)
        own = await r.json()
        assert r.status == 201 and own["source"]["owner_id"].startswith("user:")
        assert (await c.delete(f"/api/v1/broadcasts/{own['id']}", headers=off)).status == 200
        await c.delete(f"/api/v1/broadcasts/{b['id']}", headers=ADM)
        await asyncio.sleep(0)


async def read_sse(c: TestClient, headers: dict[str, str]) -> str:
    """The event stream's replay (since=0) up to its `: connected` mark."""
    r = await c.get("/api/v1/events?since=0", headers=headers)
    assert r.status == 200
    buf = b""
    async with asyncio.timeout(10):
        while b": connected" not in buf:
            buf += await r.content.readany()
    r.close()
    return buf.decode()


async def test_every_read_is_filtered_by_the_readers_scope(tmp_path):
    """An official scoped to thon-a1 (refused GET /receivers) and an operator scoped to xa-b
    read only what concerns their zones, through every read route."""
    async with app_client(tmp_path) as c:
        hub = c.server.app["loa"].hub
        off = await user(c, "an", "official", ["thon-a1"])
        op_b = await user(c, "binh", "operator", ["xa-b"])
        view = await user(c, "xem", "viewer", [])
        for rid, zone in [("rx-a1", "thon-a1"), ("rx-b", "xa-b")]:
            r = await c.post("/api/v1/receivers", json={"id": rid, "zone": zone,
                                                        "address": "127.0.0.1:9"}, headers=ADM)
            assert r.status == 201, await r.text()
        r = await c.post("/api/v1/broadcasts", json={"zones": ["xa-b"], "level": "normal",
                                                     "source": TONE}, headers=ADM)
        far = (await r.json())["id"]
        r = await c.post("/api/v1/broadcasts", json={"zones": ["xa-a"], "level": "normal",
                                                     "source": TONE}, headers=ADM)
        near = (await r.json())["id"]
        # what the receiver registry publishes (a receiver coming online: id, zone, address)
        for rid, zone, addr in [("rx-a1", "thon-a1", "10.0.0.1:5004"),
                                ("rx-b", "xa-b", "10.9.9.9:5004")]:
            hub.publish({"type": "receiver.online", "time": "2025-07-01T00:00:00Z",
                         "receiver": rid, "zone": zone, "address": addr})
        hub.publish({"type": "receiver.rejected", "time": "2025-07-01T00:00:00Z",
                     "receiver": "rx-b", "reason": "bad signature", "address": "10.9.9.9:1"})
        await asyncio.sleep(0.3)  # the as-run writer

        async def get(path, h):
            r = await c.get(path, headers=h)
            return r.status, await r.json()

        # the official: the broadcast reaching its village, no receiver anything
        st, body = await get("/api/v1/asrun", off)
        text = str(body)
        assert st == 200 and near in text and far not in text
        assert "rx-" not in text and "10.9.9.9" not in text and "10.0.0.1" not in text
        sse = await read_sse(c, off)
        assert near in sse and far not in sse and "rx-" not in sse and "10.9.9.9" not in sse
        ids = {b["id"] for b in (await get("/api/v1/broadcasts", off))[1]["broadcasts"]}
        assert near in ids and far not in ids
        ids = {b["id"] for b in (await get("/api/v1/broadcasts?past=1", off))[1]["broadcasts"]}
        assert far not in ids
        assert (await get(f"/api/v1/broadcasts/{far}", off))[0] == 404
        assert (await get(f"/api/v1/broadcasts/{near}", off))[0] == 200
        assert (await get(f"/api/v1/broadcasts/{far}/delivery", off))[0] == 403
        # the operator of xa-b: its receiver and broadcast, nobody else's
        st, body = await get("/api/v1/asrun", op_b)
        text = str(body)
        assert far in text and "rx-b" in text and near not in text and "rx-a1" not in text
        assert "bad signature" not in text  # names no zone: for readers of everything only
        sse = await read_sse(c, op_b)
        assert "rx-b" in sse and "rx-a1" not in sse and near not in sse
        rx = {r["id"] for r in (await get("/api/v1/receivers", op_b))[1]["receivers"]}
        assert rx == {"rx-b"}
        assert (await get("/api/v1/receivers/rx-a1", op_b))[0] == 404
        assert (await get(f"/api/v1/broadcasts/{near}/delivery", op_b))[0] == 404
        st, rep = await get(f"/api/v1/broadcasts/{far}/delivery", op_b)
        assert st == 200 and [r["receiver"] for r in rep["receivers"]] == ["rx-b"]
        # a viewer given no scope and the admin read everything
        for h in (view, ADM):
            text = str((await get("/api/v1/asrun", h))[1])
            assert near in text and far in text and "rx-a1" in text and "rx-b" in text
        assert "bad signature" in str((await get("/api/v1/asrun", ADM))[1])


async def test_anonymous_reads_of_non_public_data_are_refused(tmp_path):
    from tests.integration.conftest import free_udp_ports
    ingest = [{"port": free_udp_ports(1)[0], "zones": ["xa-b"], "name": "studio",
               "level": "priority"}]
    async with app_client(tmp_path, rtp_ingest=ingest) as c:
        off = await user(c, "an", "official", ["thon-a1"])
        op_b = await user(c, "binh", "operator", ["xa-b"])
        for path in ("/api/v1/live/ingest/rtp", "/api/v1/asrun", "/api/v1/broadcasts",
                     "/api/v1/receivers", "/api/v1/events", "/api/v1/zones"):
            r = await c.get(path)
            assert r.status == 401, (path, r.status)
            r.close()
        assert (await c.get("/api/v1/live/ingest/rtp", headers=off)).status == 403
        r = await c.get("/api/v1/live/ingest/rtp", headers=op_b)
        assert r.status == 200 and len((await r.json())["rtp_ingest"]) == 1
        r = await c.get("/api/v1/live/ingest/rtp", headers=await user(c, "c", "operator", ["xa-a"]))
        assert r.status == 200 and (await r.json())["rtp_ingest"] == []


async def test_bootstrap_mode_refuses_cross_origin_writes_and_foreign_hosts(tmp_path):
    """No admin token, no user, loopback: requests from this machine act as admin, but only
    from this server's own origin and Host."""
    async with app_client(tmp_path, admin_token=None) as c:
        port = c.server.port
        host = f"127.0.0.1:{port}"
        start = {"zones": ["tinh"], "level": "emergency", "source": TONE}

        async def post(headers, **kw):
            r = await c.post("/api/v1/broadcasts", headers={"Host": host, **headers}, **kw)
            body = await r.json()
            if r.status == 201:
                await c.delete(f"/api/v1/broadcasts/{body['id']}", headers={"Host": host})
            return r.status, body
        import json as _json
        for origin in (f"http://127.0.0.2:{port}", f"http://localhost:{port + 1}", "null",
                       "http://evil.example"):
            st, body = await post({"Origin": origin}, json=start)
            assert st == 403 and body["error"]["code"] == "cross_origin", (origin, body)
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            st, body = await post({"Content-Type": ctype}, data=_json.dumps(start))
            assert st == 403, (ctype, body)
        for bad_host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}",
                         f"rebind.127.0.0.1.nip.io:{port}"):
            st, body = await post({"Host": bad_host}, json=start)
            assert st == 403, bad_host
            r = await c.get("/api/v1/zones", headers={"Host": bad_host})
            assert r.status in (401, 403), bad_host  # rebinding reads nothing either
            r.close()
        assert (await c.get("/api/v1/health", headers={"Host": "evil.example"})).status == 200
        # the server's own page, curl and the CLI still work
        assert (await post({"Origin": f"http://{host}"}, json=start))[0] == 201
        assert (await post({"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
                           json=start))[0] == 201
        assert (await post({}, json=start))[0] == 201


async def test_a_session_cookie_does_not_carry_a_cross_origin_write(tmp_path):
    async with app_client(tmp_path) as c:
        r = await c.post("/api/v1/users", json={"username": "an", "role": "official",
                                                "scope": ["thon-a1"], "password": "mat-khau-123"},
                         headers=ADM)
        assert r.status == 201
        r = await c.post("/api/v1/session", json={"username": "an", "password": "mat-khau-123"})
        assert r.status in (200, 201), await r.text()
        port = c.server.port
        body = {"zones": ["thon-a1"], "level": "priority", "source": TONE}
        # same site (another port on the same address), other origin: the cookie rides along
        r = await c.post("/api/v1/broadcasts", json=body,
                         headers={"Origin": f"http://127.0.0.1:{port + 1}"})
        assert r.status == 403 and (await r.json())["error"]["code"] == "cross_origin"
        r = await c.post("/api/v1/broadcasts", json=body,
                         headers={"Origin": f"http://127.0.0.1:{port}"})
        assert r.status == 201, await r.text()
