"""The schedule calculator, sans IO: when a schedule airs, what to do when its start is missed or
its zones are busy, and which schedules overlap. Time is always a parameter; nothing here reads
a clock, the database or the engine.

Recurrence is RFC 5545 RRULE text expanded by `python-dateutil` (`dateutil.rrule.rrulestr`),
never by hand. A schedule is written in local time in the time zone it was created under
(`tz`, the installation's setting then; default Asia/Ho_Chi_Minh) and stored in UTC with that
zone: the rule is expanded in that zone's wall-clock time, so "06:00 daily" stays 06:00 there
even if the installation's setting changes later (or across a daylight-saving change elsewhere).
"""
from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import DAILY, HOURLY, MONTHLY, WEEKLY, YEARLY, rrulestr
from dateutil.rrule import rrule as RRule

from control.errors import Invalid

UTC = dt.UTC
ON_BUSY = ("wait", "cut", "skip")
MISSED = ("skip", "late", "join")
LEVELS = ("background", "normal", "priority", "emergency")
#: an occurrence decided this late is still "on time" (the runner's wake-up jitter)
ON_TIME_S = 2.0
#: the longest expansion asked of one rule (a listing, a conflict check): bounds the work
MAX_OCCURRENCES = 5000
_ALLOWED_FREQ = (YEARLY, MONTHLY, WEEKLY, DAILY, HOURLY)
#: the most occurrences a rule may have in a day (every 15 minutes): BYMINUTE/BYSECOND lists
#: can make a DAILY rule fire every few seconds, which no programme grid needs
MAX_PER_DAY = 96


