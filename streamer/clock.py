"""The 20 ms tick.

Tick k is due at start + k * period, computed from the monotonic clock, never by sleeping a
fixed 20 ms (which drifts by the work done each tick and by every late wake-up). A late tick runs
at once and the next one is still due at its own target, so lateness never accumulates. If the
process was stalled for longer than `max_catchup` periods (a suspended VM, a stop signal), the
missed ticks are skipped and counted rather than fired in a burst.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from streamer.audio import FRAME_NS
from streamer.tickprobe import LateTickProbe


class TickSchedule:
    """Sans-IO tick bookkeeping: time comes in as a parameter."""

    def __init__(self, start_ns: int, period_ns: int = FRAME_NS, max_catchup: int = 10) -> None:
        self.start_ns = start_ns
        self.origin_ns = start_ns   # the phase moves (align) stay within half a period of it
        self.period_ns = period_ns
        self.max_catchup = max_catchup
        self.k = 0  # index of the next tick to run
        self.late_ticks = 0
        self.skipped_ticks = 0
        self.max_late_ns = 0
        self.phase_shifts = 0

    def deadline(self, k: int | None = None) -> int:
        return self.start_ns + (self.k if k is None else k) * self.period_ns

    def due(self, now_ns: int) -> bool:
        return now_ns >= self.deadline()

    def begin_tick(self, now_ns: int) -> int:
        """Call when about to run the due tick; returns its index (what the tick is for)."""
        late = now_ns - self.deadline()
        if late > self.max_catchup * self.period_ns:
            behind = late // self.period_ns
            self.skipped_ticks += int(behind)
            self.k += int(behind)
            late = now_ns - self.deadline()
        if late > self.period_ns // 2:
            self.late_ticks += 1
        if late > self.max_late_ns:
            self.max_late_ns = late
        k = self.k
        self.k += 1
        return k

    def sleep_ns(self, now_ns: int) -> int:
        return max(0, self.deadline() - now_ns)

    @property
    def phase_ns(self) -> int:
        """Where the ticks fall within the period (deadline mod period, monotonic ns)."""
        return self.start_ns % self.period_ns

    def align(self, phase_ns: int, tolerance_ns: int = 0) -> int:
        """Move the ticks' phase to `phase_ns` (mod the period). The ticks stay within half a
        period of where they were first scheduled (`origin_ns`), whatever the moves before, and
        the period is unchanged: the clock never drifts, no tick is gained or lost. Returns the
        move (ns, + later), 0 when the phase is already within `tolerance_ns`.

        For a live talker: a frame that reaches the receive queue just after a tick waits
        almost a whole period for the next; lining the ticks up with the talker's arrivals
        before the first packet of a talk spurt saves that (after it, the receivers' playout
        has anchored on the old phase and absorbs the move)."""
        p = self.period_ns
        cur = (phase_ns - self.start_ns) % p
        if min(cur, p - cur) <= tolerance_ns:
            return 0
        off = (phase_ns - self.origin_ns) % p
        if off >= p // 2:
            off -= p
        d = self.origin_ns + off - self.start_ns
        self.start_ns += d
        self.phase_shifts += 1
        return d


#: real-time priorities of the threads on the live voice path (SCHED_FIFO, 1..99): the tick
#: above the WebRTC receive thread, so a tick that wakes while a frame is being decoded runs at once
TICK_FIFO_PRIORITY = 10
RECEIVE_FIFO_PRIORITY = 9
#: the event loop's thread while a live talker is connected (it receives their packets): below
#: every other thread on the voice path, above every normal thread
LOOP_FIFO_PRIORITY = 5


def raise_thread_priority(fifo_priority: int = TICK_FIFO_PRIORITY, nice: bool = True) -> str:
    """Give the calling thread real-time scheduling (SCHED_FIFO `fifo_priority`) where permitted
    (root / CAP_SYS_NICE), else nice -10 (`nice`), else leave it; on Linux both apply to the
    calling thread only, and threads it starts later do not inherit the real-time policy
    (SCHED_RESET_ON_FORK). Returns what it got: "SCHED_FIFO", "nice -10" or "normal". For
    short, bounded work that must run when it wakes (the tick, a live talker's receive thread):
    a loaded machine otherwise runs it milliseconds late (issue 17)."""
    import os
    try:
        policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(0, policy, os.sched_param(fifo_priority))
        return "SCHED_FIFO"
    except (AttributeError, PermissionError, OSError):
        pass
    if not nice:
        return "normal"
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        return "nice -10"
    except (AttributeError, PermissionError, OSError):
        return "normal"


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux: prctl PR_SET_NAME, 15 bytes), so `top -H`,
    /proc/PID/task/*/comm and the benchmarks' CPU accounting show which thread burns what."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class TickThread:
    """Runs `on_tick(k)` every period in a dedicated thread (lateness is in `schedule`).

    The tick lives in its own thread so an HTTP handler, a database call or a garbage collection
    pause in the event loop never makes it late; commands reach it through thread-safe queues.
    """

    def __init__(self, on_tick: Callable[[int], None], period_ns: int = FRAME_NS,
                 name: str = "loa-tick", realtime: bool = True,
                 cpus: tuple[int, ...] = ()) -> None:
        self.on_tick = on_tick
        self.realtime = realtime
        #: the CPUs the tick pins itself to (streamer.cpus: engine_cpus); () not pinned
        self.cpus = tuple(cpus)
        self.pinned = False
        self.priority = "normal"
        self.period_ns = period_ns
        self.schedule: TickSchedule | None = None
        self.probe: LateTickProbe | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @staticmethod
    def _raise_priority() -> str:
        """Give the tick thread real-time scheduling where permitted (raise_thread_priority)."""
        return raise_thread_priority(TICK_FIFO_PRIORITY)

    def _run(self) -> None:
        name_os_thread(self._thread.name)
        self.priority = self._raise_priority() if self.realtime else "normal"
        if self.cpus:
            from streamer import cpus
            self.pinned = cpus.pin(self.cpus)
        sched = self.schedule = TickSchedule(time.monotonic_ns(), self.period_ns)
        probe = self._make_probe()
        stop = self._stop
        try:
            while not stop.is_set():
                now = time.monotonic_ns()
                wait = sched.sleep_ns(now)
                if wait > 0:
                    # time.sleep, not stop.wait: an Event wait allocates a lock and takes a
                    # condition per call, ~40 us more CPU per wake-up here (measured: 85 vs
                    # 125 us a tick on this VM). A stop is seen within one period.
                    time.sleep(min(wait, self.period_ns) / 1e9)
                    continue
                late = sched.late_ticks
                deadline = sched.deadline()
                k = sched.begin_tick(now)
                if probe is not None and sched.late_ticks != late:
                    try:   # why it is late, looked at before the tick lets the others run
                        probe.late(now, now - deadline, deadline)
                    except Exception:   # a diagnostic never stops the clock
                        pass
                try:
                    self.on_tick(k)
                except BaseException as exc:  # keep the clock alive; the engine logs and counts
                    self.error = exc
                    import logging
                    logging.getLogger("loa.clock").exception("tick %d failed", k)
                if probe is not None:
                    probe.mark(now, time.monotonic_ns())
        finally:
            if probe is not None:
                probe.close()

    def _make_probe(self) -> LateTickProbe | None:
        """The late-tick attribution (streamer.tickprobe), unless LOA_TICK_PROBE=0 or not on
        Linux."""
        import os
        if os.environ.get("LOA_TICK_PROBE", "1") == "0" or not sys.platform.startswith("linux"):
            return None
        p = LateTickProbe(threading.get_native_id())
        self.probe = p if p.available else None
        return self.probe
