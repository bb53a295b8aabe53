"""Alert intake, the IO around the pure rules: authenticate → parse → decide → stop what an
Update/Cancel names → air (attention signal + message) → record. Push (`POST /api/v1/alerts`)
and pull (control/alerts/feeds.py) both come through `AlertIntake.ingest`.

The first packet comes before persistence: the StartBroadcast is submitted on the event loop
(well under a millisecond; a hop to a thread and back waited 5-40 ms for the core while the
fan-out sent to 5,000 receivers), then the rows are written. A fetched recording already
analysed is not analysed again; one that is not yet is analysed in this room's own thread.
Repeats and expiry run in one task that sleeps until the book's next wake-up.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from control.alerts.cap import CapAlert, CapError, Key, Resource, parse
from control.alerts.config import AlertFeedConfig
from control.alerts.feeds import Feeds
from control.alerts.rules import AlertBook, AreaIndex, Decision, ReceiverPoint, Record, RuleContext
from control.alerts.signature import Authorities, SenderNotAllowed, SignatureError, Unsigned
from control.alerts.store import AlertStore, alert_id, decision_from_dict
from control.db import Database
from control.errors import DomainError
from control.settings import Settings
from streamer.ingest.base import MediaError
from streamer.mixer.arbitration import Level
from streamer.port import (BroadcastSnapshot, EnginePort, FileAudio, Programme, SirenAudio,
                           SourceDescription, StartBroadcast, StopBroadcast, TtsAudio,
                           UnknownBroadcast)
from streamer.zones import ZoneError, ZoneTree, parse_destination

log = logging.getLogger("loa.alerts")


@dataclass
class Outcome:
    """What happened to one message: `status` 201 (aired), 200 (duplicate, logged, cancel)."""
    status: int
    body: dict[str, Any]


class ResourceError(Exception):
    pass


class _Stages:
    """Where an alert's time went, from receipt (ms at each named stage): the answer to "why
    this long to the first packet" (`GET /api/v1/alerts/{id}` shows them as `stages_ms`)."""
    __slots__ = ("t0", "c0", "ms")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.c0 = time.thread_time()
        #: the receipt on the system's monotonic clock (a bench on this machine compares it
        #: with its own send time)
        self.ms: dict[str, float] = {"receipt_monotonic_ms": round(t0 * 1000, 3)}

    def mark(self, name: str) -> None:
        self.ms[name] = round((time.monotonic() - self.t0) * 1000, 2)
        self.ms[name + "_cpu"] = round((time.thread_time() - self.c0) * 1000, 2)


