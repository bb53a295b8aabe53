"""`loa bench listen`: N concurrent HTTP listeners of one zone, against Loa and against Icecast 2
(Debian's `icecast2`) serving the same Ogg/Opus stream to the same clients, in one run.

Layout (2 cores): the servers on core 0 (`loa serve` with its tick and fan-out; `icecast2` with
its own config in a temp dir, fed by `ffmpeg -re ... -c copy -f ogg icecast://...`), the bench
sink (the zone's R UDP receivers) and the listener process (`bench.listen_clients`) on the last
core. Loa plays a 440 Hz tone to the zone all along; Icecast is fed an Ogg/Opus file of the same
tone at the same bitrate (libopus, 20 ms frames).

Rounds (`--rounds`, default 3): in each, both servers in turn (Loa then Icecast, then the other
way round in the next round, so a drift of the shared machine's load favours neither), each with
an idle window (no listeners), N listeners ramped up at --ramp per second, a steady window, a
ramp down and a second idle window; the baseline is the mean of the two idle windows.

What serving the listeners costs is read per thread from /proc/PID/task/TID/schedstat (the
scheduler's ns clock; loopback's receive half runs as softirq work in the sending thread and
counts there, no IRQ time accounting on these kernels), plus the server cores' ksoftirqd:
- Loa: its event-loop (main) thread, which does all listener work (pages, read watches, HTTP),
  and nothing else that grows with listeners; its other threads (tick, fan-out to the R UDP
  receivers, workers) are reported apart, their steady − idle per listener should be noise
  around 0. Subtracting Loa's whole idle (the tick and the fan-out: ~0.1 core) from its whole
  steady CPU, as the first version of this bench did, left a baseline noise of ±10 µs per
  listener-second, as large as the quantity measured (still reported: "whole process").
- Icecast: all its threads (its idle is a few ms per second).
Per round the ratio Loa / Icecast of both, and of memory per listener (steady − idle RSS) / N;
over the rounds their median, min and max. For Loa: late ticks (from /metrics) over all rounds
(idle, ramps, steady), and the UDP receivers' losses over the whole run (from the sink): both
must stay 0 while listeners connect and disconnect.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import (cpu_delta, cpu_list, fmt, host_cpu_delta, host_cpu_jiffies,
                          late_attribution, late_line, machine_info, softirqd_cpu_seconds, tree_cpu,
                          tree_rss_bytes)
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
        with urllib.request.urlopen(url, timeout=timeout, context=_insecure()
                                    if url.startswith("https:") else None) as r:
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


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Time on CPU of each live thread of one process, in ns (/proc/PID/task/TID/schedstat,
    the scheduler's own clock: far finer than the 10 ms ticks of /proc/PID/stat). Work done in
    a thread's context counts to it, softirq work included (no IRQ time accounting here)."""
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                out[int(t)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


class _Sample:
    """One reading of a server: its process tree (/proc stat), its threads (schedstat), the
    ksoftirqd threads of its cores (loopback receive work deferred there counts to nobody's
    process: it is added to both servers alike) and the time."""

    def __init__(self, pid: int, cores: set[int]) -> None:
        self.tree = tree_cpu(pid)
        self.threads = thread_cpu_ns(pid)
        self.softirqd = softirqd_cpu_seconds(cores)
        self.t = time.monotonic()


def _rates(a: _Sample, b: _Sample, main: int) -> dict[str, float]:
    """CPU seconds per second between two samples: the whole tree, the main thread (Loa's
    event loop: every listener's page, read watch and HTTP work), the other threads of the
    process (Loa's tick, fan-out, workers) and the cores' ksoftirqd."""
    dt = max(1e-6, b.t - a.t)
    main_ns = b.threads.get(main, 0) - a.threads.get(main, 0)
    all_ns = sum(max(0, v - a.threads.get(t, 0)) for t, v in b.threads.items())
    return {"tree": cpu_delta(a.tree, b.tree) / dt, "main": main_ns / 1e9 / dt,
            "threads": all_ns / 1e9 / dt, "others": (all_ns - main_ns) / 1e9 / dt,
            "softirqd": max(0.0, b.softirqd - a.softirqd) / dt}


def measure(name: str, url: str, pid: int, n: int, opts: dict, env: dict, client_cpu: int,
            nice: int, cores: set[int], metrics_url: str | None = None) -> dict:
    """One server's phase: an idle window, N listeners ramped up, a steady window, ramped
    down, a second idle window (the baseline is the mean of both idle windows)."""
    out: dict = {"server": name, "url": url, "listeners": n}
    before = _server_counters(metrics_url) if metrics_url else {}
    s0, rss0 = _Sample(pid, cores), tree_rss_bytes(pid)
    time.sleep(opts["idle_s"])
    s1 = _Sample(pid, cores)
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
        s2 = _Sample(pid, cores)
        time.sleep(opts["steady_s"])
        s3 = _Sample(pid, cores)
        rss_steady = tree_rss_bytes(pid)
        clients.say("close")
        done = clients.expect(lambda s: s.startswith("{"), 30 + n / max(1.0, opts["ramp"]))
        res = json.loads(done) if done else {}
    finally:
        clients.stop()
    time.sleep(1.0)   # the last disconnections reach the server
    s4 = _Sample(pid, cores)
    time.sleep(opts["idle_s"])
    s5 = _Sample(pid, cores)
    after = _server_counters(metrics_url) if metrics_url else {}
    k = max(1, out["connected"])
    idle_a, idle_b, steady = _rates(s0, s1, pid), _rates(s4, s5, pid), _rates(s2, s3, pid)
    idle = {key: (idle_a[key] + idle_b[key]) / 2 for key in idle_a}

    def per_listener(key: str) -> float:
        return round((steady[key] - idle[key]) / k * 1e6, 2)
    # what serving the listeners costs: Loa's event-loop thread (the rest of Loa is reported
    # apart: it must not grow with listeners), all of Icecast's threads; plus ksoftirqd
    serving = "main" if name.startswith("loa") else "threads"
    out.update(
        idle_cpu_per_s=round(idle["tree"], 4), steady_cpu_per_s=round(steady["tree"], 4),
        idle_windows_cpu_per_s=[round(idle_a["tree"], 4), round(idle_b["tree"], 4)],
        cpu_us_per_listener_s=per_listener("tree"),
        cpu_us_per_listener_s_raw=round(steady["tree"] / k * 1e6, 2),
        serving_threads=serving,
        serving_us_per_listener_s=round(per_listener(serving) + per_listener("softirqd"), 2),
        main_us_per_listener_s=per_listener("main"),
        others_us_per_listener_s=per_listener("others"),
        softirqd_us_per_listener_s=per_listener("softirqd"),
        idle_rates={key: round(v, 5) for key, v in idle.items()},
        steady_rates={key: round(v, 5) for key, v in steady.items()},
        rss_idle=rss_idle, rss_steady=rss_steady,
        rss_per_listener=round((rss_steady - rss_idle) / k, 1),
        clients=res, loadavg=_loadavg())
    if metrics_url:
        out["counters"] = _counter_delta(before, after)
    return out


def _health_clock(base: str) -> dict:
    """The engine's clock stats (late ticks and their attribution) from /api/v1/health."""
    st, h = _http("GET", base + "/api/v1/health")
    return dict(h.get("clock") or {}) if st == 200 and isinstance(h, dict) else {}


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def run_listen(listeners: int = 1000, receivers: int = 500, steady_s: float = 10.0,
               idle_s: float = 5.0, ramp: float = 200.0, bitrate: int = 32_000,
               console=None, rounds: int = 3, tls: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="loa-bench-listen-"))
    env = _child_env()
    env.update({"LOA_OPUS_BITRATE": str(bitrate)})
    res = resolve(FanoutOptions(receivers=receivers))
    opts = {"idle_s": idle_s, "steady_s": steady_s, "settle_s": 2.0, "ramp": ramp}
    report: dict = {"benchmark": "listen", "machine": machine_info(),
                    "settings": {"listeners": listeners, "receivers": receivers,
                                 "steady_s": steady_s, "idle_s": idle_s, "ramp_per_s": ramp,
                                 "bitrate": bitrate, "rounds": rounds, "tls": tls,
                                 # Loa's page cadence (listen_flush_s), when set for this run
                                 "loa_listen_flush_s": env.get("LOA_LISTEN_FLUSH_S", "default"),
                                 **res},
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
        str(client_cpu), "--sample", "10", "--max-seconds", str(max(900, int(_phase_s(
            listeners, idle_s, steady_s, ramp) * 2 * rounds) + 300))],
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
        total_s = _phase_s(listeners, idle_s, steady_s, ramp) * 2 * rounds + 120
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
        tls_base = ""
        if tls:   # a second loa serve over HTTPS (no receivers): its listeners' cost apart
            tls_server, tls_base = _start_tls_server(work, lim, res, env)
            procs.append(tls_server)
            if not _wait(lambda: _get_ok(tls_base + "/api/v1/health"), 30):
                return invalid("loa serve (https) did not start: " + " | ".join(
                    tls_server.err[-5:]))
            if _https_post(tls_base + "/api/v1/broadcasts", {
                    "zones": ["bench0"], "level": "normal",
                    "source": {"kind": "tone", "freq_hz": 440, "seconds": 3600}}) != 201:
                return invalid("programme refused by the https server")
        st, prog = _http("POST", base + "/api/v1/broadcasts", {
            "zones": ["bench0"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 440, "seconds": 3600}})
        if st != 201:
            return invalid(f"programme refused: {prog}")
        t_programme = time.monotonic()
        time.sleep(1.0)
        cores = cpu_list(res["sender_cpus"])
        before = _server_counters(base + "/metrics")
        clock0, host0, t0 = _health_clock(base), host_cpu_jiffies(), time.monotonic()
        report["rounds"] = []
        # Loa and Icecast alternate (L I, I L, L I, ...): a slow drift of the machine's load
        # does not favour one of them; each round gives its own ratio
        for r in range(rounds):
            one: dict = {}
            for name in (("loa", "icecast") if r % 2 == 0 else ("icecast", "loa")):
                if name == "loa":
                    one["loa"] = measure("loa", base + "/listen/bench0.ogg", server.pid,
                                         listeners, opts, env, client_cpu, res["nice"], cores,
                                         base + "/metrics")
                else:
                    one["icecast"] = measure("icecast", ice_base + "/bench.ogg", icecast.pid,
                                             listeners, opts, env, client_cpu, res["nice"], cores)
                if console is not None:
                    m = one[name]
                    console.print(f"round {r + 1}/{rounds} {name}: serving "
                                  f"{fmt(m.get('serving_us_per_listener_s'), 2)} µs/listener·s, "
                                  f"whole process {fmt(m.get('cpu_us_per_listener_s'), 2)}, "
                                  f"load {m.get('loadavg')}")
            if tls:
                one["loa_tls"] = measure("loa_tls", tls_base + "/listen/bench0.ogg",
                                         tls_server.pid, listeners, opts, env, client_cpu,
                                         res["nice"], cores)
            one["ratio"] = _round_ratios(one["loa"], one["icecast"], one.get("loa_tls"))
            report["rounds"].append(one)
        after = _server_counters(base + "/metrics")
        report["servers"] = {k: v for k, v in report["rounds"][0].items() if k != "ratio"}
        for name, proc in (("loa serve", server), ("icecast2", icecast),
                           ("ffmpeg feeder", feeder)):
            if not proc.alive():
                invalid(f"{name} ended during the run: " + " | ".join(proc.err[-3:]))
        for i, one in enumerate(report["rounds"]):
            for name in ("loa", "icecast", "loa_tls"):
                m = one.get(name)
                if m is None:
                    continue
                if m.get("connected", 0) < listeners:
                    invalid(f"round {i + 1} {name}: only {m.get('connected')} of {listeners} "
                            "listeners connected")
                if m.get("clients", {}).get("ended_early"):
                    invalid(f"round {i + 1} {name}: {m['clients']['ended_early']} listeners "
                            "were dropped")
        report["summary"] = _summary(report["rounds"])
        report["ratio"] = {k: v["median"] for k, v in report["summary"].items()}
        total = _counter_delta(before, after)
        report["late_ticks"] = total.get("late_ticks")
        report["tick_overruns"] = total.get("tick_overruns")
        # why each late tick was late (streamer.tickprobe), and the host's steal over the rounds
        report.update(late_attribution(clock0, _health_clock(base)))
        report["host"] = host_cpu_delta(host0, host_cpu_jiffies(), time.monotonic() - t0)
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


