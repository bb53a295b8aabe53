"""Load on purpose for a benchmark run: busy-looping processes at normal priority.

A province server is loaded during a typhoon (alerts, TTS, many listeners) exactly when live
voice matters most; `loa bench latency --cpu-hog N` runs N of these for the whole run, so that
the numbers say what a talker gets on a busy machine and not only on an idle one.

Each hog is its own process in its own session (`start_new_session`): with the kernel's
autogroup on (Debian's default) all processes of one session share one scheduling group, and N
hogs in the bench's own session would weigh no more than one process; in separate sessions they
compete with the server as N other programs would. They never raise their priority, never touch
the network and end with the bench (`stop`; on their own when the bench is gone, or after
`max_s`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

#: the busy loop itself: pure Python arithmetic, bounded in time, and it ends as soon as the
#: bench that started it is gone (its parent changes), however the bench ended
_LOOP = ("import os, time\n"
         "end = time.monotonic() + {max_s}\n"
         "x = 0\n"
         "while time.monotonic() < end and os.getppid() == {parent}:\n"
         "    for _ in range(10000):\n"
         "        x += 1\n")


class CpuHog:
    def __init__(self, processes: int, max_s: float = 600.0) -> None:
        if not 0 <= processes <= 64:
            raise ValueError("processes must be 0..64")
        self.processes = processes
        self.max_s = max_s
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> CpuHog:
        code = _LOOP.format(max_s=float(self.max_s), parent=os.getpid())
        for _ in range(self.processes):
            self._procs.append(subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        return self

    @property
    def running(self) -> int:
        return sum(1 for p in self._procs if p.poll() is None)

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self._procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self._procs = []

    def __enter__(self) -> CpuHog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
