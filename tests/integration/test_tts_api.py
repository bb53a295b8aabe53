"""Text to speech through a real `loa serve`: a TTS broadcast decoded by ffmpeg from the zone's
SDP is speech of the right length; bad texts are refused with a 4xx naming the problem; the
preview and the media library; a preempted TTS item resumes at a sentence start."""
from __future__ import annotations

import base64
import io
import time
import wave

import numpy as np
import pytest

from streamer.tts.service import TtsService
from tests.integration.conftest import free_udp_ports, read_wav
from tests.integration.test_ffmpeg_client import start_ffmpeg, stop_ffmpeg

pytestmark = pytest.mark.integration

TEXT = ("Thông báo của Ủy ban nhân dân xã. Đề nghị bà con chủ động di dời đến nơi an toàn "
        "trước mười bảy giờ chiều nay. Xin cảm ơn bà con.")


def sentence_frames(text: str, voice: str = "vi") -> list[int]:
    """What the server will render: the same engine, the same sentences, in frames."""
    from streamer.tts.source import to_frames
    svc = TtsService(loudness_target=None)
    p = svc.prepare(text, voice=voice)
    eng = svc.engine(p.engine)
    return [to_frames(svc.render_sentence(s, eng, p.voice, p.rate), 1.0).shape[0]
            for s in p.sentences]


def speech_stats(x: np.ndarray, rate: int) -> tuple[float, float]:
    """(seconds of sound above -45 dBFS in 20 ms windows, share of energy in 250-4000 Hz)."""
    win = rate // 50
    n = len(x) // win
    frames = x[: n * win].reshape(n, win)
    rms = np.sqrt(np.mean(frames ** 2, axis=1) + 1e-12)
    loud = rms > 10 ** (-45 / 20)
    idx = np.nonzero(loud)[0]
    active = (idx[-1] - idx[0] + 1) / 50 if len(idx) else 0.0
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    band = spec[(f >= 250) & (f <= 4000)].sum() / max(spec[f > 20].sum(), 1e-12)
    return float(active), float(band)


def test_tts_broadcast_is_speech_on_the_wire(serve, tmp_path):
    port = free_udp_ports(1)[0] & ~1 or 40000
    srv = serve(f'[[zones]]\nid = "z"\nunicast = ["127.0.0.1:{port}"]\n')
    st, sdp = srv.request("GET", "/api/v1/zones/z/sdp")
    assert st == 200
    sdp_path = tmp_path / "z.sdp"
    sdp_path.write_text(sdp)
    out = tmp_path / "ffmpeg.wav"
    ff = start_ffmpeg(sdp_path, out)
    time.sleep(1.0)
    st, b = srv.request("POST", "/api/v1/broadcasts", {
        "zones": ["z"], "source": {"kind": "tts", "text": TEXT, "voice": "vi-vn-x-south"}})
    assert st == 201, b
    assert b["source"]["kind"] == "tts"
    done = srv.wait_state(b["id"], timeout=30)
    assert done["state"] == "finished" and not done.get("error"), done
    time.sleep(0.5)
    err = stop_ffmpeg(ff)
    x, rate = read_wav(out)
    expected = sum(sentence_frames(TEXT, "vi-vn-x-south")) * 0.02
    active, band = speech_stats(x, rate)
    assert expected > 4.0
    assert abs(active - expected) < 0.6, (active, expected, err)   # espeak's own edge silence
    assert band > 0.8, band            # speech, not hum or hiss
    assert abs(done["position_s"] - expected) < 0.1, (done["position_s"], expected)


@pytest.mark.parametrize("source,code_part,code", [
    ({"text": ""}, "empty", "empty_text"),
    ({"text": "  \n "}, "empty", "empty_text"),
    ({"text": "x" * 101}, "101", "text_too_long"),
    ({"text": "Thông báo\x07 khẩn"}, "control character", "control_characters"),
    ({"text": "Bão số 3 台风"}, "CJK", "unreadable_script"),
    ({"text": "Xin chào", "voice": "nobody"}, "nobody", "unknown_voice"),
    ({"text": "Xin chào", "engine": "nope"}, "nope", "unknown_engine"),
])
def test_bad_texts_are_refused_and_nothing_airs(serve, source, code_part, code):
    srv = serve('tts_max_chars = 100\n[[zones]]\nid = "z"\nunicast = ["127.0.0.1:9"]\n')
    st, b = srv.request("POST", "/api/v1/broadcasts",
                        {"zones": ["z"], "source": dict(source, kind="tts")})
    assert 400 <= st < 500, (st, b)
    assert code_part in b["error"]["message"], b
    assert b["error"]["code"] == code, b   # the same code as the preview, not media_unplayable
    st, p = srv.request("POST", "/api/v1/tts/preview", dict(source))
    assert 400 <= st < 500, (st, p)
    assert code_part in p["error"]["message"], p
    assert p["error"]["code"] == code, p
    _, lst = srv.request("GET", "/api/v1/broadcasts?past=1")
    assert lst["broadcasts"] == []


