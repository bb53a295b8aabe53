"""What each zone airs of a spoken broadcast (issue 14): the zone's default TTS voice and its
language variants.

A zone may carry `voice` (the voice a text is read in when the broadcast names none) and
`languages` (in order); both are inherited from the parent zone when unset, and a zone with no
languages anywhere up its tree airs its own `language`. A broadcast may carry variants (one
source per language, a text or a recording); each zone airs the variants of its languages in
its order, one after another, as one item. A zone none of whose languages has a variant airs
the first variant (the broadcast's main language): nobody is left with silence.

Zones that come out the same form one group; control sends the engine one StartBroadcast per
group (usually exactly one, with the request's own targets). Every zone the request reaches is
in exactly one group, whatever its destinations (fixed addresses in the tree, or receivers
registered at run time behind carrier NAT, which the tree does not show): a group is addressed
by the topmost zones whose whole subtree airs the same, and a zone whose subtree holds another
group's zones is addressed alone (`StartBroadcast.alone`), its children in their own right.
Pure: no I/O, no clock.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control.sources import BroadcastRequest, MediaSpec, TtsSpec
from streamer.zones import ZoneTree

#: per zone id: (its own voice or None, its own languages, maybe empty), as stored
ZoneSpeech = Mapping[str, tuple[str | None, list[str]]]


@dataclass(frozen=True)
class Group:
    """Zones that air the same parts: (language or "", source spec) in order."""
    parts: tuple[tuple[str, Any], ...]
    zones: frozenset[str]
    #: what to send the engine as targets (the request's own when there is one group)
    targets: tuple[str, ...]
    #: targets that reach that zone only, not its subtree (StartBroadcast.alone)
    alone: tuple[str, ...] = ()

    @property
    def languages(self) -> list[str]:
        return [lang for lang, _ in self.parts if lang]


def zone_defaults(tree: ZoneTree, zone_id: str, speech: ZoneSpeech) -> tuple[str | None,
                                                                               tuple[str, ...]]:
    """(voice, languages) of a zone, inherited up the tree."""
    voice: str | None = None
    langs: tuple[str, ...] = ()
    cur: str | None = zone_id
    seen: set[str] = set()
    while cur is not None and cur in tree.zones and cur not in seen:
        seen.add(cur)
        v, ls = speech.get(cur, (None, []))
        if voice is None and v:
            voice = v
        if not langs and ls:
            langs = tuple(ls)
        cur = tree.zones[cur].parent
    if not langs:
        langs = (tree.zones[zone_id].language or "vi",)
    return voice, langs


def _with_voice(spec: Any, voice: str | None) -> Any:
    """A text naming neither voice nor engine is read in the zone's voice."""
    if isinstance(spec, TtsSpec) and voice and spec.voice is None and spec.engine is None:
        return spec.model_copy(update={"voice": voice})
    return spec


def plan(req: BroadcastRequest, reached: set[str], tree: ZoneTree,
         speech: ZoneSpeech) -> list[Group]:
    """The groups of zones that air the same thing, largest first: a partition of `reached`."""
    by_key: dict[tuple[tuple[str, str], ...], tuple[tuple[tuple[str, Any], ...], set[str]]] = {}
    variants = [(v.language, v.source) for v in req.variants or []]
    for z in sorted(reached):
        voice, langs = zone_defaults(tree, z, speech)
        if variants:
            chosen = [(lang, src) for want in langs for (lang, src) in variants if lang == want]
            parts = tuple((lang, _with_voice(src, voice)) for lang, src in (chosen or variants[:1]))
        else:
            parts = (("", _with_voice(req.source, voice)),)
        key = tuple((lang, src.model_dump_json()) for lang, src in parts)
        by_key.setdefault(key, (parts, set()))[1].add(z)
    groups = sorted(by_key.values(), key=lambda g: (-len(g[1]), sorted(g[1])))
    if len(groups) <= 1:
        return [Group(parts, frozenset(zs), tuple(req.zones)) for parts, zs in groups]
    children: dict[str, list[str]] = {}
    for zid, zone in tree.zones.items():
        if zone.parent is not None:
            children.setdefault(zone.parent, []).append(zid)
    subtree: dict[str, frozenset[str]] = {}

    def below(z: str) -> frozenset[str]:
        if z not in subtree:
            subtree[z] = frozenset(tree.subtree(z))
        return subtree[z]

    out: list[Group] = []
    for parts, zs in groups:
        targets: list[str] = []
        alone: list[str] = []
        # a target reaches its whole subtree: a zone whose subtree airs only this group's
        # parts is one target; a zone whose subtree holds another group's zones is addressed
        # alone (it airs its own languages' sequence, whatever kind of loudspeakers it has),
        # and its children of this group in their own right. A zone of this group under one
        # of another group is a top of its own.
        stack = sorted((z for z in zs if tree.zones[z].parent not in zs), reverse=True)
        while stack:
            z = stack.pop()
            targets.append(z)
            if below(z) <= zs:
                continue
            alone.append(z)
            stack.extend(sorted((c for c in children.get(z, ()) if c in zs), reverse=True))
        out.append(Group(parts, frozenset(zs), tuple(targets), tuple(alone)))
    return out


def media_ids(groups: list[Group]) -> list[str]:
    """The library items the groups play, once each."""
    seen: dict[str, None] = {}
    for g in groups:
        for _, src in g.parts:
            if isinstance(src, MediaSpec):
                seen.setdefault(src.id, None)
    return list(seen)


def texts(groups: list[Group]) -> list[TtsSpec]:
    """The distinct texts to check before anything airs."""
    seen: dict[str, TtsSpec] = {}
    for g in groups:
        for _, src in g.parts:
            if isinstance(src, TtsSpec):
                seen.setdefault(src.model_dump_json(), src)
    return list(seen.values())
