"""Records that must never be lost (as-run events, audit entries): a bounded write-ahead queue
in front of the database, with a journal file in reserved disk space.

    put(kind, payload)  -> the record is appended to the journal (reserved space: a full disk
                           does not stop it), queued in memory, and written to SQLite in order
                           by one writer task, in batches, each batch one transaction
    database unavailable (locked, disk full, I/O error): the batch stays, the writer retries
                           with a growing pause (0.25 → 2 s), `status()` says so (alarm,
                           backlog), and the journal keeps what a crash would otherwise take
    all written:           the journal is cleared (zeroed from the start, within its space)
    start:                 what the journal holds is queued again first (a record already in
                           the database is recognised by its `wid` and not written twice)

The journal is a preallocated file (`os.posix_fallocate`): records are JSON lines written with
`pwrite` into space the file already owns, so a disk that fills up afterwards cannot refuse
them; unused space is NUL bytes, and the first NUL at a line start is the end. Writes are not
fsynced one by one: a killed process loses nothing (the page cache outlives it); the writer
fdatasyncs the journal while the database is away (a power cut then loses at most a pause).

Bounded: `max_pending` records in memory; past that a record is dropped, counted and logged
loudly (it takes an outage of tens of thousands of events). `sqlite3` classifies the faults:
`storage_fault` is the one test of "the database is unavailable, not wrong".
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("loa.control")

#: SQLite primary result codes that mean "the store is unavailable now", not "the request is
#: wrong": BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL
_UNAVAILABLE = {5, 6, 8, 10, 13, 14, 15}
_UNAVAILABLE_TEXT = ("database is locked", "database or disk is full", "disk i/o error",
                     "unable to open database", "attempt to write a readonly database",
                     "database table is locked")


def storage_fault(e: BaseException) -> str | None:
    """A short reason when `e` says the database (or its disk) is unavailable; None for any
    other error (a bug, a constraint: those are not retried)."""
    if isinstance(e, sqlite3.OperationalError | sqlite3.DatabaseError):
        code = getattr(e, "sqlite_errorcode", None)
        text = str(e).lower()
        if (code is not None and code & 0xFF in _UNAVAILABLE) or any(
                t in text for t in _UNAVAILABLE_TEXT):
            if "full" in text:
                return "the disk holding the database is full"
            if "locked" in text or "busy" in text:
                return "the database is locked by another connection"
            return f"the database is unavailable ({e})"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
        return f"the data directory cannot be written ({e.strerror})"
    return None


class Journal:
    """Append-only JSON lines in a preallocated file. Not thread-safe: the event loop owns it."""

    def __init__(self, path: str | Path, reserve_bytes: int) -> None:
        self.path = Path(path)
        self.reserve_bytes = max(0, int(reserve_bytes))
        self.capacity = 0       # bytes the file owns
        self.end = 0            # where the next record goes
        self.torn = 0           # unreadable lines found at open (a write cut by a crash)
        self._fd: int | None = None

    def open(self) -> list[dict[str, Any]]:
        """Open (create) the file, reserve its space, and return the records it holds."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        size = os.fstat(self._fd).st_size
        records: list[dict[str, Any]] = []
        if size:
            data = os.pread(self._fd, size, 0)
            nul = data.find(b"\0")
            used = data if nul < 0 else data[:nul]
            cut = used.rfind(b"\n") + 1  # a last line without its newline was cut by a crash
            if cut < len(used):
                self.torn += 1
            self.end = cut
            for line in used[:cut].splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    self.torn += 1
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
        self.capacity = size
        self._reserve(max(self.reserve_bytes, self.end))
        return records

    def _reserve(self, want: int) -> None:
        """Own `want` bytes (less if the disk has not got them: halves down to 64 KiB)."""
        assert self._fd is not None
        while want > self.capacity:
            try:
                os.posix_fallocate(self._fd, 0, want)
                self.capacity = want
                return
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate: write zeros
                    try:
                        self._zero(self.capacity, want - self.capacity)
                        self.capacity = want
                        return
                    except OSError:
                        pass
                if want <= 65536:
                    log.error("journal %s: no disk space to reserve (%s)", self.path, e.strerror)
                    return
                want //= 2

    def _zero(self, offset: int, length: int) -> None:
        assert self._fd is not None
        chunk = b"\0" * min(length, 1 << 20)
        while length > 0:
            n = os.pwrite(self._fd, chunk[:length], offset)
            offset += n
            length -= n

    def append(self, rec: dict[str, Any]) -> bool:
        """Write one record; False when it could not be (no space even past the reserve)."""
        if self._fd is None:
            return False
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":"), default=str)
        data = line.encode() + b"\n"
        try:
            n = os.pwrite(self._fd, data, self.end)
        except OSError:
            return False
        if n != len(data):  # the rest did not fit: the next record overwrites this piece
            return False
        self.end += n
        self.capacity = max(self.capacity, self.end)
        return True

    def clear(self) -> None:
        """Everything in it is in the database now: zero what was used (from the start, so a
        clear cut short by a crash reads as an empty journal) and start again at 0."""
        if self._fd is None or self.end == 0:
            return
        try:
            self._zero(0, self.end)
            self.end = 0
        except OSError as e:
            log.error("journal %s could not be cleared: %s", self.path, e)

    def sync(self) -> None:
        if self._fd is not None:
            try:
                os.fdatasync(self._fd)
            except OSError as e:
                log.error("journal %s: fdatasync failed: %s", self.path, e)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


