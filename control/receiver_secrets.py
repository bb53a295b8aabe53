"""Every receiver's secret, in memory: the receiver protocol looks one up for every datagram
and must never wait on the database.

Filled from the database at start and after a full reload (another process may have added,
moved or retired receivers); changes made by this server come from the service layer with the
raw secrets of new receivers, so nothing is decrypted for them. A secret is decrypted again
only when its sealed blob changed.
"""
from __future__ import annotations

import asyncio
import logging

from control.db import Database
from control.service import ControlState

log = logging.getLogger("loa.control")


class ReceiverSecrets:
    def __init__(self, db: Database, state: ControlState) -> None:
        self.db = db
        self.state = state
        #: receiver id -> (secret, zone)
        self.secrets: dict[str, tuple[bytes, str]] = {}
        #: receiver id -> the sealed blob its cached secret was opened from
        self._sealed: dict[str, bytes] = {}

    def lookup(self, rid: str) -> tuple[bytes, str] | None:
        return self.secrets.get(rid)

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
