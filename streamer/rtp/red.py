"""RFC 2198 redundant audio: each packet also carries the previous frame.

Used for registered receivers whose reports show real loss: one lost packet is then recovered
from the next one, whatever the Opus mode (in-band FEC is only a low-rate copy and only in
SILK/hybrid modes). Built once per distinct (previous, current) frame pair per tick, never per
receiver. Sans-IO.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

RED_PT = 121  # dynamic payload type for the redundant stream (SDP: a=rtpmap:121 red/48000/2)


class RedError(ValueError):
    pass


def build(primary_pt: int, current: bytes, previous: bytes | None, ts_offset: int) -> bytes:
    """RED payload: [previous frame as a redundant block] + current frame as primary."""
    if previous is None or len(previous) > 1023 or not 0 < ts_offset < 1 << 14:
        return bytes([primary_pt & 0x7F]) + current
    hdr = struct.pack("!BHB", 0x80 | (primary_pt & 0x7F),
                      (ts_offset << 2) | (len(previous) >> 8), len(previous) & 0xFF)
    return hdr + bytes([primary_pt & 0x7F]) + previous + current


@dataclass(frozen=True, slots=True)
class Block:
    payload_type: int
    ts_offset: int  # how far before the packet's timestamp this block's audio starts
    data: bytes


def parse(payload: bytes) -> list[Block]:
    """Blocks oldest first; the last one is the primary (offset 0)."""
    pos, n = 0, len(payload)
    heads: list[tuple[int, int, int]] = []
    while True:
        if pos >= n:
            raise RedError("RED header runs past the end of the payload")
        b0 = payload[pos]
        if not b0 & 0x80:
            heads.append((b0 & 0x7F, 0, -1))
            pos += 1
            break
        if pos + 4 > n:
            raise RedError("RED block header truncated")
        mid = (payload[pos + 1] << 16) | (payload[pos + 2] << 8) | payload[pos + 3]
        heads.append((b0 & 0x7F, mid >> 10, mid & 0x3FF))
        pos += 4
        if len(heads) > 8:
            raise RedError("too many RED blocks")
    out = []
    for pt, off, length in heads:
        if length < 0:
            length = n - pos
        if pos + length > n:
            raise RedError("RED block runs past the end of the payload")
        out.append(Block(pt, off, bytes(payload[pos:pos + length])))
        pos += length
    return out
