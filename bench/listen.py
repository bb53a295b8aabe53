"""`loa bench listen`: N concurrent HTTP listeners of one zone, against Loa and against Icecast 2
(Debian's `icecast2`) serving the same Ogg/Opus stream to the same clients, in one run.

Layout (2 cores): the servers on core 0 (`loa serve` with its tick and fan-out; `icecast2` with
its own config in a temp dir, fed by `ffmpeg -re ... -c copy -f ogg icecast://...`), the bench
sink (the zone's R UDP receivers) and the listener process (`bench.listen_clients`) on the last
core. Loa plays a 440 Hz tone to the zone all along; Icecast is fed an Ogg/Opus file of the same
tone at the same bitrate (libopus, 20 ms frames).

Per server: an idle window (no listeners) and a steady window with N listeners connected (after
they ramp up at --ramp per second); CPU of the server's process tree and its RSS in each.
CPU per listener-second = (steady CPU/s − idle CPU/s) / N; memory per listener = (steady RSS −
idle RSS) / N; both also as a ratio Loa / Icecast. For Loa: late ticks (from /metrics) over its
whole phase (idle, ramp up, steady, ramp down), and the UDP receivers' losses over the whole run
(from the sink): both must stay 0 while listeners connect and disconnect.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import cpu_delta, fmt, machine_info, tree_cpu, tree_rss_bytes
from bench.fanout import (REPO, FanoutOptions, Proc, _child_env, _counter_delta, _free_tcp_port,
                          _http, _prefix, _server_counters, resolve, write_toml)
from bench.preempt import wait_healthy

ICECAST_XML = """<icecast>
  <location>loa bench</location><admin>bench@localhost</admin>
  <limits>
    <clients>{clients}</clients><sources>2</sources><queue-size>524288</queue-size>
    <client-timeout>30</client-timeout><header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout><burst-on-connect>1</burst-on-connect>
    <burst-size>65535</burst-size>
  </limits>
  <authentication>
    <source-password>{password}</source-password><relay-password>{password}</relay-password>
    <admin-user>admin</admin-user><admin-password>{password}</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir><logdir>{logdir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot>
    <pidfile>{logdir}/icecast.pid</pidfile>
  </paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog>
    <loglevel>2</loglevel></logging>
  <security><chroot>0</chroot>{changeowner}</security>
</icecast>
"""


def icecast_available() -> bool:
    return shutil.which("icecast2") is not None and shutil.which("ffmpeg") is not None


def _get_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read(1)
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(pred, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


def _tone_ogg(path: Path, seconds: float, bitrate: int) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency=440:sample_rate=48000:duration={seconds:.0f}", "-ac", "1",
                    "-c:a", "libopus", "-b:a", str(bitrate), "-frame_duration", "20",
                    "-f", "ogg", str(path)], check=True, timeout=120, capture_output=True)


def _raise_nofile(n: int) -> None:
    """Children inherit it: both servers and the clients need a descriptor per listener."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n * 2 + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def measure(name: str, url: str, pid: int, n: int, opts: dict, env: dict, client_cpu: int,
            nice: int, metrics_url: str | None = None) -> dict:
    """One server's phase: idle window, N listeners ramped up, steady window, ramped down."""
    out: dict = {"server": name, "url": url, "listeners": n}
    before = _server_counters(metrics_url) if metrics_url else {}
    c0, t0, rss0 = tree_cpu(pid), time.monotonic(), tree_rss_bytes(pid)
    time.sleep(opts["idle_s"])
    c1, t1 = tree_cpu(pid), time.monotonic()
    idle_cps = cpu_delta(c0, c1) / (t1 - t0)
    rss_idle = max(rss0, tree_rss_bytes(pid))
    clients = Proc(_prefix(str(client_cpu), nice) + [
        sys.executable, "-m", "bench.listen_clients", url, "--n", str(n), "--ramp",
        str(opts["ramp"]), "--connect-timeout", str(30 + n / max(1.0, opts["ramp"]))],
        env=env, name="listen clients", cwd=str(REPO))
    res: dict = {}
    try:
        line = clients.expect(lambda s: s.startswith("connected"), 60 + n / max(1.0, opts["ramp"]))
        out["connected"] = int(line.split()[1]) if line else 0
        time.sleep(opts["settle_s"])
        c2, t2 = tree_cpu(pid), time.monotonic()
        time.sleep(opts["steady_s"])
        c3, t3 = tree_cpu(pid), time.monotonic()
        rss_steady = tree_rss_bytes(pid)
        clients.say("close")
        done = clients.expect(lambda s: s.startswith("{"), 30 + n / max(1.0, opts["ramp"]))
        res = json.loads(done) if done else {}
    finally:
        clients.stop()
    steady_cps = cpu_delta(c2, c3) / (t3 - t2)
    time.sleep(1.0)   # the last disconnections reach the server
    after = _server_counters(metrics_url) if metrics_url else {}
    k = max(1, out["connected"])
    out.update(
        idle_cpu_per_s=round(idle_cps, 4), steady_cpu_per_s=round(steady_cps, 4),
        cpu_us_per_listener_s=round((steady_cps - idle_cps) / k * 1e6, 2),
        cpu_us_per_listener_s_raw=round(steady_cps / k * 1e6, 2),
        rss_idle=rss_idle, rss_steady=rss_steady,
        rss_per_listener=round((rss_steady - rss_idle) / k, 1),
        clients=res)
    if metrics_url:
        out["counters"] = _counter_delta(before, after)
    return out


