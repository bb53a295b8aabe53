"""Text to speech for control: the engines configured in the settings file (`[[tts_engines]]`),
the preview (`POST /api/v1/tts/preview`: the words that will be spoken and the audio), rendering
a text into the media library (`POST /api/v1/media/tts`, text, voice and engine kept with the
item) and the voices on offer (`GET /api/v1/tts/voices`).

Broadcasting a text goes through the one broadcast use case (control/broadcasts.py) with a
`{"kind": "tts"}` source (control/sources.py); the engine's catalogue reads it.
Synthesis is blocking: it runs in the executor, never on the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import secrets
import wave
from typing import Any

import numpy as np
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from control.db import Database
from control.errors import Invalid
from control.http import Route, json_response, parse_body
from control.media_refs import owner_scope
from control.service import media_root
from control.settings import Settings
from streamer.tts.cache import TtsCache
from streamer.tts.engines import EspeakEngine, TtsEngine, TtsError
from streamer.tts.service import RATE_MAX, RATE_MIN, Prepared, TtsService
from streamer.tts.text import TextError

log = logging.getLogger("loa.tts")

#: a preview reads at most this much of the text (the words are shown in full)
PREVIEW_MAX_CHARS = 2_000


def build_tts(settings: Settings) -> TtsService:
    """The TTS service from the settings: espeak-ng always, plus each `[[tts_engines]]` entry
    (its API key read from the environment variable the entry names)."""
    from streamer.tts.cloud import HttpTtsEngine
    engines: list[TtsEngine] = [EspeakEngine()]
    for c in settings.tts_engines:
        if c.kind == "espeak":
            engines.append(EspeakEngine(c.name, c.default_voice or "vi"))
            continue
        key = os.environ.get(c.api_key_env, "") if c.api_key_env else ""
        if not key:
            log.warning("TTS engine %s: environment variable %s is not set; the service will "
                        "refuse its requests", c.name, c.api_key_env or "(none named)")
        engines.append(HttpTtsEngine(c.name, c.kind, c.url, key, tuple(c.voices),
                                     c.default_voice, app_id=c.app_id,
                                     callback_url=c.callback_url))
    cache = TtsCache(settings.data_dir / "tts-cache", settings.tts_cache_mb * 1024 * 1024)
    return TtsService(engines, default_engine=settings.tts_engine,
                      default_voice=settings.tts_voice, deadline_s=settings.tts_deadline_s,
                      cache=cache, max_chars=settings.tts_max_chars,
                      loudness_target=settings.loudness_target_lufs,
                      processes=settings.tts_processes)


def wav_bytes(pcm: np.ndarray, rate: int = 48_000) -> bytes:
    """16-bit mono WAV (every phone browser plays it)."""
    s16 = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(s16.tobytes())
    return buf.getvalue()


def write_ogg_opus(pcm: np.ndarray, path: str, bitrate: int = 48_000) -> None:
    """Ogg/Opus through PyAV (the media library keeps speech small)."""
    import av
    s16 = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
    out = av.open(path, "w", format="ogg")
    try:
        st = out.add_stream("libopus", rate=48_000, layout="mono")
        st.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(s16, format="s16", layout="mono")
        frame.sample_rate = 48_000
        for p in st.encode(frame):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    finally:
        out.close()


class TtsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=1_000_000)
    voice: str | None = Field(None, min_length=1, max_length=100)
    engine: str | None = Field(None, min_length=1, max_length=100)
    rate: float = Field(1.0, ge=RATE_MIN, le=RATE_MAX)


class PreviewRequest(TtsRequest):
    audio: bool = True  # False: only the words


class MediaTtsRequest(TtsRequest):
    title: str | None = Field(None, max_length=300)
    language: str = Field("vi", min_length=1, max_length=32)
    tags: list[str] = Field(default_factory=list, max_length=50)


class TtsHandlers:
    def __init__(self, tts: TtsService, db: Database, settings: Settings) -> None:
        self.tts = tts
        self.db = db
        self.settings = settings

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/tts/voices", self.voices, "tts.read", "TTS engines and their voices",
              errors=(401,)),
            R("POST", "/tts/preview", self.preview, "tts.preview",
              "The words a text will be read as, with the audio (WAV, base64)",
              body=PreviewRequest, errors=(400, 401, 403, 413, 415, 422)),
            R("POST", "/media/tts", self.render_media, "media.tts",
              "Render a text into the media library (text, voice and engine kept with the item)",
              body=MediaTtsRequest, ok=201, errors=(400, 401, 403, 413, 415, 422)),
        ]

    async def prepare(self, req: TtsRequest) -> Prepared:
        """Checked and cut off the event loop (in a synthesis worker process when the server
        has them: tens of milliseconds of normalisation per 2,000 characters)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self.tts.prepare, req.text, req.engine, req.voice, req.rate)
        except TextError as e:
            raise Invalid(e.code, e.message) from None

    async def _render(self, p: Prepared) -> np.ndarray:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.tts.render, p)
        except TtsError as e:
            raise Invalid("tts_failed", f"the speech engine failed: {e.message}") from None

    async def voices(self, request: web.Request) -> web.Response:
        return json_response({"default_engine": self.tts.default_engine,
                              "default_voice": self.tts.default_voice,
                              # the language an engine reads (every engine here reads
                              # Vietnamese; Bahnar, Chăm, Hrê... are recordings): the live page
                              # offers a text variant only in a language some engine reads
                              "engines": [{"name": n, "kind": e.kind, "voices": list(e.voices),
                                           "default_voice": e.default_voice,
                                           "language": getattr(e, "language", "vi")}
                                          for n, e in sorted(self.tts.engines.items())],
                              "max_chars": self.tts.max_chars})

    async def preview(self, request: web.Request) -> web.Response:
        req = await parse_body(request, PreviewRequest)
        p = await self.prepare(req)
        out: dict[str, Any] = {"words": p.words, "sentences": list(p.sentences),
                               "engine": p.engine, "voice": p.voice, "rate": p.rate}
        if req.audio:
            head = p
            if sum(len(s) for s in p.sentences) > PREVIEW_MAX_CHARS:
                keep: list[str] = []
                n = 0
                for s in p.sentences:
                    if keep and n + len(s) > PREVIEW_MAX_CHARS:
                        break
                    keep.append(s)
                    n += len(s)
                head = Prepared(p.text, p.words, tuple(keep), p.engine, p.voice, p.rate)
                out["truncated"] = True
            pcm = await self._render(head)
            out.update(format="wav", duration_s=round(pcm.shape[0] / 48_000, 2),
                       audio=base64.b64encode(wav_bytes(pcm)).decode("ascii"))
        return json_response(out)

    async def render_media(self, request: web.Request) -> web.Response:
        req = await parse_body(request, MediaTtsRequest)
        p = await self.prepare(req)
        pcm = await self._render(p)
        loop = asyncio.get_running_loop()
        root = media_root(self.settings)
        tmp = root / ".incoming" / f"{secrets.token_hex(8)}.ogg"

        def write() -> tuple[str, int]:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            write_ogg_opus(pcm, str(tmp))
            data = tmp.read_bytes()
            return hashlib.sha256(data).hexdigest(), len(data)
        try:
            digest, size = await loop.run_in_executor(None, write)
            existing = await self.db.media_by_hash(digest)
            if existing is not None:
                return json_response(dict(_public(existing), duplicate=True), status=200)
            final = root / digest
            await loop.run_in_executor(None, os.replace, tmp, final)
        finally:
            await loop.run_in_executor(None, lambda: tmp.unlink(missing_ok=True))
        from control.api.media import probe_upload
        info = await loop.run_in_executor(None, probe_upload, str(final))
        title = req.title or (p.text[:80] + ("…" if len(p.text) > 80 else ""))
        row = {"id": digest[:16], "sha256": digest, "path": str(final),
               "filename": f"tts-{digest[:8]}.ogg", "size": size, **info, "title": title,
               "language": req.language, "tags": req.tags,
               "created_by": request["principal"].name,
               "scope": owner_scope(request["principal"]),
               "tts": {"text": p.text, "voice": p.voice, "engine": p.engine, "rate": p.rate}}
        await self.db.insert_media(row)
        request["audit_target"] = row["id"]
        return json_response(_public(await self.db.media(row["id"]) or row), status=201)


def _public(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "path"}
