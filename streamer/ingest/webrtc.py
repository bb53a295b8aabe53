"""WebRTC microphone ingest (aiortc): SDP offer in, answer out, audio into a LiveSource.

One `WebRtcSession` per talker's connection. aiortc does ICE, DTLS and SRTP; the Opus packets
themselves are taken from its receiver before its jitter buffer (`_OpusTap`) and go through
Loa's own receive path in a worker thread: the reorder buffer and Opus decoder of RTP ingest
(in-band FEC from the next packet, concealment otherwise), with no prefetch, into 20 ms frames.
The receive queue in front of the tick (LiveSource) is as deep as the measured arrival jitter
asks; on a link with little jitter, 1 frame when the talker's arrivals all fall before the tick
(the claim knows the tick's phase; `ArrivalPhase.queue_frames`), 2 when they straddle it. A
deeper queue is not waited for at the press: the claim starts with the pre-roll it has (at
least 2 frames) and the queue grows as late frames are concealed (`claim_start_frames`). A
frame that still comes after its tick is not skipped: the tick gets the decoder's concealment
for it and the frame plays next tick. Where the tap cannot go in, aiortc's decoded `av.AudioFrame`s
are used instead (`AudioConverter`), with aiortc's 80 ms prefetch.

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
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from streamer.audio import DTYPE, FRAME_SAMPLES, SAMPLE_RATE
from streamer.ingest.live import LiveSource
from streamer.ingest.talk import (ArrivalJitter, ArrivalPhase, FadeOut, Preroll,
                                  claim_queue_frames, claim_start_frames)
from streamer.trace import TRACE, FrameMarker

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


class _OpusTap:
    """Stands in for aiortc's audio jitter buffer inside its RTCRtpReceiver.

    aiortc 1.16 hands every received RTP packet (SRTP already removed, in arrival order) to
    `RTCRtpReceiver.__jitter_buffer.add(packet) -> (pli, frame)`; its audio buffer releases a
    frame only once four later packets are in (80 ms), and its decoder has no FEC. This object
    takes that buffer's place: Opus packets go to the session's own receive path (reorder, FEC,
    concealment: the ones RTP ingest uses) with no prefetch, and `(False, None)` tells aiortc
    there is nothing for its decoder; packets of any other codec go to aiortc's own buffer.
    Relying on that private attribute is why pyproject pins aiortc to 1.16; the unit test
    tests/unit/test_ingest_webrtc.py checks the contract against the installed aiortc."""

    def __init__(self, original: Any, opus_pts: set[int],
                 put: Callable[[int, int, bytes, float], None]) -> None:
        self.original = original
        self.opus_pts = opus_pts
        self.put = put

    @property
    def capacity(self) -> int:
        return int(self.original.capacity)

    def add(self, packet: Any) -> tuple[bool, Any]:
        if packet.payload_type in self.opus_pts and packet.payload:
            self.put(packet.sequence_number, packet.timestamp, bytes(packet.payload),
                     time.monotonic())
            return False, None
        return cast("tuple[bool, Any]", self.original.add(packet))


#: a receive queue deeper than it needs to be for this many ticks in a row loses a frame: one
#: late packet (a GC pause, a busy core) otherwise leaves 20 ms of extra delay for a second
TRIM_AFTER = 10

#: after a late frame, a claim's queue of 1 or 2 frames (a link with little jitter) keeps the
#: frame of delay it added for at least this many ticks (2 s) before a pause takes it back:
#: late frames on a loaded machine come again and again, and each would otherwise cost a
#: concealment (issue 17). A deeper queue (a jittery link) takes it back in the next pause.
CATCHUP_AFTER = 100

#: how long a tick that found the claim's queue empty waits for the receive thread's decoder
#: to conceal with it (the decoder is busy then mostly because the late frame is being decoded)
CONCEAL_WAIT_S = 0.0003

#: aiortc's private name of the receiver's jitter buffer (see _OpusTap)
_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"


def install_opus_tap(receiver: Any, opus_pts: set[int],
                     put: Callable[[int, int, bytes, float], None]) -> bool:
    """Put an _OpusTap in `receiver` (an aiortc RTCRtpReceiver); False if this aiortc has no
    such buffer (then its own path, with its 80 ms prefetch, stays)."""
    from aiortc.jitterbuffer import JitterBuffer
    original = getattr(receiver, _JITTER_ATTR, None)
    if not isinstance(original, JitterBuffer) or not opus_pts:
        return False
    setattr(receiver, _JITTER_ATTR, _OpusTap(original, opus_pts, put))
    return True


def opus_payload_types(sdp: str) -> set[int]:
    """Payload types the SDP maps to Opus (a=rtpmap:PT opus/48000/2)."""
    out = set()
    for line in sdp.splitlines():
        if line.lower().startswith("a=rtpmap:"):
            pt, _, enc = line[9:].partition(" ")
            if enc.lower().startswith("opus/") and pt.strip().isdigit():
                out.add(int(pt))
    return out


def with_inband_fec(sdp: str) -> str:
    """`sdp` (an answer) asking the far end to send Opus in-band FEC: `useinbandfec=1` on
    every Opus payload type (RFC 7587: it states what the *receiver* of the stream can use;
    a browser adds FEC to what it sends only when the answer says so). aiortc's answers carry
    no Opus fmtp at all, so a phone would otherwise send no FEC and every lost packet would be
    concealed. Line endings are kept."""
    pts = opus_payload_types(sdp)
    if not pts:
        return sdp
    nl = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(nl)
    have = set()
    for i, line in enumerate(lines):
        if line.lower().startswith("a=fmtp:"):
            pt, _, params = line[7:].partition(" ")
            if pt.strip().isdigit() and int(pt) in pts:
                have.add(int(pt))
                if "useinbandfec=" not in params.lower():
                    lines[i] = f"{line};useinbandfec=1" if params else f"{line} useinbandfec=1"
    out = []
    for line in lines:
        out.append(line)
        if line.lower().startswith("a=rtpmap:"):
            pt = line[9:].partition(" ")[0]
            if pt.strip().isdigit() and int(pt) in pts and int(pt) not in have:
                out.append(f"a=fmtp:{int(pt)} minptime=10;useinbandfec=1")
    return nl.join(out)


class LoopPriority:
    """The event loop's thread at real-time priority (SCHED_FIFO, below the tick and the
    receive thread) while at least one live talker is connected, back to what it was when the
    last one goes (issue 17).

    aiortc receives a talker's packets on the event loop (ICE, DTLS, SRTP), so each packet
    waits for the loop's thread to be scheduled before it reaches the receive thread; measured
    with four busy processes on two cores, that thread waited 0.4-0.7 ms per wake-up on
    average, and its tail made frames miss their tick. Threads the loop starts meanwhile do not
    inherit it (SCHED_RESET_ON_FORK). `acquire` and `release` are called on the loop's thread."""

    def __init__(self, fifo_priority: int | None = None) -> None:
        from streamer.clock import LOOP_FIFO_PRIORITY
        self.fifo_priority = LOOP_FIFO_PRIORITY if fifo_priority is None else fifo_priority
        self.holders = 0
        self.state = "normal"
        self._tid: int | None = None
        self._saved: tuple[int, int] | None = None

    def acquire(self) -> str:
        import os

        from streamer.clock import raise_thread_priority
        self.holders += 1
        if self.holders == 1:
            self._tid = threading.get_native_id()
            try:
                self._saved = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
            except (AttributeError, OSError):
                self._saved = None
            self.state = raise_thread_priority(self.fifo_priority, nice=False)
        return self.state

    def release(self) -> None:
        import os
        if self.holders == 0:
            return
        self.holders -= 1
        if self.holders or self.state != "SCHED_FIFO" or self._tid is None:
            return
        policy, prio = self._saved or (os.SCHED_OTHER, 0)
        try:
            os.sched_setscheduler(self._tid, policy, os.sched_param(prio))
        except (AttributeError, OSError):
            log.debug("could not restore the event loop's priority", exc_info=True)
        self.state = "normal"


