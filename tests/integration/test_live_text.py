"""The live page's "read a message" mode (control/static/live-text.js) in a real headless
Chromium: an official signs in, types a bulletin (a typed space is text, not hold-to-talk),
hears the preview (the WAV reaches the page's audio element), sees the words that will be
spoken, is told in Vietnamese what is wrong with a bad text, sends the text to a zone (a `tts`
broadcast starts there and its packets reach the zone's receiver), switches to English and stops
it. Real create_app(), real auth, real espeak-ng."""
import asyncio
import shutil

import numpy as np
import pytest
from aiohttp import web

from bench.latency_live import RtpCapture
from control.app import create_app
from control.settings import Settings
from streamer.ingest.webrtc import restrict_ice_to_loopback
from tests.conftest import require_tool, write_wav
from tests.integration.conftest import until as wait_for
from tests.integration.test_live_page import Browser

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

TEXT_A = "Thông báo: bão số 3 đổ bộ lúc 17h30,"
TEXT_B = " đề nghị bà con di dời trước 16h."


@pytest.fixture
async def text_server(tmp_path):
    cap = RtpCapture()
    settings = Settings(zones=[{"id": "xa", "name": "Xã Nhơn Lý"},
                               {"id": "thon-1", "name": "Thôn 1", "parent": "xa",
                                "unicast": [f"127.0.0.1:{cap.port}"]},
                               {"id": "xa-khac", "name": "Xã Khác"}],
                        data_dir=tmp_path, http="127.0.0.1:0", send_port=0,
                        webrtc_loopback_only=True)
    app = create_app(settings)
    runner = web.AppRunner(app)
    try:
        await runner.setup()
        await app["loa"].state.create_user("ong-a", "official", ["xa"], "mat-khau-ong-a",
                                           "Ông A")
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", app["loa"].engine, cap
    finally:
        await runner.cleanup()
        cap.close()
        restrict_ice_to_loopback(False)


async def type_text(br: Browser, text: str) -> None:
    """Real key events: a space goes through keyDown/keyUp like a phone keyboard's."""
    for ch in text:
        if ch == " ":
            await br.send("Input.dispatchKeyEvent", type="keyDown", key=" ", code="Space",
                          text=" ", windowsVirtualKeyCode=32)
            await br.send("Input.dispatchKeyEvent", type="keyUp", key=" ", code="Space",
                          windowsVirtualKeyCode=32)
        else:
            await br.send("Input.insertText", text=ch)


async def test_official_reads_a_message_to_a_zone(text_server, tmp_path):
    require_tool("chromium", "the phone is a real browser")
    url, engine, cap = text_server
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(4800), 48000)
    br = Browser(f"{url}/live", wav)
    try:
        await br.connect()
        await br.wait("!document.getElementById('login').classList.contains('hidden')", 10,
                      "the login form")
        await br.js("document.getElementById('username').value='ong-a';"
                    "document.getElementById('password').value='mat-khau-ong-a';"
                    "document.getElementById('login-btn').click(); true")
        await br.wait("document.querySelectorAll('#zones input').length == 2", 10,
                      "the zones this official may use (not Xã Khác)")
        # the mode, in Vietnamese first
        assert await br.js("document.querySelector('#tts summary').textContent") == "Đọc văn bản"
        await br.js("document.getElementById('tts').open = true; true")
        await br.wait("document.querySelectorAll('#tts-voice option').length >= 4", 10,
                      "the voices")
        voices = await br.js("[...document.querySelectorAll('#tts-voice option')]"
                             ".map(o => o.textContent)")
        assert voices[0] == "Mặc định của khu vực" and any("Giọng Nam" in v for v in voices)

        # a bad text: refused by the server, explained in Vietnamese, code kept
        await br.js("document.getElementById('tts-text').value='Bão số 3 台风'; "
                    "document.getElementById('tts-preview').click(); true")
        await br.wait("window.loaText.phase == 'error'", 15, "the refusal of a CJK text")
        assert await br.js("window.loaText.errorCode") == "unreadable_script"
        msg = await br.js("document.getElementById('tts-msg').textContent")
        assert "không đọc được" in msg and "CJK" in msg

        # type the bulletin for real; the spaces must not start a live talk
        await br.js("const a = document.getElementById('tts-text'); a.value = ''; a.focus(); true")
        await type_text(br, TEXT_A)
        await type_text(br, TEXT_B)
        assert await br.js("document.getElementById('tts-text').value") == TEXT_A + TEXT_B
        await asyncio.sleep(0.3)
        assert await br.js("window.loaState.phase") == "idle"  # no hold-to-talk from typing
        assert engine.broadcasts() == []
        assert str(len(TEXT_A + TEXT_B)) in await br.js(
            "document.getElementById('tts-count').textContent")

        # preview in the southern voice: the words, and audio the phone can play
        await br.js("const s = document.getElementById('tts-voice');"
                    "s.value = [...s.options].find(o => o.textContent.includes('vi-vn-x-south'))"
                    ".value; document.getElementById('tts-preview').click(); true")
        await br.wait("window.loaText.phase == 'previewed'", 20, "the preview")
        words = await br.js("document.getElementById('tts-words').textContent")
        assert "bão số ba" in words and "mười bảy giờ ba mươi" in words, words
        assert "17h30" not in words
        await br.wait("document.getElementById('tts-audio').readyState >= 1", 10,
                      "the preview audio to load")
        dur = await br.js("document.getElementById('tts-audio').duration")
        assert dur > 2.0, dur
        assert abs(dur - await br.js("window.loaText.previewSeconds")) < 0.1
        assert await br.js("window.loaText.previewBytes") > 48000 * 2 * 2  # > 2 s of WAV
        assert engine.broadcasts() == []  # a preview airs nothing

        # send it to Thôn 1 only
        await br.js("document.querySelectorAll('#zones input').forEach(c => c.checked = "
                    "c.value == 'thon-1'); document.getElementById('tts-send').click(); true")
        await br.wait("window.loaText.phase == 'on_air'", 15, "the broadcast to start")
        bid = await br.js("window.loaText.broadcast")
        b = engine.broadcast(bid).to_dict()
        assert b["source"]["kind"] == "tts" and b["owner"] == "ong-a"
        assert b["reached_zones"] == ["thon-1"] and b["level"] == "normal"
        assert b["source"]["voice"] == "vi-vn-x-south"
        await wait_for(lambda: cap.count > 25, 10, "TTS packets at the zone's receiver")
        await br.wait("document.getElementById('tts-msg').textContent.includes('Thôn 1')", 5,
                      "the zone it is being read in")

        # English is one tap away, for this mode too
        await br.js("document.getElementById('lang').click(); true")
        assert await br.js("document.querySelector('#tts summary').textContent") == \
            "Read a message"
        assert await br.js("document.getElementById('tts-stop').textContent") == "Stop"

        # stop it from the phone
        await br.js("document.getElementById('tts-stop').click(); true")
        await br.wait("window.loaText.phase == 'ended'", 10, "the stop")
        assert engine.broadcast(bid).state == "stopped"
        assert "Stopped" in await br.js("document.getElementById('tts-msg').textContent")
        assert await br.js("document.getElementById('tts-stop').classList.contains('hidden')")
    finally:
        await br.stop()


