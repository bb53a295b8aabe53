"""`loa bench nodes`: several nodes through Redis (issue 19), real processes on loopback.

Every node is a real `loa serve` process, Redis a real `redis-server` on a free port of this
machine (no persistence), receivers are the fan-out bench's sinks (bench/sink.py: one socket
drains N addresses 127.0.x.y:PORT and counts packets per address) or, for failover, the
reference field receivers (receivers/field.py, real SRTP and libopus) on threads of this
process, so their counters can be read while they play.

Part 1, CPU (for each N of --sizes, --rounds times), two runs side by side, in alternating
order (`cpu_schedule`; each round's ratio is edge / single node of that round, the table shows
the median over the rounds):
- *single*: `loa serve --role all` (no Redis) with two zones of N unicast receivers each (one
  sink per zone), a tone on both zones for --seconds;
- *cluster*: one origin and two edges through a fresh redis-server; the origin has the same two
  zones with the same receivers and edge A serves the first zone's static destinations, edge B
  the second's (`LOA_SERVE_ZONES`), so the origin mixes and encodes, the edges fan out.
The senders (the single node, both edges) are pinned to the same core(s) (--sender-cpus) at
nice -10 where permitted, the sinks and the origin to another (--sink-cpu, --origin-cpus), as
in `loa bench fanout`. CPU = utime+stime of a process and its descendants between the API call
that starts the tone and its end, plus the ksoftirqd time of the senders' cores (the loopback
receive path the kernel deferred), split between the two edges by the packets each delivered.
Each side is charged its whole process: the single node its tick thread (mix, Opus, packets,
sends) and its main thread (event loop: API, receiver endpoint); an edge its feed thread
(receive, authenticate and read the envelope, packets, sends) and its main thread (event loop:
Redis, receiver endpoint); `threads` in the JSON says how much each thread took. Neither side
pays the loopback receive of what reaches it: the single node gets nothing, an edge gets one
envelope per tick whose kernel receive path runs in the origin's send call (charged to the
origin, as a NIC's would not be on a real network).
Reported: each sender's µs per delivered packet, each edge's as a ratio to the single node's of
the same N (goal: within 10 %), and the origin's cores busy per N (goal: flat in N, its work is
per programme).

Part 2, failover (--trials each, one cluster: redis-server, an active origin and a standby on
the same data directory, edges A and B, --failover-receivers field receivers listing both edges,
a static zone of --static-receivers sink addresses served by edge A, a tone on the air):
- *edge killed*: SIGKILL the edge the receivers play through; time until every receiver has
  played 25 packets (0.5 s) through the other edge (goal p95 ≤ 5 s); the killed edge is
  started again (same node id and port) before the next trial, which kills the other edge;
- *origin killed*: SIGKILL the active origin; time until every receiver has played 25 packets
  of the new leader's stream (its SSRC) (goal p95 ≤ 10 s); the killed one comes back as the
  standby;
- *Redis restarted*: kill -9 redis-server and start it again empty on its port while the tone
  plays; packets lost on the static receivers (a sink started for the trial 1 s before the
  restart and stopped --redis-window seconds after it started, counting every packet from its
  first to its last, ~5 s of draining included) and on the field receivers (sequence gaps,
  concealments) (goal 0); duplicates are counted apart (a speaker fed by two nodes).
Times use the nearest-rank p95 (with 10 trials: the slowest one).

Exit status as every `loa bench`: 0 when every run was valid, 3 otherwise; never because a
number missed its goal (the table says so).
"""
from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (CLK_TCK, cpu_delta, cpu_list, descendants, fmt, machine_info,
                          receivers, softirqd_cpu_seconds, tree_cpu)
from bench.fanout import FanoutOptions, Proc, _encoder_env, _free_tcp_port, _http

REPO = Path(__file__).resolve().parent.parent
CPU_GOAL_RATIO = 1.10          # an edge's µs/packet within 10 % of the single node's
EDGE_GOAL_S = 5.0
ORIGIN_GOAL_S = 10.0
PLAYING_PACKETS = 25           # "playing again": 0.5 s of audio through the new path


