"""Adding, moving and retiring receivers touches only the zones concerned: in the service layer
(no full read of the receivers table, no tree rebuild) and in the server's secret cache (nothing
decrypted again). What the engine does with them: tests/unit/test_rtp_output.py and
tests/integration/test_rtp_output_fanout.py. No sockets except the in-process test server of the
secret cache test."""
from __future__ import annotations


from control import auth
from control.models import tree_from_rows
from control.service import ControlState
from streamer.zones import ZoneTree


async def full_rebuild(st: ControlState) -> ZoneTree:
    return tree_from_rows(await st.db.zones(), await st.db.groups(), await st.db.receivers(),
                          cellular_ptime=40)


async def test_receiver_changes_are_incremental_and_match_a_full_rebuild(state, monkeypatch):
    st = state

    async def no_full_read():
        raise AssertionError("a receiver change read every row")
    monkeypatch.setattr(st, "_rows", no_full_read)
    st.swaps.clear()
    rows = [{"zone": "b", "address": f"127.0.1.{i + 1}:9", "id": f"r{i}"} for i in range(200)]
    rows.append({"zone": "c", "address": "127.0.0.1:7000", "link": "sim", "id": "sim-1"})
    rows.append({"zone": "b", "address": "127.0.0.1:7000", "id": "dup-static"})  # = b's static
    rows.append({"zone": "c", "id": "no-address"})
    out = await st.provision_receivers(rows)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert all(len(auth._unb64(r["secret"])) == 32 for r in out)
    assert st.swaps == [("zones", {"b", "c"})]  # one change, the two zones only
    await st.provision_receiver({"zone": "b", "address": "127.0.2.1:9", "id": "one"})
    await st.update_receiver("r5", {"zone": "c"})  # move
    await st.update_receiver("r6", {"name": "renamed"})  # no destination change
    await st.retire_receiver("dup-static")  # b keeps its static 127.0.0.1:7000
    await st.retire_receiver("r7")
    assert st.swaps[1:] == [("zones", {"b"}), ("zones", {"b", "c"}), ("zones", {"b"}),
                            ("zones", {"b"})]
    monkeypatch.undo()
    ref = await full_rebuild(st)
    for zid in ("a", "b", "c"):
        got, want = st.tree.zones[zid], ref.zones[zid]
        assert (got.unicast, got.ptime, got.parent) == (want.unicast, want.ptime, want.parent), zid
    assert ("127.0.0.1", 7000) in st.tree.zones["b"].unicast
    assert st.tree.zones["c"].ptime == {("127.0.0.1", 7000): 40}  # the SIM link's packet time
    assert ("127.0.1.8", 9) not in st.tree.zones["b"].unicast  # r7 retired


async def test_server_secret_cache_is_incremental(tmp_path, monkeypatch):
    from aiohttp.test_utils import TestClient, TestServer

    from control.app import create_app
    from control.settings import Settings
    settings = Settings(data_dir=tmp_path, admin_token="adm-token-123", zones=[{"id": "xa"}],
                        send_port=0)  # a free media port: never the default 5004
    app = create_app(settings)
    adm = {"Authorization": "Bearer adm-token-123"}
    async with TestClient(TestServer(app)) as c:
        loa = app["loa"]
        opened = []
        real_open = loa.state.box.open
        monkeypatch.setattr(loa.state.box, "open", lambda b, ctx: opened.append(ctx) or real_open(b, ctx))
        rows = [{"zone": "xa", "id": f"rx{i}", "address": f"127.0.3.{i + 1}:9"} for i in range(50)]
        r = await c.post("/api/v1/receivers/bulk", json={"receivers": rows}, headers=adm)
        assert r.status == 201
        out = (await r.json())["receivers"]
        for rx in out:
            assert loa.receiver_secrets.secrets[rx["id"]] == (auth._unb64(rx["secret"]), "xa")
        assert opened == []  # the new secrets were known: nothing decrypted
        # a full reload (another process wrote the file) decrypts nothing that did not change
        async with loa.state.lock:
            await loa.state.reload_tree()
        await loa.receiver_secrets.refresh()
        assert opened == [] and len(loa.receiver_secrets.secrets) == 50
        r = await c.post("/api/v1/receivers/rx3/retire", headers=adm)
        assert r.status == 200 and "rx3" not in loa.receiver_secrets.secrets
        # control's tree (the one the engine was sent) has every destination but the retired one
        assert len(loa.tree().zones["xa"].unicast) == 49


def test_cli_provisions_from_csv_and_json(tmp_path, capsys):
    import json

    from control.cli import main
    d = str(tmp_path / "data")
    zones = tmp_path / "tree.csv"
    zones.write_text("code,name,parent_code,level\n52,Bình Định,,province\n52001,Quy Nhơn,52,city\n")
    assert main(["zones", "import", str(zones), "--data-dir", d]) == 0
    capsys.readouterr()
    csv_file = tmp_path / "rx.csv"
    csv_file.write_text("\ufeffid,zone,address,link,lat,name\n"
                        "c1,52001,127.0.0.1:7000,sim,13.9,Chợ\nc2,52,,wifi,,\n")
    assert main(["receivers", "provision", "--file", str(csv_file), "--data-dir", d]) == 0
    out = json.loads(capsys.readouterr().out)["receivers"]
    assert [(r["id"], r["zone"], r["link"], r["lat"], r["name"]) for r in out] == [
        ("c1", "52001", "sim", 13.9, "Chợ"), ("c2", "52", "wifi", None, "")]
    assert all(len(r["secret"]) >= 40 for r in out)
    js = tmp_path / "rx.json"
    js.write_text(json.dumps({"receivers": [{"zone": "52"}, {"zone": "52", "id": "c1"}]}))
    assert main(["receivers", "provision", "--file", str(js), "--data-dir", d]) == 1  # c1 taken
    assert "c1" in capsys.readouterr().err
    js.write_text(json.dumps([{"zone": "52", "id": "j1"}, {"zone": "52", "address": "x"}]))
    assert main(["receivers", "provision", "--file", str(js), "--data-dir", d]) == 2
    assert "receiver 2" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,zona\nx,52\n")
    assert main(["receivers", "provision", "--file", str(bad), "--data-dir", d]) == 2
    import sqlite3
    raw = sqlite3.connect(tmp_path / "data" / "loa.db")
    assert [r[0] for r in raw.execute("SELECT id FROM receivers ORDER BY rowid")] == ["c1", "c2"]
