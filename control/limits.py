"""Resource limits per principal, per zone and per client address: the pure accounting.

No account may starve the engine or the API (issue 13). Three books, each sans-IO (time is a
parameter, nothing here waits or touches a socket):

- `StartLimiter`: broadcast starts. Per principal: broadcasts active at once, starts per
  minute, file decoders at once; per zone: broadcasts active at once and starts per minute. A
  refusal is `TooMany` (HTTP 429) with a reason and, for rates, when to retry. An emergency is
  never refused by a zone's limits, and a zone's limits count only broadcasts at the new start's
  level or above, so lower-level floods never hold back a higher-level start; an emergency
  still counts against its own principal's limits (an alert authority is an account too).
- `ConnectionBook`: HTTP connections per address and in total. Over a cap, the oldest
  connection that has not yet delivered a request (a half-sent request, an idle keep-alive) is
  evicted to make room; only when every connection is busy with a real request is the new one
  refused. A flood of half-open connections therefore never keeps a real request out.
- `PerKeyCap`: at most N of something per key (event streams per principal).
"""
from __future__ import annotations

import collections
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from control.errors import TooMany
from streamer.mixer.arbitration import Level

#: source kinds that need no decoder (rendered tones, live inputs)
NON_DECODING = frozenset({"tone", "chime", "siren", "silence", "live", "webrtc", "rtp"})


@dataclass(frozen=True)
class StartLimits:
    active_per_principal: int = 16
    starts_per_minute_per_principal: int = 30
    decoders_per_principal: int = 8
    active_per_zone: int = 8
    starts_per_minute_per_zone: int = 60


@dataclass(frozen=True)
class Active:
    """A broadcast the engine holds (queued, playing or paused), as the limits see it."""
    owner: str
    zones: frozenset[str]
    level: Level
    decodes: bool


@dataclass
class Ticket:
    """A start admitted and not yet handed to the engine: it counts as active meanwhile."""
    active: Active
    released: bool = False


class StartLimiter:
    WINDOW_S = 60.0

    def __init__(self, limits: StartLimits | None = None) -> None:
        self.limits = limits or StartLimits()
        self._by_principal: dict[str, collections.deque[float]] = {}
        self._by_zone: dict[str, collections.deque[float]] = {}
        self._pending: list[Ticket] = []
        self.refused = 0

    def admit(self, owner: str, zones: Iterable[str], level: Level, decodes: bool,
              active: Iterable[Active], now: float) -> Ticket:
        """Admit one start or raise TooMany. `active`: what the engine holds now; `now`: a
        monotonic time in seconds. The caller releases the ticket once the engine has the
        broadcast (or the start failed)."""
        lim = self.limits
        zones = frozenset(zones)
        urgent = level >= Level.EMERGENCY
        held = [*active, *(t.active for t in self._pending)]
        mine = [a for a in held if a.owner == owner]
        try:
            if len(mine) >= lim.active_per_principal:
                raise TooMany("too_many_broadcasts",
                              f"{owner} already has {len(mine)} broadcasts active or queued "
                              f"(limit {lim.active_per_principal}); stop one first",
                              limit=lim.active_per_principal, scope="principal")
            if decodes and sum(1 for a in mine if a.decodes) >= lim.decoders_per_principal:
                raise TooMany("too_many_decoders",
                              f"{owner} already plays {lim.decoders_per_principal} recordings "
                              "at once; stop one first",
                              limit=lim.decoders_per_principal, scope="principal")
            wait = self._rate_wait(self._by_principal.get(owner), now,
                                   lim.starts_per_minute_per_principal)
            if wait > 0:
                raise TooMany("too_many_starts",
                              f"{owner} started {lim.starts_per_minute_per_principal} broadcasts "
                              f"in the last minute; try again in {math.ceil(wait)} s",
                              limit=lim.starts_per_minute_per_principal, scope="principal",
                              retry_after_s=math.ceil(wait))
            if not urgent:
                for z in sorted(zones):
                    n = sum(1 for a in held if z in a.zones and a.level >= level)
                    if n >= lim.active_per_zone:
                        raise TooMany("zone_limit",
                                      f"zone {z} already has {n} broadcasts at level "
                                      f"{level.name.lower()} or above (limit "
                                      f"{lim.active_per_zone})",
                                      limit=lim.active_per_zone, scope="zone", zone=z)
                    wait = self._rate_wait(self._by_zone.get(z), now,
                                           lim.starts_per_minute_per_zone)
                    if wait > 0:
                        raise TooMany("zone_start_rate",
                                      f"zone {z} had {lim.starts_per_minute_per_zone} starts in "
                                      f"the last minute; try again in {math.ceil(wait)} s",
                                      limit=lim.starts_per_minute_per_zone, scope="zone", zone=z,
                                      retry_after_s=math.ceil(wait))
        except TooMany:
            self.refused += 1
            raise
        self._by_principal.setdefault(owner, collections.deque()).append(now)
        if not urgent:
            for z in zones:
                self._by_zone.setdefault(z, collections.deque()).append(now)
        ticket = Ticket(Active(owner, zones, level, decodes))
        self._pending.append(ticket)
        self._forget_idle(now)
        return ticket

    def release(self, ticket: Ticket) -> None:
        if not ticket.released:
            ticket.released = True
            self._pending.remove(ticket)

    def _rate_wait(self, q: collections.deque[float] | None, now: float, limit: int) -> float:
        if not q:
            return 0.0
        while q and q[0] <= now - self.WINDOW_S:
            q.popleft()
        if len(q) < limit:
            return 0.0
        return q[len(q) - limit] + self.WINDOW_S - now

    def _forget_idle(self, now: float) -> None:
        """Bounded memory: windows with nothing in the last minute are dropped."""
        for book in (self._by_principal, self._by_zone):
            if len(book) > 1000:
                for k in [k for k, q in book.items() if not q or q[-1] <= now - self.WINDOW_S]:
                    del book[k]