@dataclass
class NodesOptions:
    sizes: tuple[int, ...] = (250, 1000, 2500)
    seconds: float = 10.0
    rounds: int = 1                   # CPU: each N this many times, single and cluster in turn
    trials: int = 10
    failover_receivers: int = 4
    static_receivers: int = 100
    redis_window: float = 6.0
    sender_cpus: str | None = None    # None: "0"
    origin_cpus: str | None = None    # None: the last core
    sink_cpu: int | None = None       # None: the last core
    nice: int | None = None           # None: -10 as root, else 0
    parts: tuple[str, ...] = ("cpu", "edge", "origin", "redis")
    json_path: str | None = None


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (with 10 values: the largest)."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, math.ceil(0.95 * len(v)) - 1)]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base_env() -> dict[str, str]:
    """The harness' environment without any LOA_ setting of the shell it runs in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["LOA_LOG_LEVEL"] = "WARNING"
    env["LOA_FANOUT_WORKERS"] = "0"
    env["LOA_FANOUT_BATCH"] = "512"
    env.update(_encoder_env(FanoutOptions()))
    return env


def _prefix(cpus: str | None, nice: int) -> list[str]:
    out: list[str] = []
    if nice and shutil.which("nice"):
        out += ["nice", "-n", str(nice)]
    if cpus and shutil.which("taskset"):
        out += ["taskset", "-c", cpus]
    return out


# ------------------------------------------------------------------ processes
class RedisServer:
    """A throwaway redis-server on a free loopback port, persistence off."""

    def __init__(self) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = _free_udp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis as sync_redis
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        r = sync_redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    if r.ping():
                        return
                except sync_redis.RedisError:
                    pass
                time.sleep(0.02)
        finally:
            r.close()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        """kill -9 and start again on the same port, empty."""
        self.kill()
        self.start()


class Node:
    """One `loa serve` process; its output in a log file."""

    def __init__(self, workdir: Path, name: str, role: str, env: dict[str, str], *,
                 config: Path | None = None, data_dir: Path | None = None,
                 prefix: list[str] | None = None) -> None:
        self.name = name
        self.role = role
        self.http = f"127.0.0.1:{_free_tcp_port()}"
        self.log_path = workdir / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w+b")
        args = [sys.executable, "-m", "loa.cli", "serve", "--role", role, "--http", self.http]
        if config is not None:
            args += ["--config", str(config)]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        self.proc = subprocess.Popen((prefix or []) + args, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=str(REPO), start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 5) -> str:
        return " | ".join(self.output().strip().splitlines()[-n:])

    def health(self) -> tuple[int, dict[str, Any]]:
        path = "/health" if self.role == "edge" else "/api/v1/health"
        try:
            return _http("GET", f"http://{self.http}{path}", timeout=2)
        except (urllib.error.URLError, OSError, ValueError):
            return 0, {}

    def wait_up(self, timeout: float = 60.0, ok: Callable[[int, dict[str, Any]], bool] | None
                = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            st, body = self.health()
            if (ok(st, body) if ok is not None else st == 200):
                return True
            time.sleep(0.1)
        return False

    def api(self, method: str, path: str, body: dict[str, Any] | None = None
            ) -> tuple[int, dict[str, Any]]:
        return _http(method, f"http://{self.http}/api/v1{path}", body, timeout=10)

    def kill9(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()


def _sink(n: int, cpu: int, nice: int, seconds: float, port: int = 0) -> tuple[Proc, int]:
    env = _base_env()
    sink = Proc(_prefix(None, nice) + [
        sys.executable, "-m", "bench.sink", "--receivers", str(n), "--cpu", str(cpu),
        "--port", str(port), "--max-seconds", str(seconds + 180)],
        env=env, name="sink", cwd=str(REPO))
    line = sink.expect(lambda s: s.startswith("ready"), 20)
    if line is None:
        sink.stop()
        raise RuntimeError("sink did not start: " + " | ".join(sink.err[-5:]))
    return sink, int(line.split()[1])


def _sink_result(sink: Proc, trim: int = 2) -> dict[str, Any]:
    import json
    sink.say(f"stop trim={trim}")
    line = sink.expect(lambda s: s.startswith("{"), 60)
    sink.stop()
    if line is None:
        return {"error": "sink crashed: " + " | ".join(sink.err[-5:])}
    out: dict[str, Any] = json.loads(line)
    return out


def _zone_toml(zones: list[tuple[str, list[tuple[str, int]]]]) -> str:
    out = []
    for zid, addrs in zones:
        out.append(f'[[zones]]\nid = "{zid}"\nname = "{zid}"\nunicast = [\n')
        out.extend(f'  "{h}:{p}",\n' for h, p in addrs)
        out.append("]\n\n")
    return "".join(out)


def _cluster_env(redis: RedisServer, key: str, node: str, **more: str) -> dict[str, str]:
    return {**_base_env(), "LOA_REDIS_URL": redis.url, "LOA_CLUSTER_KEY": key,
            "LOA_NODE_ID": node, "LOA_SEND_PORT": "0", "LOA_FEED_PORT": "0", **more}


def _tone(node: Node, zones: list[str], seconds: float) -> str:
    st, body = node.api("POST", "/broadcasts", {
        "zones": zones, "level": "normal",
        "source": {"kind": "tone", "freq_hz": 1000, "seconds": seconds}})
    if st >= 300 or "id" not in body:
        raise RuntimeError(f"broadcast refused: {st} {body}")
    return str(body["id"])


def _wait_finished(node: Node, bid: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline and node.alive():
        st, b = node.api("GET", f"/broadcasts/{bid}")
        state = b.get("state")
        if state in ("finished", "stopped", "interrupted", "failed"):
            break
        time.sleep(0.1)
    return state


# ------------------------------------------------------------------ part 1: CPU
def thread_cpu(pid: int) -> dict[tuple[int, int], tuple[str, float]]:
    """(process, thread) -> (its name, utime + stime) over a process tree: the threads name
    themselves for the OS (`loa-tick`, `loa-edge-feed`, ...); a process' main thread (the
    asyncio loop of `loa serve`) is `main`."""
    out: dict[tuple[int, int], tuple[str, float]] = {}
    for p in descendants(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            name = data[data.index("(") + 1:data.rindex(")")]
            fields = data[data.rindex(")") + 2:].split()
            out[(p, int(t))] = ("main" if int(t) == p else name,
                                (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def threads_delta(before: dict[tuple[int, int], tuple[str, float]],
                  after: dict[tuple[int, int], tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread name between two samples (threads born in between count from
    zero; the CPU of threads that ended in between is in the process total only)."""
    out: dict[str, float] = {}
    for key, (name, t) in after.items():
        d = t - before.get(key, (name, 0.0))[1]
        if d > 0:
            out[name] = out.get(name, 0.0) + d
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


@dataclass
class CpuRun:
    receivers: int                      # per zone (2 zones)
    kind: str                           # single | cluster
    round: int = 0                      # which of --rounds (a single and a cluster run each)
    valid: bool = True
    invalid_reasons: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    senders: dict[str, dict[str, Any]] = field(default_factory=dict)   # single | edge-a | edge-b
    origin: dict[str, Any] = field(default_factory=dict)
    loadavg: list[float] = field(default_factory=list)
    #: each sender's CPU seconds per thread name (what its total is made of)
    threads: dict[str, dict[str, float]] = field(default_factory=dict)


