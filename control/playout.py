"""Relays and playlists as broadcast sources: the checks and descriptions behind
`{"kind": "relay", ...}` and `{"kind": "playlist", ...}` (control/sources.py's RelaySpec and
PlaylistSpec), used by the broadcast use case (control/broadcasts.py) and the schedules
(control/schedule/service.py), so whatever may be broadcast may be scheduled.

A relay URL must be http(s) with a host whose every address is public, unless the host or one
of its addresses is in the `relay_allow_hosts` setting (names, addresses or CIDR networks:
loopback for tests, a provincial station on a private network): the server must not be a way
into its own network (cloud metadata at 169.254.169.254, admin pages on 10.x). The check
resolves the name (blocking: run it in a thread). It is the early answer (a clear 4xx before
anything is saved or aired); the check that counts is made again by the relay where it connects,
with the same policy (streamer/ingest/relay_http.py: resolved once, the checked address is the
one connected to, HLS segments and redirects included).
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from control.errors import Invalid, NotFound
from control.sources import (ChimeSpec, MediaSpec, PlaylistSpec, RelaySpec, SirenSpec, ToneSpec,
                             TtsSpec)
from streamer.ingest.base import MediaError
from streamer.ingest.relay_http import AddressPolicy, Resolver, system_resolver
from streamer.mixer.arbitration import Level
from streamer.port import (BroadcastSnapshot, ChimeAudio, FileAudio, PlaylistAudio, Programme,
                           RelayAudio, SirenAudio, SourceDescription, StartBroadcast, ToneAudio,
                           TtsAudio)

if TYPE_CHECKING:
    from control.broadcasts import Broadcasts
    from control.db import Database
    from control.policy import Principal
    from control.settings import Settings
    from control.sources import BroadcastRequest

#: what the "tone" fallback plays (looped while the upstream is down): soft, clearly a filler
FALLBACK_TONE = ToneAudio(freq_hz=440.0, seconds=10.0, amplitude_dbfs=-24.0)


def check_relay_url(url: str, allow_hosts: Iterable[str] = (),
                    resolver: Resolver = system_resolver) -> None:
    """Invalid("invalid_url") unless `url` may be relayed (see the module's note). Blocking."""
    policy = AddressPolicy(allow_hosts)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise Invalid("invalid_url", f"not a URL: {url[:200]!r}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise Invalid("invalid_url", "a relay URL must start with http:// or https:// "
                      f"(not {parts.scheme or 'no scheme'!r})")
    host = parts.hostname
    if not host:
        raise Invalid("invalid_url", "a relay URL needs a host")
    if any(c in url for c in "\r\n\t ") or any(ord(c) < 32 for c in url):
        raise Invalid("invalid_url", "a relay URL may not contain spaces or control characters")
    if policy.name_allowed(host):
        return
    try:
        ipaddress.ip_address(host)
        addresses: list[str] = [host]
    except ValueError:
        try:
            addresses = list(resolver(host, port or (443 if parts.scheme == "https" else 80)))
        except MediaError as e:
            raise Invalid("invalid_url", str(e)) from None
    try:
        policy.choose(host, addresses)
    except MediaError as e:
        raise Invalid("invalid_url", str(e)) from None


async def _media(db: Database, media_id: str) -> dict:
    row = await db.media(media_id)
    if row is None:
        raise NotFound("unknown_media", f"no media with id {media_id!r}")
    return row


async def fallback_of(db: Database, settings: Settings, choice: str | None
                      ) -> SourceDescription | None:
    name = choice or settings.relay_fallback
    if name == "none":
        return None
    if name == "tone":
        return FALLBACK_TONE
    row = await db.media(name)
    if row is None:
        raise NotFound("unknown_media", f"the relay's fallback media {name!r} does not exist")
    return FileAudio(row["path"], loudness_lufs=row.get("loudness_lufs"),
                     duration_s=row.get("duration_s"))


def media_ids(spec: Any, settings: Settings | None = None) -> list[str]:
    """Media items a relay or playlist plays (a scheduled one keeps them from deletion)."""
    if isinstance(spec, PlaylistSpec):
        return [i.id for i in spec.items if isinstance(i, MediaSpec)]
    if isinstance(spec, RelaySpec):
        f = spec.fallback or (settings.relay_fallback if settings is not None else None)
        return [f] if f and f not in ("tone", "none") else []
    return []


async def describe(spec: RelaySpec | PlaylistSpec, db: Database, settings: Settings,
                   loop: asyncio.AbstractEventLoop, pool: Any, *,
                   rng: random.Random | None = None
                   ) -> tuple[SourceDescription, dict[str, Any]]:
    """The engine's description of a relay or a playlist and the details shown with it. Raises
    Invalid / NotFound before anything airs."""
    if isinstance(spec, RelaySpec):
        await loop.run_in_executor(pool, check_relay_url, spec.url, settings.relay_allow_hosts)
        fallback = await fallback_of(db, settings, spec.fallback)
        silence = spec.silence_s or settings.relay_silence_s
        desc = RelayAudio(spec.url.strip(), fallback=fallback, silence_s=silence,
                          reconnect_max_s=settings.relay_reconnect_max_s, seconds=spec.seconds)
        return desc, {"kind": "relay", "url": spec.url.strip(), "title": spec.url.strip()[:80],
                      "silence_s": silence, "seconds": spec.seconds,
                      "fallback": spec.fallback or settings.relay_fallback}
    items = list(spec.items)
    if spec.shuffle:
        (rng or random.SystemRandom()).shuffle(items)
    parts: list[SourceDescription] = []
    shown: list[dict[str, Any]] = []
    total: float | None = 0.0
    for it in items:
        d: SourceDescription
        length: float | None
        if isinstance(it, MediaSpec):
            row = await _media(db, it.id)
            length = row.get("duration_s")
            d = FileAudio(row["path"], loudness_lufs=row.get("loudness_lufs"), duration_s=length)
            shown.append({"kind": "media", "media_id": it.id,
                          "title": row.get("title") or row.get("filename")})
        elif isinstance(it, TtsSpec):
            d, length = TtsAudio(it.text, voice=it.voice, rate=it.rate, engine=it.engine), None
            shown.append({"kind": "tts", "title": it.text[:80]})
        elif isinstance(it, ToneSpec):
            d = ToneAudio(it.freq_hz, it.seconds, it.amplitude_dbfs)
            length = it.seconds
            shown.append({"kind": "tone", "seconds": it.seconds})
        elif isinstance(it, ChimeSpec):
            d, length = ChimeAudio(), None
            shown.append({"kind": "chime"})
        else:
            assert isinstance(it, SirenSpec)
            d, length = SirenAudio(it.seconds), it.seconds
            shown.append({"kind": "siren", "seconds": it.seconds})
        parts.append(d)
        total = None if total is None or length is None else total + float(length)
    # a playlist that fills a slot repeats its items until the slot's end
    duration = total if spec.slot_s is None else spec.slot_s
    first = next((x.get("title") for x in shown if x.get("title")), None)
    return (PlaylistAudio(tuple(parts), slot_s=spec.slot_s, fade_s=spec.fade_s),
            {"kind": "playlist", "title": f"playlist: {first}" if first else "playlist",
             "items": shown, "shuffle": spec.shuffle, "slot_s": spec.slot_s,
             "items_s": total, "duration_s": duration})


def with_programme(req: BroadcastRequest, default_attention: str, desc: SourceDescription,
                   details: dict[str, Any]) -> tuple[SourceDescription, dict[str, Any]]:
    """The attention signal and repeats around it, as for any broadcast."""
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


async def start(bc: Broadcasts, principal: Principal, req: BroadcastRequest, pool: Any,
                start_at: float | None, offset_s: float, extra: dict[str, Any] | None
                ) -> BroadcastSnapshot:
    """The broadcast use case's start for a relay or a playlist (policy and limits checked by
    the caller)."""
    loop = asyncio.get_running_loop()
    assert isinstance(req.source, (RelaySpec, PlaylistSpec))
    desc, details = await describe(req.source, bc.db, bc.settings, loop, pool)
    desc, details = with_programme(req, bc.settings.emergency_attention, desc, details)
    cmd = StartBroadcast(id=req.id or "", targets=tuple(req.zones), level=req.level_enum,
                         source=desc, mode=req.mode, gain_db=req.gain_db,
                         owner=principal.name, owner_name=principal.label,
                         title=str(details.get("title") or ""),
                         details=dict(details, **(extra or {}), owner_id=principal.id),
                         start_at=start_at, offset_s=offset_s)
    return await loop.run_in_executor(pool, bc.submit, cmd)
