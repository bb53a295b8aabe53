"""streamer/tts/cache.py: the size cap is one cap for every cache object on a directory (the
synthesis workers each open their own), a rewritten sentence is not counted twice, and the
least recently used sentences go first."""
from __future__ import annotations

import numpy as np

from streamer.tts.cache import TtsCache


def on_disk(d) -> int:
    return sum(p.stat().st_size for p in d.glob("*.f32"))


def test_writers_sharing_a_directory_share_its_cap(tmp_path):
    # three writers as three worker processes would have them: each its own object and count
    caches = [TtsCache(tmp_path, max_bytes=40_000) for _ in range(3)]
    for i in range(30):                      # 30 x 4,000 bytes, interleaved: 3x the cap
        c = caches[i % 3]
        c.put(c.key(f"câu {i}", "espeak", "vi", 1.0), np.full(1000, i, np.float32))
        assert on_disk(tmp_path) <= 40_000, i
    assert all(c.size_bytes == on_disk(tmp_path) for c in caches)
    assert sum(c.evictions for c in caches) > 0
    newest = caches[0].get(caches[0].key("câu 29", "espeak", "vi", 1.0))
    assert newest is not None and newest[0] == 29
    assert caches[1].get(caches[1].key("câu 0", "espeak", "vi", 1.0)) is None


def test_the_same_sentence_rewritten_is_counted_once(tmp_path):
    a, b = TtsCache(tmp_path, max_bytes=10_000), TtsCache(tmp_path, max_bytes=10_000)
    k = a.key("Bão số 3.", "espeak", "vi", 1.0)
    for c in (a, b, a, b):                   # two workers rendered the same sentence
        c.put(k, np.zeros(1000, np.float32))
    assert a.size_bytes == b.size_bytes == 4_000 == on_disk(tmp_path)
    assert a.evictions == b.evictions == 0


def test_a_hit_keeps_a_sentence_and_the_count_is_rebuilt_from_the_disk(tmp_path):
    c = TtsCache(tmp_path, max_bytes=12_000)
    keys = [c.key(f"s{i}", "e", "v", 1.0) for i in range(4)]
    import os
    for i, k in enumerate(keys[:3]):
        c.put(k, np.zeros(1000, np.float32))
        os.utime(c._path(k), ns=(i * 10**9, i * 10**9))   # s0 oldest
    assert c.get(keys[0]) is not None       # a hit: s0 is now the most recent
    c.put(keys[3], np.zeros(1000, np.float32))
    assert c.get(keys[0]) is not None and c.get(keys[1]) is None
    (tmp_path / ".size").write_text("999999")  # a count gone wrong (a crash, files removed)
    assert TtsCache(tmp_path, max_bytes=12_000).size_bytes == on_disk(tmp_path)
    assert TtsCache(None).size_bytes == 0