def _sender_metrics(cpu_s: float, soft_s: float, sk: dict[str, Any], wall: float
                    ) -> dict[str, Any]:
    delivered = int(sk.get("packets_delivered") or 0)
    total = cpu_s + soft_s
    return {"cpu_s": round(total, 3), "process_cpu_s": round(cpu_s, 3),
            "softirqd_cpu_s": round(soft_s, 3), "packets_delivered": delivered,
            "packets_expected": sk.get("packets_expected"), "loss_pct": sk.get("loss_pct"),
            "max_seq_gap": sk.get("max_seq_gap"), "duplicates": sk.get("duplicates"),
            "ipi_ms_p99": sk.get("ipi_ms_p99"),
            "cpu_us_per_pkt": round(total * 1e6 / delivered, 3) if delivered else None,
            "cores_busy": round(total / wall, 3) if wall > 0 else None}


def _check_sink(run: CpuRun, name: str, sk: dict[str, Any]) -> None:
    if sk.get("error"):
        run.valid = False
        run.invalid_reasons.append(f"{name}: {sk['error']}")
        return
    if sk.get("sink_drops", 0):
        run.valid = False
        run.invalid_reasons.append(f"{name}: sink overflowed ({sk['sink_drops']} kernel drops)")
    if not sk.get("packets_delivered"):
        run.valid = False
        run.invalid_reasons.append(f"{name}: no packet arrived")
    if sk.get("duplicates"):
        run.valid = False
        run.invalid_reasons.append(f"{name}: {sk['duplicates']} duplicate packets (two nodes "
                                   "sent to the same receivers)")


