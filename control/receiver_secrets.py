"""Every receiver's secret, in memory: the receiver protocol looks one up for every datagram
and must never wait on the database.

Filled from the database at start and after a full reload (another process may have added,
moved or retired receivers); changes made by this server come from the service layer with the
raw secrets of new receivers, so nothing is decrypted for them. A secret is decrypted again
only when its sealed blob changed.

An id the cache does not know is looked up in the database before it is given up on: off the
datagram path (a task; this datagram is dropped as unknown, the receiver's next registration,
2 s later, finds its secret), at most `MISS_RATE` look-ups a second in all and one per id per
`MISS_RETRY_S` (any datagram names an id before its MAC is checked). An id the database knows
and the cache did not means the cache is stale: everything is reloaded (`on_stale`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from control.db import Database
from control.service import ControlState

log = logging.getLogger("loa.control")

MISS_RATE = 20.0        # database look-ups of unknown ids, per second, in all
MISS_BURST = 20
MISS_RETRY_S = 5.0      # an id not found is not looked up again for this long
MISS_PENDING = 256      # ids waiting for a look-up, at most


class ReceiverSecrets:
    def __init__(self, db: Database, state: ControlState,
                 on_stale: Callable[[], Awaitable[None]] | None = None) -> None:
        self.db = db
        self.state = state
        #: reloads everything (zone tree and secrets) when the database knows an id we did not
        self.on_stale = on_stale
        #: an id was found in the database (the receiver protocol answers its held datagram)
        self.on_found: Callable[[str], None] | None = None
        self.misses = {"looked_up": 0, "found": 0, "dropped": 0}
        self._missed_at: dict[str, float] = {}    # id -> when it was last looked up
        self._pending: dict[str, None] = {}       # ids waiting for the look-up task
        self._miss_task: asyncio.Task | None = None
        self._tokens = float(MISS_BURST)
        self._tokens_at = time.monotonic()
        #: receiver id -> (secret, zone)
        self.secrets: dict[str, tuple[bytes, str]] = {}
        #: receiver id -> the sealed blob its cached secret was opened from
        self._sealed: dict[str, bytes] = {}

    def pending(self, rid: str) -> bool:
        """Whether a database look-up of this id is queued or running."""
        return rid in self._pending

    def lookup(self, rid: str) -> tuple[bytes, str] | None:
        found = self.secrets.get(rid)
        if found is None:
            self._missed(rid)
        return found

    def _missed(self, rid: str) -> None:
        """Queue a database look-up of an id the cache does not know (never waits)."""
        now = time.monotonic()
        last = self._missed_at.get(rid)
        if rid in self._pending or (last is not None and now - last < MISS_RETRY_S):
            return
        self._tokens = min(float(MISS_BURST), self._tokens + (now - self._tokens_at) * MISS_RATE)
        self._tokens_at = now
        if self._tokens < 1.0 or len(self._pending) >= MISS_PENDING:
            self.misses["dropped"] += 1
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return          # no loop (a test driving the registry by hand): nothing to do
        self._tokens -= 1.0
        self._pending[rid] = None
        if self._miss_task is None or self._miss_task.done():
            self._miss_task = loop.create_task(self._look_up_misses(), name="loa-secret-miss")

    async def _look_up_misses(self) -> None:
        stale = False
        found: list[str] = []
        while self._pending:
            rid = next(iter(self._pending))
            try:
                if len(self._missed_at) > 10 * MISS_PENDING:   # forget old negative answers
                    cut = time.monotonic() - MISS_RETRY_S
                    self._missed_at = {k: t for k, t in self._missed_at.items() if t >= cut}
                self._missed_at[rid] = time.monotonic()
                self.misses["looked_up"] += 1
                row = await self.db.one_receiver_secret_row(rid)
                if row is not None and rid not in self.secrets:
                    self._cache(row)
                    if rid in self.secrets:
                        self.misses["found"] += 1
                        stale = True
                        found.append(rid)
                        log.warning("receiver %s is in the database but was not known to this "
                                    "server (changed by another process?): reloading", rid)
            except Exception:
                log.exception("looking up receiver %s failed", rid)
            finally:
                self._pending.pop(rid, None)
        if stale and self.on_stale is not None:
            try:
                await self.on_stale()
            except Exception:
                log.exception("reloading after a stale receiver cache failed")
        # answer what the found receivers sent meanwhile, now that their zones are known too
        for rid in found:
            if self.on_found is not None:
                try:
                    self.on_found(rid)
                except Exception:
                    log.exception("answering receiver %s after its look-up failed", rid)

    def forget(self, rid: str) -> None:
        self.secrets.pop(rid, None)
        self._sealed.pop(rid, None)

    async def refresh(self) -> None:
        """Every receiver's secret, from the database. Under the state lock, so a snapshot read
        before a provisioning cannot drop the secrets that provisioning just added."""
        async with self.state.lock:
            rows = await self.db.receiver_secret_rows()
            for i, r in enumerate(rows):
                self._cache(r)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # 10,000s of decryptions at start: let others run
            for rid in set(self.secrets) - {r["id"] for r in rows}:
                self.forget(rid)

    def changed(self, rows: list[dict], secrets: dict[str, bytes]) -> None:
        """From the service layer: these receivers were added or changed here (new ones come
        with their raw secret)."""
        for r in rows:
            self._cache(r, secrets.get(r["id"]))

    def _cache(self, r: dict, secret: bytes | None = None) -> None:
        rid, blob = r["id"], r.get("secret_enc")
        if r.get("status") == "retired" or not blob:
            self.forget(rid)
            return
        if secret is None:
            cached = self.secrets.get(rid)
            if cached is not None and self._sealed.get(rid) == blob:
                secret = cached[0]
            else:
                try:
                    secret = self.state.box.open(blob, rid)
                except Exception:
                    log.error("cannot decrypt the secret of receiver %s (wrong secret key?)", rid)
                    self.forget(rid)
                    return
        self.secrets[rid] = (secret, r["zone"])
        self._sealed[rid] = blob
