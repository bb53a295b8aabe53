"""RTP (RFC 3550) packets: parse and build, sans-IO.

`RtpPacket` is a small dataclass for tests, receivers and tools. The sender's hot path does not
allocate one per packet: it uses `write_header` into a buffer it owns.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
HEADER_SIZE = 12
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet."""


@dataclass(slots=True)
class RtpPacket:
    payload_type: int = 111
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    marker: bool = False
    payload: bytes = b""
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension: bytes = b""
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        n = len(data)
        if n < HEADER_SIZE:
            raise RtpError(f"RTP packet too short ({n} bytes)")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version {version}, expected 2")
        has_padding = bool(b0 & 0x20)
        has_ext = bool(b0 & 0x10)
        cc = b0 & 0x0F
        pos = HEADER_SIZE + 4 * cc
        if pos > n:
            raise RtpError("RTP CSRC list runs past the end of the packet")
        csrc = list(struct.unpack_from(f"!{cc}I", data, HEADER_SIZE)) if cc else []
        ext_profile = None
        ext = b""
        if has_ext:
            if pos + 4 > n:
                raise RtpError("RTP extension header runs past the end of the packet")
            ext_profile, ext_words = struct.unpack_from("!HH", data, pos)
            pos += 4
            if pos + 4 * ext_words > n:
                raise RtpError("RTP extension runs past the end of the packet")
            ext = bytes(data[pos : pos + 4 * ext_words])
            pos += 4 * ext_words
        end = n
        padding = 0
        if has_padding:
            padding = data[n - 1]
            if padding == 0 or pos + padding > n:
                raise RtpError("RTP padding length is invalid")
            end = n - padding
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            marker=bool(b1 & 0x80),
            payload=bytes(data[pos:end]),
            csrc=csrc,
            extension_profile=ext_profile,
            extension=ext,
            padding=padding,
        )

    def serialize(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise RtpError("payload type must be 0..127")
        if len(self.csrc) > 15:
            raise RtpError("at most 15 CSRCs")
        b0 = (RTP_VERSION << 6) | (0x20 if self.padding else 0) | len(self.csrc)
        if self.extension_profile is not None:
            if len(self.extension) % 4:
                raise RtpError("RTP extension must be a multiple of 4 bytes")
            b0 |= 0x10
        b1 = (0x80 if self.marker else 0) | self.payload_type
        out = bytearray(_HEADER.pack(b0, b1, self.sequence_number & 0xFFFF,
                                     self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF))
        for c in self.csrc:
            out += struct.pack("!I", c)
        if self.extension_profile is not None:
            out += struct.pack("!HH", self.extension_profile, len(self.extension) // 4)
            out += self.extension
        out += self.payload
        if self.padding:
            out += bytes(self.padding - 1) + bytes([self.padding])
        return bytes(out)


def write_header(buf: bytearray | memoryview, payload_type: int, seq: int, ts: int, ssrc: int,
                 marker: bool = False) -> None:
    """Write a 12-byte RTP header (no CSRC, no extension) at the start of `buf`."""
    _HEADER.pack_into(buf, 0, 0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF,
                      ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in 16-bit sequence space (RFC 3550 wrap-around)."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def ts_diff(a: int, b: int) -> int:
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d
