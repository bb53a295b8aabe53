"""`loa bench fanout`: N unicast receivers on loopback, a sender, a sink, and honest accounting.

One run = one sink process (pinned to the last core) + one sender:
- `loa`: a real `loa serve` (same code path as production) with the N receivers as unicast
  destinations of its zones in a TOML file, a tone programme started through the HTTP API;
- `bare`: bench.bare, the send path alone (Opus encode once + Fanout.send per tick);
- `gstreamer`: bench.gst_peer, audiotestsrc ! opusenc ! rtpopuspay ! multiudpsink.

Sender CPU = utime+stime from /proc of the sender and every descendant process (threads are
inside each process' figure) between "ready" and "stream done": startup is not counted, idle
ticks during the run are. On loopback the kernel charges the receive path up to the sink's queue
to the sender, for every sender alike. The sink's own overflow (kernel drops on its socket)
makes a run invalid: then loss would be the sink's, not the sender's.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import (cpu_delta, cpu_list, fmt, machine_info, receivers, softirqd_cpu_seconds,
                          system_busy_seconds, tree_cpu, tree_rss_bytes)

REPO = Path(__file__).resolve().parent.parent
GST_PEER = Path(__file__).resolve().parent / "gst_peer.py"
SYSTEM_PYTHON = "/usr/bin/python3"

METRICS = ("packets_expected", "packets_delivered", "loss_pct", "max_seq_gap",
           "receivers_complete", "cpu_s", "cpu_us_per_pkt", "ipi_ms_p50", "ipi_ms_p99",
           "ipi_ms_max", "realtime_ratio", "rss_bytes", "rss_per_receiver", "late_ticks",
           "sender_dropped", "sender_errors", "window_seconds", "sink_cpu_s", "other_cpu_s",
           "process_cpu_s", "softirqd_cpu_s", "process_cpu_us_per_pkt",
           "rss_marginal_per_receiver")


@dataclass
class FanoutOptions:
    receivers: int = 200
    seconds: float = 10.0
    frame_ms: int = 20
    workers: int = 0
    target: str = "loa"
    peer: str | None = None
    runs: int = 1
    batch: int = 512
    sample: int = 50
    zones: int = 1
    nice: int | None = None          # None: -10 when permitted (root), else 0
    sender_cpus: str | None = None   # None: "0" without workers, all cores with
    sink_cpu: int | None = None      # None: the last core
    bitrate: int = 32_000
    # Every sender encodes the same stream: these go to loa serve, the bare loop and opusenc.
    # FEC off by default, as opusenc's default: with it libopus switches to SILK/hybrid with
    # redundant frames and costs ~2.5x the encode (a per-tick cost, not a fan-out one).
    complexity: int = 5
    fec: bool = False
    json_path: str | None = None


@dataclass
class RunResult:
    kind: str
    run: int
    valid: bool = True
    invalid_reasons: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    sender: dict = field(default_factory=dict)
    sink: dict = field(default_factory=dict)


class Proc:
    """A child process with its stdout read line by line on a thread (bounded waits)."""

    def __init__(self, cmd: list[str], env: dict | None = None, name: str = "",
                 cwd: str | None = None) -> None:
        self.name = name or cmd[0]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                                  start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    @staticmethod
    def _pump(stream, q: queue.Queue) -> None:
        for line in stream or ():
            q.put(line.rstrip("\n"))
        q.put(None)

    def _pump_err(self) -> None:
        for line in self.p.stderr or ():
            if len(self.err) < 200:
                self.err.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.p.pid

    def expect(self, predicate, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                return None
            if predicate(line):
                return line

    def say(self, text: str) -> None:
        stdin = self.p.stdin
        if stdin is None:
            return
        try:
            stdin.write(text + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.p.poll() is None:
            try:
                if self.p.stdin is not None:
                    self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(timeout=min(1.0, timeout))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, 15)
                except ProcessLookupError:
                    pass
                try:
                    self.p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(self.p.pid, 9)
                    except ProcessLookupError:
                        pass
                    self.p.wait(timeout=timeout)
        return self.p.returncode


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("LOA_SEND_PORT", "0")  # any free media port: 5004 may be taken
    return env


def _prefix(cpus: str | None, nice: int) -> list[str]:
    out: list[str] = []
    if nice and shutil.which("nice"):
        out += ["nice", "-n", str(nice)]
    if cpus and shutil.which("taskset"):
        out += ["taskset", "-c", cpus]
    return out


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else {})
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except json.JSONDecodeError:
            return e.code, {}


def loa_server_available() -> bool:
    return (REPO / "control" / "cli.py").exists() and (REPO / "control" / "app.py").exists()


def write_toml(path: Path, n: int, port: int, zones: int, frame_ms: int = 20) -> None:
    """N unicast receivers over `zones` zones; with 40/60 ms frames every receiver is marked
    with that packet time (HOST:PORT/40), as cellular clusters are."""
    addrs = receivers(n, port)
    suffix = f"/{frame_ms}" if frame_ms != 20 else ""
    zones = max(1, min(zones, n))
    with open(path, "w") as f:
        for z in range(zones):
            f.write(f'[[zones]]\nid = "bench{z}"\nname = "bench zone {z}"\nunicast = [\n')
            for h, p in addrs[z::zones]:
                f.write(f'  "{h}:{p}{suffix}",\n')
            f.write("]\n\n")


def _encoder_args(opts: FanoutOptions) -> list[str]:
    return ["--bitrate", str(opts.bitrate), "--complexity", str(opts.complexity)] + \
        (["--fec"] if opts.fec else [])


def _encoder_env(opts: FanoutOptions) -> dict:
    """The same encoder settings for `loa serve` (its production default has FEC on)."""
    return {"LOA_OPUS_BITRATE": str(opts.bitrate), "LOA_OPUS_COMPLEXITY": str(opts.complexity),
            "LOA_OPUS_FEC": "true" if opts.fec else "false",
            "LOA_OPUS_PACKET_LOSS_PERC": "10" if opts.fec else "0"}


def resolve(opts: FanoutOptions) -> dict:
    ncpu = os.cpu_count() or 1
    nice = opts.nice if opts.nice is not None else (-10 if os.geteuid() == 0 else 0)
    sink_cpu = opts.sink_cpu if opts.sink_cpu is not None else ncpu - 1
    if opts.sender_cpus is not None:
        sender_cpus = opts.sender_cpus
    elif opts.workers:
        sender_cpus = f"0-{ncpu - 1}" if ncpu > 1 else "0"
    else:
        sender_cpus = "0"
    return {"nice": nice, "sink_cpu": sink_cpu, "sender_cpus": sender_cpus}


def run_once(kind: str, run: int, opts: FanoutOptions, res: dict, workdir: Path) -> RunResult:
    out = RunResult(kind=kind, run=run)
    env = _child_env()
    n, S, F = opts.receivers, opts.seconds, opts.frame_ms
    sink = Proc(_prefix(None, res["nice"]) + [
        sys.executable, "-m", "bench.sink", "--receivers", str(n), "--cpu", str(res["sink_cpu"]),
        "--sample", str(opts.sample), "--frame-ms", str(F), "--max-seconds", str(S + 180)],
        env=env, name="sink", cwd=str(REPO))
    sender: Proc | None = None
    try:
        line = sink.expect(lambda s: s.startswith("ready"), 20)
        if line is None:
            out.valid = False
            out.invalid_reasons.append("sink did not start: " + " | ".join(sink.err[-5:]))
            return out
        port = int(line.split()[1])
        prefix = _prefix(res["sender_cpus"], res["nice"])
        expected: int | None = None
        trim = 0
        broadcast_id = None
        rt = ["chrt", "-f", "10"] if os.geteuid() == 0 and shutil.which("chrt") else []
        if kind == "bare":
            sender = Proc(prefix + rt + [sys.executable, "-m", "bench.bare", "--port", str(port),
                                    "--receivers", str(n), "--seconds", str(S), "--frame-ms",
                                    str(F), "--workers", str(opts.workers), "--batch",
                                    str(opts.batch), *_encoder_args(opts),
                                    "--zones", str(opts.zones)],
                          env=env, name="bare", cwd=str(REPO))
            ok = sender.expect(lambda s: s == "ready", 60)
        elif kind == "gstreamer":
            # Loa's tick thread asks for SCHED_FIFO itself; the peer (and the bare loop) get the
            # same scheduling class where permitted, so the comparison is like for like.
            sender = Proc(prefix + rt + [SYSTEM_PYTHON, str(GST_PEER), "--port", str(port),
                                    "--receivers", str(n), "--seconds", str(S), "--frame-ms",
                                    str(F), *_encoder_args(opts)],
                          name="gstreamer", cwd=str(REPO))
            ok = sender.expect(lambda s: s == "ready", 60)
        elif kind == "loa":
            toml = workdir / f"bench-{run}.toml"
            write_toml(toml, n, port, opts.zones, opts.frame_ms)
            http = f"127.0.0.1:{_free_tcp_port()}"
            senv = dict(env, **_encoder_env(opts), LOA_LOG_LEVEL="WARNING",
                        LOA_FANOUT_WORKERS=str(opts.workers), LOA_FANOUT_BATCH=str(opts.batch))
            data_dir = workdir / f"data-{run}"
            sender = Proc(prefix + [sys.executable, "-m", "loa.cli", "serve", "--config",
                                    str(toml), "--http", http, "--data-dir", str(data_dir)],
                          env=senv, name="loa serve", cwd=str(REPO))
            base = f"http://{http}/api/v1"
            ok = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sender.alive():
                try:
                    st, _ = _http("GET", base + "/health", timeout=2)
                    if st == 200:
                        ok = "ready"
                        break
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            time.sleep(0.5)  # let the first idle ticks settle before measuring
        else:
            raise ValueError(f"unknown target {kind!r}")
        if not ok:
            out.valid = False
            out.invalid_reasons.append(f"{kind} did not become ready: "
                                       + " | ".join(sender.err[-5:]))
            return out
        cpus = cpu_list(res["sender_cpus"])
        counters0 = _server_counters(f"http://{http}/metrics") if kind == "loa" else {}
        cpu0 = tree_cpu(sender.pid)
        soft0 = softirqd_cpu_seconds(cpus)
        sink0 = tree_cpu(sink.pid)
        sys0 = system_busy_seconds()
        t_go = time.monotonic()
        if kind == "loa":
            zones = [f"bench{z}" for z in range(max(1, min(opts.zones, n)))]
            st, body = _http("POST", base + "/broadcasts", {
                "zones": zones, "level": "normal",
                "source": {"kind": "tone", "freq_hz": 1000, "seconds": S}})
            if st >= 300 or "id" not in body:
                out.valid = False
                out.invalid_reasons.append(f"broadcast refused: {st} {body}")
                return out
            broadcast_id = body["id"]
            info: dict = {"broadcast": body}
            end_by = time.monotonic() + S + 30
            time.sleep(S)
            state = None
            while time.monotonic() < end_by and sender.alive():
                st, b = _http("GET", f"{base}/broadcasts/{broadcast_id}")
                state = b.get("state")
                if state in ("finished", "stopped", "interrupted", "failed"):
                    break
                time.sleep(0.2)
            info["final_state"] = state
            if state != "finished":
                out.invalid_reasons.append(f"broadcast ended as {state!r}")
                out.valid = False
            time.sleep(0.1)
            trim = 2  # the server keeps ticking: stop mid-tick must not look like loss
        else:
            sender.say("go")
            line = sender.expect(lambda s: s.startswith("{"), S + 60)
            if line is None:
                out.valid = False
                out.invalid_reasons.append(f"{kind} sender crashed or hung: "
                                           + " | ".join(sender.err[-5:]))
                return out
            info = json.loads(line)
            # GStreamer's opusenc emits one packet more than it got buffers (its lookahead
            # flush): there the expected count is the sequence span seen by the sink.
            expected = (int(info.get("ticks", 0)) or None) if kind == "bare" else None
            if kind == "gstreamer" and not info.get("eos"):
                out.valid = False
                out.invalid_reasons.append(f"gstreamer did not reach EOS: {info.get('error')}")
        wall = time.monotonic() - t_go
        cpu1 = tree_cpu(sender.pid)
        soft_s = max(0.0, softirqd_cpu_seconds(cpus) - soft0)
        sink_cpu_s = cpu_delta(sink0, tree_cpu(sink.pid))
        sys_busy = system_busy_seconds() - sys0
        rss = tree_rss_bytes(sender.pid)
        if not sender.alive():
            out.valid = False
            out.invalid_reasons.append(f"{kind} exited during the run (code {sender.p.returncode}): "
                                       + " | ".join(sender.err[-5:]))
        if kind == "loa" and sender.alive():
            # read after the CPU window closed: a scrape is not part of the sending
            info.update(_counter_delta(counters0, _server_counters(f"http://{http}/metrics")))
        proc_cpu_s = cpu_delta(cpu0, cpu1)
        cpu_s = proc_cpu_s + soft_s   # the sender's packets' deferred softirq work included
        sink.say("stop" + (f" expected={expected}" if expected else "") + f" trim={trim}")
        line = sink.expect(lambda s: s.startswith("{"), 60)
        if line is None:
            out.valid = False
            out.invalid_reasons.append("sink crashed: " + " | ".join(sink.err[-5:]))
            return out
        sk = json.loads(line)
        out.sink = sk
        out.sender = info
        if sk.get("sink_drops", 0) != 0:
            out.valid = False
            out.invalid_reasons.append(f"sink overflowed ({sk.get('sink_drops')} kernel drops)")
        if sk.get("unparsed"):
            out.valid = False
            out.invalid_reasons.append(f"sink could not parse {sk['unparsed']} datagrams")
        if not sk.get("packets_delivered"):
            out.valid = False
            out.invalid_reasons.append("no packet arrived")
        delivered = sk.get("packets_delivered") or 0
        fo = info.get("fanout", {}) if isinstance(info, dict) else {}
        ipi99 = sk.get("ipi_ms_p99")
        m = {
            "packets_expected": sk.get("packets_expected"),
            "packets_delivered": delivered,
            "loss_pct": sk.get("loss_pct"),
            "max_seq_gap": sk.get("max_seq_gap"),
            "receivers_complete": sk.get("receivers_complete"),
            "min_delivered": sk.get("min_delivered"),
            "expected_per_receiver": sk.get("expected_per_receiver"),
            "duplicates": sk.get("duplicates"),
            "cpu_s": round(cpu_s, 3),
            "process_cpu_s": round(proc_cpu_s, 3),
            "softirqd_cpu_s": round(soft_s, 3),
            "cpu_us_per_pkt": round(cpu_s * 1e6 / delivered, 3) if delivered else None,
            "cpu_cores_busy": round(cpu_s / wall, 3) if wall > 0 else None,
            "ipi_ms_p50": sk.get("ipi_ms_p50"),
            "ipi_ms_p99": ipi99,
            "ipi_ms_max": sk.get("ipi_ms_max"),
            "realtime_ratio": sk.get("realtime_ratio"),
            "rss_bytes": rss,
            "rss_per_receiver": round(rss / n, 1),
            "late_ticks": info.get("late_ticks") if isinstance(info, dict) else None,
            "sender_dropped": fo.get("dropped"),
            "sender_errors": fo.get("errors"),
            "window_seconds": sk.get("window_seconds"),
            "wall_s": round(wall, 3),
            "sink_cpu_s": round(sink_cpu_s, 3),
            # CPU burnt by everything else on the machine meanwhile: the noise in this run
            "other_cpu_s": round(max(0.0, sys_busy - cpu_s - sink_cpu_s), 3),
            "process_cpu_us_per_pkt": round(proc_cpu_s * 1e6 / delivered, 3) if delivered else None,
            "loadavg_after": round(os.getloadavg()[0], 2),
        }
        loss = m["loss_pct"] if m["loss_pct"] is not None else 100.0
        frame = float(opts.frame_ms)
        m["sustained"] = bool(out.valid and loss < 0.1 and ipi99 is not None
                              and ipi99 <= frame + 5.0)
        out.metrics = m
        return out
    finally:
        if sender is not None:
            sender.say("quit")
            code = sender.stop(timeout=10)
            if kind == "loa" and code not in (0, None, -2, -15, 130, 143) and out.valid:
                out.valid = False
                out.invalid_reasons.append(f"loa serve exited with {code}: "
                                           + " | ".join(sender.err[-5:]))
        sink.stop(timeout=10)


def _server_counters(url: str) -> dict:
    """late_ticks and fanout {dropped, errors} of a `loa serve`, from its Prometheus page."""
    try:
        req = urllib.request.Request(url)
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError, UnicodeDecodeError):
        return {}
    vals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                vals[name] = float(value)
            except ValueError:
                pass
    out: dict = {}
    if "loa_tick_late_total" in vals:
        out["late_ticks"] = int(vals["loa_tick_late_total"])
    if "loa_tick_overruns_total" in vals:
        out["tick_overruns"] = int(vals["loa_tick_overruns_total"])
    fo = {k: int(vals[m]) for k, m in (("dropped", "loa_packets_dropped_total"),
                                      ("errors", "loa_send_errors_total")) if m in vals}
    if fo:
        out["fanout"] = fo
    return out


def _counter_delta(before: dict, after: dict) -> dict:
    out: dict = {}
    for k, v in after.items():
        if isinstance(v, dict):
            b = before.get(k, {})
            out[k] = {kk: vv - b.get(kk, 0) for kk, vv in v.items()}
        else:
            out[k] = v - before.get(k, 0)
    return out


def _median(vals: list) -> float | None:
    v = [x for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return round(statistics.median(v), 4) if v else None


def summarize(results: list[RunResult], kinds: list[str]) -> dict:
    out = {}
    for k in kinds:
        rs = [r for r in results if r.kind == k]
        good = [r for r in rs if r.valid]
        med = {f: _median([r.metrics.get(f) for r in good]) for f in METRICS}
        med["cpu_cores_busy"] = _median([r.metrics.get("cpu_cores_busy") for r in good])
        med["sustained_runs"] = sum(1 for r in good if r.metrics.get("sustained"))
        med["valid_runs"] = len(good)
        med["runs"] = len(rs)
        out[k] = med
    return out


def baseline_rss(opts: FanoutOptions, res: dict, workdir: Path) -> int | None:
    """RSS of a `loa serve` with the same settings and no receiver, after playing the same
    programme for 2 s: subtracted from a run's RSS, what the receivers themselves cost."""
    env = _child_env()
    toml = workdir / "baseline.toml"
    write_toml(toml, 0, 9, 1, opts.frame_ms)
    http = f"127.0.0.1:{_free_tcp_port()}"
    senv = dict(env, **_encoder_env(opts), LOA_LOG_LEVEL="WARNING",
                LOA_FANOUT_WORKERS=str(opts.workers), LOA_FANOUT_BATCH=str(opts.batch))
    sender = Proc(_prefix(res["sender_cpus"], res["nice"]) + [
        sys.executable, "-m", "loa.cli", "serve", "--config", str(toml), "--http", http,
        "--data-dir", str(workdir / "data-baseline")], env=senv, name="loa serve", cwd=str(REPO))
    base = f"http://{http}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sender.alive():
            try:
                if _http("GET", base + "/health", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        else:
            return None
        st, body = _http("POST", base + "/broadcasts", {
            "zones": ["bench0"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 1000, "seconds": 2}})
        if st >= 300:
            return None
        time.sleep(2.5)
        return tree_rss_bytes(sender.pid) if sender.alive() else None
    finally:
        sender.say("quit")
        sender.stop(timeout=10)


def run_fanout(opts: FanoutOptions, console=None) -> dict:
    if opts.receivers < 1:
        raise ValueError("--receivers must be >= 1")
    if opts.seconds <= 0 or opts.seconds * 1000 / opts.frame_ms > 30_000:
        raise ValueError("--seconds must be > 0 and at most 30,000 packets long")
    res = resolve(opts)
    kinds = [opts.target] + ([opts.peer] if opts.peer else [])
    machine = machine_info()
    results: list[RunResult] = []
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    total = opts.runs * len(kinds)
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp, Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console, transient=True) as prog:
        task = prog.add_task("fanout", total=total)
        base_rss = None
        if opts.target == "loa":
            prog.update(task, description="loa serve without receivers: baseline memory")
            base_rss = baseline_rss(opts, res, Path(tmp))
        for run_no in range(opts.runs):
            order = kinds if run_no % 2 == 0 else list(reversed(kinds))  # interleaved, alternating
            for k in order:
                prog.update(task, description=f"run {run_no + 1}/{opts.runs}: {k} × {opts.receivers}")
                results.append(run_once(k, run_no, opts, res, Path(tmp)))
                prog.advance(task)
    for r in results:
        rss = r.metrics.get("rss_bytes")
        if r.kind == "loa" and base_rss and rss:
            r.metrics["rss_baseline_bytes"] = base_rss
            r.metrics["rss_marginal_per_receiver"] = round((rss - base_rss) / opts.receivers, 1)
    summary = summarize(results, kinds)
    report = {
        "benchmark": "fanout",
        "machine": machine,
        "settings": {**{k: v for k, v in asdict(opts).items() if k != "json_path"}, **res,
                     "opus": {"bitrate": opts.bitrate, "frame_ms": opts.frame_ms,
                              "complexity": opts.complexity, "fec": opts.fec,
                              "channels": 1, "rate": 48000}},
        "runs": [asdict(r) for r in results],
        "median": summary,
        "valid": all(r.valid for r in results),
        "invalid_reasons": [f"{r.kind} run {r.run}: {why}" for r in results
                            for why in r.invalid_reasons],
    }
    if opts.peer and opts.peer in summary:
        a = summary[opts.target].get("cpu_us_per_pkt")
        b = summary[opts.peer].get("cpu_us_per_pkt")
        report["ratio_cpu_per_pkt"] = round(a / b, 3) if a and b else None
        pairs = []
        for run_no in range(opts.runs):
            x = [q for q in results if q.run == run_no and q.kind == opts.target and q.valid]
            y = [q for q in results if q.run == run_no and q.kind == opts.peer and q.valid]
            if x and y and x[0].metrics.get("cpu_us_per_pkt") and y[0].metrics.get("cpu_us_per_pkt"):
                pairs.append(x[0].metrics["cpu_us_per_pkt"] / y[0].metrics["cpu_us_per_pkt"])
        report["ratio_cpu_per_pkt_paired"] = [round(p, 3) for p in pairs]
    return report


