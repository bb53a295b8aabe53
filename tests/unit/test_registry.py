"""The registry tells the truth about receivers that are online but not playing, and a restarted
registry does not take messages captured before it started (sans-IO, chosen times)."""
from __future__ import annotations

import pytest

from streamer.rtp import control_protocol as cp
from streamer.rtp.registry import ReceiverRegistry
from streamer.rtp.srtp import MediaKeyring

SECRETS = {"rx1": (b"s1" * 16, "z1"), "rx2": (b"s2" * 16, "z1"), "rx3": (b"s3" * 16, "z2")}
T0 = 1_750_000_000.0
ADDR = ("198.51.100.7", 40000)


def make(**kw):
    events: list[dict] = []
    reg = ReceiverRegistry(SECRETS.get, on_event=events.append, keyring=MediaKeyring(),
                           heartbeat_s=15.0, report_s=5.0, **kw)
    return reg, events


def send(reg, t, rid, wall, body=None, addr=ADDR):
    data = cp.encode(t, rid, SECRETS[rid][0], body, timestamp_ms=int(wall * 1000))
    return reg.datagram_received(data, addr, wall - T0, wall)


def report(reg, rid, wall, **body):
    send(reg, cp.MsgType.REPORT, rid, wall, {"fraction_lost": 0.0, "received": 0, **body})


def types(events):
    return [e["type"] for e in events]


def test_auth_failures_while_online_show_as_not_playing_with_a_reason():
    reg, events = make()
    send(reg, cp.MsgType.REGISTER, "rx1", T0)
    reg.set_on_air({"z1": [{"broadcast": "b1", "level": "normal"}]}, T0)
    report(reg, "rx1", T0 + 5, playing=False, auth_failed=250, auth_failed_new=250)
    st = reg.status("rx1")
    assert st["online"] and st["state"] == "online"
    assert st["playback"]["state"] == "not_playing"
    assert st["playback"]["reason"] == "auth_failed" and st["playback"]["auth_failed"] == 250
    # it measured no link: the dashboard must not say "good, 0 % loss"
    assert st["link"]["quality"] is None and st["link"]["fraction_lost"] is None
    ev = [e for e in events if e["type"] == "receiver.not_playing"]
    assert len(ev) == 1 and ev[0]["reason"] == "auth_failed" and ev[0]["zone"] == "z1"
    assert reg.not_playing_by_zone() == {("z1", "auth_failed"): 1}
    assert reg.auth_failures_by_zone() == {"z1": 250}
    # still failing: no second alarm; counted on
    report(reg, "rx1", T0 + 10, playing=False, auth_failed=500, auth_failed_new=250)
    assert types(events).count("receiver.not_playing") == 1
    assert reg.auth_failures_by_zone() == {"z1": 500}
    # it re-keyed and plays again
    report(reg, "rx1", T0 + 15, playing=True, received=200, auth_failed=510, auth_failed_new=10,
           broadcast="b1", level="normal")
    st = reg.status("rx1")
    assert st["playback"]["state"] == "playing" and st["link"]["quality"] == "good"
    again = [e for e in events if e["type"] == "receiver.playing_again"]
    assert len(again) == 1 and again[0]["previous_reason"] == "auth_failed"
    assert again[0]["not_playing_s"] == 10.0
    assert reg.not_playing_by_zone() == {}


def test_on_air_zone_without_media_is_not_playing_idle_zone_is_idle():
    reg, events = make()
    send(reg, cp.MsgType.REGISTER, "rx1", T0)
    send(reg, cp.MsgType.REGISTER, "rx3", T0)
    report(reg, "rx1", T0 + 1, playing=False)
    assert reg.status("rx1")["playback"]["state"] == "idle"
    reg.set_on_air({"z1": [{"broadcast": "b1", "level": "normal"}], "z2": []}, T0 + 2)
    report(reg, "rx1", T0 + 3, playing=False)             # just went on air: give it time
    assert reg.status("rx1")["playback"]["state"] == "idle"
    report(reg, "rx1", T0 + 8.5, playing=False)           # a whole interval on air, silent
    st = reg.status("rx1")["playback"]
    assert st["state"] == "not_playing" and st["reason"] == "no_media"
    report(reg, "rx3", T0 + 8.5, playing=False)           # its zone is not on air
    assert reg.status("rx3")["playback"]["state"] == "idle"
    assert reg.not_playing_by_zone() == {("z1", "no_media"): 1}
    # the broadcast ends: an idle receiver is not an alarm any more
    reg.set_on_air({"z1": [], "z2": []}, T0 + 9)
    report(reg, "rx1", T0 + 13.5, playing=False)
    assert reg.status("rx1")["playback"]["state"] == "idle"
    assert types(events).count("receiver.playing_again") == 1