Writer = Callable[[list[dict[str, Any]]], Awaitable[None]]


class WriteAhead:
    """The bounded write-ahead queue of records (see the module's docstring).

    `writer(batch)` writes a batch in one transaction (control.db.Database.write_records); it
    raises what sqlite3 raises. `on_alarm(event)` hears when the database goes away and comes
    back (the event hub: the dashboard and /events see it)."""

    BATCH = 256
    RETRY_MIN_S = 0.25
    RETRY_MAX_S = 2.0
    #: a write taking longer than this is waiting for a lock: put_wait stops waiting for it
    STUCK_S = 0.15

    def __init__(self, writer: Writer, journal: Journal | None = None, *,
                 max_pending: int = 50_000,
                 on_alarm: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.writer = writer
        self.journal = journal
        self.max_pending = max_pending
        self.on_alarm = on_alarm
        self._pending: deque[dict[str, Any]] = deque()
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._checkpoints: set[str] = set()  # broadcasts with a position update queued
        self._run_id = secrets.token_hex(4)
        self._n = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.fault: str | None = None
        self.fault_since: float | None = None
        self.counters = {"written": 0, "replayed": 0, "journaled": 0, "not_journaled": 0,
                         "dropped": 0, "failed": 0, "retries": 0, "faults": 0}
        self._synced = True
        self._writing_since: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> int:
        """Queue what the journal kept from the last run (before anything new). Returns how
        many records it held."""
        if self.journal is None:
            return 0
        kept = self.journal.open()
        for rec in kept:
            rec["_j"] = True
            self._pending.append(rec)
        self.counters["replayed"] += len(kept)
        if kept:
            log.warning("journal: %d record(s) from the last run not yet in the database; "
                        "writing them first", len(kept))
        return len(kept)

    def start(self) -> None:
        self._wake = asyncio.Event()
        if self._pending:
            self._wake.set()
        self._task = asyncio.create_task(self._run(), name="loa-write-ahead")

    async def flush(self, timeout: float) -> bool:
        """Wait (bounded) until everything queued is written; False if it was not."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            if self._wake is not None:
                self._wake.set()
            await asyncio.sleep(0.02)
        return not self._pending

    async def close(self, timeout: float = 5.0) -> None:
        if not await self.flush(timeout):
            log.error("write-ahead: %d record(s) not written at shutdown; they stay in the "
                      "journal for the next start", len(self._pending))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.journal is not None:
            if not self._pending:
                self.journal.clear()
            self.journal.sync()
            self.journal.close()

    # ------------------------------------------------------------------ putting records
    def put(self, kind: str, payload: dict[str, Any]) -> str | None:
        """Queue a record (non-blocking, on the loop). Returns its id, or None if dropped."""
        if len(self._pending) >= self.max_pending:
            self.counters["dropped"] += 1
            log.error("write-ahead queue full (%d records, database unavailable: %s): a %s "
                      "record was dropped", len(self._pending), self.fault, kind)
            return None
        self._n += 1
        wid = f"{self._run_id}-{self._n}"
        rec: dict[str, Any] = {"wid": wid, "k": kind, **payload}
        journaled = False
        if self.journal is not None and kind != "ckpt":
            journaled = self.journal.append(rec)
            self.counters["journaled" if journaled else "not_journaled"] += 1
            self._synced = False
        rec["_j"] = journaled
        self._pending.append(rec)
        if self._wake is not None:
            self._wake.set()
        return wid

    async def put_wait(self, kind: str, payload: dict[str, Any], timeout: float = 1.0) -> bool:
        """Queue a record and wait (bounded) until it is in the database: a reader right after
        (GET /audit) sees it. Never raises; while the database is away it returns at once
        (the record is journaled and queued)."""
        wid = self.put(kind, payload)
        if wid is None or not self.healthy:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters[wid] = fut
        deadline = loop.time() + timeout
        try:
            # in slices: a write that has been waiting for a lock for a while means the
            # database is away, and the caller (an emergency's answer) must not wait it out
            while loop.time() < deadline:
                try:
                    await asyncio.wait_for(asyncio.shield(fut), 0.05)
                    return True
                except TimeoutError:
                    if not self.healthy or self._stuck():
                        return False
            return False
        finally:
            self._waiters.pop(wid, None)

    def _stuck(self) -> bool:
        t = self._writing_since
        return t is not None and time.monotonic() - t > self.STUCK_S

    def checkpoint(self, broadcast_id: str, row: dict[str, Any]) -> None:
        """A broadcast's current state (its position, for a resume after a crash): only while
        the database is there, one at a time per broadcast, never journaled."""
        if not self.healthy or broadcast_id in self._checkpoints:
            return
        if self.put("ckpt", {"row": row}) is not None:
            self._checkpoints.add(broadcast_id)

    # ------------------------------------------------------------------ the writer
    async def _run(self) -> None:
        assert self._wake is not None
        pause = self.RETRY_MIN_S
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(self.BATCH, len(self._pending)))]
            self._writing_since = time.monotonic()
            try:
                await self.writer([_clean(r) for r in batch])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._writing_since = None
                reason = storage_fault(e)
                if reason is None:
                    await self._isolate(batch, e)
                    continue
                self._fault(reason)
                self.counters["retries"] += 1
                if not self._synced and self.journal is not None:
                    self.journal.sync()
                    self._synced = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.RETRY_MAX_S)
                continue
            self._writing_since = None
            pause = self.RETRY_MIN_S
            self._done(len(batch))
            self._recovered()

    def _done(self, n: int) -> None:
        for _ in range(n):
            rec = self._pending.popleft()
            if rec.get("k") == "ckpt":
                self._checkpoints.discard(str((rec.get("row") or {}).get("id")))
            else:
                self.counters["written"] += 1
            fut = self._waiters.pop(str(rec.get("wid")), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        if not self._pending and self.journal is not None:
            self.journal.clear()

    async def _isolate(self, batch: list[dict[str, Any]], e: Exception) -> None:
        """A batch failed for a reason that is not the database's availability (a bug, bad
        data): write its records one by one so one bad record cannot hold back the rest."""
        log.error("write-ahead: a batch of %d failed (%s); writing them one by one",
                  len(batch), e)
        for rec in batch:
            try:
                await self.writer([_clean(rec)])
            except asyncio.CancelledError:
                raise
            except Exception as e1:
                if storage_fault(e1) is not None:
                    return  # the database went away meanwhile: the loop retries
                self.counters["failed"] += 1
                log.exception("write-ahead: record %s (%s) cannot be written; skipped",
                              rec.get("wid"), rec.get("k"))
            self._done(1)

    def _fault(self, reason: str) -> None:
        if self.healthy or reason != self.fault:
            log.error("database unavailable: %s; %d record(s) waiting (journaled)", reason,
                      len(self._pending))
        if self.healthy:
            self.counters["faults"] += 1
            self.fault_since = time.time()
            self.healthy = False
            self.fault = reason
            self._alarm({"type": "storage.unavailable", "reason": reason,
                         "backlog": len(self._pending)})
        self.fault = reason

    def _recovered(self) -> None:
        if self.healthy:
            return
        took = time.time() - (self.fault_since or time.time())
        log.warning("database available again after %.1f s; backlog %d", took,
                    len(self._pending))
        self._alarm({"type": "storage.recovered", "after_s": round(took, 1),
                     "backlog": len(self._pending)})
        self.healthy = True
        self.fault = None
        self.fault_since = None

    def _alarm(self, ev: dict[str, Any]) -> None:
        if self.on_alarm is not None:
            try:
                self.on_alarm(ev)
            except Exception:
                log.exception("storage alarm observer failed")

    # ------------------------------------------------------------------ reporting
    @property
    def backlog(self) -> int:
        return sum(1 for r in self._pending if r.get("k") != "ckpt")

    def status(self) -> dict[str, Any]:
        """For /health and /metrics."""
        j = self.journal
        return {
            "writable": self.healthy,
            "alarm": self.fault,
            "since": self.fault_since,
            "backlog": self.backlog,
            "journal_bytes": j.end if j is not None else 0,
            "journal_capacity": j.capacity if j is not None else 0,
            **self.counters,
        }


def _clean(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != "_j"}
