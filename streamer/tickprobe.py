"""Why a tick was late: attribution of each late tick to GIL wait, CPU wait or host steal.

A tick is late (TickSchedule: started more than half a period after its deadline) when the tick
thread, asleep until the deadline, did not get to run its Python code in time. Between the end of
the previous tick and the start of the late one, the tick thread's time goes to:

- sleeping until the deadline (asked for);
- CPU wait: woken but runnable and not running, because the core ran something else (another
  SCHED_FIFO thread of equal or higher priority, interrupts/softirqs). The kernel counts it per
  thread: run_delay, the second field of /proc/self/task/TID/schedstat (ns);
- host steal: this machine is a KVM guest; while the host runs someone else, the guest's vCPU
  does not run at all and the guest counts the time as 'steal' in /proc/stat (per CPU, in
  USER_HZ ticks of 10 ms: coarse). The tick thread's run_delay does not see it;
- GIL wait: woken and running, but blocked taking the GIL from a thread that holds it in C code
  (a long regex, a big json.dumps, zlib, sqlite3...): the thread sleeps on a futex, so neither
  run_delay nor steal sees it. It is what remains: lateness - run_delay - steal.

The probe reads the tick thread's schedstat after every tick (one pread into a preallocated
buffer, ~1.3 us; nothing parsed, nothing kept) and /proc/stat every `stat_every` ticks (~8 us a
read: every 5th tick by default), and only when a tick is late parses them against fresh reads,
samples where every other thread of the process stands (sys._current_frames(): the GIL holder,
if there was one, stands just after the call that held it; the tick thread holds the GIL while
it looks, so the others cannot move) and keeps one record in a bounded deque. An on-time tick
allocates nothing here but the pread's small int.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Any

#: USER_HZ: /proc/stat counts in these (10 ms on Linux)
_JIFFY_NS = 10_000_000
#: the columns of a cpuN line of /proc/stat this keeps (after the name)
_STAT_COLS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: frames of a thread that mean it is waiting, not working (it did not hold the GIL)
_WAITING = ("wait", "select", "_worker", "get", "sleep", "recv", "accept", "poll", "run_forever",
            "_run_once", "serve_forever", "readinto", "read", "join")


def _parse_schedstat(buf: bytes | bytearray, n: int) -> tuple[int, int]:
    """(on-CPU ns, run-queue wait ns) from a schedstat read of `n` bytes."""
    try:
        f = bytes(buf[:n]).split()
        return int(f[0]), int(f[1])
    except (ValueError, IndexError):
        return 0, 0


def _parse_stat(buf: bytes | bytearray, n: int) -> dict[int, tuple[int, ...]]:
    """cpu index -> the _STAT_COLS counters (jiffies) from a /proc/stat read of `n` bytes."""
    out: dict[int, tuple[int, ...]] = {}
    for line in bytes(buf[:n]).split(b"\n"):
        if not line.startswith(b"cpu") or line.startswith(b"cpu "):
            if out:
                break
            continue
        f = line.split()
        try:
            out[int(f[0][3:])] = tuple(int(x) for x in f[1:1 + len(_STAT_COLS)])
        except (ValueError, IndexError):
            continue
    return out


def _thread_cpu(tid: int) -> int | None:
    """The CPU the thread last ran on (field 39 of /proc/self/task/TID/stat)."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            s = f.read()
        return int(s[s.rindex(b")") + 2:].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def where_threads(skip_ident: int, depth: int = 3) -> list[str]:
    """One line per other Python thread: its name and innermost frames (file:line function),
    those that look like they are working first (not in a wait/select/get/sleep)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    busy: list[str] = []
    idle: list[str] = []
    for ident, frame in sys._current_frames().items():
        if ident == skip_ident:
            continue
        parts: list[str] = []
        f: Any = frame
        while f is not None and len(parts) < depth:
            co = f.f_code
            fn = co.co_filename
            i = fn.rfind("/site-packages/")
            fn = fn[i + 15:] if i >= 0 else fn.rsplit("/", 2)[-1] if "/lib/python" in fn else \
                "/".join(fn.rsplit("/", 2)[-2:])
            parts.append(f"{fn}:{f.f_lineno} {co.co_name}")
            f = f.f_back
        top = frame.f_code.co_name
        line = f"{names.get(ident, ident)}: " + " < ".join(parts)
        (idle if any(w in top for w in _WAITING) else busy).append(line)
    return busy + idle


class LateTickProbe:
    """See the module docstring. Linux only (`available` False elsewhere: then it does nothing).
    Used by the tick thread alone: `mark` after each tick, `late` when a tick starts late."""

    def __init__(self, tid: int, stat_every: int = 5, keep: int = 32,
                 frames: bool = True) -> None:
        self.tid = tid
        self.stat_every = max(1, stat_every)
        self.frames = frames
        self.records: deque[dict[str, Any]] = deque(maxlen=keep)
        self.causes = {"gil": 0, "cpu_wait": 0, "steal": 0, "overrun": 0, "catchup": 0}
        self.late_seen = 0
        self._fd_sched = self._fd_stat = -1
        try:
            self._fd_sched = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
            self._fd_stat = os.open("/proc/stat", os.O_RDONLY)
        except OSError:
            self.close()
        self.available = self._fd_sched >= 0 and self._fd_stat >= 0
        self._sched = bytearray(128)
        self._sched_bufs = [self._sched]
        self._sched_n = 0
        self._sched_now = bytearray(128)
        self._sched_now_bufs = [self._sched_now]
        self._stat = bytearray(16384)
        self._stat_bufs = [self._stat]
        self._stat_n = 0
        self._stat_ns = 0
        self._stat_now = bytearray(16384)
        self._stat_now_bufs = [self._stat_now]
        self._countdown = 0
        self.last_cause_ns = 0  # when the last late tick with a cause of its own started
        self.mark_ns = 0       # when the previous tick's work ended
        self.tick_ns = 0       # how long the previous tick's work took

    def close(self) -> None:
        for fd in (self._fd_sched, self._fd_stat):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd_sched = self._fd_stat = -1
        self.available = False

    def mark(self, start_ns: int, end_ns: int) -> None:
        """After a tick's work (`start_ns`..`end_ns`, monotonic), before sleeping."""
        if not self.available:
            return
        self._sched_n = os.preadv(self._fd_sched, self._sched_bufs, 0)
        self.mark_ns = end_ns
        self.tick_ns = end_ns - start_ns
        self._countdown -= 1
        if self._countdown <= 0:
            self._countdown = self.stat_every
            self._stat_n = os.preadv(self._fd_stat, self._stat_bufs, 0)
            self._stat_ns = end_ns

    def late(self, now_ns: int, late_ns: int, deadline_ns: int) -> dict[str, Any] | None:
        """A tick starts `late_ns` after its deadline: read, attribute, keep a record. Called
        before the tick's work (the other threads stand where they were while it looks)."""
        self.late_seen += 1
        if not self.available or not self.mark_ns:
            return None
        try:
            n_sched = os.preadv(self._fd_sched, self._sched_now_bufs, 0)
            n_stat = os.preadv(self._fd_stat, self._stat_now_bufs, 0)
        except OSError:
            return None
        t_read = time.monotonic_ns()
        # a catch-up tick (the previous one ended past this deadline) needs no second look
        where = (where_threads(threading.get_ident())
                 if self.frames and self.mark_ns <= deadline_ns else [])
        run0, wait0 = _parse_schedstat(self._sched, self._sched_n)
        run1, wait1 = _parse_schedstat(self._sched_now, n_sched)
        cpu = _thread_cpu(self.tid)
        s0 = _parse_stat(self._stat, self._stat_n) if self._stat_n else {}
        s1 = _parse_stat(self._stat_now, n_stat)
        d: dict[int, dict[str, int]] = {}
        for c, v1 in s1.items():
            v0 = s0.get(c)
            if v0 is not None:
                d[c] = {k: (b - a) * _JIFFY_NS for k, a, b in zip(_STAT_COLS, v0, v1)}
        run_delay = wait1 - wait0
        steal_cpu = d.get(cpu, {}).get("steal", 0) if cpu is not None else 0
        steal_all = sum(x["steal"] for x in d.values())
        # steal is counted over the whole /proc/stat window (up to stat_every ticks plus this
        # one), 10 ms at a time: at most the lateness is put down to it
        steal = min(steal_cpu, late_ns)
        # the previous tick ended past this deadline: by its own long work (overrun), or
        # because it started late itself (catch-up after a stall: the stall's first late tick
        # carries the cause)
        past = max(0, min(late_ns, self.mark_ns - deadline_ns))
        overrun = min(past, self.tick_ns)
        catchup = past - overrun
        gil = max(0, late_ns - run_delay - steal - past)
        parts = {"gil": gil, "cpu_wait": run_delay, "steal": steal, "overrun": overrun,
                 "catchup": catchup}
        cause = max(parts, key=lambda k: parts[k])
        self.causes[cause] += 1
        # the spacing of late ticks says something too: CPU waits ~1 s apart are the kernel
        # running starved normal tasks for up to 50 ms a second above every SCHED_FIFO thread
        # (the fair server of Linux 6.12+; RT throttling before it, 950 ms per 1 s)
        since = None
        if cause != "catchup":
            if self.last_cause_ns:
                since = round((now_ns - self.last_cause_ns) / 1e9, 3)
            self.last_cause_ns = now_ns
        ms = 1e6
        rec: dict[str, Any] = {
            "n": self.late_seen, "wall": round(time.time(), 3),
            "late_ms": round(late_ns / ms, 3), "cause": cause,
            "gil_wait_ms": round(gil / ms, 3), "run_delay_ms": round(run_delay / ms, 3),
            "steal_ms_tick_cpu": round(steal_cpu / ms, 1), "steal_ms_all_cpus": round(
                steal_all / ms, 1),
            "softirq_ms_all_cpus": round(sum(x["softirq"] for x in d.values()) / ms, 1),
            "stat_window_ms": round((now_ns - self._stat_ns) / ms, 1) if s0 else None,
            "overrun_ms": round(overrun / ms, 3), "catchup_ms": round(catchup / ms, 3),
            "prev_tick_work_ms": round(self.tick_ns / ms, 3),
            "since_prev_tick_ms": round((now_ns - self.mark_ns) / ms, 3),
            "tick_on_cpu_ms": round((run1 - run0) / ms, 3), "cpu": cpu,
            "probe_ms": round((time.monotonic_ns() - now_ns) / ms, 3),
            "read_ms": round((t_read - now_ns) / ms, 3),
            "since_prev_cause_s": since,
            "threads": where[:12],
        }
        self.records.append(rec)
        return rec

    def stats(self) -> dict[str, Any]:
        return {"late_causes": dict(self.causes), "late_detail": list(self.records)}
