"""The field receiver's session recovers from a server restart on its own (sans-IO, chosen
times): new keys from a welcome, re-register when media fails authentication, an early
heartbeat when its zone is on air and no media comes; all rate-limited."""
from __future__ import annotations

import json

from receivers.field import FieldReceiver, FieldSession
from receivers.output import NullSink
from receivers.receiver import Receiver
from streamer.rtp import control_protocol as cp
from streamer.rtp.packet import RtpPacket
from streamer.rtp.srtp import MediaKeyring, MediaProtector

SECRET = b"k" * 32
SERVER = ("127.0.0.1", 5004)
T0 = 1_750_000_000.0


def welcome(ring: MediaKeyring, wall: float, on_air=None) -> bytes:
    body = {"heartbeat_s": 15.0, "report_s": 5.0, "srtp": True, "on_air": on_air or [],
            "keys": cp.seal(SECRET, "rx1", json.dumps(ring.for_receivers()).encode())}
    return cp.encode(cp.MsgType.WELCOME, "rx1", SECRET, body, timestamp_ms=int(wall * 1000))


def sent_types(out):
    return [(cp.parse(d).type, cp.parse(d).body.get("rekey")) for d, _ in out]


def joined(ring: MediaKeyring, on_air=None):
    fr = FieldReceiver(FieldSession("rx1", SECRET, [SERVER]), Receiver(NullSink()))
    s = fr.session
    assert sent_types(s.poll(0.0, T0)) == [(cp.MsgType.REGISTER, None)]
    fr.datagram_received(welcome(ring, T0 + 0.01, on_air), SERVER, 0.01, T0 + 0.01)
    assert s.registered
    return fr


def media(tx: MediaProtector, seq: int) -> bytes:
    return tx.protect(RtpPacket(111, seq, seq * 960, 7, False, b"\xfc" + b"\x00" * 30).serialize())


def test_restarted_server_new_keys_play_at_once():
    old = MediaKeyring()
    tx = MediaProtector(old)
    tx._ext, tx._last_seq = (300 << 14) | 5, 5           # a day-old server
    fr = joined(old)
    fr.datagram_received(media(tx, 6), SERVER, 0.1, T0 + 0.1)
    assert fr.counters["auth_failed"] == 0
    new = MediaKeyring()                                 # restarted: new key, low sequence
    tx2 = MediaProtector(new)
    fr.datagram_received(welcome(new, T0 + 5), SERVER, 5.0, T0 + 5)
    for i in range(5):
        fr.datagram_received(media(tx2, 100 + i), SERVER, 5.1, T0 + 5.1)
    assert fr.counters["auth_failed"] == 0 and fr.rx.jitter.stats.received == 6


def test_auth_failures_make_it_re_register_rate_limited():
    fr = joined(MediaKeyring())
    s = fr.session
    other = MediaProtector(MediaKeyring())               # the restarted server's key
    for i in range(50):
        fr.datagram_received(media(other, i), SERVER, 1.0 + i * 0.02, T0 + 1)
    assert fr.counters["auth_failed"] == 50
    assert sent_types(s.poll(2.0, T0 + 2)) == [(cp.MsgType.REGISTER, "auth_failed")]
    fr.datagram_received(media(other, 60), SERVER, 2.1, T0 + 2.1)
    assert s.poll(2.5, T0 + 2.5) == []                   # 1 s between
    assert sent_types(s.poll(3.0, T0 + 3)) == [(cp.MsgType.REGISTER, "auth_failed")]
    fr.datagram_received(media(other, 61), SERVER, 3.1, T0 + 3.1)
    assert s.poll(4.5, T0 + 4.5) == []                   # then 2 s
    assert len(s.poll(5.0, T0 + 5)) == 1
    assert s.counters["rekeys"] == 3
    # the report says so, for the server's status page
    body = fr.report()
    assert body["auth_failed"] == 52 and body["auth_failed_new"] == 52
    assert fr.report()["auth_failed_new"] == 0