def render(report: dict, console) -> None:
    from rich.table import Table
    m = report["machine"]
    s = report["settings"]
    console.print(f"[bold]loa bench fanout[/] — {m['nproc']} × {m['cpu_model']} "
                  f"({m['virtualization']}), kernel {m['kernel']}, python {m['python']}, "
                  f"load {m['loadavg_before']}")
    console.print(f"receivers={s['receivers']} seconds={s['seconds']} frame={s['frame_ms']} ms "
                  f"opus={s['bitrate']} b/s complexity={s['complexity']} fec={'on' if s['fec'] else 'off'} "
                  f"workers={s['workers']} batch={s['batch']} "
                  f"zones={s['zones']} runs={s['runs']} sender cpus={s['sender_cpus']} "
                  f"sink cpu={s['sink_cpu']} nice={s['nice']}")
    t = Table(title="per run")
    cols = ["target", "run", "valid", "expected", "delivered", "loss %", "max gap", "cpu s",
            "softirqd s", "µs/pkt", "ipi p50", "ipi p99", "ipi max", "rt ratio", "RSS/recv B",
            "late", "other cpu s"]
    for c in cols:
        t.add_column(c, justify="right" if c not in ("target",) else "left")
    for r in report["runs"]:
        mm = r["metrics"]
        t.add_row(r["kind"], str(r["run"] + 1), "yes" if r["valid"] else "[red]NO[/]",
                  fmt(mm.get("packets_expected")), fmt(mm.get("packets_delivered")),
                  fmt(mm.get("loss_pct"), 3), fmt(mm.get("max_seq_gap")),
                  fmt(mm.get("cpu_s")), fmt(mm.get("softirqd_cpu_s")),
                  fmt(mm.get("cpu_us_per_pkt")),
                  fmt(mm.get("ipi_ms_p50")), fmt(mm.get("ipi_ms_p99")),
                  fmt(mm.get("ipi_ms_max")), fmt(mm.get("realtime_ratio"), 4),
                  fmt(mm.get("rss_per_receiver"), 0), fmt(mm.get("late_ticks")),
                  fmt(mm.get("other_cpu_s")))
    console.print(t)
    t2 = Table(title="medians over valid runs")
    for c in ["target", "valid/runs", "loss %", "max gap", "µs/pkt", "cores busy", "ipi p99",
              "ipi max", "rt ratio", "RSS/recv B", "Δ RSS/recv B", "sustained"]:
        t2.add_column(c, justify="left" if c == "target" else "right")
    for k, med in report["median"].items():
        t2.add_row(k, f"{med['valid_runs']}/{med['runs']}", fmt(med.get("loss_pct"), 3),
                   fmt(med.get("max_seq_gap")), fmt(med.get("cpu_us_per_pkt")),
                   fmt(med.get("cpu_cores_busy")), fmt(med.get("ipi_ms_p99")),
                   fmt(med.get("ipi_ms_max")), fmt(med.get("realtime_ratio"), 4),
                   fmt(med.get("rss_per_receiver"), 0),
                   fmt(med.get("rss_marginal_per_receiver"), 0),
                   f"{med['sustained_runs']}/{med['valid_runs']}")
    console.print(t2)
    console.print("cpu s: the sender's processes (all threads) + ksoftirqd on its cores (the "
                  "loopback receive work it deferred); Δ RSS/recv: minus a `loa serve` with no "
                  "receiver")
    if "ratio_cpu_per_pkt" in report:
        console.print(f"sender CPU per delivered packet, {s['target']} / {s['peer']}: "
                      f"[bold]{fmt(report['ratio_cpu_per_pkt'], 3)}[/] (medians; per run pair: "
                      f"{report.get('ratio_cpu_per_pkt_paired')})")
    if not report["valid"]:
        for why in report["invalid_reasons"]:
            console.print(f"[red]invalid:[/] {why}")
