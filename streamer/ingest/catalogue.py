"""The catalogue: the one place that turns a source *description* (`streamer.port.FileAudio`,
`ToneAudio`, `Programme`, `LiveAudio`, ...) into a `Source` the engine can read.

A description is plain data (it crosses a process or a network in a command); the catalogue is
the engine side's knowledge of how to play it:

- `factory(desc)` returns `make(start_s) -> Source`, which opens the audio `start_s` seconds in
  (a preempted item resumes where it was cut). Making a factory does no I/O; calling `make`
  builds the Source (cheap), and `Source.start()` opens files and starts decoder threads, which
  the runtime does off the tick.
- `analyse(path, loudness_target)` probes and measures a file (cached by path, size and mtime):
  blocking, so whoever fills a `FileAudio`'s `loudness_lufs`/`duration_s` calls it in a thread.
- Live inputs (a phone's WebRTC track, an encoder's RTP stream) are registered by id
  (`add_live`), and a `LiveAudio(input_id)` names them.
"""
from __future__ import annotations

import math
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from streamer.audio import FRAME_MS, FRAME_SAMPLES
from streamer.ingest.base import MediaError, Source
from streamer.ingest.sequence import Part, SequenceSource, SkipSource
from streamer.mixer.arbitration import Level
from streamer.port import (ChimeAudio, FileAudio, LiveAudio, Programme, SilenceAudio,
                           SirenAudio, SourceDescription, ToneAudio, TtsAudio)
from streamer.port import PlaylistAudio, RelayAudio

if TYPE_CHECKING:
    from streamer.tts.service import TtsService
    from streamer.tts.source import Timeline
    from streamer.ingest.tones import SynthSource

__all__ = ["Catalogue", "SourceFactory", "analyse", "attention_part", "duration_of",
           "ATTENTION_KINDS"]

SourceFactory = Callable[[float], Source]
#: measure(need_s) -> (seconds, complete): a text's length found out (streamer.ingest.sequence)
Measure = Callable[[float], tuple[float, bool]]

ATTENTION_KINDS = ("chime", "siren")
SIREN_ATTENTION_S = 6.0


def _skip(make_inner: Callable[[], Source]) -> SourceFactory:
    """A factory for a source that cannot seek: it drops the first `start_s` as they arrive."""
    def make(start_s: float) -> Source:
        src = make_inner()
        return SkipSource(src, start_s) if start_s > 0 else src
    return make


def _seek(make_inner: Callable[[], SynthSource]) -> SourceFactory:
    """A factory for a rendered source (tone, siren, silence, chime): it starts at `start_s`
    directly (its position counts from the item's start), nothing before it is rendered."""
    def make(start_s: float) -> Source:
        src = make_inner()
        if start_s > 0:
            src.seek(start_s)
        return src
    return make


def _known(seconds: float | None) -> Callable[[], float | None]:
    return lambda: seconds


_CHIME_S: list[float] = []


def _chime_seconds() -> float:
    if not _CHIME_S:
        from streamer.ingest.tones import ChimeSource
        _CHIME_S.append(float(ChimeSource().seconds))
    return _CHIME_S[0]


def attention_part(kind: str) -> Part:
    """The attention signal played before a message: "chime" (default) or "siren"."""
    from streamer.ingest.tones import ChimeSource, SirenSource
    if kind == "siren":
        return Part(_skip(lambda: SirenSource(seconds=SIREN_ATTENTION_S)), SIREN_ATTENTION_S,
                    "attention")
    return Part(_skip(lambda: ChimeSource()), _chime_seconds(), "attention")


def duration_of(desc: SourceDescription) -> float | None:
    """How long a description plays, when known (None: a file not measured, or live)."""
    if isinstance(desc, FileAudio):
        return desc.duration_s
    if isinstance(desc, (ToneAudio, SirenAudio, SilenceAudio)):
        return float(desc.seconds)
    if isinstance(desc, ChimeAudio):
        return _chime_seconds()
    if isinstance(desc, Programme):
        message = duration_of(desc.message)
        if message is None and isinstance(desc.message, TtsAudio):
            return None   # a text's length is known once it is rendered
        message = message or 0.0
        total = message * desc.repeat + max(0.0, desc.repeat_pause_s) * (desc.repeat - 1)
        if desc.attention:
            total += attention_part(desc.attention).duration_s
        return total
    if isinstance(desc, PlaylistAudio):
        items = [duration_of(p) for p in desc.items]
        known = None if any(n is None for n in items) else sum(n or 0.0 for n in items)
        if desc.slot_s is not None:
            return desc.slot_s   # its items repeat until the slot's end
        return known
    if isinstance(desc, RelayAudio):
        return desc.seconds
    return None


