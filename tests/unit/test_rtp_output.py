"""Destinations reach the fan-out through the RTP output (streamer.rtp.output.RtpOutput) and the
runtime's zone commands: adding, moving and retiring receivers re-applies only the zones
concerned, structure changes reach every zone, and a ticking runtime batches receiver changes.
A Runtime with a fan-out that counts, explicit times, no socket and no thread."""
from __future__ import annotations

import dataclasses

from streamer.port import ReplaceZones, UpdateZones
from streamer.runtime import EngineSettings, Runtime
from streamer.zones import Zone, ZoneTree


class CountingFanout:
    def __init__(self):
        self.calls: list[str] = []
        self.dests: dict[str, list] = {}

    def set_destinations(self, key, addrs):
        self.calls.append(key)
        self.dests[key] = list(addrs)

    def send(self, packet, keys):
        return 0

    def stats(self):
        return {}


class Node:
    """A runtime and the zone tree control keeps (and sends it)."""

    def __init__(self, tree: ZoneTree, **settings):
        self.tree = tree
        self.fan = CountingFanout()
        self.rt = Runtime(self.fan, EngineSettings(**settings))
        self.k = 0
        self.now_ns = 1_000 * 10**9

    def replace(self) -> None:
        """The whole tree (ReplaceZones): the runtime compares every zone."""
        self.rt.submit(ReplaceZones(tuple(self.tree.zones.values()),
                                    {g: tuple(m) for g, m in self.tree.groups.items()}))

    def replace_dests(self, zid: str, unicast) -> None:
        """One zone's destinations changed (UpdateZones): the runtime looks at that zone only."""
        self.tree.zones[zid] = dataclasses.replace(self.tree.zones[zid], unicast=list(unicast))
        self.rt.submit(UpdateZones((self.tree.zones[zid],)))

    def tick(self, seconds: float = 0.02) -> None:
        self.rt.run_tick(self.k, self.now_ns, 1_700_000_000.0 + self.now_ns / 1e9)
        self.k += 1
        self.now_ns += int(seconds * 1e9)


def node_with(n_zones: int = 50, **settings) -> Node:
    tree = ZoneTree()
    tree.add(Zone("root"))
    for i in range(n_zones):
        tree.add(Zone(f"z{i}", parent="root", unicast=[("127.0.0.1", 20000 + i)]))
    return Node(tree, **settings)


def zones_applied(fan: CountingFanout) -> set[str]:
    return {k.split("|")[0].split("#")[0] for k in fan.calls}


def test_only_the_zones_whose_destinations_changed_are_reapplied():
    node = node_with(50)
    fan = node.fan
    node.replace()
    assert zones_applied(fan) == {"root"} | {f"z{i}" for i in range(50)}  # first time: all
    fan.calls.clear()
    node.replace()
    node.tick()
    assert fan.calls == []  # nothing changed, nothing applied
    node.replace_dests("z7", [("127.0.0.1", 20007), ("127.0.0.2", 9)])
    assert zones_applied(fan) == {"z7"}
    assert fan.dests["z7"] == [("127.0.0.1", 20007), ("127.0.0.2", 9)]
    # the whole tree again (every zone compared): still only the changed one is re-applied
    fan.calls.clear()
    node.tree.zones["z9"] = dataclasses.replace(node.tree.zones["z9"],
                                                unicast=[("127.0.0.9", 9)])
    node.replace()
    assert zones_applied(fan) == {"z9"}
    # a new Zone object with the same destinations is not a change
    fan.calls.clear()
    node.replace_dests("z3", [("127.0.0.1", 20003)])
    node.tick()
    assert fan.calls == []
    # a change made to the core's tree without a hint (version bumped directly) is still
    # noticed by the next tick
    core_tree = node.rt.core.tree
    core_tree.zones["z4"] = dataclasses.replace(core_tree.zones["z4"], unicast=[])
    core_tree.version += 1
    node.tick()
    assert zones_applied(fan) == {"z4"} and fan.dests["z4"] == []


def test_structure_changes_still_reach_every_zone_and_broadcast():
    node = node_with(3)
    fan = node.fan
    node.replace()
    node.rt.start(tick_thread=False)   # commands wait for the tick: two arrive before it
    fan.calls.clear()
    # a hinted change followed by an unhinted one: the tick must not trust the hint
    node.replace_dests("z0", [("127.0.0.5", 5)])
    node.tree.add(Zone("z-new", parent="root", unicast=[("127.0.0.6", 6)]))
    node.replace()
    assert fan.calls == []   # not before the tick
    node.tick()
    assert zones_applied(fan) == {"z0", "z-new"}
    fan.calls.clear()
    node.tree.remove("z-new")
    node.replace()
    node.tick()
    assert "z-new" in zones_applied(fan) and fan.dests["z-new"] == []  # dropped
    # resolving broadcast targets changes nothing
    fan.calls.clear()
    assert node.rt.resolve(["root"]) >= {"z1"}
    node.tick()
    assert fan.calls == []
    node.rt.stop()


def test_a_ticking_runtime_applies_receiver_changes_at_most_every_interval():
    """One receiver per request changes a zone every tick; the fan-out gets the zone at most
    every `dest_apply_interval_s` (re-sending 10,000 addresses every 20 ms would swamp it)."""
    tree = ZoneTree()
    tree.add(Zone("z"))
    node = Node(tree, dest_apply_interval_s=0.3)
    fan = node.fan
    node.replace()
    node.rt.start(tick_thread=False)   # as if ticking: changes wait for the tick
    node.replace_dests("z", [("127.0.0.1", 1)])
    node.tick()
    assert fan.dests["z"] == [("127.0.0.1", 1)]  # the first change goes out at once
    for i in range(2, 6):
        node.replace_dests("z", [("127.0.0.1", p) for p in range(1, i + 1)])
        node.tick()
    assert fan.dests["z"] == [("127.0.0.1", 1)]  # the next ones wait...
    node.tick(0.35)
    node.tick()
    assert fan.dests["z"] == [("127.0.0.1", p) for p in range(1, 6)]  # ...and go out together
    # a structural change is never held back
    node.tree.add(Zone("y", unicast=[("127.0.0.9", 9)]))
    node.replace()
    node.tick()
    assert fan.dests["y"] == [("127.0.0.9", 9)]
    node.rt.stop()
