"""After a crash: what was on air is recorded as interrupted, and an emergency or priority
broadcast that had not finished (nor expired) airs again, from the start of the repeat it was
in, with its attention signal first.

What makes that possible:
- `RecordingRuntime` keeps, for every broadcast it starts, the `StartBroadcast` command as data
  (`port.command_to_dict`); the as-run writer stores it with the broadcast's row (migration 7).
- the as-run writer checkpoints the position of urgent broadcasts every second, so the row
  says which repeat was playing when the process died.
- `plan_resume` (pure) turns the stored row + command into the command that resumes it;
  `Recovery` runs it at start-up, through the same port, under the same broadcast id (an
  owner's stop, an alert's cancel or update reach it as before). The record says so: the
  as-run event `broadcast.recovered` (reason "resumed after restart") and the broadcast's
  details carry `recovered`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streamer.ingest.catalogue import attention_part, duration_of
from streamer.mixer.arbitration import Level
from streamer.port import (BroadcastSnapshot, Command, FileAudio, LiveAudio, Programme,
                           SilenceAudio, StartBroadcast, StopBroadcast, TtsAudio,
                           command_from_dict, command_to_dict)
from streamer.runtime import Runtime
from streamer.timefmt import utc_iso

log = logging.getLogger("loa.control")

RESUMED_NOTE = "resumed after restart"
RESUMABLE_LEVELS = (Level.EMERGENCY, Level.PRIORITY)


class CommandBook:
    """The commands of broadcasts started and not yet stored, by broadcast id (thread-safe:
    starts come from worker threads, the as-run writer takes them on the loop). Bounded.

    A command is kept as given (commands are frozen) and written as data
    (`port.command_to_dict`) when taken, by the as-run writer, after the start: an alert's
    polygon names thousands of addresses, and their conversion (~1 ms of the event loop's CPU,
    several ms of wall time on a core the fan-out shares) must not sit in front of the first
    packet."""

    def __init__(self, limit: int = 10_000) -> None:
        self._items: OrderedDict[str, Command] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def put(self, broadcast_id: str, command: Command) -> None:
        with self._lock:
            self._items[broadcast_id] = command
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def take(self, broadcast_id: str) -> dict[str, Any] | None:
        with self._lock:
            cmd = self._items.pop(broadcast_id, None)
        return command_to_dict(cmd) if cmd is not None else None


class RecordingRuntime(Runtime):
    """The engine runtime, keeping each started broadcast's command as data (ids are given
    here when the submitter left them empty, the runtime's own format)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = CommandBook()
        #: told of every start and stop the engine took (an origin publishes them, issue 19)
        self.taps: list[Callable[[Command], None]] = []

    def submit(self, cmd: Command) -> BroadcastSnapshot | None:
        if isinstance(cmd, StartBroadcast) and not isinstance(cmd.source, LiveAudio):
            if not cmd.id:
                cmd = dataclasses.replace(cmd, id=secrets.token_hex(6))
            self.commands.put(cmd.id, cmd)   # as data when the as-run writer takes it
            try:
                snap = super().submit(cmd)
            except BaseException:
                self.commands.take(cmd.id)
                raise
        else:
            snap = super().submit(cmd)
        if self.taps and isinstance(cmd, (StartBroadcast, StopBroadcast)):
            for tap in self.taps:
                tap(cmd)
        return snap


# ------------------------------------------------------------------ the decision (pure)
@dataclass(frozen=True, slots=True)
class ResumePlan:
    command: StartBroadcast | None   # None: not resumed (`reason` says why)
    reason: str
    repeat: int = 1                  # the repeat it resumes from (1-based)
    repeats: int = 1                 # of how many


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def current_repeat(prog: Programme, position_s: float, message_s: float | None = None) -> int:
    """0-based index of the repeat playing at `position_s` of a programme ([attention]
    message [pause message]...); 0 when the message's length is unknown. `message_s`: the
    message's length when the description does not say it (a text, measured by rendering)."""
    message = message_s if message_s is not None else duration_of(prog.message)
    if not message or prog.repeat <= 1:
        return 0
    p = position_s - (attention_part(prog.attention).duration_s if prog.attention else 0.0)
    if p <= 0:
        return 0
    return min(prog.repeat - 1, int(math.floor(p / (message + max(0.0, prog.repeat_pause_s)))))


