"""What a reader may see of what happened: broadcasts, engine and receiver events, as-run
records, receivers, RTP ingest ports, filtered by the reader's scope (issue 13: an official
refused `GET /receivers` read receiver ids, zones and addresses through `/asrun` and `/events`).

Sans-IO: a `ReadScope` is made once per request from the principal and control's zone tree
(`Policy.read_zones` decides the zones, `Policy.allows(..., "receivers.read")` whether receiver
details are readable at all); the handlers ask it about each item.

A record is visible when it concerns a zone inside the reader's scope: a broadcast or engine
event by the zones it reached (or targeted), a receiver or its events by the receiver's zone
and only to roles that may read receivers. A record that names no zone (a rejected datagram, a
server-wide alarm) is visible only to readers of everything.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from control.policy import Policy, Principal, Tree

_ZONE_LISTS = ("reached_zones", "zones", "targets", "on_air_zones")


class ReadScope:
    def __init__(self, principal: Principal | None, tree: Tree) -> None:
        self.zones = Policy.read_zones(principal, tree)
        self.receivers = principal is not None and Policy.allows(principal, "receivers.read")

    @property
    def everything(self) -> bool:
        return self.zones is None

    def sees_zones(self, zones: Iterable[Any]) -> bool:
        """Some of these zones are in scope (an empty list: only for readers of everything)."""
        if self.zones is None:
            return True
        return any(isinstance(z, str) and z in self.zones for z in zones)

    def sees_zone(self, zone: Any) -> bool:
        return self.zones is None or (isinstance(zone, str) and zone in self.zones)

    def receiver(self, r: Mapping[str, Any]) -> bool:
        """A receiver row (its `zone`)."""
        return self.receivers and self.sees_zone(r.get("zone"))

    def broadcast(self, b: Mapping[str, Any]) -> bool:
        """A broadcast (snapshot dict or stored row)."""
        zones: list[Any] = []
        for k in _ZONE_LISTS:
            v = b.get(k)
            if isinstance(v, (list, tuple)):
                zones.extend(v)
        return self.sees_zones(zones)

    def event(self, ev: Mapping[str, Any]) -> bool:
        """An engine, registry or server event (also an as-run record)."""
        t = str(ev.get("type") or "")
        if t.startswith("receiver.") or "receiver" in ev:
            return self.receivers and self.sees_zone(ev.get("zone"))
        if "zone" in ev and not any(k in ev for k in _ZONE_LISTS):
            return self.sees_zone(ev.get("zone"))
        return self.broadcast(ev)

    def filter_events(self, events: Iterable[Mapping[str, Any]]) -> list[Any]:
        return [e for e in events if self.event(e)]

    def filter_broadcasts(self, items: Iterable[Mapping[str, Any]]) -> list[Any]:
        return [b for b in items if self.broadcast(b)]

    def zone_ancestors(self, tree: Any) -> set[str]:
        """Zones above the reader's scope that are not in it: shown by name only (where the
        reader sits in the tree), never with destinations or what is on air."""
        if self.zones is None:
            return set()
        return {a for z in self.zones for a in tree.ancestors(z)} - self.zones

    def zone(self, d: dict[str, Any]) -> dict[str, Any]:
        """A zone row as this reader may see it: unicast destinations are receivers' addresses
        (only to roles that read receivers)."""
        if not self.receivers and d.get("unicast"):
            d = dict(d, unicast=[])
        return d
