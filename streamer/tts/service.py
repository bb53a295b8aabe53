"""The configured engines, the checks a TTS request passes before anything airs, the synthesis
pool, and rendering (a sentence for the source, a whole text for previews and the library).

The pool is small and bounded: `workers` threads take normal work in order; one more thread is
reserved for emergencies, so an alert never queues behind a long bulletin or a slow cloud call.
Threads start on first use. Synthesis never runs on the tick or on the event loop.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamer.audio import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, db_to_gain
# imported here, not on first use: scipy's import costs ~1.5 s, which must not land on the first
# sentence of the first emergency
from streamer.mixer.loudness import integrated_loudness
from streamer.tts.cache import TtsCache
from streamer.tts.engines import EspeakEngine, TtsEngine, TtsError
from streamer.tts.text import MAX_CHARS, TextError, check_text, normalize, sentences

if TYPE_CHECKING:
    from streamer.tts.procpool import SynthesisProcesses

__all__ = ["TtsService", "SynthesisPool", "Prepared", "RATE_MIN", "RATE_MAX"]

log = logging.getLogger("loa.tts")

RATE_MIN, RATE_MAX = 0.5, 2.0
MAX_NORMALISE_DB = 20.0
PEAK_CEILING = db_to_gain(-1.0)
PREPARED_MEMO = 64    # texts checked and cut
GAIN_MEMO = 4096      # sentences' gains


class SynthesisPool:
    """`workers` threads for normal work, one reserved for urgent work; bounded queues (a full
    queue refuses with TtsError rather than growing)."""

    def __init__(self, workers: int = 2, max_queued: int = 256) -> None:
        self.workers = max(1, workers)
        self._normal: queue.Queue[Callable[[], None]] = queue.Queue(max_queued)
        self._urgent: queue.Queue[Callable[[], None]] = queue.Queue(max_queued)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        if self._threads:
            return
        with self._lock:
            if self._threads:
                return
            threads = [threading.Thread(target=self._run, args=(self._urgent,),
                                        name="loa-tts-urgent", daemon=True)]
            threads += [threading.Thread(target=self._run, args=(self._normal,),
                                         name=f"loa-tts-{i}", daemon=True)
                        for i in range(self.workers)]
            for t in threads:
                t.start()
            self._threads = threads

    @staticmethod
    def _run(q: queue.Queue[Callable[[], None]]) -> None:
        while True:
            job = q.get()
            try:
                job()
            except Exception:  # a job reports its own failures; this is a bug
                log.exception("TTS job failed")

    def submit(self, job: Callable[[], None], urgent: bool = False) -> None:
        self._ensure()
        try:
            (self._urgent if urgent else self._normal).put_nowait(job)
        except queue.Full:
            raise TtsError("the speech synthesiser is overloaded: too many texts waiting") \
                from None


@dataclass(frozen=True)
class Prepared:
    """A text checked and cut: what the source reads and the preview shows."""
    text: str
    words: str
    sentences: tuple[str, ...]
    engine: str
    voice: str
    rate: float


class TtsService:
    """The engines by name (espeak-ng always among them), the default engine and voice, the
    deadline a cloud engine must answer by, the cache, the loudness target and the pool."""

    def __init__(self, engines: Iterable[TtsEngine] = (), *, default_engine: str = "espeak",
                 default_voice: str | None = None, deadline_s: float = 2.0,
                 cache: TtsCache | None = None, max_chars: int = MAX_CHARS,
                 loudness_target: float | None = -16.0, workers: int = 2,
                 processes: int = 0) -> None:
        self.engines: dict[str, TtsEngine] = {}
        for e in engines:
            self.engines[e.name] = e
        found = [e for e in self.engines.values() if isinstance(e, EspeakEngine)]
        espeak = found[0] if found else EspeakEngine()
        self.engines.setdefault(espeak.name, espeak)
        #: the offline engine every emergency can fall back to
        self.espeak: TtsEngine = espeak
        if default_engine not in self.engines:
            raise ValueError(f"the default TTS engine {default_engine!r} is not configured")
        self.default_engine = default_engine
        self.default_voice = default_voice
        self.deadline_s = deadline_s
        self.cache = cache or TtsCache(None)
        self.max_chars = max_chars
        self.loudness_target = loudness_target
        self.pool = SynthesisPool(workers)
        #: the request path checks a text (POST /broadcasts) and the catalogue cuts it again:
        #: a 2,000-character bulletin normalises in ~35 ms, so it is done once per text
        self._prepared: OrderedDict[tuple[str, str | None, str | None, float], Prepared] = \
            OrderedDict()
        #: a cached sentence's gain (its loudness measured once: ~25 ms of numpy per sentence)
        self._gains: OrderedDict[str, float] = OrderedDict()
        self._memo_lock = threading.Lock()
        #: synthesis, resampling and loudness in worker processes (streamer.tts.procpool), off
        #: the server's GIL, once `start_processes` ran (server start); 0: in the pool's
        #: threads (tests, the CLI)
        self.process_count = max(0, processes)
        self.processes: SynthesisProcesses | None = None

    # ------------------------------------------------------------------ checks
    def engine(self, name: str | None) -> TtsEngine:
        e = self.engines.get(name or self.default_engine)
        if e is None:
            raise TextError("unknown_engine", f"no TTS engine {name!r} (engines: "
                            f"{', '.join(sorted(self.engines))})")
        return e

    def voices(self) -> dict[str, list[str]]:
        return {n: list(e.voices) for n, e in self.engines.items()}

    def resolve(self, engine: str | None, voice: str | None) -> tuple[TtsEngine, str]:
        """The engine and voice to use. A voice named without an engine picks the engine that
        has it (the default engine first)."""
        if engine is None and voice is not None:
            order = [self.default_engine] + sorted(n for n in self.engines
                                                   if n != self.default_engine)
            for n in order:
                if voice in self.engines[n].voices:
                    return self.engines[n], voice
            raise TextError("unknown_voice", f"no TTS voice {voice!r} (voices: "
                            + "; ".join(f"{n}: {', '.join(e.voices)}"
                                        for n, e in sorted(self.engines.items())) + ")")
        e = self.engine(engine)
        if voice is None:
            dv = self.default_voice
            return e, dv if dv is not None and dv in e.voices else e.default_voice
        if voice not in e.voices:
            raise TextError("unknown_voice", f"engine {e.name} has no voice {voice!r} "
                            f"(voices: {', '.join(e.voices)})")
        return e, voice

    def prepare(self, text: str, engine: str | None = None, voice: str | None = None,
                rate: float = 1.0) -> Prepared:
        """Check everything about a request (TextError naming the problem) and cut it into
        normalised sentences. Pure CPU, no synthesis."""
        if not (isinstance(rate, (int, float)) and math.isfinite(rate)
                and RATE_MIN <= rate <= RATE_MAX):
            raise TextError("invalid_rate", f"rate must be between {RATE_MIN} and {RATE_MAX}")
        key = (text, engine, voice, float(rate))
        with self._memo_lock:
            hit = self._prepared.get(key)
            if hit is not None:
                self._prepared.move_to_end(key)
                return hit
        out = self._prepare(text, engine, voice, rate)
        with self._memo_lock:
            self._prepared[key] = out
            while len(self._prepared) > PREPARED_MEMO:
                self._prepared.popitem(last=False)
        return out

    def _prepare(self, text: str, engine: str | None, voice: str | None,
                 rate: float) -> Prepared:
        cut = self._cut_in_worker(text)
        if cut is None:
            text = check_text(text, self.max_chars)
            words: str | None = None
            parts = tuple(sentences(text))
        else:
            text, words, parts = cut
        e, v = self.resolve(engine, voice)
        if not parts:
            raise TextError("empty_text", "the text has no words to read")
        return Prepared(text, normalize(text) if words is None else words, parts, e.name, v,
                        float(rate))

    def _cut_in_worker(self, text: str) -> tuple[str, str, tuple[str, ...]] | None:
        """(text, words, sentences) checked and normalised in a synthesis worker process (the
        server's GIL stays free for the tick: ~25-70 ms of Python per 2,000 characters, which
        made a tick late when another process preempted the thread holding the GIL); None when
        there are no workers (yet): then it is done here. Raises TextError."""
        procs = self.processes
        if procs is None or not procs.ready:
            return None
        # the worker may be busy with an emergency's sentence (a cloud engine waits up to its
        # deadline): past what the normalisation itself takes, the text is cut here instead
        wait = 0.25 + len(text) * 5e-5
        try:
            ok, a, b, parts = procs.prepare_text(text, self.max_chars, wait)
        except TimeoutError:
            return None
        except Exception as e:  # a broken pool: the text is cut here
            log.warning("TTS worker could not prepare a text (%r): preparing in-process", e)
            return None
        if not ok:
            raise TextError(a, b)
        return a, b, parts

    # ------------------------------------------------------------------ rendering
    def render_sentence(self, sentence: str, engine: TtsEngine, voice: str, rate: float,
                        deadline_s: float | None = None) -> np.ndarray:
        """One sentence's raw audio (48 kHz mono float32), from the cache or the engine.
        Blocking; raises TtsError."""
        key = self.cache.key(sentence, engine.name, voice, rate)
        hit = self.cache.get(key)
        if hit is not None and hit.size:
            return hit
        chunks = list(engine.synthesize(sentence, voice, rate, deadline_s))
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        if pcm.size == 0:
            raise TtsError(f"{engine.name} produced no audio for a sentence")
        self.cache.put(key, pcm)
        return pcm

    def render_gained(self, sentence: str, engine: TtsEngine, voice: str, rate: float,
                      deadline_s: float | None = None, urgent: bool = False) -> np.ndarray:
        """One sentence at the loudness target (48 kHz mono float32): in a worker process when
        the service has them, else here. Blocking; raises TtsError."""
        procs = self.processes
        if procs is not None and procs.ready:
            try:
                return procs.render(engine, sentence, voice, rate, deadline_s, urgent)
            except TtsError:
                raise
            except TimeoutError:
                raise TtsError(f"{engine.name} did not answer in time", timeout=True) from None
            except Exception as e:  # a broken pool or an engine that cannot be pickled
                log.warning("TTS worker processes unusable (%r): rendering in-process", e)
                self.processes = None
                procs.close()
        pcm = self.render_sentence(sentence, engine, voice, rate, deadline_s)
        key = self.cache.key(sentence, engine.name, voice, rate)
        with self._memo_lock:
            g = self._gains.get(key)
        if g is None:
            g = self.gain(pcm)
            with self._memo_lock:
                self._gains[key] = g
                while len(self._gains) > GAIN_MEMO:
                    self._gains.popitem(last=False)
        return pcm * np.float32(g) if g != 1.0 else pcm

    def start_processes(self) -> None:
        """Spawn the synthesis worker processes (at server start, not on the first item)."""
        if self.processes is not None or self.process_count <= 0:
            return
        from streamer.tts.procpool import SynthesisProcesses
        self.processes = SynthesisProcesses(
            self.process_count, str(self.cache.dir) if self.cache.dir is not None else None,
            self.cache.max_bytes, self.loudness_target)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the worker processes run and are warm (`loa serve` before it serves);
        True at once without them."""
        procs = self.processes
        return procs is None or procs.wait_ready(timeout)

    def close(self) -> None:
        """Stop the worker processes (the server's close)."""
        self.process_count = 0
        if self.processes is not None:
            self.processes.close()
            self.processes = None

    def gain(self, pcm: np.ndarray) -> float:
        """The linear gain that brings a sentence to the loudness target (±20 dB, peaks kept
        under -1 dBFS); 1.0 without a target or for audio too short to measure."""
        if self.loudness_target is None or pcm.size < SAMPLE_RATE // 2:
            g = 1.0
        else:
            lufs = integrated_loudness(pcm, SAMPLE_RATE)
            g = 1.0 if not math.isfinite(lufs) else db_to_gain(
                max(-MAX_NORMALISE_DB, min(MAX_NORMALISE_DB, self.loudness_target - lufs)))
        peak = float(np.max(np.abs(pcm))) if pcm.size else 0.0
        if peak * g > PEAK_CEILING and peak > 0:
            g = PEAK_CEILING / peak
        return g

    def length_s(self, text: str, engine: str | None = None, voice: str | None = None,
                 rate: float = 1.0) -> float:
        """How long the text plays, in seconds, as a TtsSource reads it (whole frames per
        sentence): from the cache, rendering what is not there. Blocking; raises TtsError or
        TextError."""
        p = self.prepare(text, engine, voice, rate)
        e = self.engine(p.engine)
        deadline = None if e is self.espeak else self.deadline_s
        frames = 0
        for s in p.sentences:
            n = self.render_sentence(s, e, p.voice, p.rate, deadline).shape[0]
            frames += max(1, -(-n // FRAME_SAMPLES))
        return frames * FRAME_MS / 1000.0

    def render(self, prepared: Prepared, deadline_s: float | None = None) -> np.ndarray:
        """The whole text, loudness applied per sentence (previews, the media library).
        Blocking; raises TtsError."""
        e = self.engine(prepared.engine)
        out = [self.render_gained(s, e, prepared.voice, prepared.rate, deadline_s)
               for s in prepared.sentences]
        return np.concatenate(out).astype(np.float32, copy=False)
