"""`loa bench provision`: add N receivers through the HTTP API while a programme plays.

A real `loa serve` (temporary data dir, TOML with --zones empty zones) plays a long tone on
those zones; the bench then provisions N receivers at distinct loopback addresses
127.0.x.y:PORT (PORT: a UDP socket of this process, so the packets they get go somewhere):

- bulk (default): `POST /api/v1/receivers/bulk` in batches of --batch;
- --single: one `POST /api/v1/receivers` per receiver, --concurrency at a time, to show the
  per-call cost.

Reported: total seconds from the first request to the last response, receivers/s, the request
latencies, how long after the last response the engine's fan-out had every destination, and the
engine clock during provisioning (from /api/v1/health, before and after, plus a sampler thread
polling it every 50 ms): late ticks (started more than half a period late), skipped ticks,
overruns (work > 20 ms) and the longest tick. The server only exposes the longest tick since it
started: when it grew during provisioning that value is exact, otherwise the longest sampled
tick is reported (a lower bound) and `max_tick_us_exact` says so.

A run is invalid (exit 3) when the server died, a request failed, the programme stopped or the
fan-out did not end up with N destinations; never because a number was slow.
"""
from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import MAX_RECEIVERS, fmt, machine_info, receiver_host
from bench.fanout import REPO, Proc, _child_env, _free_tcp_port, _http
from bench.preempt import summary, wait_healthy


@dataclass
class ProvisionOptions:
    receivers: int = 10_000
    batch: int = 1000
    zones: int = 1
    single: bool = False
    concurrency: int = 8
    programme: str = "zones"  # zones: the tone plays where receivers join; separate: elsewhere


def _post(url: str, body: dict, timeout: float = 60.0) -> tuple[int, dict, float]:
    """(status, JSON body, seconds) for one POST on its own connection; status 0 when the
    server could not be reached."""
    t0 = time.perf_counter()
    try:
        st, out = _http("POST", url, body, timeout)
    except (urllib.error.URLError, OSError) as e:
        st, out = 0, {"error": {"code": "connection", "message": str(e)}}
    return st, out, time.perf_counter() - t0


class ClockSampler:
    """Polls /health every `interval` s on a thread: the last tick's work time and the clock."""

    def __init__(self, base: str, interval: float = 0.05) -> None:
        self.base, self.interval = base, interval
        self.tick_us: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="clock-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                st, h = _http("GET", self.base + "/api/v1/health", timeout=5)
                if st == 200:
                    self.tick_us.append(float(h["clock"]["last_tick_us"]))
                else:
                    self.errors += 1
            except (OSError, ValueError, KeyError):
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ClockSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(10)


def write_toml(path: Path, zones: int, separate: bool) -> None:
    with open(path, "w") as f:
        for z in range(zones):
            f.write(f'[[zones]]\nid = "bench{z}"\nname = "bench zone {z}"\n\n')
        if separate:
            # the programme's zone: one destination (the discard port), never provisioned
            f.write('[[zones]]\nid = "on-air"\nname = "programme"\nunicast = ["127.0.0.1:9"]\n')


def _row(i: int, zones: int, port: int) -> dict:
    return {"id": f"bench-rx-{i:05d}", "zone": f"bench{i % zones}",
            "address": f"{receiver_host(i)}:{port}", "name": f"bench receiver {i}"}


def _destinations(base: str) -> int | None:
    try:
        st, h = _http("GET", base + "/api/v1/health", timeout=5)
    except OSError:
        return None
    return h.get("fanout", {}).get("destinations") if st == 200 else None


