"""Commands that must not be lost (start/stop, alerts), origin → edges, through a Redis Stream.

The leader appends to `Keys.commands` (XADD, capped at ~`COMMANDS_MAXLEN`), each entry carrying
its fencing token. Every edge reads with its own consumer group `edge:{node}` (XREADGROUP) and
acknowledges (XACK) what it has handled, so XPENDING / XINFO GROUPS show which edge has not
applied a command yet; an edge that was away reads what it missed from its group's position.
An edge applies a command only if its token is not older than the newest it has seen
(`streamer.cluster.lease.FenceGate`); a refused command is acknowledged too (it must not come
back) and counted.

If Redis restarted empty, the group is gone (NOGROUP): the edge creates it again and reads on.
UI events that may be lost go through pub/sub (`Keys.events`), not here.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamer.cluster.keys import COMMANDS_MAXLEN, Keys
from streamer.cluster.lease import FenceGate

__all__ = ["ClusterCommand", "NotLeader", "CommandLog", "CommandConsumer", "encode", "decode"]

log = logging.getLogger("loa.cluster.commands")


class NotLeader(RuntimeError):
    """This node may not issue commands now (no lease, or not renewed within half a lease)."""


@dataclass(frozen=True, slots=True)
class ClusterCommand:
    fence: int
    kind: str
    body: Mapping[str, Any]
    issuer: str = ""
    id: str = ""     # the stream entry id, once read


def encode(cmd: ClusterCommand) -> dict[str, str]:
    return {"fence": str(cmd.fence), "kind": cmd.kind, "issuer": cmd.issuer,
            "body": json.dumps(dict(cmd.body), separators=(",", ":"))}


def decode(entry_id: Any, fields: Mapping[Any, Any]) -> ClusterCommand | None:
    """A stream entry as a command; None if it is not one (it is then acknowledged unread)."""
    f = {(k.decode() if isinstance(k, bytes) else str(k)):
         (v.decode() if isinstance(v, bytes) else str(v)) for k, v in fields.items()}
    try:
        fence = int(f["fence"])
        kind = f["kind"]
        body = json.loads(f.get("body") or "{}")
    except (KeyError, ValueError):
        return None
    if fence <= 0 or not kind or not isinstance(body, dict):
        return None
    eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return ClusterCommand(fence, kind, body, f.get("issuer", ""), eid)


class CommandLog:
    """The leader's side. `fence()` and `may_issue()` come from its `RedisLease`."""

    def __init__(self, redis: Any, keys: Keys, node_id: str, fence: Callable[[], int],
                 may_issue: Callable[[], bool], *, timeout_s: float = 2.0) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.fence = fence
        self.may_issue = may_issue
        self.timeout_s = timeout_s

    async def send(self, kind: str, body: Mapping[str, Any], *, check: bool = True) -> str:
        """Append a command; NotLeader if this node may not issue now. (`check=False` is for
        tests that play a leader which lost its lease without noticing.)"""
        if check and not self.may_issue():
            raise NotLeader("not the leader, or the lease was not renewed within half a lease")
        fields = encode(ClusterCommand(self.fence(), kind, body, self.node_id))
        eid = await asyncio.wait_for(
            self.redis.xadd(self.keys.commands, fields, maxlen=COMMANDS_MAXLEN,
                            approximate=True), self.timeout_s)
        return eid.decode() if isinstance(eid, bytes) else str(eid)


Apply = Callable[[ClusterCommand], "Awaitable[None] | None"]


class CommandConsumer:
    """An edge's side: reads its group, applies what the fence admits, acknowledges all."""

    def __init__(self, redis: Any, keys: Keys, node_id: str, apply: Apply, *,
                 gate: FenceGate | None = None, block_ms: int = 1000) -> None:
        self.redis = redis
        self.keys = keys
        self.group = keys.edge_group(node_id)
        self.consumer = node_id
        self.apply = apply
        self.gate = gate or FenceGate()
        self.block_ms = block_ms
        self.applied: deque[ClusterCommand] = deque(maxlen=1000)   # the last ones, for status
        self.refused: deque[ClusterCommand] = deque(maxlen=1000)
        self.malformed = 0
        self.errors = 0
        self._group_ready = False
        # whether this consumer may have entries delivered and not acknowledged (at start, after
        # an apply or an acknowledgement failed): only then is its pending list read, not on
        # every poll (half the Redis round trips of an idle edge's event loop)
        self._pending = True
        # a new edge starts at the stream's end; a group lost to a Redis restart is made again
        # from the start of the (new, empty-then) stream, so nothing written since is missed
        self._create_from = "$"

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.commands, self.group, id=self._create_from,
                                           mkstream=True)
        except Exception as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    async def poll(self) -> int:
        """Handle what is pending for this edge (its own unacknowledged entries first, then
        new ones, waiting up to `block_ms`). Returns how many entries were handled."""
        if not self._group_ready:
            await self.ensure_group()
        n = 0
        for start in ("0", ">"):
            if start == "0" and not self._pending:
                continue
            try:
                res = await self.redis.xreadgroup(self.group, self.consumer,
                                                  {self.keys.commands: start}, count=100,
                                                  block=None if start == "0" else self.block_ms)
            except Exception as e:
                if "NOGROUP" in str(e):    # Redis restarted empty: the group is gone
                    self._group_ready = False
                    self._create_from = "0"
                    return n
                raise
            if start == "0":               # read again while it gives some (count=100)
                self._pending = any(entries for _stream, entries in res or [])
            try:
                for _stream, entries in res or []:
                    for eid, fields in entries:
                        if not fields:          # trimmed away while pending
                            await self.redis.xack(self.keys.commands, self.group, eid)
                            continue
                        await self._handle(eid, fields)
                        n += 1
            except BaseException:
                self._pending = True        # what was not acknowledged is read again first
                raise
        return n

    async def _handle(self, eid: Any, fields: Mapping[Any, Any]) -> None:
        cmd = decode(eid, fields)
        if cmd is None:
            self.malformed += 1
        elif self.gate.admit(cmd.fence):
            r = self.apply(cmd)
            if r is not None:
                await r
            self.applied.append(cmd)
        else:
            log.warning("command %s (%s) from %s refused: fencing token %d < %d", cmd.id,
                        cmd.kind, cmd.issuer, cmd.fence, self.gate.highest)
            self.refused.append(cmd)
        await self.redis.xack(self.keys.commands, self.group, eid)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.poll()
            except Exception as e:    # Redis away: retry shortly
                self.errors += 1
                self._group_ready = False
                self._create_from = "0"
                log.debug("command consumer: %s", e)
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
