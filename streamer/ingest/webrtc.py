"""WebRTC microphone ingest (aiortc): SDP offer in, answer out, audio track into a LiveSource.

One `WebRtcSession` per talker. aiortc decodes Opus in its own worker thread and hands us
`av.AudioFrame`s (s16 stereo 48 kHz, 960 samples, from Chromium); turning one into 48 kHz mono
float32 is a few microseconds of numpy, and any other rate or layout goes through a stateful
`av.AudioResampler` (C code, well under a millisecond per frame), so nothing heavy runs on the
event loop.

The session ends, exactly once, with a reason:
- the browser hangs up or the page closes (DTLS close → the track ends, or the peer connection
  goes to "closed");
- ICE or DTLS fails (connection state "failed");
- no audio arrives for `grace_s` (default 3 s): a short 4G drop keeps the zone (the engine plays
  silence for the underrunning source) and only a longer one releases it;
- the engine lets go of the source (an operator stopped the broadcast): the connection is closed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from streamer.audio import DTYPE, SAMPLE_RATE
from streamer.ingest.live import LiveSource

if TYPE_CHECKING:
    import av
    from aiortc.mediastreams import MediaStreamTrack
    from av.audio.frame import AudioFrame

log = logging.getLogger("loa.webrtc")

_original_get_host_addresses: Callable[..., list[str]] | None = None


def _loopback_host_addresses(use_ipv4: bool = True, use_ipv6: bool = False) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def restrict_ice_to_loopback(enabled: bool = True) -> None:
    """Gather ICE host candidates on 127.0.0.1 only (tests, benchmarks; process-wide).

    aioice otherwise offers every interface address (and skips 127.0.0.1); in a network
    namespace with only `lo`, or when ICE would pick an IPv6 address, loopback-only is what makes
    a test with a local Chromium (`--allow-loopback-in-peer-connection`) deterministic.
    """
    global _original_get_host_addresses
    import aioice.ice as ice
    if _original_get_host_addresses is None:
        _original_get_host_addresses = ice.get_host_addresses
    if enabled:
        ice.get_host_addresses = _loopback_host_addresses
    else:
        ice.get_host_addresses = _original_get_host_addresses


class AudioConverter:
    """av.AudioFrame (any format, layout, rate) → 48 kHz mono float32 samples."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None
        self.resampled_frames = 0

    def convert(self, frame: AudioFrame) -> np.ndarray:
        fmt = frame.format.name
        channels = len(frame.layout.channels)
        if frame.sample_rate == SAMPLE_RATE and fmt in ("s16", "s16p", "flt", "fltp"):
            a: np.ndarray = frame.to_ndarray()
            if fmt in ("s16", "flt"):  # packed: one row, channels interleaved
                a = a.reshape(-1, channels).T if channels > 1 else a.reshape(1, -1)
            x = a.mean(axis=0) if channels > 1 else a[0]
            mono: np.ndarray
            if fmt.startswith("s16"):
                mono = (x * (1.0 / 32768.0)).astype(DTYPE)
            else:
                mono = x.astype(DTYPE, copy=False)
            return mono
        # resample each channel (planar float) and average them ourselves, as the fast path
        # does: FFmpeg's own downmix would scale by 1/sqrt(2) and make levels depend on rate
        key = (fmt, frame.layout.name, frame.sample_rate)
        if self._resampler is None or self._key != key:
            import av
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name,
                                                rate=SAMPLE_RATE)
            self._key = key
        self.resampled_frames += 1
        out = [f.to_ndarray() for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=DTYPE)
        a = np.concatenate(out, axis=1)
        mono = (a.mean(axis=0) if a.shape[0] > 1 else a[0]).astype(DTYPE, copy=False)
        return mono


