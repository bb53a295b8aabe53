"""control/recovery.py: which interrupted broadcasts resume, and from where (pure)."""
from __future__ import annotations

import time

import pytest

from control.recovery import RESUMED_NOTE, current_repeat, plan_resume
from streamer.ingest.catalogue import attention_part
from streamer.mixer.arbitration import Level
from streamer.port import (FileAudio, LiveAudio, Programme, StartBroadcast, ToneAudio,
                           command_to_dict)
from streamer.timefmt import utc_iso

CHIME = attention_part("chime").duration_s


def _row(cmd: StartBroadcast, position: float, ago: float = 5.0, state: str = "playing") -> dict:
    return {"id": cmd.id, "state": state, "level": cmd.level.label, "owner": cmd.owner,
            "updated_at": utc_iso(time.time() - ago), "command": command_to_dict(cmd),
            "data": {"id": cmd.id, "state": state, "position_s": position}}


def _emergency(src, level=Level.EMERGENCY, **kw) -> StartBroadcast:
    return StartBroadcast(id="b1", targets=("z",), level=level, source=src, owner="admin",
                          **kw)


@pytest.mark.parametrize("repeat,msg,pause", [(3, 4.0, 1.0), (5, 2.5, 0.0), (2, 10.0, 3.0)])
def test_current_repeat_over_the_whole_programme(repeat, msg, pause):
    prog = Programme(ToneAudio(seconds=msg), attention="chime", repeat=repeat,
                     repeat_pause_s=pause)
    assert current_repeat(prog, 0.0) == 0
    assert current_repeat(prog, CHIME * 0.5) == 0  # in the attention signal
    for k in range(repeat):
        start = CHIME + k * (msg + pause)
        assert current_repeat(prog, start + 0.01) == k
        assert current_repeat(prog, start + msg - 0.01) == k
        if pause:
            assert current_repeat(prog, start + msg + pause / 2) == k  # its pause
    assert current_repeat(prog, 1e6) == repeat - 1


@pytest.mark.parametrize("k", [0, 1, 2])
def test_an_emergency_resumes_from_its_current_repeat_with_the_attention_signal(k):
    prog = Programme(ToneAudio(seconds=4.0), attention="siren", repeat=3, repeat_pause_s=1.0)
    cmd = _emergency(prog, details={"kind": "tone"})
    att = attention_part("siren").duration_s
    plan = plan_resume(_row(cmd, att + k * 5.0 + 2.0), time.time(), 1800)
    assert plan.command is not None and plan.reason == RESUMED_NOTE
    src = plan.command.source
    assert isinstance(src, Programme) and src.attention == "siren"
    assert src.repeat == 3 - k and src.repeat_pause_s == 1.0 and src.message == prog.message
    assert plan.command.id == "b1" and plan.command.level == Level.EMERGENCY
    rec = plan.command.details["recovered"]
    assert rec["note"] == RESUMED_NOTE and rec["repeat"] == k + 1 and rec["repeats"] == 3
    assert plan.command.details["kind"] == "tone"


def test_a_single_message_replays_whole_and_an_emergency_gets_its_attention_signal():
    cmd = _emergency(ToneAudio(seconds=8.0))
    plan = plan_resume(_row(cmd, 3.0), time.time(), 1800, "chime")
    assert isinstance(plan.command.source, Programme)
    assert plan.command.source.attention == "chime" and plan.command.source.repeat == 1
    prio = _emergency(ToneAudio(seconds=8.0), level=Level.PRIORITY)
    plan = plan_resume(_row(prio, 3.0), time.time(), 1800, "chime")
    assert plan.command.source == ToneAudio(seconds=8.0)


@pytest.mark.parametrize("why,cmd,row_kw,expect", [
    ("normal level", _emergency(ToneAudio(), level=Level.NORMAL), {}, "level normal"),
    ("background", _emergency(ToneAudio(), level=Level.BACKGROUND), {}, "level background"),
    ("live", _emergency(LiveAudio("in-1")), {}, "live"),
    ("too long ago", _emergency(ToneAudio()), {"ago": 4000.0}, "ago"),
    ("played out", _emergency(Programme(ToneAudio(seconds=2.0), attention=None, repeat=2,
                                        repeat_pause_s=1.0)), {"position": 5.0}, "end"),
    ("scheduled", _emergency(ToneAudio(), details={"schedule_id": "s1"}), {}, "schedule"),
])
def test_what_is_not_resumed_says_why(why, cmd, row_kw, expect):
    row = _row(cmd, row_kw.pop("position", 1.0), **row_kw)
    plan = plan_resume(row, time.time(), 1800)
    assert plan.command is None and expect in plan.reason, (why, plan.reason)


def test_no_stored_command_is_not_resumed():
    row = _row(_emergency(ToneAudio()), 1.0)
    row["command"] = None
    assert plan_resume(row, time.time(), 1800).command is None


def test_a_pinned_file_resumes_from_its_real_path_or_not_at_all(tmp_path):
    real = tmp_path / "bao.wav"
    real.write_bytes(b"x")
    cmd = _emergency(FileAudio("/proc/self/fd/17", duration_s=30.0),
                     details={"path": str(real)})
    plan = plan_resume(_row(cmd, 2.0), time.time(), 1800, None)
    assert plan.command is not None and plan.command.source.path == str(real)
    real.unlink()
    plan = plan_resume(_row(cmd, 2.0), time.time(), 1800, None)
    assert plan.command is None and "gone" in plan.reason


@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_text_programme_resumes_from_the_repeat_it_was_in(k):
    """A text's length is not in its description: plan_resume asks `length_of` (the TTS
    service, from its cache) so a crash in the third reading resumes the third, and a crash
    in the first is not taken for the programme's end (attention + pauses alone)."""
    from streamer.port import TtsAudio
    text = TtsAudio("Bão số 3 đổ bộ. Đề nghị bà con sơ tán.")
    prog = Programme(text, attention="chime", repeat=3, repeat_pause_s=2.0)
    cmd = _emergency(prog)
    msg = 9.0
    position = CHIME + k * (msg + 2.0) + 6.0     # beyond attention + pauses (CHIME + 4)
    asked: list = []

    def length_of(m):
        asked.append(m)
        return msg
    plan = plan_resume(_row(cmd, position), time.time(), 1800, length_of=length_of)
    assert asked == [text]
    assert plan.command is not None, plan.reason
    assert plan.command.source.repeat == 3 - k and plan.repeat == k + 1
    # past the last reading's end: it had played to its end
    done = plan_resume(_row(cmd, CHIME + 3 * msg + 4.0 + 0.5), time.time(), 1800,
                       length_of=length_of)
    assert done.command is None and "end" in done.reason
    # length unknown (the engine is down): replayed from its first reading, never skipped
    plan = plan_resume(_row(cmd, position), time.time(), 1800, length_of=lambda m: None)
    assert plan.command is not None and plan.command.source.repeat == 3
