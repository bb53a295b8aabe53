"""streamer.tts.cloud.HttpTtsEngine against local stand-ins (aiohttp on loopback) that speak each
service's documented shape: FPT.AI (async URL, 404 until ready), Viettel AI (audio bytes, JSON
errors), Zalo AI (form in, JSON with an audio URL out), Vbee (request id, polled status, audio
link); their key refusals, rate limits (429, Retry-After) and a service slower than the deadline.
And the emergency fallback through a real TtsSource: a dead cloud engine, espeak-ng reads."""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import wave

import numpy as np
import pytest
from aiohttp import web

from streamer.tts.cloud import HttpTtsEngine
from streamer.tts.engines import TtsError
from streamer.tts.service import TtsService
from streamer.tts.source import TtsSource

pytestmark = pytest.mark.integration

KEY = "k-123"


def wav(seconds: float = 0.5, freq: float = 440.0, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    s16 = (np.sin(2 * np.pi * freq * t) * 8000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(s16.tobytes())
    return buf.getvalue()


class StandIn:
    """One aiohttp app per test on 127.0.0.1, in a thread of its own."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.seen: list[dict] = []
        self.mode = "ok"      # ok | bad_key | 429 | 429_then_ok | slow | error
        self.polls = 0
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(self.app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def stop(self) -> None:
        async def down() -> None:
            assert self.runner is not None
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def gate(self) -> web.Response | None:
        """The answers every shape shares: refusals, rate limits, slowness."""
        if self.mode == "slow":
            await asyncio.sleep(3)
        if self.mode == "429" or (self.mode == "429_then_ok" and len(self.seen) == 1):
            return web.json_response({"message": "Too many requests"}, status=429,
                                     headers={"Retry-After": "0.2" if self.mode != "429" else "30"})
        if self.mode == "error":
            return web.json_response({"message": "internal error"}, status=500)
        return None


@pytest.fixture
def stand_in():
    s = StandIn()
    yield s
    s.stop()


def fpt(s: StandIn) -> None:
    ready_after = 2

    async def synth(req: web.Request) -> web.Response:
        s.seen.append({"headers": dict(req.headers), "body": await req.text()})
        g = await s.gate()
        if g is not None:
            return g
        if req.headers.get("api-key") != KEY:
            return web.json_response({"error": 1, "message": "Invalid API key"}, status=401)
        return web.json_response({"async": f"{s.url}/audio/1.mp3", "error": 0,
                                  "message": "The content will be returned after a few seconds",
                                  "request_id": "r1"})

    async def audio(req: web.Request) -> web.Response:
        s.polls += 1
        if s.polls < ready_after:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=wav(), content_type="audio/wav")
    s.app.router.add_post("/hmi/tts/v5", synth)
    s.app.router.add_get("/audio/1.mp3", audio)


def viettel(s: StandIn) -> None:
    async def synth(req: web.Request) -> web.Response:
        body = await req.json()
        s.seen.append(body)
        g = await s.gate()
        if g is not None:
            return g
        if body.get("token") != KEY:
            return web.json_response({"vi_message": "Token không hợp lệ",
                                      "en_message": "Invalid token", "status_code": 401},
                                     status=401)
        if body.get("voice") not in ("hn-quynhanh", "hcm-diemmy"):
            return web.json_response({"en_message": "Voice not found", "status_code": 400},
                                     status=400)
        return web.Response(body=wav(), content_type="audio/wav")
    s.app.router.add_post("/tts/speech_synthesis", synth)


def zalo(s: StandIn) -> None:
    async def synth(req: web.Request) -> web.Response:
        form = await req.post()
        s.seen.append({"form": dict(form), "apikey": req.headers.get("apikey")})
        g = await s.gate()
        if g is not None:
            return g
        if req.headers.get("apikey") != KEY:
            return web.json_response({"error_code": -201, "error_message": "Invalid API key",
                                      "data": {}})
        if not str(form.get("input", "")).strip():
            return web.json_response({"error_code": -1, "error_message": "Empty input"})
        return web.json_response({"error_code": 0, "error_message": "Successful.",
                                  "data": {"url": f"{s.url}/zalo/a.wav"}})

    async def audio(req: web.Request) -> web.Response:
        return web.Response(body=wav(), content_type="audio/wav")
    s.app.router.add_post("/v1/tts/synthesize", synth)
    s.app.router.add_get("/zalo/a.wav", audio)


def vbee(s: StandIn) -> None:
    async def synth(req: web.Request) -> web.Response:
        body = await req.json()
        s.seen.append(body)
        g = await s.gate()
        if g is not None:
            return g
        if req.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"status": 0, "error_code": 401,
                                      "error_message": "Unauthorized"}, status=401)
        return web.json_response({"status": 1, "result": {
            "app_id": body["app_id"], "request_id": "req-9", "status": "IN_PROGRESS"}})

    async def status(req: web.Request) -> web.Response:
        s.polls += 1
        if s.polls < 2:
            return web.json_response({"status": 1, "result": {"request_id": "req-9",
                                                              "status": "IN_PROGRESS"}})
        return web.json_response({"status": 1, "result": {
            "request_id": "req-9", "status": "SUCCESS", "audio_link": f"{s.url}/vbee/a.wav"}})

    async def audio(req: web.Request) -> web.Response:
        return web.Response(body=wav(), content_type="audio/wav")
    s.app.router.add_post("/api/v1/tts", synth)
    s.app.router.add_get("/api/v1/tts/{rid}", status)
    s.app.router.add_get("/vbee/a.wav", audio)


SHAPES = {"fpt": (fpt, "/hmi/tts/v5", ("banmai", "leminh")),
          "viettel": (viettel, "/tts/speech_synthesis", ("hn-quynhanh", "hcm-diemmy")),
          "zalo": (zalo, "/v1/tts/synthesize", ("1", "2")),
          "vbee": (vbee, "/api/v1/tts", ("hn_female_ngochuyen_full_48k-fhg",))}


def engine(s: StandIn, service: str, key: str = KEY) -> HttpTtsEngine:
    shape, path, voices = SHAPES[service]
    shape(s)
    s.start()
    return HttpTtsEngine(service, service, s.url + path, key, voices, app_id="app-1",
                         callback_url="http://127.0.0.1/cb", poll_interval_s=0.05)


@pytest.mark.parametrize("service", sorted(SHAPES))
def test_each_service_renders_a_sentence(stand_in, service):
    e = engine(stand_in, service)
    chunks = list(e.synthesize("Xin chào bà con", e.voices[-1], 1.0, deadline_s=5))
    pcm = np.concatenate(chunks)
    assert abs(pcm.shape[0] / 48000 - 0.5) < 0.02          # resampled to 48 kHz
    assert 0.15 < float(np.sqrt(np.mean(pcm ** 2))) < 0.25
    seen = stand_in.seen[0]
    text = json.dumps(seen, ensure_ascii=False)
    assert "Xin chào bà con" in text and e.voices[-1] in text


@pytest.mark.parametrize("service", sorted(SHAPES))
def test_a_refused_key_is_a_clear_error(stand_in, service):
    e = engine(stand_in, service, key="wrong")
    with pytest.raises(TtsError) as err:
        list(e.synthesize("Xin chào", e.voices[0], 1.0, deadline_s=5))
    assert service in err.value.message
    assert "key" in err.value.message.lower() or "unauthorized" in err.value.message.lower() \
        or "token" in err.value.message.lower()


@pytest.mark.parametrize("service", sorted(SHAPES))
def test_rate_limits(stand_in, service):
    e = engine(stand_in, service)
    stand_in.mode = "429"
    with pytest.raises(TtsError) as err:
        list(e.synthesize("Xin chào", e.voices[0], 1.0, deadline_s=5))
    assert err.value.rate_limited and err.value.status == 429
    assert "rate limit" in err.value.message and "30" in err.value.message
    # a short Retry-After within the deadline is waited out once
    stand_in.mode = "429_then_ok"
    stand_in.seen.clear()
    stand_in.polls = 0
    pcm = np.concatenate(list(e.synthesize("Xin chào", e.voices[0], 1.0, deadline_s=5)))
    assert pcm.size > 0 and len(stand_in.seen) == 2


@pytest.mark.parametrize("service", ["fpt", "viettel"])
def test_server_errors_and_slowness(stand_in, service):
    e = engine(stand_in, service)
    stand_in.mode = "error"
    with pytest.raises(TtsError) as err:
        list(e.synthesize("Xin chào", e.voices[0], 1.0, deadline_s=5))
    assert err.value.status == 500 and "internal error" in err.value.message
    stand_in.mode = "slow"
    t = time.monotonic()
    with pytest.raises(TtsError) as err:
        list(e.synthesize("Xin chào", e.voices[0], 1.0, deadline_s=0.5))
    assert err.value.timeout
    assert time.monotonic() - t < 1.5


def test_viettel_unknown_voice_is_named(stand_in):
    e = engine(stand_in, "viettel")
    e.voices = ("hn-quynhanh", "hn-nobody")
    with pytest.raises(TtsError) as err:
        list(e.synthesize("Xin chào", "hn-nobody", 1.0, deadline_s=5))
    assert "Voice not found" in err.value.message


def run_source(src: TtsSource, timeout: float = 10.0) -> list[np.ndarray]:
    src.start()
    out = []
    deadline = time.monotonic() + timeout
    while not src.finished and time.monotonic() < deadline:
        f = src.read()
        if f is None:
            time.sleep(0.005)
        else:
            out.append(f)
    assert src.finished
    return out


@pytest.mark.parametrize("mode", ["slow", "error"])
def test_an_emergency_falls_back_to_espeak_at_once(stand_in, mode):
    e = engine(stand_in, "viettel")
    stand_in.mode = mode
    svc = TtsService([e], default_engine="viettel", deadline_s=0.5)
    p = svc.prepare("Bão số ba đổ bộ. Đề nghị bà con sơ tán ngay.")
    src = TtsSource(svc, p.sentences, p.engine, p.voice, urgent=True)
    t = time.monotonic()
    frames = run_source(src)
    assert src.ready_ns is not None and src.ready_ns / 1e9 - t < 1.5   # deadline + espeak
    assert src.error is None and src.fell_back and len(frames) > 50
    assert src.notice is not None and "viettel" in src.notice and "espeak-ng" in src.notice
    assert len(stand_in.seen) == 1   # the rest read by espeak-ng, the service not asked again


def test_a_normal_item_reports_the_engine_failure(stand_in):
    e = engine(stand_in, "zalo", key="wrong")
    svc = TtsService([e], default_engine="zalo")
    p = svc.prepare("Thông báo họp dân.")
    src = TtsSource(svc, p.sentences, p.engine, p.voice)
    frames = run_source(src)
    assert frames == [] and src.error is not None
    assert "Invalid API key" in src.error and "zalo" in src.error
