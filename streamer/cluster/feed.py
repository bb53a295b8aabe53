"""The origin's side of the media path: an `Output` beside the RtpOutput that sends each tick's
programme frames to the edges that subscribed to their zones (see `streamer.cluster.envelope`).

The cost is per programme and per edge, never per receiver: an edge with 5,000 receivers in a
zone gets one envelope a tick. Sends are non-blocking `sendto` on a plain socket from the tick
(a full socket buffer drops the envelope and counts it; the tick never waits). Subscriptions
arrive on the same socket and are read by a small thread, which swaps in a new table: the tick
only reads an immutable snapshot.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamer.audio import FRAME_SAMPLES
from streamer.cluster.envelope import (EnvelopeError, Programme, Subscription, pack_tick,
                                       unpack_subscription)
from streamer.rtp.packet import HEADER_SIZE

if TYPE_CHECKING:
    from streamer.mixer.programs import ProgramKey
    from streamer.rtp.output import ProgramFrame

__all__ = ["Subscriptions", "OriginFeed", "select"]

log = logging.getLogger("loa.cluster.feed")

Addr = tuple[str, int]
SUB_TTL_S = 3.5     # an edge re-subscribes every second: three lost in a row end its feed


class Subscriptions:
    """Which edge (at which address) wants which zones, until when. Pure: `now` is monotonic."""

    def __init__(self, ttl_s: float = SUB_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._table: dict[Addr, tuple[str, frozenset[str], float]] = {}
        self._seen: dict[str, int] = {}     # node -> newest wall_ms taken (replay within window)
        #: (address, zones) of every live subscription: replaced, never changed in place
        self.targets: tuple[tuple[Addr, frozenset[str]], ...] = ()

    def update(self, sub: Subscription, addr: Addr, now: float) -> bool:
        """Take a subscription; False if it is older than one already taken from that node."""
        if sub.wall_ms < self._seen.get(sub.node, 0):
            return False
        self._seen[sub.node] = sub.wall_ms
        # a node that moved (new NAT mapping, restart on another port) is fed at its new address
        for a, (node, _z, _e) in list(self._table.items()):
            if node == sub.node and a != addr:
                del self._table[a]
        old = self._table.get(addr)
        self._table[addr] = (sub.node, sub.zones, now + self.ttl_s)
        if old is None or old[1] != sub.zones or old[0] != sub.node:
            self._rebuild()
        return True

    def expire(self, now: float) -> list[str]:
        gone = [a for a, (_n, _z, exp) in self._table.items() if exp <= now]
        nodes = [self._table.pop(a)[0] for a in gone]
        if gone:
            self._rebuild()
        return nodes

    def _rebuild(self) -> None:
        self.targets = tuple((a, z) for a, (_n, z, _e) in self._table.items() if z)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n: {"address": f"{a[0]}:{a[1]}", "zones": sorted(z)}
                for a, (n, z, _e) in self._table.items()}


def select(programs: Mapping[Any, tuple[str, ...]],
           markers: Mapping[Any, tuple[tuple[str, ...], tuple[str, ...]]] | None,
           zones: frozenset[str], frames: Mapping[Any, Any]) -> list[Programme]:
    """This tick's programmes as one edge needs them: only its zones, with their marker bits."""
    out = []
    for key, zs in programs.items():
        if markers is None:
            plain = tuple(z for z in zs if z in zones)
            marked: tuple[str, ...] = ()
        else:
            p, m = markers[key]
            plain = tuple(z for z in p if z in zones)
            marked = tuple(z for z in m if z in zones)
        if plain or marked:
            fr = frames[key]
            out.append(Programme(bytes(fr.buf[HEADER_SIZE:fr.n]), plain, marked))
    return out


class OriginFeed:
    """`Output` for the origin. `rtp` is the node's RtpOutput (fed before this one each tick, so
    its sequence number is this tick's)."""

    def __init__(self, key: bytes, bind: Addr = ("0.0.0.0", 0), *, rtp: Any = None) -> None:
        if not key:
            raise ValueError("the cluster key is empty")
        self.key = key
        self.rtp = rtp
        self.subs = Subscriptions()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.sock.settimeout(0.25)
        self._send_sock = self.sock.dup()   # the non-blocking twin the tick sends from
        self._send_sock.setblocking(False)
        self.counters = {"envelopes": 0, "send_drops": 0, "subscriptions": 0, "refused": 0}
        #: False while another origin holds the lease: edges get one origin's stream
        self.enabled = True
        #: this origin's fencing token, in every envelope (edges refuse older ones)
        self.fence = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wall_base: tuple[int, int] | None = None   # (k, wall ms) the envelopes' clock

    def _wall_ms(self, k: int) -> int:
        """The wall clock the envelopes carry, from the tick index (ticks are 20 ms apart), read
        from the clock only every 500 ticks: the tick's clock reads stay in the runtime."""
        base = self._wall_base
        if base is None or not 0 <= k - base[0] < 500:
            base = self._wall_base = (k, int(time.time() * 1000))
        return base[1] + (k - base[0]) * 20

    @property
    def address(self) -> Addr:
        h, p = self.sock.getsockname()[:2]
        return (str(h), int(p))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="loa-feed-subs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self._send_sock.close()
        self.sock.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                self.subs.expire(time.monotonic())
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self.take(data, (str(addr[0]), int(addr[1])), time.monotonic(), time.time())

    def take(self, data: bytes, addr: Addr, now: float, wall: float) -> None:
        try:
            sub = unpack_subscription(self.key, data, wall)
        except EnvelopeError as e:
            self.counters["refused"] += 1
            log.debug("subscription from %s refused: %s", addr, e)
            return
        if self.subs.update(sub, addr, now):
            self.counters["subscriptions"] += 1
        self.subs.expire(now)

    # the tick -------------------------------------------------------------------------------
    def on_tick(self, k: int, programs: Mapping[ProgramKey, tuple[str, ...]],
                frames: Mapping[ProgramKey, ProgramFrame],
                markers: Mapping[ProgramKey, tuple[tuple[str, ...], tuple[str, ...]]] | None
                ) -> None:
        targets = self.subs.targets
        if not targets or not programs or not self.enabled:
            return
        rtp = self.rtp
        seq, ssrc = rtp.seq, rtp.ssrc
        ts = (rtp.ts0 + k * FRAME_SAMPLES) & 0xFFFFFFFF
        wall_ms = self._wall_ms(k)
        for addr, zones in targets:
            progs = select(programs, markers, zones, frames)
            if not progs:
                continue
            try:
                datagrams = pack_tick(self.key, k, seq, ts, ssrc, wall_ms, progs,
                                      fence=self.fence)
            except EnvelopeError:
                self.counters["send_drops"] += 1
                continue
            for d in datagrams:
                try:
                    self._send_sock.sendto(d, addr)
                    self.counters["envelopes"] += 1
                except OSError:   # full buffer, or the edge's address unreachable: next tick
                    self.counters["send_drops"] += 1