def _cpu_run(kind: str, n: int, opts: NodesOptions, res: dict[str, Any], workdir: Path
             ) -> CpuRun:
    run = CpuRun(receivers=n, kind=kind)
    S = opts.seconds
    sinks: list[Proc] = []
    nodes: list[Node] = []
    redis: RedisServer | None = None
    try:
        ports = []
        for _ in range(2):
            s, port = _sink(n, res["sink_cpu"], res["nice"], S)
            sinks.append(s)
            ports.append(port)
        # zone a: receivers 0..n-1 on the first sink's port, zone b: the same addresses on the
        # second's (a sink tells its receivers by address, the two by port)
        toml = workdir / f"{kind}-{n}.toml"
        toml.write_text(_zone_toml([("bench-a", receivers(n, ports[0])),
                                    ("bench-b", receivers(n, ports[1]))]), encoding="utf-8")
        sender_prefix = _prefix(res["sender_cpus"], res["nice"])
        if kind == "single":
            single = Node(workdir, f"single-{n}", "all", {**_base_env(), "LOA_SEND_PORT": "0"},
                          config=toml, data_dir=workdir / f"single-{n}-data",
                          prefix=sender_prefix)
            nodes.append(single)
            if not single.wait_up(60):
                raise RuntimeError(f"loa serve did not come up: {single.tail()}")
            api, senders = single, {"single": single}
        else:
            redis = RedisServer()
            key = secrets.token_hex(24)
            origin = Node(workdir, f"origin-{n}", "origin",
                          _cluster_env(redis, key, "origin-1"), config=toml,
                          data_dir=workdir / f"origin-{n}-data",
                          prefix=_prefix(res["origin_cpus"], 0))
            nodes.append(origin)
            edges = {}
            for name, zone in (("edge-a", "bench-a"), ("edge-b", "bench-b")):
                e = Node(workdir, name, "edge", _cluster_env(redis, key, name,
                                                               LOA_SERVE_ZONES=f'["{zone}"]'),
                         prefix=sender_prefix)
                nodes.append(e)
                edges[name] = (e, zone)
            if not origin.wait_up(60):
                raise RuntimeError(f"origin did not come up: {origin.tail()}")
            for name, (e, zone) in edges.items():
                # the zone's static destinations reached the edge (zone.set) and it pulls it
                def pulls(st: int, b: dict[str, Any], z: str = zone) -> bool:
                    return st == 200 and z in b.get("zones", [])
                if not e.wait_up(60, pulls):
                    raise RuntimeError(f"{name} did not take {zone}: {e.tail()}")
            time.sleep(2.5)   # the origin's next look at the edges strips what they serve
            api, senders = origin, {name: e for name, (e, _z) in edges.items()}
        time.sleep(0.5)
        cpus = cpu_list(res["sender_cpus"])
        before = {name: tree_cpu(nd.pid) for name, nd in senders.items()}
        tbefore = {name: thread_cpu(nd.pid) for name, nd in senders.items()}
        o0 = tree_cpu(api.pid) if kind == "cluster" else {}
        soft0 = softirqd_cpu_seconds(cpus)
        t0 = time.monotonic()
        bid = _tone(api, ["bench-a", "bench-b"], S)
        time.sleep(S)
        state = _wait_finished(api, bid, 30)
        time.sleep(0.1)
        wall = time.monotonic() - t0
        after = {name: tree_cpu(nd.pid) for name, nd in senders.items()}
        tafter = {name: thread_cpu(nd.pid) for name, nd in senders.items()}
        o1 = tree_cpu(api.pid) if kind == "cluster" else {}
        soft = max(0.0, softirqd_cpu_seconds(cpus) - soft0)
        run.wall_s = round(wall, 3)
        run.loadavg = _load()
        run.threads = {name: threads_delta(tbefore[name], tafter[name]) for name in senders}
        if state != "finished":
            run.valid = False
            run.invalid_reasons.append(f"broadcast ended as {state!r}")
        for nd in nodes:
            if not nd.alive():
                run.valid = False
                run.invalid_reasons.append(f"{nd.name} exited: {nd.tail()}")
        results = [_sink_result(s) for s in sinks]
        sinks.clear()
        for name, sk in zip(("zone a", "zone b"), results):
            _check_sink(run, f"{kind} {n} {name}", sk)
        if kind == "single":
            merged = {"packets_delivered": sum(int(r.get("packets_delivered") or 0)
                                               for r in results),
                      "packets_expected": sum(int(r.get("packets_expected") or 0)
                                              for r in results),
                      "max_seq_gap": max(int(r.get("max_seq_gap") or 0) for r in results),
                      "duplicates": sum(int(r.get("duplicates") or 0) for r in results),
                      "ipi_ms_p99": max((r.get("ipi_ms_p99") or 0) for r in results)}
            exp = merged["packets_expected"]
            merged["loss_pct"] = round(100.0 * (1 - merged["packets_delivered"] / exp), 4) \
                if exp else None
            run.senders["single"] = _sender_metrics(cpu_delta(before["single"],
                                                              after["single"]), soft, merged,
                                                    wall)
        else:
            delivered = [int(r.get("packets_delivered") or 0) for r in results]
            total = sum(delivered) or 1
            for (name, _nd), sk, d in zip(senders.items(), results, delivered):
                run.senders[name] = _sender_metrics(cpu_delta(before[name], after[name]),
                                                    soft * d / total, sk, wall)
            ocpu = cpu_delta(o0, o1)
            run.origin = {"cpu_s": round(ocpu, 3),
                          "cores_busy": round(ocpu / wall, 4) if wall > 0 else None,
                          "ms_per_tick": round(ocpu * 1000 / (wall * 50), 4) if wall > 0
                          else None}
        return run
    except RuntimeError as e:
        run.valid = False
        run.invalid_reasons.append(f"{kind} {n}: {e}")
        return run
    finally:
        for s in sinks:
            s.stop()
        for nd in nodes:
            nd.stop()
        if redis is not None:
            redis.kill()


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def cpu_summary(runs: list[CpuRun]) -> dict[str, Any]:
    """One row per N. With several rounds each edge's ratio is the median of its per-round
    ratios (edge / single node of the same round: the two ran one after the other, under about
    the same load), µs per packet and the origin's figures the medians over the rounds."""
    by_n: dict[int, dict[int, dict[str, CpuRun]]] = {}
    for r in runs:
        by_n.setdefault(r.receivers, {}).setdefault(r.round, {})[r.kind] = r
    rows = []
    for n, rounds in sorted(by_n.items()):
        row: dict[str, Any] = {"receivers_per_edge": n, "receivers": 2 * n}
        singles: list[float] = []
        per_edge: dict[str, dict[str, list[float]]] = {
            e: {"us": [], "ratio": []} for e in ("edge-a", "edge-b")}
        busy: list[float] = []
        per_tick: list[float] = []
        for _i, kinds in sorted(rounds.items()):
            single, cluster = kinds.get("single"), kinds.get("cluster")
            s_us = single.senders.get("single", {}).get("cpu_us_per_pkt") \
                if single is not None and single.valid else None
            if s_us:
                singles.append(s_us)
            if cluster is None or not cluster.valid:
                continue
            for name, acc in per_edge.items():
                e_us = cluster.senders.get(name, {}).get("cpu_us_per_pkt")
                if e_us:
                    acc["us"].append(e_us)
                    if s_us:
                        acc["ratio"].append(round(e_us / s_us, 3))
            if cluster.origin.get("cores_busy") is not None:
                busy.append(cluster.origin["cores_busy"])
            if cluster.origin.get("ms_per_tick") is not None:
                per_tick.append(cluster.origin["ms_per_tick"])
        row["rounds"] = len(rounds)
        row["single_us_per_pkt"] = _median(singles)
        for name, acc in per_edge.items():
            row[f"{name}_us_per_pkt"] = _median(acc["us"])
            row[f"{name}_ratio"] = _median(acc["ratio"])
            row[f"{name}_ratios"] = acc["ratio"]
        if busy:
            row["origin_cores_busy"] = round(statistics.median(busy), 4)
        if per_tick:
            row["origin_ms_per_tick"] = round(statistics.median(per_tick), 4)
        ratios = [row.get(f"{e}_ratio") for e in ("edge-a", "edge-b")]
        row["edges_within_goal"] = all(x is not None and x <= CPU_GOAL_RATIO for x in ratios)
        rows.append(row)
    busy_n = [r["origin_cores_busy"] for r in rows if r.get("origin_cores_busy")]
    flat = round(max(busy_n) / min(busy_n), 3) if len(busy_n) >= 2 and min(busy_n) > 0 \
        else None
    return {"rows": rows, "origin_busy_max_over_min": flat, "fit": cost_fit(runs)}


