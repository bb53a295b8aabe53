import pytest

from streamer.zones import Zone, ZoneError, ZoneTree, parse_hostport


def tree():
    t = ZoneTree()
    t.add(Zone("binh-dinh", level="province"))
    t.add(Zone("phu-cat", parent="binh-dinh", level="district"))
    t.add(Zone("nhon-ly", parent="binh-dinh", level="commune"))
    t.add(Zone("ly-luong", parent="nhon-ly", level="village"))
    t.add(Zone("ly-chanh", parent="nhon-ly", level="village"))
    t.add(Zone("cat-hai", parent="phu-cat", level="commune"))
    t.set_group("coastal", ["nhon-ly", "cat-hai"])
    t.validate()
    return t


def test_resolve_subtree_and_groups():
    t = tree()
    assert t.resolve(["nhon-ly"]) == {"nhon-ly", "ly-luong", "ly-chanh"}
    assert t.resolve(["binh-dinh"]) == set(t.zones)
    assert t.resolve(["coastal"]) == {"nhon-ly", "ly-luong", "ly-chanh", "cat-hai"}
    assert t.resolve(["ly-luong", "cat-hai"]) == {"ly-luong", "cat-hai"}


def test_unknown_target_is_an_error():
    with pytest.raises(ZoneError, match="nowhere"):
        tree().resolve(["nowhere"])


def test_move_takes_effect_and_refuses_cycles():
    t = tree()
    v = t.version
    t.move("ly-chanh", "cat-hai")
    assert t.version > v
    assert "ly-chanh" in t.resolve(["phu-cat"])
    assert "ly-chanh" not in t.resolve(["nhon-ly"])
    with pytest.raises(ZoneError):
        t.move("binh-dinh", "ly-luong")


def test_remove_refuses_zone_with_children():
    t = tree()
    with pytest.raises(ZoneError):
        t.remove("nhon-ly")
    t.remove("ly-luong")
    assert "ly-luong" not in t.zones


@pytest.mark.parametrize("bad", ["nocolon", "host:1", "1.2.3.4:0", "1.2.3.4:99999", "1.2.3.4:x"])
def test_parse_hostport_rejects(bad):
    with pytest.raises(ZoneError):
        parse_hostport(bad)


def test_parse_hostport_ok():
    assert parse_hostport("239.20.0.1:5004") == ("239.20.0.1", 5004)


def test_resolving_thousands_of_targets_walks_the_tree_once():
    """A province-wide alert naming 5,000 communes (plus a group and a district) resolves in
    one pass: it used to walk the whole tree once per target (seconds at this size)."""
    import time

    from streamer.zones import Zone, ZoneTree
    t = ZoneTree()
    t.add(Zone("p"))
    for d in range(50):
        t.add(Zone(f"d{d}", parent="p"))
        for c in range(100):
            t.add(Zone(f"d{d}c{c}", parent=f"d{d}"))
    t.set_group("coast", [f"d{d}c0" for d in range(50)])
    targets = [f"d{d}c{c}" for d in range(50) for c in range(100)] + ["coast", "d7"]
    t0 = time.perf_counter()
    got = t.resolve(targets)
    assert time.perf_counter() - t0 < 0.5
    assert got == {f"d{d}c{c}" for d in range(50) for c in range(100)} | {"d7"}
    assert t.resolve(["p"]) == set(t.zones)
