"""The benchmark sink's accounting (pure: datagrams are fed in as arrays, no sockets read)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.sink import Sink


def _feed(sink: Sink, pairs: list[tuple[int, int]]) -> None:
    idx = np.array([i for i, _ in pairs], dtype=np.int32)
    seq = np.array([s & 0xFFFF for _, s in pairs], dtype=np.uint16)
    sink.idx_parts.append(idx)
    sink.seq_parts.append(seq)
    sink.total += len(pairs)


@pytest.fixture
def sink():
    s = Sink(4, sample=0)
    yield s
    s.sock.close()


def test_two_phases_with_their_own_numbering_are_not_loss(sink):
    """40 ms receivers: phase 0 (receivers 0, 2) gets windows base..base+249, phase 1
    (receivers 1, 3) one more (its first frame alone, then pairs, then the last frame)."""
    sink.groups = np.array([0, 1, 0, 1])
    base = 65_500   # the numbering wraps inside the stream
    pairs = []
    for r in range(4):
        last = 249 if r % 2 == 0 else 250
        pairs += [(r, base + s) for s in range(last + 1)]
    _feed(sink, pairs)
    res = sink.analyze(40.0)
    assert res["loss_pct"] == 0 and res["max_seq_gap"] == 0
    assert res["packets_expected"] == res["packets_delivered"] == 2 * 250 + 2 * 251
    assert res["receivers_complete"] == 4 and res["sequence_spaces"] == 2
    # with one sequence space assumed, the same stream looks like loss: the old accounting
    sink.groups = None
    assert sink.analyze(40.0)["loss_pct"] > 0


def test_a_lost_last_packet_in_one_phase_is_still_loss(sink):
    sink.groups = np.array([0, 1, 0, 1])
    pairs = []
    for r in range(4):
        last = 100 if r != 3 else 99       # receiver 3 misses its phase's last window
        pairs += [(r, 7 + s) for s in range(last + 1)]
    _feed(sink, pairs)
    res = sink.analyze(40.0)
    assert res["packets_delivered"] == res["packets_expected"] - 1
    assert res["max_seq_gap"] == 1 and res["receivers_complete"] == 3
    # trimming the tail (the server was stopped mid-stream) applies per sequence space
    res = sink.analyze(40.0, trim_tail=2)
    assert res["loss_pct"] == 0 and res["expected_per_receiver"] == 99


def test_one_sequence_space_by_default(sink):
    pairs = [(r, s) for r in range(4) for s in range(50) if not (r == 2 and s == 10)]
    _feed(sink, pairs)
    res = sink.analyze(20.0)
    assert res["packets_expected"] == 200 and res["packets_delivered"] == 199
    assert res["max_seq_gap"] == 1 and res["sequence_spaces"] == 1


def test_a_phase_that_got_nothing_counts_as_lost(sink):
    sink.groups = np.array([0, 1, 0, 1])
    _feed(sink, [(r, s) for r in (0, 2) for s in range(30)])
    res = sink.analyze(40.0)
    assert res["packets_expected"] == 120 and res["packets_delivered"] == 60
    assert res["loss_pct"] == 50 and res["receivers_complete"] == 2
    assert res["max_seq_gap"] == 30