#: the one event loop of this process that receives the talkers' packets
LOOP_PRIORITY = LoopPriority()


class WebRtcSession:
    """One talker's RTCPeerConnection feeding a LiveSource.

    Two ways to use it:
    - one broadcast per connection (POST /live/offer): `source` is given, and the session ends
      with the broadcast;
    - a standing connection (`source=None`, the /live page's press to talk): set up when the
      official signs in, it carries the muted microphone; `claim()` makes a LiveSource that
      starts with the audio since the microphone was unmuted (the pre-roll) and follows the live
      audio, `release()` fades it out and ends it; the connection stays for the next press.
    """

    def __init__(self, source: LiveSource | None, *, grace_s: float = 3.0,
                 ice_servers: list[str] | None = None,
                 on_end: Callable[[str], None] | None = None,
                 preroll_frames: int = 15, fade_frames: int = 3, realtime: bool = True) -> None:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
        self.source = source
        # the receive thread, and the event loop's while connected (LoopPriority), at
        # real-time priority where permitted
        self.realtime = realtime
        self.rx_priority = "normal"
        self._loop_raised = False
        self.standing = source is None
        if source is not None:
            source.trim_after = min(source.trim_after, TRIM_AFTER)
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
        self.receive_path = "aiortc"   # "loa" once the Opus tap is in
        self.preroll = Preroll(preroll_frames)
        self.fade_frames = fade_frames
        self.jitter = ArrivalJitter()
        self.phase = ArrivalPhase()   # when frames reach the queue, for the tick's phase
        self.queue_frames = 1   # receive queue depth the measured arrival jitter asks for
        self.claims = 0
        self.preroll_sent = 0   # frames of pre-roll handed to claims (all claims)
        self.rx = {"packets": 0, "lost": 0, "fec_recovered": 0, "concealed": 0, "late": 0,
                   "decode_errors": 0, "concealed_for_tick": 0}
        self.claim_frames = 0   # the last claim's receive queue depth
        self.claim_start = 0    # the frames the last claim's first read waited for
        self.claim_tick_phase: int | None = None   # the tick phase the last claim met
        self.claim_arrivals: dict[str, float | None] = {}   # the arrivals then (describe)
        self._dec: Any = None   # the receive path's Opus decoder (rtp_in._Decoder) while it runs
        self._dec_lock = threading.Lock()
        self._lock = threading.Lock()
        self._fade: FadeOut | None = None
        self._acc = np.zeros(FRAME_SAMPLES, dtype=DTYPE)
        self._acc_n = 0
        self._rx_q: queue.SimpleQueue[tuple[int, int, bytes, float] | None] = queue.SimpleQueue()
        self._rx_thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Task[None] | None = None
        self.on_claim_end: Callable[[LiveSource], None] | None = None
        self._offer_sdp = ""

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
            self._tap(track)
            self._task = asyncio.ensure_future(self._consume(track))

    def _tap(self, track: MediaStreamTrack) -> None:
        pts = opus_payload_types(self._offer_sdp)
        try:
            for r in self.pc.getReceivers():
                if r.track is track and install_opus_tap(r, pts, self._rx_put):
                    self.receive_path = "loa"
                    self._rx_thread = threading.Thread(target=self._rx_run, daemon=True,
                                                       name="loa-webrtc-rx")
                    self._rx_thread.start()
                    return
            log.warning("aiortc's audio jitter buffer not found; its 80 ms prefetch stays")
        except Exception:
            log.warning("could not tap aiortc's audio receiver", exc_info=True)

    # ------------------------------------------------------------------ receive path
    def _rx_put(self, seq: int, ts: int, payload: bytes, arrival: float) -> None:
        self._rx_q.put((seq, ts, payload, arrival))

    def _rx_run(self) -> None:
        """Reorder, decode (FEC, concealment) and deliver, off the event loop. At real-time
        priority where permitted (below the tick's): its work per packet is a decode (16-33 us),
        and on a loaded machine a receive thread at normal priority runs milliseconds late,
        which the tick then meets as a late frame and conceals (issue 17)."""
        from streamer.clock import RECEIVE_FIFO_PRIORITY, name_os_thread, raise_thread_priority
        from streamer.ingest.rtp_in import ReorderBuffer, _Decoder
        from streamer.rtp.opus import OpusError
        name_os_thread("loa-webrtc-rx")
        if self.realtime:
            self.rx_priority = raise_thread_priority(RECEIVE_FIFO_PRIORITY)
        reorder = ReorderBuffer(depth=3)
        dec = self._dec = _Decoder("opus")
        lock = self._dec_lock
        rx = self.rx
        marker = FrameMarker(TRACE) if TRACE.enabled else None
        try:
            while True:
                item = self._rx_q.get()
                if item is None:
                    return
                seq, ts, payload, arrival = item
                rx["packets"] += 1
                self.jitter.add(ts, arrival)
                if rx["packets"] % 10 == 0:
                    self.queue_frames = self.jitter.depth_frames()
                    reorder.depth = max(3, self.queue_frames)
                released = reorder.push(seq, payload)
                rx["late"] = reorder.late
                for i, (_, p) in enumerate(released):
                    try:
                        # the tick's thread may conceal with this decoder (_conceal_for_tick)
                        with lock:
                            if p is None:
                                rx["lost"] += 1
                                nxt = released[i + 1][1] if i + 1 < len(released) else None
                                pcm, fec = dec.lost(cast("bytes | None", nxt))
                                rx["fec_recovered" if fec else "concealed"] += 1
                            else:
                                pcm = dec.decode(cast(bytes, p))
                    except OpusError:
                        rx["decode_errors"] += 1
                        continue
                    mark = marker.frame(pcm, arrival, ts) if marker is not None else -1
                    self._deliver(pcm, arrival, mark)
        finally:
            with lock:
                self._dec = None
                dec.close()

    def _conceal_for_tick(self) -> np.ndarray | None:
        """Called by the tick (its thread) when the claim's queue is empty mid-talk: the
        decoder's concealment of the frame that has not arrived (it plays next tick when it
        comes). The receive thread may be decoding that very frame: the tick waits for the
        decoder at most CONCEAL_WAIT_S (one decode takes 16-33 us), never longer (a receive
        thread preempted while decoding). None, and the tick underruns, when the decoder stays
        busy, is gone, or the claim is fading out."""
        if self._fade is not None or not self._dec_lock.acquire(timeout=CONCEAL_WAIT_S):
            return None
        try:
            dec = self._dec
            if dec is None:
                return None
            pcm: np.ndarray = dec.opus.conceal(FRAME_SAMPLES)
        except Exception:
            return None
        finally:
            self._dec_lock.release()
        self.rx["concealed_for_tick"] += 1
        return pcm

    def _deliver(self, pcm: np.ndarray, now: float, mark: int = -1) -> None:
        """Decoded 48 kHz mono samples: into 20 ms frames, the pre-roll and the claim."""
        if self.last_frame_at is not None and now - self.last_frame_at > 0.2:
            self.gaps += 1
        self.last_frame_at = now
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.frames_received += 1
        i, n = 0, len(pcm)
        while i < n:
            take = min(FRAME_SAMPLES - self._acc_n, n - i)
            self._acc[self._acc_n:self._acc_n + take] = pcm[i:i + take]
            self._acc_n += take
            i += take
            if self._acc_n == FRAME_SAMPLES:
                frame, self._acc = self._acc, np.zeros(FRAME_SAMPLES, dtype=DTYPE)
                self._acc_n = 0
                self._frame(frame, mark if i == n else -1)

    def _frame(self, frame: np.ndarray, mark: int = -1) -> None:
        self.phase.add(time.monotonic_ns())
        with self._lock:
            if self.standing:
                self.preroll.push(frame)
            src = self.source
            if src is None:
                return
            fade = self._fade
            if fade is not None:
                frame = fade.apply(frame)
                if fade.done:
                    self.source, self._fade = None, None
            src.push(frame, mark)

    # ------------------------------------------------------------------ press to talk
    def claim(self, kind: str = "webrtc", tick_phase_ns: int | None = None) -> LiveSource:
        """A LiveSource for a new claim: the pre-roll (audio since the microphone was unmuted)
        first, then the live audio. Its queue is as deep as the measured arrival jitter asks;
        where that is at most 2 frames and the tick's phase is known (`tick_phase_ns`, on this
        process's monotonic clock), the arrivals against that phase decide between 1 and 2."""
        if not self.standing:
            raise RuntimeError("this connection carries one broadcast; it cannot claim")
        if self.ended:
            raise RuntimeError(f"the connection has ended ({self.end_reason})")
        with self._lock:
            if self.source is not None and self._fade is None:
                raise RuntimeError("already on air")
            if self.source is not None:   # a release still fading: end it now
                self.source.end()
            depth = self.claim_frames = claim_queue_frames(self.queue_frames, self.phase,
                                                           tick_phase_ns)
            self.claim_tick_phase = tick_phase_ns
            self.claim_arrivals = self.phase.describe(tick_phase_ns)
            pre = self.preroll.since_unmute(self.preroll.capacity)
            conceal = self._conceal_for_tick if self.receive_path == "loa" else None
            start = self.claim_start = claim_start_frames(depth, len(pre), conceal is not None)
            src = LiveSource(kind=kind, max_frames=max(3, depth + 2, len(pre) + 2),
                             prime_frames=depth, trim_after=TRIM_AFTER, conceal=conceal,
                             catchup_after=CATCHUP_AFTER if depth <= 2 else 0,
                             start_frames=start)
            for f in pre:
                src.push(f)
            self.preroll_sent += len(pre)
            self.source, self._fade = src, None
            self.claims += 1
        src.on_close(lambda: self._claim_closed(src))
        return src

    def drop_claim(self, src: LiveSource) -> None:
        """The claim did not go on air (zone busy, not allowed): stop feeding it."""
        with self._lock:
            if self.source is src:
                self.source, self._fade = None, None
        src.close()

    def release(self) -> bool:
        """Fade the claim out over the audio that follows and stop feeding it (the caller
        stops the broadcast once the fade has aired, `fade_s` later); False if none."""
        with self._lock:
            if self.source is None or self._fade is not None:
                return False
            self._fade = FadeOut(self.fade_frames)
            src = self.source
        loop = self._loop
        if loop is not None:   # nothing arrives to fade (the phone went quiet): end anyway
            loop.call_later(0.02 * self.fade_frames + 0.5, self._end_fade, src)
        return True

    def _end_fade(self, src: LiveSource) -> None:
        with self._lock:
            if self.source is src and self._fade is not None:
                self.source, self._fade = None, None

    @property
    def fade_s(self) -> float:
        return 0.02 * self.fade_frames

    def _claim_closed(self, src: LiveSource) -> None:
        # the engine let go of a claim's source (ended, stopped by an operator)
        with self._lock:
            if self.source is src:
                self.source, self._fade = None, None
        cb = self.on_claim_end
        loop = self._loop
        if cb is not None and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(cb, src)
            except RuntimeError:
                pass

    @property
    def on_air(self) -> bool:
        return self.source is not None and self._fade is None

    async def accept(self, sdp: str, type_: str = "offer") -> dict[str, str]:
        """Apply the browser's offer and return the answer {sdp, type} (ICE gathered)."""
        from aiortc import RTCSessionDescription
        self._loop = asyncio.get_running_loop()
        if self.source is not None:
            self.source.on_close(self._source_closed)
        if type_ != "offer":
            raise ValueError(f"expected an SDP offer, got {type_!r}")
        if "m=audio" not in sdp:
            raise ValueError("the offer has no audio section")
        self._offer_sdp = sdp   # the track event comes during setRemoteDescription
        if self.realtime and not self._loop_raised:
            self._loop_raised = True
            LOOP_PRIORITY.acquire()
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as e:  # aiortc raises ValueError/various on malformed SDP
            await self.pc.close()
            raise ValueError(f"cannot use this SDP offer: {e}") from None
        self._watch = asyncio.ensure_future(self._watchdog())
        d = self.pc.localDescription
        # the phone sends in-band FEC only when the answer asks for it (aiortc's does not)
        return {"sdp": with_inband_fec(d.sdp), "type": d.type}

    async def _watchdog(self) -> None:
        """No audio at all within a connect deadline: the browser never got through; later,
        no audio for `grace_s`: the network is gone (a short 4G drop keeps the zone)."""
        connect_by = time.monotonic() + max(10.0, self.grace_s)
        while not self.ended:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            last = self.last_frame_at
            if last is None:
                if now > connect_by:
                    self.finish("no audio arrived (connection never established)")
            elif now - last > self.grace_s:
                self.finish(f"no audio for {self.grace_s:g} s (network lost)")

    async def _consume(self, track: MediaStreamTrack) -> None:
        """aiortc's own decoded frames (only when the Opus tap could not go in) and the end of
        the track (the browser hung up)."""
        from aiortc.mediastreams import MediaStreamError
        # an audio track's frames are av.AudioFrames (aiortc types recv() for any kind of track)
        recv = cast("Callable[[], Awaitable[AudioFrame]]", track.recv)
        try:
            while not self.ended:
                frame = await recv()
                self._deliver(self.converter.convert(frame), time.monotonic())
        except MediaStreamError:
            self.finish("hung up (the audio track ended)")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("webrtc audio failed")
            if self.source is not None:
                self.source.error = f"live audio failed: {e}"
            self.finish(f"live audio failed: {e}")

    def finish(self, reason: str) -> None:
        """End the session (idempotent; call on the event loop)."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        log.info("webrtc session ended: %s", reason)
        if self._loop_raised:
            self._loop_raised = False
            LOOP_PRIORITY.release()
        with self._lock:
            src, self.source, self._fade = self.source, None, None
        if src is not None:
            src.end()
        self._rx_q.put(None)
        if self.on_end is not None:
            try:
                self.on_end(reason)
            except Exception:
                log.exception("on_end callback failed")
        self._closing = asyncio.ensure_future(self._close_pc())

    async def _close_pc(self) -> None:
        w = self._watch
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
            "source": self.source.stats() if self.source is not None else None,
            "receive_path": self.receive_path, "receive": dict(self.rx),
            "receive_priority": self.rx_priority, "loop_priority": LOOP_PRIORITY.state,
            "arrival_jitter_ms": round(self.jitter.spread_ms, 1),
            "queue_frames": self.queue_frames, "claim_queue_frames": self.claim_frames,
            "claim_start_frames": self.claim_start,
            "claim_arrivals": self.claim_arrivals,
            "arrivals_now": self.phase.describe(self.claim_tick_phase),
            "claims": self.claims,
            "preroll_sent": self.preroll_sent, "on_air": self.on_air,
        }
