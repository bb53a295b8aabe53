"""Media ownership and references (issue 13, finding 6b): an operator scoped to one commune
cannot rename or delete the province's media nor another commune's; an item that a broadcast,
an active alert or a schedule uses cannot be deleted (409 naming the user)."""
from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from tests.integration.test_alerts_api import (XML, app_client, authority, expires_later,
                                               now_sent)
from tests.integration.test_alerts_api import ADM as ALERT_ADM

pytestmark = pytest.mark.integration


def wav(freq: float) -> bytes:
    t = np.arange(48000 * 2) / 48000
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


async def user(c, name: str, role: str, scope: list[str]) -> dict[str, str]:
    r = await c.post("/api/v1/users", json={"username": name, "role": role, "scope": scope},
                     headers=ALERT_ADM)
    assert r.status == 201, await r.text()
    u = await r.json()
    t = await (await c.post(f"/api/v1/users/{u['id']}/tokens", json={}, headers=ALERT_ADM)).json()
    return {"Authorization": f"Bearer {t['token']}"}


async def upload(c, headers, freq):
    import aiohttp
    form = aiohttp.FormData()
    form.add_field("file", wav(freq), filename=f"t{freq}.wav", content_type="audio/wav")
    r = await c.post("/api/v1/media", data=form, headers=headers)
    assert r.status == 201, await r.text()
    return await r.json()


async def test_media_changes_follow_the_owner_scope_and_references(tmp_path):
    from tests.cap_build import cap, info, resource
    async with app_client(tmp_path, alerts_allow_unsigned_push=True) as c:
        ADM = ALERT_ADM
        op_a = await user(c, "anh", "operator", ["xa-a"])
        op_a1 = await user(c, "an1", "operator", ["thon-a1"])
        op_b = await user(c, "binh", "operator", ["xa-b"])
        prov = await upload(c, ADM, 300)
        med_a = await upload(c, op_a, 400)
        med_b = await upload(c, op_b, 500)
        assert prov["scope"] is None and med_a["scope"] == ["xa-a"]
        # outside the account's scope: the province's item, another commune's, a wider one
        for h, m in [(op_a, prov), (op_a, med_b), (op_b, med_a), (op_a1, med_a)]:
            r = await c.patch(f"/api/v1/media/{m['id']}", json={"title": "x"}, headers=h)
            assert r.status == 403 and (await r.json())["error"]["code"] == "media_out_of_scope"
            r = await c.delete(f"/api/v1/media/{m['id']}", headers=h)
            assert r.status == 403, await r.text()
        assert (await (await c.get(f"/api/v1/media/{prov['id']}", headers=ADM)).json())[
            "title"] == prov["title"]
        r = await c.patch(f"/api/v1/media/{med_a['id']}", json={"title": "Bản tin xã A"},
                          headers=op_a)
        assert r.status == 200
        # in use by a broadcast: 409 naming it, even for the admin
        r = await c.post("/api/v1/broadcasts", json={
            "zones": ["xa-a"], "level": "priority", "repeat": 20,
            "source": {"kind": "media", "id": med_a["id"]}}, headers=op_a)
        assert r.status == 201, await r.text()
        b = await r.json()
        r = await c.delete(f"/api/v1/media/{med_a['id']}", headers=ADM)
        err = (await r.json())["error"]
        assert r.status == 409 and err["code"] == "media_in_use" and err["broadcasts"] == [b["id"]]
        assert b["id"] in err["message"]
        await c.delete(f"/api/v1/broadcasts/{b['id']}", headers=ADM)
        # an active alert whose audio resource is the library item
        auth = await authority(c)
        msg = cap(sent=now_sent(), infos=[info(
            expires=expires_later(),
            resources=resource(f"http://127.0.0.1:9/api/v1/media/{prov['id']}"))])
        r = await c.post("/api/v1/alerts", data=msg, headers={**auth, **XML})
        assert r.status in (200, 201), await r.text()
        alert = await r.json()
        assert alert["state"] == "active", alert
        r = await c.delete(f"/api/v1/media/{prov['id']}", headers=ADM)
        err = (await r.json())["error"]
        assert r.status == 409 and err["alerts"] == [alert["id"]], err
        assert alert["id"] in err["message"]
        # unused and in scope: deleted, file and all
        r = await c.delete(f"/api/v1/media/{med_b['id']}", headers=op_b)
        assert r.status == 200
        assert (await c.get(f"/api/v1/media/{med_b['id']}", headers=ADM)).status == 404
