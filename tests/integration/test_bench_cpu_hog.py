"""bench/cpu_hog.py: the load `loa bench latency --cpu-hog N` puts on purpose — N busy
processes at normal priority, each in its own session (autogroup), gone when stopped."""
import os
import time

import pytest

from bench.cpu_hog import CpuHog
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


def test_hogs_burn_cpu_in_their_own_sessions_at_normal_priority_and_stop():
    with CpuHog(2, max_s=30) as hog:
        procs = list(hog._procs)
        pids = [p.pid for p in procs]
        assert hog.running == 2 and len(set(pids)) == 2
        for pid in pids:
            assert os.getsid(pid) == pid                       # a session (autogroup) each
            assert os.getpriority(os.PRIO_PROCESS, pid) == 0   # normal priority
            assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        before = {pid: _cpu_ticks(pid) for pid in pids}
        time.sleep(1.5)
        # busy, not sleeping: each burnt CPU (ticks are 1/100 s; a loaded shared machine gives
        # each only a share of a core)
        used = {pid: _cpu_ticks(pid) - before[pid] for pid in pids}
        assert all(v >= 5 for v in used.values()), used
    assert hog.running == 0
    assert all(p.returncode is not None for p in procs)   # ended and reaped


def test_hogs_end_on_their_own_after_max_s():
    hog = CpuHog(1, max_s=0.5).start()
    try:
        p = hog._procs[0]
        p.wait(10)
        assert p.returncode == 0
    finally:
        hog.stop()


def test_hogs_end_when_the_bench_is_gone():
    import subprocess
    import sys
    # a bench killed outright (SIGKILL: no clean-up of its own) leaves no hog behind
    bench = subprocess.Popen([sys.executable, "-c",
                              "from bench.cpu_hog import CpuHog; import time\n"
                              "h = CpuHog(1, max_s=60).start(); print(h._procs[0].pid, flush=True)\n"
                              "time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        hog_pid = int(bench.stdout.readline())
        bench.kill()
        bench.wait(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(hog_pid):
            time.sleep(0.1)
        assert not _alive(hog_pid)
    finally:
        bench.kill()
        bench.wait(5)
        bench.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_no_hogs_and_bad_counts():
    hog = CpuHog(0).start()
    assert hog.running == 0
    hog.stop()
    with pytest.raises(ValueError):
        CpuHog(-1)
