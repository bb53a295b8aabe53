"""The live page in a real headless Chromium (fake microphone playing a 1 kHz tone) → aiortc →
engine → the zone's receiver; refusal with the holder's name; emergency preemption notice;
hang-up and page close free the zone. Plus the network-drop grace period with aiortc as peer.

The page is driven and read through Chromium's DevTools protocol (Runtime.evaluate): it logs in
through its own form, ticks the zone, presses the on-air toggle, and `window.loaState` / the DOM
say what the official sees. Everything runs against the real wiring of create_app() and the real
auth: the officials and the alert authority are users in the database; the page signs in through
POST /api/v1/session (cookie), the other clients use bearer tokens.
"""
import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from bench.latency_live import RtpCapture, dominant_hz
from control.app import create_app
from control.live import LIVE_SESSIONS
from control.settings import Settings
from streamer.ingest.webrtc import restrict_ice_to_loopback
from tests.conftest import require_tool, write_wav
from tests.integration.conftest import until as wait_for

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# username -> (password, role, scope, the name others see: holder on a refusal, who is live)
USERS = {"ong-a": ("mat-khau-ong-a", "official", ["xa"], "Ông A"),
         "ba-b": ("mat-khau-ba-b", "official", ["thon-1"], "Bà B"),
         "canh-bao": ("mat-khau-canh-bao", "alert_authority", [], "")}


@pytest.fixture
async def live_server(tmp_path):
    cap = RtpCapture()
    settings = Settings(zones=[{"id": "xa", "name": "Xã Nhơn Lý"},
                               {"id": "thon-1", "name": "Thôn 1", "parent": "xa",
                                "unicast": [f"127.0.0.1:{cap.port}"]}],
                        data_dir=tmp_path, http="127.0.0.1:0", send_port=0,
                        webrtc_grace_s=1.0, webrtc_loopback_only=True)
    app = create_app(settings)  # the live page and its API are wired in by create_app
    runner = web.AppRunner(app)
    try:
        await runner.setup()
        state = app["loa"].state
        tokens = {}
        for name, (pw, role, scope, display) in USERS.items():
            u = await state.create_user(name, role, scope, pw, display)
            tokens[name] = (await state.create_token(u["id"], "test"))["token"]
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        yield (f"http://127.0.0.1:{port}", app["loa"].engine, app[LIVE_SESSIONS], cap, tokens)
    finally:
        await runner.cleanup()
        cap.close()
        restrict_ice_to_loopback(False)


def as_user(tokens: dict, name: str) -> aiohttp.ClientSession:
    """An API client acting as `name` (bearer token; the browser uses the login form)."""
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens[name]}"},
                                 timeout=aiohttp.ClientTimeout(total=15))


