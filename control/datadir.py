"""One process serves a data directory: an exclusive lock (fcntl.flock) on `<data_dir>/loa.lock`
taken before anything else touches the directory, holding the owner's PID. A second `loa serve`
on the same directory stops at once, naming the first one's PID (two engines feeding the same
speakers, or one marking the other's live broadcasts interrupted, cannot happen).

The lock belongs to the open file: it goes when the process ends, however it ends (kill -9
included), so a stale lock file never blocks a restart. The CLI's offline commands (`loa admin`,
`loa receivers provision`) write the same database through SQLite's own locking and do not
take it.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "loa.lock"


class DataDirBusy(RuntimeError):
    def __init__(self, path: Path, pid: int | None) -> None:
        self.path, self.pid = path, pid
        who = f"PID {pid}" if pid else "another process (PID unknown)"
        super().__init__(f"the data directory {path.parent} is in use by another loa server "
                         f"({who}); stop it first, or give this one another --data-dir")


def _holder_pid(fd: int, path: Path) -> int | None:
    try:
        text = os.pread(fd, 32, 0).split(b"\0")[0].decode().strip()
        if text.isdigit():
            return int(text)
    except (OSError, UnicodeDecodeError):
        pass
    # the PID could not be written (a full disk): the kernel's lock table knows the holder
    try:
        st = os.fstat(fd)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == dev:
                return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


class DataDirLock:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock or raise DataDirBusy (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            pid = _holder_pid(fd, self.path)
            os.close(fd)
            raise DataDirBusy(self.path, pid) from None
        self._fd = fd
        try:  # the PID for whoever comes second (a full disk may refuse it: see _holder_pid)
            data = f"{os.getpid()}\n".encode().ljust(32, b"\0")
            os.pwrite(fd, data, 0)
        except OSError:
            pass
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
