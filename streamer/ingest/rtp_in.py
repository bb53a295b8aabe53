"""RTP ingest for studio mixers and audio-to-IP encoder boxes.

A configured UDP port accepts Opus (RFC 7587) or G.711 (PCMU/PCMA) RTP from allow-listed source
addresses and airs it as a live broadcast on configured zones at a configured level. Datagrams
from any other address are dropped and counted, never decoded.

The ingest runs in its own thread (blocking socket with a short timeout): receiving, the small
reorder buffer and decoding all happen there and feed a LiveSource's bounded queue, so neither
the event loop nor the engine's tick ever waits on it.

Lifecycle: the first accepted packet starts the broadcast (retried every second while a live
talker holds the zone: the refusals are counted); `idle_s` without packets ends it. If an
operator stops the broadcast while the encoder keeps sending, it stays off until the stream
pauses for `idle_s` (a new talk spurt).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.audio import DTYPE, FRAME_SAMPLES, SAMPLE_RATE
from streamer.ingest.live import LiveSource
from streamer.mixer.arbitration import Level
from streamer.port import Refused
from streamer.rtp.opus import OpusDecoder, OpusError, packet_samples
from streamer.rtp.packet import RtpError, RtpPacket, seq_diff
from streamer.trace import TRACE, FrameMarker

log = logging.getLogger("loa.rtp_in")

#: start_live(listener name, zones, level, source) -> broadcast id (raises port.Refused)
StartLive = Callable[[str, tuple[str, ...], Level, LiveSource], str]
#: stop(broadcast id, reason)
StopLive = Callable[[str, str], None]

PT_PCMU = 0
PT_PCMA = 8
CODECS = ("auto", "opus", "pcmu", "pcma")


# ---------------------------------------------------------------------------- G.711 (sans-IO)
def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exp = (u >> 4) & 0x07
    mant = u & 0x0F
    mag = (((mant << 3) + 0x84) << exp) - 0x84
    return np.where(sign, -mag, mag).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exp = (a >> 4) & 0x07
    mant = a & 0x0F
    mag = np.where(exp == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << np.maximum(exp - 1, 0))
    return np.where(sign, mag, -mag).astype(np.int16)


ULAW = _ulaw_table()
ALAW = _alaw_table()


def g711_decode(payload: bytes, table: np.ndarray) -> np.ndarray:
    return table[np.frombuffer(payload, dtype=np.uint8)]


# ---------------------------------------------------------------------------- reorder (sans-IO)
class ReorderBuffer:
    """Puts RTP packets back in sequence order, waiting at most `depth` packets for a gap.

    In-order packets pass straight through (no added delay); a missing packet holds later ones
    back until `depth` of them are waiting, then it is declared lost (released as None so the
    decoder can conceal it or recover it from the next packet's FEC).
    """

    def __init__(self, depth: int = 3, restart_gap: int = 200) -> None:
        self.depth = depth
        self.restart_gap = restart_gap
        self.expected: int | None = None
        self._held: dict[int, object] = {}
        self.late = 0  # arrived after its slot was released (or duplicate)
        self.lost = 0
        self.restarts = 0

    def reset(self) -> None:
        self.expected = None
        self._held.clear()

    def push(self, seq: int, item: object) -> list[tuple[int, object | None]]:
        out: list[tuple[int, object | None]] = []
        if self.expected is None:
            self.expected = seq
        d = seq_diff(seq, self.expected)
        if d < 0 or seq in self._held:
            if d < -self.restart_gap:  # the sender restarted its sequence
                self.restarts += 1
                self.reset()
                self.expected = seq
            else:
                self.late += 1
                return out
        elif d > self.restart_gap:
            self.restarts += 1
            self.reset()
            self.expected = seq
        self._held[seq] = item
        while self._held:
            exp = self.expected
            if exp in self._held:
                out.append((exp, self._held.pop(exp)))
            elif len(self._held) >= self.depth:
                out.append((exp, None))
                self.lost += 1
            else:
                break
            self.expected = (exp + 1) & 0xFFFF
        return out


# ---------------------------------------------------------------------------- config
@dataclass
class RtpIngestConfig:
    port: int
    zones: list[str]
    allow: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    level: str = "normal"
    codec: str = "auto"  # auto: PT 0 = PCMU, PT 8 = PCMA, dynamic PT = Opus
    payload_type: int | None = None  # Opus PT to accept (default: any dynamic 96-127)
    bind: str = "0.0.0.0"
    name: str = ""
    idle_s: float = 3.0
    reorder_depth: int = 3
    max_frames: int = 4  # jitter queue of the live source (80 ms: encoders send in bursts)

    def __post_init__(self) -> None:
        if not 1 <= int(self.port) <= 65535:
            raise ValueError(f"rtp ingest port {self.port} is out of range")
        if self.codec not in CODECS:
            raise ValueError(f"rtp ingest codec {self.codec!r}: expected one of {', '.join(CODECS)}")
        if not self.zones:
            raise ValueError("rtp ingest needs at least one zone")
        Level.parse(self.level)
        self.networks = [ipaddress.ip_network(a, strict=False) for a in self.allow]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RtpIngestConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# ---------------------------------------------------------------------------- the ingest
@dataclass
class RtpIngestStats:
    datagrams: int = 0
    accepted: int = 0
    dropped_not_allowed: int = 0
    invalid: int = 0
    wrong_payload: int = 0
    decode_errors: int = 0
    concealed: int = 0
    fec_recovered: int = 0
    refused: int = 0
    broadcasts: int = 0
    stream_restarts: int = 0


class _Decoder:
    """Payload → 48 kHz mono float32, for one codec, with loss handling."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.last_samples = 960  # samples (at 48 kHz) of the last good packet
        if codec == "opus":
            self.opus = OpusDecoder()
        else:
            import av
            self.table = ULAW if codec == "pcmu" else ALAW
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def decode(self, payload: bytes) -> np.ndarray:
        if self.codec == "opus":
            pcm = self.opus.decode(payload)
            self.last_samples = len(pcm) or self.last_samples
            return pcm
        import av
        pcm = g711_decode(payload, self.table)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        out = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        x = np.concatenate(out).astype(DTYPE) if out else np.zeros(0, DTYPE)
        self.last_samples = len(pcm) * 6
        return x

    def lost(self, next_payload: bytes | None) -> tuple[np.ndarray, bool]:
        """Audio standing in for one lost packet; (samples, recovered_by_fec)."""
        if self.codec == "opus":
            if next_payload is not None:
                try:
                    return self.opus.decode_fec(next_payload, self.last_samples), True
                except OpusError:
                    pass
            return self.opus.conceal(self.last_samples), False
        return np.zeros(self.last_samples, dtype=DTYPE), False

    def close(self) -> None:
        if self.codec == "opus":
            self.opus.close()


class RtpIngest:
    """One listening port. It does not know the engine: whoever builds it passes two callbacks
    (control passes its broadcast use case):

    - `start_live(name, zones, level, source) -> broadcast_id` starts a live broadcast of
      `source` (a LiveSource this ingest feeds) on `zones`; raises `streamer.port.Refused` when
      the zones are held (the ingest retries a second later);
    - `stop(broadcast_id, reason)` ends it (the stream went idle, the ingest stopped); an
      unknown id (already ended) is ignored."""

    def __init__(self, config: RtpIngestConfig, start_live: StartLive, stop: StopLive, *,
                 realtime: bool = True) -> None:
        self.config = config
        self.realtime = realtime   # the receive thread at real-time priority where permitted
        self.priority = "normal"
        self.start_live = start_live
        self.stop_live = stop
        self.level = Level.parse(config.level)
        self.stats = RtpIngestStats()
        self.reorder = ReorderBuffer(config.reorder_depth)
        self._marker: FrameMarker | None = None   # latency trace (off unless enabled)
        self.source: LiveSource | None = None
        self.broadcast_id: str | None = None
        self.ssrc: int | None = None
        self._decoder: _Decoder | None = None
        self._last_packet = 0.0
        self._retry_at = 0.0
        self._suppressed = False  # an operator stopped it: wait for a pause in the stream
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.port = config.port

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        fam = socket.AF_INET6 if ":" in self.config.bind else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((self.config.bind, self.config.port))
        s.settimeout(0.1)
        self._sock = s
        self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"rtp-in-{self.port}", daemon=True)
        self._thread.start()
        log.info("rtp ingest listening on %s:%d for zones %s", self.config.bind, self.port,
                 ",".join(self.config.zones))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        self._end_broadcast("rtp ingest stopped")

    def _run(self) -> None:
        # an encoder's packets are on the voice path as a phone's are: received and decoded at
        # real-time priority below the tick's, so a loaded machine does not run them late
        from streamer.clock import RECEIVE_FIFO_PRIORITY, name_os_thread, raise_thread_priority
        name_os_thread(f"loa-rtpin-{self.port}")
        if self.realtime:
            self.priority = raise_thread_priority(RECEIVE_FIFO_PRIORITY)
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                self.poll(time.monotonic())
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                self.datagram_received(data, addr, time.monotonic())
            except Exception:  # one bad packet must not kill the ingest
                log.exception("rtp ingest: packet handling failed")
                self.stats.decode_errors += 1

    # -- core (also driven directly by unit tests) ---------------------------------------------
    def allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.config.networks)

    def _codec_for(self, pt: int) -> str | None:
        c = self.config.codec
        if c == "pcmu":
            return "pcmu" if pt == PT_PCMU else None
        if c == "pcma":
            return "pcma" if pt == PT_PCMA else None
        if c == "opus" or pt >= 96:
            if self.config.payload_type is not None:
                return "opus" if pt == self.config.payload_type else None
            return "opus" if 96 <= pt <= 127 else None
        return {PT_PCMU: "pcmu", PT_PCMA: "pcma"}.get(pt)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        st = self.stats
        st.datagrams += 1
        if not self.allowed(addr[0]):
            st.dropped_not_allowed += 1
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpError:
            st.invalid += 1
            return
        if 72 <= pkt.payload_type <= 76:  # RTCP multiplexed on the port
            st.invalid += 1
            return
        codec = self._codec_for(pkt.payload_type)
        if codec is None or not pkt.payload:
            st.wrong_payload += 1
            return
        if codec == "opus" and packet_samples(pkt.payload) == 0:
            st.wrong_payload += 1
            return
        st.accepted += 1
        gap = now - self._last_packet if self._last_packet else 0.0
        self._last_packet = now
        if self._suppressed:
            if gap < self.config.idle_s:
                return
            self._suppressed = False
        if self.ssrc != pkt.ssrc or self._decoder is None or self._decoder.codec != codec:
            if self.ssrc is not None:
                st.stream_restarts += 1
            self.ssrc = pkt.ssrc
            self.reorder.reset()
            if self._decoder is not None:
                self._decoder.close()
            self._decoder = _Decoder(codec)
        if not self._ensure_broadcast(now):
            return
        released = self.reorder.push(pkt.sequence_number, pkt.payload)
        marker = self._marker
        if marker is None and TRACE.enabled:
            marker = self._marker = FrameMarker(TRACE)
        for i, (_, payload) in enumerate(released):
            try:
                if payload is None:
                    nxt = released[i + 1][1] if i + 1 < len(released) else None
                    pcm, fec = self._decoder.lost(nxt)  # type: ignore[arg-type]
                    if fec:
                        st.fec_recovered += 1
                    else:
                        st.concealed += 1
                else:
                    pcm = self._decoder.decode(payload)  # type: ignore[arg-type]
            except OpusError:
                st.decode_errors += 1
                continue
            src = self.source
            if src is None:
                return
            if len(pcm) > (src.max_frames - 1) * FRAME_SAMPLES:
                src.ensure_capacity(-(-len(pcm) // FRAME_SAMPLES) + 1)
            mark = marker.frame(pcm, now, pkt.timestamp) if marker is not None else -1
            src.push(pcm, mark)

    def _ensure_broadcast(self, now: float) -> bool:
        src = self.source
        if src is not None and not src.finished:
            return True
        if src is not None and src.finished and self.broadcast_id is not None:
            # the engine let go of it while the encoder was still sending: an operator stop
            self.source = None
            self.broadcast_id = None
            self._suppressed = True
            return False
        if now < self._retry_at:
            return False
        src = LiveSource(kind="rtp", max_frames=self.config.max_frames)
        name = self.name
        try:
            bid = self.start_live(name, tuple(self.config.zones), self.level, src)
        except Refused as e:
            self.stats.refused += 1
            self._retry_at = now + 1.0
            log.info("rtp ingest %s refused: %s", name, e.reason)
            return False
        except Exception as e:
            self.stats.refused += 1
            self._retry_at = now + 5.0
            log.warning("rtp ingest %s cannot start: %s", name, e)
            return False
        self.source = src
        self.broadcast_id = bid
        self.stats.broadcasts += 1
        self.reorder.reset()
        return True

    def poll(self, now: float) -> None:
        """Housekeeping without packets: end the broadcast after `idle_s` of silence."""
        if self.source is not None and self._last_packet and \
                now - self._last_packet > self.config.idle_s:
            self._end_broadcast(f"no RTP for {self.config.idle_s:g} s")
        if self._suppressed and self._last_packet and now - self._last_packet > self.config.idle_s:
            self._suppressed = False

    def _end_broadcast(self, reason: str) -> None:
        src, bid = self.source, self.broadcast_id
        self.source = None
        self.broadcast_id = None
        if src is not None:
            src.end()
        if bid is not None:
            try:
                self.stop_live(bid, reason)
            except KeyError:   # UnknownBroadcast: it ended already
                pass
            except Exception:
                log.exception("rtp ingest %s: stopping broadcast %s failed", self.name, bid)

    @property
    def name(self) -> str:
        """What people see as the broadcast's owner: the configured name or `rtp:<port>`."""
        return self.config.name or f"rtp:{self.port}"

    def status(self) -> dict[str, Any]:
        return {"port": self.port, "zones": list(self.config.zones), "level": self.level.label,
                "codec": self.config.codec, "allow": list(self.config.allow),
                "broadcast": self.broadcast_id, "ssrc": self.ssrc,
                "stats": dict(self.stats.__dict__, late=self.reorder.late, lost=self.reorder.lost),
                "source": self.source.stats() if self.source else None}
