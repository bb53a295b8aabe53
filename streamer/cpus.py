"""CPUs reserved for the real-time path (`engine_cpus`): the tick thread and the fan-out sender
processes on their own cores, everything else of the server on the others.

Why: the tick and the senders run SCHED_FIFO. On a core they keep 90 % busy (5,000 receivers),
any normal task that shares the core (speech synthesis, the event loop, a handler) is starved,
and the kernel's fair server (Linux >= 6.12; before it, RT throttling at
sched_rt_runtime_us) then runs those starved tasks for up to 50 ms a second *above* every
SCHED_FIFO thread: the tick waits 10-50 ms about once a second (`loa bench tts`, late ticks by
cause "cpu_wait", streamer.tickprobe). Real-time priority cannot fix that; keeping normal work
off the tick's core does.

With `engine_cpus = [0]` on a machine (or cgroup) that allows more CPUs, `loa serve` pins its
main thread to the *other* allowed CPUs before it starts any thread or process, so every thread
and child it starts later inherits them (the event loop, the TTS pool threads, the synthesis
workers and their espeak-ng children, decoders); the tick thread and the sender processes pin
themselves to `engine_cpus`. Empty (the default): nothing is pinned, the kernel places
everything. Pure decisions (`split`) plus thin OS calls that never raise.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable

__all__ = ["split", "pin", "reserve", "RESERVED"]

log = logging.getLogger("loa.cpus")

#: the CPUs the real-time path was given in this process (empty: not pinned). Set by `reserve`.
RESERVED: frozenset[int] = frozenset()


def split(engine_cpus: Iterable[int], allowed: Iterable[int]
          ) -> tuple[frozenset[int], frozenset[int], str | None]:
    """(CPUs for the real-time path, CPUs for everything else, a warning or None).

    Only allowed CPUs count; when the request leaves no other CPU (or names none that is
    allowed), nothing is pinned: both sets empty, and the warning says why."""
    want = frozenset(int(c) for c in engine_cpus)
    ok = frozenset(int(c) for c in allowed)
    if not want:
        return frozenset(), frozenset(), None
    eng = want & ok
    if not eng:
        return frozenset(), frozenset(), (
            f"engine_cpus {sorted(want)}: none of them is allowed to this process "
            f"(allowed: {sorted(ok)}); nothing pinned")
    rest = ok - eng
    if not rest:
        return frozenset(), frozenset(), (
            f"engine_cpus {sorted(eng)} leave no other CPU to this process (allowed: "
            f"{sorted(ok)}); nothing pinned")
    warn = None
    if eng != want:
        warn = f"engine_cpus {sorted(want - eng)} not allowed to this process; using {sorted(eng)}"
    return eng, rest, warn


def pin(cpus: Iterable[int]) -> bool:
    """Pin the calling thread (Linux: sched_setaffinity(0) is per thread) to `cpus`; nothing
    when empty. Never raises: a refusal is logged and False returned."""
    cs = set(cpus)
    if not cs or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, cs)
        return True
    except OSError as e:
        log.warning("cannot pin to CPUs %s: %s", sorted(cs), e)
        return False


def reserve(engine_cpus: Iterable[int]) -> frozenset[int]:
    """At server start, before any thread or process: keep the calling (main) thread, and so
    all it starts later, off `engine_cpus`. Returns the CPUs the real-time path should pin
    itself to (empty: not pinned); also kept in `RESERVED`."""
    global RESERVED
    if not hasattr(os, "sched_getaffinity"):
        return frozenset()
    eng, rest, warn = split(engine_cpus, os.sched_getaffinity(0))
    if warn:
        log.warning("%s", warn)
    if eng and pin(rest):
        RESERVED = eng
        log.info("real-time path on CPU(s) %s, the rest of the server on %s",
                 sorted(eng), sorted(rest))
        return eng
    RESERVED = frozenset()
    return RESERVED
