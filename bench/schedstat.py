"""How late the kernel ran each thread of a process: /proc/PID/task/TID/schedstat.

Each thread's schedstat line is "time on CPU (ns), time runnable but waiting for a CPU (ns),
timeslices run". Between two snapshots, wait / slices is how long on average a wake-up of that
thread waited for a core: the number that says whether a late frame on the voice path comes
from the server's event loop, its receive thread, the tick, or the receiver's playout being
scheduled late on a loaded machine (issue 17). Parsing and the difference are pure functions.
"""
from __future__ import annotations

import os
from typing import Any

Snapshot = dict[int, tuple[str, int, int, int]]   # tid -> (name, run ns, wait ns, slices)


def parse(line: str) -> tuple[int, int, int]:
    """(run ns, wait ns, timeslices) from a schedstat line; ValueError if malformed."""
    parts = line.split()
    if len(parts) < 3:
        raise ValueError(f"not a schedstat line: {line!r}")
    run, wait, slices = (int(p) for p in parts[:3])
    return run, wait, slices


def snapshot(pid: int, proc: str = "/proc") -> Snapshot:
    """Every thread of `pid` now (threads that end while we read are left out)."""
    out: Snapshot = {}
    base = f"{proc}/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"{base}/{t}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/{t}/schedstat") as f:
                run, wait, slices = parse(f.read())
        except (OSError, ValueError):
            continue
        out[int(t)] = (name, run, wait, slices)
    return out


def delta(before: Snapshot, after: Snapshot, main_tid: int | None = None) -> list[dict[str, Any]]:
    """Per thread name (threads of one name summed; `main_tid` is called "main (event loop)"):
    CPU ms, wait ms, wake-ups and the mean wait per wake-up (ms), busiest first. A thread
    started after `before` counts from zero."""
    rows: dict[str, list[int]] = {}
    for tid, (name, run, wait, slices) in after.items():
        b = before.get(tid)
        r0, w0, s0 = (b[1], b[2], b[3]) if b is not None and b[0] == name else (0, 0, 0)
        key = "main (event loop)" if tid == main_tid else name
        acc = rows.setdefault(key, [0, 0, 0, 0])
        acc[0] += run - r0
        acc[1] += wait - w0
        acc[2] += slices - s0
        acc[3] += 1
    out: list[dict[str, Any]] = []
    for name, (run, wait, slices, n) in rows.items():
        out.append({"thread": name, "threads": n, "cpu_ms": round(run / 1e6, 1),
                    "wait_ms": round(wait / 1e6, 1), "wakeups": slices,
                    "wait_per_wakeup_ms": round(wait / slices / 1e6, 3) if slices > 0 else None})
    out.sort(key=lambda r: -r["cpu_ms"])
    return out
