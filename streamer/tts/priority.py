"""CPU priority of speech synthesis: it runs far ahead of playout (espeak-ng reads a sentence
at 100-300x real time), so it takes the CPU only when the server's own threads do not want it.

Why it matters although the tick thread runs SCHED_FIFO: the tick also needs the server's GIL.
When a thread of the server holds the GIL (the event loop, a handler) and is preempted by a
synthesis process on the same core, the tick waits for the GIL until that thread runs again;
real-time priority does not pass to the GIL's holder. A synthesis worker at nice 10 still
gets ~10 % of a contended core in slices of milliseconds, and the worker inherits the server's
nice value first (`loa bench` runs the server at nice -10: the old `os.nice(10)` left the
workers at 0, level with everything else on the machine).

So (absolute, not relative to the server's nice value):
- the synthesis workers (normal items, and the one kept for emergencies, which also checks
  and cuts every text, see streamer.tts.service): SCHED_BATCH at nice 10 — never preempts a
  waking thread, yet gets ~10 % of a core other processes keep busy. Lower shares starve the
  first sentence of an item, which someone is waiting for: measured with `loa bench tts` under
  load 5-6, nice 19 put the warm-cache API → first packet p95 at 82 ms (target 50);
  SCHED_IDLE (~0.3 %) would even fall behind playout;
- espeak-ng children inherit their worker's policy; spawned by the server itself (in-process
  synthesis: no worker processes, or before they run) they get SCHED_BATCH at nice 19 (nice 19
  alone where the policy is refused).
Lowering one's own priority needs no privilege on Linux. Pure policy + thin OS calls: `apply`
takes the OS functions as parameters so the unit tests see what is asked without doing it.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["WORKER", "URGENT_WORKER", "CHILD", "lower"]

#: (policy name, nice value) per role
WORKER = ("SCHED_BATCH", 10)
URGENT_WORKER = ("SCHED_BATCH", 10)
CHILD = ("SCHED_BATCH", 19)


def lower(role: tuple[str, int], pid: int = 0, *,
          setscheduler: Callable[[int, int, Any], None] | None = None,
          setpriority: Callable[[int, int, int], None] | None = None) -> str:
    """Give process `pid` (0: this one) the role's policy and nice value. Returns what took
    ("SCHED_BATCH nice 19", "SCHED_IDLE nice 19", "nice 19" or "unchanged"); never raises."""
    policy_name, nice = role
    setscheduler = setscheduler or getattr(os, "sched_setscheduler", None)
    setpriority = setpriority or getattr(os, "setpriority", None)
    policy = getattr(os, policy_name, None)
    took = []
    if setscheduler is not None and policy is not None:
        try:
            setscheduler(pid, policy, os.sched_param(0))
            took.append(policy_name)
        except (OSError, AttributeError):
            pass
    # under SCHED_BATCH the nice value sets the share; it still counts if the policy is refused
    if setpriority is not None:
        try:
            setpriority(os.PRIO_PROCESS, pid, nice)
            took.append(f"nice {nice}")
        except (OSError, AttributeError):
            pass
    return " ".join(took) or "unchanged"
