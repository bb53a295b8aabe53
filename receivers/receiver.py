"""The reference receiver: UDP (unicast or multicast) -> jitter buffer -> Opus decode -> sink.

`Receiver` itself is driven by two calls, `datagram_received(data, arrival)` and `tick(now)`, so a
simulated fleet can run many of them without sockets; `run()` is the thin asyncio layer: one
datagram endpoint and a 20 ms playout tick on monotonic targets (next = start + k * 20 ms).
"""
from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from receivers.adaptive import SHRINK, STRETCH, PlayoutDelay, crossfade
from receivers.jitter import Action, Arrival, JitterBuffer, Playout
from receivers.output import Sink
from streamer.audio import FRAME_NS, SAMPLE_RATE
from streamer.rtp.opus import OpusDecoder, OpusError, packet_samples
from streamer.rtp import red
from streamer.rtp.packet import RtpError, RtpPacket, ts_diff

_MAX_PACKET_SAMPLES = SAMPLE_RATE * 120 // 1000
_RCVBUF = 1 << 20


@dataclass(slots=True)
class ReceiverStats:
    datagrams: int = 0
    invalid: int = 0              # not RTP: garbage, truncated, wrong version, RTCP
    wrong_payload_type: int = 0
    bad_payload: int = 0          # RTP, but the payload is not an Opus packet
    decode_errors: int = 0        # libopus refused it at playout (concealed instead)
    socket_errors: int = 0
    late_ticks: int = 0           # playout ticks that ran more than 10 frames late
    red_recovered: int = 0        # lost packets recovered from the next packet's RFC 2198 copy
    stretched: int = 0            # adaptive delay: concealment frames inserted (delay +20 ms)
    shrunk: int = 0               # adaptive delay: frame pairs merged (delay -20 ms)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Receiver:
    def __init__(self, sink: Sink, *, jitter_ms: float = 60.0, payload_type: int | None = None,
                 fec: bool = True, adaptive: bool = False) -> None:
        self.sink = sink
        self.payload_type = payload_type
        self.jitter = JitterBuffer(jitter_ms / 1000.0, fec=fec)
        self.decoder = OpusDecoder()
        self.stats = ReceiverStats()
        #: talk spurts seen (RTP marker bit): when the packet arrived (UTC seconds) and where
        #: its audio starts in the output (seconds of audio written before it). A program
        #: switch at the server (an alert cutting in) shows up here.
        self.spurts: list[dict] = []
        self._spurt_by_ts: dict[int, dict] = {}
        #: adaptive playout delay (60-400 ms from measured jitter) + drift absorption
        self.delay = PlayoutDelay(lo=max(0.06, jitter_ms / 1000.0)) if adaptive else None
        self._ref_ts: int | None = None
        self._merge_next = False

    # -- sans-IO core ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes, arrival: float) -> None:
        """One UDP datagram, received at `arrival` (seconds, time.monotonic clock)."""
        st = self.stats
        st.datagrams += 1
        try:
            pkt = RtpPacket.parse(data)
        except RtpError:
            st.invalid += 1
            return
        pt = pkt.payload_type
        if pt == red.RED_PT:
            self._redundant(pkt, arrival)
            return
        if self.payload_type is not None:
            if pt != self.payload_type:
                st.wrong_payload_type += 1
                return
        elif 72 <= pt <= 76:
            st.invalid += 1          # RTCP (PT 200-204) sharing the port
            return
        n = packet_samples(pkt.payload)
        if n <= 0 or n > _MAX_PACKET_SAMPLES:
            st.bad_payload += 1
            return
        res = self.jitter.push(pkt, arrival, n)
        if self.delay is not None and res is not Arrival.PROBATION:
            ref = self._ref_ts
            if ref is None or abs(ts_diff(pkt.timestamp, ref)) > 1 << 30:
                self._ref_ts = ref = pkt.timestamp
                self.delay.reset()
            self.delay.observe(arrival - ts_diff(pkt.timestamp, ref) / self.jitter.clock_rate)
        if pkt.marker and len(self.spurts) < 10_000:
            entry = {"arrival_utc": time.time() - (time.monotonic() - arrival),
                     "seq": pkt.sequence_number, "rtp_ts": pkt.timestamp, "output_s": None}
            self.spurts.append(entry)
            self._spurt_by_ts[pkt.timestamp] = entry

    def _redundant(self, pkt: RtpPacket, arrival: float) -> None:
        """RFC 2198: the primary block is this packet's frame; an older block recovers the
        packet before it if that one was lost (and is not counted as received)."""
        try:
            blocks = red.parse(pkt.payload)
        except red.RedError:
            self.stats.bad_payload += 1
            return
        primary = blocks[-1]
        n = packet_samples(primary.data)
        if n <= 0 or n > _MAX_PACKET_SAMPLES:
            self.stats.bad_payload += 1
            return
        self.jitter.push(RtpPacket(primary.payload_type, pkt.sequence_number, pkt.timestamp,
                                   pkt.ssrc, pkt.marker, primary.data), arrival, n)
        jb = self.jitter.stats
        for i, b in enumerate(reversed(blocks[:-1]), start=1):
            m = packet_samples(b.data)
            if m <= 0 or m > _MAX_PACKET_SAMPLES:
                continue
            before = (jb.duplicate, jb.late, jb.received)
            res = self.jitter.push(RtpPacket(b.payload_type, (pkt.sequence_number - i) & 0xFFFF,
                                             (pkt.timestamp - b.ts_offset) & 0xFFFFFFFF,
                                             pkt.ssrc, False, b.data), arrival, m)
            # the copy of a packet we already have is not news; one we lacked is a recovery
            jb.duplicate, jb.late = before[0], before[1]
            if jb.received > before[2]:
                jb.received = before[2]
                self.stats.red_recovered += 1
            del res

    def tick(self, now: float) -> int:
        """Play every slot due at `now` into the sink; returns samples written."""
        written = 0
        if self.delay is not None:
            written += self._adapt(now)
        pop = self.jitter.pop
        while (p := pop(now)) is not None:
            if self._spurt_by_ts:
                entry = self._spurt_by_ts.pop(p.timestamp, None)
                if entry is not None:
                    entry["output_s"] = round(self.sink.samples_written / SAMPLE_RATE, 4)
                    entry["played_utc"] = time.time()
            pcm = self._render(p)
            if self._merge_next:
                self._merge_next = False
                q = pop(now)
                if q is not None:
                    pcm = crossfade(pcm, self._render(q))
            self.sink.write(pcm)
            written += len(pcm)
        return written

    def _adapt(self, now: float) -> int:
        jb, d = self.jitter, self.delay
        assert d is not None                 # only called when adaptive
        jb.target_delay = d.target
        due, nts = jb.next_due, jb.next_ts
        if due is None or nts is None or now < due or self._ref_ts is None or jb.depth < 2:
            return 0
        offset = due - ts_diff(nts, self._ref_ts) / jb.clock_rate
        a = d.advice(offset, now)
        if a == STRETCH:
            jb.shift(jb.frame_samples / jb.clock_rate)
            self.stats.stretched += 1
            try:
                pcm = self.decoder.conceal(jb.frame_samples)
            except OpusError:
                pcm = np.zeros(jb.frame_samples, dtype=np.float32)
            self.sink.write(pcm)
            return len(pcm)
        if a == SHRINK:
            jb.shift(-jb.frame_samples / jb.clock_rate)
            self.stats.shrunk += 1
            self._merge_next = True
        return 0

    def _render(self, p: Playout) -> np.ndarray:
        dec = self.decoder
        try:
            if p.action is Action.DECODE:
                assert p.payload is not None     # DECODE and FEC slots carry a packet
                return dec.decode(p.payload)
            if p.action is Action.FEC:
                assert p.payload is not None
                return dec.decode_fec(p.payload, p.samples)
            return dec.conceal(p.samples)
        except OpusError:
            self.stats.decode_errors += 1
            try:
                return dec.conceal(p.samples)
            except OpusError:
                return np.zeros(p.samples, dtype=np.float32)

    def snapshot(self) -> dict[str, float | int | bool]:
        jb = self.jitter
        s: dict[str, float | int | bool] = dict(jb.stats.as_dict())
        s["concealed"] = s["concealed_fec"] + s["concealed_plc"]
        s.update(self.stats.as_dict())
        s["jitter_ms"] = round(jb.jitter * 1000.0, 3)
        s["depth"] = jb.depth
        s["buffered_ms"] = round(jb.buffered * 1000.0, 1)
        s["target_ms"] = round(jb.target_delay * 1000.0, 1)
        s["playing"] = jb.playing
        s["audio_seconds"] = round(self.sink.samples_written / SAMPLE_RATE, 3)
        return s

    # -- asyncio layer --------------------------------------------------------------------------

    async def run(self, sock: socket.socket, *, duration: float | None = None,
                  stop: asyncio.Event | None = None, stats_interval: float = 0.0,
                  on_stats: Callable[[dict], None] | None = None) -> dict:
        """Receive on `sock` and play out until `stop` is set or `duration` seconds pass."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        every = int(stats_interval * 1e9) if stats_interval and stats_interval > 0 else 0
        next_stats = time.monotonic_ns() + every
        try:
            async for now in playout_ticks(self.stats, stop, duration,
                                            lambda: self.jitter.next_due):
                self.tick(now / 1e9)
                if every and now >= next_stats:
                    next_stats += every
                    if on_stats is not None:
                        on_stats(self.snapshot())
        finally:
            transport.close()
        return self.snapshot()

    def close(self) -> None:
        self.sink.close()
        self.decoder.close()


def grid_phase(start: int, k: int, due_ns: int | None) -> int:
    """The grid's start after lining tick `k` up with a slot due at `due_ns` (monotonic ns).

    A talk spurt's first slot is due at its first packet's arrival + the target delay, which
    falls anywhere between two grid points; played at the next grid point it would wait up to
    20 ms more than the target. When a slot falls due within the period before tick `k`'s
    target, the grid's phase moves earlier to it (never later, by less than one period; the
    period itself is unchanged, so the grid never drifts). Within a spurt the slots stay on the
    grid, so this moves the phase once per spurt at most."""
    if due_ns is None:
        return start
    target = start + k * FRAME_NS
    if target - FRAME_NS < due_ns < target:
        return due_ns - k * FRAME_NS
    return start


async def playout_ticks(stats: ReceiverStats, stop: asyncio.Event | None,
                        duration: float | None,
                        due: Callable[[], float | None] | None = None):
    """Yield monotonic ns once per 20 ms playout slot, on targets start + k·20 ms, until `stop`
    is set or `duration` has passed (the last slot is yielded, then it ends). `due`: when the
    next slot is due (monotonic seconds, None while idle); the grid's phase follows it
    (`grid_phase`), so a spurt plays at its first packet + the target delay."""
    stop = stop or asyncio.Event()
    start = time.monotonic_ns()
    end = start + int(duration * 1e9) if duration else None
    k = 0
    while not stop.is_set():
        k += 1
        if due is not None:
            d = due()
            start = grid_phase(start, k, None if d is None else math.ceil(d * 1e9))
        target = start + k * FRAME_NS
        now = time.monotonic_ns()
        if target > now:
            await asyncio.sleep((target - now) / 1e9)
            # uvloop's timers have 1 ms resolution and may fire a little early: the slot is due
            # at its target (played then, a slot due exactly there would wait a whole period)
            now = max(time.monotonic_ns(), target)
        elif now - target > 10 * FRAME_NS:
            # Suspended or starved: do not replay the missed ticks one by one (pop catches the
            # media up by itself); resume on the grid.
            stats.late_ticks += 1
            k = (now - start) // FRAME_NS
        yield now
        if end is not None and now >= end:
            return


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: Receiver) -> None:
        self._rx = receiver

    def datagram_received(self, data: bytes, addr) -> None:
        self._rx.datagram_received(data, time.monotonic())

    def error_received(self, exc: Exception) -> None:
        self._rx.stats.socket_errors += 1


def udp_socket(host: str, port: int, device: str | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to host:port (IPv4 or IPv6); with `device`, also tied to
    that network interface (SO_BINDTODEVICE), so it keeps working when the interface's address
    changes (a 4G reconnect) while it never sends out of another interface."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        if device:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode() + b"\0")
        s.bind(addr)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def multicast_socket(group: str, port: int, interface: str | None = None) -> socket.socket:
    """Join an IPv4 multicast `group` on `interface` (an address of it; default: any).

    SO_REUSEADDR lets several receivers on one machine share the port. Binding to the group
    address (not 0.0.0.0) keeps other groups' datagrams on the same port out of this socket.
    """
    if not ipaddress.IPv4Address(group).is_multicast:
        raise ValueError(f"{group} is not an IPv4 multicast address")
    iface = interface or "0.0.0.0"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        s.bind((group, port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(group) + socket.inet_aton(iface))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s
