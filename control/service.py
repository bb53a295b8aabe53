"""State-changing operations shared by the HTTP API and the CLI (one code path for both).

Every change to zones and groups is checked by building the would-be tree in memory first (so a
bad change never reaches the database), then written, then the new tree is kept here (control's
own tree: policy checks and target resolution read it) and handed on through `apply_tree` (the
server sends the engine a ReplaceZones command). Receivers are the many rows (10,000s): adding,
moving or retiring them is checked with targeted queries (does the zone exist, is the id free)
and handed on as the new destinations of the zones concerned only (`apply_zones`: UpdateZones),
never as a rebuild of the whole tree. An asyncio lock serialises these edits inside one process.

Errors are domain errors (control/errors.py); the HTTP layer and the CLI decide how to show them.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import secrets
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any
from pathlib import Path

from control import auth
from control.db import Database, now_iso
from control.errors import Conflict, Invalid, NotFound, TooLarge
from control.policy import ROLES, reserved_name
from control.models import (receiver_destination, tree_from_rows, zone_from_row,
                            zone_with_destinations)
from control.settings import Settings
from streamer.zones import Zone, ZoneError, ZoneTree, parse_destination

def public_receiver(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "secret_enc"}


def public_user(u: dict) -> dict:
    return {"id": u["id"], "username": u["username"], "role": u["role"], "scope": u["scope"],
            "display_name": u.get("display_name") or "",
            "disabled": bool(u["disabled"]), "has_password": bool(u.get("password_hash")),
            "created_at": u["created_at"], "updated_at": u["updated_at"]}


def _names(ids: list[str], limit: int = 20) -> str:
    more = f" (and {len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(repr(i) for i in ids[:limit]) + more


log = logging.getLogger("loa.control")


class ControlState:
    def __init__(self, db: Database, settings: Settings, box: auth.SecretBox,
                 apply_tree: Callable[[ZoneTree], None] | None = None,
                 apply_zones: Callable[[ZoneTree, set[str]], None] | None = None,
                 receivers_changed: Callable[[list[dict], dict[str, bytes]], None] | None = None
                 ) -> None:
        self.db = db
        self.settings = settings
        self.box = box
        self.apply_tree = apply_tree  # hands the new tree on (to the engine; None in the CLI)
        #: hands the engine new destinations of a few zones of `self.tree` (nothing else changed);
        #: without it, such changes go through apply_tree
        self.apply_zones = apply_zones
        #: receiver rows that were added or changed, with the raw secrets of new ones (the
        #: server keeps them in memory for the receiver protocol)
        self.receivers_changed = receivers_changed
        #: the tree as stored, kept only when there is an engine to feed (not in the CLI)
        self.tree: ZoneTree | None = None
        #: each zone's administrative codes (CAP geocodes), as stored
        self.zone_codes: dict[str, list[str]] = {}
        #: each zone's own TTS voice and languages, as stored (control/variants.py inherits)
        self.zone_speech: dict[str, tuple[str | None, list[str]]] = {}
        #: each zone's `public` flag as stored (None: not set; the listening setting decides)
        self.zone_public: dict[str, bool | None] = {}
        self.lock = asyncio.Lock()

    # ------------------------------------------------------------------ tree
    async def _rows(self) -> tuple[list[dict], list[dict], list[dict]]:
        return await self.db.zones(), await self.db.groups(), await self.db.receivers()

    def _check(self, zones: list[dict], groups: list[dict], receivers: list[dict]) -> ZoneTree:
        try:
            return tree_from_rows(zones, groups, receivers,
                                  cellular_ptime=self._cellular_ptime)
        except ZoneError as e:
            raise Conflict("invalid_tree", str(e)) from None

    async def reload_tree(self) -> ZoneTree:
        rows = await self._rows()
        tree = self._check(*rows)
        self.zone_codes = {z["id"]: list(z.get("codes") or []) for z in rows[0]}
        self.zone_speech = {z["id"]: (z.get("voice") or None, list(z.get("languages") or []))
                            for z in rows[0]}
        self.zone_public = {z["id"]: None if z.get("public") is None else bool(z["public"])
                            for z in rows[0]}
        if self.apply_tree is not None:
            self.tree = tree
            self.apply_tree(tree)
        return tree

    async def data_version(self) -> int | None:
        """SQLite's `PRAGMA data_version` of our connection: it changes when another connection
        (the CLI, a restore, another tool) commits to the file, never for our own writes."""
        row = await (await self.db.conn.execute("PRAGMA data_version")).fetchone()
        return row[0] if row is not None else None

    async def watch(self, interval_s: float = 2.0, baseline: int | None = None) -> None:
        """Pick up zone/receiver changes another process (the CLI) wrote to the same file.
        `baseline`: the data_version read *before* the state was loaded, so a write made while
        the server was starting is a change, not the baseline (None: read it now)."""
        last = baseline
        if last is None:
            last = await self.data_version()
        while True:
            await asyncio.sleep(interval_s)
            try:
                v = await self.data_version()
                if v != last:
                    async with self.lock:
                        await self.reload_tree()
                last = v
            except Conflict as e:
                log.error("stored zone tree is inconsistent: %s", e.message)
            except Exception:
                log.exception("db watch failed")

    @property
    def _cellular_ptime(self) -> int:
        return getattr(self.settings, "cellular_ptime_ms", 20)

    def _replace_zones(self, new: dict[str, Zone]) -> None:
        """These zones' destinations changed (nothing else): update the stored tree and hand
        the engine just these zones."""
        if self.tree is None or not new:
            return
        self.tree.zones.update(new)
        self.tree.version += 1
        if self.apply_zones is not None:
            self.apply_zones(self.tree, set(new))
        elif self.apply_tree is not None:
            self.apply_tree(self.tree)

    async def _refresh_zone_destinations(self, zids: set[str]) -> None:
        """Rebuild these zones' destinations from their own rows (one zone's receivers, not
        the whole table); a full reload if the kept tree does not know one of them (another
        process changed the zones and the file watcher has not caught up)."""
        if self.tree is None:
            return
        new: dict[str, Zone] = {}
        for zid in zids:
            row = await self.db.zone(zid)
            if row is None or zid not in self.tree.zones \
                    or row.get("parent") != self.tree.zones[zid].parent:
                await self.reload_tree()
                return
            addrs = [a for rx in await self.db.receiver_addresses(zid)
                     if (a := receiver_destination(rx, self._cellular_ptime)) is not None]
            try:
                new[zid] = zone_from_row(row, addrs)
            except ZoneError:
                await self.reload_tree()  # raises 409 invalid_tree, naming the problem
                return
        self._replace_zones(new)

    def _notify_receivers(self, rows: list[dict], secrets_: dict[str, bytes] | None = None) -> None:
        if self.receivers_changed is not None:
            self.receivers_changed(rows, secrets_ or {})

    # ------------------------------------------------------------------ configuration as code
    async def apply_config(self) -> None:
        """TOML zones/groups/static receivers, as an idempotent upsert: the file wins for what it
        names; what the API created stays."""
        s = self.settings
        async with self.lock:
            zones = {z["id"]: z for z in await self.db.zones()}
            cfg_zones = list(s.zones)
            if not cfg_zones and not zones and s.demo_zone:
                cfg_zones = s.effective_zones()
            for zc in cfg_zones:
                was = zones.get(zc.id, {})
                zones[zc.id] = dict(was, **zc.model_dump(), origin="config")
                if zc.public is None:   # the file does not say: what the API set stays
                    zones[zc.id]["public"] = was.get("public")
            groups = {g["id"]: g for g in await self.db.groups()}
            for gc in s.groups:
                groups[gc.id] = dict(groups.get(gc.id, {}), id=gc.id, name=gc.name,
                                     zones=list(gc.zones), origin="config")
            receivers = {r["id"]: r for r in await self.db.receivers()}
            new_rx = []
            for rc in s.receivers:
                row = dict(receivers.get(rc.id, {}), **rc.model_dump(), origin="config")
                row.setdefault("status", "provisioned")
                if row["status"] == "retired":
                    row["status"] = "provisioned"  # the file names it, so it is in service
                if rc.id not in receivers:
                    new_rx.append(rc.id)
                receivers[rc.id] = row
            self._check(list(zones.values()), list(groups.values()), list(receivers.values()))
            stmts = [Database.upsert_sql("zones", _zone_cols(z)) for z in zones.values()
                     if z.get("origin") == "config"]
            stmts += [Database.upsert_sql("groups", {k: g[k] for k in ("id", "name", "zones", "origin")})
                      for g in groups.values() if g.get("origin") == "config"]
            for r in receivers.values():
                if r.get("origin") != "config":
                    continue
                cols = {k: r.get(k) for k in ("id", "zone", "name", "address", "lat", "lon",
                                                "link", "notes", "status", "origin")}
                if r["id"] in new_rx:
                    # a static receiver still gets a secret: the receiver-security work needs one
                    cols["secret_enc"] = self.box.seal(auth.new_receiver_secret(), r["id"])
                stmts.append(Database.upsert_sql("receivers", cols))
            if stmts:
                await self.db.transaction(stmts)
            await self.reload_tree()

    # ------------------------------------------------------------------ zones
    async def create_zone(self, data: dict) -> dict:
        async with self.lock:
            zones, groups, rxs = await self._rows()
            if any(z["id"] == data["id"] for z in zones) or any(g["id"] == data["id"] for g in groups):
                raise Conflict("zone_exists", f"a zone or group {data['id']!r} already exists")
            row = _zone_cols(dict(data, origin="api"))
            self._check(zones + [row], groups, rxs)
            await self.db.upsert_zone(row)
            await self.reload_tree()
            return _found(await self.db.zone(data["id"]))

    async def update_zone(self, zid: str, changes: dict) -> dict:
        async with self.lock:
            zones, groups, rxs = await self._rows()
            cur = next((z for z in zones if z["id"] == zid), None)
            if cur is None:
                raise NotFound("unknown_zone", f"no zone with id {zid!r}")
            new = dict(cur, **changes)
            self._check([new if z["id"] == zid else z for z in zones], groups, rxs)
            await self.db.upsert_zone(_zone_cols(new))
            await self.reload_tree()
            return _found(await self.db.zone(zid))

    async def move_zone(self, zid: str, parent: str | None) -> dict:
        async with self.lock:
            zones, groups, rxs = await self._rows()
            cur = next((z for z in zones if z["id"] == zid), None)
            if cur is None:
                raise NotFound("unknown_zone", f"no zone with id {zid!r}")
            if parent is not None and not any(z["id"] == parent for z in zones):
                raise NotFound("unknown_zone", f"no parent zone with id {parent!r}")
            new = dict(cur, parent=parent)
            self._check([new if z["id"] == zid else z for z in zones], groups, rxs)
            await self.db.upsert_zone(_zone_cols(new))
            await self.reload_tree()
            return _found(await self.db.zone(zid))

    async def delete_zone(self, zid: str) -> None:
        async with self.lock:
            zones, groups, rxs = await self._rows()
            if not any(z["id"] == zid for z in zones):
                raise NotFound("unknown_zone", f"no zone with id {zid!r}")
            n = sum(1 for r in rxs if r["zone"] == zid and r["status"] != "retired")
            if n:
                raise Conflict("zone_has_receivers",
                               f"zone {zid!r} still has {n} receiver(s); move or retire them first")
            kids = [z["id"] for z in zones if z.get("parent") == zid]
            if kids:
                raise Conflict("zone_has_children",
                               f"zone {zid!r} still has child zones: {', '.join(kids[:10])}")
            stmts: list[tuple[str, tuple[Any, ...]]] = [("DELETE FROM zones WHERE id=?", (zid,))]
            for g in groups:
                if zid in g["zones"]:
                    stmts.append(("UPDATE groups SET zones=?, updated_at=? WHERE id=?",
                                  (json.dumps([z for z in g["zones"] if z != zid]), now_iso(), g["id"])))
            await self.db.transaction(stmts)
            await self.reload_tree()

    async def put_group(self, gid: str, name: str, members: list[str]) -> dict:
        async with self.lock:
            zones, groups, rxs = await self._rows()
            if any(z["id"] == gid for z in zones):
                raise Conflict("zone_exists", f"{gid!r} is already a zone id")
            row = {"id": gid, "name": name, "zones": members, "origin": "api"}
            self._check(zones, [g for g in groups if g["id"] != gid] + [row], rxs)
            await self.db.upsert_group(row)
            await self.reload_tree()
            return row

    async def delete_group(self, gid: str) -> None:
        async with self.lock:
            if not await self.db.delete_group(gid):
                raise NotFound("unknown_group", f"no group with id {gid!r}")
            await self.reload_tree()

    async def import_csv(self, text: str) -> dict:
        """CSV columns: code,name,parent_code,level (header row required). The zone id is the
        administrative code. All rows or none."""
        rows = parse_zone_csv(text)
        async with self.lock:
            zones, groups, rxs = await self._rows()
            by_id = {z["id"]: z for z in zones}
            created = updated = 0
            for r in rows:
                if r["id"] in by_id:
                    updated += 1
                    by_id[r["id"]] = dict(by_id[r["id"]], **r)
                else:
                    created += 1
                    by_id[r["id"]] = dict(r, origin="api")
            if any(g["id"] in by_id for g in groups):
                raise Conflict("zone_exists", "a code in the file is already a group id")
            self._check(list(by_id.values()), groups, rxs)
            await self.db.transaction([Database.upsert_sql("zones", _zone_cols(by_id[r["id"]]))
                                       for r in rows])
            await self.reload_tree()
            return {"created": created, "updated": updated, "rows": len(rows)}

    # ------------------------------------------------------------------ receivers
    async def provision_receiver(self, data: dict, origin: str = "api") -> dict:
        """Returns the receiver with its secret; the secret is never shown again."""
        return (await self.provision_receivers([data], origin))[0]

    async def provision_receivers(self, items: list[dict], origin: str = "api") -> list[dict]:
        """Provision many receivers at once, all or nothing: every row is checked (zones exist,
        ids are free and distinct, addresses parse) before one transaction writes them all;
        the engine then gets the new destinations of the zones concerned in one change.
        Returns the receivers in the order given, each with its secret (shown only this once).
        `origin`: who made them, as recorded ("api", or "cli" for `loa receivers provision`)."""
        assert origin in ("api", "cli")
        if not items:
            raise Invalid("invalid_request", "no receivers given")
        given = [it["id"] for it in items if it.get("id")]
        dups = sorted(i for i, n in Counter(given).items() if n > 1)
        if dups:
            raise Invalid("duplicate_ids",
                           f"receiver id(s) given more than once: {_names(dups)}; nothing was "
                           "written", ids=dups[:1000])
        cp = self._cellular_ptime
        bad = []
        for i, it in enumerate(items):
            a = receiver_destination(dict(it, status="provisioned"), cp)
            try:
                if a is not None:
                    parse_destination(a, "receiver address")
            except ZoneError as e:
                bad.append(f"{it.get('id') or f'row {i}'}: {e}")
        if bad:
            raise Invalid("invalid_address",
                           "; ".join(bad[:10]) + ("; nothing was written" if len(items) > 1 else ""),
                           count=len(bad))
        async with self.lock:
            wanted = list(dict.fromkeys(it["zone"] for it in items))
            have = await self.db.existing_ids("zones", wanted)
            missing = [z for z in wanted if z not in have]
            if missing:
                rows_of = [it.get("id") or f"row {i}" for i, it in enumerate(items)
                           if it["zone"] not in have]
                msg = (f"no zone with id {missing[0]!r}" if len(missing) == 1
                       else f"no zones with ids {_names(missing)}")
                if len(items) > 1:
                    msg += f" (named by {len(rows_of)} receiver(s): {_names(rows_of, 10)}); " \
                           "nothing was written"
                raise NotFound("unknown_zone", msg, zones=missing[:1000], ids=rows_of[:1000])
            used = set(given)
            ids = []
            for it in items:
                rid = it.get("id")
                while not rid or (rid in used and not it.get("id")):
                    rid = f"rx-{secrets.token_hex(5)}"
                used.add(rid)
                ids.append(rid)
            taken = await self.db.existing_ids("receivers", ids)
            if taken:
                taken_l = [i for i in ids if i in taken]
                msg = (f"receiver {taken_l[0]!r} already exists" if len(taken_l) == 1
                       else f"receivers already exist: {_names(taken_l)}")
                raise Conflict("receiver_exists",
                               msg + ("; nothing was written" if len(items) > 1 else ""),
                               ids=taken_l[:1000])
            now = now_iso()
            rows = [{"id": rid, "zone": it["zone"], "name": it.get("name") or "",
                     "lat": it.get("lat"), "lon": it.get("lon"),
                     "link": it.get("link") or "ethernet", "address": it.get("address"),
                     "notes": it.get("notes") or "", "status": "provisioned", "secret_enc": None,
                     "origin": origin, "created_at": now, "updated_at": now, "retired_at": None,
                     "last_seen_at": None} for rid, it in zip(ids, items)]
            # AES-GCM per receiver: ~0.1 s for 10,000, off the event loop
            raw = await asyncio.get_running_loop().run_in_executor(None, self._seal, rows) \
                if len(rows) > 100 else self._seal(rows)
            new_zones = self._zones_with(rows)
            try:
                await self.db.insert_receivers(rows)
            except sqlite3.IntegrityError:
                raise Conflict("receiver_exists", "a receiver id in the request was created "
                               "meanwhile by another process; nothing was written") from None
            if new_zones is None:
                await self.reload_tree()
            else:
                self._replace_zones(new_zones)
            self._notify_receivers(rows, dict(zip(ids, raw)))
        out = []
        for r, secret in zip(rows, raw):
            d = public_receiver(r)
            d["secret"] = auth.b64(secret)
            out.append(d)
        return out

    def _seal(self, rows: list[dict]) -> list[bytes]:
        raw = []
        for r in rows:
            secret = auth.new_receiver_secret()
            r["secret_enc"] = self.box.seal(secret, r["id"])
            raw.append(secret)
        return raw

    def _zones_with(self, rows: list[dict]) -> dict[str, Zone] | None:
        """The kept tree's zones with these new receivers' destinations appended (the same
        result as rebuilding them from all their rows, since new rows come last); None when
        the kept tree does not know a zone (then: full reload)."""
        if self.tree is None:
            return {}
        by_zone: dict[str, list[str]] = {}
        for r in rows:
            a = receiver_destination(r, self._cellular_ptime)
            if a is not None:
                by_zone.setdefault(r["zone"], []).append(a)
        if any(z not in self.tree.zones for z in by_zone):
            return None
        try:
            return {z: zone_with_destinations(self.tree.zones[z], a) for z, a in by_zone.items()}
        except ZoneError as e:
            raise Invalid("invalid_address", str(e)) from None

    async def receiver_secret(self, rid: str) -> bytes:
        """For the receiver-security work: the raw secret, to verify HMACs."""
        r = await self.db.receiver(rid)
        if r is None or not r.get("secret_enc"):
            raise KeyError(rid)
        return self.box.open(r["secret_enc"], rid)

    async def update_receiver(self, rid: str, changes: dict) -> dict:
        """Details, a move to another zone, or retirement. Only the zones it leaves or joins
        are rebuilt, from their own rows, and only if its destination changed."""
        async with self.lock:
            cur = await self.db.receiver(rid)
            if cur is None:
                raise NotFound("unknown_receiver", f"no receiver with id {rid!r}")
            if "zone" in changes and not await self.db.existing_ids("zones", [changes["zone"]]):
                raise NotFound("unknown_zone", f"no zone with id {changes['zone']!r}")
            if cur["status"] == "retired" and "status" not in changes:
                raise Conflict("receiver_retired", f"receiver {rid!r} is retired")
            new = dict(cur, **changes)
            cp = self._cellular_ptime
            before, after = receiver_destination(cur, cp), receiver_destination(new, cp)
            try:
                if after is not None:
                    parse_destination(after, "receiver address")
            except ZoneError as e:
                raise Conflict("invalid_tree", str(e)) from None
            await self.db.update_receiver(rid, **changes)
            if (before, cur["zone"]) != (after, new["zone"]):
                await self._refresh_zone_destinations({cur["zone"], new["zone"]})
            row = _found(await self.db.receiver(rid))
            self._notify_receivers([row])
            return public_receiver(row)

    async def retire_receiver(self, rid: str) -> dict:
        r = await self.db.receiver(rid)
        if r is None:
            raise NotFound("unknown_receiver", f"no receiver with id {rid!r}")
        if r["status"] == "retired":
            raise Conflict("receiver_retired", f"receiver {rid!r} is already retired")
        # the secret goes with it: a retired receiver can never authenticate again
        return await self.update_receiver(rid, {"status": "retired", "retired_at": now_iso(),
                                                "secret_enc": None})

    # ------------------------------------------------------------------ users and tokens
    async def create_user(self, username: str, role: str, scope: list[str],
                          password: str | None, display_name: str = "") -> dict:
        if role not in ROLES:
            raise Invalid("invalid_role", f"role must be one of {', '.join(ROLES)}")
        ingests = [str(i.get("name") or "") for i in getattr(self.settings, "rtp_ingest", [])
                   if isinstance(i, dict)]
        if reserved_name(username, [n for n in ingests if n]):
            raise Invalid("reserved_username", f"{username!r} is the name of a built-in principal "
                          "or a configured input; choose another username")
        if await self.db.user_by_name(username) is not None:
            raise Conflict("user_exists", f"user {username!r} already exists")
        ph = await asyncio.get_running_loop().run_in_executor(None, auth.hash_password, password) \
            if password else None
        uid = await self.db.insert_user(username, role, scope, ph, display_name)
        return public_user(_found(await self.db.user(uid)))

    async def update_user(self, uid: int, changes: dict) -> dict:
        if await self.db.user(uid) is None:
            raise NotFound("unknown_user", f"no user with id {uid}")
        fields = {k: v for k, v in changes.items()
                  if k in ("role", "scope", "disabled", "display_name")}
        if "disabled" in fields:
            fields["disabled"] = int(bool(fields["disabled"]))
        if changes.get("password"):
            fields["password_hash"] = await asyncio.get_running_loop().run_in_executor(
                None, auth.hash_password, changes["password"])
        if fields:
            await self.db.update_user(uid, **fields)
        if fields.get("disabled") or "password_hash" in fields:
            await self.db.conn.execute("DELETE FROM sessions WHERE user_id=?", (uid,))
        return public_user(_found(await self.db.user(uid)))

    async def create_token(self, uid: int, name: str) -> dict:
        if await self.db.user(uid) is None:
            raise NotFound("unknown_user", f"no user with id {uid}")
        tid, token, h = auth.new_token()
        await self.db.insert_token(tid, uid, name, h)
        return {"id": tid, "user_id": uid, "name": name, "token": token,
                "note": "store this token now: it is shown only once"}

    async def rotate_token(self, tid: str) -> dict:
        t = await self.db.token(tid)
        if t is None:
            raise NotFound("unknown_token", f"no token with id {tid!r}")
        if t["revoked_at"]:
            raise Conflict("token_revoked", f"token {tid!r} is revoked; create a new one")
        new = await self.create_token(t["user_id"], t["name"])
        await self.db.revoke_token(tid)
        return dict(new, replaces=tid)


def _found(row: dict | None) -> dict:
    """A row just written (or checked) under the state lock: it is there."""
    assert row is not None
    return row


def _zone_cols(z: dict) -> dict:
    return {k: z.get(k) for k in ("id", "name", "parent", "multicast", "unicast", "level",
                                   "code", "language", "origin")} | {
        "codes": list(z.get("codes") or []),
        "voice": z.get("voice") or None, "languages": list(z.get("languages") or []),
        "public": None if z.get("public") is None else bool(z["public"]),
        "unicast": z.get("unicast") or [], "name": z.get("name") or "",
        "level": z.get("level") or "", "code": z.get("code") or "",
        "language": z.get("language") or "vi", "origin": z.get("origin") or "api"}


def parse_zone_csv(text: str) -> list[dict]:
    """Sans-IO: CSV text → zone rows; raises Invalid (TooLarge past 200,000 rows) naming the
    first bad line."""
    import re
    if not text.strip():
        raise Invalid("invalid_csv", "the CSV file is empty")
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except (csv.Error, StopIteration) as e:
        raise Invalid("invalid_csv", f"cannot read the CSV header: {e}") from None
    need = ["code", "name", "parent_code", "level"]
    if header[:4] != need:
        raise Invalid("invalid_csv",
                       f"the header must be {','.join(need)} (got {','.join(header[:4])})")
    rows, seen = [], set()
    pat = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    try:
        for n, rec in enumerate(reader, start=2):
            if not any(c.strip() for c in rec):
                continue
            if len(rec) < 4:
                raise Invalid("invalid_csv", f"line {n}: expected 4 columns, got {len(rec)}")
            code, name, parent, level = (c.strip() for c in rec[:4])
            if not pat.match(code) or len(code) > 100:
                raise Invalid("invalid_csv", f"line {n}: bad code {code!r}")
            if parent and (not pat.match(parent) or len(parent) > 100):
                raise Invalid("invalid_csv", f"line {n}: bad parent code {parent!r}")
            if code in seen:
                raise Invalid("invalid_csv", f"line {n}: code {code!r} appears twice")
            if len(name) > 200 or len(level) > 40:
                raise Invalid("invalid_csv", f"line {n}: name or level too long")
            seen.add(code)
            rows.append({"id": code, "code": code, "name": name or code,
                         "parent": parent or None, "level": level.lower()})
            if len(rows) > 200_000:
                raise TooLarge("csv_too_large", "more than 200000 rows")
    except csv.Error as e:
        raise Invalid("invalid_csv", f"line {reader.line_num}: {e}") from None
    if not rows:
        raise Invalid("invalid_csv", "the CSV file has a header but no rows")
    return rows


def media_root(settings: Settings) -> Path:
    return settings.data_dir / "media"
