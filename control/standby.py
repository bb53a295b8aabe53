"""A standby origin that goes on air before it can open the database (issue 19).

Two origins share one data directory (shared storage: the records and the media files). The
active one holds the directory's lock (control/datadir.py); a second one started on it is the
standby. Waiting for the lock before doing anything made a takeover as slow as the lock's
release, and on NFS a *machine* that dies holds its lock until the server's lease recovery
(NFSv4: ~90 s).

So the failover state lives in Redis, and the standby does not wait for the lock to go on air:
it builds the server, hands its engine the zone tree the leader keeps in Redis (`{p}tree`; the
settings file's zones if there is none), starts the engine and the cluster part (lease, feed,
on-air book) and serves HTTP. While the active origin leads it is a follower and airs nothing;
when the active one's lease expires it takes the lease and carries on what was on air from
`{p}onair` (control/cluster.py), all without the database. Meanwhile it keeps trying the lock,
and once it has it opens the database and starts the rest (records, as-run, schedules, alert
intake, receiver endpoint, crash recovery of what the cluster does not carry on).

The leader's node hash says `storage: waiting` meanwhile: an origin that holds the directory
and learns it no longer leads (it was hung, or cut off, past its lease) shuts down to free it
(control/cluster.py, `release_storage`; its supervisor starts it again, and it is the standby).
A machine that died holds an NFS lock until the server's lease recovery: the API waits for that,
the speakers do not.

Until then the API answers 503 `storage_not_ready` (Retry-After) to every request but the
health check, which answers 503 too, with the node's standing and what it has on air: nothing
is written while the records belong to another process, and no request is half served.

Why Redis and not a replicated copy of the database: what a takeover needs is small (what is
on air, from when, and the zone tree: a few keys the leader already rewrites), already in Redis,
and at most a second old; a replica of the SQLite file would need its own replication process,
could be minutes behind, and would still need reconciling with the real file when it comes.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from control.datadir import DataDirBusy, DataDirLock
from control.settings import Settings

log = logging.getLogger("loa.cluster")

__all__ = ["StandbyGate", "serve_standby", "LOCK_POLL_S"]

LOCK_POLL_S = 0.2
HEALTH_PATHS = ("/api/v1/health", "/health")


class StandbyGate:
    """Until the database is open: every request but the health check answers 503."""

    def __init__(self, status: Any, holder: str) -> None:
        self.status = status        # the cluster part's status (what it leads, has on air)
        self.holder = holder
        self.open = False

    def _body(self) -> dict[str, Any]:
        return {"error": {"code": "storage_not_ready", "message":
                          f"this origin has not opened its database yet: {self.holder}; "
                          "what is on air goes on (from Redis), writes come when it is free"}}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.open:
            return await handler(request)
        if request.method == "GET" and request.path in HEALTH_PATHS:
            return web.json_response({"status": "standby", "storage": "not open",
                                      "holder": self.holder, "cluster": self.status()},
                                     status=503, headers={"Retry-After": "2"})
        return web.json_response(self._body(), status=503, headers={"Retry-After": "2"})


async def serve_standby(settings: Settings, busy: DataDirBusy, ready: asyncio.Event | None,
                        stop: asyncio.Event | None) -> None:
    """`loa serve --role origin` on a data directory another process holds."""
    from control.app import build_tree, create_app
    from control.cli import _serve_locked
    print(f"loa: standby origin: {settings.data_dir} is held by "
          f"{'PID ' + str(busy.pid) if busy.pid else 'another process'}; waiting for it "
          "(on air from Redis meanwhile if the leadership comes first)", flush=True)
    app = create_app(settings)
    server = app["loa"]
    gate = StandbyGate(server.cluster.status, str(busy))
    app.middlewares.insert(0, gate.middleware)
    held: list[DataDirLock] = []
    tasks: list[asyncio.Task] = []

    async def open_when_free() -> None:
        lock = DataDirLock(settings.data_dir)
        while True:
            try:
                held.append(lock.acquire())
                break
            except DataDirBusy:
                await asyncio.sleep(LOCK_POLL_S)
        log.warning("standby origin: %s is free; opening the database", settings.data_dir)
        await server.open_storage()
        gate.open = True
        server.cluster.storage_waiting = False
        server.hub.publish({"type": "cluster.storage_open", "node": server.cluster.node_id})
        print("loa: standby origin: database open, serving the whole API", flush=True)

    async def start_ahead(_app: web.Application) -> None:
        tree = None
        try:
            tree = await server.cluster.read_tree()
        except Exception as e:   # Redis away: the settings file's zones
            log.warning("standby origin: no zone tree from Redis (%s)", e)
        if tree is None:
            tree = build_tree(settings)
        server.state.tree = tree
        server._send_tree(tree)
        server.cluster.storage_waiting = True
        await server.start(storage=False)
        tasks.append(asyncio.create_task(open_when_free(), name="loa-standby-storage"))

    app.on_startup.clear()
    app.on_startup.append(start_ahead)
    try:
        await _serve_locked(settings, ready, stop, app=app)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lk in held:
            lk.release()
