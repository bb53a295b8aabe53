"""Persistent state in one SQLite file, through aiosqlite (queries run on its own thread).

The schema is a list of migrations applied in order at start (`PRAGMA user_version` says how
many ran). Rows go in and out as plain dicts; the rules about what may change live in the
callers (control/service.py and the handlers in control/api/), the shapes live here.

The audit table is append-only: SQLite triggers refuse UPDATE and DELETE on it, so not even a
bug in this process can rewrite history.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

import aiosqlite

from streamer.timefmt import utc_iso


def now_iso() -> str:
    """Now, in the house's one UTC format (streamer.timefmt)."""
    return utc_iso(time.time())


MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE zones (
        id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', parent TEXT,
        multicast TEXT, unicast TEXT NOT NULL DEFAULT '[]', level TEXT NOT NULL DEFAULT '',
        code TEXT NOT NULL DEFAULT '', language TEXT NOT NULL DEFAULT 'vi',
        origin TEXT NOT NULL DEFAULT 'api', created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX zones_parent ON zones(parent);
    CREATE INDEX zones_code ON zones(code);
    CREATE TABLE groups (
        id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', zones TEXT NOT NULL DEFAULT '[]',
        origin TEXT NOT NULL DEFAULT 'api', created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE receivers (
        id TEXT PRIMARY KEY, zone TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
        lat REAL, lon REAL, link TEXT NOT NULL DEFAULT 'ethernet', address TEXT,
        notes TEXT NOT NULL DEFAULT '', status TEXT NOT NULL DEFAULT 'provisioned',
        secret_enc BLOB, origin TEXT NOT NULL DEFAULT 'api', created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL, retired_at TEXT, last_seen_at TEXT);
    CREATE INDEX receivers_zone ON receivers(zone);
    CREATE TABLE media (
        id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, path TEXT NOT NULL,
        filename TEXT NOT NULL DEFAULT '', size INTEGER NOT NULL, format TEXT, codec TEXT,
        duration_s REAL, sample_rate INTEGER, channels INTEGER, loudness_lufs REAL,
        title TEXT NOT NULL DEFAULT '', language TEXT NOT NULL DEFAULT 'vi',
        tags TEXT NOT NULL DEFAULT '[]', created_by TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE broadcasts (
        id TEXT PRIMARY KEY, state TEXT NOT NULL, level TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL DEFAULT '', data TEXT NOT NULL, created_at TEXT NOT NULL,
        ended_at TEXT, updated_at TEXT NOT NULL);
    CREATE INDEX broadcasts_state ON broadcasts(state);
    CREATE INDEX broadcasts_created ON broadcasts(created_at);
    CREATE TABLE asrun (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, type TEXT NOT NULL,
        broadcast TEXT, data TEXT NOT NULL);
    CREATE INDEX asrun_broadcast ON asrun(broadcast);
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        role TEXT NOT NULL, scope TEXT NOT NULL DEFAULT '[]', password_hash TEXT,
        disabled INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL DEFAULT '', hash TEXT NOT NULL, created_at TEXT NOT NULL,
        last_used_at TEXT, revoked_at TEXT);
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE sessions (
        hash TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
        created_at TEXT NOT NULL, expires REAL NOT NULL);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, actor TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT '', action TEXT NOT NULL, method TEXT NOT NULL DEFAULT '',
        target TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL, status INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '{}');
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 2: the name people see (officials are "Ông Nguyễn Văn An", not "an.nv")
    """
    ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
    """,
    # 3: disaster alerts (CAP 1.2 intake, control/alerts/) and zones' administrative codes
    """
    ALTER TABLE zones ADD COLUMN codes TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY, sender TEXT NOT NULL, identifier TEXT NOT NULL, sent TEXT NOT NULL,
        status TEXT NOT NULL, msg_type TEXT NOT NULL, state TEXT NOT NULL,
        outcome TEXT NOT NULL, level TEXT, risk_level INTEGER, risk_colour TEXT,
        authority TEXT NOT NULL DEFAULT '', via TEXT NOT NULL DEFAULT '',
        received_at TEXT NOT NULL, expires TEXT, next_at TEXT, airings INTEGER NOT NULL DEFAULT 0,
        decision TEXT NOT NULL DEFAULT '{}', xml TEXT NOT NULL, updated_at TEXT NOT NULL,
        UNIQUE (sender, identifier, sent));
    CREATE INDEX alerts_state ON alerts(state);
    CREATE TABLE alert_airings (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL, broadcast_id TEXT,
        n INTEGER NOT NULL, time TEXT NOT NULL, source TEXT NOT NULL DEFAULT '',
        receipt_to_submit_ms REAL, error TEXT);
    CREATE INDEX alert_airings_alert ON alert_airings(alert_id);
    """,
    # 4: media rendered from text (POST /media/tts): the text, voice and engine it was read with
    """
    ALTER TABLE media ADD COLUMN tts TEXT;
    """,
    # 5: schedules and the decision taken for each occurrence (control/schedule/store.py)
    """
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '', request TEXT NOT NULL,
        zones TEXT NOT NULL, level TEXT NOT NULL, start TEXT NOT NULL, tz TEXT NOT NULL,
        rrule TEXT, until TEXT, exdates TEXT NOT NULL DEFAULT '[]', duration_s REAL,
        on_busy TEXT NOT NULL DEFAULT 'wait', missed TEXT NOT NULL DEFAULT 'skip',
        missed_window_s REAL NOT NULL DEFAULT 0, media_ids TEXT NOT NULL DEFAULT '[]',
        enabled INTEGER NOT NULL DEFAULT 1, disabled_reason TEXT, owner TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE schedule_runs (
        schedule_id TEXT NOT NULL, occurrence TEXT NOT NULL, outcome TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '', broadcast_id TEXT, offset_s REAL NOT NULL DEFAULT 0,
        zones TEXT NOT NULL DEFAULT '[]', level TEXT NOT NULL DEFAULT '',
        title TEXT NOT NULL DEFAULT '', decided_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (schedule_id, occurrence));
    CREATE INDEX schedule_runs_occurrence ON schedule_runs(occurrence);
    """,
    # 6: a zone's default TTS voice and the languages it airs, in order (issue 14)
    """
    ALTER TABLE zones ADD COLUMN voice TEXT;
    ALTER TABLE zones ADD COLUMN languages TEXT NOT NULL DEFAULT '[]';
    """,
    # 7: records that survive faults (control/journal.py): each as-run/audit record's
    # write-ahead id (a journal replayed twice writes it once), and the command that started a
    # broadcast (port.command_to_dict), so a crash can be resumed (control/recovery.py)
    """
    ALTER TABLE broadcasts ADD COLUMN command TEXT;
    ALTER TABLE asrun ADD COLUMN wid TEXT;
    CREATE UNIQUE INDEX asrun_wid ON asrun(wid) WHERE wid IS NOT NULL;
    ALTER TABLE audit ADD COLUMN wid TEXT;
    CREATE UNIQUE INDEX audit_wid ON audit(wid) WHERE wid IS NOT NULL;
    """,
    # 8: a media item's owner scope (control/media_refs.py): the zones of the account that
    # made it, JSON; NULL: province-wide (every item made before)
    """
    ALTER TABLE media ADD COLUMN scope TEXT;
    """,
    # 9: a zone anybody may listen to (issue 18: /listen, /nghe, boards); NULL: not set here
    # (the `listen_public_zones` setting decides, as before)
    """
    ALTER TABLE zones ADD COLUMN public INTEGER;
    """,
]