def _self_signed(work: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cp, kp = work / "cert.pem", work / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


def _start_tls_server(work: Path, lim: int, res: dict, env: dict) -> tuple[Proc, str]:
    cp, kp = _self_signed(work)
    cfg = work / "tls.toml"
    cfg.write_text(f'tls_cert = "{cp}"\ntls_key = "{kp}"\ndemo_zone = false\n'
                   f'listen_public_zones = ["bench0"]\nlisten_max_per_zone = {lim}\n'
                   f"listen_max_total = {lim}\nlisten_max_per_address = {lim}\n"
                   f"http_max_connections = {lim + 1000}\n"
                   f"http_max_connections_per_address = {lim}\narchive = false\n"
                   '[[zones]]\nid = "bench0"\nname = "bench"\n')
    port = _free_tcp_port()
    server = Proc(_prefix(res["sender_cpus"], res["nice"]) + [
        sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
        f"127.0.0.1:{port}", "--data-dir", str(work / "data-tls")], env=env,
        name="loa serve (https)", cwd=str(REPO))
    return server, f"https://127.0.0.1:{port}"


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _https_post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=_insecure()) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def _phase_s(listeners: int, idle_s: float, steady_s: float, ramp: float) -> float:
    """About how long one server's phase of a round lasts."""
    return 2 * idle_s + steady_s + 2 * listeners / max(1.0, ramp) + 12