# ----------------------------------------------------------------------------- connections

@dataclass
class _Conn:
    key: Hashable
    address: str


class ConnectionBook:
    """HTTP connections by client address. `opened` says which connections to close (oldest
    idle first) and whether to refuse the new one; `busy`/`idle` follow requests. Every
    operation is O(1): idle connections are kept in the order they became idle."""

    def __init__(self, per_address: int = 256, total: int = 4000) -> None:
        self.per_address = per_address
        self.total = total
        self._conns: dict[Hashable, _Conn] = {}
        self._per_addr: dict[str, int] = {}
        self._idle: dict[Hashable, _Conn] = {}                 # oldest idle first
        self._idle_by_addr: dict[str, dict[Hashable, _Conn]] = {}
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._conns)

    def count(self, address: str) -> int:
        return self._per_addr.get(address, 0)

    def opened(self, key: Hashable, address: str) -> tuple[bool, list[Hashable]]:
        """(accept the new connection?, connections to close now). Over the per-address cap
        the address's oldest idle connection goes; over the total, the oldest idle of all."""
        victims: list[Hashable] = []
        if self.count(address) >= self.per_address:
            mine = self._idle_by_addr.get(address)
            if not mine:
                self.refused += 1
                return False, []
            victims.append(next(iter(mine)))
        if len(self._conns) - len(victims) >= self.total:
            v = next((k for k in self._idle if k not in victims), None)
            if v is None:
                self.refused += 1
                return False, []
            victims.append(v)
        for k in victims:
            self.closed(k)
        self.evicted += len(victims)
        c = _Conn(key, address)
        self._conns[key] = c
        self._per_addr[address] = self._per_addr.get(address, 0) + 1
        self._set_idle(c)
        return True, victims

    def busy(self, key: Hashable) -> None:
        """A request has arrived on it (its headers are complete): not evictable now."""
        c = self._conns.get(key)
        if c is not None:
            self._unset_idle(c)

    def idle(self, key: Hashable) -> None:
        """Its request is answered: it waits for the next one (evictable again, newest)."""
        c = self._conns.get(key)
        if c is not None:
            self._unset_idle(c)
            self._set_idle(c)

    def closed(self, key: Hashable) -> None:
        c = self._conns.pop(key, None)
        if c is None:
            return
        self._unset_idle(c)
        n = self._per_addr.get(c.address, 0) - 1
        if n > 0:
            self._per_addr[c.address] = n
        else:
            self._per_addr.pop(c.address, None)

    def _set_idle(self, c: _Conn) -> None:
        self._idle[c.key] = c
        self._idle_by_addr.setdefault(c.address, {})[c.key] = c

    def _unset_idle(self, c: _Conn) -> None:
        self._idle.pop(c.key, None)
        mine = self._idle_by_addr.get(c.address)
        if mine is not None:
            mine.pop(c.key, None)
            if not mine:
                del self._idle_by_addr[c.address]


def connection_cap(wanted: int, open_files: int, reserve: int) -> int:
    """How many HTTP connections the process may hold: what the settings ask, but never so
    many that the files the server needs besides (database, media, decoders, receivers'
    sockets, a new connection to read an emergency from) run out."""
    return max(16, min(wanted, open_files - reserve))


def raise_open_files(wanted: int, soft: int, hard: int) -> int:
    """The soft open-files limit to set: up to `wanted`, never above the hard limit
    (RLIM_INFINITY is given as -1), never lowered."""
    ceiling = wanted if hard < 0 else min(wanted, hard)
    return max(soft, ceiling)


# ----------------------------------------------------------------------------- streams

@dataclass
class PerKeyCap:
    """At most `limit` holders per key (event streams per principal)."""
    limit: int
    _held: dict[Hashable, int] = field(default_factory=dict)

    def acquire(self, key: Hashable) -> bool:
        n = self._held.get(key, 0)
        if n >= self.limit:
            return False
        self._held[key] = n + 1
        return True

    def release(self, key: Hashable) -> None:
        n = self._held.get(key, 0) - 1
        if n <= 0:
            self._held.pop(key, None)
        else:
            self._held[key] = n

    def held(self, key: Hashable) -> int:
        return self._held.get(key, 0)
