"""Press to talk on the /live page's standing connection (control/live_talk.py), in a real
headless Chromium with the fake microphone playing a steady 1 kHz tone: the page connects on
sign-in, and each press must put packets on the zone fast (press → first packet at the zone's
receiver, 30 presses, p95 ≤ 150 ms on loopback) with nothing of the start cut (the tone airs
for as long as the button was held), and each release must free the zone. Half the presses
come after the measured arrival jitter asked for a deep receive queue (as after a stall of the
phone's sender): those must be as fast, the claim starting with the pre-roll it has."""
import asyncio
import json
import time

import numpy as np
import pytest

from streamer.audio import SAMPLE_RATE
from tests.conftest import require_tool, write_wav
from tests.integration.conftest import until as wait_for
from tests.integration.test_live_page import Browser, live_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
PRESSES = 30
HOLD_S = 0.3
#: the receive queue the jitter asks for in the second half (a sender that stalled 160 ms)
DEEP = 8


async def test_press_to_first_packet_and_nothing_of_the_start_is_cut(live_server, tmp_path,  # noqa: F811
                                                                    monkeypatch):
    require_tool("chromium", "the phone is a real browser")
    from streamer.ingest.talk import ArrivalJitter
    measured = ArrivalJitter.depth_frames
    deep = {"on": False}
    monkeypatch.setattr(ArrivalJitter, "depth_frames",
                        lambda self: DEEP if deep["on"] else measured(self))
    url, engine, _sessions, cap, _tokens = live_server
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
        # the microphone connects on sign-in, before anybody presses anything
        await br.wait("window.loaState.conn == 'ready'", 15, "the standing connection")
        assert "sẵn sàng" in await br.js("document.getElementById('conn').textContent")
        assert engine.broadcasts() == [] and cap.count == 0
        await asyncio.sleep(0.5)
        assert cap.count == 0, "nothing airs before the press"

        delays, aired, claims, depths = [], [], [], []
        wall_minus_mono = time.time() - time.monotonic()
        for i in range(PRESSES):
            if i == PRESSES // 2:
                deep["on"] = True
                await asyncio.sleep(0.5)   # the receive thread re-reads the depth every 10 packets
            pressed_wall = await br.js(
                "(() => { const t = performance.timeOrigin + performance.now();"
                " document.getElementById('ptt').dispatchEvent(new PointerEvent('pointerdown',"
                " {bubbles: true})); return t / 1000; })()")
            pressed = pressed_wall - wall_minus_mono
            await asyncio.sleep(HOLD_S)
            await br.js("document.getElementById('ptt').dispatchEvent(new PointerEvent("
                        "'pointerup', {bubbles: true})); true")
            await wait_for(lambda: engine.broadcasts() == [], 5, f"press {i}: the zone freed")
            await asyncio.sleep(0.15)
            with cap._lock:
                after = [a for a, _ in cap.packets if a >= pressed]
            assert after, f"press {i}: no packet at the receiver"
            delays.append((after[0] - pressed) * 1000)
            x, _ = cap.decode(since=pressed)
            aired.append(float(np.sum(np.abs(x) > 0.05)) / SAMPLE_RATE)
            claims.append(await br.js("window.loaState.claimMs"))
            # the claim's receive queue depth, as the server decided it (the tick aligned to
            # this connection's arrivals first: 1 frame unless the arrivals spread too wide)
            rx = json.loads(await br.js(
                "fetch('/api/v1/live/sessions/' + encodeURIComponent(window.loaState.session),"
                " {credentials: 'same-origin'}).then(r => r.json())"
                ".then(j => JSON.stringify(j.webrtc))"))
            depths.append(rx["claim_queue_frames"])
        p50, p95 = np.percentile(delays, 50), np.percentile(delays, 95)
        half = PRESSES // 2
        p95_deep = np.percentile(delays[half:], 95)
        split = {d: depths.count(d) for d in sorted(set(depths))}
        print(f"press → first packet: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(delays):.1f}"
              f" (p95 {p95_deep:.1f} ms of the {PRESSES - half} with a {DEEP}-frame queue asked)"
              f"; claim round trip p50 {np.median(claims):.0f} ms; receive queue frames per "
              f"claim {split}; the talker's arrivals at the last claim {rx['claim_arrivals']}")
        assert depths[half:] == [DEEP] * (PRESSES - half), depths   # they did ask for it
        # the bound, over all 30 presses; the deep-queue half on its own too (each of
        # those waited 8 frames, 160 ms, for its queue before a claim started with what it had)
        assert p95 <= 150, sorted(delays)
        assert p95_deep <= 150, sorted(delays[half:])
        # the tone is loud on every sample the microphone captured while held: the start is
        # not cut (a claim starting at the live edge would lose the press → claim time, 20-40
        # ms, at every press). A frame or two of one press may be lost on a loaded machine
        # (a late frame near the release); a claim starting at the live edge on every press is
        # caught by the median.
        assert min(aired) >= HOLD_S - 0.05, aired
        assert np.median(aired) >= HOLD_S - 0.02, aired
        stats = await br.js("JSON.stringify(window.loaState.conn)")
        assert "ready" in stats
    finally:
        await br.stop()
