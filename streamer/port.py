"""The engine's only door: commands in (frozen, serialisable data), typed events out, read-only
status snapshots back.

Everything outside `streamer/` (control, the live page, RTP ingest's broadcast starts, the CLI,
and later a Redis link between nodes) talks to the engine through `EnginePort` and these types
alone. A command is plain data: it names what to play by *describing* the source (`FileAudio`,
`ToneAudio`, `Programme`, `LiveAudio`, ...); the engine's catalogue (`streamer.ingest.catalogue`)
turns a description into a Source, on the engine's side. That is what lets a command cross a
process or a network unchanged.

Every type here round-trips through `to_dict()` / `from_dict()` (JSON-safe dicts with a `type`
tag), which the tests check for every command.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

from streamer.mixer.arbitration import Level
from streamer.zones import Zone, ZoneError

__all__ = [
    "FileAudio", "TtsAudio", "ToneAudio", "ChimeAudio", "SirenAudio", "SilenceAudio", "LiveAudio",
    "Programme", "SourceDescription", "describe", "source_from_dict",
    "RelayAudio", "PlaylistAudio",
    "StartBroadcast", "StopBroadcast", "ReplaceZones", "UpdateZones", "SetDestinations",
    "SetZoneLoss", "AlignTick", "Command", "command_from_dict",
    "EngineEvent", "BroadcastSnapshot", "ZoneSnapshot", "OnAir", "EngineStats",
    "Destination", "EnginePort", "Refused", "UnknownBroadcast", "Conflict", "ZoneError",
    "MODES", "carve_id",
]

MODES = ("preempt", "duck", "mix")


# ------------------------------------------------------------------ errors the port raises
class Refused(Exception):
    """The zones are held (a live talker on a zone, ...): nothing was started."""

    def __init__(self, reason: str, holder: BroadcastSnapshot | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.holder = holder


class UnknownBroadcast(KeyError):
    """No active broadcast with that id (it never existed or has ended)."""

    def __init__(self, broadcast_id: str) -> None:
        super().__init__(broadcast_id)
        self.broadcast_id = broadcast_id

    def __str__(self) -> str:
        return f"no active broadcast with id {self.broadcast_id!r}"


class Conflict(ValueError):
    """The command contradicts the engine's state (a broadcast id already in use, ...)."""


# ------------------------------------------------------------------ source descriptions
_SOURCES: dict[str, type] = {}
_COMMANDS: dict[str, type] = {}


def _source(cls: type) -> type:
    _SOURCES[cls.kind] = cls  # type: ignore[attr-defined]
    return cls


def _command(cls: type) -> type:
    _COMMANDS[cls.type] = cls  # type: ignore[attr-defined]
    return cls


@_source
@dataclass(frozen=True, slots=True)
class FileAudio:
    """An audio file on the engine's machine, already probed and measured by whoever submits
    it: `loudness_lufs` (BS.1770, None if unmeasured) sets its gain to the loudness target."""
    kind: ClassVar[str] = "file"
    path: str
    loudness_lufs: float | None = None
    duration_s: float | None = None


@_source
@dataclass(frozen=True, slots=True)
class ToneAudio:
    kind: ClassVar[str] = "tone"
    freq_hz: float = 1000.0
    seconds: float = 3.0
    amplitude_dbfs: float = -16.0


@_source
@dataclass(frozen=True, slots=True)
class ChimeAudio:
    """The attention chime played before an announcement."""
    kind: ClassVar[str] = "chime"


@_source
@dataclass(frozen=True, slots=True)
class SirenAudio:
    kind: ClassVar[str] = "siren"
    seconds: float = 6.0


@_source
@dataclass(frozen=True, slots=True)
class SilenceAudio:
    kind: ClassVar[str] = "silence"
    seconds: float = 1.0


@_source
@dataclass(frozen=True, slots=True)
class LiveAudio:
    """A live input registered with the engine's catalogue under `input_id` (a phone's WebRTC
    track, an encoder's RTP stream). Live audio cannot pause or rewind: when preempted it is
    told, not paused."""
    kind: ClassVar[str] = "live"
    input_id: str
    via: str = "webrtc"  # "webrtc" | "rtp"


@_source
@dataclass(frozen=True, slots=True)
class TtsAudio:
    """Text read aloud by a speech engine, sentence by sentence (synthesised off the tick, ahead
    of playout). `text` is what the submitter sent; the engine side normalises it (numbers,
    dates, units, abbreviations) before synthesis. `engine` None: the configured default;
    `voice` None: the zone's or the server's default voice."""
    kind: ClassVar[str] = "tts"
    text: str
    voice: str | None = None
    rate: float = 1.0
    engine: str | None = None
    language: str = "vi"