def test_poll_catches_a_silent_receiver_between_reports_and_one_that_stopped_reporting():
    reg, events = make()
    send(reg, cp.MsgType.REGISTER, "rx1", T0)
    send(reg, cp.MsgType.REGISTER, "rx2", T0)
    reg.set_on_air({"z1": [{"broadcast": "b1", "level": "normal"}]}, T0)
    report(reg, "rx1", T0 + 2, playing=False)             # said "silent" 2 s into the broadcast
    report(reg, "rx2", T0 + 2, playing=True)
    reg.poll(4.0, T0 + 4)
    assert reg.status("rx1")["playback"]["state"] == "idle"
    reg.poll(6.5, T0 + 6.5)
    assert reg.status("rx1")["playback"]["reason"] == "no_media"
    # rx2 keeps heartbeating but its reports stop
    for t in (T0 + 10, T0 + 17):
        send(reg, cp.MsgType.HEARTBEAT, "rx2", t)
    reg.poll(18.5, T0 + 18.5)
    st = reg.status("rx2")
    assert st["online"] and st["playback"] == {**st["playback"], "state": "not_playing",
                                               "reason": "no_reports"}
    # offline is its own alarm: the not-playing verdict goes with it
    reg.poll(100.0, T0 + 100)
    assert not reg.status("rx2")["online"] and reg.status("rx2")["playback"]["state"] is None
    assert reg.not_playing_by_zone() == {}


def test_a_restarted_registry_refuses_messages_captured_before_it_started():
    """A heartbeat captured 10 s before a restart, replayed from the attacker's address to the
    new server (within the ±30 s window, its nonce unknown to the new server)."""
    captured = cp.encode(cp.MsgType.HEARTBEAT, "rx1", SECRETS["rx1"][0],
                         timestamp_ms=int((T0 - 10) * 1000))
    reg, _ = make(started_wall=T0)
    assert reg.datagram_received(captured, ("203.0.113.66", 5555), 0.0, T0 + 1) == []
    assert reg.counters["replay"] == 1 and reg.status("rx1") is None
    # without started_wall the first wall it sees is its start
    reg, _ = make()
    reg.poll(0.0, T0)
    assert reg.datagram_received(captured, ("203.0.113.66", 5555), 1.0, T0 + 1) == []
    assert reg.status("rx1") is None
    # the receiver's own fresh heartbeat is taken
    assert send(reg, cp.MsgType.HEARTBEAT, "rx1", T0 + 2)
    assert reg.status("rx1")["address"] == f"{ADDR[0]}:{ADDR[1]}"


def test_rekey_register_is_counted():
    reg, _ = make()
    send(reg, cp.MsgType.REGISTER, "rx1", T0)
    out = send(reg, cp.MsgType.REGISTER, "rx1", T0 + 1, {"rekey": "auth_failed"})
    assert len(out) == 1 and reg.counters["rekeys"] == 1


def test_an_id_being_looked_up_is_not_refused_and_is_answered_once_found():
    """A receiver provisioned by another process: the server's cache does not know it yet, the
    control plane is looking it up. Its registration is held, not counted as unknown, and
    answered (a welcome to the address it came from) as soon as the look-up finds it."""
    known: dict[str, tuple[bytes, str]] = {}
    reg = ReceiverRegistry(known.get, keyring=MediaKeyring(), heartbeat_s=15.0)
    reg.is_pending = lambda rid: rid == "rx1"
    data = cp.encode(cp.MsgType.REGISTER, "rx1", SECRETS["rx1"][0], None,
                     timestamp_ms=int(T0 * 1000))
    assert reg.datagram_received(data, ADDR, 0.0, T0) == []
    assert reg.counters["unknown_id"] == 0 and reg.counters["lookup_pending"] == 1
    assert reg.retry("rx2", 0.5, T0 + 0.5) == []          # nothing held for another id
    known["rx1"] = SECRETS["rx1"]                          # the look-up found it
    out = reg.retry("rx1", 0.5, T0 + 0.5)
    assert len(out) == 1 and out[0][1] == ADDR
    assert cp.parse(out[0][0]).type is cp.MsgType.WELCOME
    assert reg.status("rx1")["online"]
    assert reg.retry("rx1", 0.6, T0 + 0.6) == []           # answered once


