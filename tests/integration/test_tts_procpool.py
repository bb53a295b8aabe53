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
    finally:
        procs = svc.processes
        svc.close()
    assert svc.processes is None and procs is not None
    for f in procs._warming:
        assert f.done()
