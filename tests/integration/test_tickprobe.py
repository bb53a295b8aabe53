"""The late-tick probe (streamer.tickprobe): a tick made late by a thread holding the GIL is
put down to GIL wait, with the holder named; catch-up ticks after it carry no cause of their own
(the pure part: tests/unit/test_tickprobe.py)."""
from __future__ import annotations

import ctypes
import sys
import threading
import time

import pytest

from bench.common import late_attribution
from streamer.clock import TickThread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_gil_holder_is_named() -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    t = TickThread(lambda k: None, realtime=False)
    t.start()
    try:
        assert _wait(lambda: t.schedule is not None and t.schedule.k > 5)
        assert t.probe is not None
        before = dict(late_ticks=t.schedule.late_ticks, **t.probe.stats())
        # usleep through PyDLL keeps the GIL for the whole call: 150 ms without releasing it
        libc = ctypes.PyDLL(None)

        def gil_hog() -> None:
            libc.usleep(150_000)
            end = time.monotonic() + 0.05   # and goes on in Python, as a real holder would
            while time.monotonic() < end:
                pass
        h = threading.Thread(target=gil_hog, name="gil-hog")
        h.start()
        h.join(5)
        assert _wait(lambda: t.schedule.k > 0 and t.probe.late_seen >= 1)
        time.sleep(0.1)
        after = dict(late_ticks=t.schedule.late_ticks, **t.probe.stats())
    finally:
        t.stop()
        sys.setswitchinterval(old)
    att = late_attribution(before, after)
    # a loaded CI machine can add late ticks of its own (host steal, CPU wait) before or after
    # the hog's: exactly one is put on the GIL, and it names the hog
    gil = [r for r in att["late_detail"] if r["cause"] == "gil"]
    assert len(gil) == 1, att["late_detail"]
    first = gil[0]
    assert first["gil_wait_ms"] >= 50, first
    assert "gil-hog" in first["threads"][0] and "gil_hog" in first["threads"][0], first
    # the ticks that fire to catch up after the stall are not counted as causes of their own
    assert att["late_causes"]["gil"] == 1
    assert sum(att["late_causes"].values()) == after["late_ticks"] - before["late_ticks"]
    after_gil = att["late_detail"][att["late_detail"].index(first) + 1:]
    assert all(r["cause"] in ("catchup", "steal", "cpu_wait") for r in after_gil), after_gil
    assert any(r["cause"] == "catchup" for r in after_gil), after_gil
