"""One HTTP adapter for the domestic cloud TTS services Vietnamese provinces buy: FPT.AI,
Viettel AI, Zalo AI and Vbee. Each takes text + voice + key and answers with audio or with an
audio URL (fetched, polled until ready); the per-service request/response shapes live in one
table of small functions here. The services' documented shapes:

    fpt      POST {url} body=text, headers api-key, voice, speed (-3..3), format
             → {"error": 0, "async": "<audio url>", "message": ...}; the URL 404s until ready
    viettel  POST {url} JSON {text, voice, speed (0.7..1.3), tts_return_option: 2 (wav),
             token, without_filter} → audio bytes; errors as JSON (code/message, vi_message)
    zalo     POST {url} form input, speaker_id, speed (0.8..1.2), encode_type, header apikey
             → {"error_code": 0, "error_message": ..., "data": {"url": "<audio url>"}}
    vbee     POST {url} JSON {app_id, response_type: "indirect", callback_url, input_text,
             voice_code, audio_type, speed_rate}, header Authorization: Bearer
             → {"status": 1, "result": {"request_id", "status": "IN_PROGRESS"}}; poll
             GET {url}/{request_id} until result.status SUCCESS with result.audio_link

HTTP goes through the standard library (urllib): the adapter runs in the synthesis pool's
threads, blocking, with every wait bounded by the sentence's deadline. A 429 (or a quota answer)
is a rate limit: waited out once when its Retry-After fits the deadline, an error otherwise.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.tts.engines import TtsError, decode_audio_bytes

__all__ = ["HttpTtsEngine", "SERVICES"]

SERVICES = ("fpt", "viettel", "zalo", "vbee")


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str
    retry_after: float | None


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


class HttpTtsEngine:
    """A cloud TTS service behind the engine interface. `service` picks the request/response
    shape; `url` is the service's synthesis endpoint; `api_key` comes from the environment
    variable the settings name; `voices` are the service's voice names this server offers."""
    kind: str = "http"

    def __init__(self, name: str, service: str, url: str, api_key: str,
                 voices: tuple[str, ...], default_voice: str | None = None, *,
                 app_id: str = "", callback_url: str = "", poll_interval_s: float = 0.25,
                 timeout_s: float = 30.0) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown TTS service {service!r} (known: {', '.join(SERVICES)})")
        if not voices:
            raise ValueError(f"TTS engine {name!r} names no voices")
        self.name = name
        self.service = service
        self.url = url
        self.api_key = api_key
        self.voices = tuple(voices)
        self.default_voice = default_voice or self.voices[0]
        self.app_id = app_id
        self.callback_url = callback_url
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.requests = 0

    # ------------------------------------------------------------------ HTTP
    def _http(self, method: str, url: str, t_end: float, body: bytes | None = None,
              headers: Mapping[str, str] | None = None) -> _Answer:
        left = t_end - time.monotonic()
        if left <= 0:
            raise TtsError(f"{self.name} did not answer within the deadline", timeout=True)
        req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=left) as resp:
                return _Answer(resp.status, resp.read(), resp.headers.get("Content-Type", ""),
                               None)
        except urllib.error.HTTPError as e:
            ra = e.headers.get("Retry-After") if e.headers else None
            try:
                retry = float(ra) if ra is not None else None
            except ValueError:
                retry = None
            data = e.read() if e.fp is not None else b""
            return _Answer(e.code, data, e.headers.get("Content-Type", "") if e.headers else "",
                           retry)
        except TimeoutError:
            raise TtsError(f"{self.name} did not answer within the deadline",
                           timeout=True) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TtsError(f"{self.name} did not answer within the deadline",
                               timeout=True) from None
            raise TtsError(f"{self.name} cannot be reached ({e.reason})") from None
        except OSError as e:
            raise TtsError(f"{self.name} cannot be reached ({e})") from None

    def _call(self, method: str, url: str, t_end: float, body: bytes | None = None,
              headers: Mapping[str, str] | None = None) -> _Answer:
        """One request; a 429 is waited out once if its Retry-After fits the deadline."""
        ans = self._http(method, url, t_end, body, headers)
        if ans.status == 429 and ans.retry_after is not None \
                and time.monotonic() + ans.retry_after < t_end:
            time.sleep(max(0.0, ans.retry_after))
            ans = self._http(method, url, t_end, body, headers)
        if ans.status == 429:
            after = f" (retry after {ans.retry_after:g} s)" if ans.retry_after is not None else ""
            raise TtsError(f"{self.name} refused: rate limit reached{after}", status=429,
                           rate_limited=True)
        return ans

    def _fail(self, ans: _Answer, detail: str = "") -> TtsError:
        msg = detail or _message(ans.body)
        if ans.status in (401, 403):
            return TtsError(f"{self.name} refused the API key (HTTP {ans.status}): {msg}",
                            status=ans.status)
        return TtsError(f"{self.name} answered HTTP {ans.status}: {msg}", status=ans.status)

    def _json(self, ans: _Answer) -> dict[str, Any]:
        try:
            data = json.loads(ans.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise TtsError(f"{self.name} answered something that is not JSON "
                           f"(HTTP {ans.status})", status=ans.status) from None
        if not isinstance(data, dict):
            raise TtsError(f"{self.name} answered unexpected JSON", status=ans.status)
        return data

    def _download(self, url: str, t_end: float, headers: Mapping[str, str] | None = None
                  ) -> bytes:
        """The audio at `url`; a 404 means not ready yet (FPT.AI's async URL): polled."""
        while True:
            ans = self._call("GET", url, t_end, headers=headers)
            if ans.status == 200 and ans.body:
                return ans.body
            if ans.status != 404:
                raise self._fail(ans)
            if time.monotonic() + self.poll_interval_s >= t_end:
                raise TtsError(f"{self.name}: the audio was not ready within the deadline",
                               timeout=True)
            time.sleep(self.poll_interval_s)

    # ------------------------------------------------------------------ the shapes
    def _fpt(self, text: str, voice: str, rate: float, t_end: float) -> bytes:
        speed = int(round(_clamp((rate - 1.0) * 6.0, -3, 3)))
        ans = self._call("POST", self.url, t_end, text.encode("utf-8"),
                         {"api-key": self.api_key, "voice": voice, "speed": str(speed),
                          "format": "mp3", "Content-Type": "text/plain; charset=utf-8"})
        if ans.status != 200:
            raise self._fail(ans)
        data = self._json(ans)
        if data.get("error", 0) != 0 or not data.get("async"):
            raise TtsError(f"{self.name} refused the text: {data.get('message') or data}")
        return self._download(str(data["async"]), t_end)

    def _viettel(self, text: str, voice: str, rate: float, t_end: float) -> bytes:
        body = json.dumps({"text": text, "voice": voice, "speed": _clamp(rate, 0.7, 1.3),
                           "tts_return_option": 2, "token": self.api_key,
                           "without_filter": False}).encode()
        ans = self._call("POST", self.url, t_end, body, {"Content-Type": "application/json",
                                                         "Accept": "*/*"})
        if ans.status != 200:
            raise self._fail(ans)
        if "json" in ans.content_type:  # an error explained in JSON, even with 200
            raise TtsError(f"{self.name} refused the text: {_message(ans.body)}")
        return ans.body

    def _zalo(self, text: str, voice: str, rate: float, t_end: float) -> bytes:
        form = urllib.parse.urlencode({"input": text, "speaker_id": voice,
                                       "speed": f"{_clamp(rate, 0.8, 1.2):.2f}",
                                       "encode_type": 0}).encode()
        ans = self._call("POST", self.url, t_end, form,
                         {"apikey": self.api_key,
                          "Content-Type": "application/x-www-form-urlencoded"})
        if ans.status != 200:
            raise self._fail(ans)
        data = self._json(ans)
        url = (data.get("data") or {}).get("url") if isinstance(data.get("data"), dict) else None
        if data.get("error_code", 0) != 0 or not url:
            code = data.get("error_code")
            if code in (-429, 429) or "quota" in str(data.get("error_message", "")).lower():
                raise TtsError(f"{self.name} refused: rate limit reached "
                               f"({data.get('error_message')})", rate_limited=True)
            raise TtsError(f"{self.name} refused the text: "
                           f"{data.get('error_message') or data} (error {code})")
        return self._download(str(url), t_end)

    def _vbee(self, text: str, voice: str, rate: float, t_end: float) -> bytes:
        auth = {"Authorization": f"Bearer {self.api_key}"}
        body = json.dumps({"app_id": self.app_id, "response_type": "indirect",
                           "callback_url": self.callback_url, "input_text": text,
                           "voice_code": voice, "audio_type": "wav",
                           "speed_rate": f"{_clamp(rate, 0.1, 1.9):.2f}"}).encode()
        ans = self._call("POST", self.url, t_end, body,
                         dict(auth, **{"Content-Type": "application/json"}))
        if ans.status != 200:
            raise self._fail(ans)
        data = self._json(ans)
        result: dict[str, Any] = data["result"] if isinstance(data.get("result"), dict) else {}
        if data.get("status") != 1 or not result.get("request_id"):
            raise TtsError(f"{self.name} refused the text: "
                           f"{data.get('error_message') or data.get('message') or data}")
        status_url = self.url.rstrip("/") + "/" + urllib.parse.quote(str(result["request_id"]))
        while True:
            link = result.get("audio_link")
            if result.get("status") == "SUCCESS" and link:
                return self._download(str(link), t_end)
            if result.get("status") == "FAILURE":
                raise TtsError(f"{self.name} could not render the text: "
                               f"{result.get('error_message') or 'FAILURE'}")
            if time.monotonic() + self.poll_interval_s >= t_end:
                raise TtsError(f"{self.name}: the audio was not ready within the deadline",
                               timeout=True)
            time.sleep(self.poll_interval_s)
            ans = self._call("GET", status_url, t_end, headers=auth)
            if ans.status != 200:
                raise self._fail(ans)
            data = self._json(ans)
            result = data["result"] if isinstance(data.get("result"), dict) else {}

    _SHAPES: dict[str, Callable[[HttpTtsEngine, str, str, float, float], bytes]] = {
        "fpt": _fpt, "viettel": _viettel, "zalo": _zalo, "vbee": _vbee}

    # ------------------------------------------------------------------ the interface
    def fetch(self, sentence: str, voice: str, rate: float,
              deadline_s: float | None = None) -> bytes:
        """The service's audio file for one sentence (bytes as it sent them)."""
        if voice not in self.voices:
            raise TtsError(f"{self.name} has no voice {voice!r} "
                           f"(voices: {', '.join(self.voices)})")
        t_end = time.monotonic() + (deadline_s if deadline_s else self.timeout_s)
        return self._SHAPES[self.service](self, sentence, voice, rate, t_end)

    def synthesize(self, sentence: str, voice: str, rate: float,
                   deadline_s: float | None = None) -> Iterator[np.ndarray]:
        audio = self.fetch(sentence, voice, rate, deadline_s)
        yield decode_audio_bytes(audio, f"{self.name}'s audio")


def _message(body: bytes) -> str:
    """The human part of an error body (JSON message fields, or the text, shortened)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200] or "(no message)"
    if isinstance(data, dict):
        for k in ("message", "error_message", "en_message", "vi_message", "msg", "error",
                  "detail"):
            v = data.get(k)
            if isinstance(v, str) and v:
                return v[:200]
    return text[:200]
