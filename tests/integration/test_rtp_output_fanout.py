"""The RTP output with a real fan-out (a UDP socket): big destination lists are packed ahead,
off the tick, when zones reach the runtime."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamer.port import ReplaceZones, UpdateZones
from streamer.rtp.fanout import Fanout
from streamer.runtime import Runtime
from streamer.zones import Zone

pytestmark = pytest.mark.integration


def test_prepared_destinations_are_packed_off_the_tick():
    fan = Fanout(workers=0)
    try:
        rt = Runtime(fan)
        rt.submit(ReplaceZones((Zone("big"),)))
        rt.start(tick_thread=False)   # zones wait for the tick, which the test runs
        addrs = [(f"127.0.{i // 250}.{i % 250 + 1}", 5000) for i in range(3000)]
        big = Zone("big", unicast=addrs)
        assert rt.rtp.prepare([big]) == 1
        assert len(fan._prepared) == 1
        rt.submit(UpdateZones((big,)))   # packed on the submitting thread (the same list)
        assert len(fan._prepared) == 1
        calls = []
        real = fan._clean_and_pack
        fan._clean_and_pack = lambda a: calls.append(len(a)) or real(a)
        rt.run_tick(0, 1_000 * 10**9, 1_700_000_000.0)
        assert calls == [] and len(fan._prepared) == 0  # the tick packed nothing itself
        assert fan.destinations("big") == addrs
        assert np.array_equal(fan._dests.keys["big"], real(addrs)[1])
        # already applied: nothing to prepare; small lists are left to the tick
        assert rt.rtp.prepare([big]) == 0
        assert rt.rtp.prepare([dataclasses.replace(big, unicast=addrs[:10])]) == 0
        # a prepared list that never gets applied does not pile up
        for n in range(40):
            fan.prepare(addrs[: 300 + n])
        assert len(fan._prepared) <= 16
        rt.stop()
    finally:
        fan.close()
