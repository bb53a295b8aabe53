"""What a broadcast request may ask to play (the pydantic models of POST /broadcasts), and the
mapping from a request to a source *description* (streamer.port: FileAudio, Programme...).

Sans-IO: probing and measuring a file is the caller's (control/broadcasts.py runs
`streamer.ingest.catalogue.analyse` in a thread and hands the result in); turning descriptions
into Sources is the engine's catalogue.
"""
from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamer.mixer.arbitration import Level
from streamer.port import (ChimeAudio, FileAudio, Programme, SirenAudio, SourceDescription,
                           ToneAudio, TtsAudio)


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


class TtsSpec(BaseModel):
    """Text read aloud (voice None: the server's default; engine None: the default engine).
    The engine side checks the text (empty, too long, control characters, unreadable script)
    and the voice, and refuses before anything airs."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["tts"]
    text: str = Field(max_length=1_000_000)
    voice: str | None = Field(None, min_length=1, max_length=100)
    engine: str | None = Field(None, min_length=1, max_length=100)
    rate: float = Field(1.0, ge=0.5, le=2.0)


class RelaySpec(BaseModel):
    """An upstream live stream (Icecast/HTTP MP3, AAC, Ogg or HLS): control/playout.py checks
    the URL (http(s) only, no private or local address unless `relay_allow_hosts` allows it:
    422 invalid_url). `fallback` plays during dead air: "tone", "none" or a media id (default:
    the `relay_fallback` setting); `silence_s` of dead air raise a notice (default
    `relay_silence_s`); `seconds` ends it (None: until stopped)."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["relay"]
    url: str = Field(min_length=1, max_length=2048)
    seconds: float | None = Field(None, gt=0, le=24 * 3600)
    silence_s: float | None = Field(None, ge=1, le=3600)
    fallback: str | None = Field(None, min_length=1, max_length=64,
                                 pattern=r"^(tone|none|[0-9a-f]+)$")


PlaylistItem = Annotated[MediaSpec | TtsSpec | ToneSpec | ChimeSpec | SirenSpec,
                         Field(discriminator="kind")]


