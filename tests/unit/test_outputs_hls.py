"""HlsZones (streamer/outputs/hls.py): an encoder per zone starts on the first fetch, is fed by
the hub, counts its clients and stops when nobody fetched it for three segments; a limit on
zones encoding at once. Encoders are fakes here (the real one runs a thread)."""
from __future__ import annotations

from pathlib import Path

import pytest

from streamer.outputs.hls import SEGMENT_NAME, HlsBusy, HlsEncoder, HlsZones


class FakeEncoder(HlsEncoder):
    def __init__(self, zone: str, directory: Path, segment_s: float) -> None:
        super().__init__(zone, directory, segment_s)
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, join_s: float = 0.0) -> None:
        self.stopped = True
        super().stop(join_s)   # thread never started: removes the directory


def make(tmp_path: Path, **kw):
    consumers: dict[str, list] = {}
    zones = HlsZones(tmp_path, lambda z, c: consumers.setdefault(z, []).append(c),
                     lambda z, c: consumers[z].remove(c), factory=FakeEncoder, **kw)
    return zones, consumers


def test_first_fetch_starts_one_encoder_per_zone_and_idle_stops_it(tmp_path):
    zones, consumers = make(tmp_path)
    a = zones.touch("xa1", "phone1", 100.0)
    assert isinstance(a, FakeEncoder) and a.started and consumers["xa1"] == [a]
    assert zones.touch("xa1", "phone2", 101.0) is a          # encoded once per zone
    assert zones.counts(101.0) == {"xa1": 2}
    assert zones.sweep(106.5) == []                          # 5.5 s < 3 segments of 2 s
    zones.touch("xa1", "phone1", 106.5)
    assert zones.counts(111.0) == {"xa1": 1}                 # phone2 idle 10 s: not counted
    assert zones.sweep(112.6) == ["xa1"]                     # 6.1 s without a fetch
    assert a.stopped and consumers["xa1"] == [] and not a.dir.exists()
    b = zones.touch("xa1", "phone1", 200.0)                  # a new listener: a new encoder
    assert b is not a and b.started


def test_zone_limit_and_failed_encoder_restarts(tmp_path):
    zones, _ = make(tmp_path, max_zones=2)
    zones.touch("a", "c", 0.0)
    zones.touch("b", "c", 0.0)
    with pytest.raises(HlsBusy):
        zones.touch("c", "c", 0.0)
    zones.encoders["a"].failed = "boom"
    old = zones.encoders["a"]
    assert zones.touch("a", "c", 1.0) is not old
    zones.close()
    assert zones.encoders == {}


def test_encoder_queue_is_bounded_and_drops_oldest(tmp_path):
    enc = HlsEncoder("z", tmp_path, max_queue=2)
    for k in range(5):
        enc.on_packets("z", k * 10, [b"x"] * 10, [None] * 10)
    assert enc.dropped_batches == 3
    assert enc._q.get_nowait()[0] == 30


def test_segment_names():
    assert SEGMENT_NAME.match("seg00012.ts")
    for bad in ("../index.m3u8", "seg1.ts", "seg00012.ts/x", "index.m3u8", "seg00012.tsx"):
        assert not SEGMENT_NAME.match(bad)
