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
    kw: dict[str, Any] = {"data_dir": tmp_path, "admin_token": ADMIN_TOKEN, "zones": ZONES}
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
