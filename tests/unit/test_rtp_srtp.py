"""SRTP media protection for the one-sequence-space engine: once per program packet, no
keystream reuse between programs of a tick, receivers drop anything that does not authenticate."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from streamer.rtp.packet import RtpPacket
from streamer.rtp.srtp import (TRAILER_SIZE, MediaAuthError, MediaKeyring, MediaProtector,
                               MediaUnprotector)

SSRC = 0x11223344


def rtp(seq, payload, marker=False):
    return RtpPacket(111, seq & 0xFFFF, (1000 + seq * 960) & 0xFFFFFFFF, SSRC, marker,
                     payload).serialize()


def pair(**kw):
    ring = MediaKeyring(**kw)
    rx = MediaUnprotector()
    rx.set_keys(ring.for_receivers())
    return ring, MediaProtector(ring), rx


def test_roundtrip_and_two_programs_in_one_tick_never_share_keystream():
    ring, tx, rx = pair()
    a, b = os.urandom(80), os.urandom(80)
    pa, pb = rtp(7, a), rtp(7, b)       # same SSRC, seq, timestamp: two programs of one tick
    ca, cb = tx.protect(pa), tx.protect(pb)
    assert rx.unprotect(ca) == pa and rx.unprotect(cb) == pb
    # with a shared keystream, ct_a ^ ct_b == pt_a ^ pt_b on the payload bytes
    xa = bytes(x ^ y for x, y in zip(ca[12:92], cb[12:92]))
    xp = bytes(x ^ y for x, y in zip(a, b))
    assert xa != xp
    assert ca[-TRAILER_SIZE:] != cb[-TRAILER_SIZE:]          # slot 0 vs slot 1
    assert tx.protected == 2


def test_forged_injected_replayed_and_tampered_packets_are_rejected():
    ring, tx, rx = pair()
    good = tx.protect(rtp(100, b"\xfc" + b"a" * 60))
    assert rx.unprotect(good)
    with pytest.raises(MediaAuthError):
        rx.unprotect(good)                                    # replay
    with pytest.raises(MediaAuthError):
        rx.unprotect(rtp(101, b"\xfc" + b"evil" * 20))        # plain RTP, valid-looking header
    forged = rtp(102, b"\xfc" + b"x" * 60) + os.urandom(10) + good[-TRAILER_SIZE:]
    with pytest.raises(MediaAuthError):
        rx.unprotect(forged)                                  # random tag, right trailer
    nxt = bytearray(tx.protect(rtp(103, b"\xfc" + b"b" * 60)))
    nxt[20] ^= 1
    with pytest.raises(MediaAuthError):
        rx.unprotect(bytes(nxt))                              # one bit of payload
    other = MediaProtector(MediaKeyring())                    # another node's key
    with pytest.raises(MediaAuthError):
        rx.unprotect(other.protect(rtp(104, b"\xfc" + b"c" * 60)))
    assert rx.failed == 5
    assert rx.unprotect(tx.protect(rtp(105, b"\xfc" + b"d" * 60)))


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_unprotect_fuzz(data):
    ring, tx, rx = pair()
    try:
        rx.unprotect(data)
    except MediaAuthError:
        pass
    else:
        pytest.fail("random bytes authenticated")


def test_receiver_joining_mid_stream_across_sequence_wrap_and_eras():
    ring, tx, rx = pair()
    seqs = [(65000 + i) & 0xFFFF for i in range(20000)]       # wraps, crosses two eras
    out = [(s, tx.protect(rtp(s, b"\xfc" + struct.pack("!H", s) * 20))) for s in seqs]
    ok = 0
    for i, (s, c) in enumerate(out):
        if i < 400 or i % 7 == 3:       # joins late, loses some packets
            continue
        assert RtpPacket.parse(rx.unprotect(c)).sequence_number == s
        ok += 1
    assert ok > 16000 and rx.failed == 0


def test_old_era_packets_are_refused():
    ring, tx, rx = pair()
    old = tx.protect(rtp(10, b"\xfc" * 40))
    for s in range(11, 11 + 2 * 16384 + 10, 1):
        c = tx.protect(rtp(s, b"\xfc" * 40))
    rx.unprotect(c)
    with pytest.raises(MediaAuthError):
        rx.unprotect(old)


def test_rotation_announce_activate_and_retire_old_key():
    ring, tx, rx = pair(activation_delay_s=30.0, grace_s=10.0)
    k0 = ring.active[0]
    retired_view = ring.for_receivers()          # all a receiver retired now ever learns
    ring.rotate(100.0)
    assert ring.active[0] == k0 and len(ring.for_receivers()) == 2
    rx.set_keys(ring.for_receivers())                         # the heartbeat reply
    before = tx.protect(rtp(1, b"\xfc" * 40))
    ring.advance(130.0)
    assert ring.active[0] != k0
    after = tx.protect(rtp(2, b"\xfc" * 40))
    assert rx.unprotect(before) and rx.unprotect(after)
    ring.advance(141.0)
    assert [k["kid"] for k in ring.for_receivers()] == [ring.active[0]]
    stale_rx = MediaUnprotector()
    stale_rx.set_keys(retired_view)
    with pytest.raises(MediaAuthError):
        stale_rx.unprotect(tx.protect(rtp(3, b"\xfc" * 40)))


def test_scheduled_rotation():
    ring = MediaKeyring(0.0, rotate_every_s=100.0, activation_delay_s=5.0)
    k0 = ring.active[0]
    ring.advance(99.0)
    assert len(ring.for_receivers()) == 1
    ring.advance(100.0)
    assert len(ring.for_receivers()) == 2 and ring.active[0] == k0
    ring.advance(105.0)
    assert ring.active[0] != k0


@pytest.mark.parametrize("jump", [-1, -5, -200, -16000, -32768, 0])
def test_a_sequence_that_goes_back_moves_to_the_next_era_and_still_plays(jump):
    """An edge whose origin changed (issue 19) sends a new stream whose sequence number may be
    behind the old one: the protector must not reuse an index the receiver has seen."""
    ring, tx, rx = pair()
    for s in range(5000, 5010):
        assert rx.unprotect(tx.protect(rtp(s, b"\xfc" + b"a" * 40)))
    start = (5010 + jump) & 0xFFFF
    if jump == 0:
        start = 5009            # the same number again, as a new stream's first packet
    for s in range(start, start + 10):
        p = rtp(s, b"\xfc" + b"b" * 40)
        assert rx.unprotect(tx.protect(p)) == p