def test_on_air_without_media_heartbeats_early():
    on = [{"broadcast": "b1", "level": "normal"}]
    ring = MediaKeyring()
    tx = MediaProtector(ring)
    fr = joined(ring, on)
    s = fr.session
    fr.datagram_received(media(tx, 1), SERVER, 0.5, T0 + 0.5)
    assert s.poll(1.9, T0 + 1.9) == []                   # media came 1.4 s ago
    assert sent_types(s.poll(2.1, T0 + 2.1)) == [(cp.MsgType.REGISTER, "no_media")]
    assert s.poll(2.5, T0 + 2.5) == []
    assert len(s.poll(3.2, T0 + 3.2)) == 1
    # nothing on air: silence is normal, no probe
    fr2 = joined(MediaKeyring())
    assert fr2.session.poll(10.0, T0 + 10) == []


def test_a_welcome_stamped_before_the_receiver_started_is_refused():
    ring = MediaKeyring()
    fr = FieldReceiver(FieldSession("rx1", SECRET, [SERVER]), Receiver(NullSink()))
    fr.session.poll(0.0, T0)
    fr.datagram_received(welcome(ring, T0 - 20), SERVER, 0.1, T0 + 0.1)   # captured earlier
    assert not fr.session.registered and fr.session.counters["control_rejected"] == 1
    fr.datagram_received(welcome(ring, T0 + 0.1), SERVER, 0.2, T0 + 0.2)
    assert fr.session.registered


SERVER2 = ("127.0.0.1", 5005)


def joined_two(ring: MediaKeyring, on_air=None):
    fr = FieldReceiver(FieldSession("rx1", SECRET, [SERVER, SERVER2]), Receiver(NullSink()))
    s = fr.session
    assert sent_types(s.poll(0.0, T0)) == [(cp.MsgType.REGISTER, None)]
    fr.datagram_received(welcome(ring, T0 + 0.01, on_air), SERVER, 0.01, T0 + 0.01)
    assert s.registered and s.server == SERVER
    return fr


def test_silence_on_air_moves_to_the_next_server_after_two_seconds():
    on = [{"broadcast": "b1", "level": "normal"}]
    ring = MediaKeyring()
    tx = MediaProtector(ring)
    fr = joined_two(ring, on)
    s = fr.session
    fr.datagram_received(media(tx, 1), SERVER, 0.5, T0 + 0.5)
    assert s.poll(2.0, T0 + 2.0) == []
    # 1.9 s of silence: a stall probe to the same server, which it does not leave yet
    assert sent_types(s.poll(2.4, T0 + 2.4)) == [(cp.MsgType.REGISTER, "no_media")]
    assert s.server == SERVER
    out = s.poll(2.6, T0 + 2.6)                          # 2.1 s: the next server
    assert s.server == SERVER2 and not s.registered
    assert [(a, t) for (_d, a), t in zip(out, sent_types(out))] == [(SERVER2,
                                                                     (cp.MsgType.REGISTER, None))]
    assert s.events[-1][1] == "silence on air"
    # nothing on air: silence is not a reason to move
    fr2 = joined_two(MediaKeyring())
    assert fr2.session.poll(10.0, T0 + 10) == [] and fr2.session.server == SERVER


def test_three_unanswered_messages_move_to_the_next_server():
    ring = MediaKeyring()
    fr = joined_two(ring)                                 # heartbeat 15 s: the time rule is 45 s
    s = fr.session
    other = MediaProtector(MediaKeyring())                # media our keys cannot open
    for t in (1.0, 2.5, 4.5):
        fr.datagram_received(media(other, int(t * 10)), SERVER, t, T0 + t)
        assert sent_types(s.poll(t + 0.5, T0 + t + 0.5)) == [(cp.MsgType.REGISTER, "auth_failed")]
    assert s.unanswered == 3
    assert s.poll(5.5, T0 + 5.5) == [] and s.server == SERVER   # the third had 0.5 s
    out = s.poll(6.1, T0 + 6.1)
    assert s.server == SERVER2 and out[0][1] == SERVER2
    assert s.events[-1][1] == "missed acknowledgements"
    # an answer resets the count: one server that answers is never left
    fr3 = joined_two(ring)
    s3 = fr3.session
    other = MediaProtector(MediaKeyring())
    for t in (1.0, 2.5, 4.5):
        fr3.datagram_received(media(other, int(t * 10)), SERVER, t, T0 + t)
        s3.poll(t + 0.5, T0 + t + 0.5)
        fr3.datagram_received(welcome(ring, T0 + t + 0.6), SERVER, t + 0.6, T0 + t + 0.6)
    assert s3.unanswered == 0
    s3.poll(6.1, T0 + 6.1)
    assert s3.server == SERVER
