"""streamer/tts/procpool.py: sentences rendered in spawned worker processes (real espeak-ng)
are the audio the server would render itself; an engine's refusal comes back as TtsError; the
workers are other processes, started when the service is built."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from streamer.tts.cache import TtsCache
from streamer.tts.engines import EspeakEngine, TtsError
from streamer.tts.service import TtsService

pytestmark = pytest.mark.integration


def test_worker_processes_render_what_the_server_would(tmp_path):
    svc = TtsService(cache=TtsCache(tmp_path / "cache"), processes=1)
    local = TtsService(cache=TtsCache(tmp_path / "local"))
    assert svc.processes is None               # nothing spawned before the server starts
    svc.start_processes()
    try:
        assert svc.processes is not None
        pids = svc.processes.pids()
        assert len(pids) == 2 and os.getpid() not in pids      # one normal, one urgent
        deadline = time.monotonic() + 30
        while not svc.processes.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        e = svc.engine(None)
        for text, urgent in (("Xin chào bà con.", False), ("Bão số 3 đổ bộ.", True)):
            got = svc.render_gained(text, e, "vi", 1.0, None, urgent)
            want = local.render_gained(text, e, "vi", 1.0)
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.allclose(got, want, atol=1e-5)
        # the worker wrote the cache the server's service reads
        assert svc.cache.get(svc.cache.key("Xin chào bà con.", e.name, "vi", 1.0)) is not None
        with pytest.raises(TtsError, match="no voice"):
            svc.render_gained("Xin chào.", EspeakEngine(), "giong-la", 1.0)
        assert svc.processes is not None          # a refusal does not retire the pool
        # texts are checked and cut in a worker (the server's GIL stays free), the same as here
        from streamer.tts.text import TextError
        text = "Bão số 3 đổ bộ lúc 17h30. UBND xã đề nghị bà con di dời trước 16h."
        cut = svc._cut_in_worker(text)
        assert cut is not None
        p, q = svc.prepare(text), local.prepare(text)
        assert (cut[1], cut[2]) == (p.words, p.sentences) == (q.words, q.sentences)
        with pytest.raises(TextError) as refused:
            svc.prepare("Bão số 3 台风")
        assert refused.value.code == "unreadable_script"
    finally:
        procs = svc.processes
        svc.close()
    assert svc.processes is None and procs is not None
    for f in procs._warming:
        assert f.done()


def test_workers_run_below_the_server_and_are_warm_when_ready(tmp_path):
    """Workers (normal and emergency) SCHED_BATCH at nice 10, whatever the
    server's own nice value; `wait_ready` returns once every worker read its warm-up sentences
    (two normal workers: both warmed, not one twice); an espeak-ng child of a worker inherits
    the worker's class."""
    svc = TtsService(cache=TtsCache(tmp_path / "cache"), processes=2)
    svc.start_processes()
    try:
        assert svc.wait_ready(60)
        assert svc.processes is not None and svc.processes.ready
        info = svc.processes.workers_info()
        assert len({pid for pid, _, _ in info}) == 3, info
        assert all(os.sched_getscheduler(pid) == os.SCHED_BATCH for pid, _, _ in info), info
        assert sorted(os.getpriority(os.PRIO_PROCESS, pid) for pid, _, _ in info) == [10, 10, 10]
        for _pid, prio, warm_ms in info:
            assert warm_ms > 0, info          # each ran its warm-up
            assert "SCHED_BATCH" in prio, info
        # an espeak-ng child spawned by a worker: caught while it runs (a long sentence)
        from concurrent.futures import wait as fwait
        e = svc.engine(None)
        fut = svc.processes.submit(e, "Thông báo khẩn cấp về bão số ba. " * 12, "vi", 0.5, None)
        workers = {pid for pid, _, _ in info}
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while not fut.done() and time.monotonic() < deadline:
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    with open(f"/proc/{d}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    continue
                if comm.startswith("espeak") and int(fields[1]) in workers:
                    try:
                        seen.add((os.sched_getscheduler(int(d)),
                                  os.getpriority(os.PRIO_PROCESS, int(d))))
                    except OSError:
                        pass
            time.sleep(0.005)
        fwait([fut], 30)
        assert fut.result()[0]
        assert seen == {(os.SCHED_BATCH, 10)}, seen
    finally:
        svc.close()
