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
    """With the real fan-out, the tick that applies a carve cuts its list and its zone's rest
    out of the zone's packed list the fan-out holds (Fanout.prepare_split, no packing per
    address) and finds both (a cache hit each); what each key then holds is exactly what
    packing its list would give."""

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
        packed: list[int] = []
        pack = fan._clean_and_pack
        fan._clean_and_pack = lambda a: (packed.append(len(a)), pack(a))[1]  # type: ignore
        alert(rig, inside)
        cid = carve_id("z", "alert-1")
        assert not fan._prepared   # nothing on the submitting thread
        rig.run(1)
        assert not fan._prepared   # cut and taken by the tick that applied the carve
        assert packed == []        # neither list was packed address by address
        rest = [a for a in many if a not in set(inside)]
        assert fan.destinations(cid) == inside and fan.destinations("z") == rest
        assert np.array_equal(fan._dests.keys[cid], pack_addrs(inside))
        assert np.array_equal(fan._dests.keys["z"], pack_addrs(rest))
        # a key holding another list: nothing prepared that way (the caller packs as before)
        assert fan.prepare_split("z", many, frozenset(inside)) is None
    finally:
        fan.close()
