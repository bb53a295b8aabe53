"""Rendered sentences on disk, by (normalised text, engine, voice, rate), with a size cap: a
repeated alert or a re-aired bulletin is read from here instead of synthesised again.

One file per sentence: raw 48 kHz mono float32 as the engine produced it (loudness is applied
when it is played, so a changed target does not invalidate the cache). Written to a temporary
name and renamed, so a reader never sees half a file. Over the cap, the least recently used
files go (a hit touches its file).
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["TtsCache"]


class TtsCache:
    def __init__(self, directory: str | os.PathLike[str] | None,
                 max_bytes: int = 200 * 1024 * 1024) -> None:
        self.dir = Path(directory) if directory is not None else None
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()
        self._size = 0
        self.hits = 0
        self.misses = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._size = sum(p.stat().st_size for p in self.dir.glob("*.f32"))

    @staticmethod
    def key(text: str, engine: str, voice: str, rate: float) -> str:
        raw = "\x1f".join((text, engine, voice, f"{rate:.3f}")).encode("utf-8")
        return hashlib.sha256(raw).hexdigest()

    @property
    def size_bytes(self) -> int:
        return self._size

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{key}.f32"

    def get(self, key: str) -> np.ndarray | None:
        if self.dir is None:
            return None
        p = self._path(key)
        try:
            pcm = np.fromfile(p, dtype=np.float32)
            os.utime(p)
        except OSError:
            self.misses += 1
            return None
        self.hits += 1
        return pcm

    def put(self, key: str, pcm: np.ndarray) -> None:
        if self.dir is None or self.max_bytes == 0:
            return
        data = np.ascontiguousarray(pcm, dtype=np.float32)
        if data.nbytes > self.max_bytes:
            return
        p = self._path(key)
        tmp = p.with_suffix(f".tmp{threading.get_ident()}")
        try:
            data.tofile(tmp)
            os.replace(tmp, p)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            return
        with self._lock:
            self._size += data.nbytes
            if self._size > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Oldest first until under 90 % of the cap (the lock is held)."""
        assert self.dir is not None
        files = []
        for f in self.dir.glob("*.f32"):
            try:
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, f))
        files.sort()
        total = sum(s for _, s, _ in files)
        for _, size, f in files:
            if total <= self.max_bytes * 0.9:
                break
            try:
                f.unlink()
                total -= size
            except OSError:
                pass
        self._size = total