def _round_ratios(lo: dict, ic: dict, tls: dict | None = None) -> dict:
    extra = {} if tls is None else {
        "tls_vs_plain_serving": _ratio(tls["serving_us_per_listener_s"],
                                       lo["serving_us_per_listener_s"]),
        "tls_vs_icecast_serving": _ratio(tls["serving_us_per_listener_s"],
                                         ic["serving_us_per_listener_s"]),
        "tls_vs_plain_rss": _ratio(tls["rss_per_listener"], lo["rss_per_listener"])}
    return {**extra,
        "serving_cpu_per_listener_s": _ratio(lo["serving_us_per_listener_s"],
                                             ic["serving_us_per_listener_s"]),
        "cpu_per_listener_s": _ratio(lo["cpu_us_per_listener_s"], ic["cpu_us_per_listener_s"]),
        "cpu_per_listener_s_raw": _ratio(lo["cpu_us_per_listener_s_raw"],
                                         ic["cpu_us_per_listener_s_raw"]),
        "rss_per_listener": _ratio(lo["rss_per_listener"], ic["rss_per_listener"])}


def _summary(rounds: list[dict]) -> dict:
    """Per ratio: every round's value, their median, min and max (memory: the first round)."""
    out: dict = {}
    for key in ("serving_cpu_per_listener_s", "cpu_per_listener_s", "cpu_per_listener_s_raw",
                "rss_per_listener", "tls_vs_plain_serving", "tls_vs_icecast_serving",
                "tls_vs_plain_rss"):
        # memory: the first round only (each process fresh); later rounds reuse what the
        # previous round's listeners freed and their RSS growth means nothing
        use = rounds[:1] if key.endswith("rss") or key.startswith("rss") else rounds
        vals = [r["ratio"][key] for r in use if r["ratio"].get(key) is not None]
        if not vals and key.startswith("tls"):
            continue
        out[key] = {"rounds": vals,
                    "median": round(statistics.median(vals), 3) if vals else None,
                    "min": min(vals, default=None), "max": max(vals, default=None)}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def render(report: dict, console) -> None:
    from rich.table import Table
    m = report["machine"]
    console.print(f"[bold]loa bench listen[/] — {m['nproc']} cores, {m['cpu_model']}, load "
                  f"{m['loadavg_before']}; settings {report['settings']}")
    t = Table(title=f"{report['settings']['listeners']} HTTP listeners of one Ogg/Opus stream "
                    "(µs CPU per listener-second)")
    cols = ("round", "server", "load", "connected", "serving", "of it ksoftirqd",
            "Loa's other threads", "whole process", "idle cpu/s", "steady cpu/s",
            "bytes / listener")
    for c in cols:
        t.add_column(c)
    for i, one in enumerate(report.get("rounds") or [report.get("servers", {})]):
        for name in ("loa", "icecast", "loa_tls"):
            s = one.get(name)
            if not s:
                continue
            t.add_row(str(i + 1), name, str(s.get("loadavg", "")), fmt(s.get("connected")),
                      fmt(s.get("serving_us_per_listener_s"), 2),
                      fmt(s.get("softirqd_us_per_listener_s"), 2),
                      fmt(s.get("others_us_per_listener_s"), 2) if name != "icecast" else "",
                      fmt(s.get("cpu_us_per_listener_s"), 2),
                      fmt(s.get("idle_cpu_per_s"), 3), fmt(s.get("steady_cpu_per_s"), 3),
                      fmt(s.get("rss_per_listener"), 0))
    console.print(t)
    for key, label in (("serving_cpu_per_listener_s", "CPU per listener-second (serving)"),
                       ("cpu_per_listener_s", "CPU per listener-second (whole process)"),
                       ("rss_per_listener", "memory per listener"),
                       ("tls_vs_plain_serving", "— Loa over HTTPS / Loa over HTTP: CPU"),
                       ("tls_vs_plain_rss", "— Loa over HTTPS / Loa over HTTP: memory")):
        v = (report.get("summary") or {}).get(key) or {}
        if not v:
            continue
        console.print(f"Loa / Icecast {label}: median {fmt(v.get('median'), 3)} (rounds "
                      f"{', '.join(fmt(x, 3) for x in v.get('rounds', []))}; min "
                      f"{fmt(v.get('min'), 3)}, max {fmt(v.get('max'), 3)})")
    rc = report.get("receivers") or {}
    console.print(f"Loa tick over all rounds: late ticks {fmt(report.get('late_ticks'))}, "
                  f"overruns {fmt(report.get('tick_overruns'))}; UDP receivers: "
                  f"{fmt(rc.get('packets_delivered'))}/{fmt(rc.get('packets_expected'))} "
                  f"delivered, loss {fmt(rc.get('loss_pct'), 4)} %, max gap "
                  f"{fmt(rc.get('max_seq_gap'))}")
    if report.get("late_causes") or report.get("host"):
        console.print(f"why late: {report.get('late_causes') or {}}; host over the rounds: "
                      f"{report.get('host')}")
    for rec in report.get("late_detail") or []:
        console.print(late_line(rec))
    if not report["valid"]:
        console.print(f"[red]INVALID RUN: {report['invalid_reasons']}[/]")