def _line(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least squares y = a + b·x over (x, y) points with at least two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return {"fixed_us_per_tick": round(my - b * mx, 1), "us_per_packet": round(b, 3)}


def cost_fit(runs: list[CpuRun]) -> dict[str, Any]:
    """A sender's CPU per tick as fixed work + work per packet, fitted over the sizes: why an
    edge's µs per packet is above the single node's at small N (the same fixed work per tick,
    spread over half the packets) and how they compare per added packet."""
    pts: dict[str, list[tuple[float, float]]] = {"single": [], "edge": []}
    for r in runs:
        if not r.valid or r.wall_s <= 0:
            continue
        ticks = r.wall_s * 50
        for name, m in r.senders.items():
            if m.get("packets_delivered"):
                pts["single" if name == "single" else "edge"].append(
                    (m["packets_delivered"] / ticks, m["cpu_s"] * 1e6 / ticks))
    return {k: _line(v) for k, v in pts.items()}


# ------------------------------------------------------------------ part 2: failover
class FieldRx:
    """A reference field receiver (SRTP, libopus, jitter buffer) on its own event-loop thread."""

    def __init__(self, rid: str, secret: bytes, servers: list[tuple[str, int]]) -> None:
        from receivers.field import FieldReceiver, FieldSession
        from receivers.output import NullSink
        from receivers.receiver import Receiver, udp_socket
        self.rid = rid
        self.session = FieldSession(rid, secret, servers, register_retry_s=0.5)
        self.fr = FieldReceiver(self.session, Receiver(NullSink(), adaptive=True))
        self.sock = udp_socket("127.0.0.1", 0)
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"rx-{rid}")
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def go() -> Any:
            self.stop_ev = asyncio.Event()
            return await self.fr.run(self.sock, duration=7200, stop=self.stop_ev)
        try:
            self.loop.run_until_complete(go())
        finally:
            self.loop.close()

    @property
    def received(self) -> int:
        return int(self.fr.rx.jitter.stats.received)

    @property
    def ssrc(self) -> int | None:
        s = self.fr.rx.jitter.ssrc
        return int(s) if s is not None else None

    def stats(self) -> dict[str, int]:
        return dict(self.fr.rx.jitter.stats.as_dict())

    def stop(self) -> None:
        if self.thread.is_alive() and self.stop_ev is not None:
            self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(10)
        self.sock.close()


class FailoverCluster:
    """redis-server, an active origin and a standby on one data directory, edges A and B (A
    also serves the static zone), field receivers listing both edges, a tone on the air."""

    RX_ZONE = "bench-rx"
    STATIC_ZONE = "bench-static"

    def __init__(self, opts: NodesOptions, res: dict[str, Any], workdir: Path) -> None:
        self.opts = opts
        self.res = res
        self.workdir = workdir
        self.redis = RedisServer()
        self.key = secrets.token_hex(24)
        self.data = workdir / "shared-data"
        self.static_port = _free_udp_port()
        self.toml = workdir / "failover.toml"
        self.toml.write_text(
            f'[[zones]]\nid = "{self.RX_ZONE}"\nname = "{self.RX_ZONE}"\n\n'
            + _zone_toml([(self.STATIC_ZONE, receivers(opts.static_receivers,
                                                        self.static_port))]),
            encoding="utf-8")
        self.edge_ports = {"edge-a": _free_udp_port(), "edge-b": _free_udp_port()}
        self.nodes: list[Node] = []
        self.edges: dict[str, Node] = {}
        self.rx: list[FieldRx] = []
        self.origins = 0
        try:   # a node that does not come up: stop what did (redis-server, the other nodes)
            self.active = self._origin()
            if not self.active.wait_up(60):
                raise RuntimeError(f"origin did not come up: {self.active.tail()}")
            self.standby = self._standby()
            for name in self.edge_ports:
                self.start_edge(name)
        except BaseException:
            self.close()
            raise

    def _origin(self) -> Node:
        self.origins += 1
        name = f"origin-{self.origins}"
        n = Node(self.workdir, name, "origin", _cluster_env(self.redis, self.key, name),
                 config=self.toml, data_dir=self.data,
                 prefix=_prefix(self.res["origin_cpus"], 0))
        self.nodes.append(n)
        return n

    def _standby(self) -> Node:
        n = self._origin()
        # waiting on the data directory's lock ("standby origin"), or serving as a follower
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and n.alive():
            if "standby" in n.output() or n.health()[0] in (200, 503):
                time.sleep(0.5)
                return n
            time.sleep(0.1)
        raise RuntimeError(f"the standby origin did not start: {n.tail()}")

    def start_edge(self, name: str) -> Node:
        more = {"LOA_SEND_PORT": str(self.edge_ports[name])}
        if name == "edge-a":
            more["LOA_SERVE_ZONES"] = f'["{self.STATIC_ZONE}"]'
        e = Node(self.workdir, name, "edge", _cluster_env(self.redis, self.key, name, **more),
                 prefix=_prefix(self.res["sender_cpus"], self.res["nice"]))
        self.nodes.append(e)
        self.edges[name] = e
        want = len(self.rx)
        if not e.wait_up(60, lambda st, b: st == 200 and bool(b.get("origins"))
                         and int(b.get("secrets", 0)) >= want):
            raise RuntimeError(f"{name} did not come up: {e.tail()}")
        return e

    def add_receivers(self, k: int) -> None:
        from receivers.cli import decode_secret
        servers = [("127.0.0.1", self.edge_ports["edge-a"]),
                   ("127.0.0.1", self.edge_ports["edge-b"])]
        for i in range(k):
            st, body = self.active.api("POST", "/receivers", {"zone": self.RX_ZONE,
                                                              "name": f"bench rx {i}"})
            if st != 201:
                raise RuntimeError(f"provisioning refused: {st} {body}")
            self.rx.append(FieldRx(str(body["id"]), decode_secret(body["secret"]),
                                   list(servers)))
        for name, e in self.edges.items():
            if not e.wait_up(20, lambda st, b: int(b.get("secrets", 0)) >= k):
                raise RuntimeError(f"the receivers' secrets did not reach {name}")
        deadline = time.monotonic() + 20
        while not all(r.session.registered for r in self.rx):
            if time.monotonic() > deadline:
                raise RuntimeError("the field receivers did not register")
            time.sleep(0.05)

    def on_air(self, seconds: float) -> None:
        _tone(self.active, [self.RX_ZONE, self.STATIC_ZONE], seconds)
        if self.wait_playing(lambda r: True, 20) is None:
            raise RuntimeError("the field receivers do not play the tone")

    def wait_playing(self, cond: Callable[[FieldRx], bool], timeout: float) -> float | None:
        """Seconds until every receiver has PLAYING_PACKETS more packets and meets `cond`."""
        base = {r.rid: r.received for r in self.rx}
        t0 = time.monotonic()
        done: dict[str, float] = {}
        while time.monotonic() - t0 < timeout:
            for r in self.rx:
                if r.rid not in done and r.received >= base[r.rid] + PLAYING_PACKETS \
                        and cond(r):
                    done[r.rid] = time.monotonic() - t0
            if len(done) == len(self.rx):
                return max(done.values())
            time.sleep(0.01)
        return None

    def holder(self) -> str | None:
        """The edge every receiver plays through (None if they are split)."""
        where = {r.session.server[1] for r in self.rx}
        if len(where) != 1:
            return None
        (port,) = where
        return next((n for n, p in self.edge_ports.items() if p == port), None)

    def close(self) -> None:
        for r in self.rx:
            r.stop()
        for n in self.nodes:
            n.stop()
        self.redis.kill()


