"""A phone link on loopback: a UDP relay that loses and delays datagrams (issue 17).

    sender ──▶ front (the address the sender is told the server has)
               back  ──▶ server   (the address the server is told the sender has)
    sender ◀── front ◀── back ◀── server

Both peers of a WebRTC connection see one consistent address for the other (the relay's), so
ICE, DTLS and SRTP go through it unchanged; the bench rewrites the candidates of the offer
(sender → back) and the answer (server → front). Every datagram, either way, is lost with
probability `loss` or held for a delay drawn as netem's `delay J/2 J/2 distribution normal`
(mean and standard deviation half the jitter, never negative): a link with jitter J reorders
packets as a real one does. `LinkModel` is the pure part (seeded RNG, no IO); `LossyRelay` is a
thread with two sockets and a heap of datagrams due.
"""
from __future__ import annotations

import heapq
import random
import re
import select
import socket
import threading
import time

import numpy as np


class LinkModel:
    """Per datagram: None (lost) or the delay in seconds. `loss_pct` in %, `jitter_ms` the
    link's jitter (the normal's mean and standard deviation are half of it)."""

    def __init__(self, loss_pct: float = 0.0, jitter_ms: float = 0.0, seed: int = 1) -> None:
        if not 0 <= loss_pct < 100:
            raise ValueError("loss must be 0..100 %")
        if jitter_ms < 0:
            raise ValueError("jitter must be >= 0 ms")
        self.loss = loss_pct / 100.0
        self.half = jitter_ms / 2000.0
        self.rnd = random.Random(seed)

    def decide(self) -> float | None:
        if self.loss and self.rnd.random() < self.loss:
            return None
        if not self.half:
            return 0.0
        return max(0.0, self.rnd.gauss(self.half, self.half))


class _Way:
    def __init__(self) -> None:
        self.passed = 0
        self.lost = 0
        self.delays: list[float] = []

    def stats(self) -> dict:
        d = np.array(self.delays) * 1000.0 if self.delays else np.zeros(1)
        n = self.passed + self.lost
        return {"datagrams": n, "lost": self.lost,
                "loss_pct": round(100.0 * self.lost / n, 2) if n else 0.0,
                "delay_ms_mean": round(float(d.mean()), 2),
                "delay_ms_p50": round(float(np.percentile(d, 50)), 2),
                "delay_ms_p95": round(float(np.percentile(d, 95)), 2)}


class LossyRelay:
    """Relay between one sender and one server on 127.0.0.1 through a `LinkModel` each way."""

    def __init__(self, loss_pct: float = 0.0, jitter_ms: float = 0.0, seed: int = 1) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.front, self.back):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.front_port = self.front.getsockname()[1]
        self.back_port = self.back.getsockname()[1]
        self.up_model = LinkModel(loss_pct, jitter_ms, seed)          # sender → server
        self.down_model = LinkModel(loss_pct, jitter_ms, seed + 1)    # server → sender
        self.up, self.down = _Way(), _Way()
        self.sender: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self._heap: list[tuple[float, int, int, bytes]] = []   # (due, n, 0 up / 1 down, data)
        self._n = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="lossy-relay")

    def start(self, sender: tuple[str, int], server: tuple[str, int]) -> LossyRelay:
        self.sender, self.server = sender, server
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, direction, data = heapq.heappop(self._heap)
                dest = self.server if direction == 0 else self.sender
                if dest is None:
                    continue
                try:
                    (self.back if direction == 0 else self.front).sendto(data, dest)
                except OSError:
                    pass
            wait = min(0.005, max(0.0, self._heap[0][0] - now)) if self._heap else 0.005
            r, _, _ = select.select([self.front, self.back], [], [], wait)
            for s in r:
                while True:
                    try:
                        data, addr = s.recvfrom(4096)
                    except (BlockingIOError, OSError):
                        break
                    up = s is self.front
                    if up:
                        self.sender = addr   # the sender's port (as a NAT would learn it)
                    model, way = (self.up_model, self.up) if up else (self.down_model, self.down)
                    d = model.decide()
                    if d is None:
                        way.lost += 1
                        continue
                    way.passed += 1
                    way.delays.append(d)
                    self._n += 1
                    heapq.heappush(self._heap, (time.monotonic() + d, self._n,
                                                0 if up else 1, data))

    def stats(self) -> dict:
        return {"sender_to_server": self.up.stats(), "server_to_sender": self.down.stats()}

    def close(self) -> None:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(1.0)
        self.front.close()
        self.back.close()


_CAND = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+) (\d+)( typ host.*)$", re.I | re.M)


def candidate_port(sdp: str) -> tuple[str, int] | None:
    """The first UDP host candidate's (address, port)."""
    m = _CAND.search(sdp)
    return (m.group(2), int(m.group(3))) if m else None


def via_relay(sdp: str, port: int) -> str:
    """`sdp` with its UDP host candidates moved to 127.0.0.1:`port` (the relay), the others
    (TCP, other addresses) removed, so the peer reaches it only through the relay."""
    out = []
    for line in sdp.split("\r\n"):
        if line.lower().startswith("a=candidate:"):
            m = _CAND.match(line)
            if not m:
                continue
            line = f"{m.group(1)}127.0.0.1 {port}{m.group(4)}"
        out.append(line)
    return "\r\n".join(out)
