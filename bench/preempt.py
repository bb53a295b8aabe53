"""`loa bench preempt`: how fast an emergency reaches the wire, with N receivers listening.

A real `loa serve` sends a normal programme to one zone of N loopback receivers (drained by the
bench sink) plus one probe socket owned by this process. Each round the bench POSTs an emergency
for that zone and timestamps the first packet at the probe that carries the RTP marker bit (the
zone's switch to the new program). Reported per round:

- api_to_packet_ms: from just before the POST is sent to that packet's arrival at the probe
  (client-side; includes HTTP, validation, probing the stored file, loudness measurement, the
  wait for the next tick, encode and the fan-out position of the probe);
- ready_to_packet_ms: server-side, from the moment the alert's first frame was decoded and
  ready to the moment its first packet was handed to the kernel (the arbitration delay).
"""
from __future__ import annotations

import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info
from bench.fanout import (REPO, Proc, _child_env, _free_tcp_port, _http, _prefix, resolve,
                          write_toml, FanoutOptions)


def _pct(vals: list[float], q: float) -> float | None:
    if not vals:
        return None
    s = sorted(vals)
    i = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return round(s[i], 3)


def summary(vals: list[float]) -> dict:
    return {"n": len(vals), "p50": _pct(vals, 50), "p95": _pct(vals, 95),
            "max": round(max(vals), 3) if vals else None,
            "mean": round(statistics.fmean(vals), 3) if vals else None}


def wait_healthy(base: str, server: Proc, timeout: float = 90.0) -> bool:
    """True once `loa serve` answers its health check; False if it died or never answered. The
    default bound is generous: pinned to one core of a loaded 2-core machine, imports and the
    TTS workers' warm-up took 27 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        try:
            if _http("GET", base + "/api/v1/health", timeout=2)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _alert_file(path: Path, seconds: float = 3.0) -> Path:
    from streamer.ingest.tones import write_tone_wav
    return write_tone_wav(path, 1500, seconds)


#: Linux's SO_TIMESTAMPNS (also the control message type); Python does not name it
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def kernel_stamps(sock: socket.socket) -> None:
    """Ask the kernel to stamp each datagram's arrival (SO_TIMESTAMPNS): the bench's own
    process is not pinned and not favoured, so on a loaded machine it may notice a packet tens
    or hundreds of ms after it arrived; the stamp is the arrival, whoever reads it later."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def _arrival_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's arrival stamp (CLOCK_REALTIME) on this machine's monotonic clock."""
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack("qq", raw[:16])
            return sec * 1_000_000_000 + nsec - (time.time_ns() - time.monotonic_ns())
    return None


