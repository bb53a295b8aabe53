"""streamer/tts/cache.py with real processes: several writers (as the synthesis workers are) on
one cache directory keep it under its one cap at every instant, not under workers x cap."""
from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from streamer.tts.cache import TtsCache

pytestmark = pytest.mark.integration

CAP = 400_000          # bytes
ENTRY = 10_000         # samples: 40,000 bytes a sentence


def _writer(directory: str, n: int, worst: multiprocessing.Queue[int], tag: int) -> None:
    c = TtsCache(directory, CAP)
    seen = 0
    for i in range(n):
        c.put(c.key(f"writer {tag} câu {i}", "espeak", "vi", 1.0),
              np.full(ENTRY, tag, np.float32))
        seen = max(seen, c.disk_usage())      # scanned under the lock: one instant
    worst.put(seen)


def test_four_writer_processes_stay_under_one_cap(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    worst: multiprocessing.Queue[int] = ctx.Queue()
    # each writes 0.9 x the cap: counted per process (the old cache) none would ever evict
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 9, worst, t)) for t in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    peaks = [worst.get(timeout=5) for _ in procs]
    on_disk = sum(f.stat().st_size for f in tmp_path.glob("*.f32"))
    assert max(peaks) <= CAP and on_disk <= CAP, (peaks, on_disk)
    assert on_disk >= CAP * 0.9 - 4 * ENTRY * 4    # evicted down to 90 %, not emptied
    assert TtsCache(tmp_path, CAP).size_bytes == on_disk
    assert not list(tmp_path.glob("*.tmp*"))      # no temporary file left behind