@pytest.fixture
async def variants_server(tmp_path):
    """Thôn 1 speaks Vietnamese only, Thôn 2 Vietnamese, Bahnar and Chăm; the library has a
    Bahnar recording; a stand-in engine declares that it reads Chăm (no real engine does)."""
    caps = RtpCapture(), RtpCapture()
    settings = Settings(zones=[{"id": "xa", "name": "Xã Ia Grai"},
                               {"id": "thon-1", "name": "Thôn 1", "parent": "xa",
                                "unicast": [f"127.0.0.1:{caps[0].port}"]},
                               {"id": "thon-2", "name": "Làng Bahnar", "parent": "xa",
                                "languages": ["vi", "bahnar", "cham"],
                                "unicast": [f"127.0.0.1:{caps[1].port}"]}],
                        data_dir=tmp_path, http="127.0.0.1:0", send_port=0,
                        webrtc_loopback_only=True)
    app = create_app(settings)
    runner = web.AppRunner(app)
    try:
        await runner.setup()
        state = app["loa"].state
        await state.create_user("ong-a", "official", ["xa"], "mat-khau-ong-a", "Ông A")
        op = await state.create_user("van-thu", "operator", [], "mat-khau-van-thu", "Văn thư")
        token = (await state.create_token(op["id"], "test"))["token"]
        from streamer.tts.engines import EspeakEngine
        cham = EspeakEngine("doc-cham")
        cham.language = "cham"   # type: ignore[attr-defined]
        app["loa"].engine.catalogue.tts.engines[cham.name] = cham
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        import aiohttp
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
            async with s.post(f"{url}/api/v1/media/tts", json={
                    "text": "Bok kơ̆n. Xin chào bà con.", "language": "bahnar",
                    "title": "Thông báo tiếng Ba Na"}) as r:
                media = await r.json()
                assert r.status == 201, media
        yield url, app["loa"].engine, caps, media
    finally:
        await runner.cleanup()
        for c in caps:
            c.close()
        restrict_ice_to_loopback(False)


