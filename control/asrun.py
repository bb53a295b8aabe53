"""The as-run log: every event (the engine's, through the port, and the receiver registry's)
is written to the `asrun` table, and each broadcast's latest state to `broadcasts`.

The tick only hands an event to the hub (EventHub.publish, non-blocking); this writer runs on
the event loop, behind a bounded queue, so the database never slows the audio.
"""
from __future__ import annotations

import asyncio
import logging

from control.db import Database
from control.events import EventHub
from streamer.port import EnginePort

log = logging.getLogger("loa.control")


class AsRunWriter:
    def __init__(self, db: Database, port: EnginePort, hub: EventHub) -> None:
        self.db = db
        self.port = port
        self.hub = hub
        self._events: asyncio.Queue[dict] = asyncio.Queue(maxsize=100_000)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.hub.observers.append(self._on_event)
        self._task = asyncio.create_task(self._run(), name="loa-asrun-writer")

    async def close(self) -> None:
        # let the events the engine emitted while stopping reach the log
        for _ in range(3):
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(self._events.join(), 5)
        except TimeoutError:
            log.warning("as-run writer did not drain in time")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_event(self, ev: dict) -> None:  # on the loop, from EventHub._fanout
        try:
            self._events.put_nowait(ev)
        except asyncio.QueueFull:
            log.error("as-run queue full; dropped %s", ev.get("type"))

    async def _run(self) -> None:
        while True:
            ev = await self._events.get()
            try:
                bid = ev.get("broadcast")
                snap = self.port.broadcast(bid) if bid else None
                row = snap.to_dict() if snap is not None else None
                if row is None and bid and ev.get("type") == "broadcast.refused":
                    row = {"id": bid, "state": "refused", "level": ev.get("level", ""),
                           "owner": ev.get("owner", ""), "reached_zones": ev.get("zones", []),
                           "created_at": ev.get("time"), "ended_at": ev.get("time"),
                           "error": ev.get("reason")}
                await self.db.record_event(ev, row)
            except Exception:
                log.exception("could not record event %s", ev.get("type"))
            finally:
                self._events.task_done()
