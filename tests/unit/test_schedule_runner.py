"""The schedule runner (control/schedule/runner.py) driven by a simulated clock, with stand-ins
for the store, the broadcast use case and the engine (no database, thread or socket):

- a day of schedules, stepped every 0.25 s as the real runner is: every occurrence is started
  ahead with `start_at` equal to its instant (the engine then airs its first packet on the first
  tick at or after it: streamer/core tests), decided before it, recorded once as started, and
  nothing else is started; the expected instants are written out by hand, not expanded by the
  code under test;
- thousands of idle schedules cost no RRULE expansion between their occurrences; a changed
  schedule is looked at again at once, unchanged ones keep their cached next occurrence."""
from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from control.schedule.runner import ScheduleRunner
from control.schedule.rules import iso

HCM = dt.timezone(dt.timedelta(hours=7))
DAY0 = dt.datetime(2026, 3, 2, 0, 0, tzinfo=HCM)   # a Monday, local midnight


class FakeStore:
    def __init__(self, rows):
        self.rows = rows
        self.version = 1
        self.runs_: dict[tuple[str, str], dict] = {}

    async def all(self):
        return [dict(r) for r in self.rows]

    async def runs(self, frm, to, schedule_id=None):
        return [r for (sid, occ), r in sorted(self.runs_.items())
                if frm <= occ < to and (schedule_id is None or sid == schedule_id)]

    async def decide(self, run):
        key = (run["schedule_id"], run["occurrence"])
        if key in self.runs_:
            return False
        self.runs_[key] = dict(run, decided_at=self.clock())
        return True

    async def redecide(self, sid, occ, from_outcomes, **fields):
        r = self.runs_.get((sid, occ))
        if r is None or r["outcome"] not in from_outcomes:
            return False
        r.update(fields)
        return True

    async def disable(self, sid, reason):
        self.version += 1


class Tree:
    def resolve(self, zones):
        return set(zones)


@dataclass
class Snap:
    id: str


class FakeBroadcasts:
    def __init__(self, clock):
        self.clock = clock
        self.started: list[dict] = []
        self.ended: list[str] = []

    def tree(self):
        return Tree()

    async def start(self, principal, req, *, start_at=None, offset_s=0.0, extra=None):
        bid = f"b{len(self.started)}"
        self.started.append({"id": bid, "at_clock": self.clock(), "start_at": start_at,
                             "offset_s": offset_s, **(extra or {})})
        return Snap(bid)

    def end(self, bid, reason):
        self.ended.append(bid)


class FakePort:
    def zone_status(self):
        return {}

    def broadcasts(self):
        return []

    def broadcast(self, bid):
        return None


def row(sid, start: dt.datetime, rrule=None, exdates=(), duration_s=60.0):
    return {"id": sid, "title": sid, "enabled": True, "start": iso(start), "tz": "Asia/Ho_Chi_Minh",
            "rrule": rrule, "until": None, "exdates": list(exdates), "duration_s": duration_s,
            "on_busy": "wait", "missed": "skip", "missed_window_s": 600.0, "level": "normal",
            "zones": ["xa"], "request": {"zones": ["xa"], "source": {"kind": "tone"}},
            "owner": {"name": "op", "role": "operator", "user_id": None, "scope": []}}


def rig(rows, t0: float, **kw):
    now = [t0]
    store = FakeStore(rows)
    store.clock = lambda: now[0]
    bc = FakeBroadcasts(lambda: now[0])
    runner = ScheduleRunner(store, bc, FakePort(), db=None, emit=lambda ev: None,
                            clock=lambda: now[0], **kw)
    return runner, store, bc, now