async def test_official_adds_language_variants_for_zones_that_list_languages(variants_server,
                                                                           tmp_path):
    """The ticked zones' other languages are offered (only when a ticked zone lists them):
    per language a recording of the library tagged with it, or a text where an engine reads
    it; the request carries `variants` as POST /broadcasts takes them; each zone airs its own
    sequence (Thôn 1 the Vietnamese text, Làng Bahnar text + Bahnar recording + Chăm text);
    the phone follows and stops every group."""
    require_tool("chromium", "the phone is a real browser")
    url, engine, caps, media = variants_server
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(4800), 48000)
    br = Browser(f"{url}/live", wav)
    try:
        await br.connect()
        await br.wait("!document.getElementById('login').classList.contains('hidden')", 10,
                      "the login form")
        await br.js("document.getElementById('username').value='ong-a';"
                    "document.getElementById('password').value='mat-khau-ong-a';"
                    "document.getElementById('login-btn').click(); true")
        await br.wait("document.querySelectorAll('#zones input').length == 3", 10, "the zones")
        await br.js("document.querySelectorAll('#zones input').forEach(c => { c.checked = "
                    "c.value == 'thon-1'; }); document.getElementById('tts').open = true; true")
        await br.wait("window.loaText.voices !== null", 10, "the voices")
        await asyncio.sleep(0.3)
        # Thôn 1 speaks Vietnamese only: nothing more to add
        assert await br.js("document.getElementById('tts-variants').classList"
                           ".contains('hidden')")
        assert await br.js("window.loaText.languages.length") == 0
        # tick Làng Bahnar as a finger does: its languages are offered, in its order
        await br.js("const c = document.querySelector('#zones input[value=\"thon-2\"]');"
                    "c.click(); true")
        await br.wait("document.querySelectorAll('.tts-variant').length == 2", 10,
                      "a row per other language")
        assert await br.js("window.loaText.languages") == ["bahnar", "cham"]
        assert not await br.js("document.getElementById('tts-variants').classList"
                               ".contains('hidden')")
        opts = await br.js("[...document.querySelectorAll('.tts-variant')].map(r => "
                           "[r.dataset.lang, [...r.querySelectorAll('option')].map(o => o.value)])")
        assert opts == [["bahnar", ["", f"media:{media['id']}"]],      # no engine reads Bahnar
                        ["cham", ["", "text"]]], opts                   # the stand-in reads Chăm
        assert "Ba Na" in await br.js("document.querySelector('.tts-variant[data-lang=bahnar]')"
                                      ".textContent")
        assert "chưa có bản ghi âm" in await br.js(
            "document.querySelector('.tts-variant[data-lang=cham] .tts-variant-note')"
            ".textContent")

        # the Vietnamese text, the Bahnar recording, a Chăm text (empty first: refused here)
        await br.js("document.getElementById('tts-text').value = 'Thông báo của xã: họp dân "
                    "lúc 8 giờ.'; const sb = document.querySelector("
                    "'.tts-variant[data-lang=bahnar] select'); sb.value = 'media:" + media["id"]
                    + "'; sb.dispatchEvent(new Event('change')); const sc = document.querySelector("
                    "'.tts-variant[data-lang=cham] select'); sc.value = 'text';"
                    "sc.dispatchEvent(new Event('change')); true")
        assert not await br.js("document.querySelector('.tts-variant[data-lang=cham] textarea')"
                               ".classList.contains('hidden')")
        await br.js("document.getElementById('tts-send').click(); true")
        await br.wait("document.getElementById('tts-msg').textContent.includes('Chăm')", 5,
                      "the empty Chăm text refused on the phone")
        assert engine.broadcasts() == []
        await br.js("const a = document.querySelector('.tts-variant[data-lang=cham] textarea');"
                    "a.value = 'Xin chào bà con.'; a.dispatchEvent(new Event('input')); "
                    "document.getElementById('tts-send').click(); true")
        await br.wait("window.loaText.phase == 'on_air'", 20, "the broadcast to start")
        sent = await br.js("window.loaText.request")
        assert "source" not in sent and sent["zones"] == ["thon-1", "thon-2"]
        assert [v["language"] for v in sent["variants"]] == ["vi", "bahnar", "cham"]
        assert sent["variants"][1]["source"] == {"kind": "media", "id": media["id"]}
        assert sent["variants"][2]["source"]["engine"] == "doc-cham"
        ids = await br.js("window.loaText.broadcasts")
        assert len(ids) == 2
        by_zone = {tuple(engine.broadcast(i).to_dict()["reached_zones"]):
                   engine.broadcast(i).to_dict()["source"] for i in ids}
        assert by_zone[("thon-1",)]["languages"] == ["vi"]
        assert by_zone[("thon-2",)]["languages"] == ["vi", "bahnar", "cham"]
        assert by_zone[("thon-2",)]["variants"][1]["title"] == "Thông báo tiếng Ba Na"
        await wait_for(lambda: caps[0].count > 25 and caps[1].count > 25, 10,
                       "packets at both zones' receivers")
        await br.wait("document.getElementById('tts-msg').textContent.includes('Làng Bahnar')"
                      " && document.getElementById('tts-msg').textContent.includes('Thôn 1')",
                      5, "both zones named on the phone")
        # stop: every group
        await br.js("document.getElementById('tts-stop').click(); true")
        await br.wait("window.loaText.phase == 'ended'", 10, "the stop")
        assert {engine.broadcast(i).state for i in ids} == {"stopped"}
    finally:
        await br.stop()
