"""The /schedule page (control/static/schedule.*) in real headless Chromium: the week view shows
what airs, coloured by level, Vietnamese first with the English toggle, and a schedule made in
the form is saved through the API (same roles and scopes: the local bootstrap admin here)."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import Server
from tests.conftest import require_tool
from tests.integration.test_live_page import Browser

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _chromium() -> None:
    require_tool("chromium", "the schedule page is tested in a real browser")


class SchedulePage(Browser):
    async def connect(self, timeout: float = 20.0) -> None:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        while True:
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [p for p in await r.json() if p.get("type") == "page"
                         and "/schedule" in p.get("url", "")]
            if pages:
                break
            assert time.monotonic() < deadline, "no /schedule page target"
            await asyncio.sleep(0.1)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self.target_id = pages[0]["id"]
        self.port = port


async def test_schedule_page_week_view_language_and_create(tmp_path):
    srv = Server(tmp_path, '[[zones]]\nid = "xa"\nname = "Xã A"\nunicast = ["127.0.0.1:9"]\n')
    hcm = dt.timezone(dt.timedelta(hours=7))
    soon = (dt.datetime.now(hcm) + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    st, s = srv.request("POST", "/api/v1/schedules", {
        "zones": ["xa"], "level": "priority", "title": "Bản tin",
        "source": {"kind": "tone", "seconds": 600}, "start": soon.isoformat()})
    assert st == 201, s
    page = SchedulePage(srv.url + "/schedule", tmp_path / "none.wav")
    try:
        await page.connect()
        await page.wait("window.loaSchedule && window.loaSchedule.ready", 15, "page ready")
        assert await page.js("document.documentElement.lang") == "vi"
        assert await page.js("document.querySelector('h1').textContent") == "Lịch phát"
        items = await page.wait(
            "Array.from(document.querySelectorAll('.item')).map(e => [e.dataset.schedule, "
            "e.className, getComputedStyle(e).backgroundColor])", 10, "the week's item")
        assert items[0][0] == s["id"] and "lv-priority" in items[0][1]
        assert items[0][2] == "rgb(199, 122, 0)"  # priority's colour
        await page.js("document.getElementById('lang').click()")
        assert await page.js("document.documentElement.lang") == "en"
        assert await page.js("document.querySelector('h1').textContent") == "Schedule"
        # create through the form
        later = soon + dt.timedelta(hours=1)
        await page.js(f"""(() => {{
            document.getElementById('f-title').value = 'Nhạc chiều';
            document.getElementById('f-text').value = 'Xin chào bà con';
            document.getElementById('f-start').value = '{later.astimezone().strftime('%Y-%m-%dT%H:%M')}';
            document.getElementById('f-level').value = 'normal';
            document.getElementById('form').requestSubmit(); }})()""")
        saved = await page.wait("window.loaSchedule.lastSaved", 10, "saved")
        st, lst = srv.request("GET", "/api/v1/schedules")
        assert saved in {x["id"] for x in lst["schedules"]} and len(lst["schedules"]) == 2
        # a bad RRULE from the form is shown, nothing saved
        await page.js("""(() => { document.getElementById('sid').value = '';
            document.getElementById('f-rrule').value = 'FREQ=NEVER';
            document.getElementById('form').requestSubmit(); })()""")
        msg = await page.wait("(document.getElementById('notice').textContent.includes('invalid_rrule')) "
                              "&& document.getElementById('notice').textContent", 10, "error shown")
        assert "invalid_rrule" in msg
        assert len(srv.request("GET", "/api/v1/schedules")[1]["schedules"]) == 2
    finally:
        await page.stop()
        srv.stop()
