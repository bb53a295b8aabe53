"""The bare sender: the send path without the server around it.

A Python loop that, every frame, encodes one Opus frame of a 1 kHz tone ONCE, writes an RTP
header and calls `Fanout.send` for all receivers: the floor the whole server should come close
to, and the baseline row of `loa bench fanout`. Ticks come from monotonic targets
(start + k·frame), never sleep(frame), so it does not drift; a late tick is sent at once
(catch-up) and counted.

Protocol on stdio (driven by bench.fanout): prints `ready`, waits for `go`, runs, prints one JSON
line, waits for `quit` (bounded) and exits.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np

from bench.common import receivers
from streamer.audio import SAMPLE_RATE
from streamer.rtp.fanout import Fanout
from streamer.rtp.opus import OpusEncoder, OpusSettings
from streamer.rtp.packet import HEADER_SIZE, write_header


def run(port: int, n: int, seconds: float, frame_ms: int, workers: int, batch: int,
        bitrate: int, zones: int, complexity: int = 5, fec: bool = False) -> dict:
    samples = SAMPLE_RATE * frame_ms // 1000
    enc = OpusEncoder(OpusSettings(bitrate=bitrate, frame_samples=samples, fec=fec,
                                   packet_loss_perc=10 if fec else 0, complexity=complexity))
    t = np.arange(samples, dtype=np.float64) / SAMPLE_RATE
    fanout = Fanout(workers=workers, batch=batch)
    addrs = receivers(n, port)
    zones = max(1, min(zones, n))
    keys = tuple(f"z{i}" for i in range(zones))
    t0 = time.perf_counter()
    for i, key in enumerate(keys):
        fanout.set_destinations(key, addrs[i::zones])
    provision_s = time.perf_counter() - t0
    ssrc = random.getrandbits(32)
    seq = random.getrandbits(16)
    ts = random.getrandbits(32)
    buf = bytearray(1500)
    ticks = int(math.ceil(seconds * 1000 / frame_ms))
    print("ready", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        fanout.close()
        return {"error": "no go"}
    frame_ns = frame_ms * 1_000_000
    late = 0
    max_late_ns = 0
    sent = 0
    phase = 0.0
    start = time.monotonic_ns()
    for k in range(ticks):
        target = start + k * frame_ns
        now = time.monotonic_ns()
        if now < target:
            time.sleep((target - now) / 1e9)
        else:
            lateness = now - target
            max_late_ns = max(max_late_ns, lateness)
            if lateness > 2_000_000:
                late += 1
        frame = (0.3 * np.sin(2 * np.pi * 1000.0 * (t + phase))).astype(np.float32)
        phase += samples / SAMPLE_RATE
        payload = enc.encode(frame)
        write_header(buf, 111, seq, ts, ssrc, marker=(k == 0))
        end = HEADER_SIZE + len(payload)
        buf[HEADER_SIZE:end] = payload
        sent += fanout.send(memoryview(buf)[:end], keys)
        seq = (seq + 1) & 0xFFFF
        ts = (ts + samples) & 0xFFFFFFFF
    elapsed = (time.monotonic_ns() - start) / 1e9
    # Workers send asynchronously: wait (bounded) until they report every send done.
    deadline = time.monotonic() + 5
    st = fanout.stats()
    while workers and st["sent"] + st["dropped"] + st["errors"] < ticks * n \
            and time.monotonic() < deadline:
        time.sleep(0.01)
        st = fanout.stats()
    out = {"ticks": ticks, "late_ticks": late, "max_late_ms": round(max_late_ns / 1e6, 3),
           "elapsed_s": round(elapsed, 3), "handed": sent, "provision_s": round(provision_s, 4),
           "fanout": st, "worker_pids": fanout.worker_pids(), "zones": zones}
    print(json.dumps(out), flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
    fanout.close()
    enc.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bare")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--receivers", type=int, required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--frame-ms", type=int, default=20, choices=(20, 40, 60))
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--bitrate", type=int, default=32000)
    p.add_argument("--zones", type=int, default=1)
    p.add_argument("--complexity", type=int, default=5)
    p.add_argument("--fec", action="store_true")
    a = p.parse_args(argv)
    out = run(a.port, a.receivers, a.seconds, a.frame_ms, a.workers, a.batch, a.bitrate, a.zones,
              a.complexity, a.fec)
    return 1 if "error" in out else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
