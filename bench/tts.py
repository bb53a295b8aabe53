"""`loa bench tts`: text to speech, measured.

- api_to_first_packet_ms: a real `loa serve` with one zone sending to a probe socket here; each
  round POSTs a 2,000-character bulletin as a `tts` broadcast (espeak-ng) and timestamps the
  first RTP packet with the marker bit (the zone's talk spurt starting) at the probe. Cold:
  every round's text is new (nothing cached); warm: the same text again (the sentences come
  from the disk cache). Client-side: HTTP, checks, normalisation, synthesis of the first
  sentence, the wait for the next tick, encode and send.
- real-time factor per engine (audio seconds per second of synthesis, in-process, cache off);
  cloud engines only when configured (`--config` with [[tts_engines]] and their keys).
- first after start: the same, for the first bulletin POSTed as soon as a new `loa serve` (new
  data directory) answers /health (`--starts` servers): cold cache, workers just started.
- under_load: the CPU synthesis takes from the tick. A `loa serve` (pinned and niced like
  `loa bench fanout`) plays a programme to a zone of N loopback receivers (the bench sink, 5,000
  by default); the engine's late ticks, overruns and worst lateness are read over a quiet
  window, then over a window of the same length in which new 2,000-character bulletins (cold
  cache) are read aloud on a second zone back to back, `--windows` times; each window's late
  ticks are printed. Late ticks must stay 0.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (cpu_list, host_cpu_delta, host_cpu_jiffies, late_attribution, late_line,
                          machine_info)
from bench.fanout import (REPO, FanoutOptions, Proc, _child_env, _free_tcp_port, _http, _prefix,
                          resolve, write_toml)
from bench.preempt import _drain, _wait_marker, summary, wait_healthy

SENTENCES = [
    "Thông báo của Ủy ban nhân dân xã về công tác phòng, chống bão số 3.",
    "Hồi 7 giờ sáng nay, vị trí tâm bão ở khoảng 18,5 độ Vĩ Bắc, 110,2 độ Kinh Đông.",
    "Sức gió mạnh nhất vùng gần tâm bão mạnh cấp 12, giật cấp 15.",
    "Đề nghị bà con chủ động gia cố nhà cửa, chặt tỉa cây xanh, neo đậu tàu thuyền an toàn.",
    "Các hộ dân ở vùng trũng thấp di dời đến nơi an toàn trước 17 giờ chiều nay.",
    "Mọi thông tin cần hỗ trợ xin liên hệ Ban chỉ huy phòng chống thiên tai của xã.",
]


def bulletin(tag: str, chars: int = 2000) -> str:
    """A bulletin of about `chars` characters whose first sentence carries `tag` (so a cold
    round's first sentence is not in the cache)."""
    out = [f"Bản tin số {tag}."]
    i = 0
    while sum(len(s) + 1 for s in out) < chars:
        out.append(SENTENCES[i % len(SENTENCES)])
        i += 1
    return " ".join(out)[:chars]


def _words(n: int) -> str:
    from streamer.tts.normalize import normalize
    return normalize(str(n)).rstrip(".")


def realtime_factors(config: str | None) -> list[dict]:
    from control.settings import load_settings
    from control.tts import build_tts
    from streamer.tts.cache import TtsCache
    settings = load_settings(config, data_dir=tempfile.mkdtemp(prefix="loa-bench-tts-"))
    svc = build_tts(settings)
    svc.cache = TtsCache(None)
    out: list[dict[str, object]] = []
    for name, engine in sorted(svc.engines.items()):
        p = svc.prepare(bulletin("một"), engine=name)
        t = time.perf_counter()
        try:
            audio = svc.render(p, deadline_s=30)
        except Exception as e:  # an unreachable cloud engine is reported, not fatal
            out.append({"engine": name, "kind": engine.kind, "error": str(e)})
            continue
        wall = time.perf_counter() - t
        secs = audio.shape[0] / 48_000
        out.append({"engine": name, "kind": engine.kind, "audio_s": round(secs, 2),
                    "synthesis_s": round(wall, 3), "rtf": round(wall / secs, 4),
                    "x_realtime": round(secs / wall, 1)})
    return out


def _clock(base: str) -> dict:
    st, h = _http("GET", base + "/api/v1/health")
    return dict(h.get("clock") or {}) if st == 200 else {}


#: the CPU the server is pinned to (under_load): its counters are read with the machine's
_SERVER_CPU: list[int] = []


def _clock_host(base: str) -> tuple[dict, dict, float, dict]:
    """The engine's clock stats, the machine's CPU counters, the time and the server core's
    counters, together."""
    return (_clock(base), host_cpu_jiffies(), time.monotonic(),
            host_cpu_jiffies(_SERVER_CPU[0]) if _SERVER_CPU else {})


def _delta(a: tuple[dict, dict, float, dict], b: tuple[dict, dict, float, dict]) -> dict:
    keys = ("ticks", "late_ticks", "skipped_ticks", "tick_overruns")
    out: dict[str, object] = {k: int(b[0].get(k, 0)) - int(a[0].get(k, 0)) for k in keys}
    out["max_late_ms_so_far"] = b[0].get("max_late_ms")
    # other work on the machine makes late ticks too: the quiet window and the load say how much
    out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    # the host's steal over the window (this is a shared KVM guest) and why each late tick was
    # late (streamer.tickprobe: GIL wait, CPU wait, host steal)
    out["host"] = host_cpu_delta(a[1], b[1], b[2] - a[2])
    # the server's core: when its real-time work (tick, fan-out, their softirqs) leaves normal
    # tasks there starved, the kernel takes up to 50 ms a second from the SCHED_FIFO tick
    out["server_core"] = host_cpu_delta(a[3], b[3], b[2] - a[2])
    out.update(late_attribution(a[0], b[0]))
    return out


def under_load(receivers: int = 5000, seconds: float = 15.0, windows: int = 3,
               engine_cpus: str | None = None) -> dict:
    """Late ticks while a programme plays to `receivers` and bulletins are synthesised (see
    the module's docstring). The server runs on the first core (the sink on the last), all of
    it; with `engine_cpus` ("0") it may use every core and reserves those for its real-time
    path (settings engine_cpus, streamer.cpus): synthesis and the rest then run beside the
    sink."""
    work = Path(tempfile.mkdtemp(prefix="loa-bench-tts-load-"))
    env = _child_env()
    res = resolve(FanoutOptions(receivers=receivers))
    reserved = sorted(cpu_list(engine_cpus)) if engine_cpus else []
    if reserved:
        ncpu = os.cpu_count() or 1
        res["sender_cpus"] = f"0-{ncpu - 1}" if ncpu > 1 else "0"
        res["engine_cpus"] = reserved
    _SERVER_CPU[:] = reserved[:1] or [int(c) for c in str(res.get("sender_cpus") or "").split(",")
                                      if c.strip().isdigit()][:1]
    out: dict = {"receivers": receivers, "window_s": seconds, "windows": windows, "valid": True,
                 "invalid_reasons": [], "placement": res}
    sink = Proc(_prefix(None, res["nice"]) + [
        sys.executable, "-m", "bench.sink", "--receivers", str(receivers), "--cpu",
        str(res["sink_cpu"]), "--sample", "10", "--max-seconds",
        str(int(60 + 3 * seconds * max(1, windows)))],
        env=env, name="sink", cwd=str(REPO))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    server = None
    try:
        line = sink.expect(lambda s: s.startswith("ready"), 20)
        if line is None:
            out["valid"] = False
            out["invalid_reasons"].append("sink did not start")
            return out
        cfg = work / "bench.toml"
        write_toml(cfg, receivers, int(line.split()[1]), 1)
        # settings before the first table; the TTS zone (one probe socket) after the programme's
        cfg.write_text("limit_starts_per_minute_per_principal = 100000\n"
                       "limit_starts_per_minute_per_zone = 100000\n" +
                       (f"engine_cpus = {reserved}\n" if reserved else "") + cfg.read_text() +
                       f'[[zones]]\nid = "tts"\nunicast = ["127.0.0.1:{probe.getsockname()[1]}"]\n')
        http = _free_tcp_port()
        server = Proc(_prefix(res["sender_cpus"], res["nice"]) + [
            sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
            f"127.0.0.1:{http}", "--data-dir", str(work / "data")], env=env, name="loa serve",
            cwd=str(REPO))
        base = f"http://127.0.0.1:{http}"
        if not wait_healthy(base, server):
            out["valid"] = False
            out["invalid_reasons"].append("loa serve did not start: " + " | ".join(server.err[-5:]))
            return out
        st, prog = _http("POST", base + "/api/v1/broadcasts", {
            "zones": ["bench0"], "source": {"kind": "tone", "freq_hz": 440, "seconds": 3600}})
        if st != 201:
            out["valid"] = False
            out["invalid_reasons"].append(f"programme refused: {prog}")
            return out
        time.sleep(2.0)   # the programme settles (first encodes, sink warm)
        # quiet and with-TTS windows in turn, each counted on its own: a late tick is seen in
        # the window it happened in, next to the machine's load then
        out["windows_list"] = []
        n = 0
        for w in range(max(1, windows)):
            c0 = _clock_host(base)
            time.sleep(seconds)
            c1 = _clock_host(base)
            quiet = dict(_delta(c0, c1), window=f"quiet {w + 1}", bulletins=0)
            t_end = time.monotonic() + seconds
            current = None
            k = 0
            while time.monotonic() < t_end:
                if current is not None:
                    _http("DELETE", base + f"/api/v1/broadcasts/{current}")
                st, b = _http("POST", base + "/api/v1/broadcasts", {
                    "zones": ["tts"], "source": {"kind": "tts",
                                                 "text": bulletin(f"{_words(n + 7)} tải")}})
                if st != 201:
                    out["valid"] = False
                    out["invalid_reasons"].append(f"bulletin refused: {st} {b}")
                    break
                current = b["id"]
                n += 1
                k += 1
                time.sleep(1.5)   # a new bulletin every 1.5 s: the synthesis pool never idles
            c2 = _clock_host(base)
            if current is not None:
                _http("DELETE", base + f"/api/v1/broadcasts/{current}")
            out["windows_list"] += [quiet, dict(_delta(c1, c2), window=f"with tts {w + 1}",
                                                bulletins=k)]
        ws = out["windows_list"]
        # the totals over all windows of each kind (the earlier report's two keys)
        for kind, key in (("quiet", "quiet"), ("with tts", "with_tts")):
            mine = [x for x in ws if x["window"].startswith(kind)]
            out[key] = {f: sum(int(x[f]) for x in mine)
                        for f in ("ticks", "late_ticks", "skipped_ticks", "tick_overruns")}
            out[key]["max_late_ms_so_far"] = mine[-1]["max_late_ms_so_far"]
            out[key]["loadavg_1m_after"] = mine[-1]["loadavg_1m_after"]
            causes: dict[str, int] = {}
            for x in mine:
                for c, v in x.get("late_causes", {}).items():
                    causes[c] = causes.get(c, 0) + v
            out[key]["late_causes"] = causes
        out["bulletins"] = n
        out["chars_synthesised_max"] = n * 2000
        if not server.alive():
            out["valid"] = False
            out["invalid_reasons"].append("loa serve crashed")
        return out
    finally:
        if server is not None:
            server.stop()
        sink.stop()
        probe.close()


def first_after_start(starts: int = 5) -> dict:
    """API call → first packet of the first text after `loa serve` starts: a new server on a
    new data directory (cache cold, workers just spawned) each time, the bulletin POSTed as soon
    as /health answers. Also how long the server took to answer (its TTS workers warm before
    it does)."""
    out: dict = {"starts": starts, "valid": True, "invalid_reasons": [],
                 "first_packet_ms": [], "start_to_healthy_s": []}
    for i in range(max(1, starts)):
        work = Path(tempfile.mkdtemp(prefix="loa-bench-tts-start-"))
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        probe.bind(("127.0.0.1", 0))
        probe.setblocking(False)
        cfg = work / "bench.toml"
        cfg.write_text(f'[[zones]]\nid = "z"\nunicast = ["127.0.0.1:{probe.getsockname()[1]}"]\n')
        http = _free_tcp_port()
        t_start = time.monotonic()
        server = Proc([sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
                       f"127.0.0.1:{http}", "--data-dir", str(work / "data")],
                      env=dict(_child_env(), LOA_SEND_PORT="0"), name="loa serve",
                      cwd=str(REPO))
        base = f"http://127.0.0.1:{http}"
        try:
            if not wait_healthy(base, server):
                out["valid"] = False
                out["invalid_reasons"].append(f"start {i}: loa serve did not start")
                continue
            out["start_to_healthy_s"].append(round(time.monotonic() - t_start, 2))
            _drain(probe)
            t0 = time.monotonic_ns()
            st, b = _http("POST", base + "/api/v1/broadcasts", {
                "zones": ["z"], "source": {"kind": "tts",
                                           "text": bulletin(f"{_words(i + 101)} khởi động")}})
            if st != 201:
                out["valid"] = False
                out["invalid_reasons"].append(f"start {i}: refused: {st} {b}")
                continue
            t1 = _wait_marker(probe, t0, 5.0)
            if t1 is None:
                out["valid"] = False
                out["invalid_reasons"].append(f"start {i}: no packet in 5 s")
                continue
            out["first_packet_ms"].append(round((t1 - t0) / 1e6, 3))
        finally:
            server.stop()
            probe.close()
    out["summary"] = summary(out["first_packet_ms"])
    return out


def run_tts(rounds: int = 20, config: str | None = None, receivers: int = 5000,
            load_s: float = 15.0, starts: int = 5, windows: int = 3,
            engine_cpus: str | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="loa-bench-tts-"))
    report: dict = {"benchmark": "tts", "machine": machine_info(),
                    "settings": {"rounds": rounds, "chars": 2000, "engine": "espeak"},
                    "valid": True, "invalid_reasons": []}
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    probe.bind(("127.0.0.1", 0))
    probe.setblocking(False)
    cfg = work / "bench.toml"
    # many starts in a minute from one account: the start limits would (rightly) refuse them
    cfg.write_text("limit_starts_per_minute_per_principal = 100000\n"
                   "limit_starts_per_minute_per_zone = 100000\n"
                   f'[[zones]]\nid = "z"\nunicast = ["127.0.0.1:{probe.getsockname()[1]}"]\n')
    http = _free_tcp_port()
    server = Proc([sys.executable, "-m", "loa.cli",
                   "serve", "--config", str(cfg), "--http", f"127.0.0.1:{http}", "--data-dir",
                   str(work / "data")], env=dict(_child_env(), LOA_SEND_PORT="0"),
                  name="loa serve", cwd=str(REPO))
    base = f"http://127.0.0.1:{http}"
    try:
        if not wait_healthy(base, server):
            report["valid"] = False
            report["invalid_reasons"].append("loa serve did not start")
            return report
        results: dict[str, list[float]] = {"cold": [], "warm": []}
        warm_text = bulletin("một nghìn")
        for phase in ("cold", "warm"):
            if phase == "warm":   # render it once so every warm round is a cache hit
                st, b = _http("POST", base + "/api/v1/broadcasts", {
                    "zones": ["z"], "source": {"kind": "tts", "text": warm_text}})
                if st == 201:
                    _http("DELETE", base + f"/api/v1/broadcasts/{b['id']}")
                time.sleep(0.5)
            for i in range(rounds):
                text = bulletin(_words(i + 1)) if phase == "cold" else warm_text
                time.sleep(0.2)
                _drain(probe)
                t0 = time.monotonic_ns()
                st, b = _http("POST", base + "/api/v1/broadcasts", {
                    "zones": ["z"], "source": {"kind": "tts", "text": text}})
                if st != 201:
                    report["valid"] = False
                    report["invalid_reasons"].append(f"start refused: {st} {b}")
                    return report
                t1 = _wait_marker(probe, t0, 5.0)
                _http("DELETE", base + f"/api/v1/broadcasts/{b['id']}")
                if t1 is None:
                    report["valid"] = False
                    report["invalid_reasons"].append(f"{phase} round {i}: no packet in 5 s")
                    continue
                results[phase].append((t1 - t0) / 1e6)
        report["api_to_first_packet_ms"] = {k: summary(v) for k, v in results.items()}
        report["targets_ms"] = {"cold_p95": 300, "warm_p95": 50}
    finally:
        server.stop()
        probe.close()
    if starts > 0:
        first = report["first_after_start"] = first_after_start(starts)
        report["api_to_first_packet_ms"]["first_after_start"] = first["summary"]
        if not first["valid"]:
            report["valid"] = False
            report["invalid_reasons"] += [f"after start: {r}" for r in first["invalid_reasons"]]
    report["realtime_factor"] = realtime_factors(config)
    if receivers > 0:
        load = under_load(receivers, load_s, windows, engine_cpus)
        report["under_load"] = load
        if not load["valid"]:
            report["valid"] = False
            report["invalid_reasons"] += [f"under load: {r}" for r in load["invalid_reasons"]]
    return report