def _edge_trials(c: FailoverCluster, trials: int, log: Callable[[str], None]
                 ) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for t in range(trials):
        time.sleep(1.0)
        name = c.holder()
        if name is None:
            out.append({"trial": t, "error": "receivers split between edges before the kill"})
            continue
        other = "edge-b" if name == "edge-a" else "edge-a"
        port = c.edge_ports[other]
        c.edges[name].kill9()

        def moved(r: FieldRx, p: int = port) -> bool:
            return bool(r.session.server[1] == p)
        took = c.wait_playing(moved, 30)
        out.append({"trial": t, "killed": name, "seconds": None if took is None
                    else round(took, 3), "loadavg": _load()})
        log(f"edge trial {t + 1}/{trials}: {name} killed -> playing through {other} in "
            f"{fmt(took, 2)} s (load {_load()[0]})")
        c.start_edge(name)
    return _timing(out, EDGE_GOAL_S)


def _origin_trials(c: FailoverCluster, trials: int, log: Callable[[str], None]
                   ) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for t in range(trials):
        time.sleep(2.0)
        ssrcs = {r.rid: r.ssrc for r in c.rx}
        killed = c.active.name
        c.active.kill9()

        def new_stream(r: FieldRx, old: dict[str, int | None] = ssrcs) -> bool:
            return r.ssrc != old[r.rid]
        took = c.wait_playing(new_stream, 30)
        out.append({"trial": t, "killed": killed, "seconds": None if took is None
                    else round(took, 3), "loadavg": _load()})
        log(f"origin trial {t + 1}/{trials}: {killed} killed -> the standby on air in "
            f"{fmt(took, 2)} s (load {_load()[0]})")
        c.active = c.standby
        if not c.active.wait_up(30):
            out[-1]["error"] = f"the standby does not serve: {c.active.tail()}"
        c.standby = c._standby()
    return _timing(out, ORIGIN_GOAL_S)


def _timing(trials: list[dict[str, Any]], goal: float) -> dict[str, Any]:
    took = [float(t["seconds"]) for t in trials if t.get("seconds") is not None]
    failed = len(trials) - len(took)
    q = p95(took)
    return {"trials": trials, "failed": failed, "median_s": round(statistics.median(took), 3)
            if took else None, "p95_s": q, "max_s": max(took) if took else None,
            "goal_s": goal, "met": bool(took) and not failed and q is not None and q <= goal}


#: of a Redis trial's sink life not covered by its window without counting as lost: the stop's
#: trim (2 packets), the first packet after `ready` and the stop request's way to the sink
STATIC_WINDOW_SLACK_S = 0.5


def _static_flowing(c: FailoverCluster, seconds: float = 1.0, timeout: float = 30.0) -> bool:
    """Edge A (the static zone's) sends its static receivers at least 80 % of a steady
    stream's packets over `seconds` (bounded by `timeout`)."""
    e = c.edges["edge-a"]
    want = 0.8 * seconds * 1000 / 20 * c.opts.static_receivers

    def sent() -> int:
        st, b = e.health()
        return int((b.get("fanout") or {}).get("sent", 0)) if st == 200 else -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a = sent()
        time.sleep(seconds)
        b = sent()
        if a >= 0 and b - a >= want:
            return True
    return False


