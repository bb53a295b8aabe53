"""Helpers shared by the benchmark processes: receiver addresses, /proc accounting, machine info.

Standard library only: the GStreamer peer imports nothing from here (it runs under the system
python for python3-gi), but the sink, the bare sender and the harness do.
"""
from __future__ import annotations

import math
import os
import platform
import sys

MAX_RECEIVERS = 250 * 256
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def receiver_host(i: int) -> str:
    """Receiver i lives at 127.0.x.y (y in 1..250: no .0, no .255)."""
    if not 0 <= i < MAX_RECEIVERS:
        raise ValueError(f"receiver index {i} out of range (max {MAX_RECEIVERS})")
    return f"127.0.{i // 250}.{i % 250 + 1}"


def receiver_index(x: int, y: int) -> int:
    """Inverse of receiver_host for 127.0.x.y; -1 if not one of ours."""
    if 1 <= y <= 250:
        return x * 250 + y - 1
    return -1


def receivers(n: int, port: int) -> list[tuple[str, int]]:
    return [(receiver_host(i), port) for i in range(n)]


def descendants(pid: int) -> list[int]:
    """pid and all its live descendants (threads are counted inside each process' stat)."""
    out: list[int] = []
    todo, seen = [pid], set[int]()
    while todo and len(seen) < 10_000:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{tid}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
                except OSError:
                    pass
        except OSError:
            pass
    return out


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads, live and exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fmt(v, nd: int = 2) -> str:
    """A table cell: thousands separators, `nd` decimals for floats, – for none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def cpu_list(spec: str | int | None) -> set[int]:
    """A taskset-style CPU list ("0", "0-1", "0,2-3") as a set."""
    out: set[int] = set()
    for part in str(spec if spec is not None else "").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def softirqd_cpu_seconds(cpus: set[int]) -> float:
    """CPU time of the ksoftirqd threads of these cores. On loopback the receive half of
    every datagram (IP input, socket lookup, enqueue, wake-up) runs as softirq work on the
    sending core: inside the sender's syscall (charged to the sender), or, when there is too
    much of it, deferred to ksoftirqd (charged to nobody's process). A sender that leaves more
    to ksoftirqd would look cheaper than it is; the benchmark adds this back."""
    if not cpus:
        return 0.0
    try:
        pids = os.listdir("/proc")
    except OSError:
        return 0.0
    total = 0.0
    names = {f"ksoftirqd/{c}" for c in cpus}
    for pid in pids:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() not in names:
                    continue
        except OSError:
            continue
        total += proc_cpu_seconds(int(pid))
    return total


def tree_cpu(pid: int) -> dict[int, float]:
    return {p: proc_cpu_seconds(p) for p in descendants(pid)}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two tree samples; processes born in between count from zero."""
    return sum(max(0.0, t - before.get(p, 0.0)) for p, t in after.items())


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def machine_info() -> dict:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    hv = ""
    try:
        with open("/proc/cpuinfo") as f:
            hv = "hypervisor" if " hypervisor" in f.read() else "bare metal?"
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"nproc": os.cpu_count(), "cpu_model": model, "virtualization": hv,
            "kernel": platform.release(), "python": sys.version.split()[0],
            "loadavg_before": [round(x, 2) for x in load],
            "root": hasattr(os, "geteuid") and os.geteuid() == 0}


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat), to measure noise."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return 0.0
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals) - idle) / CLK_TCK


def host_cpu_jiffies(cpu: int | None = None) -> dict[str, int]:
    """CPU counters from /proc/stat (USER_HZ ticks), the whole machine's or one CPU's: steal is
    the time the host (this is a KVM guest) ran something else instead of our vCPUs; {} where
    unreadable."""
    want = "cpu" if cpu is None else f"cpu{cpu}"
    try:
        with open("/proc/stat") as f:
            for line in f:
                v = line.split()
                if v and v[0] == want:
                    break
            else:
                return {}
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {k: int(x) for k, x in zip(names, v[1:])}


def host_cpu_delta(a: dict[str, int], b: dict[str, int], seconds: float) -> dict[str, float]:
    """Between two host_cpu_jiffies(): each counter as a share of the machine's cores (0..1
    per core: steal 0.05 = 5 % of one core's time over the window, summed over cores), plus
    busy (all but idle/iowait/steal) in cores."""
    if not a or not b or seconds <= 0:
        return {}
    d = {k: (b[k] - a[k]) / CLK_TCK / seconds for k in a if k in b}
    return {"steal_cores": round(d.get("steal", 0.0), 4),
            "softirq_cores": round(d.get("softirq", 0.0), 4),
            "busy_cores": round(sum(v for k, v in d.items()
                                    if k not in ("idle", "iowait", "steal")), 3)}


def late_attribution(c0: dict, c1: dict) -> dict:
    """From two readings of the engine's clock stats (/api/v1/health "clock"): the late ticks
    between them by cause (streamer.tickprobe: gil, cpu_wait, steal, overrun, catchup) and the
    probe's record of each (what is still kept: the last 32)."""
    a, b = c0.get("late_causes") or {}, c1.get("late_causes") or {}
    causes = {k: int(b.get(k, 0)) - int(a.get(k, 0)) for k in b}
    n0, n1 = int(c0.get("late_ticks", 0)), int(c1.get("late_ticks", 0))
    recs = [r for r in c1.get("late_detail") or [] if n0 < int(r.get("n", 0)) <= n1]
    return {"late_causes": {k: v for k, v in causes.items() if v}, "late_detail": recs}


def late_line(r: dict) -> str:
    """One late tick in a line: lateness, cause, the split, and the first busy thread."""
    th = (r.get("threads") or [""])[0]
    return (f"late {r.get('late_ms')} ms: {r.get('cause')} (GIL wait {r.get('gil_wait_ms')}, "
            f"run delay {r.get('run_delay_ms')}, steal {r.get('steal_ms_tick_cpu')} on cpu"
            f"{r.get('cpu')} / {r.get('steal_ms_all_cpus')} all in "
            f"{r.get('stat_window_ms')} ms, softirq {r.get('softirq_ms_all_cpus')}, previous "
            f"tick {r.get('prev_tick_work_ms')} ms)" + (f"; first thread: {th}" if th else ""))
