"""A polygon/circle alert's carve (streamer.core.carve) with a real fan-out (a UDP socket, no
sends needed): its lists are cut out of the zone's packed list before the tick that applies
them, and that tick finds them."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.port import carve_id
from streamer.rtp.fanout import Fanout
from streamer.rtp.sendmmsg import pack_addrs
from streamer.zones import Zone, ZoneTree
from tests.unit.engine_rig import Rig
from tests.unit.test_core_carve import alert

pytestmark = pytest.mark.integration


def test_a_carve_s_lists_are_cut_from_the_zone_s_packed_list_and_found_by_the_tick():
    """With the real fan-out, StartBroadcast with `only` prepares the carve's and its zone's
    lists by cutting the zone's packed list the fan-out holds (Fanout.prepare_split, no packing
    per address); the tick that applies the carve finds both (a cache hit each), and what each
    key then holds is exactly what packing its list would give."""

    many = [(f"127.0.{i // 250}.{i % 250 + 1}", 40000 + i % 7) for i in range(1000)]
    tree = ZoneTree()
    tree.add(Zone("z", unicast=list(many)))
    rig = Rig(tree)
    fan = Fanout(("127.0.0.1", 0))
    try:
        rig.fan = rig.rt.fanout = rig.rt.rtp.fanout = fan
        rig.rt.rtp.apply_zone(rig.rt.core.tree, "z", force=True)
        rig.start(["z"], seconds=60)
        rig.run(2)
        inside = many[1::3]
        packed_again: list = []
        fan.prepare = packed_again.append   # type: ignore[method-assign]
        alert(rig, inside)
        assert not packed_again   # cut out, not packed again address by address
        cid = carve_id("z", "alert-1")
        assert len(fan._prepared) == 2
        rig.run(2)
        assert not fan._prepared    # both taken by the tick's set_destinations
        rest = [a for a in many if a not in set(inside)]
        assert fan.destinations(cid) == inside and fan.destinations("z") == rest
        assert np.array_equal(fan._dests.keys[cid], pack_addrs(inside))
        assert np.array_equal(fan._dests.keys["z"], pack_addrs(rest))
        # a key holding another list: nothing prepared that way (the caller packs as before)
        assert fan.prepare_split("z", many, frozenset(inside)) == 0
    finally:
        fan.close()
