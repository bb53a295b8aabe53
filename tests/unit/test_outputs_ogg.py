"""The Ogg/Opus pager (streamer/outputs/ogg.py): checksums, lacing, header pages, granules."""
from __future__ import annotations

import os
import struct

from streamer.outputs.ogg import FRAME_GRANULE, OggOpusPager, ogg_crc, page, silence_packet


def slow_crc(data: bytes) -> int:
    c = 0
    for b in data:
        c ^= b << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else c << 1
            c &= 0xFFFFFFFF
    return c


def parse_pages(data: bytes) -> list[dict]:
    out = []
    i = 0
    while i < len(data):
        assert data[i:i + 4] == b"OggS"
        _, _, flags, granule, serial, seq, crc, nseg = struct.unpack_from("<4sBBqIIIB", data, i)
        lacing = data[i + 27:i + 27 + nseg]
        size = sum(lacing)
        raw = bytearray(data[i:i + 27 + nseg + size])
        raw[22:26] = b"\0\0\0\0"
        assert slow_crc(bytes(raw)) == crc
        packets, cur = [], 0
        body = data[i + 27 + nseg:i + 27 + nseg + size]
        pos = 0
        for v in lacing:
            cur += v
            if v < 255:
                packets.append(body[pos:pos + cur])
                pos += cur
                cur = 0
        out.append({"flags": flags, "granule": granule, "serial": serial, "seq": seq,
                    "packets": packets})
        i += 27 + nseg + size
    return out


def test_crc_matches_the_reference_definition():
    for n in (0, 1, 7, 255, 1000):
        d = os.urandom(n)
        assert ogg_crc(d) == slow_crc(d)


def test_lacing_of_packets_of_255_multiples_round_trips():
    pkts = [b"a" * 255, b"", b"b" * 510, b"c" * 3, b"d" * 256]
    p = parse_pages(page(pkts, 1234, 77, 5))[0]
    assert p["packets"] == pkts and p["granule"] == 1234 and p["seq"] == 5 and p["serial"] == 77


def test_headers_then_audio_pages_with_counting_granules():
    pager = OggOpusPager(0xABCDEF, title="Xã Một")
    hdr = parse_pages(pager.headers)
    assert [h["seq"] for h in hdr] == [0, 1] and hdr[0]["flags"] == 2
    assert hdr[0]["packets"][0].startswith(b"OpusHead")
    assert b"TITLE=X\xc3\xa3 M\xe1\xbb\x99t" in hdr[1]["packets"][0]
    a = parse_pages(pager.pages([b"x" * 80] * 10))
    b = parse_pages(pager.pages([b"y" * 80] * 60))   # more than one page's worth
    assert [p["seq"] for p in a + b] == [2, 3, 4]
    assert [p["granule"] for p in a + b] == [10 * FRAME_GRANULE, 60 * FRAME_GRANULE,
                                             70 * FRAME_GRANULE]
    assert parse_pages(pager.end())[0]["flags"] == 4


def test_silence_packet_decodes_to_silence():
    import numpy as np
    import opuslib
    dec = opuslib.Decoder(48000, 1)
    pcm = np.frombuffer(dec.decode(silence_packet(), FRAME_GRANULE), dtype="<i2")
    assert len(pcm) == FRAME_GRANULE and np.abs(pcm).max() < 50
