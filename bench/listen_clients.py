"""The listening benchmark's HTTP clients: N concurrent listeners of one stream URL in one
process (asyncio; uvloop when installed), each reading and discarding what it gets, as a phone
player does; an https:// URL is read over TLS (any certificate). Run as its own process
(`python -m bench.listen_clients URL --n N`), pinned to a core the server does not use.

Protocol on stdio: connects at `--ramp` listeners per second and prints `connected N` once every
listener has its first audio bytes (or `connected K` at --connect-timeout); on a `close` line it
closes them at the same ramp and prints one JSON line (bytes per listener, failures), then exits.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
from urllib.parse import urlsplit


class Listener(asyncio.Protocol):
    def __init__(self, request: bytes, first: asyncio.Future[None]) -> None:
        self.request = request
        self.first = first
        self.bytes = 0
        self.status = ""
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)   # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if not self.status:
            self._head += data
            if b"\r\n" in self._head:
                self.status = self._head.split(b"\r\n", 1)[0].decode("latin-1")
                self._head = b""
        if self.bytes > 4096 and not self.first.done():
            self.first.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.first.done():
            self.first.set_result(None)


async def run(url: str, n: int, ramp: float, connect_timeout: float) -> dict:
    u = urlsplit(url)
    tls = None
    if u.scheme == "https":   # the bench's own server with a self-signed certificate
        import ssl
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    host, port = u.hostname or "127.0.0.1", u.port or (443 if tls else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: loa-bench-listen\r\n"
               "Accept: */*\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    listeners: list[Listener] = []
    firsts: list[asyncio.Future[None]] = []
    failures: list[str] = []
    gap = 1.0 / ramp if ramp > 0 else 0.0
    t0 = loop.time()
    for i in range(n):
        fut: asyncio.Future[None] = loop.create_future()
        try:
            # each listener from its own loopback address, as phones are (127.1.x.y)
            local = (f"127.1.{i // 250}.{i % 250 + 1}", 0) if host.startswith("127.") else None
            _, proto = await loop.create_connection(lambda f=fut: Listener(request, f), host, port,
                                                    local_addr=local, ssl=tls)
        except OSError as e:
            failures.append(f"connect: {e}")
            continue
        listeners.append(proto)
        firsts.append(fut)
        delay = t0 + (i + 1) * gap - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    try:
        await asyncio.wait_for(asyncio.gather(*firsts), connect_timeout)
    except TimeoutError:
        pass
    ok = [x for x in listeners if x.bytes > 4096 and not x.lost]
    print(f"connected {len(ok)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)   # wait for `close`
    ended_early = sum(1 for x in listeners if x.lost)
    start_bytes = [x.bytes for x in listeners]
    for x in listeners:
        if x.transport is not None:
            x.transport.close()
        if gap:
            await asyncio.sleep(gap)
    statuses: dict[str, int] = {}
    for x in listeners:
        statuses[x.status] = statuses.get(x.status, 0) + 1
    return {"listeners": len(listeners), "connected": len(ok), "ended_early": ended_early,
            "connect_failures": len(failures), "failures": failures[:5], "statuses": statuses,
            "bytes_total": sum(start_bytes), "bytes_min": min(start_bytes, default=0),
            "bytes_max": max(start_bytes, default=0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.listen_clients")
    p.add_argument("url")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--ramp", type=float, default=200.0, help="connections (and closes) per s")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    a = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.n + 1024), hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(a.url, a.n, a.ramp, a.connect_timeout))
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
