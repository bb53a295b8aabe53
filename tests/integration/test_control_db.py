"""Roles, credentials and the state layer, without a server."""
from __future__ import annotations

import json
import sqlite3

import pytest

from control import auth, policy
from control.db import Database
from control.errors import Conflict
from control.service import ControlState
from control.settings import load_settings
from streamer.zones import Zone, ZoneTree


def tree() -> ZoneTree:
    t = ZoneTree()
    for zid, parent in [("tinh", None), ("xa-a", "tinh"), ("thon-a1", "xa-a"), ("xa-b", "tinh")]:
        t.add(Zone(zid, parent=parent))
    return t


def P(role, scope=(), name="u"):
    return policy.Principal(name, role, 1, tuple(scope))


async def test_db_migrations_audit_append_only_and_interrupted(tmp_path):
    db = await Database(tmp_path / "s.db").open()
    from control.db import MIGRATIONS
    assert await db.migrate() == len(MIGRATIONS)  # applying again is a no-op
    await db.audit(actor="a", action="x", result="ok", status=200)
    await db.record_event({"type": "broadcast.created", "broadcast": "b1", "time": "t"},
                          {"id": "b1", "state": "playing", "level": "normal", "reached_zones": ["z"]})
    await db.close()
    raw = sqlite3.connect(tmp_path / "s.db")
    for sql in ("UPDATE audit SET actor='b'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute(sql)
    raw.close()
    db = await Database(tmp_path / "s.db").open()
    assert await db.mark_interrupted() == ["b1"]
    assert (await db.broadcast("b1"))["state"] == "interrupted"
    assert await db.mark_interrupted() == []
    assert [e["type"] for e in await db.asrun()] == ["broadcast.created", "broadcast.interrupted"]
    assert len(await db.audit_log()) == 1
    await db.close()


async def test_state_config_upsert_and_zone_rules(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[zones]]\nid = "a"\nname = "A"\n[[zones]]\nid = "b"\nparent = "a"\n'
                   '[[receivers]]\nid = "r1"\nzone = "b"\naddress = "127.0.0.1:7000"\n')
    settings = load_settings(cfg, data_dir=tmp_path)
    db = await Database(tmp_path / "s.db").open()
    trees = []
    st = ControlState(db, settings, auth.SecretBox.load(None, tmp_path / "k"), trees.append)
    await st.apply_config()
    await st.apply_config()  # idempotent
    assert [z["id"] for z in await db.zones()] == ["a", "b"]
    assert trees[-1].destinations("b") == [("127.0.0.1", 7000)]
    assert len(await st.receiver_secret("r1")) == 32
    await st.create_zone({"id": "c", "parent": "a"})
    with pytest.raises(Conflict) as e:
        await st.move_zone("a", "c")
    assert e.value.code == "invalid_tree"
    with pytest.raises(Conflict) as e:
        await st.delete_zone("b")
    assert e.value.code == "zone_has_receivers"
    rx = await st.provision_receiver({"zone": "c"})
    assert auth._unb64(rx["secret"]) == await st.receiver_secret(rx["id"])
    await st.retire_receiver(rx["id"])
    with pytest.raises(KeyError):
        await st.receiver_secret(rx["id"])  # retired: the secret is gone
    await st.delete_zone("c")
    assert "c" not in trees[-1].zones
    await db.close()


def test_cli_state_commands(tmp_path, capsys):
    from control.cli import main
    d = str(tmp_path / "data")
    csv = tmp_path / "tree.csv"
    csv.write_text("code,name,parent_code,level\n52,Bình Định,,province\n52001,Quy Nhơn,52,city\n")
    assert main(["zones", "import", str(csv), "--data-dir", d]) == 0
    assert json.loads(capsys.readouterr().out)["created"] == 2
    assert main(["receivers", "provision", "--zone", "52001", "--id", "rx-9", "--data-dir", d]) == 0
    assert len(json.loads(capsys.readouterr().out)["secret"]) >= 40
    assert main(["receivers", "provision", "--zone", "nowhere", "--data-dir", d]) == 1
    capsys.readouterr()
    assert main(["admin", "create-user", "chief", "--role", "admin", "--token", "ops",
                 "--data-dir", d]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["role"] == "admin" and out["token"]["token"].startswith("loa_")
    assert main(["admin", "create-user", "chief", "--data-dir", d]) == 1  # exists
    assert main(["admin", "create-user", "bad name!", "--data-dir", d]) == 2
    raw = sqlite3.connect(tmp_path / "data" / "loa.db")
    assert raw.execute("SELECT hash FROM tokens").fetchone()[0] != out["token"]["token"]
    assert raw.execute("SELECT COUNT(*) FROM receivers WHERE secret_enc IS NOT NULL").fetchone()[0] == 1


async def test_authorize_hook_for_self_checking_routes(tmp_path):
    """control/live.py checks its own routes through Access.authorize: same policy, audited."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from control.app import create_app
    from control.settings import Settings
    settings = Settings(data_dir=tmp_path, admin_token="adm-token-123",
                        zones=[{"id": "xa"}, {"id": "thon", "parent": "xa"}, {"id": "xb"}],
                        send_port=0)  # a free media port: never the default 5004
    app = create_app(settings)

    async def go_live(request):
        body = await request.json()
        access = request.app["loa"].access
        user = await access.authorize(request, "live.start", body["zones"], body["level"])
        return web.json_response(access.describe(user))
    app.router.add_post("/api/v1/test-live", go_live)
    adm = {"Authorization": "Bearer adm-token-123"}
    async with TestClient(TestServer(app)) as c:
        tokens = {}
        for name, role, scope in [("off", "official", ["thon"]), ("view", "viewer", [])]:
            u = await (await c.post("/api/v1/users", json={"username": name, "role": role,
                                                          "scope": scope}, headers=adm)).json()
            t = await (await c.post(f"/api/v1/users/{u['id']}/tokens", json={}, headers=adm)).json()
            tokens[name] = {"Authorization": f"Bearer {t['token']}"}

        async def call(h, zones, level):
            r = await c.post("/api/v1/test-live", json={"zones": zones, "level": level}, headers=h)
            return r.status, await r.json()
        st, user = await call(tokens["off"], ["thon"], "priority")
        assert st == 200 and user == {"name": "off", "display_name": "off", "role": "official",
                                      "zones": ["thon"], "max_level": "priority"}
        assert (await call(tokens["off"], ["xa"], "normal"))[1]["error"]["code"] == "out_of_scope"
        assert (await call(tokens["off"], ["thon"], "emergency"))[0] == 403
        assert (await call(tokens["view"], ["thon"], "normal"))[0] == 403
        assert (await call({}, ["thon"], "normal"))[0] == 401
        assert (await call(adm, ["nowhere"], "normal"))[0] == 422
        aud = await (await c.get("/api/v1/audit?action=live.start", headers=adm)).json()
        assert [(a["actor"], a["status"]) for a in aud["entries"]] == [
            ("off", 200), ("off", 403), ("off", 403), ("view", 403), ("anonymous", 401),
            ("admin-token", 422)]
