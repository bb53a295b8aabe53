"""A listener's TCP connection after its response head: a plain non-blocking socket that
`ListenHub` writes each page to with one send(2), no HTTP server machinery in between.

Why not the HTTP server's transport: a listener then carries the server's whole per-request
state for as long as it listens (the protocol object, its parser, the request and response,
the handler task and the middleware frames: ~16 KB each, measured by `loa bench listen`),
and every page goes through the transport's write path, whose write(2) runs holding the GIL
(uvloop), so 1,000 listeners kept the tick thread out for ~10 ms each second (`loa bench
listen` saw late ticks). Here a listener is this object, its socket and the loop's read watch
(to notice at once that the client went away), and `socket.send` lets the GIL go per send.

Nothing is copied per listener: every listener of a zone is sent the same page bytes; what a
send(2) could not take (the kernel's buffer is full: the reader is behind) is kept as a
memoryview of that shared page and tried again with the next page. The hub drops a listener
whose backlog exceeds its limit (`get_write_buffer_size`), so a stalled phone holds at most
its kernel buffer plus views of pages the others were sent anyway.
"""
from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable

__all__ = ["SocketSink"]


class SocketSink:
    """A `streamer.outputs.listen.Sink` over a connected, non-blocking TCP socket it owns."""

    __slots__ = ("sock", "send", "queued", "_fd", "_loop", "_backlog", "_closed", "_watched")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        sock.setblocking(False)
        self.sock = sock
        #: the socket's own send (the hub's fast path calls it directly while `queued` is 0,
        #: and hands what it did not take to `keep`)
        self.send = sock.send
        #: bytes the kernel did not take yet
        self.queued = 0
        self._fd = sock.fileno()
        self._loop = loop
        self._backlog: deque[memoryview] | None = None
        self._closed = False
        self._watched = False

    def watch(self, gone: Callable[[], None]) -> None:
        """Call `gone` once the client closes its side (or the connection breaks)."""
        if not self._closed:
            self._loop.add_reader(self._fd, self._readable, gone)
            self._watched = True

    def _readable(self, gone: Callable[[], None]) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            gone()
        # anything else a listener sends after its request is read and ignored (as Icecast)

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        if self.queued:   # behind already: keep the order
            assert self._backlog is not None
            self._backlog.append(memoryview(data))
            self.queued += len(data)
            self._flush()
            return
        try:
            n = self.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        if n < len(data):
            self.keep(data, n)

    def keep(self, data: bytes, n: int) -> None:
        """`send` took only the first n bytes of `data` (nothing was queued before)."""
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.append(memoryview(data)[n:])
        self.queued = len(data) - n

    def _flush(self) -> None:
        q = self._backlog
        assert q is not None
        while q:
            v = q[0]
            try:
                n = self.send(v)
            except (BlockingIOError, InterruptedError):
                return
            self.queued -= n
            if n < len(v):
                q[0] = v[n:]
                return
            q.popleft()

    def get_write_buffer_size(self) -> int:
        """Bytes the kernel did not take yet (its own buffer, SO_SNDBUF, is full)."""
        return self.queued

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog = None
        self.queued = 0
        if self._watched:
            try:
                self._loop.remove_reader(self._fd)
            except (OSError, ValueError, RuntimeError):   # the loop is closing
                pass
        self.sock.close()
