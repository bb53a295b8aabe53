"""A bounded pool of decoder threads shared by every file source.

One thread per playing file let a single account start hundreds of decoders (1,809 threads,
the tick starved of the GIL). Here a fixed number of workers fill every source's bounded
queue in turns: a worker takes the most urgent job (highest broadcast level first, then the
one with the fewest frames queued, then the oldest), decodes up to `budget` frames or until
that job's queue is full, and puts it back. A job whose queue is full is parked until its
consumer has read it down to half (`wake`), so a paused (preempted) item costs no worker.

A job is anything with `_pump(budget) -> RUN | FULL | DONE`, `_room() -> bool`,
`decode_priority: int` and `_queued() -> int` (FileSource). The pool starts its threads on the
first job, so building sources (and unit tests) starts none.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
from typing import Any, Protocol

log = logging.getLogger("loa.decode")

RUN, FULL, DONE = 0, 1, 2

#: frames (20 ms each) one turn may decode before the worker looks for a more urgent job
DEFAULT_BUDGET = 25


class DecodeJob(Protocol):
    decode_priority: int
    _pool_parked: bool
    _pool_running: bool

    def _pump(self, budget: int) -> int: ...

    def _room(self) -> bool: ...

    def _queued(self) -> int: ...


class DecodePool:
    def __init__(self, workers: int = 2, budget: int = DEFAULT_BUDGET,
                 name: str = "loa-decode") -> None:
        self.workers = max(1, int(workers))
        self.budget = max(1, int(budget))
        self.name = name
        self._cond = threading.Condition()
        self._ready: list[tuple[int, int, int, Any]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.jobs = 0       # submitted and not done
        self.turns = 0      # pumps run (for tests and metrics)

    # ------------------------------------------------------------------ jobs
    def submit(self, job: DecodeJob) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            self._ensure_threads()
            self.jobs += 1
            job._pool_parked = False
            job._pool_running = False
            self._push(job)

    def wake(self, job: DecodeJob) -> None:
        """A parked job's queue has room again (called by its consumer, e.g. the tick)."""
        with self._cond:
            if job._pool_parked:
                job._pool_parked = False
                self._push(job)

    def wait_idle(self, job: DecodeJob, timeout: float) -> bool:
        """Wait until no worker is pumping `job` (a source closing its decoder)."""
        with self._cond:
            return self._cond.wait_for(lambda: not job._pool_running, timeout)

    @property
    def threads(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"workers": self.workers, "threads": self.threads, "jobs": self.jobs,
                    "ready": len(self._ready), "turns": self.turns}

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    # ------------------------------------------------------------------ internals
    def _push(self, job: DecodeJob) -> None:  # holding _cond
        heapq.heappush(self._ready, (-job.decode_priority, job._queued(), next(self._seq), job))
        self._cond.notify()

    def _ensure_threads(self) -> None:  # holding _cond
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        try:
            from streamer.clock import name_os_thread
            name_os_thread(threading.current_thread().name[:15])
        except Exception:  # naming is cosmetic
            pass
        while True:
            with self._cond:
                while not self._ready and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = heapq.heappop(self._ready)[3]
                job._pool_running = True
            state = DONE
            try:
                state = job._pump(self.budget)
            except Exception:  # a job handles its own errors; this is a bug
                log.exception("decoder job %r failed", job)
            with self._cond:
                self.turns += 1
                job._pool_running = False
                if state == RUN:
                    self._push(job)
                elif state == FULL:
                    job._pool_parked = True
                    if job._room():  # read down meanwhile: the consumer saw it running
                        job._pool_parked = False
                        self._push(job)
                else:
                    self.jobs -= 1
                self._cond.notify_all()  # wait_idle


_DEFAULT: DecodePool | None = None
_DEFAULT_LOCK = threading.Lock()


def default_workers() -> int:
    env = os.environ.get("LOA_DECODE_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(2, min(4, os.cpu_count() or 2))


def default_pool() -> DecodePool:
    """The process's shared pool (made on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = DecodePool(default_workers())
        return _DEFAULT


def configure(workers: int) -> DecodePool:
    """Set the shared pool's size (the server does it from its settings before any file plays;
    a pool already running keeps its threads and grows to `workers` on the next job)."""
    pool = default_pool()
    with pool._cond:
        pool.workers = max(1, int(workers))
    return pool
