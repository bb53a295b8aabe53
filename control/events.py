"""Events to whoever listens: the as-run log (control/asrun.py) and Server-Sent Event streams.

`publish` takes JSON-safe dicts: the engine's events (the server subscribes to the port and
publishes `EngineEvent.to_dict()`, from the tick thread) and the receiver registry's. It must
return at once; everything else happens on the event loop. A failing observer is logged, never
silently dropped, and never stops the others.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable

from control import textsafe

log = logging.getLogger("loa.events")


class EventHub:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, keep: int = 5000) -> None:
        self.loop = loop
        self.log: collections.deque[dict] = collections.deque(maxlen=keep)
        self._subs: set[asyncio.Queue] = set()
        self._lock = threading.Lock()
        self._seq = 0
        self.observers: list[Callable[[dict], None]] = []  # run on the loop (e.g. DB writer)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def publish(self, event: dict) -> None:
        """Thread-safe, non-blocking."""
        with self._lock:
            self._seq += 1
            event = dict(event, seq=self._seq)
            self.log.append(event)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._fanout, event)
            except RuntimeError:  # the loop closed between the check and the call: shutting down
                log.debug("event %s after the loop closed", event.get("type"))

    def _fanout(self, event: dict) -> None:
        for q in list(self._subs):
            if q.full():  # a slow client loses old events, never blocks the others
                try:
                    q.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            q.put_nowait(event)
        for obs in self.observers:
            try:
                obs(event)
            except Exception:  # one broken observer must not starve the others, nor go unseen
                log.exception("event observer %r failed on %s", obs, event.get("type"))

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self._subs.add(q)
        return q

    def close_streams(self) -> None:
        for q in list(self._subs):
            try:
                q.put_nowait(None)
            except asyncio.QueueFull:
                q.get_nowait()
                q.put_nowait(None)

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subs.discard(q)

    def since(self, seq: int = 0, types: set[str] | None = None,
              broadcast: str | None = None) -> list[dict]:
        with self._lock:
            items = list(self.log)
        return [e for e in items if e["seq"] > seq
                and (types is None or e["type"] in types)
                and (broadcast is None or e.get("broadcast") == broadcast)]

    @staticmethod
    def sse(event: dict) -> bytes:
        return (f"id: {event['seq']}\nevent: {textsafe.sse_field(event['type'])}\n"
                f"data: {textsafe.json_line(event)}\n\n").encode()