def render(report: dict, console) -> None:
    from rich.table import Table
    t = Table(title="loa bench tts: API call → first TTS packet (2,000-character bulletin)")
    for c in ("cache", "n", "p50 ms", "p95 ms", "max ms", "target p95"):
        t.add_column(c)
    for phase, target in (("cold", 300), ("warm", 50), ("first_after_start", 300)):
        s = report.get("api_to_first_packet_ms", {}).get(phase)
        if s and s.get("n"):
            t.add_row("cold, first after server start" if phase == "first_after_start"
                      else phase, str(s["n"]), str(s["p50"]), str(s["p95"]), str(s["max"]),
                      f"≤ {target}")
    console.print(t)
    r = Table(title="synthesis speed per engine")
    for c in ("engine", "kind", "audio s", "synthesis s", "RTF", "× real time"):
        r.add_column(c)
    for e in report.get("realtime_factor", []):
        r.add_row(e["engine"], e["kind"], str(e.get("audio_s", "")), str(e.get("synthesis_s", "")),
                  str(e.get("rtf", e.get("error", ""))), str(e.get("x_realtime", "")))
    console.print(r)
    load = report.get("under_load")
    if load and "with_tts" in load:
        pl = load.get("placement") or {}
        where = (f"server on cores {pl.get('sender_cpus')}, tick and senders on "
                 f"{pl['engine_cpus']} (engine_cpus)" if pl.get("engine_cpus")
                 else f"whole server on core {pl.get('sender_cpus')}")
        u = Table(title=f"the tick while {load['receivers']:,} receivers hear a programme "
                        f"({load['window_s']} s windows; {where}; sink on core "
                        f"{pl.get('sink_cpu')})")
        for c in ("window", "ticks", "late ticks", "why late", "worst late ms (so far)",
                  "overruns", "load 1 min", "host steal (cores)", "server core busy/softirq",
                  "bulletins"):
            u.add_column(c)
        ws = load.get("windows_list") or [dict(load["quiet"], window="quiet"),
                                          dict(load["with_tts"], window="with tts",
                                               bulletins=load["bulletins"])]
        for w in ws:
            u.add_row(w["window"], str(w["ticks"]), str(w["late_ticks"]),
                      " ".join(f"{k} {v}" for k, v in (w.get("late_causes") or {}).items()),
                      str(w["max_late_ms_so_far"]), str(w["tick_overruns"]),
                      str(w["loadavg_1m_after"]), str((w.get("host") or {}).get("steal_cores", "")),
                      "{}/{}".format((w.get("server_core") or {}).get("busy_cores", ""),
                                     (w.get("server_core") or {}).get("softirq_cores", "")),
                      str(w.get("bulletins", 0)))
        console.print(u)
        for w in ws:
            for rec in w.get("late_detail") or []:
                console.print(f"{w['window']}: {late_line(rec)}")
    first = report.get("first_after_start")
    if first and first.get("start_to_healthy_s"):
        console.print(f"first after start: {first['first_packet_ms']} ms; server start → "
                      f"healthy {first['start_to_healthy_s']} s")
    if not report.get("valid"):
        console.print(f"[red]invalid: {report['invalid_reasons']}[/]")
