"""LiveSource: the bounded jitter queue between a live input and the tick."""
import threading

import numpy as np

from streamer.audio import FRAME_SAMPLES
from streamer.ingest.live import LiveSource


def test_concurrent_push_and_read_never_corrupt_frames():
    s = LiveSource(max_frames=3)
    stop = threading.Event()

    def producer():
        k = 0
        while not stop.is_set():
            s.push(np.full(FRAME_SAMPLES, k % 7, dtype=np.float32))
            k += 1

    t = threading.Thread(target=producer)
    t.start()
    import time
    got = 0
    deadline = time.monotonic() + 5.0
    try:
        while (got < 2000 or s.dropped_overflow == 0) and time.monotonic() < deadline:
            f = s.read()
            if f is not None:
                assert f.min() == f.max()  # a whole frame from one push, never torn
                got += 1
    finally:
        stop.set()
        t.join()
    assert got > 0 and s.dropped_overflow > 0