def test_an_unknown_id_nobody_looks_up_is_refused_and_not_held():
    reg = ReceiverRegistry({}.get, keyring=MediaKeyring(), heartbeat_s=15.0)
    data = cp.encode(cp.MsgType.REGISTER, "rx1", SECRETS["rx1"][0], None,
                     timestamp_ms=int(T0 * 1000))
    assert reg.datagram_received(data, ADDR, 0.0, T0) == []
    assert reg.counters["unknown_id"] == 1 and reg.counters["lookup_pending"] == 0
    assert reg.retry("rx1", 0.5, T0 + 0.5) == []


def test_held_datagrams_are_bounded():
    reg = ReceiverRegistry({}.get, keyring=MediaKeyring(), heartbeat_s=15.0)
    reg.is_pending = lambda rid: True
    for i in range(ReceiverRegistry.HELD_MAX + 50):
        data = cp.encode(cp.MsgType.REGISTER, f"x{i}", b"k" * 32, None,
                         timestamp_ms=int(T0 * 1000))
        reg.datagram_received(data, ADDR, 0.0, T0)
    assert len(reg._held) == ReceiverRegistry.HELD_MAX



@pytest.mark.parametrize("mtype,body", [
    (cp.MsgType.REPORT, {"fraction_lost": 0.0, "received": 50}),
    (cp.MsgType.REGISTER, None),
    (cp.MsgType.HEARTBEAT, None),
    (cp.MsgType.BYE, None),
])
@pytest.mark.parametrize("age_s", [2.0, 10.0, 29.0])
def test_any_message_captured_before_a_restart_is_refused_by_the_restarted_server(mtype, body,
                                                                                  age_s):
    """Issue 13 (6i): a captured report (or any other receiver message) replayed from another
    address right after a restart must neither move the receiver there nor bring it online,
    however fresh it still looks to the ±30 s window."""
    attacker = ("203.0.113.66", 5555)
    captured = cp.encode(mtype, "rx1", SECRETS["rx1"][0], body,
                         timestamp_ms=int((T0 - age_s) * 1000))
    reg, events = make(started_wall=T0)
    for dt in (0.1, 0.5, 1.5):
        assert reg.datagram_received(captured, attacker, dt, T0 + dt) == []
    assert reg.status("rx1") is None and reg.counters["accepted"] == 0
    assert not any(e["type"] == "receiver.online" for e in events)
    # the receiver itself comes back with a fresh message, at its own address
    send(reg, cp.MsgType.HEARTBEAT, "rx1", T0 + 2)
    assert reg.status("rx1")["address"] == f"{ADDR[0]}:{ADDR[1]}"


def test_a_receiver_a_broadcast_reaches_alone_is_told_what_airs_in_its_carve():
    """A polygon alert carves rx1 out of z1 (streamer.core.carve): rx1 is told the alert is on
    air (so its report credits the alert), rx2 of the same zone the programme; when the carve
    goes, rx1 is told the programme again."""
    reg, _ = make()
    a1, a2 = ("198.51.100.7", 40000), ("198.51.100.8", 40000)
    send(reg, cp.MsgType.REGISTER, "rx1", T0, addr=a1)
    send(reg, cp.MsgType.REGISTER, "rx2", T0, addr=a2)
    prog = [{"broadcast": "prog", "level": "normal"}]
    alert = [{"broadcast": "alert-1", "level": "emergency"}]

    def told(out):
        return {addr: cp.parse(data).body["on_air"] for data, addr in out
                if cp.parse(data).type == cp.MsgType.NOW}
    reg.set_on_air({"z1": prog}, T0)
    reg.set_carves({a1: "z1~alert-1"})
    out = told(reg.set_on_air({"z1": prog, "z1~alert-1": alert}, T0 + 1))
    assert out == {a1: alert}
    # a carve of another zone's id does not move a receiver out of its own zone
    reg.set_carves({a1: "z2~x", a2: "z1~alert-1"})
    out = told(reg.set_on_air({"z1": prog, "z1~alert-1": alert, "z2~x": alert}, T0 + 2))
    assert out == {a1: prog, a2: alert}
    reg.set_carves({})
    out = told(reg.set_on_air({"z1": prog}, T0 + 3))
    assert out == {a2: prog}
