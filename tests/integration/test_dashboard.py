"""The dashboard in real headless Chromium against a real `loa serve`, a real registered receiver.

An admin token runs the test's own API calls (so the server is not in bootstrap mode); a viewer
logs in through the page's form. The page must list the receivers by zone with the live state,
show what is on air and a broadcast's delivery report, and raise the offline alarm when the
receiver process is killed (the receiver.offline event over Server-Sent Events).

Chromium is driven over its DevTools protocol (aiohttp's websocket client; no extra packages).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import require_tool
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "dash-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEARTBEAT_S = 1.0
SHOT = Path("/tmp/dashboard.png")
SHOT_TABLET = Path("/tmp/dashboard-tablet.png")

TOML = """
[[zones]]
id = "tinh-bd"
name = "Tỉnh Bình Định"

[[zones]]
id = "tp-quy-nhon"
name = "TP Quy Nhơn"
parent = "tinh-bd"

[[zones]]
id = "xa-nhon-ly"
name = "Xã Nhơn Lý"
parent = "tp-quy-nhon"

[[zones]]
id = "xa-nhon-hai"
name = "Xã Nhơn Hải"
parent = "tp-quy-nhon"
"""


class Browser:
    """Headless Chromium with a DevTools websocket to its page (every call bounded)."""

    def __init__(self, url: str, width: int = 1440, height: int = 900) -> None:
        self.profile = tempfile.mkdtemp(prefix="loa-dash-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--mute-audio",
             "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.loop = asyncio.new_event_loop()
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []
        self._id = 0
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
        self.ws_url = pages[0]["webSocketDebuggerUrl"]
        self.loop.run_until_complete(asyncio.wait_for(self._connect(), 15))
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Log.enable")
        self.call("Page.navigate", {"url": url})

    async def _connect(self) -> None:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.ws_url, max_msg_size=0)

    def _note(self, msg: dict) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.exceptions.append(str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.console_errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")

    async def _call(self, method: str, params: dict | None) -> dict:
        self._id += 1
        mid = self._id
        await self.ws.send_json({"id": mid, "method": method, "params": params or {}})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note(msg)

    def call(self, method: str, params: dict | None = None, timeout: float = 15.0) -> dict:
        return self.loop.run_until_complete(asyncio.wait_for(self._call(method, params), timeout))

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, what: str, expr: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        last = None
        guarded = f"(() => {{ try {{ return ({expr}); }} catch (e) {{ return null; }} }})()"
        while time.monotonic() < deadline:
            last = self.js(guarded)
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last={last!r}; "
                             f"page errors={self.exceptions + self.console_errors}")

    def screenshot(self, path: Path, width: int | None = None, height: int | None = None) -> None:
        if width:
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            time.sleep(0.3)
        shot = self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
        if width:
            self.call("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.loop.run_until_complete(asyncio.wait_for(self.ws.close(), 5))
            if getattr(self, "http", None) is not None:
                self.loop.run_until_complete(asyncio.wait_for(self.http.close(), 5))
        except Exception:
            pass
        self.loop.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    made: list[Browser] = []

    def start(url: str, **kw) -> Browser:
        b = Browser(url, **kw)
        made.append(b)
        return b
    yield start
    for b in made:
        b.close()


def row_state(rid: str) -> str:
    return f"(document.querySelector('tr.rx-row[data-receiver=\"{rid}\"]') || {{}}).dataset?.state"


def test_dashboard_live_state_and_offline_alarm(serve, receivers, browser):
    require_tool("chromium", "the dashboard is checked in a real browser")
    t0 = time.monotonic()
    server = serve(TOML, env={"LOA_ADMIN_TOKEN": TOKEN,
                              "LOA_RECEIVER_HEARTBEAT_S": str(HEARTBEAT_S)})

    def api(method: str, path: str, body=None):
        return server.request(method, path, body, headers=AUTH)
    _, health = api("GET", "/api/v1/health")
    assert health["bootstrap_mode"] is False
    st, u = api("POST", "/api/v1/users", {"username": "truc-ban", "password": "mat-khau-truc-ban",
                                          "role": "viewer", "display_name": "Trực ban"})
    assert st == 201, u
    st, rx = api("POST", "/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa chợ Nhơn Lý"})
    assert st == 201, rx
    rid, secret = rx["id"], rx["secret"]
    st, rx2 = api("POST", "/api/v1/receivers",
                  {"zone": "xa-nhon-hai", "name": "Loa UBND Nhơn Hải"})
    assert st == 201, rx2
    never_id = rx2["id"]

    # `--secret=`: a URL-safe base64 secret can start with "-" (see test_field_serve)
    r = receivers(["--server", f"127.0.0.1:{health['receiver_port']}", "--id", rid,
                   f"--secret={secret}"], "field")

    def online():
        st, body = api("GET", f"/api/v1/receivers/{rid}")
        return body["live"] if body["live"]["state"] == "online" else None
    try:
        live = wait_for("the receiver to come online", online, timeout=10)
    except AssertionError:
        _, ev = api("GET", "/api/v1/asrun?type=receiver.rejected")
        text = r.stop()
        pytest.fail(f"receiver {rid} never came online (the dashboard needs one online); "
                    f"receiver.rejected: {ev.get('events')}; see test_field_serve for the "
                    f"secret-encoding diagnosis. receiver log:\n{text}")
    address = live["address"]

    # --- the page: login form (not signed in), then the viewer signs in through it
    b = browser(server.url + "/dashboard")
    t_browser = time.monotonic()
    b.wait("the login form", "!document.getElementById('login').classList.contains('hidden')")
    assert b.js("document.documentElement.lang") == "vi"
    assert b.js("getComputedStyle(document.querySelector('header.top')).backgroundColor") \
        == "rgb(11, 61, 46)", "dashboard.css did not load"
    b.js("""(() => { document.getElementById('username').value = 'truc-ban';
        document.getElementById('password').value = 'mat-khau-truc-ban';
        document.getElementById('login').requestSubmit(); return true; })()""")
    b.wait("the dashboard after login", "window.loaDash.ready === true")
    assert "truc-ban" in b.js("document.getElementById('who').textContent")

    # --- the receivers by zone, in tree order, with live state and counts
    b.wait("the receiver row online", f"{row_state(rid)} === 'online'")
    assert b.js(row_state(never_id)) == "never"
    zones = b.js("[...document.querySelectorAll('tr.zone-row')].map(z => z.dataset.zone)")
    assert zones == ["tinh-bd", "tp-quy-nhon", "xa-nhon-ly", "xa-nhon-hai"], zones
    ly = b.js("document.querySelector('tr.zone-row[data-zone=\"xa-nhon-ly\"]').textContent")
    assert "Xã Nhơn Lý" in ly and "1/1" in ly, ly
    hai = b.js("document.querySelector('tr.zone-row[data-zone=\"xa-nhon-hai\"]').textContent")
    assert "0/1" in hai, hai
    tinh = b.js("document.querySelector('tr.zone-row[data-zone=\"tinh-bd\"]').textContent")
    assert "1/2" in tinh, tinh                       # the whole province's subtree
    row = b.js(f"document.querySelector('tr.rx-row[data-receiver=\"{rid}\"]').textContent")
    assert "Loa chợ Nhơn Lý" in row and address in row and "Trực tuyến" in row, row
    assert b.js("document.getElementById('n-online').textContent") == "1"
    assert b.js("document.getElementById('n-never').textContent") == "1"
    b.wait("the event stream connected", "document.getElementById('conn').dataset.state === 'on'")

    # --- filters: state, zone subtree, text search (diacritics-insensitive)
    def shown() -> list[str]:
        return b.js("[...document.querySelectorAll('tr.rx-row')].map(r => r.dataset.receiver)")
    b.js("(() => { const s = document.getElementById('f-state'); s.value = 'never';"
         " s.dispatchEvent(new Event('change')); return 1; })()")
    assert shown() == [never_id]
    b.js("(() => { const s = document.getElementById('f-state'); s.value = '';"
         " s.dispatchEvent(new Event('change')); const z = document.getElementById('f-zone');"
         " z.value = 'tp-quy-nhon'; z.dispatchEvent(new Event('change')); return 1; })()")
    assert sorted(shown()) == sorted([rid, never_id])
    b.js("(() => { const q = document.getElementById('f-q'); q.value = 'cho nhon';"
         " q.dispatchEvent(new Event('input')); return 1; })()")
    assert shown() == [rid]
    b.js("document.getElementById('f-clear').click(); 1")
    assert sorted(shown()) == sorted([rid, never_id])

    # --- a broadcast: on air in the side panel, playing on the row, delivery report in a panel
    st, bc = api("POST", "/api/v1/broadcasts", {"zones": ["xa-nhon-ly"], "level": "priority",
                                               "source": {"kind": "tone", "seconds": 30}})
    assert st == 201, bc
    bid = bc["id"]
    b.wait("the broadcast in the active list",
           f"!!document.querySelector('#bc-list li[data-broadcast=\"{bid}\"]')", timeout=10)
    # from the receiver's own report (every 5 s, or at once on a now-playing change) and the
    # page's 5 s refresh
    b.wait("the row to show what it plays",
           f"!!document.querySelector('tr.rx-row[data-receiver=\"{rid}\"] .lv-priority')",
           timeout=20)
    b.js(f"document.querySelector('#bc-list li[data-broadcast=\"{bid}\"] a.dl-link').click(); 1")
    b.wait("the delivery panel with the receiver played",
           f"['full','partly'].includes((document.querySelector("
           f"'#dl-body tr[data-receiver=\"{rid}\"]') || {{}}).dataset?.outcome)", timeout=15)
    assert b.js("document.getElementById('dl-id').textContent") == bid
    dl_never = b.js(f"(document.querySelector('#dl-body tr[data-receiver=\"{never_id}\"]')"
                    " || {dataset: {}}).dataset.outcome")
    assert dl_never is None, "a receiver in another zone is not expected in this report"

    # --- kill the receiver: the alarm must come (missed heartbeats -> receiver.offline -> SSE)
    assert b.js("document.getElementById('alarms').classList.contains('hidden')")
    os.killpg(r.proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    b.wait("the offline alarm", f"!document.getElementById('alarms').classList.contains('hidden')"
           f" && !!document.querySelector('#alarm-list li[data-receiver=\"{rid}\"]')",
           timeout=3 * HEARTBEAT_S + 8)
    t_alarm = time.monotonic()
    alarm = b.js(f"document.querySelector('#alarm-list li[data-receiver=\"{rid}\"]').textContent")
    assert "Loa chợ Nhơn Lý" in alarm and "Xã Nhơn Lý" in alarm, alarm
    assert "Vẫn mất kết nối" in alarm, alarm
    a = b.js(f"window.loaDash.alarms.find(a => a.receiver === '{rid}')")
    assert a["reason"] != "before_open" and "heartbeat" in a["reason"], a   # from the live event
    assert b.js(row_state(rid)) == "offline"
    assert b.js("document.getElementById('n-offline').textContent") == "1"
    assert b.js("document.getElementById('alarm-count').textContent") == "1"
    assert b.js("document.title").startswith("(1)")
    b.wait("the zone count to drop",
           "document.querySelector('tr.zone-row[data-zone=\"xa-nhon-ly\"]')"
           ".textContent.includes('0/1')", timeout=8)

    # --- English toggle
    b.js("document.getElementById('lang').click(); 1")
    assert b.js("document.querySelector('h1').textContent").strip().endswith("Receiver monitoring")
    assert "Still offline" in b.js("document.getElementById('alarm-list').textContent")
    b.js("document.getElementById('lang').click(); 1")

    b.screenshot(SHOT)
    b.screenshot(SHOT_TABLET, width=820, height=1180)
    assert not b.exceptions, b.exceptions
    # the only expected failed loads: no favicon, and GET /session before signing in (401)
    assert not [e for e in b.console_errors if "favicon" not in e
                and not ("401" in e and e.endswith("/api/v1/session"))], b.console_errors

    # acknowledging clears the banner; the row stays offline
    b.js("document.getElementById('alarm-ack-all').click(); 1")
    assert b.js("document.getElementById('alarms').classList.contains('hidden')")
    api("DELETE", f"/api/v1/broadcasts/{bid}")
    print(f"\ntimings: browser start->dashboard ready+checks {t_kill - t_browser:.2f} s, "
          f"kill->alarm on page {t_alarm - t_kill:.2f} s, total {time.monotonic() - t0:.2f} s")
