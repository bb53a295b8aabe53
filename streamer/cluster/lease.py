"""Leadership under a lease, with fencing tokens.

Schedules and alert intake run on exactly one origin at a time: the one holding the lease
`Keys.lease(name)`, taken with `SET key token NX PX lease` and renewed by compare-and-extend
(a Lua script: extend only if the value is still our token). Each acquisition also takes a
fencing token from `INCR Keys.fence(name)`; every command the leader sends to edges carries
it, and an edge drops commands whose token is older than the newest it has seen
(`FenceGate`). A leader that paused (GC, SIGSTOP, a slow disk) past its lease and wakes up
still believing it leads is thus refused by the edges.

The counter must only grow, also across a Redis restart with persistence off (the counter is
then 0 again). Acquisition floors it: the new token is max(INCR, floor), where `fence_floor`
takes the wall clock in milliseconds and every token the caller has seen (its own last one,
and the highest the edges report in their node hashes). Wall-clock milliseconds alone would do
on machines whose clocks agree; the tokens seen cover one whose clock is behind.

A leader stops issuing commands once it has not had a renewal confirmed for half the lease
(`LeaseState.may_issue`): whatever Redis or the network does, by the time another node can take
the lease this one has been silent for half a lease already. Times are measured from when a
request was *sent* (the lease is at least that old when the answer arrives).

`LeaseState` and `FenceGate` are pure (time is a parameter); `RedisLease` is the thin
redis.asyncio layer.
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from streamer.cluster.keys import LEASE_MS, Keys

__all__ = ["LeaseState", "FenceGate", "fence_floor", "RedisLease", "ACQUIRE_LUA", "EXTEND_LUA",
           "RELEASE_LUA"]

log = logging.getLogger("loa.cluster.lease")

ACQUIRE_RETRY_S = 0.5

#: the holder a node waits out when Redis has just restarted and it knows of none: no token is
#: this, so a lease that is gone is not taken (`LeaseState.may_take_vanished`)
JUST_RESTARTED = "(redis just restarted)"

#: KEYS: lease, fence, released; ARGV: token, px, floor, wait_for (the holder whose lease this
#: node is waiting out, "" if none). Returns {new fencing token, 0, ""}; {0, PTTL, holder} if
#: another holds it; {-1, 0, ""} if the lease is gone but its holder `wait_for` did not release
#: it (Redis restarted empty while it held it: it asks again at its next renewal).
ACQUIRE_LUA = """
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[1]) == 0
    and redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return {-1, 0, ''}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local f = redis.call('INCR', KEYS[2])
  local floor = tonumber(ARGV[3])
  if f < floor then
    redis.call('SET', KEYS[2], ARGV[3])
    f = floor
  end
  return {f, 0, ''}
end
local t = redis.call('PTTL', KEYS[1])
if t < 0 then t = 0 end
return {0, t, redis.call('GET', KEYS[1]) or ''}
"""
#: KEYS: lease; ARGV: token, px. 1 if extended, 0 if the lease is not ours (any more).
EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
#: KEYS: lease, released; ARGV: token, px.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def fence_floor(wall_s: float, *seen: int) -> int:
    """The lowest fencing token a new leader may take: above every token seen and not below the
    wall clock in milliseconds (a Redis that restarted empty counts from 0 again)."""
    return max(int(wall_s * 1000), max(seen, default=0) + 1)


class FenceGate:
    """An edge's check on commands and media: a command or an envelope carrying a token older
    than the newest seen (from either) is refused. The same token is accepted again (one leader
    sends many). Commands are admitted on the event loop, envelopes on the feed thread: the
    newest token only grows, under a lock."""

    def __init__(self, highest: int = 0) -> None:
        self.highest = highest
        self.accepted = 0
        self.refused = 0
        self.media_refused = 0
        self._lock = threading.Lock()

    def _admit(self, token: int) -> bool:
        with self._lock:
            if token < self.highest:
                return False
            self.highest = token
            return True

    def admit(self, token: int) -> bool:
        """A command's token."""
        if not self._admit(token):
            self.refused += 1
            return False
        self.accepted += 1
        return True

    def admit_media(self, token: int) -> bool:
        """An envelope's token: media from an origin that lost the lease is not played."""
        if self._admit(token):
            return True
        self.media_refused += 1
        return False