class Browser:
    """Headless Chromium per RECIPES.md, driven over the DevTools protocol."""

    def __init__(self, url: str, wav: Path) -> None:
        self.profile = tempfile.mkdtemp(prefix="loa-chromium-")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--mute-audio", f"--user-data-dir={self.profile}",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}",
                 "--autoplay-policy=no-user-gesture-required",
                 "--disable-features=WebRtcHideLocalIpsWithMdns",
                 "--allow-loopback-in-peer-connection", "--remote-debugging-port=0",
                 "--remote-allow-origins=*"]
        self.proc = subprocess.Popen([CHROMIUM, *flags, url], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.ws = None
        self.session = None
        self._id = 0

    async def connect(self, timeout: float = 20.0) -> None:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            assert self.proc.poll() is None, "Chromium exited"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        while True:
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [p for p in await r.json() if p.get("type") == "page"
                         and "/live" in p.get("url", "")]
            if pages:
                break
            assert time.monotonic() < deadline, "no /live page target"
            await asyncio.sleep(0.1)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self.target_id = pages[0]["id"]
        self.port = port

    async def send(self, method: str, **params):
        self._id += 1
        my = self._id
        await self.ws.send_json({"id": my, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 10)
            if msg.get("id") == my:
                return msg

    async def js(self, expr: str):
        r = await self.send("Runtime.evaluate", expression=expr, returnByValue=True,
                            awaitPromise=True)
        res = r.get("result", {})
        if "exceptionDetails" in res:
            raise AssertionError(f"page error in {expr!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    async def wait(self, expr: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = await self.js(expr)
            except AssertionError:
                v = None
            if v:
                return v
            await asyncio.sleep(0.1)
        state = await self.js("JSON.stringify(window.loaState||null)")
        raise AssertionError(f"timed out waiting for {what}; page state: {state}")

    async def close_page(self) -> None:
        async with self.session.get(f"http://127.0.0.1:{self.port}/json/close/{self.target_id}") as r:
            await r.read()

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            for _ in range(50):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


async def aiortc_offer(url: str, tokens: dict, user: str, zones: list[str]):
    """A second official's phone, played by aiortc: a real offer with a tone track."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    async with as_user(tokens, user) as s:
        async with s.post(f"{url}/api/v1/live/offer", json={
                "sdp": pc.localDescription.sdp, "type": "offer", "zones": zones,
                "level": "normal"}) as r:
            body = await r.json()
            status = r.status
    if status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
    return status, body, pc


async def test_phone_page_goes_live_refused_preempted_and_hangs_up(live_server, tmp_path):
    require_tool("chromium", "the phone is a real browser")
    url, engine, sessions, cap, tokens = live_server
    t = np.arange(48000 * 2) / 48000
    wav = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 48000)

    # the page itself is public; the API behind it is not
    async with aiohttp.ClientSession() as s:
        for path in ("/live", "/live/live.js", "/live/live.css"):
            async with s.get(url + path) as r:
                assert r.status == 200, path
        async with s.get(f"{url}/api/v1/session") as r:
            assert r.status == 401

    # ba-b is already live on thon-1 (through her own phone, played here by aiortc)
    st, b_body, b_pc = await aiortc_offer(url, tokens, "ba-b", ["thon-1"])
    assert st == 201, b_body
    b_id = b_body["broadcast"]["id"]

    br = Browser(f"{url}/live", wav)
    try:
        await br.connect()
        # log in through the page's own form
        await br.wait("!document.getElementById('login').classList.contains('hidden')", 10,
                      "the login form")
        assert await br.js("document.documentElement.lang") == "vi"
        await br.js("document.getElementById('username').value='ong-a';"
                    "document.getElementById('password').value='wrong';"
                    "document.getElementById('login-btn').click(); true")
        await br.wait("!document.getElementById('login-error').classList.contains('hidden')", 5,
                      "the wrong-password message")
        await br.js("document.getElementById('password').value='mat-khau-ong-a';"
                    "document.getElementById('login-btn').click(); true")
        await br.wait("document.querySelectorAll('#zones input').length == 2", 10,
                      "the zone picker")
        levels = await br.js("[...document.querySelectorAll('#levels input')].map(i=>i.value)")
        assert levels == ["normal", "priority"]  # no emergency for an official
        assert "Ông A" in await br.js("document.getElementById('who').textContent")
        await br.wait("document.getElementById('others').textContent.includes('Bà B')", 10,
                      "Bà B in the who-else-is-live list")
        await br.js("document.querySelector('#zones input[value=\"thon-1\"]').click(); true")

        # refused: ba-b holds thon-1, and the page says so by name
        await br.js("document.getElementById('latch').click(); true")
        await br.wait("window.loaState.phase == 'refused'", 15, "the refusal")
        text = await br.js("document.getElementById('notice').textContent")
        assert "Bà B" in text and "bận" in text

        # ba-b hangs up; the zone is free; ong-a goes live
        async with as_user(tokens, "ba-b") as s:
            async with s.delete(f"{url}/api/v1/live/{b_id}") as r:
                assert r.status == 200
        await b_pc.close()
        assert engine.broadcasts() == []
        await br.js("document.getElementById('latch').click(); true")
        await br.wait("window.loaState.phase == 'on_air'", 15, "on air")
        a_id = await br.js("window.loaState.broadcast")
        await wait_for(lambda: cap.count > 0, 10, "packets at the receiver")
        t_first = cap.last_arrival()
        await asyncio.sleep(2.0)
        x, _ = cap.decode(since=t_first)
        loud = x[np.abs(x) > 0.05]
        assert len(loud) > 48000, "the receiver got silence, not the tone"
        assert abs(dominant_hz(x[np.argmax(np.abs(x) > 0.05):]) - 1000) < 5
        assert (await br.js("window.loaState.levelDb")) > -30  # the meter moves
        assert "Thôn 1" in await br.js("document.getElementById('reached').textContent")
        assert await br.js("document.getElementById('elapsed').textContent") != "00:00"
        (b,) = [b.to_dict() for b in engine.broadcasts()]
        assert b["id"] == a_id and b["owner"] == "ong-a" and b["source"]["kind"] == "webrtc"

        # a second official on the same zone is refused with the holder's name
        st, body, pc2 = await aiortc_offer(url, tokens, "ba-b", ["thon-1"])
        await pc2.close()
        assert st == 409 and body["error"]["holder_name"] == "Ông A"
        assert "Ông A" in body["error"]["message"]

        # an emergency preempts the talk: the page shows the notice, then the talk resumes
        async with as_user(tokens, "canh-bao") as s:  # an alert authority, through the real API
            async with s.post(f"{url}/api/v1/broadcasts", json={
                    "zones": ["thon-1"], "level": "emergency",
                    "source": {"kind": "tone", "freq_hz": 440, "seconds": 3.0}}) as r:
                assert r.status == 201, await r.text()
        await br.wait("window.loaState.phase == 'preempted'", 5, "the preemption")
        await br.wait("document.getElementById('notice').textContent.includes('khẩn cấp')", 5,
                      "the emergency notice")
        assert "Thôn 1" in await br.js("document.getElementById('notice').textContent")
        # meanwhile the receiver hears the emergency (its chime, then 440 Hz), not the talker
        t_em = time.monotonic()
        await asyncio.sleep(1.0)
        x, _ = cap.decode(since=t_em)
        assert np.sqrt(np.mean(x ** 2)) > 0.01 and abs(dominant_hz(x) - 1000) > 20
        await br.wait("window.loaState.phase == 'on_air'", 15, "back on air after it")

        # English is one tap away
        await br.js("document.getElementById('lang').click(); true")
        assert await br.js("document.getElementById('state-text').textContent") == "ON AIR"

        # hang up: the zone is free, packets stop
        await br.js("document.getElementById('latch').click(); true")
        await br.wait("window.loaState.phase == 'ended'", 5, "the hang-up")
        await wait_for(lambda: engine.broadcasts() == [], 5, "the zone to be freed")
        assert engine.broadcast(a_id).state == "stopped"
        n = cap.count
        await asyncio.sleep(0.5)
        assert cap.count - n <= 2
        st, body, pc3 = await aiortc_offer(url, tokens, "ba-b", ["thon-1"])
        assert st == 201  # free for the next official
        async with as_user(tokens, "ba-b") as s:
            async with s.delete(f"{url}/api/v1/live/{body['broadcast']['id']}") as r:
                assert r.status == 200
        await pc3.close()

        # page close while live: the server lets go of the zone
        await br.js("document.getElementById('latch').click(); true")
        await br.wait("window.loaState.phase == 'on_air'", 15, "on air again")
        c_id = await br.js("window.loaState.broadcast")
        await br.close_page()
        await wait_for(lambda: engine.broadcasts() == [], 8, "release after page close")
        assert engine.broadcast(c_id).state == "stopped"
        assert not sessions
    finally:
        await br.stop()


async def test_network_drop_keeps_the_zone_for_the_grace_period(live_server):
    """aiortc as the phone: audio stalls for 0.5 s (kept), then for longer than the 1 s grace
    (released, with the reason)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack
    url, engine, sessions, cap, tokens = live_server

    class Stalling(AudioStreamTrack):
        stall_until = 0.0

        async def recv(self):
            while time.monotonic() < self.stall_until:
                await asyncio.sleep(0.01)
            return await super().recv()

    track = Stalling()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())
    async with as_user(tokens, "ba-b") as s:
        async with s.post(f"{url}/api/v1/live/offer", json={
                "sdp": pc.localDescription.sdp, "type": "offer", "zones": ["thon-1"]}) as r:
            assert r.status == 201
            body = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
    bid = body["broadcast"]["id"]
    try:
        await wait_for(lambda: bid in sessions and sessions[bid].frames_received > 10,
                       10, "audio from the aiortc phone")
        session = sessions[bid]
        track.stall_until = time.monotonic() + 0.5
        await asyncio.sleep(1.2)
        assert engine.broadcast(bid).state in ("playing", "queued")  # kept through the drop
        assert session.gaps >= 1 and not session.ended
        track.stall_until = time.monotonic() + 5.0
        await wait_for(lambda: engine.broadcast(bid).state == "stopped", 4, "release after grace")
        assert "no audio" in session.end_reason
        assert engine.broadcasts() == []
    finally:
        await pc.close()
