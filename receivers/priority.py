"""Raised scheduling priority for the reference receiver's playout.

The receiver's 20 ms playout timer runs on the thread that runs its event loop; at normal
priority, on a busy machine, that timer fires late and every late firing is added to what the
loudspeaker hears (issue 17: one bench run in three went over 150 ms mouth → speaker under heavy
load for that alone). As the server's tick thread does (streamer/clock.py `TickThread`):
SCHED_FIFO where permitted (root or CAP_SYS_NICE), else nice -10, else normal priority, silently.
"""
from __future__ import annotations

import os

#: the real-time priority the server's tick thread takes too
FIFO_PRIORITY = 10


def raise_playout_priority() -> str:
    """Raise the calling thread (call it from the thread that will run the playout loop,
    before other threads start: on Linux both settings are per thread and new threads inherit
    them). Returns what it got: "SCHED_FIFO", "nice -10" or "normal"."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
        return "SCHED_FIFO"
    except (AttributeError, PermissionError, OSError):
        pass
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) <= -10:
            return "nice -10"
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        return "nice -10"
    except (AttributeError, PermissionError, OSError):
        return "normal"