@dataclass
class LeaseState:
    """What one node knows about its hold on one lease. `now` is monotonic seconds."""
    lease_ms: int = LEASE_MS
    held: bool = False
    fence: int = 0
    confirmed_sent_at: float = -math.inf   # when the last confirmed acquire/renew was sent
    acquisitions: int = 0
    losses: int = 0
    #: the other holder last seen and until when its lease runs at least (monotonic): a lease
    #: that vanishes before then without being released was lost by Redis, not by its holder
    other: str = ""
    other_until: float = -math.inf

    @property
    def lease_s(self) -> float:
        return self.lease_ms / 1000.0

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 4

    def may_issue(self, now: float) -> bool:
        """Only within half a lease of the last confirmed renewal."""
        return self.held and now - self.confirmed_sent_at < self.lease_s / 2

    def acquired(self, sent_at: float, fence: int) -> None:
        self.held = True
        self.fence = fence
        self.confirmed_sent_at = sent_at
        self.acquisitions += 1

    def renewed(self, sent_at: float, ok: bool) -> None:
        """The answer to a compare-and-extend sent at `sent_at`."""
        if ok:
            self.confirmed_sent_at = max(self.confirmed_sent_at, sent_at)
        else:
            self.lose()

    def lose(self) -> None:
        if self.held:
            self.losses += 1
        self.held = False

    def seen_other(self, sent_at: float, holder: str, pttl_ms: int) -> None:
        """Another node holds the lease, for `pttl_ms` more (Redis' answer to a request sent at
        `sent_at`: the lease runs at least until sent_at + pttl)."""
        self.other = holder
        self.other_until = sent_at + max(0, pttl_ms) / 1000.0

    def wait_for(self, now: float) -> str:
        """The holder whose lease this node waits out before taking a vanished one ("": none,
        or its lease would have expired by now anyway). After an empty Redis restart the
        holder asks again at its next renewal (a quarter lease); a node that took the lease
        meanwhile would make the holder yield what it airs, with nothing of it left in Redis
        to carry on."""
        return self.other if now < self.other_until else ""

    def recently_held(self, now: float) -> bool:
        """This node held the lease within the last lease time (its own renewal was refused
        just now, say, because Redis restarted empty): it may take the vanished lease again at
        once, as its holder."""
        return now - self.confirmed_sent_at < self.lease_s

    def may_take_vanished(self, now: float, redis_uptime_s: float,
                          fresh_redis_s: float | None = None) -> bool:
        """Whether this node may take a lease it finds gone, with no holder it waits out
        (`wait_for` ""). Not while Redis has been up for less than half a lease, unless this
        node held it: a Redis that restarted empty lost a lease whose holder may still live
        and asks again at its next renewal (a quarter lease). A node that never saw that holder
        (a standby still starting when Redis restarted) or saw it too long ago (Redis down
        longer than the lease had left) would otherwise take it first, the holder would yield
        what it airs, and with the on-air state gone with Redis nothing would be carried on.
        `fresh_redis_s`: how long a Redis counts as just restarted (default half a lease)."""
        fresh = self.lease_s / 2 if fresh_redis_s is None else fresh_redis_s
        return self.recently_held(now) or redis_uptime_s >= fresh

    def expire(self, now: float) -> None:
        """Nothing confirmed for a whole lease (Redis unreachable): the lease is gone for sure;
        the next step tries to acquire again rather than extend."""
        if self.held and now - self.confirmed_sent_at >= self.lease_s:
            self.lose()


