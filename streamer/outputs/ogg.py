"""Ogg/Opus pages from Opus packets that were already encoded (RFC 3533, RFC 7845): sans-IO.

Written here rather than through PyAV's Ogg muxer because the listening output needs control
that the muxer does not give: one page per pump (so every listener of a zone gets the same
bytes, built once), the stream's header pages kept apart (a listener joining mid-stream gets
them first, then the live pages, as Icecast does), and a granule position that keeps counting
across preemptions and silence. The page format is small; its CRC is zlib's CRC-32 run on
bit-reversed bytes (the Ogg CRC is the same polynomial, unreflected), so it runs at C speed.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import opuslib

__all__ = ["OggOpusPager", "ogg_crc", "opus_head", "opus_tags", "silence_packet", "page",
           "FRAME_GRANULE"]

FRAME_GRANULE = 960    # 20 ms at 48 kHz: Ogg/Opus granule positions always count 48 kHz samples

_REV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_HEADER = struct.Struct("<4sBBqIII")

BOS, EOS, CONTINUED = 0x02, 0x04, 0x01


def _rev32(x: int) -> int:
    return int(f"{x:032b}"[::-1], 2)


def ogg_crc(data: bytes | bytearray | memoryview) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, unreflected, initial value 0)."""
    raw = zlib.crc32(bytes(data).translate(_REV), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return _rev32(raw)


def page(packets: Sequence[bytes], granule: int, serial: int, seq: int, flags: int = 0) -> bytes:
    """One Ogg page holding whole `packets` (at most 255 lacing values: callers keep pages to a
    few dozen 20 ms packets)."""
    lacing = bytearray()
    for p in packets:
        n = len(p)
        lacing.extend(b"\xff" * (n // 255))
        lacing.append(n % 255)
    if len(lacing) > 255:
        raise ValueError("too many packets for one Ogg page")
    body = b"".join(packets)
    hdr = bytearray(_HEADER.pack(b"OggS", 0, flags, granule, serial, seq, 0))
    hdr.append(len(lacing))
    hdr += lacing
    crc = zlib.crc32(body.translate(_REV), zlib.crc32(bytes(hdr).translate(_REV), 0xFFFFFFFF))
    struct.pack_into("<I", hdr, 22, _rev32(crc ^ 0xFFFFFFFF))
    return bytes(hdr) + body


def opus_head(channels: int = 1, pre_skip: int = 0, rate: int = 48_000) -> bytes:
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, rate, 0, 0)


def opus_tags(vendor: str = "loa", comments: Sequence[str] = ()) -> bytes:
    out = bytearray(b"OpusTags")
    v = vendor.encode()
    out += struct.pack("<I", len(v)) + v + struct.pack("<I", len(comments))
    for c in comments:
        b = c.encode()
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


_SILENCE: bytes | None = None


def silence_packet() -> bytes:
    """A 20 ms Opus packet of silence, made once with libopus (what a zone with nothing on air
    sends its listeners so their players never stall)."""
    global _SILENCE
    if _SILENCE is None:
        enc = opuslib.Encoder(48_000, 1, opuslib.APPLICATION_AUDIO)
        enc.bitrate = 16_000
        zero = bytes(FRAME_GRANULE * 2)
        pkt = b""
        for _ in range(3):  # past the encoder's start-up
            pkt = enc.encode(zero, FRAME_GRANULE)
        _SILENCE = bytes(pkt)
    return _SILENCE


class OggOpusPager:
    """One logical Ogg/Opus stream: its two header pages, then audio pages numbered on from 2
    with the granule position (48 kHz samples) of each page's last packet."""

    def __init__(self, serial: int, title: str = "", channels: int = 1) -> None:
        self.serial = serial & 0xFFFFFFFF
        self.seq = 2
        self.granule = 0
        comments = [f"TITLE={title}"] if title else []
        self.headers = (page([opus_head(channels)], 0, self.serial, 0, BOS)
                        + page([opus_tags("loa", comments)], 0, self.serial, 1))

    def pages(self, packets: Sequence[bytes]) -> bytes:
        """Audio pages for these 20 ms packets (50 packets per page at most)."""
        out = []
        for i in range(0, len(packets), 50):
            chunk = packets[i:i + 50]
            self.granule += FRAME_GRANULE * len(chunk)
            out.append(page(chunk, self.granule, self.serial, self.seq))
            self.seq = (self.seq + 1) & 0xFFFFFFFF
        return b"".join(out)

    def end(self) -> bytes:
        """An empty end-of-stream page (a finished file)."""
        p = page([], self.granule, self.serial, self.seq, EOS)
        self.seq += 1
        return p
