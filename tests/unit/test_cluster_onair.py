"""What a standby origin carries on after a takeover (streamer.cluster.onair.plan_takeover)."""
from __future__ import annotations

import pytest

from streamer.cluster.onair import OnAirEntry, plan_takeover
from streamer.mixer.arbitration import Level
from streamer.port import LiveAudio, StartBroadcast, ToneAudio, command_to_dict


def entry(seconds=60.0, offset=0.0, start_ms=1_000_000, duration=None, source=None):
    cmd = StartBroadcast("b1", ("z",), Level.NORMAL, source or ToneAudio(800, seconds),
                         offset_s=offset, duration_s=duration, start_at=123.0)
    return OnAirEntry(command_to_dict(cmd), start_ms, 7)


@pytest.mark.parametrize("elapsed_ms", [0, 1, 12_345, 59_000])
def test_resumes_under_the_same_id_at_the_offset_reached(elapsed_ms):
    cmd, _why = plan_takeover(entry(), 1_000_000 + elapsed_ms)
    assert cmd is not None and cmd.id == "b1" and cmd.targets == ("z",)
    assert cmd.offset_s == pytest.approx(elapsed_ms / 1000)
    assert cmd.start_at is None


def test_start_ms_already_counts_the_original_offset():
    # went on air at offset 30 s at t=1,030,000: start_ms (offset 0) is 1,000,000
    cmd, _ = plan_takeover(entry(offset=30.0, start_ms=1_000_000, duration=40.0), 1_045_000)
    assert cmd is not None and cmd.offset_s == pytest.approx(45.0)
    assert cmd.duration_s == pytest.approx(25.0)      # 40 s from offset 30: 15 s played


def test_finished_by_now_or_live_or_unreadable_is_not_carried_on():
    assert plan_takeover(entry(seconds=10), 1_010_000)[0] is None
    assert plan_takeover(entry(duration=5.0), 1_006_000)[0] is None
    assert plan_takeover(entry(source=LiveAudio("talk-1")), 1_001_000)[0] is None
    assert plan_takeover(OnAirEntry({"type": "nope"}, 1), 2)[0] is None


def test_a_queued_one_is_submitted_as_it_was():
    e = entry(start_ms=None)
    cmd, _ = plan_takeover(e, 5_000_000)
    assert cmd is not None and cmd.offset_s == 0.0 and cmd.start_at == 123.0


def test_entry_fields_round_trip_as_redis_returns_them():
    e = entry()
    raw = {k.encode(): v.encode() for k, v in e.fields().items()}
    assert OnAirEntry.parse(raw) == e
    q = entry(start_ms=None)
    assert OnAirEntry.parse(q.fields()) == q


def test_position_when_last_seen_counts_over_start():
    # started at t=1,000,000 but paused 20 s under live talk: at t=1,040,000 it was at 15 s
    e = entry()
    e.pos, e.pos_ms, e.paused = 15.0, 1_040_000, False
    cmd, _ = plan_takeover(e, 1_042_500)
    assert cmd is not None and cmd.offset_s == pytest.approx(17.5)   # not 42.5 (now - start)


def test_paused_under_live_talk_resumes_where_it_was_paused():
    # the live talk that paused it is not carried over: the programme goes on at once, from
    # where it stopped, however long the takeover took
    e = entry()
    e.pos, e.pos_ms, e.paused = 15.0, 1_040_000, True
    for now in (1_040_001, 1_049_000):
        cmd, why = plan_takeover(e, now)
        assert cmd is not None and cmd.offset_s == pytest.approx(15.0), why
    raw = {k.encode(): v.encode() for k, v in e.fields().items()}
    assert OnAirEntry.parse(raw) == e
