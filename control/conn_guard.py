"""The HTTP server stays reachable: timeouts and connection limits around aiohttp's protocol.

Held-open half-sent requests (1,100 of them, anonymous) once made every request fail for 40 s
and more: nothing timed them out (aiohttp's default idle timeout is an hour) and the process ran
out of open files. Here:

- headers: aiohttp's keep-alive timer runs from the moment a connection opens and again after
  each answer, and it closes a connection still waiting for a complete request head; it is set
  to `http_header_timeout_s` (aiohttp has no separate header timeout).
- bodies: while a request's body is incomplete, a connection that sends nothing for
  `http_body_timeout_s` is closed.
- connections: `control.limits.ConnectionBook` per address and in total, evicting the oldest
  connection that carries no request in progress; the total never exceeds the open-files limit
  minus a reserve, and the process raises its soft open-files limit at start (systemd gives
  1024), so an authenticated alert or emergency can always be accepted and read.

`guarded_runner(app, settings)` is the `web.AppRunner` `loa serve` uses.
"""
from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from control.http import HttpError
from control.limits import ConnectionBook, connection_cap, raise_open_files
from control.settings import Settings

log = logging.getLogger("loa.control")

#: the soft open-files limit `loa serve` asks for (up to the hard limit)
WANTED_OPEN_FILES = 65_536


def raise_nofile(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise this process's soft open-files limit towards `wanted` (never above the hard
    limit); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = raise_open_files(wanted, soft, -1 if hard == resource.RLIM_INFINITY else hard)
    if new != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, new, e)
            return soft
        log.info("open-files limit raised from %d to %d", soft, new)
    return new


class Guard:
    """The connection book and the timeouts one server applies to its connections."""

    def __init__(self, per_address: int, total: int, body_timeout_s: float) -> None:
        self.book = ConnectionBook(per_address=per_address, total=total)
        self.body_timeout_s = body_timeout_s
        self.body_timeouts = 0

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.book), "connection_cap": self.book.total,
                "per_address_cap": self.book.per_address, "evicted": self.book.evicted,
                "refused": self.book.refused, "body_timeouts": self.body_timeouts}


GUARD = web.AppKey("loa_conn_guard", Guard)


class GuardedHandler(RequestHandler):
    guard: Guard  # set on the subclass made for each server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._rx_at = self._loop.time()
        peer = transport.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        ok, victims = self.guard.book.opened(self, addr)
        for v in victims:
            if isinstance(v, RequestHandler):
                v.force_close()
        if not ok:
            log.warning("connection from %s refused: every connection is busy with a request "
                        "(%d from this address, %d in all)", addr, self.guard.book.count(addr),
                        len(self.guard.book))
            self.force_close()

    def data_received(self, data: bytes) -> None:
        self._rx_at = self._loop.time()
        super().data_received(data)
        if self._messages:  # a complete request head is queued: not evictable any more
            self.guard.book.busy(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.book.closed(self)
        super().connection_lost(exc)

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any
                              ) -> Any:
        book = self.guard.book
        book.busy(self)
        watch: asyncio.TimerHandle | None = None
        if not request.content.is_eof():
            watch = self._watch_body(request)
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            if watch is not None:
                watch.cancel()
            book.idle(self)

    def _watch_body(self, request: Any) -> asyncio.TimerHandle:
        """Close the connection if the incomplete body stalls for body_timeout_s."""
        timeout = self.guard.body_timeout_s
        holder: list[asyncio.TimerHandle] = []

        def check() -> None:
            if self.transport is None or request.content.is_eof():
                return
            idle = self._loop.time() - self._rx_at
            if idle >= timeout:
                self.guard.body_timeouts += 1
                log.info("closing a connection whose request body stalled for %.0f s", idle)
                # the handler waiting for the body answers 408 (to nobody), no server error
                request.content.set_exception(HttpError(
                    408, "body_timeout", f"the request body stalled for {timeout:g} s"))
                self.force_close()
                return
            holder[0] = self._loop.call_later(min(1.0, timeout - idle), check)
        holder.append(self._loop.call_later(min(1.0, timeout), check))

        class _Cancel:  # cancels whichever check is scheduled now
            def cancel(self) -> None:
                holder[0].cancel()
        return _Cancel()  # type: ignore[return-value]


class GuardedServer(web.Server):
    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._handler_cls = type("GuardedHandler", (GuardedHandler,), {"guard": guard})

    def __call__(self) -> RequestHandler:
        return self._handler_cls(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # the same server, built with the guarded handler (aiohttp's own factory, same arguments)
        guarded = GuardedServer(server.request_handler, request_factory=server.request_factory,
                                handler_cancellation=server.handler_cancellation,
                                loop=server._loop, guard=self.guard, **server._kwargs)
        return guarded


def guarded_runner(app: web.Application, settings: Settings, **kwargs: Any) -> GuardedRunner:
    """The AppRunner `loa serve` uses: raises the open-files limit, then caps connections to
    fit it (keeping `open_files_reserve` free) and applies the header and body timeouts."""
    soft = raise_nofile()
    total = connection_cap(settings.http_max_connections, soft, settings.open_files_reserve)
    if total < settings.http_max_connections:
        log.warning("at most %d HTTP connections (open-files limit %d, %d kept in reserve)",
                    total, soft, settings.open_files_reserve)
    guard = Guard(settings.http_max_connections_per_address, total,
                  settings.http_body_timeout_s)
    app[GUARD] = guard
    kwargs.setdefault("keepalive_timeout", settings.http_header_timeout_s)
    return GuardedRunner(app, guard, **kwargs)
