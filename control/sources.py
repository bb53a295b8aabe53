"""From an API request body to a source factory the engine can open (and re-open part-way)."""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
import os
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from streamer.ingest.base import MediaError, Source
from streamer.ingest.sequence import Part, SequenceSource, SkipSource
from streamer.mixer.arbitration import Level


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["file"]
    path: str = Field(min_length=1, max_length=4096)


class MediaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["media"]
    id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")


class ToneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["tone"]
    freq_hz: float = Field(1000.0, gt=10, lt=20_000)
    seconds: float = Field(3.0, gt=0, le=24 * 3600)
    amplitude_dbfs: float = Field(-16.0, ge=-60, le=0)


class ChimeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["chime"]


class SirenSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["siren"]
    seconds: float = Field(6.0, gt=0, le=600)


SourceSpec = Annotated[Union[FileSpec, MediaSpec, ToneSpec, ChimeSpec, SirenSpec],
                      Field(discriminator="kind")]


class BroadcastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zones: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1,
                                                                              max_length=10_000)
    level: Literal["background", "normal", "priority", "emergency"] = "normal"
    mode: Literal["preempt", "duck", "mix"] = "preempt"
    source: SourceSpec
    gain_db: float = Field(0.0, ge=-40, le=12)
    attention: bool | None = None  # default: on for emergency
    attention_kind: Literal["chime", "siren"] | None = None
    repeat: int = Field(1, ge=1, le=50)
    repeat_pause_s: float = Field(2.0, ge=0, le=600)
    id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")

    @property
    def level_enum(self) -> Level:
        return Level.parse(self.level)


def _tone_factory(spec: ToneSpec):
    from streamer.ingest.tones import ToneSource

    def make(start_s: float) -> Source:
        return SkipSource(ToneSource(freq_hz=spec.freq_hz, seconds=spec.seconds,
                                     amplitude_dbfs=spec.amplitude_dbfs), start_s) \
            if start_s > 0 else ToneSource(freq_hz=spec.freq_hz, seconds=spec.seconds,
                                           amplitude_dbfs=spec.amplitude_dbfs)
    return make, spec.seconds


def _skip(make_inner):
    def make(start_s: float) -> Source:
        src = make_inner()
        return SkipSource(src, start_s) if start_s > 0 else src
    return make


def attention_part(kind: str) -> Part:
    from streamer.ingest.tones import ChimeSource, SirenSource
    if kind == "siren":
        probe = SirenSource(seconds=6.0)
        return Part(_skip(lambda: SirenSource(seconds=6.0)), _length(probe), "attention")
    probe = ChimeSource()
    return Part(_skip(lambda: ChimeSource()), _length(probe), "attention")


def _length(src: Source) -> float:
    d = getattr(src, "duration_s", None)
    if d is None:
        d = getattr(src, "seconds", None)
    return float(d) if d else 3.0


_ANALYSIS: "OrderedDict[tuple, tuple]" = OrderedDict()
_ANALYSIS_LOCK = threading.Lock()
_ANALYSIS_MAX = 512


def analyse(path: str, loudness_target: float | None):
    """(MediaInfo, measured LUFS or None) for a file, cached by (path, size, mtime): an alert
    that replays the same recording must not decode it twice before it can air. A changed file
    has a new key, so it is probed again."""
    from streamer.ingest.file import probe
    from streamer.mixer.loudness import measure_file
    try:
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns, loudness_target is not None)
    except OSError:
        key = None
    if key is not None:
        with _ANALYSIS_LOCK:
            hit = _ANALYSIS.get(key)
            if hit is not None:
                _ANALYSIS.move_to_end(key)
                return hit
    info = probe(path)  # raises MediaError with a message for users
    measured = None
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


def file_factory(path: str, loudness_target: float | None):
    """Probe (raises MediaError) and measure a file; runs off the event loop."""
    from streamer.ingest.file import FileSource
    info, measured = analyse(path, loudness_target)

    def make(start_s: float) -> Source:
        return FileSource(path, loudness_target_lufs=loudness_target, measured_lufs=measured,
                          start_s=start_s)
    return make, info, measured


def media_factory(media: dict, loudness_target: float | None):
    """A library item: probed and measured at upload, so nothing to measure again here."""
    from streamer.ingest.file import FileSource
    path, measured = media["path"], media.get("loudness_lufs")

    def make(start_s: float) -> Source:
        return FileSource(path, loudness_target_lufs=loudness_target, measured_lufs=measured,
                          start_s=start_s)
    return make


def build_source(req: BroadcastRequest, loudness_target: float | None,
                 default_attention: str, media: dict | None = None) -> tuple:
    """Returns (factory, description, duration_s). Blocking: call in a worker thread.
    `media` is the library row when the source is {"kind": "media"}."""
    s = req.source
    desc: dict = {}
    if isinstance(s, MediaSpec):
        if media is None:
            raise MediaError(f"no media with id {s.id!r}")
        analyse(media["path"], None)  # still there and readable (cached while unchanged)
        make = media_factory(media, loudness_target)
        duration = media.get("duration_s")
        desc = {"media_id": media["id"], "title": media.get("title") or media.get("filename"),
                "language": media.get("language"), "format": media.get("format"),
                "duration_s": duration, "loudness_lufs": media.get("loudness_lufs")}
    elif isinstance(s, FileSpec):
        path = os.path.abspath(s.path)
        make, info, measured = file_factory(path, loudness_target)
        duration = info.duration_s
        desc = {"path": path, "format": info.format_name, "codec": info.codec_name,
                "duration_s": info.duration_s, "sample_rate": info.sample_rate,
                "channels": info.channels,
                "loudness_lufs": round(measured, 2) if measured is not None else None}
    elif isinstance(s, ToneSpec):
        make, duration = _tone_factory(s)
        desc = {"freq_hz": s.freq_hz, "seconds": s.seconds}
    elif isinstance(s, ChimeSpec):
        part = attention_part("chime")
        make, duration = part.factory, part.duration_s
    else:
        from streamer.ingest.tones import SirenSource
        make, duration = _skip(lambda: SirenSource(seconds=s.seconds)), s.seconds
    attention = req.attention
    if attention is None:
        attention = req.level_enum == Level.EMERGENCY and default_attention != "none"
    kind = req.attention_kind or (default_attention if default_attention != "none" else "chime")
    if not attention and req.repeat == 1:
        return make, desc, duration
    from streamer.ingest.tones import SilenceSource
    parts: list[Part] = []
    if attention:
        parts.append(attention_part(kind))
    content_len = duration or 0.0
    for i in range(req.repeat):
        if i > 0 and req.repeat_pause_s > 0:
            pause = req.repeat_pause_s
            parts.append(Part(_skip(lambda p=pause: SilenceSource(seconds=p)), pause, "pause"))
        parts.append(Part(make, content_len, f"message {i + 1}"))
    total = sum(p.duration_s for p in parts)
    desc = dict(desc, attention=kind if attention else None, repeat=req.repeat,
                repeat_pause_s=req.repeat_pause_s)
    return (lambda start_s: SequenceSource(parts, start_s, kind=s.kind)), desc, total
