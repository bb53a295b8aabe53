"""`loa bench latency --source file`: tone onset in the source → onset in a receiver's output.

A real `loa serve` plays a file of tone bursts (onsets at known positions) to a zone whose one
destination is a reference `loa receiver`. The server logs when the file's first frame went out
(`broadcast.started`, UTC); an onset at position p in the file therefore left the source at
started + p. The receiver records, for the talk spurt, the wall time at which its first sample
was handed to the output and that sample's position in the output; an onset found at output
position q was played at played + (q - spurt_start). Latency = played onset − source onset.
This covers the tick, encode, send, loopback, the receiver's jitter buffer (its target delay is
a setting, reported) and decode. Both clocks are this machine's wall clock, so no sync error.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from bench.common import machine_info
from bench.fanout import REPO, Proc, _child_env, _free_tcp_port, _http
from bench.preempt import summary, wait_healthy

RATE = 48_000


def burst_file(path: Path, onsets: int, period_s: float, on_s: float, lead_s: float) -> list[float]:
    total = lead_s + onsets * period_s + 0.5
    x = np.zeros(int(total * RATE), np.float32)
    t = np.arange(int(on_s * RATE)) / RATE
    burst = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    positions = []
    for k in range(onsets):
        p = lead_s + k * period_s
        i = int(round(p * RATE))
        x[i:i + len(burst)] = burst
        positions.append(i / RATE)
    import wave
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return positions


def find_onsets(x: np.ndarray, rate: int, threshold: float = 0.05, min_gap_s: float = 0.2) -> list[float]:
    above = np.abs(x) > threshold
    idx = np.nonzero(above)[0]
    out: list[float] = []
    last: float = -1e9
    for i in idx:
        if i - last > min_gap_s * rate:
            out.append(i / rate)
        last = float(i)
    return out


def _utc(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def run_latency(source: str = "file", onsets: int = 20, jitter_ms: float = 60.0,
                console=None) -> dict:
    if source != "file":
        raise ValueError("this benchmark measures --source file; the live sources (webrtc, rtp) "
                         "come with the phone issue")
    work = Path(tempfile.mkdtemp(prefix="loa-bench-latency-"))
    env = _child_env()
    report: dict = {"benchmark": "latency", "machine": machine_info(),
                    "settings": {"source": source, "onsets": onsets,
                                 "receiver_jitter_ms": jitter_ms},
                    "valid": True, "invalid_reasons": []}
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = work / "bench.toml"
    cfg.write_text(f'[[zones]]\nid = "lat"\nunicast = ["127.0.0.1:{port}"]\n')
    wav_out, stats = work / "rx.wav", work / "rx.json"
    rx = Proc([sys.executable, "-m", "loa.cli", "receiver", "--listen", f"127.0.0.1:{port}",
               "--out", str(wav_out), "--stats-json", str(stats), "--jitter-ms", str(jitter_ms)],
              env=env, name="receiver", cwd=str(REPO))
    http = _free_tcp_port()
    server = Proc([sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
                   f"127.0.0.1:{http}", "--data-dir", str(work / "data")], env=env,
                  name="loa serve", cwd=str(REPO))
    base = f"http://127.0.0.1:{http}"
    try:
        if rx.expect(lambda l: "listening" in l, 15) is None:
            report["valid"] = False
            report["invalid_reasons"].append("receiver did not start: " + " | ".join(rx.err[-5:]))
            return report
        if not wait_healthy(base, server):
            report["valid"] = False
            report["invalid_reasons"].append("loa serve did not start")
            return report
        src = work / "bursts.wav"
        positions = burst_file(src, onsets, period_s=0.6, on_s=0.3, lead_s=0.5)
        st, b = _http("POST", base + "/api/v1/broadcasts", {
            "zones": ["lat"], "source": {"kind": "file", "path": str(src)}})
        if st != 201:
            report["valid"] = False
            report["invalid_reasons"].append(f"broadcast refused: {b}")
            return report
        deadline = time.monotonic() + positions[-1] + 15
        state = None
        while time.monotonic() < deadline:
            st, cur = _http("GET", base + f"/api/v1/broadcasts/{b['id']}")
            state = cur.get("state")
            if state in ("finished", "stopped"):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        st, log = _http("GET", base + f"/api/v1/asrun?broadcast={b['id']}")
        started = next((e for e in log.get("events", []) if e["type"] == "broadcast.started"), None)
        rx.p.send_signal(2)
        rx.p.wait(10)
        if started is None or not stats.exists():
            report["valid"] = False
            report["invalid_reasons"].append("no start event or no receiver stats")
            return report
        st_json = json.loads(stats.read_text())
        spurt = next((sp for sp in st_json.get("spurts", []) if sp.get("played_utc")), None)
        import wave
        with wave.open(str(wav_out), "rb") as w:
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        found = find_onsets(x, RATE)
        if spurt is None or len(found) < onsets:
            report["valid"] = False
            report["invalid_reasons"].append(f"found {len(found)} of {onsets} onsets")
            return report
        t_start = _utc(started["time"])
        lat = []
        for p_src, q_out in zip(positions, found[:onsets]):
            played = spurt["played_utc"] + (q_out - spurt["output_s"])
            lat.append((played - (t_start + p_src)) * 1000.0)
        report["latency_ms"] = summary(lat)
        report["receiver"] = {k: st_json.get(k) for k in ("lost", "late", "concealed", "jitter_ms")}
        report["samples_ms"] = [round(v, 2) for v in lat]
        return report
    finally:
        server.stop()
        rx.stop()


def render(report: dict, console) -> None:
    from rich.table import Table
    m = report["machine"]
    console.print(f"[bold]loa bench latency[/] — {m['nproc']} cores, {m['cpu_model']}; "
                  f"settings {report['settings']}")
    if "latency_ms" in report:
        t = Table(title="source onset → receiver output onset (ms)")
        for c in ("n", "p50", "p95", "max", "mean"):
            t.add_column(c)
        s = report["latency_ms"]
        t.add_row(*(str(s.get(k)) for k in ("n", "p50", "p95", "max", "mean")))
        console.print(t)
        console.print(f"receiver: {report.get('receiver')}")
    if not report["valid"]:
        console.print(f"[red]INVALID RUN: {report['invalid_reasons']}[/]")
