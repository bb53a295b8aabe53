"""The server's receiver endpoint: the asyncio layer around `ReceiverRegistry`.

It listens on the engine's *media* socket (a duplicate of the Fanout's fd): receivers behind NAT
send register/heartbeat from their RTP socket to this port, and media, sender reports and
replies leave from the same address:port, so they match the NAT mapping (iptables MASQUERADE
and most carrier NATs only let back datagrams from the exact address the receiver wrote to).

    link = await start_receiver_endpoint(runtime, registry)   # a streamer.runtime.Runtime
    ...
    link.close()
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from streamer.audio import FRAME_SAMPLES
from streamer.port import Destination, SetDestinations, ZoneSnapshot
from streamer.rtp import control_protocol as cp
from streamer.rtp.registry import ReceiverRegistry
from streamer.rtp.rtcp import sender_report

log = logging.getLogger("loa.receivers")

Addr = tuple[str, int]


class LinkRuntime(Protocol):
    """What the receiver endpoint uses of the runtime (a streamer.runtime.Runtime)."""

    @property
    def ssrc(self) -> int: ...

    @property
    def media_socket(self) -> socket.socket: ...

    def zone_status(self) -> Mapping[str, ZoneSnapshot]: ...

    def rtp_clock(self) -> tuple[int, int, int, int]: ...

    def submit(self, cmd: SetDestinations) -> object: ...


class ReceiverLink(asyncio.DatagramProtocol):
    def __init__(self, engine: LinkRuntime, registry: ReceiverRegistry, *,
                 poll_interval: float = 0.25, sr_interval: float = 5.0) -> None:
        self.engine = engine   # the Runtime: zone_status() and rtp_clock()
        self.registry = registry
        self.poll_interval = poll_interval
        self.sr_interval = sr_interval
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None
        self.counters = {"datagrams_in": 0, "non_control": 0, "sent": 0, "send_errors": 0,
                         "sender_reports": 0}
        self._task: asyncio.Task[None] | None = None
        self._zone_status: object = None
        self._on_air: dict[str, list[dict[str, str]]] = {}

    # -- datagram protocol --------------------------------------------------------------------
    # as asyncio.DatagramProtocol declares it (typeshed narrows BaseProtocol's argument too)
    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.counters["datagrams_in"] += 1
        if not cp.looks_like_control(data):
            self.counters["non_control"] += 1      # e.g. RTCP from a stock client: ignored
            return
        try:
            out = self.registry.datagram_received(data, addr[:2], time.monotonic(), time.time())
        except Exception:     # a bug must cost one datagram, never the endpoint
            log.exception("receiver registry failed on a datagram from %s", addr)
            return
        self._send_all(out)

    def retry(self, receiver_id: str) -> None:
        """A receiver id the control plane has just found: answer what it sent meanwhile."""
        try:
            out = self.registry.retry(receiver_id, time.monotonic(), time.time())
        except Exception:
            log.exception("receiver registry failed on a held datagram of %s", receiver_id)
            return
        self._send_all(out)

    def error_received(self, exc: Exception) -> None:
        self.counters["send_errors"] += 1

    def _send_all(self, out: Iterable[tuple[bytes, Addr]]) -> None:
        t = self.transport
        if t is None:
            return
        for data, addr in out:
            try:
                t.sendto(data, addr)
                self.counters["sent"] += 1
            except OSError:
                self.counters["send_errors"] += 1

    # -- periodic work ------------------------------------------------------------------------
    async def _run(self) -> None:
        next_sr = time.monotonic() + min(1.0, self.sr_interval)
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self._periodic(next_sr)
                if time.monotonic() >= next_sr:
                    next_sr = time.monotonic() + self.sr_interval
            except Exception:
                log.exception("receiver endpoint periodic work failed")

    def _periodic(self, next_sr: float) -> None:
        now, wall = time.monotonic(), time.time()
        reg = self.registry
        if reg.keyring is not None:
            reg.keyring.advance(now)
        reg.poll(now, wall)
        carved = getattr(self.engine, "carved_addresses", None)
        if carved is not None:              # receivers a broadcast reaches alone (polygon)
            reg.set_carves(carved())
        zs = self.engine.zone_status()      # the same object while no zone's status changed
        if zs is not self._zone_status:
            self._zone_status = zs
            self._on_air = {z: [{"broadcast": o.broadcast, "level": o.level} for o in s.on_air]
                            for z, s in zs.items()}
        self._send_all(reg.set_on_air(self._on_air, wall))
        if now >= next_sr:
            self._send_reports(wall)

    def _send_reports(self, wall: float) -> None:
        ssrc, ts0, tick, packets = self.engine.rtp_clock()
        # tick k was due within the last 20 ms; good enough for an NTP<->RTP mapping that
        # receivers use for "how far behind real time do I play" (±20 ms)
        sr = sender_report(ssrc, ts0, tick, wall, FRAME_SAMPLES, packets, 0)
        data = sr.serialize()
        for rid, addr in self.registry.sr_targets():
            self.registry.sr_sent(rid, sr.lsr, wall)
            self._send_all([(data, addr)])
            self.counters["sender_reports"] += 1

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.transport is not None:
            self.transport.close()     # closes our duplicate fd only; the Fanout keeps its own
            self.transport = None


#: (host, port, packet time ms, redundant): a registered receiver as the registry reports it
DestTuple = tuple[str, int, int, bool]


def _on_destinations(engine: LinkRuntime, loop: asyncio.AbstractEventLoop,
                     coalesce_s: float = 0.02) -> Callable[[str, list[DestTuple]], None]:
    """Destination changes are applied at most every `coalesce_s` per zone: when thousands of
    receivers register at once (after a server restart, say), each zone's destination list is
    rebuilt once per window instead of once per receiver (which is O(n²) under the engine
    lock, and the tick waits on that lock)."""
    pending: dict[str, list[DestTuple]] = {}
    handle: list[asyncio.TimerHandle | None] = [None]

    def flush() -> None:
        handle[0] = None
        items = list(pending.items())
        pending.clear()
        for zone, addrs in items:
            try:
                engine.submit(SetDestinations(zone, tuple(Destination(*a) for a in addrs)))
            except Exception:   # receivers of this zone would stay without audio: say so
                log.exception("applying the registered receivers of zone %s failed", zone)

    def push(zone: str, addrs: list[DestTuple]) -> None:
        pending[zone] = list(addrs)
        if handle[0] is None:
            handle[0] = loop.call_later(coalesce_s, flush)
    return push


async def start_receiver_endpoint(engine: LinkRuntime, registry: ReceiverRegistry,
                                  host: str | None = None, port: int | None = None, *,
                                  poll_interval: float = 0.25,
                                  sr_interval: float = 5.0) -> ReceiverLink:
    """Serve the receiver protocol on the engine's media socket.

    host/port, if given, must be the Fanout's own bound address (media has to leave from the
    port receivers talk to, or NAT drops it): bind the Fanout there
    (`Fanout(bind=(host, port))`). Wires the registry's destination changes to
    the runtime (`SetDestinations` commands) and tells it the stream's SSRC."""
    media = engine.media_socket   # the media port's incoming side (see Fanout._bind)
    bhost, bport = media.getsockname()[:2]
    if port is not None and port not in (0, bport):
        raise ValueError(f"the receiver endpoint must share the media socket (bound to port "
                         f"{bport}), not port {port}: bind the Fanout to the receiver port")
    if host is not None and host not in (bhost, "0.0.0.0", "") and bhost != "0.0.0.0":
        raise ValueError(f"the media socket is bound to {bhost}, not {host}")
    sock = socket.fromfd(media.fileno(), media.family, media.type)   # dup: same socket
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    registry.on_destinations = _on_destinations(engine, loop)
    registry.media_ssrc = engine.ssrc
    link = ReceiverLink(engine, registry, poll_interval=poll_interval, sr_interval=sr_interval)
    await loop.create_datagram_endpoint(lambda: link, sock=sock)
    link.address = (bhost, bport)
    link._task = asyncio.ensure_future(link._run())
    return link