def test_a_day_of_schedules_each_started_at_its_instant():
    rows = [
        row("news", DAY0.replace(hour=5), "FREQ=DAILY;BYHOUR=5,17;BYMINUTE=0;BYSECOND=0"),
        row("hourly", DAY0.replace(hour=0, minute=30), "FREQ=HOURLY;BYMINUTE=30;BYSECOND=0",
            duration_s=600),
        row("weekdays", DAY0.replace(hour=6, minute=15, second=30),
            "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"),
        row("sunday", DAY0.replace(hour=8), "FREQ=WEEKLY;BYDAY=SU"),   # not this Monday
        row("once", DAY0.replace(hour=13, minute=7, second=11, microsecond=250_000)),
        row("slots", DAY0.replace(hour=11), "FREQ=DAILY;BYHOUR=11,11,19;BYMINUTE=0,45"),
        row("holiday", DAY0.replace(hour=9), "FREQ=DAILY", exdates=["2026-03-02"]),
        row("midnight", DAY0, "FREQ=DAILY"),
    ]
    expected = {("news", DAY0.replace(hour=5)), ("news", DAY0.replace(hour=17)),
                ("weekdays", DAY0.replace(hour=6, minute=15, second=30)),
                ("once", DAY0.replace(hour=13, minute=7, second=11, microsecond=250_000)),
                ("midnight", DAY0)}
    expected |= {("hourly", DAY0.replace(hour=h, minute=30)) for h in range(24)}
    expected |= {("slots", DAY0.replace(hour=h, minute=m)) for h in (11, 19) for m in (0, 45)}
    t0 = DAY0.timestamp() - 60.0          # a minute before the day starts
    runner, store, bc, now = rig(rows, t0)

    async def day():
        steps = int((86_400 + 120) / 0.25)
        for k in range(steps):
            now[0] = t0 + k * 0.25
            await runner.step(now[0])
    asyncio.run(day())

    in_day = [s for s in bc.started if s["start_at"] < DAY0.timestamp() + 86_400]
    got = {(s["schedule_id"], dt.datetime.fromtimestamp(s["start_at"], HCM)) for s in in_day}
    assert got == expected
    assert len(in_day) == len(expected)        # each once
    for s in in_day:
        at = s["start_at"]
        assert s["occurrence"] == iso(dt.datetime.fromtimestamp(at, dt.UTC))
        assert s["offset_s"] == 0.0
        # prepared ahead (the engine opens the source then), never after its instant
        assert at - runner.prepare_ahead_s - 0.25 <= s["at_clock"] <= at - runner.decide_lead_s
        run = store.runs_[(s["schedule_id"], s["occurrence"])]
        assert run["outcome"] == "started" and run["broadcast_id"] == s["id"]
        # decided before the instant: the engine holds it and starts it on the tick
        assert at - runner.decide_lead_s - 0.25 <= run["decided_at"] <= at
    assert bc.ended == []
    # the cost: a day of 0.25 s steps (345,000+) looked at schedules only near occurrences
    print(f"{runner.looks} looks, {runner.expansions} expansions for {len(expected)} starts")
    assert runner.expansions < 12 * len(expected)


def test_idle_schedules_cost_nothing_between_occurrences_and_changes_apply_at_once():
    base = DAY0.replace(hour=5)
    rows = [row(f"s{i}", base + dt.timedelta(minutes=i % 600), "FREQ=DAILY")
            for i in range(3000)]
    t0 = DAY0.timestamp()                  # midnight: the first occurrence is 5 h away
    runner, store, bc, now = rig(rows, t0)

    async def steps(n, start):
        for k in range(n):
            now[0] = start + k * 0.25
            await runner.step(now[0])
    asyncio.run(steps(1, t0))
    first = runner.expansions
    assert first == 3000                   # each looked at once, at start
    asyncio.run(steps(4 * 3600, t0 + 0.25))   # an hour of steps
    assert runner.expansions == first       # nothing due: no expansion at all
    assert bc.started == []
    # one schedule changed (moved to start in 10 s): only it is looked at again, at once
    rows[7] = dict(rows[7], start=iso(dt.datetime.fromtimestamp(now[0] + 10, dt.UTC)),
                   rrule=None)
    store.version += 1
    asyncio.run(steps(80, now[0] + 0.25))
    assert [s["schedule_id"] for s in bc.started] == ["s7"]
    assert bc.started[0]["start_at"] == float(rows[7]["start"] and
                                              dt.datetime.fromisoformat(
                                                  rows[7]["start"].replace("Z", "+00:00"))
                                              .timestamp())
    assert runner.expansions - first < 100
