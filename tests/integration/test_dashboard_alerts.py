"""The dashboard's alert panel in real headless Chromium against a real `loa serve`: signed CAP
alerts pushed through the API appear with their risk level's colour (QĐ 18/2021/QĐ-TTg), the
most severe first, and a cancelled one leaves the panel."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.cap_build import cap, geocode_area, info, make_key_and_cert, sign
from tests.conftest import require_tool
from tests.integration.conftest import wait_for
from tests.integration.test_dashboard import browser  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

TOKEN = "dash-alerts-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY, CERT = make_key_and_cert("KTTV")
SENDER = "kttv@nchmf.gov.vn"
TOML = """
alert_attention = "none"

[[alert_authorities]]
id = "kttv"
name = "Trung tâm KTTV"
certificate = "{pem}"
senders = ["kttv@nchmf.gov.vn"]

[[zones]]
id = "xa-nhon-ly"
name = "Xã Nhơn Lý"
codes = ["21598"]

[[zones]]
id = "xa-nhon-hai"
name = "Xã Nhơn Hải"
codes = ["21599"]
"""


def _iso(offset_s: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)).strftime(
        "%Y-%m-%dT%H:%M:%S+00:00")


def _alert(ident: str, risk: str, code: str, headline: str, sent: str, msg_type: str = "Alert",
           references: str = "") -> bytes:
    return sign(cap(identifier=ident, sender=SENDER, sent=sent, msg_type=msg_type,
                    references=references,
                    infos=[info(risk=risk, headline=headline, expires=_iso(3600),
                                areas=[geocode_area(code)])]), KEY)


def test_active_alerts_show_in_their_risk_colour_and_leave_when_cancelled(serve, browser,  # noqa: F811
                                                                           tmp_path):
    require_tool("chromium", "the dashboard is checked in a real browser")
    pem = tmp_path / "kttv.pem"
    pem.write_bytes(CERT)
    server = serve(TOML.format(pem=pem), env={"LOA_ADMIN_TOKEN": TOKEN})

    def push(xml: bytes) -> dict:
        st, body = server.request("POST", "/api/v1/alerts", raw=xml,
                                  headers={**AUTH, "Content-Type": "application/cap+xml"})
        assert st in (200, 201), body
        return body
    st, u = server.request("POST", "/api/v1/users", {
        "username": "truc-ban", "password": "mat-khau-truc-ban", "role": "viewer"}, headers=AUTH)
    assert st == 201, u
    sent = _iso(-5)
    yellow = push(_alert("VN-T-2", "2", "21598", "Mưa lớn cấp 2", sent))
    purple = push(_alert("VN-T-5", "5", "21599", "Bão rất mạnh cấp 5", sent))
    assert yellow["risk_level"] == 2 and purple["risk_level"] == 5

    b = browser(server.url + "/dashboard")
    b.wait("the login form", "!document.getElementById('login').classList.contains('hidden')")
    assert b.js("document.getElementById('alerts').classList.contains('hidden')"), \
        "signed out: the alerts are not shown"
    b.js("""(() => { document.getElementById('username').value = 'truc-ban';
        document.getElementById('password').value = 'mat-khau-truc-ban';
        document.getElementById('login').requestSubmit(); return true; })()""")
    b.wait("two alerts in the panel", "window.loaAlerts && window.loaAlerts.alerts.length === 2",
           timeout=20)
    b.wait("the panel drawn", "document.querySelectorAll('#alerts-list li').length === 2")
    assert not b.js("document.getElementById('alerts').classList.contains('hidden')")
    rows = b.js("""[...document.querySelectorAll('#alerts-list li')].map(li => [li.dataset.risk,
        getComputedStyle(li).backgroundColor, getComputedStyle(li).color, li.textContent])""")
    assert [r[0] for r in rows] == ["5", "2"], "most severe first"
    assert rows[0][1] == "rgb(142, 36, 170)" and rows[0][2] == "rgb(255, 255, 255)"  # purple
    assert rows[1][1] == "rgb(255, 241, 118)" and rows[1][2] == "rgb(27, 29, 33)"   # light yellow
    assert "Bão rất mạnh" in rows[0][3] and "Cấp độ rủi ro 5" in rows[0][3]

    # a Cancel naming the level-5 alert: it leaves the panel at the next poll
    push(_alert("VN-T-5-cancel", "5", "21599", "Huỷ", _iso(0), msg_type="Cancel",
                references=f"{SENDER},VN-T-5,{sent}"))
    t0 = time.monotonic()
    b.wait("the cancelled alert gone", "document.querySelectorAll('#alerts-list li').length === 1",
           timeout=15)
    assert time.monotonic() - t0 < 12
    assert b.js("document.querySelector('#alerts-list li').dataset.risk") == "2"
    wait_for("the API agrees", lambda: [a["id"] for a in server.request(
        "GET", "/api/v1/alerts?state=active", headers=AUTH)[1]["alerts"]] == [yellow["id"]],
        timeout=5)
