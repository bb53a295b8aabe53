"""`loa receiver` as a real process on loopback: unicast and multicast, real libopus, real UDP.

The test is the sender: 3 s of a 1 kHz tone, Opus-encoded, paced on monotonic targets, with
packets reordered, dropped, duplicated, sent late, plus garbage datagrams. It then checks the WAV
the receiver wrote (pitch, tone duration by RMS envelope) and the counters it printed.
"""
from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE
from streamer.rtp.opus import OpusEncoder, OpusSettings
from streamer.rtp.packet import RtpPacket

pytestmark = pytest.mark.integration

LOA = Path(sys.executable).with_name("loa")
LOA_CMD = [str(LOA)] if LOA.exists() else [sys.executable, "-m", "loa.cli"]

TONE_HZ = 1000.0
TONE_S = 3.0
N_PACKETS = int(TONE_S * SAMPLE_RATE) // FRAME_SAMPLES      # 150
SSRC = 0x10AD0001
SEQ0 = 65_500                                              # crosses the 16-bit wrap
TS0 = 0xFFFF0000                                           # crosses the 32-bit wrap
LATE_AFTER = 0.6                                           # s: beyond any slot's due time


class Proc:
    """A receiver process whose stdout/stderr lines are collected by threads (bounded waits)."""

    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen(LOA_CMD + ["receiver", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        for stream, sink, q in ((self.p.stdout, self.out, self._q),
                                (self.p.stderr, self.err, None)):
            threading.Thread(target=self._pump, args=(stream, sink, q), daemon=True).start()

    @staticmethod
    def _pump(stream, sink, q) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            if q is not None:
                q.put(line)

    def wait_line(self, pattern: str, timeout: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r}; stdout={self.out} "
                                     f"stderr={self.err}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            m = re.search(pattern, line)
            if m:
                return m

    def finish(self, timeout: float = 15.0) -> int:
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        time.sleep(0.05)      # let the pump threads take the last lines
        return rc

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=5)

    def counters(self, tag: str = "final") -> dict[str, float]:
        lines = [ln for ln in self.out if ln.startswith(tag + " ")]
        assert lines, f"no {tag!r} line in {self.out} / {self.err}"
        return {k: float(v) for k, v in (kv.split("=") for kv in lines[-1].split()[1:])}


@dataclass
class Plan:
    """What the sender does to the stream, and the counters that must come out of it."""
    drop: set[int] = field(default_factory=lambda: {40, 70, 71})
    swap: tuple[int, int] = (20, 21)
    duplicate: int = 100
    late: int = 120
    stray_ssrc_at: int = 10           # one valid packet of another SSRC: must not disturb
    garbage_at: int = 5


def opus_tone_packets() -> list[bytes]:
    enc = OpusEncoder(OpusSettings(application="audio", fec=True, packet_loss_perc=10))
    t = np.arange(N_PACKETS * FRAME_SAMPLES) / SAMPLE_RATE
    x = (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    out = []
    for i in range(N_PACKETS):
        payload = bytes(enc.encode(x[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]))
        out.append(RtpPacket(payload_type=111, sequence_number=(SEQ0 + i) & 0xFFFF,
                             timestamp=(TS0 + i * FRAME_SAMPLES) & 0xFFFFFFFF, ssrc=SSRC,
                             marker=(i == 0), payload=payload).serialize())
    enc.close()
    return out


GARBAGE = [
    b"hello, not rtp",
    b"\x80\x6f\x00",                                               # truncated header
    bytes([0x40, 111]) + bytes(10),                                # RTP version 1
    RtpPacket(payload_type=111, sequence_number=1, timestamp=2, ssrc=SSRC,
              payload=b"\xff").serialize(),                        # not an Opus packet
]


def schedule(plan: Plan) -> list[tuple[float, bytes]]:
    """(send offset in seconds, datagram), sorted by time."""
    pkts = opus_tone_packets()
    order = list(range(N_PACKETS))
    a, b = plan.swap
    order[a], order[b] = order[b], order[a]
    sends: list[tuple[float, bytes]] = []
    for slot, i in enumerate(order):
        t = slot * 0.020
        if i in plan.drop:
            continue
        if i == plan.late:
            sends.append((t + LATE_AFTER, pkts[i]))
            continue
        sends.append((t, pkts[i]))
        if i == plan.duplicate:
            sends.append((t + 0.005, pkts[i]))
        if i == plan.garbage_at:
            sends.extend((t + 0.002 + k * 0.001, g) for k, g in enumerate(GARBAGE))
        if i == plan.stray_ssrc_at:
            stray = RtpPacket.parse(pkts[i])
            stray.ssrc ^= 0xFFFF
            stray.sequence_number = 12_345
            sends.append((t + 0.003, stray.serialize()))
    sends.sort(key=lambda s: s[0])
    return sends


def send(sock: socket.socket, dest: tuple[str, int], sends: list[tuple[float, bytes]]) -> None:
    start = time.monotonic()
    for t, data in sends:
        delay = start + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendto(data, dest)


def expected_counters(plan: Plan) -> dict[str, int]:
    return {
        "received": N_PACKETS - len(plan.drop) - 1,
        "lost": len(plan.drop),
        "late": 1,
        "duplicate": 1,
        "concealed_fec": 3,          # 40 (41 buffered), 71 (72 buffered), 120 (121 buffered)
        "concealed_plc": 1,          # 70: 71 missing too
        "invalid": 3,
        "bad_payload": 1,
        "foreign": 1,
        "decode_errors": 0,
        "resets": 0,
        "spurts": 1,
    }


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        n = w.getnframes()
        data = w.readframes(n)
    assert len(data) == 2 * n
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0


def tone_extent(x: np.ndarray, win_ms: float = 10.0, threshold: float = 0.1):
    """(seconds from first to last loud window, fraction of loud windows in between)."""
    w = int(SAMPLE_RATE * win_ms / 1000)
    n = len(x) // w
    rms = np.sqrt(np.mean(x[: n * w].reshape(n, w) ** 2, axis=1))
    loud = np.flatnonzero(rms > threshold)
    assert len(loud), "no tone in the file"
    first, last = loud[0], loud[-1]
    return (last - first + 1) * win_ms / 1000, len(loud) / (last - first + 1)


def peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[int(np.argmax(spec))])


def check_tone_file(path: Path) -> None:
    x = read_wav(path)
    dur, fill = tone_extent(x)
    assert abs(dur - TONE_S) <= 0.100, f"tone lasts {dur:.3f} s"
    assert fill > 0.97, f"only {fill:.1%} of the tone's windows are loud"
    assert abs(peak_hz(x) - TONE_HZ) <= 5.0
    # written only while playing: no long silence around the tone
    assert len(x) / SAMPLE_RATE < TONE_S + 0.2


def check_counters(c: dict[str, float], plan: Plan) -> None:
    for k, v in expected_counters(plan).items():
        assert c[k] == v, f"{k}={c[k]}, expected {v} (all: {c})"
    assert c["concealed"] == c["concealed_fec"] + c["concealed_plc"]
    # RFC 3550 jitter: the packet sent 0.6 s late adds 600/16 = 37.5 ms on its own
    assert 30 <= c["jitter_ms"] < 60
    assert abs(c["audio_seconds"] - TONE_S) < 0.2


def test_unicast_receiver_plays_a_tone_through_loss_reordering_and_garbage(tmp_path):
    wav = tmp_path / "x.wav"
    stats_json = tmp_path / "stats.json"
    plan = Plan()
    sends = schedule(plan)
    rx = Proc(["--listen", "127.0.0.1:0", "--out", str(wav), "--duration", "5",
               "--stats-interval", "0.5", "--jitter-ms", "150", "--stats-json", str(stats_json)])
    try:
        port = int(rx.wait_line(r"listening on udp 127\.0\.0\.1:(\d+)").group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            send(s, ("127.0.0.1", port), sends)
        assert rx.finish(timeout=15) == 0, rx.err
    finally:
        rx.kill()
    c = rx.counters("final")
    check_counters(c, plan)
    live = [ln for ln in rx.out if ln.startswith("stats ")]
    assert len(live) >= 6
    for key in ("received=", "lost=", "late=", "duplicate=", "concealed_fec=", "concealed_plc=",
                "jitter_ms=", "depth="):
        assert key in live[-1]
    # before the late packet (sent at ~3.0 s) loopback jitter is small
    early = [float(re.search(r"jitter_ms=([\d.]+)", ln).group(1)) for ln in live[:4]]
    assert max(early) < 10, live
    received = [int(re.search(r" received=(\d+)", ln).group(1)) for ln in live]
    assert received == sorted(received) and received[0] < received[-1]
    assert json.loads(stats_json.read_text())["received"] == c["received"]
    check_tone_file(wav)


def multicast_loopback_works(group: str, port: int) -> str | None:
    """None if a TTL-0 multicast datagram sent via 127.0.0.1 comes back; else why not."""
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        r.bind((group, port))
        r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        r.settimeout(1.0)
        mcast_sender(s)
        s.sendto(b"probe", (group, port))
        r.recvfrom(64)
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        r.close()
        s.close()


def mcast_sender(s: socket.socket) -> None:
    # TTL 0: never leaves the host; loop back to local members; out through lo.
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multicast_two_receivers_share_the_group_port_on_loopback(tmp_path):
    rnd = random.Random()
    group = f"239.255.{rnd.randint(1, 254)}.{rnd.randint(1, 254)}"
    port = free_udp_port()
    why = multicast_loopback_works(group, port)
    if why is not None:
        pytest.fail(f"multicast over loopback does not work here ({why}); it needs "
                    f"IP_MULTICAST_IF 127.0.0.1 and TTL 0, as the server uses", pytrace=False)
    plan = Plan()
    sends = schedule(plan)
    wavs = [tmp_path / "a.wav", tmp_path / "b.wav"]
    rxs = [Proc(["--multicast", f"{group}:{port}", "--interface", "127.0.0.1", "--out", str(w),
                 "--jitter-ms", "150"]) for w in wavs]
    try:
        for rx in rxs:
            rx.wait_line(rf"listening on multicast {re.escape(group)}:{port} on 127\.0\.0\.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            mcast_sender(s)
            send(s, (group, port), sends)
        time.sleep(0.6)                             # let the last slots play out
        for rx in rxs:
            rx.p.send_signal(signal.SIGTERM)        # stop by signal, not --duration
        for rx in rxs:
            assert rx.finish(timeout=15) == 0, rx.err
    finally:
        for rx in rxs:
            rx.kill()
    for rx, wav in zip(rxs, wavs):
        check_counters(rx.counters("final"), plan)
        check_tone_file(wav)


def test_killed_receiver_leaves_a_readable_wav(tmp_path):
    wav = tmp_path / "k.wav"
    rx = Proc(["--listen", "127.0.0.1:0", "--out", str(wav)])
    try:
        port = int(rx.wait_line(r"listening on udp 127\.0\.0\.1:(\d+)").group(1))
        sends = [(t, d) for t, d in schedule(Plan(drop=set())) if t < 1.5]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            send(s, ("127.0.0.1", port), sends)
        time.sleep(0.3)
    finally:
        rx.kill()                                    # SIGKILL: no chance to finalize
    x = read_wav(wav)
    # the header is rewritten every 0.5 s of audio: at least 1 s of the ~1.5 s is declared
    assert 1.0 <= len(x) / SAMPLE_RATE <= 1.6
    assert abs(peak_hz(x) - TONE_HZ) <= 5.0
    assert wav.stat().st_size >= 44 + 2 * len(x)


def test_bad_arguments_and_no_sound_card(tmp_path):
    r = subprocess.run(LOA_CMD + ["receiver", "--listen", "nonsense"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = subprocess.run(LOA_CMD + ["receiver", "--listen", "127.0.0.1:0", "--out", "x.mp3"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "output" in r.stderr
    r = subprocess.run(LOA_CMD + ["receiver", "--multicast", "127.0.0.1:5004"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not an IPv4 multicast address" in r.stderr
    if os.path.isdir("/dev/snd"):
        return
    r = subprocess.run(LOA_CMD + ["receiver", "--listen", "127.0.0.1:0", "--duration", "0.2"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "no sound card" in r.stderr
    assert r.stdout.splitlines()[-1].startswith("final received=0 ")