TERMINAL_STATES = ("finished", "stopped", "refused", "interrupted")
_JSON_COLS = {"unicast", "zones", "tags", "scope", "data", "detail", "codes", "decision",
              "tts", "languages"}


def _row(r: aiosqlite.Row | None) -> dict | None:
    if r is None:
        return None
    d = dict(r)
    for k in _JSON_COLS & d.keys():
        if isinstance(d[k], str):
            d[k] = json.loads(d[k])
    return d


def _dump(v: Any) -> Any:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v


class Database:
    def __init__(self, path: str | Path, busy_timeout_ms: int = 5000) -> None:
        self.path = str(path)
        self._conn: aiosqlite.Connection | None = None
        #: how long a write waits for another connection's lock before it fails (a 503 for
        #: the API): bounded, so a locked database never hangs a request
        self.busy_timeout_ms = busy_timeout_ms
        self._busy_lowered = False
        #: a second connection for the plain reads (_all/_one): in WAL mode they never wait
        #: behind a write that waits for a lock (token checks stay fast on a locked database)
        self._reader: aiosqlite.Connection | None = None
        #: the write-ahead queue (control/journal.py) once the server starts: audit entries go
        #: through it and are never dropped
        self.records: Any = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("the database is not open")
        return self._conn

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> Database:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        self.conn.row_factory = aiosqlite.Row
        await self.conn.execute("PRAGMA journal_mode=WAL")
        await self.conn.execute("PRAGMA synchronous=NORMAL")
        await self.conn.execute("PRAGMA foreign_keys=ON")
        await self.conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        await self.migrate()
        if self.path != ":memory:":
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader.row_factory = aiosqlite.Row
            await self._reader.execute("PRAGMA query_only=ON")
            await self._reader.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        return self

    @property
    def reader(self) -> aiosqlite.Connection:
        return self._reader if self._reader is not None else self.conn

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def migrate(self) -> int:
        row = await (await self.conn.execute("PRAGMA user_version")).fetchone()
        version = int(row[0]) if row is not None else 0
        for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={i};\nCOMMIT;")
        return len(MIGRATIONS)

    # ------------------------------------------------------------------ helpers
    async def _all(self, sql: str, args: Iterable = ()) -> list[dict]:
        cur = await self.reader.execute(sql, tuple(args))
        return [dict(_row(r) or {}) for r in await cur.fetchall()]

    async def _one(self, sql: str, args: Iterable = ()) -> dict | None:
        cur = await self.reader.execute(sql, tuple(args))
        try:
            return _row(await cur.fetchone())
        finally:
            await cur.close()  # ends the read transaction (a reader never pins old pages)

    async def _exec(self, sql: str, args: Iterable = ()) -> int:
        cur = await self.conn.execute(sql, tuple(args))
        return cur.rowcount

    async def _upsert(self, table: str, row: dict, key: str = "id",
                      keep: tuple[str, ...] = ("created_at",)) -> None:
        now = now_iso()
        row = {"created_at": now, "updated_at": now, **row}
        cols = list(row)
        sets = ", ".join(f"{c}=excluded.{c}" for c in cols if c != key and c not in keep)
        await self._exec(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT({key}) DO UPDATE SET {sets}", [_dump(row[c]) for c in cols])

    async def transaction(self, statements: Sequence[tuple[str, Iterable[Any]]]) -> None:
        """Run several writes atomically (a CSV import is all or nothing)."""
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                await self.conn.execute(sql, tuple(args))
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    @staticmethod
    def upsert_sql(table: str, row: dict, key: str = "id") -> tuple[str, list]:
        now = now_iso()
        row = {"created_at": now, "updated_at": now, **row}
        cols = list(row)
        sets = ", ".join(f"{c}=excluded.{c}" for c in cols if c not in (key, "created_at"))
        return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                f"({', '.join('?' * len(cols))}) ON CONFLICT({key}) DO UPDATE SET {sets}",
                [_dump(row[c]) for c in cols])

    # ------------------------------------------------------------------ zones and groups
    async def zones(self) -> list[dict]:
        return await self._all("SELECT * FROM zones ORDER BY rowid")

    async def zone(self, zid: str) -> dict | None:
        return await self._one("SELECT * FROM zones WHERE id=?", (zid,))

    async def upsert_zone(self, row: dict) -> None:
        await self._upsert("zones", row)

    async def delete_zone(self, zid: str) -> None:
        await self._exec("DELETE FROM zones WHERE id=?", (zid,))

    async def groups(self) -> list[dict]:
        return await self._all("SELECT * FROM groups ORDER BY rowid")

    async def upsert_group(self, row: dict) -> None:
        await self._upsert("groups", row)

    async def delete_group(self, gid: str) -> int:
        return await self._exec("DELETE FROM groups WHERE id=?", (gid,))

    # ------------------------------------------------------------------ receivers
    async def receivers(self, zone: str | None = None, status: str | None = None,
                        zones: set[str] | None = None) -> list[dict]:
        sql, args = "SELECT * FROM receivers WHERE 1=1", []
        if zone is not None:
            sql += " AND zone=?"
            args.append(zone)
        if status is not None:
            sql += " AND status=?"
            args.append(status)
        rows = await self._all(sql + " ORDER BY rowid", args)
        if zones is not None:
            rows = [r for r in rows if r["zone"] in zones]
        return rows

    async def receiver(self, rid: str) -> dict | None:
        return await self._one("SELECT * FROM receivers WHERE id=?", (rid,))

    async def existing_ids(self, table: str, ids: Iterable[str]) -> set[str]:
        """Which of `ids` are rows of `table` (zones, receivers): targeted look-ups, so checking
        a batch of new receivers never reads the whole table."""
        assert table in ("zones", "groups", "receivers")
        ids = list(dict.fromkeys(ids))
        found: set[str] = set()
        for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit is 999 on old builds
            part = ids[i:i + 500]
            cur = await self.conn.execute(
                f"SELECT id FROM {table} WHERE id IN ({', '.join('?' * len(part))})", part)
            found.update(r[0] for r in await cur.fetchall())
        return found

    RECEIVER_COLUMNS = ("id", "zone", "name", "lat", "lon", "link", "address", "notes", "status",
                        "secret_enc", "origin", "created_at", "updated_at", "retired_at",
                        "last_seen_at")

    async def insert_receivers(self, rows: list[dict]) -> None:
        """New receivers in one transaction (one executemany, not a round trip per row). Plain
        INSERT: an id that appeared meanwhile (another process) fails the whole batch with
        sqlite3.IntegrityError instead of overwriting a receiver."""
        cols = [c for c in self.RECEIVER_COLUMNS if c not in ("retired_at", "last_seen_at")]
        sql = f"INSERT INTO receivers ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            await self.conn.executemany(sql, [[_dump(r.get(c)) for c in cols] for r in rows])
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    async def receiver_addresses(self, zid: str) -> list[dict]:
        """What one zone's destinations are built from (the receivers_zone index)."""
        return await self._all("SELECT zone, address, link, status FROM receivers WHERE zone=? "
                               "ORDER BY rowid", (zid,))

    async def receiver_secret_rows(self) -> list[dict]:
        """Only what the receiver protocol's secret cache needs, for every receiver."""
        return await self._all("SELECT id, zone, status, secret_enc FROM receivers ORDER BY rowid")

    async def one_receiver_secret_row(self, rid: str) -> dict | None:
        """The same for one receiver (an id the secret cache did not know)."""
        return await self._one("SELECT id, zone, status, secret_enc FROM receivers WHERE id=?",
                               (rid,))

    async def update_receiver(self, rid: str, **fields: Any) -> None:
        fields["updated_at"] = now_iso()
        sets = ", ".join(f"{k}=?" for k in fields)
        await self._exec(f"UPDATE receivers SET {sets} WHERE id=?",
                         [_dump(v) for v in fields.values()] + [rid])

    async def count_receivers_in(self, zid: str) -> int:
        r = await self._one("SELECT COUNT(*) AS n FROM receivers WHERE zone=? AND status!='retired'",
                            (zid,))
        return int(r["n"]) if r is not None else 0

    # ------------------------------------------------------------------ media
    async def media_list(self, language: str | None = None, tag: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM media WHERE 1=1", []
        if language:
            sql += " AND language=?"
            args.append(language)
        rows = await self._all(sql + " ORDER BY created_at DESC, rowid DESC", args)
        if tag:
            rows = [r for r in rows if tag in r["tags"]]
        return rows

    async def media(self, mid: str) -> dict | None:
        return await self._one("SELECT * FROM media WHERE id=?", (mid,))

    async def media_by_hash(self, sha: str) -> dict | None:
        return await self._one("SELECT * FROM media WHERE sha256=?", (sha,))

    async def insert_media(self, row: dict) -> None:
        now = now_iso()
        row = {"created_at": now, "updated_at": now, **row}
        cols = list(row)
        await self._exec(f"INSERT INTO media ({', '.join(cols)}) VALUES "
                         f"({', '.join('?' * len(cols))})", [_dump(row[c]) for c in cols])

    async def update_media(self, mid: str, **fields: Any) -> None:
        fields["updated_at"] = now_iso()
        sets = ", ".join(f"{k}=?" for k in fields)
        await self._exec(f"UPDATE media SET {sets} WHERE id=?",
                         [_dump(v) for v in fields.values()] + [mid])

    async def delete_media(self, mid: str) -> None:
        await self._exec("DELETE FROM media WHERE id=?", (mid,))

    # ------------------------------------------------------------------ broadcasts / as-run
    async def record_event(self, ev: dict, snapshot: dict | None) -> None:
        """One engine event: append to the as-run log and refresh the broadcast's row."""
        now = now_iso()
        await self.conn.execute("BEGIN")
        try:
            await self.conn.execute(
                "INSERT INTO asrun (time, type, broadcast, data) VALUES (?, ?, ?, ?)",
                (ev.get("time") or now, ev.get("type", ""), ev.get("broadcast"),
                 json.dumps(ev, ensure_ascii=False, default=str)))
            if snapshot is not None:
                state = snapshot.get("state") or ""
                await self.conn.execute(
                    "INSERT INTO broadcasts (id, state, level, owner, data, created_at, ended_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "state=excluded.state, data=excluded.data, ended_at=excluded.ended_at, "
                    "updated_at=excluded.updated_at",
                    (snapshot["id"], state, snapshot.get("level", ""), snapshot.get("owner", ""),
                     json.dumps(snapshot, ensure_ascii=False, default=str),
                     snapshot.get("created_at") or now, snapshot.get("ended_at"), now))
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    async def mark_interrupted(self) -> list[str]:
        """Broadcasts on air when the process died: say so instead of losing them."""
        rows = await self._all("SELECT * FROM broadcasts WHERE state NOT IN (?, ?, ?, ?)",
                               TERMINAL_STATES)
        now = now_iso()
        for r in rows:
            data = dict(r["data"], state="interrupted",
                        error=r["data"].get("error") or "the server stopped while it was on air",
                        on_air_zones=[])
            data["ended_at"] = data.get("ended_at") or now
            await self.record_event(
                {"type": "broadcast.interrupted", "time": now, "broadcast": r["id"],
                 "level": r["level"], "owner": r["owner"], "zones": data.get("reached_zones", []),
                 "reason": "the server stopped while it was on air"}, data)
        return [r["id"] for r in rows]

    async def unfinished_broadcasts(self) -> list[dict]:
        """Rows of broadcasts not ended (on air when the process died), with the command that
        started them (a dict, or None for rows written before migration 7, or live ones)."""
        rows = await self._all("SELECT * FROM broadcasts WHERE state NOT IN (?, ?, ?, ?) "
                               "ORDER BY created_at", TERMINAL_STATES)
        for r in rows:
            r["command"] = json.loads(r["command"]) if r.get("command") else None
        return rows

    async def write_records(self, records: list[dict]) -> None:
        """A batch of the write-ahead queue's records (control/journal.py) in one transaction,
        run whole on the connection's thread (nothing else interleaves with it)."""
        conn = self.conn

        def run() -> None:
            try:
                write_records_sync(conn._conn, records)
            except sqlite3.OperationalError as e:
                # locked by another connection: until a batch goes through again, writes wait
                # 100 ms, not the full busy timeout each (queued writes would add up to seconds)
                busy = (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF in (5, 6)
                if (busy or "locked" in str(e)) and not self._busy_lowered:
                    conn._conn.execute(f"PRAGMA busy_timeout={min(100, self.busy_timeout_ms)}")
                    self._busy_lowered = True
                raise
            if self._busy_lowered:
                conn._conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
                self._busy_lowered = False
        await conn._execute(run)

    async def broadcasts(self, limit: int = 200, state: str | None = None) -> list[dict]:
        sql, args = "SELECT data FROM broadcasts", []
        if state:
            sql += " WHERE state=?"
            args.append(state)
        rows = await self._all(sql + " ORDER BY created_at DESC LIMIT ?", args + [limit])
        return [r["data"] for r in rows]

    async def broadcast(self, bid: str) -> dict | None:
        r = await self._one("SELECT data FROM broadcasts WHERE id=?", (bid,))
        return r["data"] if r else None

    async def asrun(self, since: int = 0, broadcast: str | None = None, limit: int = 1000,
                    type_: str | None = None) -> list[dict]:
        sql = "SELECT seq, data FROM asrun WHERE seq>?"
        args: list[Any] = [since]
        if broadcast:
            sql += " AND broadcast=?"
            args.append(broadcast)
        if type_:
            sql += " AND type=?"
            args.append(type_)
        rows = await self._all(sql + " ORDER BY seq LIMIT ?", args + [limit])
        return [dict(r["data"], seq=r["seq"], engine_seq=r["data"].get("seq")) for r in rows]

    # ------------------------------------------------------------------ users, tokens, sessions
    async def users(self) -> list[dict]:
        return await self._all("SELECT * FROM users ORDER BY id")

    async def user(self, uid: int) -> dict | None:
        return await self._one("SELECT * FROM users WHERE id=?", (uid,))

    async def user_by_name(self, name: str) -> dict | None:
        return await self._one("SELECT * FROM users WHERE username=?", (name,))

    async def count_users(self) -> int:
        r = await self._one("SELECT COUNT(*) AS n FROM users")
        return int(r["n"]) if r is not None else 0

    async def insert_user(self, username: str, role: str, scope: list[str],
                          password_hash: str | None, display_name: str = "") -> int:
        now = now_iso()
        cur = await self.conn.execute(
            "INSERT INTO users (username, role, scope, password_hash, created_at, updated_at, "
            "display_name) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (username, role, json.dumps(scope), password_hash, now, now, display_name))
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def update_user(self, uid: int, **fields: Any) -> None:
        fields["updated_at"] = now_iso()
        sets = ", ".join(f"{k}=?" for k in fields)
        await self._exec(f"UPDATE users SET {sets} WHERE id=?",
                         [_dump(v) for v in fields.values()] + [uid])

    async def insert_token(self, tid: str, user_id: int, name: str, hash_: str) -> None:
        await self._exec("INSERT INTO tokens (id, user_id, name, hash, created_at) "
                         "VALUES (?, ?, ?, ?, ?)", (tid, user_id, name, hash_, now_iso()))

    async def token(self, tid: str) -> dict | None:
        return await self._one("SELECT * FROM tokens WHERE id=?", (tid,))

    async def tokens(self, user_id: int) -> list[dict]:
        return await self._all("SELECT id, user_id, name, created_at, last_used_at, revoked_at "
                               "FROM tokens WHERE user_id=? ORDER BY created_at", (user_id,))

    async def revoke_token(self, tid: str) -> None:
        await self._exec("UPDATE tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                         (now_iso(), tid))

    async def insert_session(self, hash_: str, user_id: int, expires: float) -> None:
        await self._exec("INSERT INTO sessions (hash, user_id, created_at, expires) "
                         "VALUES (?, ?, ?, ?)", (hash_, user_id, now_iso(), expires))

    async def session(self, hash_: str) -> dict | None:
        return await self._one("SELECT * FROM sessions WHERE hash=? AND expires>?",
                               (hash_, time.time()))

    async def delete_session(self, hash_: str) -> None:
        await self._exec("DELETE FROM sessions WHERE hash=? OR expires<?", (hash_, time.time()))

    # ------------------------------------------------------------------ audit
    async def audit(self, **entry: Any) -> None:
        entry.setdefault("time", now_iso())
        if self.records is not None:  # through the write-ahead queue: never dropped
            await self.records.put_wait("audit", {"entry": entry})
            return
        entry["detail"] = json.dumps(entry.get("detail") or {}, ensure_ascii=False, default=str)
        cols = list(entry)
        await self._exec(f"INSERT INTO audit ({', '.join(cols)}) VALUES "
                         f"({', '.join('?' * len(cols))})", [entry[c] for c in cols])

    async def audit_log(self, since: int = 0, limit: int = 500, actor: str | None = None,
                        action: str | None = None) -> list[dict]:
        sql = "SELECT * FROM audit WHERE seq>?"
        args: list[Any] = [since]
        if actor:
            sql += " AND actor=?"
            args.append(actor)
        if action:
            sql += " AND action=?"
            args.append(action)
        return await self._all(sql + " ORDER BY seq LIMIT ?", args + [limit])


def write_records_sync(conn: sqlite3.Connection, records: list[dict]) -> None:
    """Write-ahead records (control/journal.py), on the connection's own thread:
    - "event": an as-run event and its broadcast's row (`row`: the snapshot; `cmd`: the
      command that started it, kept once known);
    - "audit": an audit entry;
    - "ckpt": a broadcast's current state (position) while it is not ended.
    Each record's `wid` is unique: a record written before (a journal replayed after a crash)
    is not written again. Raises what sqlite3 raises (the queue retries)."""
    now = now_iso()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for rec in records:
            kind, wid = rec.get("k"), rec.get("wid")
            if kind == "event":
                ev = rec.get("ev") or {}
                conn.execute(
                    "INSERT OR IGNORE INTO asrun (time, type, broadcast, data, wid) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (ev.get("time") or now, ev.get("type", ""), ev.get("broadcast"),
                     json.dumps(ev, ensure_ascii=False, default=str), wid))
                snap = rec.get("row")
                if snap is not None:
                    cmd = rec.get("cmd")
                    conn.execute(
                        "INSERT INTO broadcasts (id, state, level, owner, data, created_at, "
                        "ended_at, updated_at, command) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET state=excluded.state, data=excluded.data,"
                        " ended_at=excluded.ended_at, updated_at=excluded.updated_at, "
                        "command=COALESCE(excluded.command, broadcasts.command)",
                        (snap["id"], snap.get("state") or "", snap.get("level", ""),
                         snap.get("owner", ""), json.dumps(snap, ensure_ascii=False, default=str),
                         snap.get("created_at") or now, snap.get("ended_at"), now,
                         json.dumps(cmd, ensure_ascii=False) if cmd is not None else None))
            elif kind == "audit":
                entry = dict(rec.get("entry") or {})
                entry["detail"] = json.dumps(entry.get("detail") or {}, ensure_ascii=False,
                                             default=str)
                entry["wid"] = wid
                cols = list(entry)
                conn.execute(f"INSERT OR IGNORE INTO audit ({', '.join(cols)}) VALUES "
                             f"({', '.join('?' * len(cols))})", [entry[c] for c in cols])
            elif kind == "ckpt":
                snap = rec.get("row") or {}
                conn.execute(
                    "UPDATE broadcasts SET state=?, data=?, updated_at=? WHERE id=? AND "
                    "state NOT IN (?, ?, ?, ?)",
                    (snap.get("state") or "", json.dumps(snap, ensure_ascii=False, default=str),
                     now, snap.get("id"), *TERMINAL_STATES))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
