"""The schedule calculator (control/schedule/rules.py): occurrences over simulated years, leap
days, exceptions, several slots a day, time zones, missed-start and busy-zone decisions,
conflicts."""
from __future__ import annotations

import datetime as dt

import pytest

from control.errors import Invalid
from control.schedule.rules import (ON_TIME_S, Exdates, Holder, Slot, When, conflicts, decide,
                                    parse_instant, parse_rrule, times_a_day)

UTC = dt.UTC
HCM = dt.timezone(dt.timedelta(hours=7))


def t(s: str) -> dt.datetime:
    return parse_instant(s)


def local_hm(x: dt.datetime, tz: str = "Asia/Ho_Chi_Minh") -> tuple[int, int]:
    from zoneinfo import ZoneInfo
    lx = x.astimezone(ZoneInfo(tz))
    return lx.hour, lx.minute


@pytest.mark.parametrize("year,days", [(2027, 365), (2028, 366), (2100, 365)])
def test_daily_over_a_year_counts_leap_days(year: int, days: int) -> None:
    w = When(t(f"{year}-01-01T05:00:00+07:00"), rrule="FREQ=DAILY")
    starts = w.starts(t(f"{year}-01-01T00:00:00+07:00"), t(f"{year + 1}-01-01T00:00:00+07:00"))
    assert len(starts) == days
    assert all(local_hm(s) == (5, 0) for s in starts)
    assert all((b - a) == dt.timedelta(days=1) for a, b in zip(starts, starts[1:]))
    # stored UTC: 05:00 in Vietnam is 22:00 UTC the day before
    assert starts[0] == dt.datetime(year - 1, 12, 31, 22, 0, tzinfo=UTC)


def test_leap_day_rule_airs_only_in_leap_years() -> None:
    w = When(t("2025-02-28T06:00:00+07:00"), rrule="FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29")
    starts = w.starts(t("2025-01-01T00:00:00Z"), t("2037-01-01T00:00:00Z"))
    assert [s.astimezone(HCM).date() for s in starts] == [
        dt.date(y, 2, 29) for y in (2028, 2032, 2036)]


def test_several_slots_per_day_and_exceptions_over_a_year() -> None:
    ex = Exdates.parse(["2026-02-16", "2026-02-17", "2026-02-18",   # Tết Bính Ngọ
                        "2026-09-02",                                # Quốc khánh
                        "2026-03-10T17:00:00+07:00"])                # one evening slot only
    w = When(t("2026-01-01T06:00:00+07:00"), rrule="FREQ=DAILY;BYHOUR=6,17;BYMINUTE=0",
             exdates=ex)
    starts = w.starts(t("2026-01-01T00:00:00+07:00"), t("2027-01-01T00:00:00+07:00"))
    assert len(starts) == 365 * 2 - 4 * 2 - 1
    days = {s.astimezone(HCM).date() for s in starts}
    assert dt.date(2026, 2, 17) not in days and dt.date(2026, 9, 2) not in days
    march10 = [local_hm(s) for s in starts if s.astimezone(HCM).date() == dt.date(2026, 3, 10)]
    assert march10 == [(6, 0)]
    assert {local_hm(s) for s in starts} == {(6, 0), (17, 0)}


def test_weekdays_weekly_every_other_week_and_first_monday() -> None:
    frm, to = t("2026-01-01T00:00:00+07:00"), t("2027-01-01T00:00:00+07:00")
    wd = When(t("2026-01-01T17:00:00+07:00"), rrule="FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR")
    starts = wd.starts(frm, to)
    assert len(starts) == 261  # weekdays in 2026
    assert all(s.astimezone(HCM).weekday() < 5 for s in starts)
    biweekly = When(t("2026-01-05T07:00:00+07:00"), rrule="FREQ=WEEKLY;INTERVAL=2;BYDAY=MO")
    bw = biweekly.starts(frm, to)
    assert all((b - a) == dt.timedelta(days=14) for a, b in zip(bw, bw[1:]))
    assert len(bw) == 26
    first_monday = When(t("2026-01-05T08:00:00+07:00"), rrule="FREQ=MONTHLY;BYDAY=1MO")
    fm = first_monday.starts(frm, to)
    assert len(fm) == 12
    assert all(s.astimezone(HCM).day <= 7 and s.astimezone(HCM).weekday() == 0 for s in fm)
    on_15th = When(t("2026-01-15T09:30:00+07:00"), rrule="FREQ=MONTHLY;BYMONTHDAY=15")
    assert [s.astimezone(HCM).day for s in on_15th.starts(frm, to)] == [15] * 12