def run_provision(opts: ProvisionOptions, console=None) -> dict:
    say = console.print if console is not None else print
    n, zones = opts.receivers, max(1, min(opts.zones, opts.receivers))
    report: dict = {"benchmark": "provision", "machine": machine_info(),
                    "settings": {**asdict(opts), "zones": zones,
                                 "mode": "single" if opts.single else "bulk"},
                    "valid": True, "invalid_reasons": []}

    def invalid(why: str) -> dict:
        report["valid"] = False
        report["invalid_reasons"].append(why)
        return report

    work = Path(tempfile.mkdtemp(prefix="loa-bench-provision-"))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # every 127.0.x.y:port lands here
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # never read: the kernel drops
    sink.bind(("0.0.0.0", 0))
    port = sink.getsockname()[1]
    cfg = work / "bench.toml"
    separate = opts.programme == "separate"
    write_toml(cfg, zones, separate)
    http = f"127.0.0.1:{_free_tcp_port()}"
    base = f"http://{http}"
    env = dict(_child_env(), LOA_LOG_LEVEL="WARNING")
    server = Proc([sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http", http,
                   "--data-dir", str(work / "data")], env=env, name="loa serve", cwd=str(REPO))
    try:
        if not wait_healthy(base, server):
            return invalid("loa serve did not start: " + " | ".join(server.err[-5:]))
        static = _destinations(base) or 0  # the programme zone's own destination, if any
        air = ["on-air"] if separate else [f"bench{z}" for z in range(zones)]
        st, prog = _http("POST", base + "/api/v1/broadcasts", {
            "zones": air, "level": "normal",
            "source": {"kind": "tone", "freq_hz": 440, "seconds": 3600}})
        if st != 201:
            return invalid(f"programme refused: {st} {prog}")
        time.sleep(1.5)  # encoder up, steady ticks before measuring
        st, h0 = _http("GET", base + "/api/v1/health")
        c0 = h0["clock"]
        rows = [_row(i, zones, port) for i in range(n)]
        lat: list[float] = []
        failures: list[str] = []
        say(f"provisioning {n} receivers over {zones} zone(s), "
            + (f"one request each, {opts.concurrency} at a time" if opts.single
               else f"in batches of {opts.batch}") + " ...")
        with ClockSampler(base) as sampler:
            t0 = time.perf_counter()
            if opts.single:
                def one(row: dict) -> tuple[int, dict, float]:
                    return _post(base + "/api/v1/receivers", row)
                with ThreadPoolExecutor(max_workers=opts.concurrency) as ex:
                    for (st, body, dt), row in zip(ex.map(one, rows), rows):
                        lat.append(dt * 1000)
                        if st != 201:
                            failures.append(f"{row['id']}: {st} {body.get('error')}")
            else:
                for i in range(0, n, opts.batch):
                    part = rows[i:i + opts.batch]
                    st, body, dt = _post(base + "/api/v1/receivers/bulk", {"receivers": part})
                    lat.append(dt * 1000)
                    got = body.get("receivers") if st == 201 else None
                    if st != 201 or len(got or []) != len(part) \
                            or not all(r.get("secret") for r in got or []):
                        failures.append(f"batch at {i}: {st} {body.get('error')}")
            total = time.perf_counter() - t0
            # the engine applies destinations on its next tick: how long until all are out
            expected = static + n
            t_apply, have = time.perf_counter(), None
            while time.perf_counter() - t_apply < 15.0 and server.alive():
                have = _destinations(base)
                if have == expected:
                    break
                time.sleep(0.02)
            apply_s = time.perf_counter() - t_apply
            time.sleep(0.2)  # a few more ticks with everything in place
        st, h1 = _http("GET", base + "/api/v1/health")
        c1 = h1["clock"]
        # the same clock with every receiver in place and nothing changing: what the fan-out
        # itself costs the tick on this machine, to tell apart from what provisioning cost
        with ClockSampler(base) as steady:
            time.sleep(2.0)
        st, h2 = _http("GET", base + "/api/v1/health")
        c2 = h2["clock"]
        st, b = _http("GET", base + f"/api/v1/broadcasts/{prog['id']}")
        max_before, max_after = c0["max_tick_us"], c1["max_tick_us"]
        exact = max_after > max_before
        sampled = sampler.tick_us
        res = {
            "total_s": round(total, 3),
            "receivers_per_s": round(n / total, 1) if total > 0 else None,
            "requests": len(lat),
            "request_ms": summary(lat),
            "apply_s": round(apply_s, 3),
            "late_ticks": c1["late_ticks"] - c0["late_ticks"],
            "skipped_ticks": c1["skipped_ticks"] - c0["skipped_ticks"],
            "tick_overruns": c1["tick_overruns"] - c0["tick_overruns"],
            "ticks": c1["ticks"] - c0["ticks"],
            "max_tick_us": max_after if exact else (round(max(sampled), 1) if sampled else None),
            "max_tick_us_exact": exact,
            "max_tick_us_server_before": max_before,
            "max_tick_us_server_after": max_after,
            "max_late_ms_server": c1["max_late_ms"],
            "sampled_tick_us": {**summary(sampled), "samples": len(sampled)},
            "steady_after": {"seconds": 2.0,
                             "late_ticks": c2["late_ticks"] - c1["late_ticks"],
                             "sampled_tick_us": {**summary(steady.tick_us),
                                                 "samples": len(steady.tick_us)}},
            "destinations_expected": expected,
            "destinations": have,
            "programme_state": b.get("state") if st == 200 else None,
            "fanout": h1.get("fanout"),
            "failures": failures[:20],
        }
        report["results"] = res
        report["server_clock_before"], report["server_clock_after"] = c0, c1
        if failures:
            invalid(f"{len(failures)} request(s) failed, first: {failures[0]}")
        if have != expected:
            invalid(f"the fan-out has {have} destinations, expected {expected}")
        if res["programme_state"] != "playing":
            invalid(f"the programme is {res['programme_state']!r}, not playing")
        if not server.alive():
            invalid("loa serve crashed: " + " | ".join(server.err[-5:]))
        return report
    except (OSError, KeyError, ValueError) as e:
        return invalid(f"harness error: {type(e).__name__}: {e} | "
                       + " | ".join(server.err[-5:]))
    finally:
        code = server.stop(timeout=10)
        if code not in (0, None, -2, -15, 130, 143) and report["valid"]:
            invalid(f"loa serve exited with {code}: " + " | ".join(server.err[-5:]))
        sink.close()
        shutil.rmtree(work, ignore_errors=True)  # 10,000s of receivers' secrets: not left behind


