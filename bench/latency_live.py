"""Live ingest latency: tone onset at the sender → onset in what a zone's receiver gets.

    python -m bench.latency_live --source rtp [--onsets 30]

`RtpCapture` (a UDP socket in a thread that keeps every Opus RTP packet with its arrival time
and decodes them in order with libopus) is also what the live integration tests listen with.

RTP source: an in-process engine with one zone whose unicast destination is the capture, an
RtpIngest on a loopback port, and a sender thread that paces Opus RTP of silence with 1 kHz
bursts every 500 ms. Latency per onset = arrival of the first zone packet whose decoded audio
crosses -30 dBFS minus the send time of the first sender packet carrying the burst. A
reference receiver adds its jitter buffer (60 ms by default) on top; that is reported apart.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

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
            except socket.timeout:
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
    from streamer.engine import Engine
    from streamer.ingest.rtp_in import RtpIngest, RtpIngestConfig
    from streamer.rtp.fanout import Fanout
    from streamer.zones import Zone, ZoneTree

    cap = RtpCapture()
    tree = ZoneTree()
    tree.add(Zone(id="bench", name="bench", unicast=[("127.0.0.1", cap.port)]))
    fan = Fanout(bind=("127.0.0.1", 0))
    eng = Engine(tree, fan)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ing = RtpIngest(RtpIngestConfig(port=port, zones=["bench"], allow=["127.0.0.1"]), eng)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loa bench latency",
                                 description="live ingest latency (tone onset → zone packet)")
    ap.add_argument("--source", choices=["rtp", "webrtc"], default="rtp")
    ap.add_argument("--onsets", type=int, default=30)
    ap.add_argument("--json", help="write the result here as JSON")
    a = ap.parse_args(argv)
    if a.onsets < 20:
        ap.error("--onsets must be at least 20 for a meaningful p95")
    if a.source == "webrtc":
        print("loa bench latency --source webrtc: not implemented yet (needs onset timestamps "
              "from the page); use --source rtp", file=sys.stderr)
        return 2
    res = _bench_rtp(a.onsets)
    print(f"{'source':8} {'onsets':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    print(f"{res['source']:8} {res['onsets_matched']:>4}/{res['onsets_sent']:<3}"
          f"{res['p50_ms']!s:>8} {res['p95_ms']!s:>8} {res['max_ms']!s:>8}")
    print("(+ the receiver's jitter buffer, 60 ms by default, to hear it)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
