"""control/journal.py: the journal file (reserved space, torn lines, clear) and the write-ahead
queue (order, retries while the database is away, replay after a crash, bounds)."""
from __future__ import annotations

import asyncio
import os
import sqlite3

import pytest

from control.journal import Journal, WriteAhead, storage_fault


def test_journal_reserves_appends_and_reads_back(tmp_path):
    j = Journal(tmp_path / "j", 64 * 1024)
    assert j.open() == []
    assert os.path.getsize(tmp_path / "j") == 64 * 1024 and j.capacity == 64 * 1024
    recs = [{"wid": f"r-{i}", "k": "audit", "text": "Bão số 3 – cấp 4\n\u2028", "n": i}
            for i in range(50)]
    for r in recs:
        assert j.append(r)
    j.close()
    j2 = Journal(tmp_path / "j", 64 * 1024)
    assert j2.open() == recs
    assert j2.end > 0 and j2.torn == 0
    j2.clear()
    j2.close()
    assert Journal(tmp_path / "j", 64 * 1024).open() == []
    assert os.path.getsize(tmp_path / "j") == 64 * 1024  # clearing gives no space back


def test_journal_ignores_a_line_cut_by_a_crash(tmp_path):
    j = Journal(tmp_path / "j", 4096)
    j.open()
    j.append({"wid": "a", "k": "event"})
    j.append({"wid": "b", "k": "event"})
    # a crash in the middle of the third write: part of a line, then the reserved NULs
    os.pwrite(j._fd, b'{"wid":"c","k":"ev', j.end)
    j.close()
    j2 = Journal(tmp_path / "j", 4096)
    assert [r["wid"] for r in j2.open()] == ["a", "b"]
    assert j2.torn == 1
    assert j2.append({"wid": "d", "k": "event"})  # overwrites the torn piece
    j2.close()
    assert [r["wid"] for r in Journal(tmp_path / "j", 4096).open()] == ["a", "b", "d"]


def test_journal_grows_past_its_reserve_when_the_disk_allows(tmp_path):
    j = Journal(tmp_path / "j", 0)
    j.open()
    for i in range(100):
        assert j.append({"wid": str(i), "pad": "x" * 100})
    assert j.capacity >= j.end > 100 * 100


def test_storage_fault_classifies_sqlite_errors():
    assert "full" in (storage_fault(sqlite3.OperationalError("database or disk is full")) or "")
    assert "locked" in (storage_fault(sqlite3.OperationalError("database is locked")) or "")
    assert storage_fault(OSError(28, "No space left on device")) is not None
    assert storage_fault(sqlite3.OperationalError("no such table: x")) is None
    assert storage_fault(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    assert storage_fault(ValueError("x")) is None


class FakeDb:
    """A database that can be made unavailable; keeps what was written, in order."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.down: str | None = None
        self.calls = 0

    async def write(self, batch: list[dict]) -> None:
        self.calls += 1
        if self.down:
            raise sqlite3.OperationalError(self.down)
        for r in batch:
            if r.get("bad"):
                raise ValueError("a record this database cannot take")
        # idempotent by wid, like the unique index of migration 7
        seen = {r["wid"] for r in self.rows}
        self.rows += [r for r in batch if r["wid"] not in seen]


async def _until(cond, timeout=3.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fault", ["database is locked", "database or disk is full"])
async def test_records_wait_out_a_fault_in_order_and_nothing_is_lost(tmp_path, fault):
    db = FakeDb()
    alarms: list[dict] = []
    wa = WriteAhead(db.write, Journal(tmp_path / "j", 16384), on_alarm=alarms.append)
    wa.RETRY_MIN_S = wa.RETRY_MAX_S = 0.01
    wa.open()
    wa.start()
    assert await wa.put_wait("audit", {"n": 0})
    db.down = fault
    for n in range(1, 40):
        wa.put("event", {"n": n})
    assert not await wa.put_wait("audit", {"n": 40}, timeout=0.5)  # returns, does not hang
    await _until(lambda: not wa.healthy)
    st = wa.status()
    assert st["writable"] is False and st["backlog"] == 40 and st["journal_bytes"] > 0
    assert alarms[0]["type"] == "storage.unavailable" and alarms[0]["reason"]
    db.down = None
    assert await wa.flush(3.0)
    assert [r["n"] for r in db.rows] == list(range(41))
    assert wa.healthy and alarms[-1]["type"] == "storage.recovered"
    assert wa.status()["journal_bytes"] == 0  # cleared once everything is in
    await wa.close()


async def test_a_crash_during_a_fault_is_replayed_at_the_next_start(tmp_path):
    db = FakeDb()
    db.down = "database or disk is full"
    wa = WriteAhead(db.write, Journal(tmp_path / "j", 16384))
    wa.RETRY_MIN_S = wa.RETRY_MAX_S = 0.01
    wa.open()
    wa.start()
    for n in range(25):
        wa.put("event", {"n": n})
    await _until(lambda: db.calls >= 2)
    wa._task.cancel()  # the process dies: nothing is closed, nothing flushed
    await asyncio.gather(wa._task, return_exceptions=True)
    db.down = None
    db.rows.append({"wid": "already-in", "n": -1})
    again = WriteAhead(db.write, Journal(tmp_path / "j", 16384))
    assert again.open() == 25
    again.start()
    again.put("event", {"n": 25})  # after the replayed ones
    assert await again.flush(3.0)
    assert [r["n"] for r in db.rows] == [-1] + list(range(26))
    await again.close()


async def test_a_bad_record_does_not_hold_back_the_others(tmp_path):
    db = FakeDb()
    wa = WriteAhead(db.write, None)
    wa.open()
    wa.start()
    wa.put("event", {"n": 1})
    wa.put("event", {"n": 2, "bad": True})
    wa.put("event", {"n": 3})
    assert await wa.flush(2.0)
    assert [r["n"] for r in db.rows] == [1, 3] and wa.counters["failed"] == 1
    await wa.close()


async def test_the_queue_is_bounded_and_counts_what_it_drops(tmp_path):
    db = FakeDb()
    db.down = "database is locked"
    wa = WriteAhead(db.write, None, max_pending=10)
    wa.open()
    assert [wa.put("event", {"n": n}) is not None for n in range(12)].count(True) == 10
    assert wa.counters["dropped"] == 2


async def test_checkpoints_are_coalesced_and_not_journaled(tmp_path):
    db = FakeDb()
    wa = WriteAhead(db.write, Journal(tmp_path / "j", 4096))
    wa.open()
    wa.checkpoint("b1", {"id": "b1", "position_s": 1.0})
    wa.checkpoint("b1", {"id": "b1", "position_s": 2.0})
    assert wa.status()["journal_bytes"] == 0 and len(wa._pending) == 1
    wa.start()
    assert await wa.flush(2.0)
    wa.checkpoint("b1", {"id": "b1", "position_s": 3.0})  # written: the next one is taken
    assert len(wa._pending) == 1
    await wa.close()


async def test_put_wait_does_not_wait_out_a_write_stuck_on_a_lock(tmp_path):
    release = asyncio.Event()

    async def stuck(batch: list[dict]) -> None:  # a write waiting for another's lock
        await release.wait()

    wa = WriteAhead(stuck, None)
    wa.open()
    wa.start()
    wa.put("event", {"n": 0})
    await asyncio.sleep(0.01)
    t0 = asyncio.get_running_loop().time()
    assert not await wa.put_wait("audit", {"n": 1}, timeout=5.0)
    assert asyncio.get_running_loop().time() - t0 < 0.5
    release.set()
    assert await wa.flush(2.0)
    await wa.close()