def test_preview_and_media_library(serve):
    srv = serve('[[zones]]\nid = "z"\nunicast = ["127.0.0.1:9"]\n')
    st, p = srv.request("POST", "/api/v1/tts/preview", {"text": TEXT, "voice": "vi"})
    assert st == 200, p
    assert p["engine"] == "espeak" and p["voice"] == "vi" and len(p["sentences"]) == 3
    assert "Ủy ban nhân dân" in p["words"]
    with wave.open(io.BytesIO(base64.b64decode(p["audio"]))) as w:
        assert w.getframerate() == 48000 and w.getnchannels() == 1
        assert abs(w.getnframes() / 48000 - p["duration_s"]) < 0.05
    assert p["duration_s"] > 4.0
    st, m = srv.request("POST", "/api/v1/media/tts", {"text": TEXT, "voice": "vi-vn-x-central",
                                                       "title": "Thông báo di dời"})
    assert st == 201, m
    assert m["tts"] == {"text": TEXT, "voice": "vi-vn-x-central", "engine": "espeak",
                        "rate": 1.0}
    assert m["title"] == "Thông báo di dời" and m["duration_s"] > 4.0
    st, again = srv.request("GET", f"/api/v1/media/{m['id']}")
    assert st == 200 and again["tts"]["voice"] == "vi-vn-x-central"
    st, b = srv.request("POST", "/api/v1/broadcasts",
                        {"zones": ["z"], "source": {"kind": "media", "id": m["id"]}})
    assert st == 201, b


def test_preempted_tts_resumes_at_a_sentence_start(serve):
    srv = serve('[[zones]]\nid = "z"\nunicast = ["127.0.0.1:9"]\n')
    frames = sentence_frames(TEXT)
    starts = [sum(frames[:i]) * 0.02 for i in range(len(frames))]
    st, b = srv.request("POST", "/api/v1/broadcasts", {
        "zones": ["z"], "level": "normal", "source": {"kind": "tts", "text": TEXT}})
    assert st == 201, b
    # cut it in the middle of the second sentence
    cut_at = starts[1] + 1.0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        _, cur = srv.request("GET", f"/api/v1/broadcasts/{b['id']}")
        if cur["position_s"] >= cut_at:
            break
        time.sleep(0.05)
    st, e = srv.request("POST", "/api/v1/broadcasts", {
        "zones": ["z"], "level": "priority",
        "source": {"kind": "tone", "freq_hz": 800, "seconds": 1.0}})
    assert st == 201, e
    srv.wait_state(e["id"], timeout=10)
    srv.wait_state(b["id"], timeout=30)
    _, log = srv.request("GET", f"/api/v1/asrun?broadcast={b['id']}")
    types = [ev["type"] for ev in log["events"]]
    assert "broadcast.preempted" in types and "broadcast.resumed" in types, types
    pre = next(ev for ev in log["events"] if ev["type"] == "broadcast.preempted")
    res = next(ev for ev in log["events"] if ev["type"] == "broadcast.resumed")
    assert starts[1] < pre["position_s"] < starts[2]
    # resumed exactly where the cut sentence starts (not 2 s back, not mid-word)
    assert res["position_s"] == pytest.approx(starts[1], abs=0.021), (res, starts)