class WebRtcSession:
    """One talker's RTCPeerConnection feeding one LiveSource."""

    def __init__(self, source: LiveSource, *, grace_s: float = 3.0,
                 ice_servers: list[str] | None = None,
                 on_end: Callable[[str], None] | None = None) -> None:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
        self.source = source
        self.grace_s = grace_s
        self.on_end = on_end
        # no ICE servers unless configured: aiortc's default would ask a public STUN server
        config = RTCConfiguration(iceServers=[RTCIceServer(u) for u in (ice_servers or [])])
        self.pc = RTCPeerConnection(configuration=config)
        self.converter = AudioConverter()
        self.ended = False
        self.end_reason: str | None = None
        self.frames_received = 0
        self.last_frame_at: float | None = None
        self.created = time.monotonic()
        self.first_frame_at: float | None = None
        self.gaps = 0  # audio stalls longer than 200 ms that recovered within the grace
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Task[None] | None = None

        @self.pc.on("connectionstatechange")
        async def _state() -> None:
            st = self.pc.connectionState
            log.debug("webrtc connection state %s", st)
            if st == "failed":
                self.finish("connection failed (ICE or DTLS)")
            elif st == "closed":
                self.finish("connection closed")

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind != "audio" or self._task is not None:
                return
            self._shorten_jitter_buffer(track)
            self._task = asyncio.ensure_future(self._consume(track))

    def _shorten_jitter_buffer(self, track: MediaStreamTrack) -> None:
        """aiortc holds 4 audio packets (80 ms) before it decodes the first; Loa's LiveSource
        already has its own small jitter queue, so one packet of prefetch is enough. This saves
        ~60 ms of mouth-to-loudspeaker delay. aiortc keeps the buffer in a private attribute:
        if a future version moves it, we keep its default and say so once."""
        try:
            from aiortc.jitterbuffer import JitterBuffer
            for r in self.pc.getReceivers():
                if r.track is track and hasattr(r, "_RTCRtpReceiver__jitter_buffer"):
                    r._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=1)
                    return
            log.warning("aiortc's audio jitter buffer not found; its 80 ms prefetch stays")
        except Exception:
            log.warning("could not shorten aiortc's audio jitter buffer", exc_info=True)

    async def accept(self, sdp: str, type_: str = "offer") -> dict[str, str]:
        """Apply the browser's offer and return the answer {sdp, type} (ICE gathered)."""
        from aiortc import RTCSessionDescription
        self._loop = asyncio.get_running_loop()
        self.source.on_close(self._source_closed)
        if type_ != "offer":
            raise ValueError(f"expected an SDP offer, got {type_!r}")
        if "m=audio" not in sdp:
            raise ValueError("the offer has no audio section")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as e:  # aiortc raises ValueError/various on malformed SDP
            await self.pc.close()
            raise ValueError(f"cannot use this SDP offer: {e}") from None
        # no audio at all within a connect deadline: the browser never got through
        self._watchdog = asyncio.ensure_future(self._connect_watchdog())
        d = self.pc.localDescription
        return {"sdp": d.sdp, "type": d.type}

    async def _connect_watchdog(self) -> None:
        await asyncio.sleep(max(10.0, self.grace_s))
        if self.frames_received == 0 and not self.ended:
            self.finish("no audio arrived (connection never established)")

    async def _consume(self, track: MediaStreamTrack) -> None:
        from aiortc.mediastreams import MediaStreamError
        # an audio track's frames are av.AudioFrames (aiortc types recv() for any kind of track)
        recv = cast("Callable[[], Awaitable[AudioFrame]]", track.recv)
        try:
            while not self.ended:
                try:
                    frame = await asyncio.wait_for(recv(), timeout=self.grace_s)
                except TimeoutError:
                    self.finish(f"no audio for {self.grace_s:g} s (network lost)")
                    return
                now = time.monotonic()
                if self.last_frame_at is not None and now - self.last_frame_at > 0.2:
                    self.gaps += 1
                self.last_frame_at = now
                if self.first_frame_at is None:
                    self.first_frame_at = now
                self.frames_received += 1
                self.source.push(self.converter.convert(frame))
        except MediaStreamError:
            self.finish("hung up (the audio track ended)")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("webrtc audio failed")
            self.source.error = f"live audio failed: {e}"
            self.finish(f"live audio failed: {e}")

    def finish(self, reason: str) -> None:
        """End the session (idempotent; call on the event loop)."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        log.info("webrtc session ended: %s", reason)
        self.source.end()
        if self.on_end is not None:
            try:
                self.on_end(reason)
            except Exception:
                log.exception("on_end callback failed")
        self._closing = asyncio.ensure_future(self._close_pc())

    async def _close_pc(self) -> None:
        w = getattr(self, "_watchdog", None)
        if w is not None and w is not asyncio.current_task():
            w.cancel()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        try:
            await self.pc.close()
        except Exception:
            log.debug("closing the peer connection failed", exc_info=True)

    def _source_closed(self) -> None:
        # the engine let go of the source (from its tick thread or a handler thread)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.finish, "broadcast ended")
            except RuntimeError:
                pass

    async def close(self, reason: str = "hung up") -> None:
        self.finish(reason)
        if self._closing is not None:
            await asyncio.shield(self._closing)

    def stats(self) -> dict[str, Any]:
        return {
            "connection": self.pc.connectionState, "frames_received": self.frames_received,
            "ended": self.ended, "end_reason": self.end_reason, "gaps": self.gaps,
            "connect_s": round(self.first_frame_at - self.created, 3) if self.first_frame_at else None,
            "source": self.source.stats(),
        }
