"""The as-run log: every event (the engine's, through the port, and the receiver registry's)
is written to the `asrun` table, and each broadcast's latest state to `broadcasts`.

The tick only hands an event to the hub (EventHub.publish, non-blocking); this writer runs on
the event loop, behind a bounded queue, so the database never slows the audio.

With the server's write-ahead queue (`db.records`, control/journal.py) each event becomes a
record at once (its broadcast's snapshot then, and the command that started it, kept by
control.recovery.RecordingRuntime), journaled and written in order: a locked database or a
full disk delays the as-run log, never loses it. Urgent broadcasts' positions are
checkpointed every second (what a resume after a crash starts from).
"""
from __future__ import annotations

import asyncio
import logging

from control.db import Database
from control.events import EventHub
from streamer.port import EnginePort

log = logging.getLogger("loa.control")
URGENT = ("emergency", "priority")  # levels a crash resumes (control/recovery.py)


class AsRunWriter:
    def __init__(self, db: Database, port: EnginePort, hub: EventHub) -> None:
        self.db = db
        self.port = port
        self.hub = hub
        self._events: asyncio.Queue[dict] = asyncio.Queue(maxsize=100_000)
        self._task: asyncio.Task | None = None

    CHECKPOINT_S = 1.0

    def start(self) -> None:
        self.hub.observers.append(self._on_event)
        self._task = asyncio.create_task(
            self._run() if self.db.records is None else self._checkpoints(),
            name="loa-asrun-writer")

    async def close(self) -> None:
        # let the events the engine emitted while stopping reach the log
        for _ in range(3):
            await asyncio.sleep(0)
        if self.db.records is not None:
            self._checkpoint()  # where urgent broadcasts stood at a clean stop
        try:
            await asyncio.wait_for(self._events.join(), 5)
        except TimeoutError:
            log.warning("as-run writer did not drain in time")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_event(self, ev: dict) -> None:  # on the loop, from EventHub._fanout
        if self.db.records is not None:
            self.db.records.put("event", self._record(ev))
            return
        try:
            self._events.put_nowait(ev)
        except asyncio.QueueFull:
            log.error("as-run queue full; dropped %s", ev.get("type"))

    def _row(self, ev: dict) -> dict | None:
        bid = ev.get("broadcast")
        snap = self.port.broadcast(bid) if bid else None
        row = snap.to_dict() if snap is not None else None
        if row is None and bid and ev.get("type") == "broadcast.refused":
            row = {"id": bid, "state": "refused", "level": ev.get("level", ""),
                   "owner": ev.get("owner", ""), "reached_zones": ev.get("zones", []),
                   "created_at": ev.get("time"), "ended_at": ev.get("time"),
                   "error": ev.get("reason")}
        return row

    def _record(self, ev: dict) -> dict:
        """The write-ahead record of one event: the event, its broadcast's row now, and the
        command that started it (the first time the broadcast is seen)."""
        rec: dict = {"ev": ev, "row": self._row(ev)}
        commands = getattr(self.port, "commands", None)
        bid = ev.get("broadcast")
        if commands is not None and bid and rec["row"] is not None:
            cmd = commands.take(bid)
            if cmd is not None:
                rec["cmd"] = cmd
        return rec

    def _checkpoint(self) -> None:
        for b in self.port.broadcasts():
            if b.level in URGENT and not b.live and not b.ended:
                self.db.records.checkpoint(b.id, b.to_dict())

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self.CHECKPOINT_S)
            try:
                self._checkpoint()
            except Exception:
                log.exception("as-run checkpoint failed")

    async def _run(self) -> None:
        while True:
            ev = await self._events.get()
            try:
                await self.db.record_event(ev, self._row(ev))
            except Exception:
                log.exception("could not record event %s", ev.get("type"))
            finally:
                self._events.task_done()
