"""The receiver-secret cache never refuses an id the database knows because it is stale (issue 20):
a miss is looked up in the database off the datagram path, rate-limited, and a hit reloads."""
from __future__ import annotations

import asyncio
import os

from control import receiver_secrets as rs
from control.auth import SecretBox
from control.receiver_secrets import ReceiverSecrets


class FakeDb:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.queries: list[str] = []

    async def one_receiver_secret_row(self, rid: str) -> dict | None:
        self.queries.append(rid)
        return self.rows.get(rid)

    async def receiver_secret_rows(self) -> list[dict]:
        return list(self.rows.values())


class FakeState:
    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self.lock = asyncio.Lock()


def _setup():
    box = SecretBox(os.urandom(32))
    db = FakeDb()
    reloads: list[int] = []

    async def on_stale() -> None:
        reloads.append(1)
    cache = ReceiverSecrets(db, FakeState(box), on_stale=on_stale)  # type: ignore[arg-type]
    return box, db, cache, reloads


async def _settle(cache: ReceiverSecrets) -> None:
    for _ in range(50):
        t = cache._miss_task
        if t is None or t.done():
            return
        await asyncio.sleep(0)


def test_an_id_written_by_another_process_is_found_on_the_next_registration():
    async def go() -> None:
        box, db, cache, reloads = _setup()
        secret = os.urandom(32)
        # written by the CLI after the cache was filled (the watcher has not noticed yet)
        db.rows["early"] = {"id": "early", "zone": "z1", "status": "provisioned",
                            "secret_enc": box.seal(secret, "early")}
        assert cache.lookup("early") is None      # this datagram: not waited for
        await _settle(cache)
        assert cache.lookup("early") == (secret, "z1")
        assert db.queries == ["early"] and reloads == [1]
        assert cache.misses["found"] == 1
    asyncio.run(go())


def test_unknown_ids_are_looked_up_rate_limited():
    async def go() -> None:
        box, db, cache, reloads = _setup()
        for _ in range(5):                        # the same id again and again: one query
            assert cache.lookup("ghost") is None
            await _settle(cache)
        assert db.queries == ["ghost"] and reloads == []
        for i in range(rs.MISS_BURST * 5):        # a flood of ids: at most a burst at once
            cache.lookup(f"flood-{i}")
        await _settle(cache)
        assert len(db.queries) <= 1 + rs.MISS_BURST
        assert cache.misses["dropped"] > 0
    asyncio.run(go())


def test_retired_and_unknown_rows_are_not_cached():
    async def go() -> None:
        box, db, cache, reloads = _setup()
        db.rows["old"] = {"id": "old", "zone": "z1", "status": "retired",
                          "secret_enc": box.seal(os.urandom(32), "old")}
        assert cache.lookup("old") is None
        await _settle(cache)
        assert cache.lookup("old") is None and reloads == []
    asyncio.run(go())