@_source
@dataclass(frozen=True, slots=True)
class Programme:
    """A message with its attention signal and repeats: [attention] message [pause message]...
    `attention` is "chime", "siren" or None."""
    kind: ClassVar[str] = "programme"
    message: SourceDescription
    attention: str | None = None
    repeat: int = 1
    repeat_pause_s: float = 2.0


@_source
@dataclass(frozen=True, slots=True)
class RelayAudio:
    """An upstream live stream (Icecast/HTTP MP3, AAC or Ogg, or HLS) relayed through PyAV:
    reconnected on drops (back-off up to `reconnect_max_s`); after `silence_s` of dead air
    (nothing arriving, or silence) a notice is raised and `fallback` plays until the upstream
    is back. `seconds` None: until stopped; else it ends after that long on air."""
    kind: ClassVar[str] = "relay"
    url: str
    fallback: SourceDescription | None = None
    silence_s: float = 10.0
    reconnect_max_s: float = 10.0
    seconds: float | None = None


@_source
@dataclass(frozen=True, slots=True)
class PlaylistAudio:
    """Items (recordings, texts, tones) one after another, in the order given (a shuffle is
    decided by whoever describes it). `slot_s`: the playlist fills a slot of that length and
    is cut at its end with a `fade_s` fade."""
    kind: ClassVar[str] = "playlist"
    items: tuple[SourceDescription, ...] = ()
    slot_s: float | None = None
    fade_s: float = 3.0


SourceDescription = (FileAudio | ToneAudio | ChimeAudio | SirenAudio | SilenceAudio | LiveAudio
                     | TtsAudio | Programme | RelayAudio | PlaylistAudio)


def _plain(v: Any) -> Any:
    if isinstance(v, Level):
        return v.label
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return describe(cast(SourceDescription, v)) if hasattr(type(v), "kind") else to_plain(v)
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list, frozenset, set)):
        return [_plain(x) for x in v]
    return v


