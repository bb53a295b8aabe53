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
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streamer.zones import Zone, ZoneTree

__all__ = ["Carve", "CARVE_LEVEL", "carve_zone", "split_destinations", "restore_carves"]

#: the `Zone.level` of a carve (the tree's administrative levels are province ... cluster)
CARVE_LEVEL = "carve"

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Carve:
    zone: str                   # the zone its receivers are taken from (its parent)
    broadcast: str              # the broadcast it lasts for
    addrs: frozenset[Addr]      # the receivers' addresses (host, port)


def carve_zone(parent: Zone, carve_id: str) -> Zone:
    """The carve's zone: below `parent`, no destinations of its own (the output takes them
    from the parent's)."""
    return Zone(id=carve_id, name=f"{parent.name or parent.id} (part)", parent=parent.id,
                level=CARVE_LEVEL, language=parent.language)


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
    carves): put back the carves whose zone is still there; returns the ids of those dropped
    (their zone is gone: their broadcast no longer reaches them)."""
    dropped = []
    for cid, c in list(carves.items()):
        parent = tree.zones.get(c.zone)
        if parent is None:
            del carves[cid]
            dropped.append(cid)
        elif cid not in tree.zones:
            tree.zones[cid] = carve_zone(parent, cid)
    return dropped
