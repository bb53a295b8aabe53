"""The alert rules, pure: what a CAP message changes and what airs where, given the time.

    AlertBook.receive(alert, now, ctx) -> Decision      (records it; duplicates change nothing)
    AlertBook.due(now)                 -> repeats due, alerts that just expired

No IO and no clock: the intake (control/alerts/intake.py) reads the time, verifies the
signature, fetches audio and submits broadcasts; everything it decides is decided here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import shapely
from shapely.geometry import Polygon

from control.alerts.cap import CapAlert, Info, Key, Resource
from control.alerts.config import DEFAULT_LEVEL_RULES, AlertLevelRule
from control.errors import Invalid
from streamer.zones import ZoneTree

LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")

#: disaster risk levels (QĐ 18/2021/QĐ-TTg): the colour each is shown in (name, hex)
RISK_COLOURS: dict[int, tuple[str, str]] = {
    1: ("xanh dương nhạt", "#4FC3F7"),
    2: ("vàng nhạt", "#FFF176"),
    3: ("da cam", "#FB8C00"),
    4: ("đỏ", "#E53935"),
    5: ("tím", "#8E24AA"),
}

NEVER_AIR = {"Test": "a test message: logged, never aired",
             "Draft": "a draft: logged, never aired",
             "System": "a system message: logged, never aired"}


class AreaMatchesNothing(Invalid):
    """The alert's area reaches no zone and no receiver: it must not silently reach no one."""


# ------------------------------------------------------------------ level
def risk_level(info: Info, param_name: str) -> int | None:
    """Vietnam's risk level (1-5) from the `<parameter>` so named ("3", "Cấp 3", "cap 4")."""
    v = info.parameter(param_name)
    if v is None:
        return None
    m = re.search(r"[1-5]", v)
    return int(m.group()) if m else None


def map_level(info: Info, rules: Sequence[AlertLevelRule], param_name: str) -> tuple[str, int | None]:
    """Loa's level for an info block through the settings' table (first row that holds)."""
    risk = risk_level(info, param_name)
    for r in rules:
        if r.risk_min is not None and (risk is None or risk < r.risk_min):
            continue
        if r.severity is not None and info.severity not in r.severity:
            continue
        if r.urgency is not None and info.urgency not in r.urgency:
            continue
        if r.certainty is not None and info.certainty not in r.certainty:
            continue
        return r.level, risk
    return "priority", risk


# ------------------------------------------------------------------ what is said
def choose_info(alert: CapAlert, languages: Sequence[str] = ("vi-VN", "vi")) -> Info | None:
    """The info block to air: the first in a wanted language, else the first."""
    wanted = [lang.lower() for lang in languages]
    for lang in wanted:
        for i in alert.infos:
            if i.language.lower() == lang or i.language.lower().split("-")[0] == lang:
                return i
    return alert.infos[0] if alert.infos else None


def issue_phrase(sent: datetime, tz: ZoneInfo = LOCAL_TZ) -> str:
    """When the warning was issued, as the speakers say it: "Bản tin phát lúc 8 giờ ngày 26
    tháng 11" (local time; minutes when not on the hour)."""
    t = sent.astimezone(tz)
    minutes = f" {t.minute} phút" if t.minute else ""
    return f"Bản tin phát lúc {t.hour} giờ{minutes} ngày {t.day} tháng {t.month}"


def _sentence(s: str) -> str:
    s = " ".join(s.split())
    return s if not s or s[-1] in ".!?…:;" else s + "."


def spoken_text(info: Info, sent: datetime, tz: ZoneInfo = LOCAL_TZ) -> str:
    """The issue time, then headline, description, instruction: the same words every repeat."""
    parts = [_sentence(issue_phrase(sent, tz))]
    parts += [_sentence(p) for p in (info.headline or info.event, info.description, info.instruction) if p]
    return " ".join(parts)


def audio_resource(info: Info) -> Resource | None:
    for r in info.resources:
        if r.mime_type.lower().startswith("audio/") and r.uri:
            return r
    return None


# ------------------------------------------------------------------ where
@dataclass(frozen=True)
class ReceiverPoint:
    id: str
    zone: str
    lat: float
    lon: float