class RedisLease:
    """One node's hold on `name`, renewed from `run()`. `floor_seen()` returns the tokens this
    node knows of (its database's last token, the edges' highest)."""

    def __init__(self, redis: Any, keys: Keys, name: str, node_id: str, *,
                 lease_ms: int = LEASE_MS, floor_seen: Any = None,
                 fresh_redis_s: float | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.token = f"{node_id}/{secrets.token_hex(8)}"
        self.state = LeaseState(lease_ms)
        self.floor_seen = floor_seen or (lambda: ())
        #: a Redis up for less than this restarted just now (LeaseState.may_take_vanished)
        self.fresh_redis_s = fresh_redis_s
        self.errors = 0
        #: acquisitions put off because Redis had just restarted (LeaseState.may_take_vanished)
        self.deferred = 0
        #: Redis said another node holds the lease (its last answer; None: not asked yet or
        #: Redis away). An origin sends media only while this is not True (control/cluster.py)
        self.other_holds: bool | None = None
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._extend = redis.register_script(EXTEND_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    @property
    def fence(self) -> int:
        return self.state.fence

    def may_issue(self) -> bool:
        return self.state.may_issue(time.monotonic())

    async def step(self) -> None:
        """One acquire or renew attempt, bounded by a quarter lease."""
        st = self.state
        sent = time.monotonic()
        st.expire(sent)
        timeout = st.renew_every_s
        try:
            if st.held:
                ok = await asyncio.wait_for(
                    self._extend(keys=[self.keys.lease(self.name)],
                                 args=[self.token, st.lease_ms]), timeout)
                st.renewed(sent, bool(ok))
                if not ok:   # taken by another, or gone (Redis restarted empty): ask at once
                    log.warning("lease %s lost (not ours in Redis any more)", self.name)
            if not st.held:
                wait_for = st.wait_for(sent)
                if not wait_for and not st.recently_held(sent):
                    info = await asyncio.wait_for(self.redis.info("server"), timeout)
                    if not st.may_take_vanished(sent, float(info.get("uptime_in_seconds", 0)),
                                                self.fresh_redis_s):
                        # Redis just restarted: a lease gone is left to a holder that may live
                        # (a holder no token equals; one that holds it is still seen)
                        wait_for = JUST_RESTARTED
                floor = fence_floor(time.time(), st.fence, *self.floor_seen())
                fence, pttl, holder = await asyncio.wait_for(
                    self._acquire(keys=[self.keys.lease(self.name), self.keys.fence(self.name),
                                        self.keys.lease_released(self.name)],
                                  args=[self.token, st.lease_ms, floor, wait_for]),
                    timeout)
                fence = int(fence)
                if fence < 0:   # gone, not released: its holder takes it again (Redis restart)
                    if wait_for == JUST_RESTARTED:
                        self.deferred += 1
                    return
                self.other_holds = not fence
                if fence:
                    st.acquired(sent, fence)
                    log.info("lease %s taken, fencing token %d", self.name, st.fence)
                else:
                    st.seen_other(sent, holder.decode() if isinstance(holder, bytes)
                                  else str(holder), int(pttl))
        except (TimeoutError, OSError, ConnectionError) as e:
            self.errors += 1
            log.debug("lease %s: %s", self.name, e)
        except Exception as e:   # redis.exceptions.* (connection, busy, loading)
            self.errors += 1
            log.debug("lease %s: %s", self.name, e)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.step()
            # a node waiting for the lease asks more often than a holder renews: a standby
            # takes it within half a second of its expiry
            wait = self.state.renew_every_s if self.state.held else min(
                self.state.renew_every_s, ACQUIRE_RETRY_S)
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass

    async def release(self) -> None:
        if self.state.held:
            self.state.lose()
            try:
                await asyncio.wait_for(self._release(
                    keys=[self.keys.lease(self.name), self.keys.lease_released(self.name)],
                    args=[self.token, self.state.lease_ms]), 1.0)
            except Exception:
                pass
