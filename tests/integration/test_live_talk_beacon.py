"""The /live page releases a claim with navigator.sendBeacon when it is hidden or unloaded
mid-claim (control/static/live.js, pagehide): the zone is freed at once, not after the
connection's grace. The pagehide event is dispatched while the connection stays up, so only
the beacon can free the zone."""
import asyncio

import numpy as np
import pytest

from streamer.audio import SAMPLE_RATE
from tests.conftest import require_tool, write_wav
from tests.integration.conftest import until as wait_for
from tests.integration.test_live_page import Browser, live_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


async def test_pagehide_mid_claim_releases_by_beacon(live_server, tmp_path):  # noqa: F811
    require_tool("chromium", "the phone is a real browser")
    url, engine, _sessions, _cap, _tokens = live_server
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    wav = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), SAMPLE_RATE)
    br = Browser(f"{url}/live?zones=thon-1", wav)
    try:
        await br.connect()
        await br.wait("!document.getElementById('login').classList.contains('hidden')", 10,
                      "the login form")
        await br.js("document.getElementById('username').value='ong-a';"
                    "document.getElementById('password').value='mat-khau-ong-a';"
                    "document.getElementById('login-btn').click(); true")
        await br.wait("window.loaState.conn == 'ready'", 15, "the standing connection")
        await br.js("document.getElementById('ptt').dispatchEvent(new PointerEvent("
                    "'pointerdown', {bubbles: true})); true")
        await wait_for(lambda: len(engine.broadcasts()) == 1, 5, "on air")
        await asyncio.sleep(0.3)
        await br.js("window.dispatchEvent(new PageTransitionEvent('pagehide',"
                    " {persisted: false})); true")
        await wait_for(lambda: engine.broadcasts() == [], 2.0, "the zone freed by the beacon")
        assert await br.js("window.loaState.conn") is not None
    finally:
        await br.stop()
