"""Who sends a zone's static destinations, and the commands that keep the edges in step with the
origin's zone tree (sans-IO: plain data in, commands out).

A zone's static destinations (its LAN's multicast group, receivers with a fixed address) are
sent by the origin itself unless a live edge serves that zone (the edge's `serve_zones`
setting, published in its node hash as `serves`): then that edge sends them, from the envelopes
it pulls, and the origin's engine gets the zone without them (`strip_served`), so a speaker
never hears a programme twice. When the edge dies (its node hash expires) the origin sends them
again.

`ZoneSync.plan` is run by the leader whenever the tree or the set of edges changes: it returns
`zone.set` {zone, multicast, unicast, ptime, edges: [edge]} for each zone an edge serves whose
destinations changed since that edge last got them (everything for an edge that is new,
restarted — its `since` moved — or after this origin took the lease), an empty `zone.set` when
an edge no longer serves a zone, an empty `zone.set` to every edge for a zone created (an edge
that dropped a zone of that id pulls it again for its receivers), and `zone.drop` {zone} to
every edge for a zone deleted from the tree. The commands go through the commands stream with
the leader's fencing token (control/cluster.py), so an edge that was away reads them when it is
back.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from streamer.zones import Zone, ZoneTree

__all__ = ["EdgeServes", "parse_serves", "served_by", "strip_served", "zone_body", "ZoneSync",
           "tree_to_json", "tree_from_json"]

#: edge id -> (when it started, the zone ids it serves; "*": all)
EdgeServes = Mapping[str, tuple[str, frozenset[str]]]


def parse_serves(text: Any) -> frozenset[str]:
    """The `serves` field of an edge's node hash: zone ids separated by commas."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if not text:
        return frozenset()
    return frozenset(p.strip() for p in str(text).split(",") if p.strip())


def _serves(patterns: frozenset[str], zone_id: str) -> bool:
    return "*" in patterns or zone_id in patterns


def served_by(zone_id: str, edges: EdgeServes) -> tuple[str, ...]:
    return tuple(sorted(e for e, (_s, pats) in edges.items() if _serves(pats, zone_id)))


def strip_served(zones: Iterable[Zone], edges: EdgeServes) -> tuple[Zone, ...]:
    """The zones as the origin's engine gets them: without the static destinations an edge
    sends."""
    return tuple(dataclasses.replace(z, multicast=None, unicast=[], ptime={})
                 if (z.multicast or z.unicast) and served_by(z.id, edges) else z for z in zones)


def zone_body(z: Zone) -> dict[str, Any]:
    return {"zone": z.id,
            "multicast": f"{z.multicast[0]}:{z.multicast[1]}" if z.multicast else None,
            "unicast": [f"{h}:{p}" for h, p in z.unicast],
            "ptime": {f"{h}:{p}": ms for (h, p), ms in z.ptime.items()}}


class ZoneSync:
    """What each edge was last told about each zone it serves."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (edge, since)
        self._known: set[str] | None = None       # the tree's zone ids at the last plan

    def reset(self) -> None:
        """Tell every edge everything again (this origin just took the lease)."""
        self._sent.clear()
        self._known = None

    def plan(self, zones: Mapping[str, Zone], edges: EdgeServes
             ) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if self._known is not None:   # created (perhaps again, after a drop): every edge may
            # pull it for its receivers; an edge that serves it gets its destinations below
            out += [("zone.set", {"zone": zid, "multicast": None, "unicast": [], "ptime": {}})
                    for zid in sorted(set(zones) - self._known)]
        live = {(e, since) for e, (since, _p) in edges.items()}
        for k in [k for k in self._sent if k not in live]:
            del self._sent[k]                        # gone, or restarted (a new `since`)
        for e, (since, pats) in sorted(edges.items()):
            sent = self._sent.setdefault((e, since), {})
            for zid, z in zones.items():
                if _serves(pats, zid):
                    body = zone_body(z)
                    if sent.get(zid) != body and (z.multicast or z.unicast or zid in sent):
                        out.append(("zone.set", {**body, "edges": [e]}))
                        sent[zid] = body
                elif zid in sent:                    # no longer served there
                    out.append(("zone.set", {"zone": zid, "multicast": None, "unicast": [],
                                             "ptime": {}, "edges": [e]}))
                    del sent[zid]
            for zid in [z for z in sent if z not in zones]:
                del sent[zid]                        # deleted: the zone.drop below says so
        if self._known is not None:
            out += [("zone.drop", {"zone": zid}) for zid in sorted(self._known - set(zones))]
        self._known = set(zones)
        return out


def tree_to_json(zones: Iterable[Zone], groups: Mapping[str, Iterable[str]]) -> str:
    """The zone tree as the leader keeps it in Redis (`Keys.tree`): what a standby origin airs
    with before it can open the database."""
    return json.dumps({"zones": [{
        "id": z.id, "name": z.name, "parent": z.parent,
        "multicast": list(z.multicast) if z.multicast else None,
        "unicast": [list(a) for a in z.unicast],
        "ptime": [[h, p, ms] for (h, p), ms in z.ptime.items()],
        "level": z.level, "code": z.code, "language": z.language} for z in zones],
        "groups": {g: list(m) for g, m in groups.items()}}, separators=(",", ":"))


def tree_from_json(text: str | bytes) -> ZoneTree:
    """The tree back (ValueError when it is not one)."""
    try:
        d = json.loads(text)
        tree = ZoneTree()
        for z in d["zones"]:
            tree.add(Zone(
                id=str(z["id"]), name=str(z.get("name") or z["id"]), parent=z.get("parent"),
                multicast=(str(z["multicast"][0]), int(z["multicast"][1]))
                if z.get("multicast") else None,
                unicast=[(str(h), int(p)) for h, p in z.get("unicast") or []],
                ptime={(str(h), int(p)): int(ms) for h, p, ms in z.get("ptime") or []},
                level=str(z.get("level") or ""), code=str(z.get("code") or ""),
                language=str(z.get("language") or "vi")))
        tree.validate()
        for g, members in dict(d.get("groups") or {}).items():
            tree.set_group(str(g), [str(m) for m in members])
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"not a zone tree: {e}") from None
    return tree