def plan_resume(row: dict[str, Any], now: float, within_s: float,
                default_attention: str | None = "chime",
                path_ok: Callable[[str], bool] = os.path.isfile,
                length_of: Callable[[TtsAudio], float | None] | None = None) -> ResumePlan:
    """Whether and how to resume an interrupted broadcast: `row` is its stored row (state,
    data with position_s, updated_at: the last sign of life, command). Emergency and priority
    broadcasts only, not live, seen alive within `within_s`, not past their last repeat.
    `length_of`: a text message's length in seconds (None: unknown), which its description
    does not carry (the TTS service renders it, from its cache after a crash)."""
    data = row.get("data") or {}
    cmd_d = row.get("command")
    if not cmd_d:
        return ResumePlan(None, "no stored command (live, or recorded before this version)")
    try:
        cmd = command_from_dict(cmd_d)
    except (ValueError, KeyError, TypeError) as e:
        return ResumePlan(None, f"stored command unreadable: {e}")
    if not isinstance(cmd, StartBroadcast):
        return ResumePlan(None, "stored command is not a start")
    if cmd.level not in RESUMABLE_LEVELS:
        return ResumePlan(None, f"level {cmd.level.label} is not resumed")
    if isinstance(cmd.source, LiveAudio):
        return ResumePlan(None, "live audio cannot be resumed")
    if (cmd.details or {}).get("schedule_id"):
        return ResumePlan(None, "a schedule's broadcast: its missed-start policy decides "
                                "(control/schedule/runner.py)")
    seen = _epoch(row.get("updated_at")) or _epoch(data.get("started_at")) or 0.0
    if now - seen > within_s:
        return ResumePlan(None, f"interrupted {now - seen:.0f} s ago (resume_within_s "
                                f"{within_s:.0f})")
    src = cmd.source
    position = float(data.get("position_s") or 0.0)
    if isinstance(src, Programme):
        prog = src
    else:
        prog = Programme(src, attention=default_attention if cmd.level >= Level.EMERGENCY
                         and default_attention else None, repeat=1)
        if position <= 0 or data.get("state") == "queued":
            prog = dataclasses.replace(prog, attention=None)  # it had not begun: as it was
    message_s = length_of(prog.message) if (
        length_of is not None and isinstance(prog.message, TtsAudio)) else None
    k = current_repeat(prog, position, message_s)
    total = duration_of(prog)
    if total is None and message_s is not None:
        total = duration_of(dataclasses.replace(prog, message=SilenceAudio(message_s)))
    if (total and position >= total) and data.get("state") not in ("queued",):
        return ResumePlan(None, "it had played to its end")
    message = prog.message
    if isinstance(message, FileAudio) and (message.path.startswith("/proc/")
                                           or not path_ok(message.path)):
        real = str((cmd.details or {}).get("path") or "")
        if real and path_ok(real) and not real.startswith("/proc/"):
            message = dataclasses.replace(message, path=real)  # a pinned file of the last run
        else:
            return ResumePlan(None, f"its file is gone ({message.path})")
    if isinstance(src, Programme) or k > 0:
        new_src: Any = dataclasses.replace(prog, message=message, repeat=prog.repeat - k)
    else:
        new_src = message  # the source itself (a pinned file's path made real)
        if prog.attention:
            new_src = Programme(new_src, attention=prog.attention, repeat=1)
    note = {"note": RESUMED_NOTE, "repeat": k + 1, "repeats": prog.repeat,
            "interrupted_position_s": round(position, 3),
            "interrupted_at": row.get("updated_at")}
    details = dict(cmd.details or {}, recovered=note)
    new = dataclasses.replace(cmd, source=new_src, details=details, start_at=None,
                              offset_s=0.0, duration_s=None)
    return ResumePlan(new, RESUMED_NOTE, k + 1, prog.repeat)