def zone_info(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise Invalid("invalid_timezone", f"unknown time zone {name!r}") from None


def parse_instant(text: str, field_name: str = "start") -> dt.datetime:
    """ISO 8601 with an explicit offset (or Z) → aware UTC datetime."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        raise Invalid("invalid_time", f"{field_name}: {text!r} is not an ISO 8601 date-time "
                      "(e.g. 2026-03-01T06:00:00+07:00)") from None
    if t.tzinfo is None:
        raise Invalid("invalid_time", f"{field_name}: {text!r} has no UTC offset; write it "
                      "with one (e.g. +07:00)")
    return t.astimezone(UTC)


def parse_rrule(text: str, start_local: dt.datetime) -> RRule:
    """RFC 5545 RRULE text (with or without the `RRULE:` prefix) anchored at the naive local
    start. Invalid for anything dateutil refuses, several rules, a DTSTART inside, or a rule
    more frequent than hourly."""
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[6:]
    if not body or "\n" in body or "\r" in body or ":" in body or "DTSTART" in body.upper():
        raise Invalid("invalid_rrule", f"not one RFC 5545 RRULE value: {text!r} "
                      "(e.g. FREQ=DAILY;BYHOUR=6,17;BYMINUTE=0)")
    try:
        rule = rrulestr(body, dtstart=start_local)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise Invalid("invalid_rrule", f"invalid RRULE {text!r}: {e}") from None
    if not isinstance(rule, RRule):
        raise Invalid("invalid_rrule", f"invalid RRULE {text!r}")
    if getattr(rule, "_freq", None) not in _ALLOWED_FREQ:
        raise Invalid("invalid_rrule", "a schedule recurs at most hourly (FREQ=MINUTELY and "
                      "SECONDLY are refused)")
    if int(getattr(rule, "_interval", 1)) < 1:
        # dateutil takes INTERVAL=0 and repeats the first instant for ever
        raise Invalid("invalid_rrule", f"invalid RRULE {text!r}: INTERVAL must be 1 or more")
    if not month_days_possible(rule):
        # dateutil would search day by day to the year 9999 for it (7 s of CPU holding the GIL
        # for FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30): the usual typo is refused before that
        raise Invalid("never_airs", f"RRULE {text!r} never airs: none of the months it names "
                      "has the day of the month it names (e.g. 30 February)")
    per_day = times_a_day(rule)
    count = getattr(rule, "_count", None)
    if per_day > MAX_PER_DAY and (count is None or count > MAX_PER_DAY):
        raise Invalid("invalid_rrule", f"a schedule airs at most {MAX_PER_DAY} times a day "
                      f"(RRULE {text!r} can air {per_day} times a day)")
    return rule


#: the most days each month can have (February: 29, leap years)
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def month_days_possible(rule: RRule) -> bool:
    """Whether some month the rule names (BYMONTH, else any) has some day it names (BYMONTHDAY,
    positive or counted from the end); True when it names no day of the month."""
    days = tuple(getattr(rule, "_bymonthday", None) or ()) + \
        tuple(getattr(rule, "_bynmonthday", None) or ())
    if not days:
        return True
    months = getattr(rule, "_bymonth", None) or range(1, 13)
    return any(abs(int(d)) <= _MONTH_DAYS[int(m) - 1] for m in months for d in days)


def times_a_day(rule: RRule) -> int:
    """The most occurrences the rule can have in one day, from its time lists (a day that
    matches gets every hour x minute x second combination), without expanding it."""
    def n(name: str) -> int:
        v = getattr(rule, name, None)
        return len(v) if v else 1
    hours = n("_byhour")
    if getattr(rule, "_freq", None) == HOURLY and not getattr(rule, "_byhour", None):
        hours = -(-24 // max(1, int(getattr(rule, "_interval", 1))))
    return hours * n("_byminute") * n("_bysecond")


@dataclass(frozen=True)
class Exdates:
    """Exception dates: whole local days (holidays, Tết) and exact instants (UTC)."""
    days: frozenset[dt.date] = frozenset()
    instants: frozenset[dt.datetime] = frozenset()

    @classmethod
    def parse(cls, items: Iterable[str]) -> Exdates:
        days: set[dt.date] = set()
        instants: set[dt.datetime] = set()
        for s in items:
            s = s.strip()
            if len(s) == 10:
                try:
                    days.add(dt.date.fromisoformat(s))
                    continue
                except ValueError:
                    pass
            instants.add(parse_instant(s, "exdates"))
        return cls(frozenset(days), frozenset(instants))


@dataclass(frozen=True)
class When:
    """When a schedule airs: its first start (UTC), the zone its local times are in, an
    optional RRULE, the end of its validity window, its exceptions and how long each
    occurrence lasts."""
    start: dt.datetime
    tz: str = "Asia/Ho_Chi_Minh"
    rrule: str | None = None
    until: dt.datetime | None = None
    exdates: Exdates = field(default_factory=Exdates)
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        zone_info(self.tz)
        if self.rrule is not None:
            self._rule()  # raise Invalid now, not at the first expansion
        if self.until is not None and self.until < self.start:
            raise Invalid("invalid_time", "until is before start")

    @functools.cached_property
    def _parsed(self) -> RRule:
        assert self.rrule is not None
        return parse_rrule(self.rrule, self.start.astimezone(zone_info(self.tz))
                           .replace(tzinfo=None))

    def _rule(self) -> RRule:
        return self._parsed  # parsed once per When: rrulestr is the costly part

    def starts(self, frm: dt.datetime, to: dt.datetime) -> list[dt.datetime]:
        """Occurrence starts (UTC) in [frm, to), in order; at most MAX_OCCURRENCES."""
        return list(self._iter(frm, to, MAX_OCCURRENCES))

    def first_start(self, after: dt.datetime, horizon_days: int = 400) -> dt.datetime | None:
        """The first occurrence at or after `after`: stops there (what the runner caches)."""
        return next(iter(self._iter(after, after + dt.timedelta(days=horizon_days), 1)), None)

    def _iter(self, frm: dt.datetime, to: dt.datetime, limit: int) -> Iterable[dt.datetime]:
        n = 0
        tz = zone_info(self.tz)
        if self.rrule is None:
            cands: Iterable[dt.datetime] = [self.start]
        else:
            rule = self._rule()
            lo = frm.astimezone(tz).replace(tzinfo=None) - dt.timedelta(days=1)
            hi = to.astimezone(tz).replace(tzinfo=None) + dt.timedelta(days=1)
            cands = _between(rule, lo, hi, tz)
        ex = self.exdates
        for t in cands:
            if t >= to or n >= limit:
                return
            if t < frm or t < self.start:
                continue
            if self.until is not None and t > self.until:
                return
            if t in ex.instants or t.astimezone(tz).date() in ex.days:
                continue
            n += 1
            yield t

    def next_start(self, after: dt.datetime, horizon_days: int = 400) -> dt.datetime | None:
        found = self.starts(after, after + dt.timedelta(days=horizon_days))
        return found[0] if found else None

    def overlapping(self, frm: dt.datetime, to: dt.datetime) -> list[dt.datetime]:
        """Starts of the occurrences that are on air at some point of [frm, to)."""
        d = dt.timedelta(seconds=max(self.duration_s, 0.0))
        return [t for t in self.starts(frm - d, to) if t + d > frm or t >= frm]


def _between(rule: RRule, lo: dt.datetime, hi: dt.datetime, tz: ZoneInfo
             ) -> Iterable[dt.datetime]:
    for local in rule.xafter(lo, inc=True):
        if local >= hi:
            return
        # fold=0: an ambiguous wall time (a DST fall-back) is its first instance; a wall time
        # in a DST gap is interpreted with the offset before the gap (zoneinfo's rule)
        yield local.replace(tzinfo=tz).astimezone(UTC)


# ------------------------------------------------------------------ decisions at start time
@dataclass(frozen=True)
class Decision:
    """What the runner does with one occurrence: `action` start | skip | hold (wait for the
    zones, then decide again); `offset_s` where to start in the item (join in progress);
    `stop` broadcasts to end first (on_busy = cut); `outcome` the word recorded."""
    action: str
    outcome: str
    reason: str = ""
    offset_s: float = 0.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Holder:
    """A broadcast on air in one of the schedule's zones."""
    broadcast: str
    level: int
    zones: tuple[str, ...] = ()
    scheduled: bool = False


def decide(*, scheduled: dt.datetime, now: dt.datetime, level: int, on_busy: str, missed: str,
           window_s: float, duration_s: float, holders: Sequence[Holder] = ()) -> Decision:
    """The decision for an occurrence due at `scheduled`, taken at `now`, given what holds
    its zones. A higher level holding a zone makes the start *missed* while it holds (hold);
    lateness past ON_TIME_S is a missed start: skip, start late within `window_s`, or join in
    progress at the offset (only while the occurrence would still be on air). A same-level
    holder: wait behind it, cut it, or skip, as `on_busy` says."""
    late_s = (now - scheduled).total_seconds()
    higher = [h for h in holders if h.level > level]
    if higher:
        if late_s > max(window_s if missed == "late" else 0.0,
                        duration_s if missed == "join" else 0.0, ON_TIME_S) + ON_TIME_S:
            return Decision("skip", "missed",
                            f"zones held by {higher[0].broadcast} at a higher level until the "
                            f"{missed} window passed")
        return Decision("hold", "held", f"zones held by {higher[0].broadcast} at a higher level")
    offset = 0.0
    outcome = "started"
    if late_s > ON_TIME_S:
        if missed == "skip":
            return Decision("skip", "missed", f"start missed by {late_s:.0f} s (policy skip)")
        if missed == "late":
            if late_s > window_s:
                return Decision("skip", "missed", f"start missed by {late_s:.0f} s, past the "
                                f"{window_s:.0f} s window (policy late)")
            outcome = "started_late"
        else:  # join
            if duration_s <= 0 or late_s >= duration_s:
                return Decision("skip", "missed", f"start missed by {late_s:.0f} s and the "
                                "programme is over (policy join)")
            offset = late_s
            outcome = "joined"
    same = [h for h in holders if h.level == level]
    if same:
        if on_busy == "skip":
            return Decision("skip", "skipped_busy",
                            f"zones busy with {same[0].broadcast} at the same level (on_busy skip)")
        if on_busy == "cut":
            return Decision("start", outcome, f"cut {', '.join(h.broadcast for h in same)}",
                            offset, tuple(h.broadcast for h in same))
        return Decision("start", outcome, f"waits behind {same[0].broadcast} (on_busy wait)",
                        offset)
    return Decision("start", outcome, "", offset)


# ------------------------------------------------------------------ conflicts
@dataclass(frozen=True)
class Slot:
    """A schedule as the conflict check sees it: its times, the zones it reaches, its level."""
    id: str
    when: When
    zones: frozenset[str]
    level: int
    on_busy: str = "wait"
    title: str = ""


def winner(a: Slot, b: Slot, a_start: dt.datetime, b_start: dt.datetime) -> str:
    """Who airs in the shared zones: the higher level; at the same level the one that started
    first (the later one waits, cuts or skips as its on_busy says)."""
    if a.level != b.level:
        return a.id if a.level > b.level else b.id
    first, second = (a, b) if (a_start, a.id) <= (b_start, b.id) else (b, a)
    if second.on_busy == "cut":
        return second.id
    return first.id


def conflicts(new: Slot, others: Iterable[Slot], frm: dt.datetime, to: dt.datetime,
              limit: int = 50) -> list[dict]:
    """Where `new` overlaps others in [frm, to): the other schedule, when, the shared zones,
    and who wins by level (or by order and on_busy at the same level)."""
    out: list[dict] = []
    mine = new.when.starts(frm, to)
    if not mine:
        return out
    d_new = dt.timedelta(seconds=max(new.when.duration_s, 1.0))
    for o in others:
        if o.id == new.id:
            continue
        shared = new.zones & o.zones
        if not shared:
            continue
        d_o = dt.timedelta(seconds=max(o.when.duration_s, 1.0))
        theirs = o.when.starts(frm - d_o, to)
        j = 0
        for s in mine:
            e = s + d_new
            while j < len(theirs) and theirs[j] + d_o <= s:
                j += 1
            k = j
            while k < len(theirs) and theirs[k] < e:
                w = winner(new, o, s, theirs[k])
                first = new.id if (s, new.id) <= (theirs[k], o.id) else o.id
                why = ("higher level" if new.level != o.level else
                       "same level, first come" if w == first else
                       "same level, cuts in (on_busy cut)")
                out.append({"schedule": o.id, "title": o.title, "at": iso(max(s, theirs[k])),
                            "start": iso(s), "other_start": iso(theirs[k]),
                            "zones": sorted(shared)[:20], "level": LEVELS[new.level],
                            "other_level": LEVELS[o.level], "winner": w, "why": why})
                if len(out) >= limit:
                    return out
                k += 1
    return out


def iso(t: dt.datetime) -> str:
    """The house's UTC format: 2026-03-01T06:00:00Z (whole seconds shown as such)."""
    t = t.astimezone(UTC)
    if t.microsecond:
        return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")