def run_listen(listeners: int = 1000, receivers: int = 500, steady_s: float = 10.0,
               idle_s: float = 5.0, ramp: float = 200.0, bitrate: int = 32_000,
               console=None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="loa-bench-listen-"))
    env = _child_env()
    env.update({"LOA_OPUS_BITRATE": str(bitrate)})
    res = resolve(FanoutOptions(receivers=receivers))
    opts = {"idle_s": idle_s, "steady_s": steady_s, "settle_s": 2.0, "ramp": ramp}
    report: dict = {"benchmark": "listen", "machine": machine_info(),
                    "settings": {"listeners": listeners, "receivers": receivers,
                                 "steady_s": steady_s, "idle_s": idle_s, "ramp_per_s": ramp,
                                 "bitrate": bitrate, **res},
                    "valid": True, "invalid_reasons": [], "servers": {}}

    def invalid(why: str) -> dict:
        report["valid"] = False
        report["invalid_reasons"].append(why)
        return report
    if not icecast_available():
        return invalid("icecast2 or ffmpeg is not installed (apt-get install icecast2 ffmpeg)")
    _raise_nofile(listeners)
    client_cpu = res["sink_cpu"]
    procs: list[Proc] = []
    sink = Proc(_prefix(None, res["nice"]) + [
        sys.executable, "-m", "bench.sink", "--receivers", str(receivers), "--cpu",
        str(client_cpu), "--sample", "10", "--max-seconds", "900"],
        env=env, name="sink", cwd=str(REPO))
    procs.append(sink)
    t_programme = 0.0
    try:
        line = sink.expect(lambda s: s.startswith("ready"), 20)
        if line is None:
            return invalid("sink did not start")
        cfg = work / "bench.toml"
        write_toml(cfg, receivers, int(line.split()[1]), 1)
        lim = listeners + 64
        cfg.write_text(f'listen_public_zones = ["bench0"]\nlisten_max_per_zone = {lim}\n'
                       f"listen_max_total = {lim}\nlisten_max_per_address = {lim}\n"
                       f"http_max_connections = {lim + 1000}\n"
                       f"http_max_connections_per_address = {lim}\n"
                       "archive = false\n" + cfg.read_text())
        http = _free_tcp_port()
        server = Proc(_prefix(res["sender_cpus"], res["nice"]) + [
            sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
            f"127.0.0.1:{http}", "--data-dir", str(work / "data")], env=env, name="loa serve",
            cwd=str(REPO))
        procs.append(server)
        base = f"http://127.0.0.1:{http}"
        if not wait_healthy(base, server):
            return invalid("loa serve did not start: " + " | ".join(server.err[-5:]))
        # Icecast, its own config, fed the same tone as Ogg/Opus
        total_s = 2 * (idle_s + steady_s + 2 * listeners / max(1.0, ramp)) + 120
        ogg = work / "tone.ogg"
        _tone_ogg(ogg, total_s, bitrate)
        logdir = work / "icecast"
        logdir.mkdir()
        os.chmod(work, 0o711)      # icecast2 drops root for nobody: it must reach its logs
        os.chmod(logdir, 0o777)
        ice_port = _free_tcp_port()
        password = os.urandom(8).hex()
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        (work / "icecast.xml").write_text(ICECAST_XML.format(
            clients=listeners + 100, password=password, port=ice_port, logdir=logdir,
            changeowner="<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
            if root else ""))
        icecast = Proc(_prefix(res["sender_cpus"], res["nice"]) + [
            "icecast2", "-c", str(work / "icecast.xml")], env=env, name="icecast2")
        procs.append(icecast)
        ice_base = f"http://127.0.0.1:{ice_port}"
        if not _wait(lambda: _get_ok(ice_base + "/status-json.xsl"), 15):
            return invalid("icecast2 did not start: " + " | ".join(icecast.err[-5:]))
        feeder = Proc(_prefix(str(client_cpu), 0) + [
            "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(ogg), "-c", "copy",
            "-content_type", "audio/ogg", "-f", "ogg",
            f"icecast://source:{password}@127.0.0.1:{ice_port}/bench.ogg"],
            env=env, name="ffmpeg feeder")
        procs.append(feeder)
        if not _wait(lambda: _get_ok(ice_base + "/bench.ogg"), 15):
            return invalid("icecast2 mount did not come up: " + " | ".join(feeder.err[-5:]))
        st, prog = _http("POST", base + "/api/v1/broadcasts", {
            "zones": ["bench0"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 440, "seconds": 3600}})
        if st != 201:
            return invalid(f"programme refused: {prog}")
        t_programme = time.monotonic()
        time.sleep(1.0)
        report["servers"]["loa"] = measure(
            "loa", base + "/listen/bench0.ogg", server.pid, listeners, opts, env, client_cpu,
            res["nice"], base + "/metrics")
        report["servers"]["icecast"] = measure(
            "icecast", ice_base + "/bench.ogg", icecast.pid, listeners, opts, env, client_cpu,
            res["nice"])
        for name, proc in (("loa serve", server), ("icecast2", icecast),
                           ("ffmpeg feeder", feeder)):
            if not proc.alive():
                invalid(f"{name} ended during the run: " + " | ".join(proc.err[-3:]))
        for name, m in report["servers"].items():
            if m.get("connected", 0) < listeners:
                invalid(f"{name}: only {m.get('connected')} of {listeners} listeners connected")
            if m.get("clients", {}).get("ended_early"):
                invalid(f"{name}: {m['clients']['ended_early']} listeners were dropped")
        lo, ic = report["servers"]["loa"], report["servers"]["icecast"]
        report["ratio"] = {
            "cpu_per_listener_s": _ratio(lo["cpu_us_per_listener_s"],
                                         ic["cpu_us_per_listener_s"]),
            "cpu_per_listener_s_raw": _ratio(lo["cpu_us_per_listener_s_raw"],
                                             ic["cpu_us_per_listener_s_raw"]),
            "rss_per_listener": _ratio(lo["rss_per_listener"], ic["rss_per_listener"])}
        report["late_ticks"] = lo.get("counters", {}).get("late_ticks")
        report["tick_overruns"] = lo.get("counters", {}).get("tick_overruns")
        return report
    finally:
        playing_s = time.monotonic() - t_programme if t_programme else 0.0
        sink.say("stop trim=5")
        line = sink.expect(lambda s: s.startswith("{"), 60)
        if line:
            r = json.loads(line)
            report["receivers"] = {k: r.get(k) for k in (
                "packets_expected", "packets_delivered", "loss_pct", "max_seq_gap",
                "receivers_complete", "sink_drops", "window_seconds")}
            report["receivers"]["programme_s"] = round(playing_s, 1)
            # a loss is a result (the run is valid); the sink's own overflow is not
            report["receivers_lost"] = (r.get("packets_delivered") or 0) < (
                r.get("packets_expected") or 0) or bool(r.get("max_seq_gap"))
            if r.get("sink_drops", 0) not in (0, -1):
                report["valid"] = False
                report["invalid_reasons"].append(f"sink overflowed ({r['sink_drops']} drops)")
        else:
            report["valid"] = False
            report["invalid_reasons"].append("the sink gave no result")
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def render(report: dict, console) -> None:
    from rich.table import Table
    m = report["machine"]
    console.print(f"[bold]loa bench listen[/] — {m['nproc']} cores, {m['cpu_model']}, load "
                  f"{m['loadavg_before']}; settings {report['settings']}")
    t = Table(title=f"{report['settings']['listeners']} HTTP listeners of one Ogg/Opus stream")
    cols = ("server", "connected", "idle cpu/s", "steady cpu/s", "µs cpu / listener·s",
            "raw µs / listener·s", "rss idle MB", "rss steady MB", "bytes / listener")
    for c in cols:
        t.add_column(c)
    for name, s in report.get("servers", {}).items():
        t.add_row(name, fmt(s.get("connected")), fmt(s.get("idle_cpu_per_s"), 3),
                  fmt(s.get("steady_cpu_per_s"), 3), fmt(s.get("cpu_us_per_listener_s"), 1),
                  fmt(s.get("cpu_us_per_listener_s_raw"), 1),
                  fmt(s.get("rss_idle", 0) / 1e6, 1), fmt(s.get("rss_steady", 0) / 1e6, 1),
                  fmt(s.get("rss_per_listener"), 0))
    console.print(t)
    r = report.get("ratio") or {}
    console.print(f"Loa / Icecast: CPU per listener-second {fmt(r.get('cpu_per_listener_s'), 3)} "
                  f"(raw {fmt(r.get('cpu_per_listener_s_raw'), 3)}), memory per listener "
                  f"{fmt(r.get('rss_per_listener'), 3)}")
    rc = report.get("receivers") or {}
    console.print(f"Loa tick: late ticks {fmt(report.get('late_ticks'))}, overruns "
                  f"{fmt(report.get('tick_overruns'))}; UDP receivers: "
                  f"{fmt(rc.get('packets_delivered'))}/{fmt(rc.get('packets_expected'))} "
                  f"delivered, loss {fmt(rc.get('loss_pct'), 4)} %, max gap "
                  f"{fmt(rc.get('max_seq_gap'))}")
    if not report["valid"]:
        console.print(f"[red]INVALID RUN: {report['invalid_reasons']}[/]")
