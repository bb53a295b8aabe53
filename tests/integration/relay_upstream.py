"""A stand-in for an upstream station on loopback (aiohttp in a thread): serves one stream file
(an MP3, Ogg or ADTS AAC made with ffmpeg) chunked at its real-time pace, looped, like an
Icecast mount, or (`HlsUpstream`) a live HLS playlist of MPEG-TS/AAC segments whose window
slides with the clock. `cut()` ends every open response and answers 503 until `restore()`;
`muted` keeps the connection but sends a silent stream instead. The Host header of every
request is kept (`hosts`): a relay connects to an address it checked, naming the host."""
from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
from pathlib import Path

from aiohttp import web

from tests.integration.conftest import free_port


def make_stream(path: Path, freq: float, seconds: float = 4.0, fmt: str = "mp3",
                amplitude: float = 0.5) -> Path:
    codec = {"mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
             "ogg": ["-c:a", "libvorbis", "-q:a", "2"],
             "adts": ["-c:a", "aac", "-b:a", "64k"]}[fmt]
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:sample_rate=44100:duration={seconds},"
                    f"volume={amplitude}", "-ac", "2", *codec, "-f", fmt, str(path)],
                   check=True, timeout=60)
    return path


class Upstream:
    def __init__(self, stream: Path, silent: Path | None = None, content_type: str = "audio/mpeg",
                 bytes_per_s: int = 8000, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.data = stream.read_bytes()
        self.silent = silent.read_bytes() if silent is not None else b""
        self.content_type = content_type
        self.rate = bytes_per_s
        self.up = True
        self.muted = False
        self.connections = 0
        self.hosts: list[str] = []
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
        app.router.add_get("/moved", self._moved)
        for path, handler in getattr(self, "_extra_routes", []):
            app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        self._loop.run_until_complete(site.start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.hosts.append(request.headers.get("Host", ""))
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

    async def _moved(self, request: web.Request) -> web.Response:
        """A redirect to where `redirect_to` says (a station moved to its CDN)."""
        self.hosts.append(request.headers.get("Host", ""))
        raise web.HTTPFound(self.redirect_to)

    redirect_to = "/live.mp3"

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


def make_hls(folder: Path, freq: float, seconds: float = 60.0, segment_s: float = 2.0
             ) -> list[Path]:
    """MPEG-TS segments of AAC (a tone) of `segment_s` each, as a station's HLS packager
    writes them (ffmpeg's hls muxer)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:sample_rate=44100:duration={seconds},volume=0.5",
                    "-ac", "2", "-c:a", "aac", "-b:a", "64k", "-f", "hls",
                    "-hls_time", str(segment_s), "-hls_list_size", "0",
                    "-hls_segment_filename", str(folder / "seg%03d.ts"),
                    str(folder / "all.m3u8")], check=True, timeout=60)
    return sorted(folder.glob("seg*.ts"))


class HlsUpstream(Upstream):
    """A live HLS mount: /live/index.m3u8 lists the last `window` segments of a clock that
    advances one segment every `segment_s` (segments served from `segments` in turn);
    `segment_base` (an absolute URL prefix) makes the playlist name its segments on another
    host, as a CDN does."""

    def __init__(self, segments: list[Path], segment_s: float = 2.0, window: int = 3,
                 segment_base: str = "") -> None:
        self.segments = [p.read_bytes() for p in segments[:-1]]   # the last one is short
        self.segment_s = segment_s
        self.window = window
        self.segment_base = segment_base
        self.t0 = time.monotonic()
        self.playlists = 0
        self.segment_gets = 0
        super().__init__(segments[0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live/index.m3u8"

    def _run(self) -> None:
        self._extra_routes = [("/live/index.m3u8", self._playlist),
                              ("/live/seg{n}.ts", self._segment)]
        super()._run()

    def _head(self) -> int:
        return int((time.monotonic() - self.t0) / self.segment_s) + self.window

    async def _playlist(self, request: web.Request) -> web.Response:
        self.hosts.append(request.headers.get("Host", ""))
        if not self.up:
            return web.Response(status=503, text="source offline")
        self.playlists += 1
        head = self._head()
        first = max(0, head - self.window)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3",
                 f"#EXT-X-TARGETDURATION:{int(self.segment_s + 0.999)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for n in range(first, head):
            if n and n % len(self.segments) == 0:
                lines.append("#EXT-X-DISCONTINUITY")
            lines += [f"#EXTINF:{self.segment_s:.3f},", f"{self.segment_base}seg{n}.ts"]
        return web.Response(text="\n".join(lines) + "\n",
                            content_type="application/vnd.apple.mpegurl")

    async def _segment(self, request: web.Request) -> web.Response:
        self.hosts.append(request.headers.get("Host", ""))
        if not self.up:
            return web.Response(status=503, text="source offline")
        self.segment_gets += 1
        n = int(request.match_info["n"])
        return web.Response(body=self.segments[n % len(self.segments)], content_type="video/mp2t")