@dataclass(frozen=True)
class AreaMatch:
    zones: frozenset[str]         # every zone reached, whole or in part (subtrees included)
    targets: tuple[str, ...]      # the zones reached whole (a geocode), fewest ids (sorted)
    receivers: tuple[str, ...]    # receivers inside a polygon/circle
    by_geocode: tuple[str, ...]   # zones a geocode named
    #: zones reached in part: (zone, the receivers of it inside a polygon/circle), sorted;
    #: only those receivers hear it (a zone a geocode reaches whole is not here)
    parts: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _haversine_km(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    p1, p2 = np.radians(lat), np.radians(lats)
    dphi, dlmb = p2 - p1, np.radians(lons - lon)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return np.asarray(6371.0088 * 2 * np.arcsin(np.sqrt(np.minimum(a, 1.0))))


class AreaIndex:
    """Zones by administrative code, receivers by coordinates (built once per tree change).

    The receivers are kept sorted by id, with their zones as small integers, so a polygon over
    thousands of them is matched, grouped by zone and listed in order with array operations
    (no Python loop, no sort per receiver in front of an alert's first packet)."""

    def __init__(self, tree: ZoneTree, codes: Mapping[str, Iterable[str]],
                 receivers: Iterable[ReceiverPoint]) -> None:
        self.tree = tree
        self.by_code: dict[str, list[str]] = {}
        for z in tree.zones.values():
            for c in {z.code, *codes.get(z.id, ())}:
                if c:
                    self.by_code.setdefault(c, []).append(z.id)
        rx = sorted((r for r in receivers if r.zone in tree.zones), key=lambda r: r.id)
        self.rx_ids = [r.id for r in rx]
        self.rx_zones = [r.zone for r in rx]
        self.lats = np.array([r.lat for r in rx], dtype=float)
        self.lons = np.array([r.lon for r in rx], dtype=float)
        self._ids = np.array(self.rx_ids, dtype=object)
        self._zone_names = sorted(set(self.rx_zones))
        number = {z: i for i, z in enumerate(self._zone_names)}
        self._zone_of = np.array([number[z] for z in self.rx_zones], dtype=np.int64)

    def match(self, info: Info, within: frozenset[str] | None = None) -> AreaMatch:
        """Zones a geocode names (and their subtrees), whole; and the receivers inside a
        polygon or circle, across zones: of a zone no geocode reaches, those receivers only
        (`parts`). `within`: only these zones count (drill zones for an Exercise)."""
        named: set[str] = set()
        inside = np.zeros(len(self.rx_ids), dtype=bool)
        for area in info.areas:
            for _name, value in area.geocodes:
                named.update(self.by_code.get(value.strip(), ()))
            for ring in area.polygons:
                poly = Polygon([(lon, lat) for lat, lon in ring])
                if len(self.rx_ids):
                    shape = poly if poly.is_valid else poly.buffer(0)  # a self-crossing ring
                    inside |= shapely.intersects_xy(shape, self.lons, self.lats)  # edges count
            for lat, lon, radius in area.circles:
                if len(self.rx_ids):
                    inside |= _haversine_km(lat, lon, self.lats, self.lons) <= radius
        rx_idx = np.flatnonzero(inside)   # in id order
        whole = self.tree._below(sorted(named))
        if within is not None:
            whole &= within
            named &= within
            ok = [i for i, z in enumerate(self._zone_names) if z in within]
            rx_idx = rx_idx[np.isin(self._zone_of[rx_idx], ok)]
        receivers = tuple(self._ids[rx_idx].tolist())
        # of the zones no geocode reaches whole, the receivers inside, by zone (ids in order)
        part = [i for i, z in enumerate(self._zone_names) if z not in whole]
        sel = rx_idx[np.isin(self._zone_of[rx_idx], part)] if len(part) < len(
            self._zone_names) else rx_idx
        zsel = self._zone_of[sel]
        parts = tuple((self._zone_names[int(c)], tuple(self._ids[sel[zsel == c]].tolist()))
                      for c in np.unique(zsel))
        # address the engine with the fewest ids: a zone whose parent is reached goes with it
        targets = sorted(z for z in whole if self.tree.zones[z].parent not in whole)
        return AreaMatch(frozenset(whole | {z for z, _ in parts}), tuple(targets),
                         receivers, tuple(sorted(named)), parts)

    def drill_zones(self, drill: Iterable[str]) -> frozenset[str]:
        return frozenset(self.tree._below([z for z in drill if z in self.tree.zones]))


# ------------------------------------------------------------------ decisions
@dataclass(frozen=True)
class RuleContext:
    """What the rules need besides the message and the time."""
    area: AreaIndex
    level_rules: Sequence[AlertLevelRule] = tuple(DEFAULT_LEVEL_RULES)
    risk_param: str = "capDoRuiRo"
    repeat_minutes: Mapping[str, float] = field(
        default_factory=lambda: {"emergency": 15.0, "priority": 30.0, "normal": 0.0})
    drill_zones: tuple[str, ...] = ()
    languages: tuple[str, ...] = ("vi-VN", "vi")
    tz: ZoneInfo = LOCAL_TZ


@dataclass(frozen=True)
class Decision:
    """What a message does. `outcome`: air | log | cancel | duplicate."""
    key: Key
    outcome: str
    reason: str
    stops: tuple[Key, ...] = ()         # active alerts to stop now (Update, Cancel)
    level: str | None = None
    risk_level: int | None = None
    risk_colour: str | None = None
    risk_colour_name: str | None = None
    zones: tuple[str, ...] = ()         # every zone reached
    targets: tuple[str, ...] = ()
    receivers: tuple[str, ...] = ()
    by_geocode: tuple[str, ...] = ()
    #: zones reached in part (a polygon/circle): (zone, its receivers inside), see AreaMatch
    parts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    text: str = ""
    language: str = ""
    resource: Resource | None = None
    repeat_every_s: float | None = None
    expires: datetime | None = None
    drill: bool = False

    @property
    def airs(self) -> bool:
        return self.outcome == "air"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "outcome", "reason", "level", "risk_level", "risk_colour", "risk_colour_name",
            "text", "language", "repeat_every_s", "drill")}
        d.update(key=list(self.key), stops=[list(k) for k in self.stops], zones=list(self.zones),
                 targets=list(self.targets), receivers=list(self.receivers),
                 by_geocode=list(self.by_geocode),
                 parts={z: list(r) for z, r in self.parts},
                 expires=self.expires.isoformat() if self.expires else None,
                 resource=None if self.resource is None else {
                     "uri": self.resource.uri, "mime_type": self.resource.mime_type,
                     "digest": self.resource.digest, "size": self.resource.size})
        return d


