"""The node registry and the receiver directory in Redis (redis.asyncio).

Each node writes its hash `Keys.node(id)` every `NODE_REFRESH_S` with a TTL of `NODE_TTL_S`,
and its id into `Keys.nodes(role)` scored by that expiry, so a node that dies disappears by
itself in at most 6 s: readers ignore (and prune) members whose score has passed, and the hash
expires. (LiveKit's RedisRouter keeps nodes in one `nodes` hash without expiry and relies on
a node removing itself, so a killed node stays listed until someone cleans up.)

Edges also keep `Keys.receiver(id)` (which edge holds a receiver, its zone and last report),
the per-edge and per-zone sets, refreshed at most every `RECEIVER_REFRESH_S` with a TTL.
`CLAIM_LUA` moves a receiver between edges atomically: a receiver that failed over is removed
from its previous edge's set in the same step that adds it to the new one, so no receiver is
ever in two edges' sets.

Nothing here is on the media path: a Redis that stalls or restarts makes these calls time out
and be retried; what plays is not affected.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from streamer.cluster.keys import (NODE_REFRESH_S, NODE_TTL_S, RECEIVER_REFRESH_S,
                                   RECEIVER_TTL_S, Keys)

__all__ = ["NodeRegistry", "ReceiverDirectory", "CLAIM_LUA", "live_members", "OriginsSeen"]

log = logging.getLogger("loa.cluster.nodes")

#: KEYS: rx hash, new edge's set, zone set; ARGV: receiver, edge, zone, ttl s, report JSON,
#: prefix. Returns the previous edge ("" if none).
CLAIM_LUA = """
local old = redis.call('HGET', KEYS[1], 'edge')
if old and old ~= ARGV[2] then
  redis.call('SREM', ARGV[6] .. 'edge:' .. old .. ':rx', ARGV[1])
end
redis.call('HSET', KEYS[1], 'edge', ARGV[2], 'zone', ARGV[3], 'report', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if old then return old end
return ''
"""


def live_members(scored: list[tuple[Any, float]], now_ms: float) -> list[str]:
    """Members of a `nodes:{role}` set whose expiry (the score) has not passed."""
    out = []
    for m, score in scored:
        if score > now_ms:
            out.append(m.decode() if isinstance(m, bytes) else str(m))
    return out


class OriginsSeen:
    """The origins an edge takes media from: every origin the registry listed within the last
    `grace_s` (monotonic seconds, a parameter), not only those of the last read. After an
    empty Redis restart the origins write their hashes again one after the other; an edge that
    read the registry in between took the one listed for all of them and dropped the leader's
    envelopes as foreign until its next read after the leader's (~2-4 s of silence, CI). A
    hash missing for one read (a late refresh on a loaded machine) is the same. The envelopes
    are authenticated and fenced: a dead origin kept a while longer sends nothing, and a
    deposed one is refused by its token."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._seen: dict[tuple[str, int], float] = {}

    def update(self, found: list[tuple[str, int]], now: float) -> list[tuple[str, int]]:
        """The registry's origins now; returns the ones to take media from (newest first)."""
        for a in found:
            self._seen[a] = now
        for a, t in list(self._seen.items()):
            if now - t > self.grace_s:
                del self._seen[a]
        return sorted(self._seen, key=lambda a: -self._seen[a])


def _text(d: Mapping[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else str(k)):
            (v.decode() if isinstance(v, bytes) else str(v)) for k, v in d.items()}


class NodeRegistry:
    """This node's entry, refreshed by `run()`; `info()` is called each time (it must be cheap
    and answer from memory)."""

    def __init__(self, redis: Any, keys: Keys, node_id: str, role: str,
                 info: Callable[[], Mapping[str, Any]], *, ttl_s: float = NODE_TTL_S,
                 refresh_s: float = NODE_REFRESH_S, timeout_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.role = role
        self.info = info
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.errors = 0
        self.published = 0

    async def publish(self) -> None:
        fields = {k: (v if isinstance(v, str) else json.dumps(v))
                  for k, v in self.info().items()}
        fields.update(node=self.node_id, role=self.role, at=f"{time.time():.3f}")
        key = self.keys.node(self.node_id)
        expiry_ms = int((time.time() + self.ttl_s) * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, int(self.ttl_s * 1000))
        pipe.zadd(self.keys.nodes(self.role), {self.node_id: expiry_ms})
        await asyncio.wait_for(pipe.execute(), self.timeout_s)
        self.published += 1

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.publish()
            except Exception as e:   # Redis away: try again at the next refresh
                self.errors += 1
                log.debug("node registry: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), self.refresh_s)
            except TimeoutError:
                pass

    async def withdraw(self) -> None:
        try:
            await asyncio.wait_for(self.redis.delete(self.keys.node(self.node_id)), 1.0)
            await asyncio.wait_for(self.redis.zrem(self.keys.nodes(self.role), self.node_id), 1.0)
        except Exception:
            pass

    async def nodes(self, role: str) -> list[dict[str, str]]:
        """The live nodes of a role (their hashes); members that expired are pruned."""
        zkey = self.keys.nodes(role)
        now_ms = time.time() * 1000
        scored = await self.redis.zrange(zkey, 0, -1, withscores=True)
        ids = live_members(scored, now_ms)
        if len(ids) < len(scored):     # only when some expired: a round trip less otherwise
            await self.redis.zremrangebyscore(zkey, "-inf", now_ms)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.node(i))
        out = []
        for h in await pipe.execute():
            if h:
                out.append(_text(h))
        return out


class ReceiverDirectory:
    """An edge's receivers in Redis: claimed when they register here (taken from the edge that
    held them), refreshed at most every `refresh_s` per receiver, expiring `ttl_s` after the
    edge stops refreshing them."""

    def __init__(self, redis: Any, keys: Keys, node_id: str, *,
                 ttl_s: float = RECEIVER_TTL_S, refresh_s: float = RECEIVER_REFRESH_S) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self._claim = redis.register_script(CLAIM_LUA)
        self._written: dict[str, float] = {}   # receiver -> monotonic time last written

    def due(self, receiver_id: str, now: float, force: bool = False) -> bool:
        last = self._written.get(receiver_id)
        return force or last is None or now - last >= self.refresh_s

    async def claim(self, receiver_id: str, zone: str, report: Mapping[str, Any] | None = None,
                    *, now: float | None = None, force: bool = False) -> str | None:
        """Write (or refresh) a receiver held here; returns the edge it moved from, if any."""
        now = time.monotonic() if now is None else now
        if not self.due(receiver_id, now, force):
            return None
        old = await self._claim(
            keys=[self.keys.receiver(receiver_id), self.keys.edge_receivers(self.node_id),
                  self.keys.zone_receivers(zone)],
            args=[receiver_id, self.node_id, zone, int(self.ttl_s), json.dumps(report or {}),
                  self.keys.p])
        self._written[receiver_id] = now
        prev = old.decode() if isinstance(old, bytes) else str(old or "")
        return prev if prev and prev != self.node_id else None

    def forget(self, receiver_id: str) -> None:
        self._written.pop(receiver_id, None)
