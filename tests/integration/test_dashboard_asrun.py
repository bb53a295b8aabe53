"""The dashboard's as-run section (control/static/dashboard-asrun.js) in real headless
Chromium: a viewer signs in, picks a zone, and sees today's as-run lines for it (what aired, at
which level, how long), not another zone's; the language toggle turns its labels English."""
from __future__ import annotations

import pytest

from tests.conftest import require_tool
from tests.integration.conftest import wait_for
from tests.integration.test_dashboard import AUTH, TOKEN, browser  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

TOML = """
[[zones]]
id = "xa-a"
name = "Xã A"
unicast = ["127.0.0.1:9"]
[[zones]]
id = "xa-b"
name = "Xã B"
unicast = ["127.0.0.1:9"]
"""


def test_todays_asrun_for_a_chosen_zone(serve, browser):  # noqa: F811
    require_tool("chromium", "the dashboard is checked in a real browser")
    server = serve(TOML, env={"LOA_ADMIN_TOKEN": TOKEN})

    def api(method, path, body=None):
        return server.request(method, path, body, headers=AUTH)
    st, u = api("POST", "/api/v1/users", {"username": "truc-ban", "password": "mat-khau-truc-ban",
                                          "role": "viewer"})
    assert st == 201, u
    ids = {}
    for zone, freq in (("xa-a", 500), ("xa-b", 900)):
        st, b = api("POST", "/api/v1/broadcasts", {"zones": [zone], "level": "priority",
                                                   "source": {"kind": "tone", "freq_hz": freq,
                                                              "seconds": 0.6}})
        assert st == 201, b
        ids[zone] = b["id"]
        wait_for("the tone to finish", lambda bid=b["id"]: api(
            "GET", f"/api/v1/broadcasts/{bid}")[1].get("state") == "finished", 10)

    b = browser(server.url + "/dashboard")
    b.wait("the login form", "!document.getElementById('login').classList.contains('hidden')")
    b.js("""(() => { document.getElementById('username').value = 'truc-ban';
        document.getElementById('password').value = 'mat-khau-truc-ban';
        document.getElementById('login').requestSubmit(); return true; })()""")
    b.wait("the dashboard after login", "window.loaDash.ready === true")
    b.wait("the zones in the as-run picker",
           "document.querySelectorAll('#ar-zone option').length === 2")
    b.js("""(() => { const s = document.getElementById('ar-zone'); s.value = 'xa-b';
        s.dispatchEvent(new Event('change')); return true; })()""")
    b.wait("xa-b's line", "document.querySelectorAll('#ar-body tr').length === 1 && "
           "document.getElementById('asrun').dataset.state === 'ok' && "
           "document.getElementById('asrun').dataset.zone === 'xa-b'")
    cells = b.js("[...document.querySelectorAll('#ar-body tr td')].map(td => td.textContent)")
    assert cells[2] == "ưu tiên" and cells[4].startswith("finished"), cells
    assert b.js("document.querySelector('#ar-body tr').className") == "lv-priority"
    assert b.js("document.getElementById('ar-empty').classList.contains('hidden')")
    assert "zone=xa-b" in b.js("document.getElementById('ar-csv').href")
    assert b.js("document.getElementById('ar-title').textContent") == "Nhật ký phát hôm nay"
    b.js("document.getElementById('lang').click()")
    b.wait("English labels", "document.getElementById('ar-title').textContent === "
           "\"Today's as-run log\"")
    assert b.js("document.querySelector('#ar-body tr td:nth-child(3)').textContent") == "priority"
