"""The late-tick probe (streamer.tickprobe), pure part: an on-time tick leaves no record, a late
one leaves one (the thread-level test is tests/integration/test_tickprobe.py)."""
from __future__ import annotations

import sys
import threading

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_on_time_ticks_leave_no_record() -> None:
    from streamer.tickprobe import LateTickProbe
    p = LateTickProbe(threading.get_native_id())
    try:
        for i in range(20):
            p.mark(i * 20_000_000, i * 20_000_000 + 100_000)
        assert p.stats() == {"late_causes": {"gil": 0, "cpu_wait": 0, "steal": 0, "overrun": 0,
                                             "catchup": 0}, "late_detail": []}
        rec = p.late(20 * 20_000_000 + 15_000_000, 15_000_000, 20 * 20_000_000)
        assert rec is not None and rec["late_ms"] == 15.0 and len(p.records) == 1
    finally:
        p.close()
