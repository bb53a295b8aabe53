"""RTP (RFC 3550) packet parse/serialize: round trips, wire layout, and malformed input."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.rtp.packet import (HEADER_SIZE, RtpError, RtpPacket, seq_diff, ts_diff,
                                 write_header)

packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload=st.binary(max_size=300),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    extension_profile=st.one_of(st.none(), st.integers(0, 0xFFFF)),
    extension=st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4]),
    padding=st.integers(0, 255),
)


@settings(max_examples=300)
@given(packets)
def test_round_trip(p: RtpPacket):
    if p.extension_profile is None:
        p.extension = b""
    data = p.serialize()
    q = RtpPacket.parse(data)
    assert q == p
    assert q.serialize() == data
    assert RtpPacket.parse(memoryview(data)) == p
    assert RtpPacket.parse(bytearray(data)) == p


def test_wire_layout_of_a_full_packet():
    p = RtpPacket(payload_type=111, sequence_number=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304,
                  marker=True, payload=b"\xfc\x01\x02", csrc=[0xAABBCCDD, 5],
                  extension_profile=0xBEDE, extension=b"\x10\xff\x00\x00", padding=4)
    data = p.serialize()
    assert data[0] == 0x80 | 0x20 | 0x10 | 2        # V=2, P, X, CC=2
    assert data[1] == 0x80 | 111                    # M, PT
    assert data[2:4] == b"\x12\x34"
    assert data[4:8] == b"\xde\xad\xbe\xef"
    assert data[8:12] == b"\x01\x02\x03\x04"
    assert data[12:20] == b"\xaa\xbb\xcc\xdd\x00\x00\x00\x05"
    assert data[20:24] == b"\xbe\xde\x00\x01"       # profile, length in 32-bit words
    assert data[24:28] == b"\x10\xff\x00\x00"
    assert data[28:31] == b"\xfc\x01\x02"
    assert data[31:] == b"\x00\x00\x00\x04"         # padding, last byte = its length
    assert len(data) == 35


def test_write_header_matches_serialize():
    buf = bytearray(HEADER_SIZE + 3)
    write_header(buf, 111, 70_000, 2**32 + 5, 9, marker=True)
    buf[HEADER_SIZE:] = b"abc"
    p = RtpPacket.parse(bytes(buf))
    assert (p.sequence_number, p.timestamp, p.ssrc, p.marker, p.payload) == (70_000 & 0xFFFF, 5, 9,
                                                                              True, b"abc")
    assert bytes(buf) == RtpPacket(111, 70_000 & 0xFFFF, 5, 9, True, b"abc").serialize()


def _hdr(b0=0x80, b1=111, seq=1, ts=2, ssrc=3) -> bytes:
    return struct.pack("!BBHII", b0, b1, seq, ts, ssrc)


@pytest.mark.parametrize("data, why", [
    (b"", "too short"),
    (b"\x80\x6f\x00", "too short"),
    (_hdr()[:11], "too short"),
    (_hdr(b0=0x40), "version"),                      # version 1
    (_hdr(b0=0x00) + b"x", "version"),                # version 0
    (_hdr(b0=0xC0) + b"x", "version"),                # version 3
    (_hdr(b0=0x82) + b"\x00\x00\x00\x01", "CSRC"),     # CC=2, only one CSRC present
    (_hdr(b0=0x90), "extension"),                     # X set, no extension header
    (_hdr(b0=0x90) + b"\xbe\xde\x00\x02" + b"\x00" * 4, "extension"),   # says 2 words, has 1
    (_hdr(b0=0xA0) + b"abc\x00", "padding"),           # padding length 0
    (_hdr(b0=0xA0) + b"ab\x09", "padding"),            # more padding than the packet holds
])
def test_malformed_packets_raise_rtp_error(data, why):
    with pytest.raises(RtpError, match=why):
        RtpPacket.parse(data)


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_parse_or_raise_rtp_error_only(data):
    try:
        p = RtpPacket.parse(data)
    except RtpError:
        return
    assert data[0] >> 6 == 2
    assert len(p.payload) <= len(data) - HEADER_SIZE


@settings(max_examples=200)
@given(packets, st.integers(1, 40))
def test_every_truncation_of_a_packet_with_header_fields_is_rejected_or_shorter(p, cut):
    if p.extension_profile is None:
        p.extension = b""
    data = p.serialize()
    cut = min(cut, len(data))
    short = data[:-cut]
    try:
        q = RtpPacket.parse(short)
    except RtpError:
        return
    # A truncation can still parse (e.g. only payload bytes cut): it must never read past the end
    # nor invent data.
    assert len(q.payload) + q.padding <= len(short) - HEADER_SIZE


def test_serialize_rejects_invalid_fields():
    with pytest.raises(RtpError):
        RtpPacket(payload_type=128).serialize()
    with pytest.raises(RtpError):
        RtpPacket(csrc=list(range(16))).serialize()
    with pytest.raises(RtpError):
        RtpPacket(extension_profile=1, extension=b"abc").serialize()


def test_seq_and_ts_diff_wrap_around():
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(5, 5) == 0
    assert seq_diff(0x8000 - 1, 0) == 0x7FFF
    assert seq_diff(0x8000, 0) == -0x8000
    assert ts_diff(10, 0xFFFFFFF0) == 26
    assert ts_diff(0xFFFFFFF0, 10) == -26
