"""HLS for phones that do not play Ogg/Opus (iPhones' Safari): one AAC rendition per zone, made
only while someone fetches it.

`HlsEncoder` is a `streamer.outputs.listen.PacketConsumer` of one zone: the listening hub's pump
hands it the zone's Opus packets (the ones its receivers get; None for a silent tick, which
becomes Opus silence so the timeline never stops). It queues them (bounded: a worker that falls
behind drops the oldest batch and counts it) for one worker thread that decodes Opus, encodes
AAC once and lets FFmpeg's `hls` muxer cut 2 s MPEG-TS segments and keep a sliding playlist in
a directory of its own — all through PyAV, the FFmpeg the project already ships. Timestamps
follow the engine's tick numbers (tick k is sample k*960), so a gap in what the pump delivers is
a gap in time, never a shift.

`HlsZones` owns the encoders: `touch(zone, client)` on every playlist or segment fetch starts
the zone's encoder (up to `max_zones`) and notes the client; `sweep(now)` stops an encoder whose
last fetch is older than `idle_segments` segments. Time is a parameter: the caller's loop
drives the sweep.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from streamer.outputs.ogg import FRAME_GRANULE, silence_packet

__all__ = ["HlsEncoder", "HlsZones", "HlsBusy", "SEGMENT_NAME"]

log = logging.getLogger("loa.hls")
SEGMENT_NAME = re.compile(r"^seg\d{5,9}\.ts$")
_TB = Fraction(1, 48_000)


class HlsBusy(Exception):
    """No encoder may start now (the limit of zones encoding at once)."""


class HlsEncoder:
    def __init__(self, zone: str, directory: Path, segment_s: float = 2.0, list_size: int = 6,
                 bitrate: int = 48_000, max_queue: int = 64) -> None:
        self.zone = zone
        self.dir = directory
        self.segment_s = segment_s
        self.list_size = list_size
        self.bitrate = bitrate
        self.playlist = directory / "index.m3u8"
        self._q: queue.Queue[tuple[int, list[bytes | None]] | None] = queue.Queue(max_queue)
        self._silence = silence_packet()
        self.dropped_batches = 0
        self.frames = 0
        self.failed: str | None = None
        self._k0: int | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"loa-hls-{zone}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # the event loop (the hub's pump): never blocks
    def on_packets(self, zone: str, first_k: int, packets: list[bytes | None],
                   programs: list[int | None]) -> None:
        item = (first_k, packets)
        try:
            self._q.put_nowait(item)
        except queue.Full:
            try:
                self._q.get_nowait()
                self.dropped_batches += 1
            except queue.Empty:
                pass
            try:
                self._q.put_nowait(item)
            except queue.Full:
                self.dropped_batches += 1

    def stop(self, join_s: float = 0.0) -> None:
        """End the worker (it removes its directory as it goes); never blocks unless asked to
        wait `join_s` for it."""
        self._stopping = True
        if not self._thread.is_alive():   # never started, or ended by a failure
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        while True:
            try:
                self._q.put_nowait(None)
                break
            except queue.Full:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    pass
        if join_s > 0 and self._thread.is_alive():
            self._thread.join(join_s)

    def ready(self) -> bool:
        """The playlist lists at least one segment."""
        try:
            return "#EXTINF" in self.playlist.read_text()
        except OSError:
            return False

    # the worker thread
    def _run(self) -> None:
        try:   # decode/encode is background work: yield the core to the tick
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (OSError, AttributeError):
            pass
        import av
        out = None
        try:
            dec = av.CodecContext.create("libopus", "r")
            dec.sample_rate = 48_000
            dec.layout = "mono"
            out = av.open(str(self.playlist), "w", format="hls", options={
                "hls_time": f"{self.segment_s:g}", "hls_list_size": str(self.list_size),
                "hls_flags": "delete_segments+temp_file+omit_endlist",
                "hls_segment_filename": str(self.dir / "seg%05d.ts")})
            st = out.add_stream("aac", rate=48_000)
            st.codec_context.layout = "mono"
            st.codec_context.bit_rate = self.bitrate
            while True:
                item = self._q.get()
                if item is None:
                    break
                first_k, packets = item
                if self._k0 is None:
                    self._k0 = first_k
                for i, p in enumerate(packets):
                    pts = (first_k + i - self._k0) * FRAME_GRANULE
                    for fr in dec.decode(av.Packet(p if p is not None else self._silence)):
                        fr.pts = pts
                        fr.time_base = _TB
                        for ap in st.encode(fr):
                            out.mux(ap)
                        self.frames += 1
        except Exception as e:   # a broken encoder ends this rendition, never the server
            self.failed = f"{type(e).__name__}: {e}"
            log.exception("HLS encoder of zone %s failed", self.zone)
        finally:
            if out is not None:
                try:
                    out.close()
                except Exception:
                    pass
            if self._stopping:
                shutil.rmtree(self.dir, ignore_errors=True)


class HlsZones:
    """The zones being encoded and who fetched them (see module doc)."""

    def __init__(self, root: Path | None, add_consumer: Callable[[str, HlsEncoder], None],
                 remove_consumer: Callable[[str, HlsEncoder], None], segment_s: float = 2.0,
                 idle_segments: float = 3.0, max_zones: int = 16,
                 factory: Callable[[str, Path, float], HlsEncoder] | None = None) -> None:
        self.root = root
        self.factory = factory or HlsEncoder
        self.add_consumer = add_consumer
        self.remove_consumer = remove_consumer
        self.segment_s = segment_s
        self.idle_s = idle_segments * segment_s
        self.max_zones = max_zones
        self.encoders: dict[str, HlsEncoder] = {}
        self.last_fetch: dict[str, float] = {}
        self.clients: dict[str, dict[str, float]] = {}
        self.started = 0

    def touch(self, zone: str, client: str, now: float) -> HlsEncoder:
        enc = self.encoders.get(zone)
        if enc is None or enc.failed is not None:
            if enc is not None:
                self._stop(zone)
            if len(self.encoders) >= self.max_zones:
                raise HlsBusy(f"{len(self.encoders)} zones are being encoded for HLS, the limit")
            d = Path(tempfile.mkdtemp(prefix=f"loa-hls-{_safe(zone)}-",
                                      dir=str(self.root) if self.root else None))
            enc = self.factory(zone, d, self.segment_s)
            enc.start()
            self.encoders[zone] = enc
            self.add_consumer(zone, enc)
            self.started += 1
        self.last_fetch[zone] = now
        self.clients.setdefault(zone, {})[client] = now
        return enc

    def counts(self, now: float) -> dict[str, int]:
        """Clients per zone that fetched within the idle window (HLS has no connection)."""
        out = {}
        for z, cl in self.clients.items():
            n = sum(1 for t in cl.values() if now - t <= self.idle_s)
            if n:
                out[z] = n
        return out

    def sweep(self, now: float) -> list[str]:
        """Stop the encoders nobody fetched from for `idle_segments` segments."""
        gone = [z for z, t in self.last_fetch.items() if now - t > self.idle_s]
        for z in gone:
            self._stop(z)
        for cl in self.clients.values():
            for c in [c for c, t in cl.items() if now - t > self.idle_s]:
                del cl[c]
        return gone

    def close(self) -> None:
        encs = list(self.encoders.values())
        for z in list(self.encoders):
            self._stop(z)
        for enc in encs:
            enc.stop(join_s=2.0)

    def _stop(self, zone: str) -> None:
        self.last_fetch.pop(zone, None)
        self.clients.pop(zone, None)
        enc = self.encoders.pop(zone, None)
        if enc is None:
            return
        self.remove_consumer(zone, enc)
        enc.stop()


def _safe(zone: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", zone)[:40]
