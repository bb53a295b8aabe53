"""The engine port (`streamer.runtime.Runtime`) with its tick thread and a real fan-out socket:
commands in, typed events and snapshots out, errors as the port names them."""
import time

import pytest

from streamer.ingest.live import LiveSource
from streamer.mixer.arbitration import Level
from streamer.port import (Conflict, EngineEvent, LiveAudio, Programme, Refused, ReplaceZones,
                           StartBroadcast, StopBroadcast, ToneAudio, UnknownBroadcast,
                           ZoneError)
from streamer.rtp.fanout import Fanout
from streamer.runtime import Runtime
from streamer.zones import Zone


def until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def runtime():
    fan = Fanout(bind=("127.0.0.1", 0))
    rt = Runtime(fan)
    rt.submit(ReplaceZones((Zone(id="z1", name="Z1", unicast=[("127.0.0.1", 9)]),
                            Zone(id="z2", name="Z2", parent="z1")), {"g": ("z2",)}))
    rt.start()
    yield rt
    rt.stop()
    fan.close()


def test_a_described_broadcast_plays_to_the_end(runtime):
    events: list[EngineEvent] = []
    runtime.subscribe(events.append)
    snap = runtime.submit(StartBroadcast(id="", targets=("z1",), level=Level.NORMAL,
                                         source=Programme(ToneAudio(seconds=0.4),
                                                          attention="chime"), title="T"))
    assert snap.id and snap.reached_zones == ("z1", "z2") and snap.title == "T"
    assert snap.duration_s == pytest.approx(0.4 + 2.59, abs=0.05)
    assert until(lambda: runtime.zone_status()["z2"].on_air)
    zs = runtime.zone_status()
    assert zs["z1"].program == zs["z2"].program and zs["z1"].on_air[0].broadcast == snap.id
    assert until(lambda: any(e.type == "broadcast.finished" for e in events))
    assert [e.type for e in events] == ["broadcast.created", "broadcast.started",
                                        "broadcast.finished"]
    assert runtime.broadcast(snap.id).state == "finished"
    assert runtime.stats().clock["ticks"] > 0 and runtime.stats().ssrc == runtime.ssrc


def test_live_input_refusal_conflict_and_unknown(runtime):
    iid = runtime.add_live_input(LiveSource(kind="webrtc"))
    runtime.submit(StartBroadcast(id="live1", targets=("g",), level=Level.PRIORITY,
                                  source=LiveAudio(iid)))
    other = runtime.add_live_input(LiveSource())
    with pytest.raises(Refused) as e:
        runtime.submit(StartBroadcast(id="x", targets=("z2",), level=Level.PRIORITY,
                                      source=LiveAudio(other)))
    assert e.value.holder.id == "live1"
    assert runtime.catalogue.live_inputs == 1          # the refused one was let go
    with pytest.raises(Conflict):
        runtime.submit(StartBroadcast(id="live1", targets=("z2",), level=Level.NORMAL,
                                      source=ToneAudio()))
    with pytest.raises(ZoneError):
        runtime.submit(StartBroadcast(id="y", targets=("nowhere",), level=Level.NORMAL,
                                      source=ToneAudio()))
    assert runtime.submit(StopBroadcast("live1")).state == "stopped"
    assert runtime.catalogue.live_inputs == 0          # dropped with its broadcast
    with pytest.raises(UnknownBroadcast):
        runtime.submit(StopBroadcast("live1"))
