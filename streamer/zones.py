"""The zone tree: province → district → commune → village → cluster, plus cross-cutting groups.

Plain data, sans-IO. A broadcast that targets a zone reaches that zone and every zone below it;
a group stands for the zones it lists (and, through them, their subtrees).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ZoneError(ValueError):
    pass


@dataclass(slots=True)
class Zone:
    id: str
    name: str = ""
    parent: str | None = None
    multicast: tuple[str, int] | None = None
    unicast: list[tuple[str, int]] = field(default_factory=list)
    level: str = ""  # administrative level: province/district/commune/village/cluster
    code: str = ""  # administrative code (changes when units merge)
    language: str = "vi"
    #: packet time (ms) per unicast destination where it is not 20: cellular clusters can take
    #: 40 or 60 ms packets, halving or thirding their packet rate
    ptime: dict[tuple[str, int], int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "parent": self.parent,
            "multicast": f"{self.multicast[0]}:{self.multicast[1]}" if self.multicast else None,
            "unicast": [f"{h}:{p}" + (f"/{self.ptime[(h, p)]}" if (h, p) in self.ptime else "")
                        for h, p in self.unicast],
            "level": self.level, "code": self.code, "language": self.language,
        }


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    import ipaddress
    if not isinstance(text, str) or ":" not in text:
        raise ZoneError(f"{what} must look like HOST:PORT, got {text!r}")
    host, _, port_s = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ZoneError(f"{what} host must be an IP address, got {host!r}") from None
    try:
        port = int(port_s)
    except ValueError:
        raise ZoneError(f"{what} port must be a number, got {port_s!r}") from None
    if not 0 < port < 65536:
        raise ZoneError(f"{what} port out of range: {port}")
    return host, port


PTIMES = (20, 40, 60)


def parse_destination(text: str, what: str = "destination") -> tuple[str, int, int]:
    """`HOST:PORT` or `HOST:PORT/PTIME` (PTIME 20, 40 or 60 ms)."""
    ptime = 20
    if isinstance(text, str) and "/" in text:
        text, _, pt = text.rpartition("/")
        try:
            ptime = int(pt)
        except ValueError:
            raise ZoneError(f"{what} packet time must be a number of ms, got {pt!r}") from None
        if ptime not in PTIMES:
            raise ZoneError(f"{what} packet time must be one of 20, 40, 60 ms, got {ptime}")
    host, port = parse_hostport(text, what)
    return host, port, ptime


class ZoneTree:
    def __init__(self) -> None:
        self.zones: dict[str, Zone] = {}
        self.groups: dict[str, list[str]] = {}
        self.version = 0  # bumps on every change, so caches know to rebuild

    # -- editing ---------------------------------------------------------------------------
    def add(self, zone: Zone) -> None:
        if not zone.id:
            raise ZoneError("zone id must not be empty")
        if zone.id in self.groups:
            raise ZoneError(f"{zone.id!r} is already a group id")
        self.zones[zone.id] = zone
        self.version += 1

    def remove(self, zone_id: str) -> None:
        if zone_id not in self.zones:
            raise ZoneError(f"unknown zone {zone_id!r}")
        if any(z.parent == zone_id for z in self.zones.values()):
            raise ZoneError(f"zone {zone_id!r} still has child zones")
        del self.zones[zone_id]
        for members in self.groups.values():
            if zone_id in members:
                members.remove(zone_id)
        self.version += 1

    def move(self, zone_id: str, new_parent: str | None) -> None:
        zone = self.zones.get(zone_id)
        if zone is None:
            raise ZoneError(f"unknown zone {zone_id!r}")
        if new_parent is not None:
            if new_parent not in self.zones:
                raise ZoneError(f"unknown parent zone {new_parent!r}")
            if new_parent == zone_id or zone_id in self.ancestors(new_parent):
                raise ZoneError("a zone cannot be moved below itself")
        zone.parent = new_parent
        self.version += 1

    def set_group(self, group_id: str, members: list[str]) -> None:
        if group_id in self.zones:
            raise ZoneError(f"{group_id!r} is already a zone id")
        unknown = [m for m in members if m not in self.zones]
        if unknown:
            raise ZoneError(f"group {group_id!r} names unknown zones: {', '.join(unknown)}")
        self.groups[group_id] = list(dict.fromkeys(members))
        self.version += 1

    def validate(self) -> None:
        for z in self.zones.values():
            if z.parent is not None and z.parent not in self.zones:
                raise ZoneError(f"zone {z.id!r} names unknown parent {z.parent!r}")
            seen = {z.id}
            p = z.parent
            while p is not None:
                if p in seen:
                    raise ZoneError(f"zone tree has a cycle through {p!r}")
                seen.add(p)
                p = self.zones[p].parent

    # -- queries ---------------------------------------------------------------------------
    def ancestors(self, zone_id: str) -> list[str]:
        out = []
        p = self.zones[zone_id].parent
        while p is not None and p not in out:
            out.append(p)
            p = self.zones[p].parent if p in self.zones else None
        return out

    def children(self, zone_id: str) -> list[str]:
        return [z.id for z in self.zones.values() if z.parent == zone_id]

    def subtree(self, zone_id: str) -> set[str]:
        return self._below([zone_id])

    def _below(self, roots: list[str]) -> set[str]:
        """The roots and every zone under them: one pass over the tree, however many roots
        (a province-wide alert may name 5,000 communes: one walk, not 5,000)."""
        kids: dict[str | None, list[str]] = {}
        for z in self.zones.values():
            kids.setdefault(z.parent, []).append(z.id)
        out: set[str] = set()
        stack = list(roots)
        while stack:
            zid = stack.pop()
            if zid in out:
                continue
            out.add(zid)
            stack.extend(kids.get(zid, ()))
        return out

    def resolve(self, targets: list[str] | tuple[str, ...],
                alone: tuple[str, ...] | list[str] | frozenset[str] = ()) -> set[str]:
        """Every zone reached by a broadcast to `targets` (zone and group ids). A target also
        named in `alone` reaches that zone only, not its subtree (language variants split a
        tree: a parent airs its own sequence while its children air another)."""
        unknown = [t for t in targets if t not in self.zones and t not in self.groups]
        if unknown:
            raise ZoneError(f"unknown zone or group: {', '.join(unknown)}")
        roots: list[str] = []
        only: set[str] = set()
        for t in targets:
            if t in self.groups:
                roots.extend(self.groups[t])
            elif t in alone:
                only.add(t)
            else:
                roots.append(t)
        return self._below(roots) | only if only else self._below(roots)

    def destinations(self, zone_id: str) -> list[tuple[str, int]]:
        """Every destination of the zone, whatever its packet time."""
        z = self.zones[zone_id]
        return ([z.multicast] if z.multicast else []) + list(z.unicast)

    def destinations_by_ptime(self, zone_id: str) -> dict[int, list[tuple[str, int]]]:
        z = self.zones[zone_id]
        out: dict[int, list[tuple[str, int]]] = {20: [z.multicast] if z.multicast else []}
        if not z.ptime:  # all on 20 ms: one list copy (the tick calls this for 10,000s)
            out[20] += z.unicast
            return out
        for a in z.unicast:
            out.setdefault(z.ptime.get(a, 20), []).append(a)
        return out