def test_loa_say_reads_a_text_and_refuses_a_bad_one(serve):
    import subprocess
    import sys
    srv = serve('[[zones]]\nid = "z"\nunicast = ["127.0.0.1:9"]\n')
    run = [sys.executable, "-m", "loa.cli", "say", "--server", srv.url, "--zone", "z"]
    r = subprocess.run(run + ["Xin chào bà con.", "--voice", "vi-vn-x-central", "--wait"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "finished" in r.stdout
    r = subprocess.run(run + ["Xin chào", "--voice", "nobody"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "nobody" in r.stderr


def test_zone_voice_and_language_variants(serve):
    """A zone's default voice (inherited, changed through the API) reads a text that names none;
    variants air in each zone's language order, one after another, as one item per zone group;
    a bad variant refuses the whole broadcast before anything airs."""
    srv = serve('[[zones]]\nid = "xa"\nvoice = "vi-vn-x-south"\n'
                '[[zones]]\nid = "thon-1"\nparent = "xa"\nlanguages = ["vi", "bahnar"]\n'
                'unicast = ["127.0.0.1:9"]\n'
                '[[zones]]\nid = "thon-2"\nparent = "xa"\nunicast = ["127.0.0.1:9"]\n')
    _, z = srv.request("GET", "/api/v1/zones/thon-1")
    assert z["languages"] == ["vi", "bahnar"] and z["voice"] is None
    _, z = srv.request("GET", "/api/v1/zones/xa")
    assert z["voice"] == "vi-vn-x-south"

    def read(zone: str, **src) -> dict:
        st, b = srv.request("POST", "/api/v1/broadcasts", {
            "zones": [zone], "source": {"kind": "tts", "text": "Xin chào.", **src}})
        assert st == 201, b
        srv.request("DELETE", f"/api/v1/broadcasts/{b['id']}")
        return b

    assert read("thon-2")["source"]["voice"] == "vi-vn-x-south"   # inherited from xa
    assert read("thon-2", voice="vi")["source"]["voice"] == "vi"   # named wins
    st, z = srv.request("PATCH", "/api/v1/zones/thon-2", {"voice": "vi-vn-x-central"})
    assert st == 200, z
    _, z = srv.request("GET", "/api/v1/zones/thon-2")
    assert z["voice"] == "vi-vn-x-central"
    assert read("thon-2")["source"]["voice"] == "vi-vn-x-central"
    # a zone voice no engine has: refused naming it, before anything airs
    srv.request("PATCH", "/api/v1/zones/thon-2", {"voice": "giong-la"})
    st, b = srv.request("POST", "/api/v1/broadcasts", {
        "zones": ["thon-2"], "source": {"kind": "tts", "text": "Xin chào."}})
    assert st == 422 and b["error"]["code"] == "unknown_voice" and "giong-la" in str(b), b
    srv.request("PATCH", "/api/v1/zones/thon-2", {"voice": ""})
    assert read("thon-2")["source"]["voice"] == "vi-vn-x-south"   # back to the parent's

    # a Bahnar recording in the library
    st, m = srv.request("POST", "/api/v1/media/tts", {"text": "Bok kơ̆n.", "language": "bahnar",
                                                       "title": "Bahnar"})
    assert st == 201, m
    text = "Thông báo của xã. Xin cảm ơn bà con."
    tts_s = sum(sentence_frames(text, "vi-vn-x-south")) * 0.02
    variants = [{"language": "bahnar", "source": {"kind": "media", "id": m["id"]}},
                {"language": "vi", "source": {"kind": "tts", "text": text}}]

    # one zone: one broadcast, Vietnamese then Bahnar (the zone's order, not the request's)
    st, b = srv.request("POST", "/api/v1/broadcasts", {"zones": ["thon-1"],
                                                       "variants": variants})
    assert st == 201, b
    assert b["source"]["kind"] == "variants" and b["source"]["languages"] == ["vi", "bahnar"]
    done = srv.wait_state(b["id"], timeout=30)
    assert done["state"] == "finished" and not done.get("error"), done
    assert abs(done["position_s"] - (tts_s + m["duration_s"])) < 0.3, (done, tts_s, m)
    _, lst = srv.request("GET", "/api/v1/broadcasts?past=1")
    assert [x["id"] for x in lst["broadcasts"]].count(b["id"]) == 1
    n_before = len(lst["broadcasts"])

    # the commune: Thôn 1 hears both, Xã itself (no fixed address: its clusters may register at
    # run time) and Thôn 2 Vietnamese only; one engine broadcast per group
    st, b = srv.request("POST", "/api/v1/broadcasts", {"zones": ["xa"], "variants": variants})
    assert st == 201, b
    group = b["source"]["variant_broadcasts"]
    assert len(group) == 2 and b["id"] in group
    by_zone = {}
    for bid in group:
        d = srv.wait_state(bid, timeout=30)
        assert d["state"] == "finished", d
        by_zone[tuple(d["reached_zones"])] = d
    assert set(by_zone) == {("thon-1",), ("thon-2", "xa")}
    assert by_zone[("thon-1",)]["source"]["languages"] == ["vi", "bahnar"]
    assert by_zone[("thon-2", "xa")]["source"]["languages"] == ["vi"]
    assert abs(by_zone[("thon-2", "xa")]["position_s"] - tts_s) < 0.3

    # a bad variant refuses all of it: nothing airs anywhere
    bad = [variants[0], {"language": "vi", "source": {"kind": "tts", "text": "Bão 台风"}}]
    st, e = srv.request("POST", "/api/v1/broadcasts", {"zones": ["xa"], "variants": bad})
    assert st == 422 and e["error"]["code"] == "unreadable_script", e
    # ...also a variant no zone reached airs (Thôn 2 hears Vietnamese only): checked all the same
    vi = {"language": "vi", "source": {"kind": "tts", "text": "Xin chào."}}
    for other, status, code in (
            ({"language": "bahnar", "source": {"kind": "media", "id": "ffff"}}, 404,
             "unknown_media"),
            ({"language": "bahnar", "source": {"kind": "tts", "text": "Bok 台风"}}, 422,
             "unreadable_script")):
        st, e = srv.request("POST", "/api/v1/broadcasts", {"zones": ["thon-2"],
                                                           "variants": [vi, other]})
        assert st == status and e["error"]["code"] == code, e
    _, lst = srv.request("GET", "/api/v1/broadcasts?past=1")
    assert len(lst["broadcasts"]) == n_before + 2


def test_a_texts_length_is_what_its_source_plays(tmp_path):
    """TtsService.length_s (crash-resume of a text programme): the frames a TtsSource plays,
    from the cache the second time (no synthesis)."""
    from streamer.tts.cache import TtsCache
    svc = TtsService(loudness_target=None, cache=TtsCache(tmp_path / "cache"))
    expect = sum(sentence_frames(TEXT)) * 0.02
    assert svc.length_s(TEXT) == pytest.approx(expect)
    misses = svc.cache.misses
    assert svc.length_s(TEXT) == pytest.approx(expect) and svc.cache.misses == misses