def _wait_marker(sock: socket.socket, after_ns: int, timeout: float) -> int | None:
    """Monotonic ns of the first marker packet that arrives after `after_ns` (the kernel's
    arrival stamp when the socket has `kernel_stamps`, else when this process read it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data, anc, _flags, _addr = sock.recvmsg(2048, 64)
        except BlockingIOError:
            time.sleep(0.0002)
            continue
        now = _arrival_ns(anc) or time.monotonic_ns()
        if now >= after_ns and len(data) >= 12 and data[1] & 0x80:
            return now
    return None


def _drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return


def run_preempt(receivers: int = 1000, alerts: int = 20, attention: bool = False,
                console=None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="loa-bench-preempt-"))
    env = _child_env()
    res = resolve(FanoutOptions(receivers=receivers))
    report: dict = {"benchmark": "preempt", "machine": machine_info(),
                    "settings": {"receivers": receivers, "alerts": alerts, "attention": attention,
                                 "source": "stored file (wav)", **res},
                    "valid": True, "invalid_reasons": [], "rounds": []}
    sink = Proc(_prefix(None, res["nice"]) + [
        sys.executable, "-m", "bench.sink", "--receivers", str(receivers), "--cpu",
        str(res["sink_cpu"]), "--sample", "10", "--max-seconds", str(60 + alerts * 5)],
        env=env, name="sink", cwd=str(REPO))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    probe.bind(("127.0.0.1", 0))
    probe.setblocking(False)
    kernel_stamps(probe)
    server = None
    try:
        line = sink.expect(lambda s: s.startswith("ready"), 20)
        if line is None:
            report["valid"] = False
            report["invalid_reasons"].append("sink did not start")
            return report
        port = int(line.split()[1])
        cfg = work / "bench.toml"
        write_toml(cfg, receivers, port, 1)
        with open(cfg) as f:
            text = f.read()
        text = text.replace("unicast = [\n", f'unicast = [\n  "127.0.0.1:{probe.getsockname()[1]}",\n', 1)
        cfg.write_text(text)
        http = _free_tcp_port()
        server = Proc(_prefix(res["sender_cpus"], res["nice"]) + [
            sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
            f"127.0.0.1:{http}", "--data-dir", str(work / "data")], env=env, name="loa serve",
            cwd=str(REPO))
        base = f"http://127.0.0.1:{http}"
        if not wait_healthy(base, server):
            report["valid"] = False
            report["invalid_reasons"].append("loa serve did not start: " + " | ".join(server.err[-5:]))
            return report
        st, prog = _http("POST", base + "/api/v1/broadcasts", {
            "zones": ["bench0"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 440, "seconds": 3600}})
        if st != 201:
            report["valid"] = False
            report["invalid_reasons"].append(f"programme refused: {prog}")
            return report
        alert = _alert_file(work / "alert.wav")
        time.sleep(1.0)
        api: list[float] = []
        ready: list[float] = []
        created: list[float] = []
        for i in range(alerts):
            _drain(probe)
            t0 = time.monotonic_ns()
            st, b = _http("POST", base + "/api/v1/broadcasts", {
                "zones": ["bench0"], "level": "emergency", "attention": attention,
                "source": {"kind": "file", "path": str(alert)}})
            if st != 201:
                report["valid"] = False
                report["invalid_reasons"].append(f"alert {i} refused: {b}")
                break
            t1 = _wait_marker(probe, t0, 5.0)
            st, bb = _http("GET", base + f"/api/v1/broadcasts/{b['id']}")
            timing = bb.get("timing", {}) if st == 200 else {}
            rnd = {"api_to_packet_ms": round((t1 - t0) / 1e6, 3) if t1 else None,
                   "ready_to_packet_ms": timing.get("ready_to_first_packet_ms"),
                   "created_to_packet_ms": timing.get("created_to_first_packet_ms")}
            report["rounds"].append(rnd)
            if t1 is None:
                report["valid"] = False
                report["invalid_reasons"].append(f"alert {i}: no marker packet within 5 s")
            else:
                api.append(round((t1 - t0) / 1e6, 3))
            if rnd["ready_to_packet_ms"] is not None:
                ready.append(rnd["ready_to_packet_ms"])
            if rnd["created_to_packet_ms"] is not None:
                created.append(rnd["created_to_packet_ms"])
            _http("DELETE", base + f"/api/v1/broadcasts/{b['id']}")
            time.sleep(0.3)
        if not server.alive():
            report["valid"] = False
            report["invalid_reasons"].append("loa serve crashed")
        st, health = _http("GET", base + "/api/v1/health")
        report["server_clock"] = health.get("clock") if st == 200 else None
        report["api_to_packet_ms"] = summary(api)
        report["ready_to_packet_ms"] = summary(ready)
        report["created_to_packet_ms"] = summary(created)
        return report
    finally:
        if server is not None:
            server.stop()
        sink.say("stop")
        sink.stop()
        probe.close()


def render(report: dict, console) -> None:
    from rich.table import Table
    m = report["machine"]
    console.print(f"[bold]loa bench preempt[/] — {m['nproc']} cores, {m['cpu_model']}, "
                  f"kernel {m['kernel']}; settings {report['settings']}")
    t = Table(title="emergency → first RTP packet (ms)")
    for c in ("measure", "n", "p50", "p95", "max", "mean"):
        t.add_column(c)
    for key in ("api_to_packet_ms", "created_to_packet_ms", "ready_to_packet_ms"):
        s = report.get(key) or {}
        t.add_row(key, *(str(s.get(k)) for k in ("n", "p50", "p95", "max", "mean")))
    console.print(t)
    if report.get("server_clock"):
        console.print(f"server clock: {report['server_clock']}")
    if not report["valid"]:
        console.print(f"[red]INVALID RUN: {report['invalid_reasons']}[/]")