# ------------------------------------------------------------------ file analysis (cached)
_ANALYSIS: OrderedDict[tuple[Any, ...], tuple[Any, float | None]] = OrderedDict()
_ANALYSIS_LOCK = threading.Lock()
_ANALYSIS_MAX = 512


def analysed(path: str, loudness_target: float | None) -> tuple[Any, float | None] | None:
    """`analyse`'s answer if it is cached for the file as it is now, else None; never decodes
    (one stat: an urgent start checks this on the event loop)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, loudness_target is not None)
    with _ANALYSIS_LOCK:
        return _ANALYSIS.get(key)


def analyse(path: str, loudness_target: float | None) -> tuple[Any, float | None]:
    """(MediaInfo, measured LUFS or None) for a file, cached by (path, size, mtime): an alert
    that replays the same recording must not decode it twice before it can air. A changed file
    has a new key, so it is probed again. Blocking (decodes up to 120 s): call in a thread.
    Raises MediaError (message for users) when the file cannot be played."""
    from streamer.ingest.file import probe
    from streamer.mixer.loudness import measure_file
    try:
        st = os.stat(path)
        # the inode too: /proc/self/fd/N (a pinned file, control/pinned.py) names another
        # file once N is reused
        key: tuple[Any, ...] | None = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                       loudness_target is not None)
    except OSError:
        key = None
    if key is not None:
        with _ANALYSIS_LOCK:
            hit = _ANALYSIS.get(key)
            if hit is not None:
                _ANALYSIS.move_to_end(key)
                return hit
    info = probe(path)  # raises MediaError with a message for users
    measured: float | None = None
    if loudness_target is not None:
        try:
            measured = measure_file(path, max_seconds=120.0)
        except MediaError:
            raise
        except Exception:
            measured = None
        if measured is not None and not math.isfinite(measured):
            measured = None
    if key is not None:
        with _ANALYSIS_LOCK:
            _ANALYSIS[key] = (info, measured)
            while len(_ANALYSIS) > _ANALYSIS_MAX:
                _ANALYSIS.popitem(last=False)
    return info, measured


# ------------------------------------------------------------------ the catalogue
class Catalogue:
    """Descriptions → Sources, with this node's loudness target and its live inputs.

    Thread-safe: live inputs are added from the event loop or an RTP thread, factories are made
    on the submitting thread, sources opened by the runtime."""

    def __init__(self, loudness_target: float | None = None,
                 tts: TtsService | None = None, relay_allow_hosts: tuple[str, ...] = ()) -> None:
        self.loudness_target = loudness_target
        #: hosts, addresses or networks a relay may reach besides public addresses (checked
        #: where it connects: streamer/ingest/relay_http.py)
        self.relay_allow_hosts = tuple(relay_allow_hosts)
        self._live: dict[str, Source] = {}
        self._lock = threading.Lock()
        #: streamer.tts.service.TtsService (engines, cache, pool); espeak-ng alone by default
        self._tts = tts
        #: how far before a cut the core reopens a fork (a TTS item maps it back to the cut)
        self.resume_rewind_s = 2.0

    @property
    def tts(self) -> TtsService:
        if self._tts is None:
            from streamer.tts.service import TtsService
            self._tts = TtsService(loudness_target=self.loudness_target)
        return self._tts

    # -- live inputs ------------------------------------------------------------------------
    def add_live(self, source: Source) -> str:
        """Register a live Source; returns the `input_id` a `LiveAudio` names it by."""
        input_id = "in-" + secrets.token_hex(6)
        with self._lock:
            self._live[input_id] = source
        return input_id

    def drop_live(self, input_id: str) -> None:
        with self._lock:
            self._live.pop(input_id, None)

    def live_input(self, input_id: str) -> Source:
        with self._lock:
            src = self._live.get(input_id)
        if src is None:
            raise MediaError(f"no live input {input_id!r} (already ended or never registered)")
        return src

    @property
    def live_inputs(self) -> int:
        with self._lock:
            return len(self._live)

    # -- descriptions ------------------------------------------------------------------------
    def factory(self, desc: SourceDescription, priority: int = 0) -> SourceFactory:
        """`make(start_s) -> Source` for a description. No I/O here (a live input must be
        registered already: MediaError otherwise). `priority` (the broadcast's level) orders
        the shared decoder pool: an emergency's file is decoded before lower levels'."""
        from streamer.ingest.tones import ChimeSource, SilenceSource, SirenSource, ToneSource
        if isinstance(desc, FileAudio):
            return self._file(desc, priority)
        if isinstance(desc, TtsAudio):
            return self._speech(desc, urgent=priority >= int(Level.EMERGENCY))
        if isinstance(desc, ToneAudio):
            d = desc
            return _seek(lambda: ToneSource(freq_hz=d.freq_hz, seconds=d.seconds,
                                            amplitude_dbfs=d.amplitude_dbfs))
        if isinstance(desc, ChimeAudio):
            return _seek(lambda: ChimeSource())
        if isinstance(desc, SirenAudio):
            seconds = desc.seconds
            return _seek(lambda: SirenSource(seconds=seconds))
        if isinstance(desc, SilenceAudio):
            seconds = desc.seconds
            return _seek(lambda: SilenceSource(seconds=seconds))
        if isinstance(desc, LiveAudio):
            src = self.live_input(desc.input_id)
            return lambda start_s: src   # live audio cannot seek: always the one input
        if isinstance(desc, Programme):
            return self._programme(desc, priority)
        if isinstance(desc, RelayAudio):
            return self._relay(desc, priority)
        if isinstance(desc, PlaylistAudio):
            return self._playlist(desc, priority)
        raise MediaError(f"cannot play a {type(desc).__name__}")

    def open(self, desc: SourceDescription, start_s: float = 0.0) -> Source:
        """The Source for a description, `start_s` seconds in (not started)."""
        return self.factory(desc)(start_s)

    def _file(self, desc: FileAudio, priority: int = 0) -> SourceFactory:
        from streamer.ingest.file import FileSource
        path, measured, target = desc.path, desc.loudness_lufs, self.loudness_target

        def make(start_s: float) -> Source:
            return FileSource(path, loudness_target_lufs=target, measured_lufs=measured,
                              start_s=start_s, priority=priority, expected_s=desc.duration_s)
        return make

    def _speech(self, desc: TtsAudio, urgent: bool) -> SourceFactory:
        return self._speech_timed(desc, urgent)[0]

    def _speech_timed(self, desc: TtsAudio, urgent: bool
                      ) -> tuple[SourceFactory, Callable[[], float | None], Measure]:
        """Text read aloud (streamer.tts): checked and cut into normalised sentences here (pure
        CPU), synthesised by the source in the TTS pool. An emergency (`urgent`) falls back to
        espeak-ng when its engine fails or is late. With the factory: its length once every
        sentence is rendered (None before), and a function that finds the length out
        (`_measure_of`)."""
        from streamer.tts.source import Timeline, TtsSource
        from streamer.tts.text import TextError, TextRefused
        svc = self.tts
        try:
            prep = svc.prepare(desc.text, desc.engine, desc.voice, desc.rate)
        except TextError as e:
            raise TextRefused(e.code, e.message) from None
        timeline = Timeline(len(prep.sentences))
        hint = self.resume_rewind_s

        def make(start_s: float) -> Source:
            return TtsSource(svc, prep.sentences, prep.engine, prep.voice, prep.rate,
                             urgent=urgent, start_s=start_s, timeline=timeline,
                             resume_hint_s=hint)
        return make, lambda: timeline.known_s, self._measure_of(
            prep.sentences, prep.engine, prep.voice, prep.rate, timeline, urgent)

    def _measure_of(self, sentences: Sequence[str], engine_name: str, voice: str, rate: float,
                    timeline: Timeline, urgent: bool) -> Measure:
        """measure(need_s) -> (seconds, complete): the text's length as its source reads it
        (whole frames per sentence), its sentences rendered in order as the source renders them
        until they pass `need_s` (complete False then: the text is longer than that). The TTS
        cache answers what was rendered before (a rejoin after a restart, an item prepared
        ahead); a sentence already known (a resume inside the text) costs nothing. The
        timeline is filled on the way, so the text's own source starts at the right sentence.
        Blocking: off the tick."""
        svc = self.tts

        def measure(need_s: float) -> tuple[float, bool]:
            engine = svc.engine(engine_name)
            deadline = None if engine is svc.espeak else svc.deadline_s
            need = need_s * 1000 / FRAME_MS
            total = 0
            for i, sentence in enumerate(sentences):
                if total > need:
                    return total * FRAME_MS / 1000.0, False
                n = timeline.frames[i]
                if n is None:
                    pcm = svc.render_gained(sentence, engine, voice, rate, deadline, urgent)
                    n = max(1, -(-int(pcm.shape[0]) // FRAME_SAMPLES))
                    timeline.frames[i] = n
                total += n
            return total * FRAME_MS / 1000.0, True
        return measure

    def _relay(self, desc: RelayAudio, priority: int = 0) -> SourceFactory:
        """An upstream live stream (streamer.ingest.relay), with its fallback item (a recording
        or a tone) opened ahead for dead air."""
        from streamer.ingest.relay import RelaySource, check_url
        check_url(desc.url)
        fallback: SourceFactory | None = None
        if desc.fallback is not None:
            if isinstance(desc.fallback, (LiveAudio, RelayAudio, PlaylistAudio)):
                raise MediaError("a relay's fallback must be a recording or a tone")
            fallback = self.factory(desc.fallback, priority)

        def make(start_s: float) -> Source:
            return RelaySource(desc.url, fallback=fallback, silence_s=desc.silence_s,
                               reconnect_max_s=desc.reconnect_max_s, seconds=desc.seconds,
                               start_s=start_s, allow_hosts=self.relay_allow_hosts)
        return make

    def _playlist(self, desc: PlaylistAudio, priority: int = 0) -> SourceFactory:
        """Items one after another (reopenable part-way: a joined or resumed playlist lands in
        the right item); with a slot, repeated until the slot's end and cut there with a fade
        (streamer.ingest.playlist)."""
        from streamer.ingest.playlist import SlotSource
        if not desc.items:
            raise MediaError("a playlist needs at least one item")
        # a text's length is learned as it is rendered (issue 14's language variants are
        # playlists too): a reopened playlist places its start with what is known by then, and
        # an item not yet measured counts as endless, so a resume inside it lands in it
        # (joined in progress, a text not rendered yet is measured first: SequenceSource.place)
        made: list[tuple[SourceFactory, Callable[[], float | None], Measure | None]] = []
        for item in desc.items:
            if isinstance(item, (LiveAudio, RelayAudio, PlaylistAudio)):
                raise MediaError("a playlist's items must be recordings, texts or tones")
            if isinstance(item, TtsAudio):
                made.append(self._speech_timed(item, urgent=priority >= int(Level.EMERGENCY)))
            else:
                made.append((self.factory(item, priority), _known(duration_of(item)), None))
        slot, fade = desc.slot_s, desc.fade_s

        def make(start_s: float) -> Source:
            parts = []
            for i, (factory, length, measure) in enumerate(made):
                n = length()
                parts.append(Part(factory, n if n is not None else math.inf, f"item {i + 1}",
                                  measure))
            if slot is None:
                return SequenceSource(parts, start_s, kind="playlist")
            # a playlist that fills a slot repeats its items until the slot's end
            seq = SequenceSource(parts, start_s, kind="playlist", loop=True)
            return SlotSource(seq, slot, fade, start_s=start_s)
        return make

    def _programme(self, desc: Programme, priority: int = 0) -> SourceFactory:
        """[attention] message [pause message]...: a SequenceSource, reopenable part-way.

        A text's length is learned as it is rendered (shared by its repeats and by every
        source reopened from this factory): a reopened programme places its start with what is
        known by then, and a text not yet fully rendered counts as endless, so a resume inside
        it lands in it (at the start of the sentence that holds the cut, streamer.tts.source),
        never in a later repeat or past the item's end."""
        from streamer.ingest.tones import SilenceSource
        if isinstance(desc.message, (Programme, LiveAudio)):
            raise MediaError("a programme's message must be a recording or a tone")
        length: Callable[[], float | None]
        measure: Measure | None = None
        if isinstance(desc.message, TtsAudio):
            message, length, measure = self._speech_timed(
                desc.message, urgent=priority >= int(Level.EMERGENCY))
        else:
            message, length = self.factory(desc.message, priority), \
                _known(duration_of(desc.message) or 0.0)
        head: list[Part] = []
        if desc.attention:
            if desc.attention not in ATTENTION_KINDS:
                raise MediaError(f"unknown attention signal {desc.attention!r}")
            head.append(attention_part(desc.attention))
        pause = desc.repeat_pause_s
        silence = _skip(lambda: SilenceSource(seconds=pause))
        repeats = max(1, desc.repeat)
        kind = type(desc.message).kind

        def make(start_s: float) -> Source:
            n = length()
            content = n if n is not None else math.inf
            parts = list(head)
            for i in range(repeats):
                if i > 0 and pause > 0:
                    parts.append(Part(silence, pause, "pause"))
                parts.append(Part(message, content, f"message {i + 1}", measure))
            return SequenceSource(parts, start_s, kind=kind)
        return make
