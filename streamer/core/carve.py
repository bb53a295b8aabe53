"""Some receivers of a zone, not the whole zone (`StartBroadcast.only`: an alert's polygon or
circle reaches the receivers inside it, across zones). Pure data and functions, no IO.

While such a broadcast lasts, the chosen receivers of zone Z form a zone of their own, a
*carve* `Z~<broadcast>`, placed below Z: arbitration then treats it as any zone (a broadcast to
Z or above still reaches it, so a higher level never misses those receivers), the broadcast
targets it, and the RTP output takes its receivers out of Z's destination lists and gives them
to the carve's. Z's other receivers keep Z's programme. When the broadcast ends the carve goes
and its receivers are back in Z's lists in the same tick. Every programme packet of a tick
shares the node's SSRC, sequence number and timestamp, so a receiver moving between Z and the
carve sees one continuous RTP stream.

Two such broadcasts may want the same receiver (overlapping polygons): the later one's carve of
it sits below the earlier one's (`Z~A~B`), so every address is in exactly one destination list
(the innermost carve holding it), and arbitration on the inner carve weighs both broadcasts and
Z's. When a carve goes, the carves below it move up to its parent.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from streamer.zones import Zone, ZoneTree

__all__ = ["Carve", "CARVE_LEVEL", "carve_zone", "split_destinations", "restore_carves",
           "place", "release", "nested_addrs", "innermost"]

#: the `Zone.level` of a carve (the tree's administrative levels are province ... cluster)
CARVE_LEVEL = "carve"

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Carve:
    zone: str                   # the zone its receivers belong to (their destinations are its)
    broadcast: str              # the broadcast it lasts for
    addrs: frozenset[Addr]      # the receivers' addresses (host, port)
    parent: str = ""            # the zone it sits below: `zone`, or a carve holding them before


def _parent(c: Carve) -> str:
    return c.parent or c.zone


def carve_zone(parent: Zone, carve_id: str) -> Zone:
    """The carve's zone: below `parent`, no destinations of its own (the output takes them
    from its zone's)."""
    return Zone(id=carve_id, name=f"{parent.name or parent.id} (part)", parent=parent.id,
                level=CARVE_LEVEL, language=parent.language)


def _depth(carves: Mapping[str, Carve], cid: str) -> int:
    n = 0
    while cid in carves and n <= len(carves):
        cid = _parent(carves[cid])
        n += 1
    return n


def place(carves: Mapping[str, Carve], zone: str, broadcast: str, addrs: Iterable[Addr]
          ) -> dict[str, Carve]:
    """The new carves of `broadcast` for its receivers `addrs` of `zone`: each address goes
    below the innermost carve that holds it now, or below the zone. Ids `<parent>~<broadcast>`."""
    holders = sorted((cid for cid, c in carves.items() if c.zone == zone),
                     key=lambda cid: -_depth(carves, cid))
    if not holders:   # the common case: nobody holds any of them
        return {f"{zone}~{broadcast}": Carve(zone, broadcast, frozenset(addrs), zone)}
    by_parent: dict[str, set[Addr]] = {}
    for a in addrs:
        parent = next((cid for cid in holders if a in carves[cid].addrs), zone)
        by_parent.setdefault(parent, set()).add(a)
    return {f"{p}~{broadcast}": Carve(zone, broadcast, frozenset(a), p)
            for p, a in by_parent.items()}


def release(carves: dict[str, Carve], broadcast: str) -> tuple[list[str], dict[str, str]]:
    """Take `broadcast`'s carves out of `carves`: (their ids, carve -> its new parent for the
    carves that sat below them)."""
    gone = [cid for cid, c in carves.items() if c.broadcast == broadcast]
    moved: dict[str, str] = {}
    for cid in gone:
        up = _parent(carves[cid])
        for child, c in list(carves.items()):
            if _parent(c) == cid:
                carves[child] = replace(c, parent=up)
                moved[child] = up
        del carves[cid]
    for cid in gone:
        moved.pop(cid, None)
    return gone, moved


def nested_addrs(carves: Mapping[str, Carve]) -> dict[str, frozenset[Addr]]:
    """Zone or carve id -> the addresses of the carves below it (at any depth): those leave its
    destination lists."""
    out: dict[str, set[Addr]] = {}
    for c in carves.values():
        p = _parent(c)
        for _ in range(len(carves) + 1):
            out.setdefault(p, set()).update(c.addrs)
            if p not in carves:
                break
            p = _parent(carves[p])
    return {k: frozenset(v) for k, v in out.items()}


def innermost(carves: Mapping[str, Carve]) -> dict[Addr, str]:
    """Address -> the innermost carve holding it (whose programme it hears)."""
    out: dict[Addr, str] = {}
    for cid in sorted(carves, key=lambda c: _depth(carves, c)):
        for a in carves[cid].addrs:
            out[a] = cid
    return out


def split_destinations(plain: Mapping[int, list[Addr]], dynamic: Iterable[tuple[Any, ...]],
                       addrs: frozenset[Addr], take: bool
                       ) -> tuple[dict[int, list[Addr]], list[tuple[Any, ...]]]:
    """A zone's destinations (static by packet time, registered `(host, port, ...)`) with the
    carved addresses kept (`take`: the carve's lists) or left out (the zone's own lists).
    Multicast groups are never a receiver's address: they stay with the zone."""
    out = {pt: [a for a in lst if (a in addrs) == take] for pt, lst in plain.items()}
    dyn = [d for d in dynamic if ((d[0], d[1]) in addrs) == take]
    return out, dyn


def restore_carves(tree: ZoneTree, carves: dict[str, Carve]) -> list[str]:
    """After the tree was replaced (control sends the whole tree, which knows nothing of
    carves): put back the carves whose zone is still there, parents first; returns the ids
    of those dropped (their zone is gone: their broadcast no longer reaches them)."""
    dropped = [cid for cid, c in carves.items() if c.zone not in tree.zones]
    for cid in dropped:
        del carves[cid]
    for cid in sorted(carves, key=lambda c: _depth(carves, c)):
        parent = tree.zones.get(_parent(carves[cid]))
        if parent is not None and cid not in tree.zones:
            tree.zones[cid] = carve_zone(parent, cid)
    return dropped