def _redis_trials(c: FailoverCluster, trials: int, window: float,
                  log: Callable[[str], None]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for t in range(trials):
        # the static zone flows again after the previous part's failovers before the window
        # opens: the sink's window starts at its first packet, so a stream still resuming would
        # shorten it past the restart (CI saw 1.9 s of a 3 s window covered)
        if not _static_flowing(c):
            raise RuntimeError("the static zone was not flowing before a Redis restart: "
                               + c.edges["edge-a"].tail(5))
        sink, _ = _sink(c.opts.static_receivers, c.res["sink_cpu"], 0, window + 10,
                        port=c.static_port)
        t_ready = time.monotonic()
        try:
            before = [r.stats() for r in c.rx]
            time.sleep(1.0)
            c.redis.restart()
            time.sleep(max(1.0, window - 1.0))
            after = [r.stats() for r in c.rx]
        finally:
            t_stop = time.monotonic()
            sk = _sink_result(sink)
        fields = ("lost", "concealed_plc", "concealed_fec", "late")
        rx_lost = {f: sum(a[f] - b[f] for a, b in zip(after, before)) for f in fields}
        # a packet that came twice is counted once (duplicates are reported on their own)
        lost = max(0, int(sk.get("packets_expected") or 0) - int(sk.get("packets_delivered")
                                                                    or 0)
                   + int(sk.get("duplicates") or 0))
        # the sink's window runs from its first packet to its last: a stream that stopped after
        # the restart (or started late) would shorten it and lose nothing. The static zone
        # flowed before the sink started, so its window must cover the sink's whole life, less
        # the stop's trim and a start-up margin: what it does not cover is lost.
        alive = t_stop - t_ready
        covered = float(sk.get("window_seconds") or 0.0)
        uncovered = max(0.0, alive - covered - STATIC_WINDOW_SLACK_S)
        unheard = int(uncovered * 50) * c.opts.static_receivers
        lost += unheard
        row = {"trial": t, "static_expected": (sk.get("packets_expected") or 0) + unheard,
               "static_window_s": covered, "sink_alive_s": round(alive, 3),
               "static_unheard": unheard,
               "static_delivered": sk.get("packets_delivered"), "static_lost": lost,
               "static_max_gap": sk.get("max_seq_gap"), "duplicates": sk.get("duplicates"),
               "sink_drops": sk.get("sink_drops"), "field": rx_lost,
               "field_received": sum(a["received"] - b["received"]
                                     for a, b in zip(after, before)),
               "loadavg": _load()}
        if sk.get("error"):
            row["error"] = sk["error"]
        out.append(row)
        log(f"redis trial {t + 1}/{trials}: restarted; static receivers lost {lost} of "
            f"{sk.get('packets_expected')}, field receivers {rx_lost} (load {_load()[0]})")
        time.sleep(1.0)
    total = sum(int(r["static_lost"]) for r in out) + sum(int(r["field"]["lost"])
                                                         for r in out)
    return {"trials": out, "lost_total": total,
            "duplicates_total": sum(int(r["duplicates"] or 0) for r in out),
            "expected_total": sum(int(r["static_expected"] or 0) for r in out),
            "met": total == 0 and not any(r.get("error") for r in out)}


# ------------------------------------------------------------------ the run
def resolve(opts: NodesOptions) -> dict[str, Any]:
    ncpu = os.cpu_count() or 1
    nice = opts.nice if opts.nice is not None else (-10 if os.geteuid() == 0 else 0)
    last = str(ncpu - 1)
    return {"nice": nice, "sender_cpus": opts.sender_cpus or "0",
            "origin_cpus": opts.origin_cpus or last,
            "sink_cpu": opts.sink_cpu if opts.sink_cpu is not None else ncpu - 1}


def check_options(opts: NodesOptions) -> str | None:
    if not opts.sizes or any(not 1 <= n <= 30_000 for n in opts.sizes):
        return "--sizes: receivers per edge, each 1..30000"
    if not 0.5 <= opts.seconds <= 600:
        return "--seconds must be 0.5..600"
    if not 1 <= opts.trials <= 100:
        return "--trials must be 1..100"
    if not 1 <= opts.rounds <= 50:
        return "--rounds must be 1..50"
    if not 1 <= opts.failover_receivers <= 50 or not 1 <= opts.static_receivers <= 30_000:
        return "--failover-receivers 1..50, --static-receivers 1..30000"
    if not 2.0 <= opts.redis_window <= 60:
        return "--redis-window must be 2..60 s"
    bad = set(opts.parts) - {"cpu", "edge", "origin", "redis"}
    if bad or not opts.parts:
        return f"--parts: some of cpu,edge,origin,redis (not {sorted(bad)})"
    return None


def cpu_schedule(sizes: tuple[int, ...], rounds: int) -> list[tuple[int, int, str]]:
    """(round, N, kind) in the order the CPU runs go: every N once per round, its single node
    and cluster runs one after the other, which one goes first alternating from one N to the
    next and, for each N, from one round to the next, so neither kind is always the one that
    runs later (a shared machine's load drifts)."""
    out = []
    for rnd in range(rounds):
        for j, n in enumerate(sizes):
            pair = ("single", "cluster") if (j + rnd) % 2 == 0 else ("cluster", "single")
            out += [(rnd, n, kind) for kind in pair]
    return out


def run_nodes(opts: NodesOptions, log: Callable[[str], None] = lambda s: None
              ) -> dict[str, Any]:
    problem = check_options(opts)
    if problem:
        raise ValueError(problem)
    res = resolve(opts)
    report: dict[str, Any] = {
        "benchmark": "nodes", "machine": machine_info(),
        "settings": {**{k: v for k, v in asdict(opts).items() if k != "json_path"}, **res},
        "invalid_reasons": []}
    with tempfile.TemporaryDirectory(prefix="loa-bench-nodes-") as tmp:
        work = Path(tmp)
        if "cpu" in opts.parts:
            runs: list[CpuRun] = []
            for rnd, n, kind in cpu_schedule(opts.sizes, opts.rounds):
                log(f"cpu: round {rnd + 1}/{opts.rounds}, {kind}, 2 × {n} receivers "
                    f"(load {_load()[0]})")
                r = _cpu_run(kind, n, opts, res, work)
                r.round = rnd
                runs.append(r)
                report["invalid_reasons"] += r.invalid_reasons
            report["cpu"] = {"runs": [asdict(r) for r in runs], **cpu_summary(runs)}
        fail_parts = [p for p in ("edge", "origin", "redis") if p in opts.parts]
        if fail_parts:
            failover: dict[str, Any] = {"loadavg_before": _load()}
            c: FailoverCluster | None = None
            try:
                log("failover: starting redis-server, two origins, two edges, receivers")
                c = FailoverCluster(opts, res, work)
                c.add_receivers(opts.failover_receivers)
                c.on_air(3600)
                if "edge" in fail_parts:
                    failover["edge_killed"] = _edge_trials(c, opts.trials, log)
                if "origin" in fail_parts:
                    failover["origin_killed"] = _origin_trials(c, opts.trials, log)
                if "redis" in fail_parts:
                    failover["redis_restarted"] = _redis_trials(c, opts.trials,
                                                                opts.redis_window, log)
            except RuntimeError as e:
                report["invalid_reasons"].append(f"failover: {e}")
                if c is not None:
                    failover["logs"] = {n.name: n.tail(20) for n in c.nodes}
            finally:
                if c is not None:
                    c.close()
            for part, res_ in failover.items():
                if isinstance(res_, dict) and res_.get("failed"):
                    report["invalid_reasons"].append(
                        f"{part}: {res_['failed']} trial(s) never played again")
            report["failover"] = failover
    report["valid"] = not report["invalid_reasons"]
    report["loadavg_after"] = _load()
    return report


def render(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table
    m = report["machine"]
    s = report["settings"]
    console.print(f"[bold]loa bench nodes[/] — {m['nproc']} × {m['cpu_model']} "
                  f"({m['virtualization']}), kernel {m['kernel']}, load before "
                  f"{m['loadavg_before']}, after {report.get('loadavg_after')}")
    console.print(f"seconds={s['seconds']} rounds={s.get('rounds', 1)} trials={s['trials']} senders on cpus "
                  f"{s['sender_cpus']} (nice {s['nice']}), origin on {s['origin_cpus']}, "
                  f"sinks on {s['sink_cpu']}")
    cpu = report.get("cpu")
    if cpu:
        t = Table(title="CPU: 1 origin + 2 edges vs one node (loa serve --role all), "
                        "2 × N receivers, same run")
        for c in ("N per edge", "single µs/pkt", "edge A µs/pkt", "A / single",
                  "edge B µs/pkt", "B / single", "within 10 %", "origin cores", "origin ms/tick",
                  "loss % (single; A; B)", "load"):
            t.add_column(c, justify="right")
        runs = {(r["receivers"], r["kind"]): r for r in cpu["runs"]}
        for row in cpu["rows"]:
            n = row["receivers_per_edge"]
            single = runs.get((n, "single"), {}).get("senders", {}).get("single", {})
            cl = runs.get((n, "cluster"), {})
            sa = cl.get("senders", {}).get("edge-a", {})
            sb = cl.get("senders", {}).get("edge-b", {})
            loss = "; ".join(fmt(x.get("loss_pct"), 3) for x in (single, sa, sb))
            t.add_row(fmt(n), fmt(row.get("single_us_per_pkt")),
                      fmt(row.get("edge-a_us_per_pkt")), fmt(row.get("edge-a_ratio"), 3),
                      fmt(row.get("edge-b_us_per_pkt")), fmt(row.get("edge-b_ratio"), 3),
                      "yes" if row.get("edges_within_goal") else "[red]no[/]",
                      fmt(row.get("origin_cores_busy"), 4), fmt(row.get("origin_ms_per_tick"), 3),
                      loss, fmt((cl.get("loadavg") or [None])[0]))
        console.print(t)
        for row in cpu["rows"]:
            if (row.get("rounds") or 1) > 1:
                console.print(f"N {row['receivers_per_edge']}: {row['rounds']} rounds, edge / "
                              f"single per round A {row.get('edge-a_ratios')} B "
                              f"{row.get('edge-b_ratios')} (the table: medians)")
        fit = cpu.get("fit") or {}
        if fit.get("single") and fit.get("edge"):
            console.print("CPU per tick = fixed + per packet (fitted over N): single node "
                          f"{fit['single']['fixed_us_per_tick']:.0f} µs + "
                          f"{fit['single']['us_per_packet']:.2f} µs/pkt, edge "
                          f"{fit['edge']['fixed_us_per_tick']:.0f} µs + "
                          f"{fit['edge']['us_per_packet']:.2f} µs/pkt")
        console.print(f"origin cores busy, largest / smallest over N: "
                      f"{fmt(cpu.get('origin_busy_max_over_min'), 3)} (flat: its work is per "
                      "programme)")
    fo = report.get("failover")
    if fo:
        t = Table(title=f"failover over {s['trials']} trials")
        for c in ("what", "median s", "p95 s", "max s", "goal", "met", "trials (s)"):
            t.add_column(c, justify="left" if c in ("what", "trials (s)") else "right")
        for key, label in (("edge_killed", "edge killed → receivers playing again"),
                           ("origin_killed", "origin killed → standby on air")):
            r = fo.get(key)
            if r:
                t.add_row(label, fmt(r["median_s"]), fmt(r["p95_s"]), fmt(r["max_s"]),
                          f"p95 ≤ {r['goal_s']:g} s", "yes" if r["met"] else "[red]no[/]",
                          " ".join(fmt(x.get("seconds")) for x in r["trials"]))
        console.print(t)
        r = fo.get("redis_restarted")
        if r:
            console.print(f"Redis restarted (empty) {len(r['trials'])} times: packets lost on "
                          f"the receivers {r['lost_total']} (static receivers expected "
                          f"{r['expected_total']:,}; goal 0: "
                          f"{'met' if r['met'] else '[red]missed[/]'}), duplicates "
                          f"{r['duplicates_total']}; per trial "
                          f"{[x['static_lost'] for x in r['trials']]} static, "
                          f"{[x['field'] for x in r['trials']]} field")
    for why in report.get("invalid_reasons", []):
        console.print(f"[red]invalid:[/] {why}")
