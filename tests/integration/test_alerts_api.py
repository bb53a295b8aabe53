"""POST/GET /api/v1/alerts on a real app on loopback: signed push airs, everything else is refused
with the right status and never airs."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.cap_build import cap, circle_area, geocode_area, info, make_key_and_cert, sign

pytestmark = pytest.mark.integration

TOKEN = "alerts-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {TOKEN}"}
XML = {"Content-Type": "application/cap+xml"}
ZONES = [{"id": "tinh", "code": "52"}, {"id": "xa-a", "parent": "tinh", "codes": ["21598", "21599"]},
         {"id": "thon-a1", "parent": "xa-a"}, {"id": "xa-b", "parent": "tinh"}]
RECEIVERS = [{"id": "rx-b1", "zone": "xa-b", "lat": 13.95, "lon": 109.25}]
KEY, CERT = make_key_and_cert("KTTV")
OTHER_KEY, OTHER_CERT = make_key_and_cert("KTTV")
S = "kttv@nchmf.gov.vn"


@contextlib.asynccontextmanager
async def app_client(tmp_path, **settings: Any) -> AsyncIterator[TestClient]:
    from control.app import create_app
    from control.settings import Settings
    pem = tmp_path / "kttv.pem"
    pem.write_bytes(CERT)
    kw: dict[str, Any] = {"data_dir": tmp_path, "admin_token": TOKEN, "zones": ZONES,
                          "receivers": RECEIVERS, "send_port": 0, "fanout_workers": 0,
                          "alert_authorities": [{"id": "kttv", "name": "Trung tâm KTTV", "certificate": str(pem),
                                                 "senders": [S], "accounts": ["u-alert_authority"]}]}
    kw.update(settings)
    app = create_app(Settings(**kw))
    async with TestClient(TestServer(app)) as c:
        yield c


async def authority(c: TestClient, role: str = "alert_authority") -> dict[str, str]:
    r = await c.post("/api/v1/users", json={"username": f"u-{role}", "role": role, "scope": []}, headers=ADM)
    u = await r.json()
    t = await (await c.post(f"/api/v1/users/{u['id']}/tokens", json={}, headers=ADM)).json()
    return {"Authorization": f"Bearer {t['token']}"}


def expires_later() -> str:
    import datetime as dt
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def now_sent(offset_s: int = 0) -> str:
    import datetime as dt
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%S+00:00")


async def test_signed_push_airs_where_the_area_says_and_duplicates_change_nothing(tmp_path):
    async with app_client(tmp_path) as c:
        auth = await authority(c)
        msg = sign(cap(sent=now_sent(), infos=[info(expires=expires_later())]), KEY)
        r = await c.post("/api/v1/alerts", data=msg, headers={**auth, **XML})
        body = await r.json()
        assert r.status == 201, body
        assert body["zones"] == ["thon-a1", "xa-a"] and body["level"] == "emergency"
        assert body["authority"] == "kttv" and body["risk_level"] == 4 and body["risk_colour"] == "#E53935"
        assert body["text"].startswith("Bản tin phát lúc")
        b = await (await c.get(f"/api/v1/broadcasts/{body['broadcast']}", headers=ADM)).json()
        assert b["level"] == "emergency" and set(b["reached_zones"]) == {"xa-a", "thon-a1"}
        r2 = await c.post("/api/v1/alerts", data=msg, headers={**auth, **XML})
        assert r2.status == 200 and (await r2.json())["outcome"] == "duplicate"
        lst = await (await c.get("/api/v1/alerts", headers=ADM)).json()
        assert [a["id"] for a in lst["alerts"]] == [body["id"]] and lst["active"] == 1
        one = await (await c.get(f"/api/v1/alerts/{body['id']}", headers=ADM)).json()
        assert one["state"] == "active" and one["airings"][0]["broadcast_id"] == body["broadcast"]
        assert one["airings"][0]["delivery"] is not None and "<alert" in one["xml"]
        # a Cancel stops it at once
        cancel = sign(cap(identifier="C1", msg_type="Cancel", sent=now_sent(1), infos=[],
                          references=f"{S},VN-KTTV-2025-0001,{body['sent']}"), KEY)
        r3 = await c.post("/api/v1/alerts", data=cancel, headers={**auth, **XML})
        out = await r3.json()
        assert r3.status == 200 and out["stopped"] == [body["broadcast"]], out
        b = await (await c.get(f"/api/v1/broadcasts/{body['broadcast']}", headers=ADM)).json()
        assert b["state"] == "stopped"
        one = await (await c.get(f"/api/v1/alerts/{body['id']}", headers=ADM)).json()
        assert one["state"] == "cancelled"


async def test_circle_reaches_receivers_by_coordinates(tmp_path):
    async with app_client(tmp_path) as c:
        msg = sign(cap(sent=now_sent(), infos=[info(expires=expires_later(),
                                                    areas=[circle_area(13.95, 109.25, 1.0)])]), KEY)
        r = await c.post("/api/v1/alerts", data=msg, headers={**ADM, **XML})
        body = await r.json()
        assert r.status == 201 and body["receivers"] == ["rx-b1"] and body["zones"] == ["xa-b"]


async def test_refusals_never_air(tmp_path):
    async with app_client(tmp_path) as c:
        auth = await authority(c)
        fresh = cap(sent=now_sent(), infos=[info(expires=expires_later())])
        cases = [
            (fresh, XML, 401, "unsigned_alert"),
            (sign(fresh, OTHER_KEY, OTHER_CERT), XML, 403, "bad_signature"),
            (sign(fresh, KEY).replace(b"21598", b"21599"), XML, 403, "bad_signature"),
            (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>', XML, 422, "forbidden_xml"),
            (fresh[:-30], XML, 422, "invalid_xml"),
            (sign(cap(sent=now_sent(), infos=[info(expires=expires_later(), areas=[geocode_area("00000")])]), KEY),
             XML, 422, "area_matches_nothing"),
            (sign(fresh, KEY), {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
            (b"x" * (1024 * 1024 + 10), XML, 413, None),
        ]
        for data, headers, status, code in cases:
            r = await c.post("/api/v1/alerts", data=data, headers={**auth, **headers})
            body = await r.json()
            assert r.status == status, (status, body)
            if code:
                assert body["error"]["code"] == code, body
        op = await authority(c, "operator")
        r = await c.post("/api/v1/alerts", data=sign(fresh, KEY), headers={**op, **XML})
        assert r.status == 403
        assert (await (await c.get("/api/v1/broadcasts", headers=ADM)).json())["broadcasts"] == []
        lst = await (await c.get("/api/v1/alerts", headers=ADM)).json()
        assert lst["alerts"] == [] and lst["counters"]["refused_signature"] == 2
        assert lst["counters"]["refused_unsigned"] == 1
        audit = await (await c.get("/api/v1/audit", headers=ADM)).json()
        refused = [e for e in audit["entries" if "entries" in audit else "audit"]
                   if e["action"] == "alerts.push" and e["status"] in (401, 403)]
        assert len(refused) >= 4


async def test_unsigned_push_only_when_allowed_and_only_for_authorities(tmp_path):
    async with app_client(tmp_path, alerts_allow_unsigned_push=True) as c:
        auth = await authority(c)
        fresh = cap(sent=now_sent(), infos=[info(expires=expires_later())])
        r = await c.post("/api/v1/alerts", data=fresh, headers={**ADM, **XML})
        assert r.status == 401  # admin is not an alert_authority token
        r = await c.post("/api/v1/alerts", data=fresh, headers={**auth, **XML})
        body = await r.json()
        assert r.status == 201 and body["authority"] == "unsigned:u-alert_authority"


async def test_test_status_is_logged_and_zone_api_shows_codes(tmp_path):
    async with app_client(tmp_path) as c:
        r = await c.post("/api/v1/alerts", data=sign(cap(status="Test", sent=now_sent()), KEY), headers={**ADM, **XML})
        body = await r.json()
        assert r.status == 200 and body["outcome"] == "log" and body["broadcast"] is None
        z = await (await c.get("/api/v1/zones/xa-a", headers=ADM)).json()
        assert z["codes"] == ["21598", "21599"]
        r = await c.patch("/api/v1/zones/xa-b", json={"codes": ["30000"]}, headers=ADM)
        assert r.status == 200 and (await r.json())["codes"] == ["30000"]
        msg = sign(cap(identifier="B", sent=now_sent(), infos=[info(expires=expires_later(), areas=[geocode_area("30000")])]), KEY)
        r = await c.post("/api/v1/alerts", data=msg, headers={**ADM, **XML})
        assert r.status == 201 and (await r.json())["zones"] == ["xa-b"]


async def test_alert_counters_on_metrics_and_the_list_carries_what_the_dashboard_shows(tmp_path):
    async with app_client(tmp_path) as c:
        auth = await authority(c)
        fresh = cap(sent=now_sent(), infos=[info(expires=expires_later(), risk="3")])
        aired = await c.post("/api/v1/alerts", data=sign(fresh, KEY), headers={**auth, **XML})
        assert aired.status == 201
        for data, status in ((sign(fresh, KEY), 200),                # duplicate
                             (sign(fresh, KEY), 200),                # and again
                             (fresh, 401),                           # unsigned
                             (sign(fresh, OTHER_KEY, OTHER_CERT), 403),
                             (sign(cap(identifier="T1", status="Test", sent=now_sent(),
                                       infos=[info(expires=expires_later())]), KEY), 200),
                             (sign(cap(identifier="A0", sent=now_sent(), infos=[info(
                                 expires=expires_later(), areas=[geocode_area("00000")])]), KEY),
                              422)):
            r = await c.post("/api/v1/alerts", data=data, headers={**auth, **XML})
            assert r.status == status, await r.text()
        text = await (await c.get("/metrics", headers=ADM)).text()
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in text.splitlines() if line.startswith("loa_alert")}
        assert samples["loa_alerts_received_total"] == 7
        assert samples["loa_alerts_aired_total"] == 1
        assert samples["loa_alerts_duplicates_total"] == 2
        assert samples['loa_alerts_refused_total{reason="unsigned"}'] == 1
        assert samples['loa_alerts_refused_total{reason="signature"}'] == 1
        assert samples['loa_alerts_refused_total{reason="area"}'] == 1
        assert samples['loa_alerts_refused_total{reason="sender"}'] == 0
        assert samples['loa_alerts_not_aired_total{outcome="log"}'] == 1
        assert samples["loa_alert_feed_failures_total"] == 0
        assert samples["loa_alerts_active"] == 1
        lst = await (await c.get("/api/v1/alerts?state=active", headers=ADM)).json()
        [a] = lst["alerts"]
        assert a["risk_level"] == 3 and a["risk_colour"] == "#FB8C00" and a["zones"]
        assert "Cảnh báo bão số 13" in a["text"] and "decision" not in a


async def test_a_cap_sender_is_tied_to_its_authority_refused_403_counted_and_audited(tmp_path):
    other_pem = tmp_path / "pctt.pem"
    other_pem.write_bytes(OTHER_CERT)
    async with app_client(tmp_path, alerts_allow_unsigned_push=True, alert_authorities=[
            {"id": "kttv", "certificate": str(tmp_path / "kttv.pem"), "senders": [S]},
            {"id": "pctt", "certificate": str(other_pem), "senders": ["pctt@gialai.gov.vn"],
             "accounts": ["u-alert_authority"]}]) as c:
        (tmp_path / "kttv.pem").write_bytes(CERT)   # app_client wrote it too; same bytes
        auth = await authority(c)
        fresh = info(expires=expires_later())
        ok = sign(cap(sent=now_sent(), infos=[fresh]), KEY)                  # KTTV for KTTV
        r = await c.post("/api/v1/alerts", data=ok, headers={**ADM, **XML})
        assert r.status == 201, await r.text()
        wrong = sign(cap(identifier="X1", sender="pctt@gialai.gov.vn", sent=now_sent(),
                         infos=[fresh]), KEY)                                 # KTTV for PCTT
        r = await c.post("/api/v1/alerts", data=wrong, headers={**ADM, **XML})
        body = await r.json()
        assert r.status == 403 and body["error"]["code"] == "sender_not_allowed", body
        # the account listed by PCTT pushes unsigned for PCTT only
        mine = cap(identifier="P1", sender="pctt@gialai.gov.vn", sent=now_sent(), infos=[fresh])
        theirs = cap(identifier="P2", sender=S, sent=now_sent(), infos=[fresh])
        r = await c.post("/api/v1/alerts", data=mine, headers={**auth, **XML})
        assert r.status == 201, await r.text()
        r = await c.post("/api/v1/alerts", data=theirs, headers={**auth, **XML})
        assert r.status == 403 and (await r.json())["error"]["code"] == "sender_not_allowed"
        lst = await (await c.get("/api/v1/alerts", headers=ADM)).json()
        assert lst["counters"]["refused_sender"] == 2 and len(lst["alerts"]) == 2
        live = (await (await c.get("/api/v1/broadcasts", headers=ADM)).json())["broadcasts"]
        assert len(live) == 2   # the two accepted; the refused two never aired
        audit = await (await c.get("/api/v1/audit", headers=ADM)).json()
        refused = [e for e in audit["entries" if "entries" in audit else "audit"]
                   if e["action"] == "alerts.push" and e["status"] == 403]
        assert len(refused) == 2 and all(e["result"] == "sender_not_allowed" for e in refused)


async def test_a_coordinate_edit_counts_for_the_very_next_alert(tmp_path):
    async with app_client(tmp_path) as c:
        here = [circle_area(10.0, 106.0, 1.0)]
        first = sign(cap(identifier="M1", sent=now_sent(),
                         infos=[info(expires=expires_later(), areas=here)]), KEY)
        r = await c.post("/api/v1/alerts", data=first, headers={**ADM, **XML})
        assert r.status == 422   # nobody there yet
        r = await c.patch("/api/v1/receivers/rx-b1", json={"lat": 10.001, "lon": 106.001},
                          headers=ADM)
        assert r.status == 200, await r.text()
        again = sign(cap(identifier="M2", sent=now_sent(),
                         infos=[info(expires=expires_later(), areas=here)]), KEY)
        r = await c.post("/api/v1/alerts", data=again, headers={**ADM, **XML})
        body = await r.json()
        assert r.status == 201 and body["receivers"] == ["rx-b1"], body
        # a receiver provisioned with coordinates counts at once too
        r = await c.post("/api/v1/receivers", json={"id": "rx-new", "zone": "xa-a",
                                                    "lat": 11.0, "lon": 107.0}, headers=ADM)
        assert r.status in (200, 201), await r.text()
        there = sign(cap(identifier="M3", sent=now_sent(), infos=[info(
            expires=expires_later(), areas=[circle_area(11.0, 107.0, 0.5)])]), KEY)
        r = await c.post("/api/v1/alerts", data=there, headers={**ADM, **XML})
        body = await r.json()
        assert r.status == 201 and body["receivers"] == ["rx-new"], body


async def test_an_alert_waits_for_a_points_reading_in_flight(tmp_path):
    """The repeat loop re-reads the receivers' coordinates when one is provisioned. An alert that
    arrives while that reading is in flight waits for it: it used to see the change flag already
    cleared and decide on the old points (CI: a receiver provisioned just before missed the
    alert, 422). The loop's reading is held here until the alert has arrived."""
    import asyncio
    async with app_client(tmp_path) as c:
        intake = c.server.app["loa"].alerts
        orig = intake._refresh_points
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held() -> None:
            if asyncio.current_task().get_name() == "loa-alert-repeats" and not gate.is_set():
                intake._points_stale = False   # cleared as the reading starts, as it does
                entered.set()
                await asyncio.wait_for(gate.wait(), 10.0)
            await orig()

        intake._refresh_points = held
        r = await c.post("/api/v1/receivers", json={"id": "rx-held", "zone": "xa-b",
                                                    "lat": 12.0, "lon": 108.0}, headers=ADM)
        assert r.status in (200, 201), await r.text()
        await asyncio.wait_for(entered.wait(), 10.0)   # the loop is reading, flag cleared
        msg = sign(cap(identifier="H1", sent=now_sent(), infos=[info(
            expires=expires_later(), areas=[circle_area(12.0, 108.0, 0.5)])]), KEY)
        post = asyncio.create_task(c.post("/api/v1/alerts", data=msg, headers={**ADM, **XML}))
        await asyncio.sleep(0.3)
        assert not post.done(), "the alert decided while the points were being read"
        gate.set()
        r = await asyncio.wait_for(post, 15.0)
        body = await r.json()
        assert r.status == 201 and body["receivers"] == ["rx-held"], body