def _fmt(v, nd: int = 1) -> str:
    return fmt(v, nd)


def render(report: dict, console) -> None:
    from rich.table import Table
    m, s = report["machine"], report["settings"]
    console.print(f"[bold]loa bench provision[/] — {m['nproc']} × {m['cpu_model']} "
                  f"({m['virtualization']}), kernel {m['kernel']}, python {m['python']}, "
                  f"load {m['loadavg_before']}")
    console.print(f"receivers={s['receivers']} mode={s['mode']} "
                  + (f"concurrency={s['concurrency']} " if s["single"] else f"batch={s['batch']} ")
                  + f"zones={s['zones']} programme={s['programme']}")
    r = report.get("results")
    if r:
        t = Table(title="provisioning while a programme plays")
        t.add_column("measure")
        t.add_column("value", justify="right")
        rq = r["request_ms"]
        st = r["sampled_tick_us"]
        sa = r["steady_after"]["sampled_tick_us"]
        for k, v in [
            ("total s", _fmt(r["total_s"], 3)),
            ("receivers / s", _fmt(r["receivers_per_s"])),
            ("requests", _fmt(r["requests"])),
            ("request ms p50 / p95 / max",
             f"{_fmt(rq['p50'])} / {_fmt(rq['p95'])} / {_fmt(rq['max'])}"),
            ("all destinations out after last response, s", _fmt(r["apply_s"], 3)),
            ("ticks during the run", _fmt(r["ticks"])),
            ("late ticks", _fmt(r["late_ticks"])),
            ("skipped ticks", _fmt(r["skipped_ticks"])),
            ("tick overruns (> 20 ms work)", _fmt(r["tick_overruns"])),
            ("max tick µs" + ("" if r["max_tick_us_exact"] else " (sampled, lower bound)"),
             _fmt(r["max_tick_us"])),
            ("sampled tick µs p50 / p95 / max",
             f"{_fmt(st['p50'])} / {_fmt(st['p95'])} / {_fmt(st['max'])} "
             f"({st['samples']} samples)"),
            ("afterwards, steady 2 s: late ticks", _fmt(r["steady_after"]["late_ticks"])),
            ("afterwards, steady 2 s: sampled tick µs p50 / p95 / max",
             f"{_fmt(sa['p50'])} / {_fmt(sa['p95'])} / {_fmt(sa['max'])}"),
            ("destinations (expected)",
             f"{_fmt(r['destinations'])} ({_fmt(r['destinations_expected'])})"),
            ("programme", str(r["programme_state"])),
        ]:
            t.add_row(k, v)
        console.print(t)
    if not report["valid"]:
        for why in report["invalid_reasons"]:
            console.print(f"[red]invalid:[/] {why}")


def check_options(o: ProvisionOptions) -> str | None:
    if not 1 <= o.receivers <= MAX_RECEIVERS:
        return f"--receivers must be 1..{MAX_RECEIVERS}"
    from control.models import MAX_BULK_RECEIVERS
    if not 1 <= o.batch <= MAX_BULK_RECEIVERS:
        return f"--batch must be 1..{MAX_BULK_RECEIVERS} (the bulk endpoint's limit)"
    if not 1 <= o.zones <= 1000:
        return "--zones must be 1..1000"
    if not 1 <= o.concurrency <= 64:
        return "--concurrency must be 1..64"
    return None
