"""Synthesis in worker processes: a sentence in, its loudness-adjusted 48 kHz float32 PCM out.

The tick thread shares the server's GIL with whatever Python runs beside it. Reading espeak-ng's
WAV stream, resampling it with PyAV, measuring loudness with numpy/scipy and reading the cache
are all Python-level work, so in threads they delay the tick (`loa bench tts`, under_load). In
a worker process they compete for a CPU core at most, never for the GIL: the server's side of a
sentence is one pickled call and one bytes object back.

The pool is small and fixed (`workers` processes for normal items, one more reserved for
emergencies, so an alert never waits behind a long bulletin), `spawn`ed (no fork of a threaded
server) and started when the service is built, at server start: the workers import numpy, PyAV
and scipy once, not on the first sentence of the first emergency. Each worker reads and writes
the same on-disk cache (streamer.tts.cache: one file per sentence, written by rename).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
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


def _init_worker(cache_dir: str | None, cache_max: int, loudness_target: float | None) -> None:
    try:
        os.nice(10)   # synthesis runs far ahead of playout: the tick's core comes first
    except OSError:
        pass
    from streamer.tts.cache import TtsCache
    from streamer.tts.service import TtsService
    _WORKER["svc"] = TtsService(cache=TtsCache(cache_dir, cache_max),
                                loudness_target=loudness_target)


def _warm() -> int:
    return os.getpid()


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


class SynthesisProcesses:
    def __init__(self, workers: int, cache_dir: str | None, cache_max: int,
                 loudness_target: float | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        args = (cache_dir, cache_max, loudness_target)
        self.workers = max(1, workers)
        self._normal = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                           initializer=_init_worker, initargs=args)
        self._urgent = ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,
                                           initargs=args)
        # spawn them now (server start), not on the first sentence
        self._warming = [self._normal.submit(_warm) for _ in range(self.workers)]
        self._warming.append(self._urgent.submit(_warm))
        self._warming_done = False

    @property
    def ready(self) -> bool:
        """Every worker has started (imports done): until then a sentence renders in-process
        rather than wait a second or two for a spawning worker (an alert right after start)."""
        if self._warming and all(f.done() for f in self._warming):
            self._warming_done = True
        return self._warming_done

    def pids(self, timeout: float = 30.0) -> list[int]:
        """The workers' process ids, once they run (tests, the bench)."""
        return sorted({int(f.result(timeout)) for f in self._warming})

    def submit(self, engine: TtsEngine, sentence: str, voice: str, rate: float,
               deadline_s: float | None, urgent: bool = False
               ) -> Future[tuple[bool, bytes | str]]:
        pool = self._urgent if urgent else self._normal
        return pool.submit(_render, engine, sentence, voice, rate, deadline_s)

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
