"""The /live page says "cannot connect" before the official needs the microphone: a standing
connection whose ICE can never succeed (the server's answer carries an ICE password that is not
the server's, so every check the browser sends is refused) must show the failure on the page
within the page's own connect timeout (8 s after the answer), in a real headless Chromium."""
import re
import time

import numpy as np
import pytest

from streamer.audio import SAMPLE_RATE
from streamer.ingest import webrtc
from tests.conftest import require_tool, write_wav
from tests.integration.test_live_page import Browser, live_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
PAGE_TIMEOUT_S = 8.0   # live.js: no connection 8 s after the answer → "failed"


async def test_a_connection_that_cannot_come_up_says_so_on_the_page(live_server, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    require_tool("chromium", "the phone is a real browser")
    url, engine, _sessions, _cap, _tokens = live_server
    accept = webrtc.WebRtcSession.accept
    answered: list[float] = []

    async def broken_ice(self, sdp, type_="offer"):
        ans = await accept(self, sdp, type_)
        answered.append(time.monotonic())
        # a well-formed answer whose ICE credentials are wrong: the browser's checks all fail
        return {**ans, "sdp": re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:" + "x" * 24, ans["sdp"])}

    monkeypatch.setattr(webrtc.WebRtcSession, "accept", broken_ice)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    wav = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), SAMPLE_RATE)
    br = Browser(f"{url}/live?zones=thon-1&lang=en", wav)
    try:
        await br.connect()
        await br.wait("!document.getElementById('login').classList.contains('hidden')", 10,
                      "the login form")
        await br.js("document.getElementById('username').value='ong-a';"
                    "document.getElementById('password').value='mat-khau-ong-a';"
                    "document.getElementById('login-btn').click(); true")
        await br.wait("window.loaState.conn == 'connecting'", 10, "the page connecting")
        # the page says so by itself, nobody pressed anything, within its timeout (+ margin)
        await br.wait("window.loaState.conn == 'failed'", PAGE_TIMEOUT_S + 6,
                      "the 'cannot connect' state")
        shown = time.monotonic()
        assert answered, "the server answered the offer"
        assert shown - answered[0] < PAGE_TIMEOUT_S + 3
        text = await br.js("document.getElementById('conn').textContent")
        cls = await br.js("document.getElementById('conn').className")
        assert "failed" in cls and ("cannot connect" in text or "không kết nối được" in text), text
        assert engine.broadcasts() == []
    finally:
        await br.stop()