class AlertIntake:
    def __init__(self, port: EnginePort, tree: Callable[[], ZoneTree],
                 zone_codes: Callable[[], dict[str, list[str]]], db: Database,
                 settings: Settings, publish: Callable[[dict], None]) -> None:
        self.port = port
        self.tree = tree
        self.zone_codes = zone_codes
        self.db = db
        self.store = AlertStore(db)
        self.settings = settings
        self.publish = publish
        self.authorities = Authorities.load(settings.alert_authorities)
        self.book = AlertBook()
        self.counters: Counter[str] = Counter()
        self.lock = asyncio.Lock()  # one message at a time from decision to record
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="loa-alert")
        self.airing: dict[Key, str] = {}  # the current broadcast of each active alert
        #: alert id -> ms from receipt to each stage of its intake (the last 64 here)
        self.stages: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._index: AreaIndex | None = None
        self._index_key: Any = None
        self._points: list[ReceiverPoint] = []
        self._points_at = 0.0
        #: a receiver was provisioned or edited here since the points were read: the next
        #: alert reads them again before it decides (the 10 s refresh is for other processes)
        self._points_stale = False
        #: one reading of the points at a time: a decision that finds the repeat loop reading
        #: them waits for that reading instead of deciding on the points it replaces
        self._points_lock = asyncio.Lock()
        #: the receivers' provisioned addresses (HOST:PORT), read with their coordinates
        self._addresses: dict[str, tuple[str, int]] = {}
        #: a registered receiver's observed address on this node (the receiver registry), if
        #: online; wired by the server
        self.registered: Callable[[str], tuple[str, int] | None] = lambda rid: None
        #: reach the receivers inside a polygon/circle alone (StartBroadcast.only); with several
        #: nodes (issue 19) edges serve the receivers, so their zones are reached whole instead
        self.per_receiver = not settings.redis_url
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        #: several nodes (issue 19): only the origin holding the lease polls feeds and repeats
        self.leader: Callable[[], bool] = lambda: True
        #: who leads when this origin does not: {"leader": node, "http": address} (issue 19)
        self.leader_info: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.max_bytes = settings.alert_max_kb * 1024
        feeds = list(settings.alert_feeds) + [
            AlertFeedConfig(url=a.feed, id=a.id, authority=a.id, interval_s=60.0, timeout_s=10.0)
            for a in settings.alert_authorities if a.feed]
        self.feeds = Feeds(self, feeds)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        for row in await self.store.active():
            try:
                alert = parse(row["xml"].encode(), max(self.max_bytes, len(row["xml"]) * 4))
            except DomainError:
                continue
            d = decision_from_dict(alert.key, row["decision"])
            nxt = datetime.fromisoformat(row["next_at"]) if row.get("next_at") else None
            self.book.restore(alert, d, "active", nxt, int(row.get("airings") or 0))
        await self._refresh_points()
        self._tasks.append(asyncio.create_task(self._run(), name="loa-alert-repeats"))
        await self.feeds.start()

    async def close(self) -> None:
        await self.feeds.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the area index
    def receivers_changed(self) -> None:
        """Receivers were provisioned, edited (coordinates, address, zone) or retired: read
        them again now (the repeat loop is woken), and in any case before the next decision."""
        self._points_stale = True
        self._wake.set()

    async def _fresh_points(self, max_age_s: float | None = None) -> None:
        """Read the points again if a change was announced since they were read (or they are
        older than `max_age_s`). Under `_points_lock`: the flag is cleared when a reading starts,
        so without it a decision could see it cleared while that reading is still in flight
        and decide on the old points (a receiver provisioned just before an alert missed it)."""
        async with self._points_lock:
            if self._points_stale or (max_age_s is not None
                                      and time.monotonic() - self._points_at > max_age_s):
                await self._refresh_points()

    async def _refresh_points(self) -> None:
        """Read the points now; callers hold `_points_lock` (or run before anything else)."""
        self._points_stale = False   # a change during the query marks them stale again
        cur = await self.db.conn.execute(
            "SELECT id, zone, lat, lon, address FROM receivers WHERE status != 'retired' "
            "AND lat IS NOT NULL AND lon IS NOT NULL")
        rows = list(await cur.fetchall())
        self._points = [ReceiverPoint(r[0], r[1], float(r[2]), float(r[3])) for r in rows]
        self._addresses = {}
        for r in rows:
            if r[4]:
                try:
                    h, p, _pt = parse_destination(r[4], "receiver address")
                except ZoneError:
                    continue
                self._addresses[r[0]] = (h, p)
        self._points_at = time.monotonic()
        self._index_key = None

    def _area(self) -> AreaIndex:
        tree = self.tree()
        key = (id(tree), tree.version, self._points_at)
        if self._index is None or key != self._index_key:
            self._index = AreaIndex(tree, self.zone_codes(), self._points)
            self._index_key = key
        return self._index

    def _ctx(self) -> RuleContext:
        s = self.settings
        return RuleContext(area=self._area(), level_rules=tuple(s.alert_levels),
                           risk_param=s.alert_risk_parameter, repeat_minutes=s.alert_repeat_minutes,
                           drill_zones=tuple(s.alert_drill_zones), languages=tuple(s.alert_languages))

    # ------------------------------------------------------------------ intake
    async def ingest(self, data: bytes, via: str, who: str, *, authority: str | None = None,
                     allow_unsigned: bool = False) -> Outcome:
        """One CAP message from a push (`via` "push", `who` the account) or a feed (`via` the
        feed id; `authority` the only authority it may carry). Raises domain errors: Unsigned,
        SignatureError (after counting and an event), CapError/TooLarge, AreaMatchesNothing."""
        t0 = time.monotonic()
        st = _Stages(t0)
        self.counters["received"] += 1
        try:
            try:
                alert, auth = self.authorities.verify(data, self.max_bytes, only=authority)
                signer = auth.id
                self.authorities.check_sender(alert, auth.id)
            except Unsigned:
                if not allow_unsigned:
                    raise
                alert, signer = parse(data, self.max_bytes), f"unsigned:{who}"
                self.authorities.check_sender(alert, self.authorities.for_account(who))
        except SignatureError as e:
            self.counters["refused_unsigned" if isinstance(e, Unsigned) else
                          "refused_sender" if isinstance(e, SenderNotAllowed) else
                          "refused_signature"] += 1
            self.publish({"type": "alert.refused", "via": via, "by": who, "code": e.code,
                          "reason": e.message})
            raise
        except DomainError as e:
            self.counters["refused_invalid"] += 1
            self.publish({"type": "alert.refused", "via": via, "by": who, "code": e.code,
                          "reason": e.message})
            raise
        st.mark("verified")
        async with self.lock:
            st.mark("locked")
            await self._fresh_points()
            now = datetime.now(UTC)
            ctx = self._ctx()
            st.mark("area")
            try:
                d = self.book.decide(alert, now, ctx)
            except DomainError as e:
                self.counters["refused_area"] += 1
                self.publish({"type": "alert.refused", "via": via, "by": who, "code": e.code,
                              "reason": e.message, "identifier": alert.identifier,
                              "sender": alert.sender})
                raise
            if d.outcome == "duplicate":
                self.counters["duplicates"] += 1
                return Outcome(200, {"id": alert_id(d.key), "outcome": "duplicate",
                                     "reason": d.reason})
            stopped = [self._stop(k, "cancelled" if alert.msg_type == "Cancel" else "superseded")
                       for k in d.stops]
            snap: BroadcastSnapshot | None = None
            error = None
            source_kind = ""
            st.mark("decided")
            if d.airs:
                desc, source_kind, error = await self._source(d)
                st.mark("source")
                snap, err2 = await self._air(d, alert, desc, 1, st)
                error = error or err2
            self.book.apply(alert, d, now)
            rec = self.book.records[d.key]
            submit_ms = (time.monotonic() - t0) * 1000
        st.mark("applied")
        self.counters["aired" if d.airs else d.outcome] += 1
        body = self._answer(rec, snap, stopped, signer, error)
        st.mark("answered")
        self.publish({"type": f"alert.{'aired' if d.airs else d.outcome}", "alert": body["id"],
                      "identifier": alert.identifier, "sender": alert.sender, "via": via,
                      "level": d.level, "risk_level": d.risk_level, "zones": list(d.targets)[:50],
                      "broadcast": snap.id if snap else None, "reason": d.reason})
        await self.store.save(rec, data, signer, via)
        for k in d.stops:
            if k in self.book.records:
                await self.store.update_state(self.book.records[k])
        if d.airs:
            await self.store.airing(d.key, snap.id if snap else None, 1, source_kind,
                                    round(submit_ms, 2), error)
        st.mark("stored")
        self.stages[alert_id(d.key)] = st.ms
        while len(self.stages) > 64:
            self.stages.popitem(last=False)
        self._wake.set()
        return Outcome(201 if d.airs else 200, body)

    def _answer(self, rec: Record, snap: BroadcastSnapshot | None, stopped: list[str | None],
                signer: str, error: str | None) -> dict[str, Any]:
        d = rec.decision
        return {"id": alert_id(d.key), "identifier": rec.alert.identifier,
                "sender": rec.alert.sender, "sent": d.key[2], "status": rec.alert.status,
                "msg_type": rec.alert.msg_type, "authority": signer, "outcome": d.outcome,
                "state": rec.state, "reason": d.reason, "level": d.level,
                "risk_level": d.risk_level, "risk_colour": d.risk_colour,
                "risk_colour_name": d.risk_colour_name, "zones": list(d.zones),
                "targets": list(d.targets), "receivers": list(d.receivers),
                "parts": {z: list(r) for z, r in d.parts},
                "text": d.text, "repeat_every_s": d.repeat_every_s,
                "expires": d.expires.isoformat() if d.expires else None,
                "broadcast": snap.id if snap else None,
                "stopped": [s for s in stopped if s], "error": error}

    # ------------------------------------------------------------------ airing
    async def _source(self, d: Decision) -> tuple[SourceDescription, str, str | None]:
        """(description, kind, error): the fetched recording if there is one, else speech."""
        message: SourceDescription = TtsAudio(d.text, language="vi")
        kind, error = "tts", None
        if d.resource is not None:
            try:
                message = await self._fetch(d.resource)
                kind = "resource"
            except ResourceError as e:
                self.counters["resource_errors"] += 1
                error = f"audio resource not used: {e}"
                log.warning("alert %s: %s", d.key[1], error)
        att = self.settings.alert_attention
        return Programme(message, attention=None if att == "none" else att), kind, error

    def _reach(self, d: Decision) -> tuple[tuple[str, ...], tuple[str, ...],
                                           dict[str, tuple[tuple[str, int], ...]]]:
        """(targets, alone, only) of the StartBroadcast: the zones reached whole, and of each
        zone reached in part (a polygon/circle) the addresses of its receivers inside. A zone
        with a receiver inside that cannot be addressed alone here (no address known, or
        several nodes) is reached whole, that zone alone: an alert may reach a few more
        speakers than its area, never fewer."""
        only: dict[str, tuple[tuple[str, int], ...]] = {}
        whole: list[str] = []
        registered, static = self.registered, self._addresses
        for zone, rids in d.parts:
            seen = list(map(registered, rids))
            if seen.count(None) == len(seen):
                # the usual case, in one pass each (thousands of ids in front of the first
                # packet): nobody of them registered here, their provisioned addresses
                try:   # all provisioned, or a KeyError (C loops, no Python per id)
                    known = itemgetter(*rids)(static) if len(rids) > 1 else (static[rids[0]],)
                except KeyError:
                    known = None
                if self.per_receiver and known is not None:
                    only[zone] = tuple(dict.fromkeys(known))
                else:
                    whole.append(zone)
                continue
            found: list[tuple[str, int]] = []
            for r, a in zip(rids, seen):
                s = static.get(r)
                if a is None and s is None:
                    break
                if a is not None:
                    found.append(a)
                if s is not None and s != a:
                    found.append(s)
            else:
                if self.per_receiver:
                    only[zone] = tuple(dict.fromkeys(found))
                    continue
            whole.append(zone)
        return tuple(d.targets) + tuple(whole), tuple(whole), only

    async def _air(self, d: Decision, alert: CapAlert, desc: SourceDescription, n: int,
                   st: _Stages | None = None) -> tuple[BroadcastSnapshot | None, str | None]:
        assert d.level is not None
        targets, alone, only = self._reach(d)
        if st is not None:
            st.mark("reach")
        cmd = StartBroadcast(
            id=f"alert-{alert_id(d.key)[:10]}-{n}", targets=targets, alone=alone, only=only,
            level=Level.parse(d.level),
            source=desc, owner=f"alerts:{alert.sender}", owner_name=alert.sender,
            title=(d.text[:120]), details={"kind": "alert", "alert": alert_id(d.key),
                                           "identifier": alert.identifier, "airing": n,
                                           "risk_level": d.risk_level, "text": d.text})
        err: str | None = None
        try:
            snap = self.port.submit(cmd)
        except MediaError as e:
            # speech unavailable: the attention signal still airs, and says so in the report
            if isinstance(desc, Programme) and isinstance(desc.message, TtsAudio):
                fallback = StartBroadcast(**{**{f: getattr(cmd, f) for f in (
                    "id", "targets", "alone", "only", "level", "owner", "owner_name", "title",
                    "details")},
                    "source": Programme(SirenAudio(), attention=None)})
                snap = self.port.submit(fallback)
                err = f"speech failed ({e}); the siren aired instead"
            else:
                log.error("alert %s could not air: %s", alert.identifier, e)
                return None, str(e)
        except Exception as e:  # Refused, ZoneError, Conflict: recorded, never a crash
            log.error("alert %s could not air: %s", alert.identifier, e)
            return None, f"{type(e).__name__}: {e}"
        assert snap is not None
        if st is not None:
            st.mark("submitted")
        self.airing[d.key] = snap.id
        return snap, err

    def _stop(self, key: Key, why: str) -> str | None:
        bid = self.airing.pop(key, None)
        if bid is None:
            return None
        try:
            self.port.submit(StopBroadcast(bid, reason=f"alert {why}"))
        except UnknownBroadcast:
            return None
        return bid

    async def using_media(self, media_id: str) -> list[str]:
        """Active alerts (control/media_refs.py) whose audio is this library item: the
        broadcast airing it plays it, or its audio resource names it (.../media/{id}); a
        repeat would find it gone."""
        from control.media_refs import source_uses
        out = []
        for rec in self.book.active():
            res = rec.decision.resource
            path = urlsplit(res.uri).path.rstrip("/") if res is not None and res.uri else ""
            bid = self.airing.get(rec.decision.key)
            snap = self.port.broadcast(bid) if bid else None
            if path.endswith(f"/media/{media_id}") or (
                    snap is not None and source_uses(snap.source, media_id)):
                out.append(alert_id(rec.decision.key))
        return out

    async def _fetch(self, res: Resource) -> FileAudio:
        """An audio <resource>: allowed hosts only, size cap, SHA-1 digest checked, kept under
        <data_dir>/alerts/ by its digest (a repeat or a restart does not fetch it again)."""
        import aiohttp

        from streamer.ingest.catalogue import analyse, analysed
        assert res.uri is not None
        u = urlsplit(res.uri)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ResourceError(f"not an http(s) URL: {res.uri[:100]}")
        if u.hostname not in self.settings.alert_resource_hosts:
            raise ResourceError(f"host {u.hostname} is not in alert_resource_hosts")
        cap = int(self.settings.alert_resource_max_mb * 1024 * 1024)
        if res.size is not None and res.size > cap:
            raise ResourceError(f"{res.size} bytes is over the {cap}-byte limit")
        folder = self.settings.data_dir / "alerts"
        path = folder / f"{res.digest}.audio" if res.digest else None
        if path is None or not path.exists():
            h = hashlib.sha1(usedforsecurity=False)
            chunks: list[bytes] = []
            size = 0
            try:
                timeout = aiohttp.ClientTimeout(total=20)
                async with aiohttp.ClientSession(timeout=timeout) as http, \
                        http.get(res.uri, allow_redirects=False) as r:
                    if r.status != 200:
                        raise ResourceError(f"{res.uri[:100]}: HTTP {r.status}")
                    async for chunk in r.content.iter_chunked(65536):
                        size += len(chunk)
                        if size > cap:
                            raise ResourceError(f"over the {cap}-byte limit")
                        h.update(chunk)
                        chunks.append(chunk)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise ResourceError(f"{res.uri[:100]}: {type(e).__name__} {e}") from None
            if res.digest and h.hexdigest() != res.digest:
                raise ResourceError("the SHA-1 digest does not match")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{h.hexdigest()}.audio"
            tmp = path.with_suffix(".part")
            tmp.write_bytes(b"".join(chunks))
            tmp.replace(path)
        loop = asyncio.get_running_loop()
        target = self.settings.loudness_target_lufs
        try:
            hit = analysed(str(path), target)
            info, lufs = hit if hit is not None else await loop.run_in_executor(
                self.pool, analyse, str(path), target)
        except MediaError as e:
            raise ResourceError(f"not playable audio: {e}") from None
        return FileAudio(str(Path(path).resolve()), loudness_lufs=lufs, duration_s=info.duration_s)

    # ------------------------------------------------------------------ repeats and expiry
    async def _run(self) -> None:
        while True:
            try:
                nxt = self.book.next_wake()
                delay = 5.0 if nxt is None else max(0.0, (nxt - datetime.now(UTC)).total_seconds())
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 5.0))
                except TimeoutError:
                    pass
                await self._fresh_points(max_age_s=10.0)
                if self.leader():
                    await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert repeat loop")
                await asyncio.sleep(1.0)

    async def _tick(self) -> None:
        async with self.lock:
            repeats, expired = self.book.due(datetime.now(UTC))
            for rec in expired:
                self._stop(rec.decision.key, "expired")
                self.publish({"type": "alert.expired", "alert": alert_id(rec.decision.key)})
            for rec in repeats:
                self._stop(rec.decision.key, "repeated")
                desc, kind, error = await self._source(rec.decision)
                snap, err2 = await self._air(rec.decision, rec.alert, desc, rec.airings)
                await self.store.airing(rec.decision.key, snap.id if snap else None, rec.airings,
                                        kind, None, error or err2)
                self.publish({"type": "alert.repeated", "alert": alert_id(rec.decision.key),
                              "airing": rec.airings, "broadcast": snap.id if snap else None})
            for rec in repeats + expired:
                await self.store.update_state(rec)

    # ------------------------------------------------------------------ reports
    def status(self) -> dict[str, Any]:
        return {"active": len(self.book.active()), "counters": dict(self.counters),
                "feeds": self.feeds.status()}


__all__ = ["AlertIntake", "Outcome", "CapError"]
