"""engine_cpus: `loa serve` keeps its tick and sender processes on the reserved core and every
other thread and process it starts (event loop, TTS synthesis workers and their forkserver) off
it (streamer.cpus). Real processes, read back from the kernel."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

needs_two = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2,
    reason="this machine (or this process's cpuset) gives one CPU: there is no other CPU to "
           "keep the rest of the server on; the one-CPU case is test_one_cpu_pins_nothing")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _comm(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""


@needs_two
def test_tick_and_senders_on_the_reserved_core_the_rest_elsewhere(serve, tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[-1]                      # not always 0: the reservation is what is asked
    rest = set(allowed) - {core}
    s = serve(f"engine_cpus = [{core}]\n"
              '[[zones]]\nid = "z"\nunicast = ["127.0.0.1:9"]\n')
    st, h = s.request("GET", "/api/v1/health")
    assert st == 200
    clock = h.get("clock") or h.get("engine", {}).get("clock") or {}
    assert clock.get("tick_cpus") == [core], h
    pid = s.proc.pid
    # the TTS workers and the sender are up once the server answers; their threads a moment on
    deadline = time.monotonic() + 20
    senders: list[int] = []
    others: list[int] = []
    while time.monotonic() < deadline:
        kids = _descendants(pid)
        senders = [k for k in kids if "streamer.rtp.fanout" in _cmdline(k)]
        others = [k for k in kids if k not in senders]
        if senders and len(others) >= 2:      # the forkserver and at least one TTS worker
            break
        time.sleep(0.2)
    assert senders, "no sender process found"
    assert len(others) >= 2, [_cmdline(k) for k in others]
    for k in senders:
        assert os.sched_getaffinity(k) == {core}, _cmdline(k)
    for k in others:
        assert os.sched_getaffinity(k) <= rest, (_cmdline(k), os.sched_getaffinity(k))
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        if _comm(pid, tid) == "loa-tick":
            ticks += 1
            assert os.sched_getaffinity(tid) == {core}
        else:
            assert os.sched_getaffinity(tid) <= rest, _comm(pid, tid)
    assert ticks == 1
    # a TTS broadcast still airs: synthesis runs on the other cores
    st, b = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["z"], "source": {"kind": "tts", "text": "Thông báo thử loa."}})
    assert st == 201, b
    s.wait_state(b["id"], timeout=30)


def test_without_engine_cpus_nothing_is_pinned(serve):
    s = serve('[[zones]]\nid = "z"\nunicast = ["127.0.0.1:9"]\n')
    st, h = s.request("GET", "/api/v1/health")
    clock = h.get("clock") or h.get("engine", {}).get("clock") or {}
    assert "tick_cpus" in clock and clock["tick_cpus"] == []
    assert os.sched_getaffinity(s.proc.pid) == os.sched_getaffinity(0)


def test_one_cpu_pins_nothing(serve):
    """A server confined to one CPU (taskset, a cgroup) cannot keep normal work off the tick's
    core: engine_cpus pins nothing, says so, and the server runs as without it."""
    mine = os.sched_getaffinity(0)
    core = min(mine)
    os.sched_setaffinity(0, {core})          # the server inherits it
    try:
        s = serve(f"engine_cpus = [{core}]\n" '[[zones]]\nid = "z"\nunicast = ["127.0.0.1:9"]\n')
    finally:
        os.sched_setaffinity(0, mine)
    st, h = s.request("GET", "/api/v1/health")
    clock = h.get("clock") or h.get("engine", {}).get("clock") or {}
    assert st == 200 and clock.get("tick_cpus") == []
    assert os.sched_getaffinity(s.proc.pid) == {core}
    assert "leave no other CPU" in s.output()
