"""Send one packet to many receivers.

Contract used by the engine (keep it stable):
- `Fanout.set_destinations(key, addrs)`: the unicast/multicast addresses behind a key (a zone id).
  Called only when membership changes, never per tick.
- `Fanout.send(packet, keys)`: send the same bytes to every address behind these keys. Never blocks
  the caller for long; a full socket buffer drops (counted), it never stalls other receivers.
- `Fanout.stats()`: counters for metrics.

This first version uses plain sendto; the batched sender replaces the internals.
"""
from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence


class Fanout:
    def __init__(self, bind: tuple[str, int] = ("0.0.0.0", 0), multicast_ttl: int = 1,
                 multicast_if: str | None = None, multicast_loop: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, multicast_ttl)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if multicast_loop else 0)
        if multicast_if:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                 socket.inet_aton(multicast_if))
        self.sock.bind(bind)
        self.sock.setblocking(False)
        self._dests: dict[str, list[tuple[str, int]]] = {}
        self.sent = 0
        self.dropped = 0
        self.errors = 0

    def set_destinations(self, key: str, addrs: Sequence[tuple[str, int]]) -> None:
        if addrs:
            self._dests[key] = [(str(h), int(p)) for h, p in addrs]
        else:
            self._dests.pop(key, None)

    def destinations(self, key: str) -> list[tuple[str, int]]:
        return list(self._dests.get(key, ()))

    def send(self, packet: bytes | memoryview, keys: Iterable[str]) -> int:
        n = 0
        for key in keys:
            for addr in self._dests.get(key, ()):
                try:
                    self.sock.sendto(packet, addr)
                    n += 1
                except BlockingIOError:
                    self.dropped += 1
                except OSError:
                    self.errors += 1
        self.sent += n
        return n

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors,
                "destinations": sum(len(v) for v in self._dests.values())}

    def close(self) -> None:
        self.sock.close()