def to_plain(obj: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def describe(src: SourceDescription) -> dict[str, Any]:
    """A source description as a JSON-safe dict (`kind` first)."""
    return {"kind": type(src).kind, **to_plain(src)}


def source_from_dict(d: Mapping[str, Any]) -> SourceDescription:
    d = dict(d)
    kind = d.pop("kind", None)
    cls = _SOURCES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown source kind {kind!r}")
    if cls is Programme:
        d["message"] = source_from_dict(d["message"])
    if cls is RelayAudio and d.get("fallback") is not None:
        d["fallback"] = source_from_dict(d["fallback"])
    if cls is PlaylistAudio:
        d["items"] = tuple(source_from_dict(p) for p in d.get("items", ()))
    return cls(**d)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ commands
@dataclass(frozen=True, slots=True)
class Destination:
    """Where a registered receiver gets its packets (observed, e.g. behind NAT)."""
    host: str
    port: int
    ptime: int = 20       # 20, 40 or 60 ms packets
    redundant: bool = False  # RFC 2198 packets (lossy link)


@_command
@dataclass(frozen=True, slots=True)
class StartBroadcast:
    """Play `source` on `targets` (zone or group ids; a zone reaches its subtree, except a
    target also named in `alone`, which reaches that zone only)."""
    type: ClassVar[str] = "start_broadcast"
    id: str
    targets: tuple[str, ...]
    level: Level
    source: SourceDescription
    mode: str = "preempt"
    gain_db: float = 0.0
    owner: str = ""        # the account (unique): ownership checks
    owner_name: str = ""   # what people see; defaults to owner
    title: str = ""        # what the dashboard and the as-run log call it
    duration_s: float | None = None
    #: what to show about the source (media id, path, format...): JSON-safe, display only
    details: Mapping[str, Any] = field(default_factory=dict)
    #: wall-clock instant (UTC epoch seconds) to go on air: the engine opens the source now
    #: (decoding, synthesis ahead) and holds the broadcast queued until the first tick at or
    #: after it. None or a past instant: at once (a scheduled programme's exact start)
    start_at: float | None = None
    #: where in the item to begin (a scheduled programme joined in progress)
    offset_s: float = 0.0
    #: targets that reach that zone only, not the zones below it (language variants: a parent
    #: zone airs its own sequence while its children air another)
    alone: tuple[str, ...] = ()
    #: some receivers of a zone only, not the whole zone (an alert's polygon or circle): zone id
    #: -> the addresses (host, port) of the receivers to reach there. For as long as the
    #: broadcast lasts they form a zone of their own below that zone (`carve_id(zone, id)`),
    #: which it targets; the zone's other receivers keep their programme, and when it ends
    #: everyone hears the zone's programme again (one RTP stream throughout: the node's
    #: sequence space). The zones named here need not be in `targets`.
    only: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return isinstance(self.source, LiveAudio)

    @property
    def kind(self) -> str:
        """The kind people know it by: file, media, tone, chime, siren, webrtc, rtp."""
        s = self.source
        if isinstance(s, Programme):
            s = s.message
        if isinstance(s, LiveAudio):
            return s.via
        return str(self.details.get("kind") or type(s).kind)


@_command
@dataclass(frozen=True, slots=True)
class StopBroadcast:
    type: ClassVar[str] = "stop_broadcast"
    id: str
    reason: str = "stopped by request"


@_command
@dataclass(frozen=True, slots=True)
class ReplaceZones:
    """The whole zone tree: zones (with their static destinations) and groups."""
    type: ClassVar[str] = "replace_zones"
    zones: tuple[Zone, ...]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@_command
@dataclass(frozen=True, slots=True)
class UpdateZones:
    """Only these zones' static destinations changed (receivers added, moved, retired): no zone
    added, removed or moved, no group changed. The engine re-applies these zones alone."""
    type: ClassVar[str] = "update_zones"
    zones: tuple[Zone, ...]


@_command
@dataclass(frozen=True, slots=True)
class SetDestinations:
    """The registered receivers of a zone, as observed (replaces the zone's previous list)."""
    type: ClassVar[str] = "set_destinations"
    zone: str
    destinations: tuple[Destination, ...]


@_command
@dataclass(frozen=True, slots=True)
class SetZoneLoss:
    """The worst packet loss (whole %) a zone's receivers report; None: nobody reports."""
    type: ClassVar[str] = "set_zone_loss"
    zone: str
    loss_perc: int | None


@_command
@dataclass(frozen=True, slots=True)
class AlignTick:
    """Line the tick's phase up with a live talker's arrivals, before the talk's first packet
    (issue 17): the ticks then fall at `phase_ns` modulo the 20 ms period on this node's
    monotonic clock (`time.monotonic_ns()`), moved by at most half a period either way and only
    when further off than `tolerance_ns`; the period never changes. Meaningful only on the node
    whose receive path measured the phase."""
    type: ClassVar[str] = "align_tick"
    phase_ns: int
    tolerance_ns: int = 2_000_000


Command = (StartBroadcast | StopBroadcast | ReplaceZones | UpdateZones | SetDestinations
           | SetZoneLoss | AlignTick)


def carve_id(zone: str, broadcast_id: str) -> str:
    """The zone a broadcast's `only` receivers of `zone` form while it lasts."""
    return f"{zone}~{broadcast_id}"


def _zone_plain(z: Zone) -> dict[str, Any]:
    return {"id": z.id, "name": z.name, "parent": z.parent,
            "multicast": list(z.multicast) if z.multicast else None,
            "unicast": [list(a) for a in z.unicast], "level": z.level, "code": z.code,
            "language": z.language,
            "ptime": [[h, p, pt] for (h, p), pt in z.ptime.items()]}


def _zone_from(d: Mapping[str, Any]) -> Zone:
    return Zone(id=d["id"], name=d.get("name", ""), parent=d.get("parent"),
                multicast=tuple(d["multicast"]) if d.get("multicast") else None,
                unicast=[(str(h), int(p)) for h, p in d.get("unicast", [])],
                level=d.get("level", ""), code=d.get("code", ""),
                language=d.get("language", "vi"),
                ptime={(str(h), int(p)): int(pt) for h, p, pt in d.get("ptime", [])})


def command_to_dict(cmd: Command) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(cmd).type}
    for f in dataclasses.fields(cmd):
        v = getattr(cmd, f.name)
        if f.name == "zones" and isinstance(cmd, (ReplaceZones, UpdateZones)):
            out[f.name] = [_zone_plain(z) for z in v]
        elif f.name == "only":   # thousands of addresses: not through the generic walk
            out[f.name] = {str(z): [[h, p] for h, p in a] for z, a in v.items()}
        else:
            out[f.name] = _plain(v)
    return out


