"""Synthesis in worker processes: a sentence in, its loudness-adjusted 48 kHz float32 PCM out.

The tick thread shares the server's GIL with whatever Python runs beside it. Reading espeak-ng's
WAV stream, resampling it with PyAV, measuring loudness with numpy/scipy and reading the cache
are all Python-level work, so in threads they delay the tick (`loa bench tts`, under_load). In
a worker process they compete for a CPU core at most, never for the GIL: the server's side of a
sentence is one pickled call and one bytes object back.

The pool is small and fixed (`workers` processes for normal items, one more reserved for
emergencies, so an alert never waits behind a long bulletin), forked from a clean forkserver
that imported numpy, PyAV and scipy once (no fork of a threaded server), started with the
server: each worker reads a sentence in each espeak-ng voice once (voice data in the page
cache, the resampler and the loudness filter run once) before `loa serve` serves, not on the
first sentence of the first emergency. They run below the server's priority
(streamer.tts.priority: SCHED_BATCH at nice 10); the emergency worker also checks and cuts
the texts (normalisation). Each worker reads and writes the same on-disk
cache (streamer.tts.cache: one file per sentence, written by rename, its size cap shared).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.tts.engines import TtsError

if TYPE_CHECKING:
    from streamer.tts.engines import TtsEngine
    from streamer.tts.service import TtsService

__all__ = ["SynthesisProcesses"]

log = logging.getLogger("loa.tts")

#: per worker process: the service that renders (engines, cache, loudness), built once
_WORKER: dict[str, Any] = {}


#: a short sentence read once in each voice when a worker starts
WARM_SENTENCE = "Xin chào bà con."


def _init_worker(cache_dir: str | None, cache_max: int, loudness_target: float | None,
                 urgent: bool = False, barrier: Any = None) -> None:
    from streamer.tts import engines, priority
    engines.CHILD_PRIORITY = None   # espeak-ng inherits this worker's policy
    from streamer.tts.cache import TtsCache
    from streamer.tts.service import TtsService
    svc = _WORKER["svc"] = TtsService(cache=TtsCache(cache_dir, cache_max),
                                      loudness_target=loudness_target)
    _WORKER["barrier"] = barrier
    # the first sentence after start costs what a later one does: espeak-ng's program and each
    # Vietnamese voice's data are read from disk once (page cache), PyAV's resampler and the
    # loudness filter run once. Straight from the engine: nothing of this goes in the cache.
    t = time.perf_counter()
    try:
        e = svc.espeak
        for voice in e.voices:
            pcm = np.concatenate(list(e.synthesize(WARM_SENTENCE, voice, 1.0)))
            svc.gain(pcm)
    except Exception as e:   # espeak-ng missing or broken: the first real sentence says so
        log.warning("TTS worker warm-up failed: %r", e)
    _WORKER["warm_ms"] = round((time.perf_counter() - t) * 1000, 1)
    # synthesis runs far ahead of playout: the server's threads come first
    # (streamer.tts.priority). Lowered after the imports and the warm-up, which are part of the
    # server's start (at nice 19 on a busy machine they took 15 s and more).
    _WORKER["priority"] = priority.lower(priority.URGENT_WORKER if urgent else priority.WORKER)


def _warm() -> tuple[int, str, float]:
    """(pid, priority, warm-up ms) of the worker that runs it. Each normal worker's warming
    call waits at a barrier for the others', so they land on distinct workers: `ready` means
    every worker ran its warm-up, not one worker twice."""
    barrier = _WORKER.get("barrier")
    if barrier is not None:
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            pass
    return os.getpid(), str(_WORKER.get("priority")), float(_WORKER.get("warm_ms", 0.0))


def _render(engine: TtsEngine, sentence: str, voice: str, rate: float,
            deadline_s: float | None) -> tuple[bool, bytes | str]:
    """(True, gained float32 PCM bytes) or (False, the engine's message)."""
    svc: TtsService = _WORKER["svc"]
    try:
        pcm = svc.render_sentence(sentence, engine, voice, rate, deadline_s)
        gained = (pcm * np.float32(svc.gain(pcm))).astype(np.float32, copy=False)
    except TtsError as e:
        return False, e.message
    return True, gained.tobytes()


def _prepare_text(text: str, max_chars: int) -> tuple[bool, str, str, tuple[str, ...]]:
    """A text checked, normalised and cut into sentences: (True, text, words, sentences) or
    (False, code, message, ()). Tens of milliseconds of pure Python per 2,000 characters: done
    here, it never holds the server's GIL while the tick waits for it."""
    from streamer.tts.text import TextError, check_text, normalize, sentences
    try:
        checked = check_text(text, max_chars)
        return True, checked, normalize(checked), tuple(sentences(checked))
    except TextError as e:
        return False, e.code, e.message, ()


class SynthesisProcesses:
    def __init__(self, workers: int, cache_dir: str | None, cache_max: int,
                 loudness_target: float | None) -> None:
        # forkserver: one clean process (no thread of the server, no fork of a threaded
        # server) imports numpy, PyAV and scipy once, and each worker is forked from it:
        # the workers' start costs one interpreter's imports, not three (on a loaded machine
        # three spawned workers took 8 s and more, all of it before the server answers)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["streamer.tts.procpool", "streamer.tts.service"])
        args = (cache_dir, cache_max, loudness_target)
        self.workers = max(1, workers)
        barrier = ctx.Barrier(self.workers) if self.workers > 1 else None
        self._normal = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                           initializer=_init_worker,
                                           initargs=(*args, False, barrier))
        self._urgent = ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,
                                           initargs=(*args, True, None))
        # spawn them now (server start), not on the first sentence
        self._warming = [self._normal.submit(_warm) for _ in range(self.workers)]
        self._warming.append(self._urgent.submit(_warm))
        self._warming_done = False

    @property
    def ready(self) -> bool:
        """Every worker has started and warmed up (imports, espeak-ng's voices): until then a
        sentence renders in-process rather than wait a second or two for a spawning worker
        (an alert right after start). `loa serve` waits for it before it serves
        (`wait_ready`)."""
        if self._warming and all(f.done() for f in self._warming):
            self._warming_done = True
        return self._warming_done

    def wait_ready(self, timeout: float) -> bool:
        """Block until `ready` or `timeout` seconds (False then, or if a worker failed)."""
        done, _ = wait(self._warming, timeout)
        return len(done) == len(self._warming) and self.ready and all(
            f.exception() is None for f in self._warming)

    def workers_info(self, timeout: float = 30.0) -> list[tuple[int, str, float]]:
        """(pid, priority, warm-up ms) per worker, once they run (tests, the bench, the log)."""
        return sorted({f.result(timeout) for f in self._warming})

    def pids(self, timeout: float = 30.0) -> list[int]:
        """The workers' process ids, once they run (tests, the bench)."""
        return sorted({w[0] for w in self.workers_info(timeout)})

    def submit(self, engine: TtsEngine, sentence: str, voice: str, rate: float,
               deadline_s: float | None, urgent: bool = False
               ) -> Future[tuple[bool, bytes | str]]:
        pool = self._urgent if urgent else self._normal
        return pool.submit(_render, engine, sentence, voice, rate, deadline_s)

    def prepare_text(self, text: str, max_chars: int, timeout: float = 30.0
                     ) -> tuple[bool, str, str, tuple[str, ...]]:
        """`_prepare_text` in the worker kept for emergencies (SCHED_BATCH nice 10: it is not
        starved on a busy machine, and is idle but for alerts). Blocking, the GIL free."""
        return self._urgent.submit(_prepare_text, text, max_chars).result(timeout)

    def render(self, engine: TtsEngine, sentence: str, voice: str, rate: float,
               deadline_s: float | None, urgent: bool = False) -> np.ndarray:
        """The sentence's gained PCM (blocking: the calling thread waits, the GIL free).
        Raises TtsError for the engine's failures; BrokenProcessPool and pickling errors
        propagate (the caller renders in-process instead)."""
        # a worker past any deadline is stuck: give up on it rather than wait forever
        wait = None if deadline_s is None else deadline_s + 30.0
        ok, out = self.submit(engine, sentence, voice, rate, deadline_s, urgent).result(wait)
        if not ok:
            raise TtsError(str(out))
        assert isinstance(out, bytes)
        pcm = np.frombuffer(out, dtype=np.float32)
        if pcm.size == 0:
            raise TtsError(f"{engine.name} produced no audio for a sentence")
        return pcm

    def close(self) -> None:
        for p in (self._normal, self._urgent):
            p.shutdown(wait=False, cancel_futures=True)
