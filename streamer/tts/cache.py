"""Rendered sentences on disk, by (normalised text, engine, voice, rate), with a size cap: a
repeated alert or a re-aired bulletin is read from here instead of synthesised again.

One file per sentence: raw 48 kHz mono float32 as the engine produced it (loudness is applied
when it is played, so a changed target does not invalidate the cache). Written to a temporary
name and renamed, so a reader never sees half a file. Over the cap, the least recently used
files go (a hit touches its file).

The cap holds across processes: the synthesis workers (streamer.tts.procpool), the server's
own threads and any other process on the same data directory write here. The bytes on disk are
counted in one file beside the sentences (`.size`), read and rewritten under an exclusive
`flock` on `.lock`, which also covers each rename into place and each eviction: whoever writes
evicts, and sees every other writer's bytes. A flock costs microseconds against a sentence's
milliseconds of synthesis; readers take no lock (a file renamed away or evicted under a reader
is still read whole on Linux). The count is recalibrated from a scan of the directory when a
cache is opened and at every eviction, so bytes removed by hand only make eviction come early
once. Standard library only (fcntl): a cache library (diskcache) would add a SQLite write to
every hit (its LRU order) in the server and change the files existing data directories hold.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["TtsCache"]

#: eviction goes down to this share of the cap, so a full cache does not evict on every write
EVICT_TO = 0.9


class TtsCache:
    def __init__(self, directory: str | os.PathLike[str] | None,
                 max_bytes: int = 200 * 1024 * 1024) -> None:
        self.dir = Path(directory) if directory is not None else None
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()   # flock excludes processes; this, threads of one
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._locked():
                self._write_size(self._scan()[0])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.dir is not None
        with self._lock:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)   # releases the flock

    def _scan(self) -> tuple[int, list[tuple[int, int, Path]]]:
        """(bytes, [(mtime, size, path)]) of the sentences on disk (the lock is held)."""
        assert self.dir is not None
        files = []
        for f in self.dir.glob("*.f32"):
            try:
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, f))
        return sum(size for _, size, _ in files), files

    def _read_size(self) -> int:
        assert self.dir is not None
        try:
            return max(0, int((self.dir / ".size").read_text()))
        except (OSError, ValueError):
            return self._scan()[0]

    def _write_size(self, n: int) -> None:
        assert self.dir is not None
        tmp = self.dir / f".size.{os.getpid()}.{threading.get_ident()}"
        try:
            tmp.write_text(str(n))
            os.replace(tmp, self.dir / ".size")
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    @staticmethod
    def key(text: str, engine: str, voice: str, rate: float) -> str:
        raw = "\x1f".join((text, engine, voice, f"{rate:.3f}")).encode("utf-8")
        return hashlib.sha256(raw).hexdigest()

    @property
    def size_bytes(self) -> int:
        """The bytes of sentences on disk, as counted by every process using the directory."""
        if self.dir is None:
            return 0
        with self._locked():
            return self._read_size()

    def disk_usage(self) -> int:
        """The bytes of sentences on disk, scanned (under the lock: a consistent instant)."""
        if self.dir is None:
            return 0
        with self._locked():
            return self._scan()[0]

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
        # per process and thread: two workers may render the same sentence at once
        tmp = p.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        try:
            data.tofile(tmp)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        with self._locked():
            try:
                old = p.stat().st_size   # the same sentence again replaces its file
            except OSError:
                old = 0
            try:
                os.replace(tmp, p)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                return
            total = self._read_size() + data.nbytes - old
            if total > self.max_bytes:
                total = self._evict()
            self._write_size(total)

    def _evict(self) -> int:
        """Least recently used first until under EVICT_TO of the cap (the lock is held);
        returns the bytes left, scanned."""
        total, files = self._scan()
        files.sort()
        for _, size, f in files:
            if total <= self.max_bytes * EVICT_TO:
                break
            try:
                f.unlink()
                total -= size
                self.evictions += 1
            except OSError:
                pass
        return total
