"""Real processes on loopback: a `loa serve` per test, reference receivers, ffmpeg."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOA = [sys.executable, "-m", "loa.cli"]


def free_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_udp_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Server:
    def __init__(self, tmp: Path, toml: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.cfg = tmp / "loa.toml"
        self.cfg.write_text(toml, encoding="utf-8")
        self.log = open(tmp / "serve.log", "w+b")
        # any free media/receiver port unless the test names one (5004 may be in use)
        e = {**os.environ, "PYTHONUNBUFFERED": "1", "LOA_SEND_PORT": "0", **(env or {})}
        self.proc = subprocess.Popen(
            LOA + ["serve", "--config", str(self.cfg), "--http", f"127.0.0.1:{self.port}",
                   "--data-dir", str(tmp / "data")],
            stdout=self.log, stderr=subprocess.STDOUT, env=e, cwd=ROOT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        # a bound, not a speed claim: loa serve waits up to 10 s for its TTS workers' warm-up,
        # and a loaded 2-core CI machine has taken 20 s to bring it up
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"loa serve exited: {self.output()}")
            try:
                if self.request("GET", "/api/v1/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"loa serve did not come up: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def request(self, method: str, path: str, body=None, raw: bytes | None = None,
                headers: dict | None = None, timeout: float = 15.0):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                ctype = r.headers.get("Content-Type", "")
                payload = r.read()
                return r.status, (json.loads(payload) if "json" in ctype else payload.decode())
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                return e.code, json.loads(payload)
            except json.JSONDecodeError:
                return e.code, payload.decode(errors="replace")

    def wait_state(self, bid: str, states=("finished", "stopped"), timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, b = self.request("GET", f"/api/v1/broadcasts/{bid}")
            if b.get("state") in states:
                return b
            time.sleep(0.1)
        raise AssertionError(f"broadcast {bid} never reached {states}: {b}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(toml: str, env: dict | None = None) -> Server:
        s = Server(tmp_path, toml, env)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


class Receiver:
    def __init__(self, args: list[str], out: Path, tmp: Path) -> None:
        self.out = out
        self.stats = tmp / f"{out.stem}.stats.json"
        self.logf = open(tmp / f"{out.stem}.log", "w+b")
        self.proc = subprocess.Popen(
            LOA + ["receiver"] + args + ["--out", str(out), "--stats-json", str(self.stats)],
            stdout=self.logf, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def stop(self) -> str:
        if self.logf.closed:
            return self.text
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.logf.flush()
        self.logf.seek(0)
        self.text = self.logf.read().decode(errors="replace")
        self.logf.close()
        return self.text


@pytest.fixture
def receivers(tmp_path):
    rx = []

    def start(args: list[str], name: str) -> Receiver:
        r = Receiver(args, tmp_path / f"{name}.wav", tmp_path)
        rx.append(r)
        return r
    yield start
    for r in rx:
        r.stop()


def read_wav(path: Path):
    import wave

    import numpy as np
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        ch = w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    if ch > 1:
        data = data.reshape(-1, ch).mean(axis=1)
    return data, rate


def tone_stats(x, rate: int, threshold_db: float = -40.0):
    """(dominant frequency, seconds above threshold by 10 ms RMS envelope, first onset s)."""
    import numpy as np
    win = rate // 100
    n = len(x) // win
    if n == 0:
        return 0.0, 0.0, None
    env = np.sqrt(np.mean(x[: n * win].reshape(n, win) ** 2, axis=1))
    thr = 10 ** (threshold_db / 20)
    on = np.nonzero(env > thr)[0]
    if len(on) == 0:
        return 0.0, 0.0, None
    seg = x[on[0] * win:(on[-1] + 1) * win]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    freq = np.fft.rfftfreq(len(seg), 1 / rate)[np.argmax(spec)]
    return float(freq), len(on) * win / rate, on[0] * win / rate


def wait_for(what: str, fn, timeout: float, interval: float = 0.1):
    """Poll `fn` until it returns something truthy (returned); bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


async def until(pred, timeout: float, what: str, interval: float = 0.02) -> None:
    """The asyncio twin of `wait_for`: poll `pred` without blocking the loop."""
    import asyncio
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