def command_from_dict(d: Mapping[str, Any]) -> Command:
    d = dict(d)
    cls = _COMMANDS.get(str(d.pop("type", None)))
    if cls is None:
        raise ValueError("unknown command type")
    if cls is StartBroadcast:
        d["targets"] = tuple(d["targets"])
        d["alone"] = tuple(d.get("alone") or ())
        d["level"] = Level.parse(d["level"])
        d["source"] = source_from_dict(d["source"])
        d["details"] = dict(d.get("details") or {})
        d["only"] = {str(z): tuple((str(h), int(p)) for h, p in a)
                     for z, a in (d.get("only") or {}).items()}
    elif cls in (ReplaceZones, UpdateZones):
        d["zones"] = tuple(_zone_from(z) for z in d["zones"])
        if cls is ReplaceZones:
            d["groups"] = {g: tuple(m) for g, m in (d.get("groups") or {}).items()}
    elif cls is SetDestinations:
        d["destinations"] = tuple(Destination(**x) for x in d["destinations"])
    return cls(**d)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class EngineEvent:
    """Something that happened to a broadcast: `type` is broadcast.created | refused | started |
    preempted | resumed | ducked | finished | stopped. Fields that do not apply are None."""
    type: str
    time: str                      # UTC ISO 8601, milliseconds
    broadcast: str
    level: str
    kind: str
    owner: str
    zones: tuple[str, ...] = ()
    reason: str | None = None
    error: str | None = None
    position_s: float | None = None
    notice: str | None = None
    targets: tuple[str, ...] | None = None
    holder: str | None = None
    holder_owner: str | None = None
    duck_db: float | None = None
    tick: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as the API streams and stores it (fields that do not apply left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and not (f.name in ("reason", "error")
                                  and self.type.endswith(("finished", "stopped"))):
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                              for k, v in d.items() if k in names}
        return cls(**kw)


# ------------------------------------------------------------------ snapshots
@dataclass(frozen=True, slots=True)
class BroadcastSnapshot:
    id: str
    targets: tuple[str, ...]
    reached_zones: tuple[str, ...]
    level: str
    mode: str
    source: Mapping[str, Any]      # the description shown to people (kind + details)
    live: bool
    owner: str
    owner_name: str
    state: str                     # queued | playing | paused | finished | stopped
    on_air_zones: tuple[str, ...]
    preempted_zones: tuple[str, ...]
    created_at: str
    started_at: str | None
    ended_at: str | None
    position_s: float
    duration_s: float | None
    error: str | None
    timing: Mapping[str, float | None]
    title: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ("finished", "stopped")

    def to_dict(self) -> dict[str, Any]:
        """The API's JSON shape of a broadcast."""
        d = to_plain(self)
        d["zones"] = d.pop("targets")
        return d


@dataclass(frozen=True, slots=True)
class OnAir:
    broadcast: str
    level: str
    ducked: bool = False


@dataclass(frozen=True, slots=True)
class ZoneSnapshot:
    """What a zone hears now: the broadcasts on air there (first wins) and an opaque id of the
    programme (zones with equal ids hear byte-identical packets)."""
    zone: str
    on_air: tuple[OnAir, ...] = ()
    program: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"on_air": [to_plain(o) for o in self.on_air], "program": self.program}


@dataclass(frozen=True, slots=True)
class EngineStats:
    clock: Mapping[str, Any]
    encoders_active: int
    encoders: Mapping[str, Any]
    broadcasts_active: int
    fanout: Mapping[str, Any]
    receiver_port: int | None
    ssrc: int

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# ------------------------------------------------------------------ the port
class EnginePort(Protocol):
    """What control may ask of the engine. Every method is short and thread-safe; none blocks on
    the tick. `submit` raises `Refused`, `UnknownBroadcast`, `Conflict` or `ZoneError`."""

    def submit(self, cmd: Command) -> BroadcastSnapshot | None:
        """Apply a command. Start/stop return the broadcast's snapshot; the rest None."""
        ...

    def broadcast(self, broadcast_id: str) -> BroadcastSnapshot | None:
        """An active or recently ended broadcast, or None."""
        ...

    def broadcasts(self, include_past: bool = False) -> list[BroadcastSnapshot]:
        ...

    def zone_status(self) -> Mapping[str, ZoneSnapshot]:
        ...

    def stats(self) -> EngineStats:
        ...

    def subscribe(self, fn: Callable[[EngineEvent], None]) -> None:
        """`fn` is called for every event, from the tick thread or the submitting thread: it
        must not block (hand the event to a queue or a loop)."""
        ...

    def add_live_input(self, source: Any) -> str:
        """Register a live Source (streamer.ingest.live.LiveSource fed by a WebRTC session or an
        RTP listener on this node) and return the `input_id` a `LiveAudio` names it by. The
        engine drops the registration when the broadcast that took it ends."""
        ...

    @property
    def ssrc(self) -> int:
        ...