# ------------------------------------------------------------------ at start-up
class Recovery:
    """`mark_interrupted` before the engine starts; `resume` once it runs (and the alerts know
    what is active). Records go through the write-ahead queue: a full disk does not stop it."""

    def __init__(self, db: Any, records: Any, port: Any, settings: Any,
                 alerts: Any = None) -> None:
        self.db = db
        self.records = records       # control.journal.WriteAhead
        self.port = port
        self.settings = settings
        self.alerts = alerts         # control.alerts.intake.AlertIntake (its cancel/update
        self._rows: list[dict[str, Any]] = []  # reach a resumed alert airing)
        self.report: list[dict[str, Any]] = []
        #: broadcasts another part carries on (an origin's takeover, control/cluster.py)
        self.skip: Callable[[], set[str]] = set

    async def mark_interrupted(self) -> list[str]:
        """Broadcasts on air when the process died: recorded as interrupted."""
        self._rows = await self.db.unfinished_broadcasts()
        now = utc_iso(time.time())
        for r in self._rows:
            data = dict(r["data"], state="interrupted",
                        error=r["data"].get("error") or "the server stopped while it was on air",
                        on_air_zones=[])
            data["ended_at"] = data.get("ended_at") or now
            self.records.put("event", {
                "ev": {"type": "broadcast.interrupted", "time": now, "broadcast": r["id"],
                       "level": r["level"], "owner": r["owner"],
                       "zones": data.get("reached_zones", []),
                       "position_s": r["data"].get("position_s"),
                       "reason": "the server stopped while it was on air"},
                "row": data})
        return [r["id"] for r in self._rows]

    async def resume(self) -> list[str]:
        resumed: list[str] = []
        loop = asyncio.get_running_loop()
        att = self.settings.emergency_attention
        skip = self.skip()
        for r in self._rows:
            if r["id"] in skip:
                self.report.append({"broadcast": r["id"], "resumed": False,
                                    "reason": "carried on by the cluster's leader"})
                continue
            lengths = await loop.run_in_executor(None, self._text_lengths, r)
            plan = plan_resume(r, time.time(), self.settings.resume_within_s,
                               None if att == "none" else att, length_of=lengths.get)
            if plan.command is not None:
                why = self._alert_gone(plan.command)
                if why:
                    plan = ResumePlan(None, why)
            entry = {"broadcast": r["id"], "resumed": plan.command is not None,
                     "reason": plan.reason}
            self.report.append(entry)
            if plan.command is None:
                if r.get("level") in ("emergency", "priority"):
                    log.warning("broadcast %s (%s) not resumed: %s", r["id"], r.get("level"),
                                plan.reason)
                continue
            cmd = plan.command
            self.records.put("event", {"ev": {
                "type": "broadcast.recovered", "time": utc_iso(time.time()), "broadcast": cmd.id,
                "level": cmd.level.label, "owner": cmd.owner, "zones": list(cmd.targets),
                "reason": RESUMED_NOTE, "repeat": plan.repeat, "repeats": plan.repeats}})
            try:
                await loop.run_in_executor(None, self.port.submit, cmd)
            except Exception as e:  # a zone gone, a file unreadable...: recorded, never fatal
                log.error("broadcast %s could not be resumed: %s", cmd.id, e)
                entry.update(resumed=False, reason=f"{type(e).__name__}: {e}")
                self.records.put("event", {"ev": {
                    "type": "broadcast.refused", "time": utc_iso(time.time()),
                    "broadcast": cmd.id, "level": cmd.level.label, "owner": cmd.owner,
                    "reason": f"could not be resumed after restart: {e}"}})
                continue
            self._alert_airing(cmd)
            resumed.append(cmd.id)
            log.warning("broadcast %s (%s) %s from repeat %d of %d", cmd.id, cmd.level.label,
                        RESUMED_NOTE, plan.repeat, plan.repeats)
        self._rows = []
        return resumed

    def _text_lengths(self, row: dict[str, Any]) -> dict[TtsAudio, float | None]:
        """The length of a stored programme's text message (blocking: read from the TTS
        cache, where the last run left its sentences, or rendered again), so a resume lands
        in the repeat it was in."""
        try:
            cmd = command_from_dict(row.get("command") or {})
        except (ValueError, KeyError, TypeError):
            return {}
        src = getattr(cmd, "source", None)
        if not isinstance(src, Programme) or not isinstance(src.message, TtsAudio):
            return {}
        catalogue = getattr(self.port, "catalogue", None)
        if catalogue is None:
            return {}
        m = src.message
        try:
            return {m: catalogue.tts.length_s(m.text, m.engine, m.voice, m.rate)}
        except Exception as e:  # an engine down, a text refused: resumed from its start
            log.warning("broadcast %s: its text's length is unknown (%s)", row.get("id"), e)
            return {m: None}

    # an alert's airing resumes only while the alert is active and unexpired, and its
    # cancel/update then reaches the resumed broadcast
    def _alert_record(self, cmd: StartBroadcast) -> Any:
        aid = (cmd.details or {}).get("alert")
        if not aid or self.alerts is None:
            return None
        from control.alerts.store import alert_id
        for rec in self.alerts.book.active():
            if alert_id(rec.decision.key) == aid:
                return rec
        return False

    def _alert_gone(self, cmd: StartBroadcast) -> str | None:
        rec = self._alert_record(cmd)
        if rec is False:
            return "its alert is no longer active (expired, cancelled or updated)"
        exp = getattr(getattr(rec, "alert", None), "expires", None)
        if exp is not None and exp.timestamp() <= time.time():
            return "its alert has expired"
        return None

    def _alert_airing(self, cmd: StartBroadcast) -> None:
        rec = self._alert_record(cmd)
        if rec:
            self.alerts.airing[rec.decision.key] = cmd.id