class PlaylistSpec(BaseModel):
    """Media/TTS items in order (or shuffled once when it starts); `slot_s`: it fills a slot
    of that length, cut at its end with a `fade_s` fade (control/playout.py)."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["playlist"]
    items: list[PlaylistItem] = Field(min_length=1, max_length=500)
    shuffle: bool = False
    slot_s: float | None = Field(None, gt=0, le=24 * 3600)
    fade_s: float = Field(3.0, ge=0, le=60)


SourceSpec = Annotated[FileSpec | MediaSpec | ToneSpec | ChimeSpec | SirenSpec | TtsSpec
                      | RelaySpec | PlaylistSpec,
                      Field(discriminator="kind")]


class VariantSpec(BaseModel):
    """One language's version of a broadcast: a text read aloud or a recording (Bahnar, Chăm,
    Hrê... are recordings: no engine reads them). Each zone airs the variants of its languages
    in its order (control/variants.py)."""
    model_config = ConfigDict(extra="forbid")
    language: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    source: Annotated[TtsSpec | MediaSpec, Field(discriminator="kind")]


def _source_or_variants(schema: dict[str, Any]) -> None:
    """The document says what the model takes: `source`, or `variants` (whose first source
    stands for it), or both; not `source` required whatever."""
    schema["required"] = [r for r in schema.get("required", []) if r != "source"]
    schema["anyOf"] = [{"required": ["source"]},
                       {"required": ["variants"], "properties": {"variants": {"type": "array"}}}]


class BroadcastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_source_or_variants)
    zones: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1,
                                                                              max_length=10_000)
    level: Literal["background", "normal", "priority", "emergency"] = "normal"
    mode: Literal["preempt", "duck", "mix"] = "preempt"
    source: SourceSpec
    #: language variants (without `source`: the first variant's source stands for it)
    variants: list[VariantSpec] | None = Field(None, min_length=1, max_length=10)
    gain_db: float = Field(0.0, ge=-40, le=12)
    attention: bool | None = None  # default: on for emergency
    attention_kind: Literal["chime", "siren"] | None = None
    repeat: int = Field(1, ge=1, le=50)
    repeat_pause_s: float = Field(2.0, ge=0, le=600)
    id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")

    @property
    def level_enum(self) -> Level:
        return Level.parse(self.level)

    @model_validator(mode="before")
    @classmethod
    def _source_from_variants(cls, data: Any) -> Any:
        if (isinstance(data, dict) and "source" not in data and isinstance(data.get("variants"), list)
                and data["variants"] and isinstance(data["variants"][0], dict)):
            data = dict(data, source=data["variants"][0].get("source"))
        return data

    @model_validator(mode="after")
    def _one_variant_per_language(self) -> BroadcastRequest:
        langs = [v.language for v in self.variants or []]
        if len(set(langs)) != len(langs):
            raise ValueError("variants: one variant per language")
        return self


def describe_request(req: BroadcastRequest, default_attention: str, *,
                     media: dict | None = None, analysis: tuple[Any, float | None] | None = None,
                     described: tuple[SourceDescription, dict[str, Any]] | None = None
                     ) -> tuple[SourceDescription, dict[str, Any]]:
    """(source description, details shown with the broadcast). `media` is the library row of a
    {"kind": "media"} source; `analysis` is `catalogue.analyse(path)` of a {"kind": "file"} one;
    `described` is the source already described (a zone's variants: control/variants.py).
    An emergency gets the attention signal unless told otherwise; repeats make a Programme."""
    if described is not None:
        desc, details = described
        return _programme(req, default_attention, desc, details)
    desc, details = describe_source(req.source, media=media, analysis=analysis)
    return _programme(req, default_attention, desc, details)


def describe_source(s: Any, *, media: dict | None = None,
                    analysis: tuple[Any, float | None] | None = None
                    ) -> tuple[SourceDescription, dict[str, Any]]:
    """One source spec → (description, details)."""
    desc: SourceDescription
    details: dict[str, Any]
    if isinstance(s, MediaSpec):
        assert media is not None
        duration = media.get("duration_s")
        desc = FileAudio(media["path"], loudness_lufs=media.get("loudness_lufs"),
                         duration_s=duration)
        details = {"media_id": media["id"], "title": media.get("title") or media.get("filename"),
                   "language": media.get("language"), "format": media.get("format"),
                   "duration_s": duration, "loudness_lufs": media.get("loudness_lufs")}
    elif isinstance(s, FileSpec):
        assert analysis is not None
        info, measured = analysis
        path = os.path.abspath(s.path)
        desc = FileAudio(path, loudness_lufs=measured, duration_s=info.duration_s)
        details = {"path": path, "format": info.format_name, "codec": info.codec_name,
                   "duration_s": info.duration_s, "sample_rate": info.sample_rate,
                   "channels": info.channels,
                   "loudness_lufs": round(measured, 2) if measured is not None else None}
    elif isinstance(s, ToneSpec):
        desc = ToneAudio(s.freq_hz, s.seconds, s.amplitude_dbfs)
        details = {"freq_hz": s.freq_hz, "seconds": s.seconds}
    elif isinstance(s, TtsSpec):
        desc = TtsAudio(s.text, voice=s.voice, rate=s.rate, engine=s.engine)
        details = {"title": s.text[:80], "voice": s.voice, "engine": s.engine, "rate": s.rate,
                   "chars": len(s.text), "text": s.text}
    elif isinstance(s, ChimeSpec):
        desc, details = ChimeAudio(), {}
    else:
        desc, details = SirenAudio(s.seconds), {}
    return desc, dict(details, kind=s.kind)


def _programme(req: BroadcastRequest, default_attention: str, desc: SourceDescription,
               details: dict[str, Any]) -> tuple[SourceDescription, dict[str, Any]]:
    attention = req.attention
    if attention is None:
        attention = req.level_enum == Level.EMERGENCY and default_attention != "none"
    kind = req.attention_kind or (default_attention if default_attention != "none" else "chime")
    if attention or req.repeat > 1:
        desc = Programme(desc, attention=kind if attention else None, repeat=req.repeat,
                         repeat_pause_s=req.repeat_pause_s)
        details = dict(details, attention=kind if attention else None, repeat=req.repeat,
                       repeat_pause_s=req.repeat_pause_s)
    return desc, details
