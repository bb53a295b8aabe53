"""Who sends a zone's static destinations and the zone.set/zone.drop commands that keep the
edges in step with the origin's tree (streamer/cluster/zonesync.py, pure)."""
from __future__ import annotations

import pytest

from streamer.cluster.zonesync import (ZoneSync, parse_serves, served_by, strip_served,
                                       tree_from_json, tree_to_json)
from streamer.zones import Zone, ZoneTree

M = ("239.1.2.3", 5004)


def _zones(**kw: Zone) -> dict[str, Zone]:
    return dict(kw)


def test_parse_and_serve():
    assert parse_serves(b"a, b,,c") == frozenset({"a", "b", "c"})
    assert parse_serves("") == frozenset() and parse_serves(None) == frozenset()
    edges = {"e1": ("1", frozenset({"a"})), "e2": ("1", frozenset({"*"}))}
    assert served_by("a", edges) == ("e1", "e2") and served_by("b", edges) == ("e2",)
    assert served_by("a", {"e1": ("1", frozenset({"b"}))}) == ()


def test_strip_served_keeps_what_no_edge_sends():
    a = Zone("a", multicast=M, unicast=[("10.0.0.9", 5004)], ptime={("10.0.0.9", 5004): 40})
    b = Zone("b", multicast=("239.1.2.4", 5004))
    out = strip_served([a, b], {"e1": ("1", frozenset({"a"}))})
    assert out[0].multicast is None and out[0].unicast == [] and out[0].ptime == {}
    assert out[1] is b
    assert a.multicast == M          # the control tree's zone itself is untouched


def test_plan_follows_the_tree_and_the_edges():
    sync = ZoneSync()
    edges = {"e1": ("t1", frozenset({"a", "b"}))}
    zones = _zones(a=Zone("a", multicast=M), b=Zone("b"), c=Zone("c", multicast=M))
    first = sync.plan(zones, edges)
    # e1 serves a (statics) and b (none yet: nothing to send); c is the origin's
    assert first == [("zone.set", {"zone": "a", "multicast": "239.1.2.3:5004", "unicast": [],
                                   "ptime": {}, "edges": ["e1"]})]
    assert sync.plan(zones, edges) == []             # nothing changed: nothing sent
    zones["b"] = Zone("b", unicast=[("10.0.0.7", 5004)], ptime={("10.0.0.7", 5004): 60})
    assert sync.plan(zones, edges) == [("zone.set", {
        "zone": "b", "multicast": None, "unicast": ["10.0.0.7:5004"],
        "ptime": {"10.0.0.7:5004": 60}, "edges": ["e1"]})]
    zones["a"] = Zone("a")                           # its multicast removed: e1 stops sending
    assert [b["multicast"] for _k, b in sync.plan(zones, edges)] == [None]
    del zones["c"]                                   # deleted: every edge drops it
    assert sync.plan(zones, edges) == [("zone.drop", {"zone": "c"})]
    zones["c"] = Zone("c")                           # created again: every edge may pull it
    assert sync.plan(zones, edges) == [("zone.set", {"zone": "c", "multicast": None,
                                                     "unicast": [], "ptime": {}})]
    del zones["c"]
    assert sync.plan(zones, edges) == [("zone.drop", {"zone": "c"})]
    # an edge that restarted (a new `since`) is told everything again; a new edge too (a has
    # no static destinations any more: nothing to tell about it)
    edges = {"e1": ("t2", frozenset({"a", "b"})), "e2": ("t1", frozenset({"*"}))}
    got = sync.plan(zones, edges)
    assert sorted((b["zone"], b["edges"][0]) for _k, b in got) == [("b", "e1"), ("b", "e2")]
    # e2 no longer serves b: it gets b's destinations emptied
    edges["e2"] = ("t1", frozenset({"a"}))
    assert sync.plan(zones, edges) == [("zone.set", {"zone": "b", "multicast": None,
                                                     "unicast": [], "ptime": {},
                                                     "edges": ["e2"]})]
    sync.reset()                                     # a new leader tells every edge again
    assert sync.plan(zones, edges) == [("zone.set", {
        "zone": "b", "multicast": None, "unicast": ["10.0.0.7:5004"],
        "ptime": {"10.0.0.7:5004": 60}, "edges": ["e1"]})]


def test_tree_through_redis_text_round_trip():
    t = ZoneTree()
    t.add(Zone("tinh", name="Tỉnh", level="province", code="52"))
    t.add(Zone("xa", name="Xã Nhơn Lý", parent="tinh", multicast=M,
               unicast=[("10.0.0.9", 5004)], ptime={("10.0.0.9", 5004): 40}, language="vi"))
    t.set_group("g", ["xa"])
    back = tree_from_json(tree_to_json(t.zones.values(), t.groups))
    assert back.zones["xa"] == t.zones["xa"] and back.zones["tinh"] == t.zones["tinh"]
    assert list(back.groups["g"]) == ["xa"]
    for bad in ('{"zones": [{"name": "x"}]}', '{"zones": 3}',
                '{"zones": [{"id": "a", "parent": "missing"}]}'):
        with pytest.raises(ValueError):
            tree_from_json(bad)
