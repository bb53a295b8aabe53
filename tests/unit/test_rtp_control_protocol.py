"""Receiver control protocol + server registry (sans-IO): signing, freshness, replay, NAT
address handling, offline detection, reports and delivery reports. Parsers are fuzzed."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streamer.rtp import control_protocol as cp
from streamer.rtp.registry import ReceiverRegistry
from streamer.rtp.srtp import MediaKeyring
from datetime import UTC

SECRETS = {"rx1": (b"s1" * 16, "z1"), "rx2": (b"s2" * 16, "z1"), "rx3": (b"s3" * 16, "z2")}
T0 = 1_750_000_000.0


def make(**kw):
    events, dests = [], {}
    reg = ReceiverRegistry(SECRETS.get, on_event=events.append,
                           on_destinations=lambda z, a: dests.__setitem__(z, list(a)),
                           keyring=MediaKeyring(), heartbeat_s=15.0, **kw)
    return reg, events, dests


def msg(t, rid="rx1", wall=T0, body=None, secret=None):
    return cp.encode(t, rid, secret or SECRETS[rid][0], body, timestamp_ms=int(wall * 1000))


def test_roundtrip_and_mac():
    data = msg(cp.MsgType.REGISTER, body={"version": "x", "ü": 1})
    m = cp.parse(data)
    assert (m.type, m.receiver_id, m.timestamp_ms, m.body) == (
        cp.MsgType.REGISTER, "rx1", int(T0 * 1000), {"version": "x", "ü": 1})
    assert m.verify(SECRETS["rx1"][0]) and not m.verify(b"other")
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            mm = cp.parse(bytes(bad))
        except cp.ProtocolError:
            continue
        assert not mm.verify(SECRETS["rx1"][0]), f"flip at byte {i} still verifies"


@given(st.binary(max_size=2000))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_parse_fuzz_only_protocol_error(data):
    try:
        cp.parse(data)
    except cp.ProtocolError:
        pass


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
       st.integers(0, 400), st.binary(max_size=40))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_registry_fuzz_mutated_valid_packets(flips, cut, tail):
    """Mutations of a valid register never crash, never register anyone, and are counted."""
    reg, events, dests = make()
    original = msg(cp.MsgType.REGISTER)
    data = bytearray(original)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[: len(data) - cut % (len(data) + 1)]) + tail
    out = reg.datagram_received(data, ("10.0.0.9", 4000), 1.0, T0)
    c = reg.counters
    rejected = sum(c[k] for k in ("malformed", "unexpected_type", "unknown_id", "bad_mac",
                                  "stale", "replay"))
    if data == original:
        assert c["accepted"] == 1 and len(out) == 1
    else:
        # a mutation that still verifies is a broken MAC; everything else is rejected+counted
        assert c["accepted"] == 0 and out == [] and rejected == 1
        assert dests == {} and reg.status() == []


def test_register_welcome_destinations_and_sealed_keys():
    reg, events, dests = make()
    out = reg.datagram_received(msg(cp.MsgType.REGISTER), ("203.0.113.5", 40000), 1.0, T0)
    assert len(out) == 1 and out[0][1] == ("203.0.113.5", 40000)
    w = cp.parse(out[0][0])
    assert w.type is cp.MsgType.WELCOME and w.verify(SECRETS["rx1"][0])
    assert w.body["observed"] == "203.0.113.5:40000" and w.body["srtp"] is True
    keys = json.loads(cp.unseal(SECRETS["rx1"][0], "rx1", w.body["keys"]))
    assert keys == reg.keyring.for_receivers()
    with pytest.raises(cp.ProtocolError):
        cp.unseal(SECRETS["rx2"][0], "rx1", w.body["keys"])
    with pytest.raises(cp.ProtocolError):
        cp.unseal(SECRETS["rx1"][0], "rx2", w.body["keys"])
    assert dests == {"z1": [("203.0.113.5", 40000, 20, False)]}
    assert [e["type"] for e in events] == ["receiver.online"]
    st_ = reg.status("rx1")
    assert st_["online"] and st_["address"] == "203.0.113.5:40000" and st_["zone"] == "z1"


def test_replay_stale_and_spoofed_register_cannot_redirect():
    reg, events, dests = make()
    first = msg(cp.MsgType.REGISTER)
    reg.datagram_received(first, ("203.0.113.5", 40000), 1.0, T0)
    # exact replay from an attacker's address
    assert reg.datagram_received(first, ("198.51.100.66", 5555), 1.1, T0 + 0.1) == []
    assert reg.counters["replay"] == 1
    # an older (but in-window) message with a fresh nonce: also a replay
    older = msg(cp.MsgType.HEARTBEAT, wall=T0 - 5)
    assert reg.datagram_received(older, ("198.51.100.66", 5555), 1.2, T0 + 0.2) == []
    assert reg.counters["replay"] == 2
    # outside the ±30 s window
    assert reg.datagram_received(msg(cp.MsgType.HEARTBEAT, wall=T0 + 31), ("198.51.100.66", 1),
                                 1.3, T0) == []
    assert reg.counters["stale"] == 1
    # spoofed register: right id, wrong secret
    spoof = msg(cp.MsgType.REGISTER, wall=T0 + 1, secret=b"guess")
    assert reg.datagram_received(spoof, ("198.51.100.66", 5555), 1.4, T0 + 1) == []
    assert reg.counters["bad_mac"] == 1
    # unknown id
    unk = cp.encode(cp.MsgType.REGISTER, "nobody", b"x", timestamp_ms=int(T0 * 1000))
    assert reg.datagram_received(unk, ("198.51.100.66", 5555), 1.5, T0 + 1) == []
    assert reg.counters["unknown_id"] == 1 and reg.status("nobody") is None
    # the stream still goes to the real receiver
    assert dests == {"z1": [("203.0.113.5", 40000, 20, False)]}
    assert reg.status("rx1")["address"] == "203.0.113.5:40000"
    rej = [e for e in events if e["type"] == "receiver.rejected"]
    assert {e["reason"] for e in rej} == {"replay", "stale", "bad_mac", "unknown_id"}
    # a server message type from a receiver is refused
    w = cp.encode(cp.MsgType.WELCOME, "rx1", SECRETS["rx1"][0], timestamp_ms=int(T0 * 1000) + 9)
    assert reg.datagram_received(w, ("203.0.113.5", 40000), 1.6, T0 + 1) == []
    assert reg.counters["unexpected_type"] == 1


def test_address_change_from_next_heartbeat_and_offline_after_three_missed():
    reg, events, dests = make()
    reg.datagram_received(msg(cp.MsgType.REGISTER), ("203.0.113.5", 40000), 0.0, T0)
    reg.datagram_received(msg(cp.MsgType.REGISTER, "rx2"), ("203.0.113.6", 40001), 0.0, T0)
    out = reg.datagram_received(msg(cp.MsgType.HEARTBEAT, wall=T0 + 15), ("203.0.113.77", 1234),
                                15.0, T0 + 15)
    assert cp.parse(out[0][0]).body["observed"] == "203.0.113.77:1234"
    assert [d[:2] for d in dests["z1"]] == [("203.0.113.6", 40001), ("203.0.113.77", 1234)]
    assert events[-1]["type"] == "receiver.address_changed"
    assert events[-1]["previous"] == "203.0.113.5:40000"
    reg.poll(44.0, T0 + 44)          # rx2 silent for 44 s < 45 s
    assert reg.status("rx2")["online"]
    reg.poll(45.5, T0 + 45.5)
    assert not reg.status("rx2")["online"] and reg.status("rx1")["online"]
    assert [d[:2] for d in dests["z1"]] == [("203.0.113.77", 1234)]
    off = [e for e in events if e["type"] == "receiver.offline"]
    assert len(off) == 1 and off[0]["receiver"] == "rx2"
    # it comes back
    reg.datagram_received(msg(cp.MsgType.HEARTBEAT, "rx2", wall=T0 + 50), ("203.0.113.6", 40001),
                          50.0, T0 + 50)
    assert reg.status("rx2")["online"] and events[-1]["type"] == "receiver.online"


def test_reports_status_now_playing_and_delivery_report():
    reg, events, dests = make(report_s=5.0)
    for rid, port in (("rx1", 1), ("rx2", 2), ("rx3", 3)):
        reg.datagram_received(msg(cp.MsgType.REGISTER, rid), ("192.0.2.1", port), 0.0, T0)
    nows = reg.set_on_air({"z1": [{"broadcast": "b1", "level": "emergency"}], "z2": []}, T0 + 1)
    to = sorted(a for _, a in nows)
    assert to == [("192.0.2.1", 1), ("192.0.2.1", 2), ("192.0.2.1", 3)]
    n1 = [cp.parse(d) for d, a in nows if a[1] == 1][0]
    assert n1.type is cp.MsgType.NOW and n1.verify(SECRETS["rx1"][0])
    assert n1.body["on_air"] == [{"broadcast": "b1", "level": "emergency"}]
    assert reg.set_on_air({"z1": [{"broadcast": "b1", "level": "emergency"}]}, T0 + 1.2) == []
    start, end = T0 + 1, T0 + 21
    # rx1 played it all, rx2 joined 10 s late, rx3 (other zone) never; plus garbage fields
    reg.datagram_received(msg(cp.MsgType.REPORT, "rx1", T0 + 22, {
        "fraction_lost": 0.02, "cumulative_lost": 7, "jitter_ms": 3.5, "concealed_pct": 0.4,
        "jb_depth_ms": 80, "volume": 1.0, "uptime_s": 99, "version": "v", "playing": True,
        "broadcast": "b1", "level": "emergency",
        "played": {"b1": {"first": start + 0.3, "last": end, "audio_s": 19.9}}}),
        ("192.0.2.1", 1), 22.0, T0 + 22)
    reg.datagram_received(msg(cp.MsgType.REPORT, "rx2", T0 + 22, {
        "fraction_lost": "lots", "jitter_ms": float("inf") if False else -4, "volume": [1],
        "played": {"b1": {"first": start + 10, "last": end, "audio_s": 11.0},
                   "bad": {"first": "x"}, "b2": {"first": 5, "last": 1, "audio_s": 1}}}),
        ("192.0.2.1", 2), 22.0, T0 + 22)
    s1 = reg.status("rx1")
    assert s1["link"]["fraction_lost"] == 0.02 and s1["link"]["quality"] == "fair"
    assert s1["playing"] == {"broadcast": "b1", "level": "emergency"}
    assert s1["volume"] == 1.0 and s1["version"] == "v"
    s2 = reg.status("rx2")
    assert s2["link"]["fraction_lost"] is None and s2["volume"] is None and s2["playing"] is None
    b = {"id": "b1", "reached_zones": ["z1", "z2"], "started_at": _iso(start),
         "ended_at": _iso(end)}
    rep = reg.delivery_report(b)
    rows = {r["receiver"]: r for r in rep["receivers"]}
    assert rep["summary"] == {"full": 1, "partly": 1, "never": 1}
    assert rows["rx1"]["outcome"] == "full" and rows["rx1"]["time_to_first_audio_s"] == 0.3
    assert rows["rx2"]["outcome"] == "partly" and rows["rx2"]["time_to_first_audio_s"] == 10.0
    assert rows["rx3"]["outcome"] == "never" and rows["rx3"]["time_to_first_audio_s"] is None
    # an expected receiver that never registered at all
    rep2 = reg.delivery_report(b, expected=[("rx1", "z1"), ("ghost", "z1")])
    assert [r["outcome"] for r in rep2["receivers"]] == ["never", "full"]


def _iso(t):
    from datetime import datetime
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def test_reject_events_are_rate_limited_and_lookup_errors_survive():
    def boom(rid):
        raise RuntimeError("db down")
    reg = ReceiverRegistry(boom)
    events = []
    reg.on_event = events.append
    for i in range(100):
        reg.datagram_received(b"\x80" * 30, ("1.2.3.4", i), i * 0.01, T0)
        reg.datagram_received(msg(cp.MsgType.REGISTER, wall=T0 + i * 0.001),
                              ("1.2.3.4", i), i * 0.01, T0)
    assert reg.counters["malformed"] == 100 and reg.counters["unknown_id"] == 100
    assert reg.counters["lookup_errors"] == 100
    assert len(events) == 2


def test_retire_rotates_key_and_forgets_receiver():
    reg, events, dests = make()
    reg.datagram_received(msg(cp.MsgType.REGISTER), ("192.0.2.1", 1), 0.0, T0)
    kid_before = reg.keyring.active[0]
    reg.retire("rx1", 1.0, T0 + 1)
    assert reg.status("rx1") is None and dests["z1"] == []
    assert len(reg.keyring.for_receivers()) == 2       # active + pending new key
    reg.keyring.advance(1.0 + reg.keyring.activation_delay_s)
    assert reg.keyring.active[0] != kid_before


def test_now_playing_pass_with_an_unchanged_status_only_serves_receivers_that_are_due():
    """The receiver endpoint calls set_on_air 4 times a second with the same status object
    while nothing changes: then only a receiver that just came online (or moved) gets its
    now-playing message, and nobody else is looked at again."""
    reg, events, dests = make()
    status = {"z1": [{"broadcast": "b1", "level": "normal"}], "z2": []}
    reg.datagram_received(msg(cp.MsgType.REGISTER, "rx1"), ("192.0.2.1", 1), 0.0, T0)
    assert [a for _, a in reg.set_on_air(status, T0 + 1)] == [("192.0.2.1", 1)]
    assert reg.set_on_air(status, T0 + 1.25) == []
    reg.datagram_received(msg(cp.MsgType.REGISTER, "rx3"), ("192.0.2.1", 3), 2.0, T0 + 2)
    out = reg.set_on_air(status, T0 + 2.25)
    assert [a for _, a in out] == [("192.0.2.1", 3)]
    assert cp.parse(out[0][0]).body["on_air"] == []        # rx3 is in z2: nothing on air
    assert reg.set_on_air(status, T0 + 2.5) == []
    # a new status object where only z2 changed: only rx3 hears about it
    status2 = dict(status, z2=[{"broadcast": "b9", "level": "emergency"}])
    assert [a for _, a in reg.set_on_air(status2, T0 + 3)] == [("192.0.2.1", 3)]


def test_zone_loss_is_the_worst_report_of_its_online_receivers():
    """Reported network loss reaches the engine per zone (worst receiver, whole %, capped):
    it follows reports up and down, a receiver going offline or retired stops counting, and a
    zone with nobody reporting goes back to None (the encoder's assumed loss)."""
    seen: list[tuple[str, int | None]] = []
    reg, events, dests = make(on_zone_loss=lambda z, p: seen.append((z, p)))
    for i, rid in enumerate(("rx1", "rx2", "rx3")):
        reg.datagram_received(msg(cp.MsgType.REGISTER, rid), ("192.0.2.1", 100 + i), 0.0, T0)
    assert seen == []                                  # registering is not reporting

    def report(rid, loss, t, body=None):
        reg.datagram_received(msg(cp.MsgType.REPORT, rid, T0 + t,
                                  {"fraction_lost": loss, **(body or {})}),
                              ("192.0.2.1", 100 + int(rid[-1]) - 1), t, T0 + t)

    report("rx1", 0.0, 5)
    report("rx2", 0.0, 5)
    assert seen == [("z1", 0)]                         # once per change of the worst
    report("rx2", 0.061, 10)                           # 6.1 % -> counted as 7 %
    report("rx3", 0.5, 10)                             # capped
    assert seen[-2:] == [("z1", 7), ("z2", 30)]
    report("rx1", 0.02, 15)                            # not the worst: nothing handed on
    assert seen[-1] == ("z2", 30) and reg.zone_loss() == {"z1": 7, "z2": 30}
    report("rx2", 0.0, 20)                             # the worst improves: rx1's 2 % is next
    assert seen[-1] == ("z1", 2)
    n = len(seen)
    reg.datagram_received(msg(cp.MsgType.REPORT, "rx1", T0 + 25, {"volume": 5}),
                          ("192.0.2.1", 100), 25.0, T0 + 25)   # a report without loss
    assert len(seen) == n and reg.zone_loss()["z1"] == 2       # rx1 keeps its last measure
    # an idle zone: reports of 0 % while no packet arrived measure nothing
    report("rx1", 0.03, 30, {"received": 500})
    assert seen[-1] == ("z1", 3)
    report("rx1", 0.0, 35, {"received": 500})
    report("rx1", 0.0, 40, {"received": 500})
    assert seen[-1] == ("z1", 3) and reg.status("rx1")["link"]["fraction_lost"] == 0.0
    report("rx1", 0.0, 45, {"received": 750})                  # packets again, and clean
    assert seen[-1] == ("z1", 0)
    reg.retire("rx3", 46.0, T0 + 46)
    assert seen[-1] == ("z2", None)
    reg.poll(200.0, T0 + 200)                          # everyone silent: offline
    assert seen[-1] == ("z1", None) and reg.zone_loss() == {}


def test_zone_loss_follows_a_receiver_moved_to_another_zone():
    seen: list[tuple[str, int | None]] = []
    secrets = dict(SECRETS)
    reg = ReceiverRegistry(lambda rid: secrets.get(rid), on_zone_loss=lambda z, p: seen.append((z, p)),
                           keyring=MediaKeyring(), heartbeat_s=15.0)
    reg.datagram_received(msg(cp.MsgType.REPORT, "rx1", T0, {"fraction_lost": 0.1}),
                          ("192.0.2.1", 1), 0.0, T0)
    assert seen == [("z1", 10)]
    secrets["rx1"] = (SECRETS["rx1"][0], "z2")          # moved in the receivers table
    reg.datagram_received(msg(cp.MsgType.HEARTBEAT, "rx1", T0 + 1), ("192.0.2.1", 1), 1.0, T0 + 1)
    assert seen[-2:] == [("z1", None), ("z2", 10)]