@dataclass
class Record:
    """An alert the book knows. `state`: active | logged | superseded | cancelled | expired."""
    alert: CapAlert
    decision: Decision
    state: str
    next_at: datetime | None = None
    airings: int = 0


class AlertBook:
    """Every alert received, keyed by (sender, identifier, sent), and what is active."""

    def __init__(self) -> None:
        self.records: dict[Key, Record] = {}
        #: keys a Cancel or Update named before they arrived: they never air
        self.retracted: dict[Key, str] = {}

    def active(self) -> list[Record]:
        return [r for r in self.records.values() if r.state == "active"]

    def receive(self, alert: CapAlert, now: datetime, ctx: RuleContext) -> Decision:
        """Decide and record (AreaMatchesNothing for an alert that would reach no one: nothing
        is recorded then)."""
        key = alert.key
        if key in self.records:
            return Decision(key, "duplicate", "already received: nothing changes")
        d = self.decide(alert, now, ctx)
        self.apply(alert, d, now)
        return d

    def decide(self, alert: CapAlert, now: datetime, ctx: RuleContext) -> Decision:
        key = alert.key
        if key in self.records:
            return Decision(key, "duplicate", "already received: nothing changes")
        if alert.status in NEVER_AIR:
            return Decision(key, "log", NEVER_AIR[alert.status])
        stops = tuple(k for k in alert.references
                      if k in self.records and self.records[k].state == "active")
        if alert.msg_type == "Cancel":
            if not stops:
                return Decision(key, "cancel", "nothing it names is on air", stops=())
            return Decision(key, "cancel", f"cancels {len(stops)} alert(s)", stops=stops)
        if alert.msg_type in ("Ack", "Error"):
            return Decision(key, "log", f"a {alert.msg_type} message: logged")
        if key in self.retracted:
            return Decision(key, "log", f"already {self.retracted[key]} before it arrived")
        if alert.scope != "Public":
            return Decision(key, "log", f"scope {alert.scope}: not for public speakers", stops=stops)
        expires = alert.expires
        if expires is not None and expires <= now:
            return Decision(key, "log", "already expired on arrival: logged, not aired",
                            expires=expires)
        info = choose_info(alert, ctx.languages)
        if info is None:
            return Decision(key, "log", "no <info> block: nothing to air", stops=stops)
        within = None
        drill = alert.status == "Exercise"
        if drill:
            within = ctx.area.drill_zones(ctx.drill_zones)
        where = ctx.area.match(info, within)
        if not where.zones:
            if drill:
                return Decision(key, "log", "an exercise: its area has no zone marked for drills")
            raise AreaMatchesNothing(
                "area_matches_nothing",
                "the alert's area matches no zone (geocode) and no receiver (polygon/circle)",
                areas=[a.description for a in info.areas][:20])
        level, risk = map_level(info, ctx.level_rules, ctx.risk_param)
        colour = RISK_COLOURS.get(risk) if risk is not None else None
        every = float(ctx.repeat_minutes.get(level, 0.0)) * 60.0
        return Decision(
            key, "air", ("an exercise on drill zones" if drill else
                         "updates " + ", ".join(k[1] for k in stops) if stops else "a new alert"),
            stops=stops, level=level, risk_level=risk,
            risk_colour=colour[1] if colour else None, risk_colour_name=colour[0] if colour else None,
            zones=tuple(sorted(where.zones)), targets=where.targets, receivers=where.receivers,
            by_geocode=where.by_geocode, parts=where.parts, text=spoken_text(info, alert.sent, ctx.tz),
            language=info.language, resource=audio_resource(info),
            repeat_every_s=every or None, expires=expires, drill=drill)

    def apply(self, alert: CapAlert, d: Decision, now: datetime) -> None:
        """Record a decision (decide, then air, then apply: the caller airs in between)."""
        if d.outcome == "duplicate":
            return
        gone = "cancelled" if alert.msg_type == "Cancel" else "superseded"
        if alert.msg_type in ("Update", "Cancel") and alert.status not in NEVER_AIR:
            for k in alert.references:
                rec = self.records.get(k)
                if rec is None:
                    self.retracted.setdefault(k, gone)
                elif rec.state == "active":
                    rec.state, rec.next_at = gone, None
        if d.airs:
            nxt = now + timedelta(seconds=d.repeat_every_s) if d.repeat_every_s else None
            if nxt is not None and d.expires is not None and nxt >= d.expires:
                nxt = None
            self.records[d.key] = Record(alert, d, "active", next_at=nxt, airings=1)
        else:
            self.records[d.key] = Record(alert, d, "logged")

    def due(self, now: datetime) -> tuple[list[Record], list[Record]]:
        """(repeats due now, alerts that expired): both marked as done here."""
        repeats, expired = [], []
        for rec in self.records.values():
            if rec.state != "active":
                continue
            exp = rec.decision.expires
            if exp is not None and exp <= now:
                rec.state, rec.next_at = "expired", None
                expired.append(rec)
            elif rec.next_at is not None and rec.next_at <= now:
                repeats.append(rec)
                rec.airings += 1
                every = timedelta(seconds=rec.decision.repeat_every_s or 0)
                nxt = rec.next_at + every
                while nxt <= now:  # a late wake-up airs once, not once per missed period
                    nxt += every
                rec.next_at = nxt if exp is None or nxt < exp else None
        return repeats, expired

    def next_wake(self) -> datetime | None:
        """The earliest time `due` may have something to do."""
        times = [t for r in self.active() for t in (r.next_at, r.decision.expires) if t is not None]
        return min(times) if times else None

    def restore(self, alert: CapAlert, d: Decision, state: str, next_at: datetime | None,
                airings: int) -> None:
        """A record read back from the database at start."""
        self.records[d.key] = Record(alert, replace(d), state, next_at, airings)