def test_validity_window_and_one_off() -> None:
    w = When(t("2026-03-01T06:00:00+07:00"), rrule="FREQ=DAILY",
             until=t("2026-03-05T23:59:59+07:00"))
    assert len(w.starts(t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z"))) == 5
    once = When(t("2026-03-01T06:00:00+07:00"))
    assert once.starts(t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z")) == [
        t("2026-02-28T23:00:00Z")]
    assert once.starts(t("2026-03-01T00:00:00Z"), t("2027-01-01T00:00:00Z")) == []
    assert once.next_start(t("2026-02-28T22:59:59Z")) == t("2026-02-28T23:00:00Z")
    with pytest.raises(Invalid):
        When(t("2026-03-01T06:00:00+07:00"), rrule="FREQ=DAILY",
             until=t("2026-02-01T00:00:00Z"))


def test_local_time_holds_whatever_the_installation_setting() -> None:
    """A schedule made under Asia/Ho_Chi_Minh airs at 06:00 there even when read by a server
    whose setting is now UTC: its zone travels with it. In a zone with daylight saving the
    wall-clock time holds across the change (the UTC instant moves)."""
    made_in_vn = When(t("2026-03-01T06:00:00+07:00"), tz="Asia/Ho_Chi_Minh", rrule="FREQ=DAILY")
    # the reading server's setting plays no part: every start is 06:00 in Vietnam
    starts = made_in_vn.starts(t("2026-03-01T00:00:00Z"), t("2026-12-01T00:00:00Z"))
    assert {local_hm(s) for s in starts} == {(6, 0)}
    assert {local_hm(s, "UTC") for s in starts} == {(23, 0)}
    berlin = When(t("2026-03-20T06:00:00+01:00"), tz="Europe/Berlin", rrule="FREQ=DAILY")
    bs = berlin.starts(t("2026-03-20T00:00:00Z"), t("2026-04-10T00:00:00Z"))
    assert {local_hm(s, "Europe/Berlin") for s in bs} == {(6, 0)}
    assert {s.hour for s in bs} == {5, 4}  # UTC+1 then UTC+2 after 29 March


@pytest.mark.parametrize("bad", ["FREQ=FORTNIGHTLY", "BYDAY=MO", "FREQ=DAILY;BYHOUR=25",
                                 "FREQ=MINUTELY", "FREQ=SECONDLY;COUNT=3",
                                 "DTSTART:20260101T000000\nRRULE:FREQ=DAILY", " ", "garbage",
                                 "FREQ=DAILY;UNTIL=notadate"])
def test_invalid_rrules_are_refused(bad: str) -> None:
    with pytest.raises(Invalid) as e:
        When(t("2026-03-01T06:00:00+07:00"), rrule=bad)
    assert e.value.code == "invalid_rrule"


def test_rrule_prefix_and_count() -> None:
    r = parse_rrule("RRULE:FREQ=DAILY;COUNT=3", dt.datetime(2026, 1, 1, 6))
    assert len(list(r)) == 3


@pytest.mark.parametrize("bad", ["FREQ=DAILY;INTERVAL=0", "FREQ=WEEKLY;INTERVAL=0;BYDAY=MO",
                                 "FREQ=DAILY;BYHOUR=6,7,8;BYMINUTE=0,1,2,3,4,5,6,7,8,9,10,11,"
                                 "12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,"
                                 "32,33,34,35;BYSECOND=0,10,20,30,40,50",
                                 "FREQ=HOURLY;BYMINUTE=0,5,10,15,20,25,30,35,40,45,50,55"])
def test_rules_that_repeat_an_instant_or_fire_every_few_minutes_are_refused(bad: str) -> None:
    """INTERVAL=0 repeats the first instant for ever in dateutil (a runner looking past it
    would spin); BYMINUTE/BYSECOND lists can make a daily rule fire every few seconds."""
    with pytest.raises(Invalid) as e:
        When(t("2026-03-01T06:00:00+07:00"), rrule=bad)
    assert e.value.code == "invalid_rrule"


@pytest.mark.parametrize("bad", ["FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30;BYHOUR=6;BYMINUTE=0",
                                 "FREQ=YEARLY;BYMONTH=4,6,9,11;BYMONTHDAY=31",
                                 "FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=-30,-31"])
def test_a_day_no_month_it_names_has_is_refused_at_once(bad: str) -> None:
    """dateutil searches such a rule day by day to the year 9999 (seconds of CPU)."""
    import time
    t0 = time.perf_counter()
    with pytest.raises(Invalid) as e:
        When(t("2026-03-01T06:00:00+07:00"), rrule=bad)
    assert e.value.code == "never_airs" and time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("ok", ["FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",     # leap years
                                "FREQ=MONTHLY;BYMONTHDAY=31",              # months with 31
                                "FREQ=MONTHLY;BYMONTH=2,3;BYMONTHDAY=30",  # March
                                "FREQ=MONTHLY;BYMONTHDAY=-1", "FREQ=WEEKLY;BYDAY=MO"])
def test_rules_with_a_possible_day_are_kept(ok: str) -> None:
    w = When(t("2026-03-01T06:00:00+07:00"), rrule=ok)
    assert w.first_start(t("2026-03-01T00:00:00+07:00"), horizon_days=2000) is not None


def test_every_quarter_hour_is_the_densest_grid_allowed() -> None:
    w = When(t("2026-03-01T00:00:00+07:00"), rrule="FREQ=HOURLY;BYMINUTE=0,15,30,45")
    assert len(w.starts(t("2026-03-01T00:00:00+07:00"), t("2026-03-02T00:00:00+07:00"))) == 96
    assert times_a_day(parse_rrule("FREQ=HOURLY;INTERVAL=3", dt.datetime(2026, 1, 1))) == 8
    assert times_a_day(parse_rrule("FREQ=DAILY;BYHOUR=5,17;BYMINUTE=0,30",
                                   dt.datetime(2026, 1, 1))) == 4
    # a dense rule with a small COUNT is harmless
    When(t("2026-03-01T06:00:00+07:00"), rrule="FREQ=HOURLY;COUNT=5;BYMINUTE=0,1,2,3,4,5,6")


def test_count_and_until_bound_the_occurrences_wherever_the_window_starts() -> None:
    w = When(t("2026-03-01T06:00:00+07:00"), rrule="FREQ=DAILY;COUNT=3")
    all3 = w.starts(t("2026-02-01T00:00:00Z"), t("2026-04-01T00:00:00Z"))
    assert [local_hm(x) for x in all3] == [(6, 0)] * 3
    assert w.starts(t("2026-03-02T00:00:00Z"), t("2026-04-01T00:00:00Z")) == all3[2:]
    assert w.first_start(t("2026-03-03T12:00:00Z")) is None
    u = When(t("2026-03-01T06:00:00+07:00"), rrule="FREQ=DAILY;UNTIL=20260305T060000")
    assert len(u.starts(t("2026-02-01T00:00:00Z"), t("2026-04-01T00:00:00Z"))) == 5
    assert len(u.starts(t("2026-03-03T00:00:00Z"), t("2026-03-04T00:00:00Z"))) == 1


@pytest.mark.parametrize("bad", ["2026-03-01T06:00:00", "tomorrow", "2026-13-01T00:00:00Z"])
def test_instants_need_an_offset(bad: str) -> None:
    with pytest.raises(Invalid):
        parse_instant(bad)


# ------------------------------------------------------------------ decisions
S = t("2026-03-01T06:00:00+07:00")


def at(seconds: float) -> dt.datetime:
    return S + dt.timedelta(seconds=seconds)


def test_on_time_start_and_same_level_policies() -> None:
    d = decide(scheduled=S, now=at(0), level=1, on_busy="wait", missed="skip", window_s=0,
               duration_s=600)
    assert (d.action, d.outcome, d.offset_s) == ("start", "started", 0.0)
    busy = [Holder("b1", 1)]
    assert decide(scheduled=S, now=at(0), level=1, on_busy="wait", missed="skip", window_s=0,
                  duration_s=600, holders=busy).action == "start"
    cut = decide(scheduled=S, now=at(0), level=1, on_busy="cut", missed="skip", window_s=0,
                 duration_s=600, holders=busy)
    assert cut.action == "start" and cut.stop == ("b1",)
    skip = decide(scheduled=S, now=at(0), level=1, on_busy="skip", missed="skip", window_s=0,
                  duration_s=600, holders=busy)
    assert (skip.action, skip.outcome) == ("skip", "skipped_busy")
    # a lower-level holder never stops a start (the engine preempts it)
    low = decide(scheduled=S, now=at(0), level=2, on_busy="skip", missed="skip", window_s=0,
                 duration_s=600, holders=busy)
    assert low.action == "start" and low.stop == ()


def test_missed_policies() -> None:
    late = ON_TIME_S + 58
    kw = dict(scheduled=S, now=at(late), level=1, on_busy="wait", duration_s=600)
    assert decide(missed="skip", window_s=900, **kw).outcome == "missed"
    d = decide(missed="late", window_s=900, **kw)
    assert (d.action, d.outcome, d.offset_s) == ("start", "started_late", 0.0)
    assert decide(missed="late", window_s=30, **kw).action == "skip"
    j = decide(missed="join", window_s=0, **kw)
    assert (j.action, j.outcome) == ("start", "joined") and j.offset_s == pytest.approx(late)
    over = decide(scheduled=S, now=at(601), level=1, on_busy="wait", duration_s=600,
                  missed="join", window_s=0)
    assert over.action == "skip"
    # within the on-time grace: neither late nor joined
    assert decide(missed="skip", window_s=0, scheduled=S, now=at(ON_TIME_S - 0.1), level=1,
                  on_busy="wait", duration_s=600).outcome == "started"


def test_a_higher_level_holder_holds_then_the_missed_policy_decides() -> None:
    em = [Holder("alert", 3)]
    kw = dict(scheduled=S, level=1, on_busy="wait", duration_s=600, holders=em)
    assert decide(now=at(0), missed="skip", window_s=0, **kw).action == "hold"
    # still held long after: the window is gone, decided as missed
    assert decide(now=at(700), missed="join", window_s=0, **kw).outcome == "missed"
    # the emergency ended after 120 s: the policy applies to the lateness
    free = dict(scheduled=S, level=1, on_busy="wait", duration_s=600, now=at(120))
    assert decide(missed="skip", window_s=0, **free).outcome == "missed"
    assert decide(missed="late", window_s=300, **free).outcome == "started_late"
    assert decide(missed="join", window_s=0, **free).offset_s == pytest.approx(120)


# ------------------------------------------------------------------ conflicts
def slot(id_: str, start: str, level: int, zones: set[str], rrule: str | None = None,
         duration: float = 1800, on_busy: str = "wait") -> Slot:
    return Slot(id_, When(t(start), rrule=rrule, duration_s=duration), frozenset(zones), level,
                on_busy)


def test_conflicts_name_the_overlap_and_the_winner() -> None:
    frm, to = t("2026-03-01T00:00:00+07:00"), t("2026-03-08T00:00:00+07:00")
    news = slot("news", "2026-03-01T06:00:00+07:00", 1, {"xa-1", "xa-2"}, "FREQ=DAILY")
    music = slot("music", "2026-03-01T06:15:00+07:00", 0, {"xa-2"}, "FREQ=DAILY")
    other = slot("other", "2026-03-01T06:00:00+07:00", 2, {"xa-9"}, "FREQ=DAILY")
    bulletin = slot("bulletin", "2026-03-03T06:20:00+07:00", 2, {"xa-1"})
    found = conflicts(news, [music, other, bulletin], frm, to)
    by = {}
    for c in found:
        by.setdefault(c["schedule"], []).append(c)
    assert "other" not in by                      # no shared zone
    assert len(by["music"]) == 7 and all(c["winner"] == "news" for c in by["music"])
    assert by["music"][0]["zones"] == ["xa-2"]
    assert [c["winner"] for c in by["bulletin"]] == ["bulletin"]  # higher level wins
    assert by["bulletin"][0]["why"] == "higher level"
    # back to back is not an overlap
    after = slot("after", "2026-03-01T06:30:00+07:00", 1, {"xa-1"})
    assert conflicts(news, [after], frm, to) == []
    # same level: first come wins unless the later one cuts in
    late_cut = slot("cut", "2026-03-01T06:10:00+07:00", 1, {"xa-1"}, on_busy="cut")
    c = conflicts(news, [late_cut], frm, to)
    assert c[0]["winner"] == "cut" and "cuts in" in c[0]["why"]
    late_wait = slot("wait", "2026-03-01T06:10:00+07:00", 1, {"xa-1"})
    assert conflicts(news, [late_wait], frm, to)[0]["winner"] == "news"
