"""The reference receiver's playout priority: SCHED_FIFO where permitted, else nice -10, else
normal, silently (issue 17). The OS calls are replaced: a unit test changes no priority."""
import os

import pytest

from receivers import priority
from receivers.cli import build_parser


def _refuse(*a):
    raise PermissionError("not permitted")


def test_real_time_first(monkeypatch):
    got = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda pid, pol, p: got.append((pid, pol)))
    monkeypatch.setattr(os, "setpriority", _refuse)
    assert priority.raise_playout_priority() == "SCHED_FIFO"
    assert got == [(0, os.SCHED_FIFO)]


def test_nice_when_real_time_is_refused(monkeypatch):
    niced = []
    monkeypatch.setattr(os, "sched_setscheduler", _refuse)
    monkeypatch.setattr(os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(os, "setpriority", lambda which, who, v: niced.append(v))
    assert priority.raise_playout_priority() == "nice -10"
    assert niced == [-10]


@pytest.mark.parametrize("error", [PermissionError, OSError])
def test_normal_and_silent_when_nothing_is_permitted(monkeypatch, capsys, error):
    def refuse(*a):
        raise error("no")
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(os, "setpriority", refuse)
    assert priority.raise_playout_priority() == "normal"
    assert capsys.readouterr() == ("", "")


def test_the_help_says_so_and_it_can_be_kept_normal():
    ap = build_parser()
    text = " ".join(ap.format_help().split())
    assert "SCHED_FIFO" in text and "nice -10" in text and "--normal-priority" in text
    assert ap.parse_args(["--listen", "127.0.0.1:0", "--normal-priority"]).normal_priority
