"""A listener's socket after hand-over (streamer/outputs/listen_socket.py), on real TCP over
loopback: partial sends kept in order as views of the shared page, a departed client noticed at
once, abort releases the socket and its read watch."""
from __future__ import annotations

import asyncio
import socket

from streamer.outputs.listen_socket import SocketSink


def _pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.socket()
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    cli.connect(srv.getsockname())
    conn, _ = srv.accept()
    srv.close()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return conn, cli


def _drain(cli: socket.socket, want: int, timeout: float = 10.0) -> bytes:
    cli.settimeout(timeout)
    got = bytearray()
    while len(got) < want:
        chunk = cli.recv(65536)
        assert chunk, "connection closed early"
        got += chunk
    return bytes(got)


def test_partial_sends_are_kept_in_order_and_sent_with_the_next_page():
    async def run() -> None:
        conn, cli = _pair()
        sink = SocketSink(conn, asyncio.get_running_loop())
        pages = [bytes([65 + i]) * 40_000 for i in range(4)]   # far over both buffers
        for p in pages[:2]:
            sink.write(p)
        behind = sink.get_write_buffer_size()
        assert 0 < behind <= 80_000
        # the client reads everything so far; the next page first flushes what was left
        first = _drain(cli, 80_000 - behind)
        await asyncio.sleep(0)
        total = bytearray(first)
        for p in pages[2:]:
            sink.write(p)
            total += _drain(cli, 1)
        while len(total) < 160_000:
            sink.write(b"")   # nothing new: only the backlog moves
            cli.settimeout(0.2)
            try:
                total += cli.recv(65536)
            except TimeoutError:
                pass
        assert bytes(total) == b"".join(pages)
        assert sink.get_write_buffer_size() == 0
        sink.abort()
        cli.close()
    asyncio.run(run())


def test_a_departed_client_is_noticed_at_once_and_abort_releases_the_socket():
    async def run() -> None:
        loop = asyncio.get_running_loop()
        conn, cli = _pair()
        sink = SocketSink(conn, loop)
        gone = loop.create_future()
        sink.watch(lambda: gone.done() or gone.set_result(True))
        sink.write(b"x" * 100)
        cli.sendall(b"ignored chatter")     # read and ignored, not a departure
        await asyncio.sleep(0.2)
        assert not gone.done()
        cli.close()
        assert await asyncio.wait_for(gone, 5)
        fd = conn.fileno()
        sink.abort()
        sink.abort()
        assert sink.is_closing() and conn.fileno() == -1
        sink.write(b"after the end")        # a closed sink takes nothing, raises nothing
        assert fd >= 0
    asyncio.run(run())
