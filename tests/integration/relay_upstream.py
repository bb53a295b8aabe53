"""A stand-in for an upstream station on loopback (aiohttp in a thread): serves one stream file
(an MP3 or Ogg made with ffmpeg) chunked at its real-time pace, looped, like an Icecast mount.
`cut()` ends every open response and answers 503 until `restore()`; `mute()` keeps the
connection but sends a silent stream instead."""
from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path

from aiohttp import web

from tests.integration.conftest import free_port


def make_stream(path: Path, freq: float, seconds: float = 4.0, fmt: str = "mp3",
                amplitude: float = 0.5) -> Path:
    codec = ["-c:a", "libmp3lame", "-b:a", "64k"] if fmt == "mp3" else \
        ["-c:a", "libvorbis", "-q:a", "2"]
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:sample_rate=44100:duration={seconds},"
                    f"volume={amplitude}", "-ac", "2", *codec, "-f", fmt, str(path)],
                   check=True, timeout=60)
    return path


class Upstream:
    def __init__(self, stream: Path, silent: Path | None = None, content_type: str = "audio/mpeg",
                 bytes_per_s: int = 8000) -> None:
        self.data = stream.read_bytes()
        self.silent = silent.read_bytes() if silent is not None else b""
        self.content_type = content_type
        self.rate = bytes_per_s
        self.up = True
        self.muted = False
        self.connections = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._responses: set[web.StreamResponse] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.mp3"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/live.mp3", self._stream)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if not self.up:
            return web.Response(status=503, text="source offline")
        self.connections += 1
        resp = web.StreamResponse(headers={"Content-Type": self.content_type,
                                           "icy-name": "test station"})
        await resp.prepare(request)
        self._responses.add(resp)
        chunk = max(1, self.rate // 10)
        pos = 0
        # a burst of about a second first, as Icecast sends, then real time
        burst = True
        try:
            while self.up:
                data = self.silent if self.muted and self.silent else self.data
                if pos >= len(data):
                    pos = 0
                n = self.rate if burst else chunk
                await resp.write(data[pos:pos + n])
                pos += n
                burst = False
                await asyncio.sleep(0.1)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._responses.discard(resp)
        return resp

    def cut(self) -> None:
        """The upstream goes down: open streams end, new connections get 503."""
        self.up = False

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.up = False

        async def stop() -> None:
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
