"""SRTP replay and rollover state across server restarts and failover, with chosen instances.

Packets are built the way the sender builds them (`sent`: derive_master + libsrtp + trailer), so
a test can put a packet in any era under any key without protecting 16384 packets per era."""
from __future__ import annotations

import os

import pylibsrtp
import pytest

from streamer.rtp.packet import RtpPacket
from streamer.rtp.srtp import (TRAILER, MediaAuthError, MediaKeyring, MediaProtector,
                               MediaUnprotector, derive_master)

K1, K2 = bytes(range(32)), bytes(range(1, 33))


def sent(key: bytes, kid: int, era: int, seq_low: int, slot: int = 0, payload: bytes = b"") -> bytes:
    seq = ((era << 14) | (seq_low & 0x3FFF)) & 0xFFFF
    plain = RtpPacket(111, seq, 960 * seq, 0xABCD, False,
                      b"\xfc" + (payload or bytes([seq & 0xFF]) * 30)).serialize()
    s = pylibsrtp.Session(pylibsrtp.Policy(
        key=derive_master(key, kid, slot, era), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    return s.protect(plain) + TRAILER.pack(kid, slot, era)


def rx_with(*keys: tuple[int, bytes]) -> MediaUnprotector:
    rx = MediaUnprotector()
    rx.set_keys(list(keys))
    return rx


@pytest.mark.parametrize("new_kid", [7, 9], ids=["same key id", "other key id"])
def test_new_key_in_a_welcome_resets_the_window(new_kid):
    """A day-old server (era 300) is replaced by a restarted one (era 0, a new key): the
    receiver plays the new stream as soon as the welcome hands it the new key."""
    rx = rx_with((7, K1))
    assert rx.unprotect(sent(K1, 7, 300, 5))
    rx.set_keys([(new_kid, K2)])
    for i in range(10):
        assert rx.unprotect(sent(K2, new_kid, 0, 100 + i))
    assert rx.era_of(new_kid) == 0
    # the old key is gone with the old server
    with pytest.raises(MediaAuthError):
        rx.unprotect(sent(K1, 7, 300, 6))


def test_same_key_again_keeps_replay_protection():
    rx = rx_with((7, K1))
    pkts = [sent(K1, 7, 40, i) for i in range(20)]
    for p in pkts:
        rx.unprotect(p)
    rx.set_keys([(7, K1)])                       # a heartbeat's welcome: the same key
    for p in (pkts[0], pkts[19]):
        with pytest.raises(MediaAuthError):
            rx.unprotect(p)                      # replays, refused
    with pytest.raises(MediaAuthError):
        rx.unprotect(sent(K1, 7, 38, 1))         # an older era under the same key
    assert rx.failures["replay"] == 2 and rx.failures["old_era"] == 1
    assert rx.unprotect(sent(K1, 7, 40, 20))     # the stream goes on


def test_era_rollover_and_sequence_wrap():
    rx = rx_with((3, K1))
    # era 3 ends at seq 65535; era 4 starts at seq 0 (eras are aligned to 2^14 seqs)
    for era, low in ((2, 16383), (3, 0), (3, 16383), (4, 0), (4, 1), (5, 0)):
        assert rx.unprotect(sent(K1, 3, era, low))
    assert rx.era_of(3) == 5
    with pytest.raises(MediaAuthError):
        rx.unprotect(sent(K1, 3, 3, 200))        # two eras back: refused
    assert rx.unprotect(sent(K1, 3, 4, 16383))   # a late packet from the previous era plays
    with pytest.raises(MediaAuthError):
        rx.unprotect(sent(K1, 3, 4, 2))          # far behind the window: refused as libsrtp would


def test_replay_refused_after_its_session_was_evicted():
    """libsrtp sessions are an LRU of 64; evicting one must not reopen its replay window."""
    rx = rx_with((1, K1))
    p = sent(K1, 1, 10, 50)
    rx.unprotect(p)
    for slot in range(1, 100):                  # other programs' slots push it out
        rx.unprotect(sent(K1, 1, 10, 50, slot=slot))
    with pytest.raises(MediaAuthError):
        rx.unprotect(p)


def test_out_of_order_within_the_window_plays_once():
    rx = rx_with((1, K1))
    for low in (10, 12, 11, 13):
        assert rx.unprotect(sent(K1, 1, 0, low))
    with pytest.raises(MediaAuthError):
        rx.unprotect(sent(K1, 1, 0, 11))


def test_protectors_sharing_a_keyring_never_share_a_keystream_or_go_back():
    """20 and 40 ms packets (or an engine re-created on one keyring) have separate sequence
    spaces under one key: distinct lanes, and a later protector starts above the earlier one's
    era, so a receiver's window for the key never sees it go back."""
    ring = MediaKeyring()
    a, b = MediaProtector(ring), MediaProtector(ring)
    rx = MediaUnprotector()
    rx.set_keys(ring.for_receivers())
    x, y = os.urandom(60), os.urandom(60)
    pa = RtpPacket(111, 40000, 1, 0xABCD, False, x).serialize()
    pb = RtpPacket(111, 40000, 1, 0xABCD, False, y).serialize()
    ca, cb = a.protect(pa), b.protect(pb)
    assert bytes(p ^ q for p, q in zip(ca[12:72], cb[12:72])) != bytes(
        p ^ q for p, q in zip(x, y))
    assert rx.unprotect(ca) == pa and rx.unprotect(cb) == pb
    _, _, era_a = TRAILER.unpack_from(ca, len(ca) - TRAILER.size)
    c = MediaProtector(ring).protect(RtpPacket(111, 5, 1, 0xABCD, False, x).serialize())
    _, _, era_c = TRAILER.unpack_from(c, len(c) - TRAILER.size)
    assert era_c > era_a
    assert rx.unprotect(c)


def test_every_server_start_is_a_new_key():
    assert MediaKeyring().active[1] != MediaKeyring().active[1]


def test_restart_end_to_end_with_real_protectors():
    """Old server ran long (its protector in era 300), new server starts at a low sequence."""
    old = MediaKeyring()
    tx = MediaProtector(old)
    tx._ext, tx._last_seq = (300 << 14) | 5, 5       # ~27 h of packets
    rx = MediaUnprotector()
    rx.set_keys(old.for_receivers())
    assert rx.unprotect(tx.protect(RtpPacket(111, 6, 1, 1, False, b"\xfc" * 20).serialize()))
    new = MediaKeyring()
    tx2 = MediaProtector(new)
    rx.set_keys(new.for_receivers())                # the restarted server's welcome
    for s in range(100, 110):
        assert rx.unprotect(tx2.protect(RtpPacket(111, s, 1, 2, False,
                                                  b"\xfc" * 20).serialize()))
