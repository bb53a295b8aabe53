"""Live ingest latency: tone onset at the sender → onset in what a zone's receiver gets.

    python -m bench.latency_live --source rtp [--onsets 30] [--jitter-ms 60] [--in-process]
    python -m bench.latency_live --source webrtc [--sender both|aiortc|chromium] [--onsets 20]
                                 [--jitter-ms 60] [--json FILE]
    (`loa bench latency --source webrtc ...` forwards here and runs both senders)

`RtpCapture` (a UDP socket in a thread that keeps every Opus RTP packet with its arrival time
and decodes them in order with libopus) is also what the live integration tests listen with.

RTP source: an in-process engine with one zone whose unicast destination is the capture, an
RtpIngest on a loopback port, and a sender thread that paces Opus RTP of silence with 1 kHz
bursts every 500 ms. Latency per onset = arrival of the first zone packet whose decoded audio
crosses -30 dBFS minus the send time of the first sender packet carrying the burst. A
reference receiver adds its jitter buffer (60 ms by default) on top; that is reported apart.

WebRTC source: mouth → reference receiver's output, end to end, with a real `loa serve`; see
the comment above `run_webrtc` for how each end is timed. Exit 3 only for an invalid run (too
few onsets matched, the server died, the sender failed), 2 for bad usage.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from typing import Any

import numpy as np

from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE
from streamer.rtp.opus import OpusDecoder, OpusEncoder, OpusSettings
from streamer.rtp.packet import RtpError, RtpPacket


class RtpCapture:
    """Receive Opus RTP on 127.0.0.1:port in a thread; decode later, in sequence order."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, port))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[float, RtpPacket]] = []
        self.invalid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="rtp-capture")
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            try:
                p = RtpPacket.parse(data)
            except RtpError:
                self.invalid += 1
                continue
            with self._lock:
                self.packets.append((now, p))

    @property
    def count(self) -> int:
        return len(self.packets)

    def last_arrival(self) -> float | None:
        with self._lock:
            return self.packets[-1][0] if self.packets else None

    def decode(self, since: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(samples, arrival time per 960-sample frame) of packets that arrived after `since`."""
        with self._lock:
            pk = [(t, p) for t, p in self.packets if t >= since]
        dec = OpusDecoder()
        frames, times = [], []
        for t, p in pk:
            try:
                x = dec.decode(p.payload)
            except Exception:
                continue
            frames.append(x)
            times.append(t)
        dec.close()
        if not frames:
            return np.zeros(0, np.float32), np.zeros(0)
        return np.concatenate(frames), np.array(times)

    def close(self) -> None:
        self._stop.set()
        self._t.join(1.0)
        self.sock.close()


def dominant_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    if len(x) < 256:
        return 0.0
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def frame_onsets(x: np.ndarray, times: np.ndarray, threshold_db: float = -30.0) -> list[float]:
    """Arrival times of frames where the level rises above the threshold after silence."""
    n = min(len(times), len(x) // FRAME_SAMPLES)
    if n == 0:
        return []
    rms = np.sqrt(np.mean(x[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES) ** 2, axis=1))
    loud = 20 * np.log10(rms + 1e-9) > threshold_db
    return [float(times[i]) for i in range(n) if loud[i] and (i == 0 or not loud[i - 1])]


# ------------------------------------------------------------------------------- RTP bench
def _bench_rtp(onsets: int, period_s: float = 0.5, burst_s: float = 0.2) -> dict:
    from streamer.ingest.rtp_in import RtpIngest, RtpIngestConfig
    from streamer.mixer.arbitration import Level
    from streamer.port import (LiveAudio, ReplaceZones, StartBroadcast, StopBroadcast,
                               UnknownBroadcast)
    from streamer.rtp.fanout import Fanout
    from streamer.runtime import Runtime
    from streamer.zones import Zone

    cap = RtpCapture()
    fan = Fanout(bind=("127.0.0.1", 0))
    eng = Runtime(fan)
    eng.submit(ReplaceZones((Zone(id="bench", name="bench", unicast=[("127.0.0.1", cap.port)]),)))

    def start_live(name: str, zones: tuple[str, ...], level: Level, source: Any) -> str:
        snap = eng.submit(StartBroadcast(
            id="", targets=tuple(zones), level=level, owner=name,
            source=LiveAudio(eng.add_live_input(source), via="rtp")))
        assert snap is not None
        return snap.id

    def stop_live(broadcast_id: str, reason: str) -> None:
        try:
            eng.submit(StopBroadcast(broadcast_id, reason=reason))
        except UnknownBroadcast:
            pass

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ing = RtpIngest(RtpIngestConfig(port=port, zones=["bench"], allow=["127.0.0.1"]),
                    start_live, stop_live)
    eng.start()
    ing.start()
    enc = OpusEncoder(OpusSettings(application="lowdelay"))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent_onsets: list[float] = []
    frames_per_period = int(round(period_s * 50))
    burst_frames = int(round(burst_s * 50))
    total = frames_per_period * (onsets + 1)
    t0 = time.monotonic() + 0.1
    try:
        for k in range(total):
            target = t0 + k * 0.02
            while (d := target - time.monotonic()) > 0:
                time.sleep(min(d, 0.002))
            in_burst = k >= frames_per_period and (k % frames_per_period) < burst_frames
            if in_burst:
                t = (np.arange(FRAME_SAMPLES) + k * FRAME_SAMPLES) / SAMPLE_RATE
                pcm = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
            else:
                pcm = np.zeros(FRAME_SAMPLES, np.float32)
            pkt = RtpPacket(payload_type=111, sequence_number=k & 0xFFFF, timestamp=k * 960,
                            ssrc=0xB0B, payload=bytes(enc.encode(pcm)))
            if in_burst and k % frames_per_period == 0:
                sent_onsets.append(time.monotonic())
            tx.sendto(pkt.serialize(), ("127.0.0.1", port))
        time.sleep(0.3)
    finally:
        tx.close()
        ing.stop()
        eng.stop()
        fan.close()
        enc.close()
    x, times = cap.decode()
    cap.close()
    got = frame_onsets(x, times)
    lat = []
    for s in sent_onsets:
        after = [g for g in got if s - 0.005 <= g < s + period_s * 0.8]
        if after:
            lat.append((after[0] - s) * 1000)
    lat_a = np.array(lat) if lat else np.zeros(0)
    return {"source": "rtp", "onsets_sent": len(sent_onsets), "onsets_matched": len(lat),
            "p50_ms": round(float(np.percentile(lat_a, 50)), 1) if lat else None,
            "p95_ms": round(float(np.percentile(lat_a, 95)), 1) if lat else None,
            "max_ms": round(float(lat_a.max()), 1) if lat else None,
            "receiver_jitter_buffer_ms_not_included": 60,
            "ingest": ing.status()["stats"]}


# ---------------------------------------------------------------------------- WebRTC bench
#
# Mouth → reference receiver, with a real `loa serve` (webrtc_loopback_only) whose one zone's
# unicast destination is a reference `loa receiver`. Every time is this machine's wall clock
# (time.time() in Python, performance.timeOrigin + performance.now() in the page), so there is
# no clock-sync error between the two ends.
#
# Sender "aiortc": a MediaStreamTrack paced at real time like a microphone: frame k covers
#   [t0 + 20k ms, t0 + 20(k+1) ms) and is handed to aiortc at the end of that interval, as a
#   capture device would; an onset on the first sample of frame k was "spoken" at t0 + 20k ms.
# Sender "chromium": the real /live page in headless Chromium, fake microphone playing a WAV of
#   bursts. A script injected before the page loads wraps getUserMedia and reads a clone of the
#   captured track with MediaStreamTrackProcessor: each AudioData carries Chromium's capture
#   timestamp (TimeTicks = CLOCK_MONOTONIC, µs), mapped to wall time with Python's
#   time.time() - time.monotonic(); the wall time at which the page saw the buffer is kept too,
#   and the mapping is checked against it (0 ≤ seen − captured < 200 ms, or the "seen" time is
#   used instead, which can only make the latency look smaller).
# Receiver side: onsets in the receiver's WAV output (|x| > 0.05 after ≥ 0.2 s quiet), each
#   mapped to the wall time it was handed to the output through the receiver's spurt record
#   (`played_utc` of the spurt's first sample at output position `output_s`).

RATE = SAMPLE_RATE
PERIOD_S = 0.6   # onset spacing: pairing is unambiguous while the latency stays below this
BURST_S = 0.25


def _chromium_path() -> str | None:
    import shutil
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    import os
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _tone(n: int, start: int) -> np.ndarray:
    t = (np.arange(n) + start) / RATE
    return (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


def _played_onsets(wav_path, stats: dict) -> tuple[list[float], dict]:
    """Wall times at which the receiver handed each onset in its output to the sink."""
    import wave

    from bench.latency import find_onsets
    with wave.open(str(wav_path), "rb") as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    spurts = sorted((sp for sp in stats.get("spurts", []) if sp.get("played_utc") is not None
                     and sp.get("output_s") is not None), key=lambda sp: sp["output_s"])
    out = []
    for q in find_onsets(x, RATE):
        sp = None
        for cand in spurts:
            if cand["output_s"] <= q + 1e-6:
                sp = cand
        if sp is not None:
            out.append(sp["played_utc"] + (q - sp["output_s"]))
    info = {"output_s": round(len(x) / RATE, 3), "spurts": len(spurts)}
    if spurts:
        last = spurts[-1]
        info["timeline_end_utc"] = last["played_utc"] + (len(x) / RATE - last["output_s"])
    return out, info


def _capture_calibration(rows: list) -> dict | None:
    """Wall time of the page's captured-audio timeline (AudioData.timestamp, µs, counted by
    Chromium from the start of the track, sample-accurate).

    Every buffer [ts, ts + n/sr) was complete when the page read it at wall time `seen`, so
    seen - (ts + n/sr) >= offset; the smallest such value over all buffers is the anchor: a
    sample is dated as if it had reached the page with the fastest delivery seen. The slope of
    seen against ts checks that the timeline runs at wall-clock rate (no gaps, no drift).
    """
    if len(rows) < 20:
        return None
    a = np.array(rows, dtype=float)
    ts_end = a[:, 0] / 1e6 + a[:, 2] / a[:, 3]
    seen = a[:, 1] / 1000
    d = seen - ts_end
    off = float(d.min())
    slope = float(np.polyfit(ts_end - ts_end[0], seen - seen[0], 1)[0])
    return {"offset_s": off, "buffers": len(rows),
            "buffer_ms": round(float(np.median(a[:, 2] / a[:, 3])) * 1000, 2),
            "delivery_jitter_ms_p50": round(float(np.median(d - off)) * 1000, 2),
            "delivery_jitter_ms_p95": round(float(np.percentile(d - off, 95)) * 1000, 2),
            "timeline_rate": round(slope, 5)}


def _pair(sent: list[float], played: list[float], period: float) -> list[tuple[float, float]]:
    """Each sent onset with the first played onset in [sent - 50 ms, sent + period - 50 ms)."""
    pairs = []
    for s in sent:
        cand = [p for p in played if s - 0.05 <= p < s + period - 0.05]
        if cand:
            pairs.append((s, cand[0]))
    return pairs


class _ToneTrack:
    """aiortc audio track: silence, then `onsets` bursts every PERIOD_S, paced at real time."""

    def __new__(cls, *a, **kw):  # a MediaStreamTrack subclass made lazily (aiortc import)
        from aiortc.mediastreams import MediaStreamTrack

        class ToneTrack(MediaStreamTrack):
            kind = "audio"

            def __init__(self, onsets: int, lead_s: float,
                         signal: np.ndarray | None = None) -> None:
                super().__init__()
                self.signal = signal   # instead of the bursts: this audio after the lead
                self.onsets = onsets
                self.lead_frames = int(round(lead_s * 50))
                self.period_frames = int(round(PERIOD_S * 50))
                self.burst_frames = int(round(BURST_S * 50))
                self.k = 0
                self.t0_mono: float | None = None
                self.t0_wall = 0.0
                self.sent: list[float] = []   # wall time of each onset's first sample
                self.late_frames = 0          # frames handed over > 5 ms after their due time
                # set when the answer asks for in-band FEC: the track hands aiortc Opus packets
                # of its own (aiortc's encoder makes none), as a phone's would be
                self.encoder: OpusEncoder | None = None

            def _burst_index(self, k: int) -> tuple[int, int] | None:
                j = k - self.lead_frames
                if j < 0:
                    return None
                n, r = divmod(j, self.period_frames)
                if n >= self.onsets or r >= self.burst_frames:
                    return None
                return n, r

            async def recv(self):
                import asyncio
                import fractions

                import av
                if self.t0_mono is None:
                    self.t0_mono = time.monotonic()
                    self.t0_wall = time.time() - (time.monotonic() - self.t0_mono)
                k = self.k
                self.k += 1
                due = self.t0_mono + (k + 1) * 0.02   # the end of this frame's capture interval
                d = due - time.monotonic()
                if d > 0:
                    await asyncio.sleep(d)
                elif d < -0.005:
                    self.late_frames += 1
                b = self._burst_index(k) if self.signal is None else None
                if self.signal is not None:
                    i = (k - self.lead_frames) * FRAME_SAMPLES
                    pcm = np.zeros(FRAME_SAMPLES, np.float32)
                    if 0 <= i < len(self.signal):
                        seg = self.signal[i:i + FRAME_SAMPLES]
                        pcm[:len(seg)] = seg
                elif b is None:
                    pcm = np.zeros(FRAME_SAMPLES, np.float32)
                else:
                    pcm = _tone(FRAME_SAMPLES, b[1] * FRAME_SAMPLES)
                    if b[1] == 0:
                        self.sent.append(self.t0_wall + k * 0.02)
                if self.encoder is not None:   # pre-encoded: aiortc only packs it
                    packet = av.Packet(bytes(self.encoder.encode(pcm)))
                    packet.pts = k * FRAME_SAMPLES
                    packet.time_base = fractions.Fraction(1, RATE)
                    return packet
                frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
                frame.planes[0].update((pcm * 32767).astype("<i2").tobytes())
                frame.sample_rate = RATE
                frame.pts = k * FRAME_SAMPLES
                frame.time_base = fractions.Fraction(1, RATE)
                return frame

            @property
            def done(self) -> bool:
                if self.signal is not None:
                    return self.k >= self.lead_frames + len(self.signal) // FRAME_SAMPLES + 25
                return self.k >= self.lead_frames + self.onsets * self.period_frames + 25

        return ToneTrack(*a, **kw)


def _fmtp(sdp: str) -> list[str]:
    return [ln for ln in sdp.splitlines() if ln.startswith("a=fmtp:")]


def _offer_inband_fec(sdp: str) -> str:
    """The offer of a phone: Opus with `minptime=10;useinbandfec=1` (Chromium's fmtp)."""
    from streamer.ingest.webrtc import with_inband_fec
    return with_inband_fec(sdp)


async def _send_aiortc(base: str, zone: str, onsets: int, deadline_s: float,
                       loss_pct: float = 0.0, net_jitter_ms: float = 0.0,
                       signal: np.ndarray | None = None, seed: int = 1) -> dict:
    import asyncio

    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    # As the /live page does: connect first (digital silence, as a muted track sends), claim
    # the zone a second later, before the first burst; the bursts then go on air.
    import os

    from streamer.ingest.webrtc import LoopPriority
    # the sender paces like a capture device, and a phone does not share the server's cores:
    # keep the machine's load (--cpu-hog) off it. Real-time above the server's threads where
    # permitted (with the kernel's autogroup, nice only counts within this session), else
    # nice -10; undone when this sender is done
    sender_priority = LoopPriority(fifo_priority=20)
    if sender_priority.acquire() != "SCHED_FIFO":
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        except (PermissionError, OSError):
            pass
    # a MediaStreamTrack made at run time
    track: Any = _ToneTrack(onsets, lead_s=2.5, signal=signal)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(track)
    out: dict = {"sender": "aiortc", "capture_clock": "scheduled frame time (time.time)",
                 "sender_priority": sender_priority.state}
    relay = None
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = _offer_inband_fec(pc.localDescription.sdp)
        if loss_pct or net_jitter_ms:   # the phone link: through a lossy, jittery relay
            from bench.lossy_relay import LossyRelay, candidate_port, via_relay
            relay = LossyRelay(loss_pct, net_jitter_ms, seed=seed)
            offer = via_relay(offer, relay.back_port)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            async with s.post(f"{base}/api/v1/live/connect", json={
                    "sdp": offer, "type": "offer"}) as r:
                body = await r.json()
                if r.status != 201:
                    out["error"] = f"connect refused: HTTP {r.status} {body}"
                    return out
            answer = body["sdp"]
            out["offer_fmtp"], out["answer_fmtp"] = _fmtp(offer), _fmtp(answer)
            if any("useinbandfec=1" in ln for ln in out["answer_fmtp"]):
                track.encoder = OpusEncoder(OpusSettings(
                    application="voip", bitrate=32_000, fec=True,
                    packet_loss_perc=max(5, int(round(loss_pct)))))
            out["inband_fec"] = track.encoder is not None
            if relay is not None:
                server_addr, local = candidate_port(answer), candidate_port(
                    pc.localDescription.sdp)
                if server_addr is None or local is None:
                    out["error"] = "no UDP host candidate to relay"
                    return out
                relay.start(local, server_addr)
                answer = via_relay(answer, relay.front_port)
            await pc.setRemoteDescription(RTCSessionDescription(answer, body["type"]))
            t_claim = time.monotonic() + 10
            while (track.k < 60 and time.monotonic() < t_claim):   # ~1.2 s of silence sent
                await asyncio.sleep(0.02)
            async with s.post(f"{base}/api/v1/live/sessions/{body['session']}/claim",
                              json={"zones": [zone], "level": "normal"}) as r:
                claim = await r.json()
                if r.status != 201:
                    out["error"] = f"claim refused: HTTP {r.status} {claim}"
                    return out
        out["broadcast"] = claim["broadcast"]["id"]
        end = time.monotonic() + deadline_s
        while not track.done:
            if time.monotonic() > end:
                out["error"] = (f"sender did not finish in {deadline_s:.0f} s "
                                f"(connection {pc.connectionState}, {track.k} frames)")
                break
            await asyncio.sleep(0.05)
        out["onsets_wall"] = list(track.sent)
        out["late_frames"] = track.late_frames
        try:
            for st in (await pc.getStats()).values():
                if getattr(st, "type", "") == "remote-inbound-rtp" and st.roundTripTime:
                    out["sender_stats"] = {"rtt_ms": st.roundTripTime * 1000}
        except Exception as e:   # stats are a nicety of the budget, never the run
            out["sender_stats"] = {"error": str(e)}
        out["connection"] = pc.connectionState
        out["stop_wall"] = time.time()
        try:   # the server's own receive path: FEC recoveries, concealment, queue depth
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(f"{base}/api/v1/live/sessions/{body['session']}") as r:
                    out["server_receive"] = (await r.json()).get("webrtc")
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            out["server_receive"] = {"error": str(e)}
        return out
    finally:
        sender_priority.release()
        if relay is not None:
            out["link"] = {"loss_pct": loss_pct, "jitter_ms": net_jitter_ms,
                           "model": "netem-like: delay N(J/2, J/2) clipped at 0, random loss",
                           **relay.stats()}
            out["_relay"] = relay
        out.setdefault("onsets_wall", list(track.sent))
        out["_pc"] = pc  # closed by the caller after the receiver has stopped


def _send_rtp_thread(port: int, onsets: int, deadline_s: float, lead_s: float = 2.5) -> dict:
    """A hardware encoder on RTP ingest: Opus RTP (20 ms, in-band FEC as such encoders send)
    to `port`, paced like a capture device: frame k covers [t0 + 20k ms, t0 + 20(k+1) ms) and
    its packet leaves at the end of that interval, so an onset on its first sample was "spoken"
    at t0 + 20k ms. The first packet starts the broadcast (RTP ingest); the lead (silence)
    covers that start."""
    from streamer.clock import raise_thread_priority
    # the encoder paces like a device, and a device does not share the server's cores: keep
    # the machine's load off it (real-time where permitted, else nice -10; this thread only)
    sender_priority = raise_thread_priority(20)
    out: dict = {"sender": "rtp", "sender_priority": sender_priority, "capture_clock": "scheduled frame time (time.time)",
                 "encoder": "libopus 32 kb/s, 20 ms, in-band FEC (loss 10 %)"}
    enc = OpusEncoder(OpusSettings())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lead = int(round(lead_s * 50))
    period, burst = int(round(PERIOD_S * 50)), int(round(BURST_S * 50))
    total = lead + onsets * period + 25
    sent: list[float] = []
    late = 0
    t0 = time.monotonic() + 0.05
    t0_wall = time.time() + (t0 - time.monotonic())
    end = time.monotonic() + deadline_s
    try:
        for k in range(total):
            due = t0 + (k + 1) * 0.02
            while (d := due - time.monotonic()) > 0:
                time.sleep(min(d, 0.002))
            if -d > 0.005:
                late += 1
            if time.monotonic() > end:
                out["error"] = f"sender did not finish in {deadline_s:.0f} s"
                break
            j = k - lead
            n, r = divmod(j, period) if j >= 0 else (-1, 0)
            if 0 <= n < onsets and r < burst:
                pcm = _tone(FRAME_SAMPLES, r * FRAME_SAMPLES)
                if r == 0:
                    sent.append(t0_wall + k * 0.02)
            else:
                pcm = np.zeros(FRAME_SAMPLES, np.float32)
            pkt = RtpPacket(payload_type=111, sequence_number=k & 0xFFFF,
                            timestamp=(k * FRAME_SAMPLES) & 0xFFFFFFFF, ssrc=0x10A,
                            payload=bytes(enc.encode(pcm)))
            tx.sendto(pkt.serialize(), ("127.0.0.1", port))
    finally:
        tx.close()
        enc.close()
    out["onsets_wall"] = sent
    out["late_frames"] = late
    out["stop_wall"] = time.time()
    return out


_PROBE_JS = r"""
(() => {
  const P = window.__loaProbe = { onsets: [], frames: 0, error: null, kind: null, map: [] };
  const PCs = window.__loaPeerConnections = [];   // the page's connections, for getStats
  if (window.RTCPeerConnection) {
    window.RTCPeerConnection = new Proxy(window.RTCPeerConnection, {
      construct(t, args, nt) { const pc = Reflect.construct(t, args, nt); PCs.push(pc); return pc; }
    });
  }
  // the page's live connection id (from /live/connect), to read the server's receive stats
  const ofetch = window.fetch.bind(window);
  window.fetch = async (...a) => {
    const r = await ofetch(...a);
    try {
      if (String(a[0]).includes("/live/connect") && r.ok)
        r.clone().json().then((b) => { P.session = b.session; }).catch(() => {});
    } catch (e) { /* a probe never breaks the page */ }
    return r;
  };
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) { P.error = "no getUserMedia"; return; }
  const orig = md.getUserMedia.bind(md);
  md.getUserMedia = async (c) => {
    const s = await orig(c);
    try { watch(s.getAudioTracks()[0].clone()); } catch (e) { P.error = String(e); }
    return s;
  };
  async function watch(track) {
    if (typeof MediaStreamTrackProcessor === "undefined") { P.error = "no MediaStreamTrackProcessor"; return; }
    P.kind = "MediaStreamTrackProcessor";
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    const THR = 0.05, GAP_US = 200000;
    let lastLoud = -1e18, buf = null;
    for (;;) {
      const { value: ad, done } = await reader.read();
      if (done) break;
      const seen = performance.timeOrigin + performance.now();
      const n = ad.numberOfFrames, sr = ad.sampleRate, ts = ad.timestamp;
      if (!buf || buf.length < n) buf = new Float32Array(n);
      try { ad.copyTo(buf, { planeIndex: 0, format: "f32-planar" }); }
      catch (e) { P.error = "copyTo: " + e + " (format " + ad.format + ")"; ad.close(); break; }
      ad.close();
      P.frames++;
      if (P.map.length < 20000) P.map.push([ts, seen, n, sr]);
      for (let i = 0; i < n; i++) {
        if (Math.abs(buf[i]) > THR) {
          const t = ts + i * 1e6 / sr;
          if (t - lastLoud > GAP_US) P.onsets.push({ ts_us: t, seen_ms: seen, idx: i, n, sr });
          lastLoud = t;
        }
      }
    }
  }
})();
"""


_STATS_JS = r"""
(async () => {
  const out = {};
  for (const pc of (window.__loaPeerConnections || [])) {
    if (pc.connectionState !== "connected") continue;
    const r = await pc.getStats();
    r.forEach(s => {
      if (s.type === "outbound-rtp" && s.kind === "audio" && s.packetsSent) {
        out.packets_sent = s.packetsSent;
        if (s.totalPacketSendDelay != null) out.pacer_ms = 1000 * s.totalPacketSendDelay / s.packetsSent;
      }
      if (s.type === "remote-inbound-rtp" && s.kind === "audio" && s.roundTripTime != null)
        out.rtt_ms = 1000 * s.roundTripTime;
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null)
        out.ice_rtt_ms = 1000 * s.currentRoundTripTime;
      if (s.type === "codec" && /opus/i.test(s.mimeType || "")) out.opus_fmtp = s.sdpFmtpLine;
    });
    const fm = d => ((d && d.sdp) || "").split(/\r?\n/).filter(l => /^a=fmtp:/.test(l));
    out.offer_fmtp = fm(pc.localDescription);
    out.answer_fmtp = fm(pc.remoteDescription);
  }
  return JSON.stringify(out);
})()
"""


async def _send_chromium(base: str, zone: str, onsets: int, work, chromium: str,
                         deadline_s: float) -> dict:
    import asyncio
    import os
    import shutil
    import signal
    import subprocess

    import aiohttp

    from bench.latency import burst_file
    wav = work / "bursts.wav"
    # the fake device loops the file; make it long enough never to matter
    burst_file(wav, onsets + 30, period_s=PERIOD_S, on_s=BURST_S, lead_s=0.5)
    profile = work / "chromium-profile"
    profile.mkdir()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-quic", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--mute-audio", f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
             "--autoplay-policy=no-user-gesture-required",
             "--disable-features=WebRtcHideLocalIpsWithMdns",
             "--allow-loopback-in-peer-connection", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "about:blank"]
    proc = subprocess.Popen([chromium, *flags], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    out: dict = {"sender": "chromium"}
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    ws: Any = None
    ids = iter(range(1, 1 << 30))
    end = time.monotonic() + deadline_s

    async def cdp(method: str, **params):
        my = next(ids)
        await ws.send_json({"id": my, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(ws.receive_json(), 10)
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(expr: str):
        r = await cdp("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page error in {expr!r}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    async def wait(expr: str, what: str, timeout: float):
        t_end = min(end, time.monotonic() + timeout)
        while time.monotonic() < t_end:
            try:
                v = await js(expr)
            except RuntimeError:
                v = None
            if v:
                return v
            await asyncio.sleep(0.05)
        state = await js("JSON.stringify({s: window.loaState || null, p: window.__loaProbe || null,"
                         " n: (document.getElementById('notice')||{}).textContent})")
        raise TimeoutError(f"timed out waiting for {what}; page: {str(state)[:600]}")

    async def stop_browser() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            for _ in range(50):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)

    try:
        port_file = profile / "DevToolsActivePort"
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > end or proc.poll() is not None:
                out["error"] = "Chromium did not open its DevTools port"
                return out
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        while True:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [p for p in await r.json() if p.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > end:
                out["error"] = "no page target in Chromium"
                return out
            await asyncio.sleep(0.05)
        ws = await http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        out["browser"] = (await cdp("Browser.getVersion")).get("product")
        await cdp("Page.enable")
        await cdp("Page.addScriptToEvaluateOnNewDocument", source=_PROBE_JS)
        await cdp("Page.navigate", url=f"{base}/live?zones={zone}&level=normal")
        await wait(f"document.querySelector('#zones input[value=\"{zone}\"]:checked') !== null",
                   "the /live console with the zone ticked (local bootstrap admin)", 20)
        # the page connects its muted microphone on sign-in; talking then only claims the zone
        await wait("window.loaState && window.loaState.conn == 'ready'", "the microphone "
                   "connection (ICE, DTLS) before the press", 20)
        # an official presses a while after the page connected: the muted track idles first
        # (the server measures its packets' arrival phase then, to line its tick up at the claim)
        await asyncio.sleep(1.5)
        await js("document.getElementById('latch').click(); true")
        await wait("window.loaState && window.loaState.phase == 'on_air'", "on air", 20)
        out["on_air_wall"] = time.time()
        out["broadcast"] = await js("window.loaState.broadcast")
        # warm-up (1 s) + the onsets + one spare period, checking the talk stays on air
        t_stop = time.monotonic() + 1.0 + (onsets + 1.5) * PERIOD_S
        while time.monotonic() < t_stop:
            if time.monotonic() > end:
                out["error"] = f"did not finish within {deadline_s:.0f} s"
                break
            phase = await js("window.loaState.phase")
            if phase != "on_air":
                out["error"] = f"the page left on_air: {phase}"
                break
            await asyncio.sleep(0.2)
        probe = await js("JSON.stringify(window.__loaProbe)")
        import json as _json
        probe = _json.loads(probe or "null") or {}
        out["stop_wall"] = time.time()
        out["probe"] = {"kind": probe.get("kind"), "frames": probe.get("frames"),
                        "error": probe.get("error")}
        cal = _capture_calibration(probe.get("map", []))
        out["capture_calibration"] = cal
        try:
            out["sender_stats"] = json.loads(await js(_STATS_JS) or "{}")
        except (RuntimeError, ValueError) as e:
            out["sender_stats"] = {"error": str(e)}
        try:   # the server's side of the page's connection (receive queue, concealment)
            out["server_receive"] = json.loads(await js(
                "(async () => { const id = window.__loaProbe.session; if (!id) return 'null';"
                " const r = await fetch('/api/v1/live/sessions/' + encodeURIComponent(id),"
                " {credentials: 'same-origin'}); return JSON.stringify((await r.json()).webrtc);"
                " })()") or "null")
        except (RuntimeError, ValueError) as e:
            out["server_receive"] = {"error": str(e)}
        out["capture_clock"] = ("page: AudioData timeline anchored at the earliest delivery "
                                "to the page" if cal else "none")
        wall = [o["ts_us"] / 1e6 + cal["offset_s"] for o in probe.get("onsets", [])] if cal else []
        out["onsets_all_wall"] = wall
        warm = out["on_air_wall"] + 1.0
        out["onsets_wall"] = [w for w in wall if w >= warm]
        out["onsets_before_warmup"] = len(wall) - len(out["onsets_wall"])

        async def hang_up() -> None:
            try:
                await js("document.getElementById('latch').click(); true")
                await asyncio.sleep(0.3)
            except Exception:
                pass
            if ws is not None:
                await ws.close()
            await http.close()
            await stop_browser()
        out["_hangup"] = hang_up
        return out
    except (TimeoutError, RuntimeError, aiohttp.ClientError, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    finally:
        if "_hangup" not in out:
            if ws is not None:
                await ws.close()
            await http.close()
            await stop_browser()


def run_webrtc(sender: str, onsets: int, jitter_ms: float = 60.0,
               chromium: str | None = None, loss_pct: float = 0.0,
               net_jitter_ms: float = 0.0) -> dict:
    """One variant against a fresh `loa serve` + reference receiver; the report of that run."""
    import asyncio
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from bench.fanout import REPO, Proc, _child_env, _free_tcp_port
    from bench.preempt import summary, wait_healthy
    work = Path(tempfile.mkdtemp(prefix=f"loa-bench-live-{sender}-"))
    res: dict = {"sender": sender, "valid": True, "invalid_reasons": [],
                 "settings": {"onsets": onsets, "period_s": PERIOD_S, "burst_s": BURST_S,
                              "tone_hz": 1000, "receiver_jitter_ms": jitter_ms}}

    def invalid(why: str) -> dict:
        res["valid"] = False
        res["invalid_reasons"].append(why)
        return res

    env = _child_env()
    env["LOA_SEND_PORT"] = "0"
    trace_path = work / "trace.json"
    env["LOA_LATENCY_TRACE"] = str(trace_path)   # the server's stamps for the budget
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    rx_port = s.getsockname()[1]
    s.close()
    zone = "lat"
    cfg = work / "bench.toml"
    cfg_text = ("webrtc_loopback_only = true\nwebrtc_grace_s = 3.0\n\n"
                f'[[zones]]\nid = "{zone}"\nname = "latency"\n'
                f'unicast = ["127.0.0.1:{rx_port}"]\n')
    ingest_port = 0
    if sender == "rtp":   # a hardware encoder's RTP ingest on loopback, for this zone
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        ingest_port = s.getsockname()[1]
        s.close()
        cfg_text += (f'\n[[rtp_ingest]]\nport = {ingest_port}\nbind = "127.0.0.1"\n'
                     f'zones = ["{zone}"]\nallow = ["127.0.0.1"]\nname = "encoder"\n')
    cfg.write_text(cfg_text)
    wav_out, stats_path = work / "rx.wav", work / "rx.json"
    rx = Proc([sys.executable, "-m", "loa.cli", "receiver", "--listen", f"127.0.0.1:{rx_port}",
               "--out", str(wav_out), "--stats-json", str(stats_path),
               "--jitter-ms", str(jitter_ms)], env=env, name="receiver", cwd=str(REPO))
    http = _free_tcp_port()
    server = Proc([sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
                   f"127.0.0.1:{http}", "--data-dir", str(work / "data")], env=env,
                  name="loa serve", cwd=str(REPO))
    base = f"http://127.0.0.1:{http}"
    sent: dict = {}
    try:
        if rx.expect(lambda l: "listening" in l, 15) is None:
            return invalid("receiver did not start: " + " | ".join(rx.err[-5:]))
        if not wait_healthy(base, server):
            return invalid("loa serve did not start: " + " | ".join(server.err[-5:]))
        deadline = 40.0 + onsets * PERIOD_S * 2
        from bench.schedstat import delta as sched_delta
        from bench.schedstat import snapshot as sched_snap
        sched0 = (sched_snap(server.pid), sched_snap(rx.pid))
        res["loadavg"] = [round(x, 2) for x in os.getloadavg()]

        async def go() -> dict:
            from streamer.ingest.webrtc import restrict_ice_to_loopback
            restrict_ice_to_loopback(True)   # our own aiortc peer too (client side)
            try:
                if sender == "rtp":
                    r = await asyncio.get_running_loop().run_in_executor(
                        None, _send_rtp_thread, ingest_port, onsets, deadline)
                elif sender == "aiortc":
                    r = await _send_aiortc(base, zone, onsets, deadline, loss_pct,
                                           net_jitter_ms)
                else:
                    r = await _send_chromium(base, zone, onsets, work, chromium or "", deadline)
                # how late the kernel ran each thread of the server and the receiver (schedstat)
                r["sched"] = {"server": sched_delta(sched0[0], sched_snap(server.pid),
                                                    server.pid),
                              "receiver": sched_delta(sched0[1], sched_snap(rx.pid), rx.pid)}
                # stop the receiver while the talk is still on air: its output timeline then
                # runs to the moment we stopped it (checked below)
                r["rx_stop_wall"] = time.time()
                rx.p.send_signal(2)
                await asyncio.get_running_loop().run_in_executor(None, rx.p.wait, 10)
                if "_pc" in r:
                    await r.pop("_pc").close()
                if "_relay" in r:
                    r.pop("_relay").close()
                if "_hangup" in r:
                    await r.pop("_hangup")()
                return r
            finally:
                restrict_ice_to_loopback(False)

        sent = asyncio.run(go())
        time.sleep(1.2)   # the server writes its trace every second
        res["server_alive"] = server.alive()
        for k in ("browser", "capture_clock", "capture_calibration", "late_frames", "probe",
                  "onsets_before_warmup", "connection", "sender_stats", "link", "encoder",
                  "server_receive", "offer_fmtp", "answer_fmtp", "inband_fec", "sched",
                  "sender_priority"):
            if k in sent:
                res[k] = sent[k]
        if sent.get("error"):
            invalid(f"{sender} sender: {sent['error']}")
        if not res["server_alive"]:
            return invalid("loa serve died: " + " | ".join(server.err[-5:]))
        if not stats_path.exists() or not wav_out.exists():
            return invalid("the receiver wrote no stats or no output")
        st = json.loads(stats_path.read_text())
        played, info = _played_onsets(wav_out, st)
        res["receiver"] = {k: st.get(k) for k in ("received", "lost", "late", "concealed",
                                                    "jitter_ms", "audio_seconds")}
        res["receiver"]["spurts"] = info["spurts"]
        if "timeline_end_utc" in info:
            # output timeline (first spurt's played_utc + audio written) vs. when we stopped it:
            # a hole in the output that the spurt record does not know of would show here
            res["receiver"]["timeline_slip_ms"] = round(
                (sent["rx_stop_wall"] - info["timeline_end_utc"]) * 1000, 1)
        src = sorted(sent.get("onsets_wall", []))
        pairs = _pair(src, played, PERIOD_S)
        if sender == "chromium":
            pairs = pairs[:onsets]
        lat = [(p - s_) * 1000 for s_, p in pairs]
        res["onsets_sent"] = len(src)
        res["onsets_played"] = len(played)
        res["onsets_matched"] = len(lat)
        res["latency_ms"] = summary(lat)
        if lat:
            res["latency_ms"]["min"] = round(min(lat), 3)
        res["samples_ms"] = [round(v, 2) for v in lat]
        res["budget"] = _budget(trace_path, pairs, sent.get("sender_stats") or {}, st)
        if len(lat) < onsets:
            invalid(f"matched {len(lat)} of {onsets} onsets ({len(src)} sent, "
                    f"{len(played)} found in the receiver's output)")
        return res
    finally:
        server.stop()
        rx.stop()
        if res.get("valid"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            res["workdir"] = str(work)


def _budget(trace_path, pairs: list[tuple[float, float]], sender_stats: dict,
            rx_stats: dict) -> dict:
    from bench.latency_budget import budget
    try:
        trace = json.loads(trace_path.read_text())
    except (OSError, ValueError):
        trace = None
    split = {}
    if sender_stats.get("pacer_ms") is not None:
        split["pacer (sender getStats)"] = float(sender_stats["pacer_ms"])
    rtt = sender_stats.get("rtt_ms") or sender_stats.get("ice_rtt_ms")
    if rtt is not None:
        split["network (rtt/2)"] = float(rtt) / 2
    b = budget(trace, pairs, split)
    sp = [x for x in rx_stats.get("spurts", []) if x.get("played_utc") and x.get("arrival_utc")]
    if sp:   # the receiver's own account of its playout delay (first packet → output)
        b["receiver_playout_delay_ms"] = round((sp[0]["played_utc"] - sp[0]["arrival_utc"])
                                               * 1000, 2)
    return b


#: the threads on the voice path whose scheduling delay the per-run table shows
VOICE_THREADS = {"server": ("main (event loop)", "loa-webrtc-rx", "loa-tick"),
                 "receiver": ("main (event loop)",)}


def run_row(r: dict) -> dict:
    """One run's line of the summary: load, latency, the claim's receive queue, concealment
    (ticks that got a concealment frame / frames read) and the mean wait per wake-up (ms) of
    the voice path's threads (schedstat)."""
    lat = r.get("latency_ms") or {}
    sv = r.get("server_receive") or {}
    src = sv.get("source") or {}
    read = src.get("frames_read") or 0
    conc = src.get("concealed")
    row = {"run": r.get("run", 1), "sender": r["sender"], "valid": r["valid"],
           "load": (r.get("loadavg") or [None])[0], "cpu_hog": r.get("cpu_hog", 0),
           "p50": lat.get("p50"), "p95": lat.get("p95"), "max": lat.get("max"),
           "claim_frames": sv.get("claim_queue_frames"),
           "concealed": conc, "frames_read": read or None,
           "concealed_pct": round(100.0 * conc / read, 2) if conc is not None and read else None}
    for side, names in VOICE_THREADS.items():
        rows = {t["thread"]: t for t in (r.get("sched") or {}).get(side) or []}
        for n in names:
            t = rows.get(n)
            row[f"wait {side} {n}"] = t["wait_per_wakeup_ms"] if t else None
    return row


def render_webrtc(report: dict, console) -> None:
    from rich.table import Table
    m = report["machine"]
    console.print(f"[bold]loa bench latency --source {report.get('source', 'webrtc')}[/] — "
                  f"{m['nproc']} cores, "
                  f"{m['cpu_model']} ({m['virtualization']}), load {m['loadavg_before']}")
    t = Table(title="tone onset captured at the sender → played by the reference receiver (ms)")
    for c in ("sender", "n", "p50", "p95", "max", "min", "mean", "capture clock"):
        t.add_column(c)
    for r in report["runs"]:
        s = r.get("latency_ms") or {}
        t.add_row(r["sender"] + ("" if r["valid"] else " [red](invalid)[/]"),
                  f"{s.get('n', 0)}/{r['settings']['onsets']}",
                  *(str(s.get(k)) for k in ("p50", "p95", "max", "min", "mean")),
                  str(r.get("capture_clock", "")))
    console.print(t)
    from bench.latency_budget import render as render_budget
    for r in report["runs"]:
        if r.get("budget"):
            render_budget(r["budget"], console, r["sender"])
            if r["budget"].get("receiver_playout_delay_ms") is not None:
                console.print(f"{r['sender']}: the receiver's playout delay (first packet → "
                              f"output) {r['budget']['receiver_playout_delay_ms']} ms")
    for r in report["runs"]:
        console.print(f"{r['sender']}: receiver {r.get('receiver')}"
                      + (f"; {r['browser']}" if r.get("browser") else ""))
        if not r["valid"]:
            console.print(f"[red]{r['sender']} INVALID: {r['invalid_reasons']}[/]")
        sv = r.get("server_receive") or {}
        if sv.get("claim_queue_frames") is not None:
            src = sv.get("source") or {}
            console.print(f"{r['sender']}: server receive queue {sv['claim_queue_frames']} "
                          f"frame(s) at the claim (arrival spread alone: "
                          f"{sv.get('queue_frames')}), now {src.get('depth')}; ticks concealed "
                          f"for a late frame {src.get('concealed')}, underruns "
                          f"{src.get('underruns')}, dropped {src.get('dropped_trim')} trim + "
                          f"{src.get('dropped_overflow')} overflow")
    for r in report["runs"]:
        if r.get("link"):
            lk, sv = r["link"], r.get("server_receive") or {}
            console.print(f"{r['sender']}: link {lk['sender_to_server']} (sender → server), "
                          f"{lk['server_to_sender']} (back); answer fmtp "
                          f"{r.get('answer_fmtp')}, in-band FEC sent: {r.get('inband_fec')}; "
                          f"server receive {sv.get('receive')}, queue "
                          f"{sv.get('queue_frames')} frames, arrival jitter "
                          f"{sv.get('arrival_jitter_ms')} ms")
    rows = [run_row(r) for r in report["runs"]]
    if rows:
        t = Table(title="per run: load, mouth → speaker (ms), the claim's receive queue, "
                        "concealment, mean wait per wake-up of the voice path's threads (ms)")
        cols = list(rows[0])
        for c in cols:
            t.add_column(c.replace("main (event loop)", "loop"), justify="right")
        for row in rows:
            t.add_row(*(str(row[c]) for c in cols))
        console.print(t)
    for r in report["runs"]:
        for side in ("server", "receiver"):
            ths = (r.get("sched") or {}).get(side)
            if ths:
                console.print(f"run {r.get('run', 1)} {r['sender']}: {side} threads "
                              + "; ".join(f"{x['thread']} cpu {x['cpu_ms']} ms wait "
                                          f"{x['wait_ms']} ms/{x['wakeups']}"
                                          for x in ths[:8]))
    if report.get("added_delay_ms"):
        console.print(f"[bold]added delay of the phone link[/] (lossy − clean end to end): "
                      f"{report['added_delay_ms']} ms")
    for note in report.get("notes", []):
        console.print(f"[yellow]{note}[/]")
    console.print(f"includes the receiver's jitter buffer "
                  f"({report['settings']['receiver_jitter_ms']:g} ms target)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loa bench latency",
                                 description="live ingest latency (tone onset → zone packet / "
                                             "receiver output)")
    ap.add_argument("--source", choices=["rtp", "webrtc"], default="rtp")
    ap.add_argument("--sender", choices=["both", "aiortc", "chromium"], default="both",
                    help="webrtc: who plays the phone (default both; chromium is skipped when "
                         "not installed)")
    ap.add_argument("--onsets", type=int, default=30)
    ap.add_argument("--jitter-ms", type=float, default=60.0,
                    help="the reference receiver's jitter buffer target")
    ap.add_argument("--json", help="write the result here as JSON")
    ap.add_argument("--loss", type=float, default=0.0,
                    help="webrtc, aiortc sender: %% of datagrams a relay between the phone and "
                         "the server loses (a phone link); with --net-jitter-ms a clean run is "
                         "made first and the added delay reported")
    ap.add_argument("--net-jitter-ms", type=float, default=0.0,
                    help="webrtc, aiortc sender: the relay's jitter J (delay N(J/2, J/2) ms per "
                         "datagram, as netem's 'delay J/2 J/2 distribution normal')")
    ap.add_argument("--runs", type=int, default=1,
                    help="webrtc/rtp: repeat every sender this many times (interleaved) and "
                         "print one row per run")
    ap.add_argument("--cpu-hog", type=int, default=0, metavar="N",
                    help="load the machine on purpose: N busy-looping processes at normal "
                         "priority for the whole bench (each in its own session)")
    ap.add_argument("--in-process", action="store_true",
                    help="rtp: the older in-process engine → zone packet measurement (no "
                         "loa serve, no receiver, no budget)")
    a = ap.parse_args(argv)
    if not 0 <= a.loss < 50 or not 0 <= a.net_jitter_ms <= 500:
        ap.error("--loss must be 0..50 %, --net-jitter-ms 0..500")
    if (a.loss or a.net_jitter_ms) and (a.source != "webrtc" or a.sender == "chromium"):
        ap.error("--loss/--net-jitter-ms relay the aiortc sender of --source webrtc")
    if a.onsets < 5 or a.onsets > 1000:
        ap.error("--onsets must be 5..1000 (at least 20 for a meaningful p95)")
    if not 1 <= a.runs <= 50 or not 0 <= a.cpu_hog <= 64:
        ap.error("--runs must be 1..50, --cpu-hog 0..64")
    if a.source == "webrtc" or not a.in_process:
        return _main_webrtc(a)
    if a.onsets < 20:
        ap.error("--onsets must be at least 20 for a meaningful p95")
    res = _bench_rtp(a.onsets)
    print(f"{'source':8} {'onsets':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    print(f"{res['source']:8} {res['onsets_matched']:>4}/{res['onsets_sent']:<3}"
          f"{res['p50_ms']!s:>8} {res['p95_ms']!s:>8} {res['max_ms']!s:>8}")
    print("(+ the receiver's jitter buffer, 60 ms by default, to hear it)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def _main_webrtc(a) -> int:
    from rich.console import Console

    from bench.common import machine_info
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    chromium = _chromium_path()
    senders = ["aiortc", "chromium"] if a.sender == "both" else [a.sender]
    if a.source == "rtp":   # a hardware encoder on RTP ingest is the only sender
        senders = ["rtp"]
    report: dict = {"benchmark": "latency", "source": a.source, "machine": machine_info(),
                    "settings": {"onsets": a.onsets, "receiver_jitter_ms": a.jitter_ms,
                                 "senders": senders},
                    "runs": [], "notes": [], "valid": True}
    if "chromium" in senders and chromium is None:
        if a.sender == "chromium":
            console.print("[red]chromium is not installed[/]")
            return 2
        senders.remove("chromium")
        report["notes"].append("chromium not installed: the browser variant was skipped")
    if a.onsets < 20:
        report["notes"].append(f"only {a.onsets} onsets: p95 is not meaningful below 20")
    lossy = bool(a.loss or a.net_jitter_ms)
    if lossy:   # the same sender on a clean link, then on the phone link: the added delay
        senders = ["aiortc"]
        report["settings"].update(loss_pct=a.loss, net_jitter_ms=a.net_jitter_ms)
    from bench.cpu_hog import CpuHog
    report["settings"].update(runs=a.runs, cpu_hog=a.cpu_hog)
    hog = CpuHog(a.cpu_hog).start()
    try:
        if a.cpu_hog:
            time.sleep(3.0)   # the load average starts to show it
        for i in range(a.runs):
            for s in senders:
                r = run_webrtc(s, a.onsets, a.jitter_ms, chromium)
                r["run"], r["cpu_hog"] = i + 1, a.cpu_hog
                report["runs"].append(r)
                report["valid"] = report["valid"] and r["valid"]
    finally:
        hog.stop()
    if lossy:
        r = run_webrtc("aiortc", a.onsets, a.jitter_ms, chromium, a.loss, a.net_jitter_ms)
        r["sender"] = f"aiortc, {a.loss:g} % loss, {a.net_jitter_ms:g} ms jitter"
        report["runs"].append(r)
        report["valid"] = report["valid"] and r["valid"]
        clean, bad = report["runs"][0].get("latency_ms") or {}, r.get("latency_ms") or {}
        if clean.get("p50") is not None and bad.get("p50") is not None:
            report["added_delay_ms"] = {q: round(float(bad[q] - clean[q]), 2)
                                        for q in ("p50", "p95")}
    render_webrtc(report, console)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
        console.print(f"results written to {a.json}")
    return 0 if report["valid"] else 3


if __name__ == "__main__":
    raise SystemExit(main())
