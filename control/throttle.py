"""Sign-in throttling that keeps guessing slow without locking anybody out (issue 13).

The old throttle counted failures per address and per username: five wrong passwords for a
name, from anywhere, locked that official out everywhere for 5 minutes, and five failures from
one address locked out everyone behind it (a commune office behind one NAT).

Now (the pure part, `LoginThrottle`; time is a parameter):
- per (username, address): `limit` failures within `window_s` block that pair, and only that
  pair, for `window_s`, then twice as long each time it happens again (up to `max_block_s`);
  a success clears the pair. Guessing from one client stays at most 5 per 5 minutes, then
  slower.
- per username, all addresses: a budget of `user_budget` failures per `window_s`. Past it,
  every attempt on that name is *slowed* (a delay growing with the excess, up to
  `max_slow_s`), never refused: a correct password from a client that is not the failing one
  still signs in. The HTTP layer runs slowed attempts on a name one at a time
  (`SlowGate`, clean clients first), so a botnet gets one guess per delay, not one per
  connection.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    retry_after_s: float   # > 0: this (username, address) pair is blocked for this long
    delay_s: float         # > 0: the username is over its budget: slow this attempt
    pair_failures: int     # recent failures of this pair
    user_failures: int     # recent failures of this username from every address
    clean: bool            # this address has no recent failure for this username

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"retry_after_s": round(self.retry_after_s, 1), "delay_s": round(self.delay_s, 2),
                "pair_failures": self.pair_failures, "user_failures": self.user_failures,
                "clean": self.clean}


@dataclass
class _Pair:
    fails: collections.deque[float] = field(default_factory=collections.deque)
    blocks: int = 0            # how many times this pair was blocked (the next block doubles)
    blocked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    MAX_KEYS = 10_000  # bounded memory under a spray of names and addresses

    def __init__(self, limit: int = 5, window_s: float = 300.0, user_budget: int = 20,
                 max_block_s: float = 3600.0, slow_step_s: float = 0.5,
                 max_slow_s: float = 5.0) -> None:
        self.limit, self.window_s, self.user_budget = limit, window_s, user_budget
        self.max_block_s, self.slow_step_s, self.max_slow_s = max_block_s, slow_step_s, max_slow_s
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._users: dict[str, collections.deque[float]] = {}

    @staticmethod
    def _user(username: str) -> str:
        return username.strip().lower()

    def _trim(self, q: collections.deque[float], now: float) -> None:
        while q and q[0] <= now - self.window_s:
            q.popleft()

    def check(self, username: str, address: str, now: float) -> Verdict:
        user = self._user(username)
        pair = self._pairs.get((user, address))
        pair_fails, retry = 0, 0.0
        if pair is not None:
            self._trim(pair.fails, now)
            pair_fails = len(pair.fails)
            retry = max(0.0, pair.blocked_until - now)
        q = self._users.get(user)
        if q is not None:
            self._trim(q, now)
        user_fails = len(q) if q else 0
        over = user_fails - self.user_budget + 1
        delay = min(self.max_slow_s, self.slow_step_s * over) if over > 0 else 0.0
        return Verdict(retry, delay, pair_fails, user_fails, clean=pair_fails == 0 and retry == 0)

    def failed(self, username: str, address: str, now: float) -> Verdict:
        """Count a failure; the verdict for the pair's next attempt."""
        user = self._user(username)
        pair = self._pairs.get((user, address))
        if pair is None:
            pair = self._pairs[(user, address)] = _Pair()
        self._trim(pair.fails, now)
        pair.fails.append(now)
        pair.last = now
        if len(pair.fails) >= self.limit:
            pair.blocks += 1
            pair.blocked_until = now + min(self.max_block_s,
                                           self.window_s * 2 ** (pair.blocks - 1))
            pair.fails.clear()
        self._users.setdefault(user, collections.deque()).append(now)
        self._bound(now)
        return self.check(username, address, now)

    def succeeded(self, username: str, address: str) -> None:
        self._pairs.pop((self._user(username), address), None)

    def _bound(self, now: float) -> None:
        if len(self._pairs) > self.MAX_KEYS:
            # forget the pairs quiet the longest (blocked ones last)
            keep_from = sorted(self._pairs.items(),
                               key=lambda kv: (kv[1].blocked_until > now, kv[1].last))
            for k, _ in keep_from[: len(self._pairs) - self.MAX_KEYS // 2]:
                del self._pairs[k]
        if len(self._users) > self.MAX_KEYS:
            for u in [u for u, q in self._users.items() if not q or q[-1] <= now - self.window_s]:
                del self._users[u]
            for u in list(self._users)[: max(0, len(self._users) - self.MAX_KEYS // 2)]:
                del self._users[u]  # the names first seen longest ago


class SlowGate:
    """Slowed attempts on one username run one at a time, clean clients (no recent failure
    from their address) ahead of failing ones. At most `max_waiting` wait per name; beyond
    that a failing client is refused (`None`), a clean one still queues."""

    def __init__(self, max_waiting: int = 32) -> None:
        self.max_waiting = max_waiting
        self._busy: set[str] = set()
        self._waiting: dict[str, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._seq = itertools.count()

    def waiting(self, user: str) -> int:
        return len(self._waiting.get(user, ()))

    async def run(self, user: str, clean: bool, delay_s: float,
                  fn: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """(ran?, result): waits its turn, sleeps `delay_s`, then runs `fn`."""
        q = self._waiting.setdefault(user, [])
        if user in self._busy:
            if not clean and len(q) >= self.max_waiting:
                return False, None
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            q.append((0 if clean else 1, next(self._seq), fut))
            q.sort(key=lambda e: (e[0], e[1]))
            try:
                await fut
            except asyncio.CancelledError:
                if fut in [e[2] for e in q]:
                    q[:] = [e for e in q if e[2] is not fut]
                elif fut.done() and not fut.cancelled():
                    self._next(user)  # it was our turn: pass it on
                raise
        else:
            self._busy.add(user)
        try:
            await asyncio.sleep(delay_s)
            return True, await fn()
        finally:
            self._next(user)

    def _next(self, user: str) -> None:
        q = self._waiting.get(user)
        while q:
            _, _, fut = q.pop(0)
            if not fut.done():
                fut.set_result(None)  # the turn passes to it (still busy)
                return
        self._waiting.pop(user, None)
        self._busy.discard(user)
