"""RTCP sender reports (RFC 3550 §6.4.1), sans-IO.

Loa sends one SR per registered receiver every few seconds on the media socket: it maps the
stream's RTP timestamps to NTP wall time (so a receiver can tell how far behind real time it
plays, and the server can compute round-trip time from the LSR/DLSR echoed in reports).
Receivers answer with signed JSON reports in the control protocol (see control_protocol.py):
the RFC 3550 receiver-report fields plus Loa's own, authenticated with the receiver secret.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PT_SR = 200
NTP_EPOCH_OFFSET = 2_208_988_800        # 1900-01-01 → 1970-01-01
_SR = struct.Struct("!BBHIIIIII")


class RtcpError(ValueError):
    pass


def unix_to_ntp(t: float) -> tuple[int, int]:
    sec = int(t) + NTP_EPOCH_OFFSET
    frac = int((t - int(t)) * (1 << 32)) & 0xFFFFFFFF
    return sec & 0xFFFFFFFF, frac


def ntp_to_unix(sec: int, frac: int) -> float:
    return sec - NTP_EPOCH_OFFSET + frac / (1 << 32)


def ntp_middle32(sec: int, frac: int) -> int:
    """The 'LSR' form: middle 32 bits of the 64-bit NTP timestamp."""
    return ((sec & 0xFFFF) << 16) | (frac >> 16)


@dataclass(slots=True)
class SenderReport:
    ssrc: int
    ntp_sec: int
    ntp_frac: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    @property
    def unix_time(self) -> float:
        return ntp_to_unix(self.ntp_sec, self.ntp_frac)

    @property
    def lsr(self) -> int:
        return ntp_middle32(self.ntp_sec, self.ntp_frac)

    def serialize(self) -> bytes:
        return _SR.pack(0x80, PT_SR, 6, self.ssrc & 0xFFFFFFFF, self.ntp_sec, self.ntp_frac,
                        self.rtp_timestamp & 0xFFFFFFFF, self.packet_count & 0xFFFFFFFF,
                        self.octet_count & 0xFFFFFFFF)

    @classmethod
    def parse(cls, data: bytes) -> SenderReport:
        """The first packet of a (compound) RTCP datagram, which must be an SR."""
        if len(data) < _SR.size:
            raise RtcpError("too short for a sender report")
        b0, pt, length, ssrc, ns, nf, ts, pc, oc = _SR.unpack_from(data, 0)
        if b0 >> 6 != 2:
            raise RtcpError("not RTCP version 2")
        if pt != PT_SR:
            raise RtcpError(f"packet type {pt}, not SR")
        if (length + 1) * 4 > len(data) or length < 6:
            raise RtcpError("bad RTCP length")
        return cls(ssrc, ns, nf, ts, pc, oc)


def is_rtcp(data: bytes | memoryview) -> bool:
    """RTCP and RTP share the port (RFC 5761): RTCP packet types 200-204 sit where RTP's marker
    bit + payload types 72-76 would."""
    return len(data) >= 8 and data[0] >> 6 == 2 and 200 <= data[1] <= 204


def sender_report(ssrc: int, ts0: int, tick_index: int, tick_unix: float, frame_samples: int,
                  packets: int, octets: int) -> SenderReport:
    """The SR for an engine whose tick k carries RTP timestamp ts0 + k * frame_samples and was
    due at wall time `tick_unix`."""
    sec, frac = unix_to_ntp(tick_unix)
    return SenderReport(ssrc, sec, frac, (ts0 + tick_index * frame_samples) & 0xFFFFFFFF,
                        packets, octets)
