"""The engine's door: every command is plain data and round-trips through a dict (and JSON)."""
import json

import pytest

from streamer.mixer.arbitration import Level
from streamer.port import (BroadcastSnapshot, ChimeAudio, Destination, EngineEvent, FileAudio,
                           LiveAudio, Programme, ReplaceZones, SetDestinations, SetZoneLoss,
                           SilenceAudio, SirenAudio, StartBroadcast, StopBroadcast, ToneAudio,
                           TtsAudio, UpdateZones, command_from_dict, command_to_dict, describe,
                           source_from_dict)
from streamer.port import AlignTick, PlaylistAudio, RelayAudio
from streamer.zones import Zone

ZONES = (Zone(id="hn", name="Hà Nội", multicast=("239.1.1.1", 5004)),
         Zone(id="hn-bd", name="Ba Đình", parent="hn", unicast=[("10.0.0.5", 5004)],
              ptime={("10.0.0.5", 5004): 40}, level="ward", code="00001", language="vi"))

SOURCES = [FileAudio("/srv/media/a.mp3", loudness_lufs=-19.5, duration_s=12.3),
           FileAudio("/srv/b.wav"), ToneAudio(440.0, 2.0, -20.0), ChimeAudio(), SirenAudio(4.0),
           SilenceAudio(0.5), LiveAudio("in-abc", via="rtp"),
           Programme(FileAudio("/srv/a.mp3", -20.0, 30.0), attention="siren", repeat=3,
                     repeat_pause_s=1.5),
           Programme(ToneAudio(), attention=None),
           TtsAudio("Bão số 3.", voice="vi-vn-x-south", rate=1.1, engine="fpt"),
           Programme(PlaylistAudio((TtsAudio("Thông báo."), FileAudio("/srv/bahnar.ogg", -21.0,
                                                                       8.0))),
                     attention="chime", repeat=2),
           RelayAudio("http://vov1.example/live.mp3"),
           RelayAudio("https://x.example/a.m3u8", fallback=FileAudio("/srv/f.mp3", -18.0, 60.0),
                      silence_s=5.0, reconnect_max_s=4.0, seconds=1800.0),
           PlaylistAudio((FileAudio("/srv/a.mp3", -20.0, 30.0), SilenceAudio(1.5),
                          ToneAudio(500.0, 1.0)), slot_s=1800.0, fade_s=2.0),
           Programme(PlaylistAudio((ChimeAudio(),)), attention="chime")]


COMMANDS = [
    *(StartBroadcast(id=f"b{i}", targets=("hn", "g1"), level=lvl, source=src, mode=mode,
                     gain_db=-3.0, owner="an", owner_name="Ông An", title="Thông báo",
                     duration_s=12.0, details={"media_id": "ab12", "format": "mp3"})
      for i, (src, lvl, mode) in enumerate(zip(
          SOURCES, [Level.BACKGROUND, Level.NORMAL, Level.PRIORITY, Level.EMERGENCY] * 3,
          ["preempt", "duck", "mix"] * 3))),
    StartBroadcast(id="", targets=("hn",), level=Level.NORMAL, source=ChimeAudio()),
    StartBroadcast(id="v2", targets=("hn", "hn-bd"), alone=("hn",), level=Level.NORMAL,
                   source=ChimeAudio()),
    StartBroadcast(id="s1", targets=("hn",), level=Level.NORMAL, source=ToneAudio(),
                   start_at=1_790_000_000.25, offset_s=12.5),
    StartBroadcast(id="a1", targets=(), level=Level.EMERGENCY, source=SirenAudio(),
                   only={"hn": (("10.0.0.1", 5004), ("10.0.0.2", 6000)), "hn-bd": ()}),
    StopBroadcast("b1"), StopBroadcast("b2", reason="stopped by an"),
    ReplaceZones(ZONES, {"g1": ("hn", "hn-bd")}), ReplaceZones(()),
    UpdateZones(ZONES[1:]),
    SetDestinations("hn", (Destination("1.2.3.4", 5004), Destination("5.6.7.8", 6000, 60, True))),
    SetDestinations("hn", ()),
    SetZoneLoss("hn", 7), SetZoneLoss("hn", None),
    AlignTick(7_250_000), AlignTick(19_999_999, tolerance_ns=0),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).type)
def test_every_command_round_trips_through_json(cmd):
    d = command_to_dict(cmd)
    assert d["type"] == type(cmd).type
    back = command_from_dict(json.loads(json.dumps(d)))
    assert back == cmd and type(back) is type(cmd)


def test_every_command_type_is_covered():
    from streamer.port import _COMMANDS
    assert {type(c).type for c in COMMANDS} == set(_COMMANDS)


@pytest.mark.parametrize("src", SOURCES, ids=lambda s: type(s).kind)
def test_source_descriptions_round_trip(src):
    assert source_from_dict(json.loads(json.dumps(describe(src)))) == src


def test_unknown_command_and_source_are_refused():
    with pytest.raises(ValueError):
        command_from_dict({"type": "format_disk"})
    with pytest.raises(ValueError):
        source_from_dict({"kind": "shell"})


def test_event_round_trips_and_leaves_out_what_does_not_apply():
    ev = EngineEvent(type="broadcast.preempted", time="2024-05-01T10:00:00.000Z", broadcast="b1",
                     level="normal", kind="file", owner="an", zones=("hn",), position_s=3.2)
    d = ev.to_dict()
    assert "reason" not in d and d["zones"] == ["hn"]
    assert EngineEvent.from_dict(json.loads(json.dumps(d))) == ev
    end = EngineEvent(type="broadcast.finished", time="t", broadcast="b1", level="normal",
                      kind="file", owner="an").to_dict()
    assert end["reason"] is None and end["error"] is None   # always there on an end


def test_snapshot_dict_has_the_api_shape():
    s = BroadcastSnapshot(id="b1", targets=("hn",), reached_zones=("hn", "hn-bd"),
                          level="normal", mode="preempt", source={"kind": "file"}, live=False,
                          owner="an", owner_name="An", state="playing", on_air_zones=("hn",),
                          preempted_zones=(), created_at="t0", started_at="t1", ended_at=None,
                          position_s=1.0, duration_s=None, error=None, timing={}, title="x")
    d = s.to_dict()
    assert d["zones"] == ["hn"] and "targets" not in d and d["reached_zones"] == ["hn", "hn-bd"]
    assert not s.ended
