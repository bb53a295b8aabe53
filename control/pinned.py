"""Server-side files opened first, checked second, and played from what was opened (issue 13:
a symlink swapped between the media-directory check and the decoder's open played a file
outside `media_dirs`, 60 of 300 races).

`PinnedFiles.pin(path, media_dirs)` opens the path (O_RDONLY, no controlling tty, non-blocking
so a FIFO cannot hang it), reads the *opened* file's real path from /proc/self/fd (what the
kernel opened, whatever the path names now), checks that one against `media_dirs`, and hands
back `/proc/self/fd/N`: opening that again (the analysis, the decoder, a resume after
preemption) reaches the same file even if every name on the way is swapped. The descriptor is
held while the broadcast is known to the engine, and closed at the next pin after it ended
(or at once when the start failed).
"""
from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from control.errors import Forbidden, Invalid
from control.policy import path_allowed


@dataclass(frozen=True)
class Pin:
    fd: int
    real: str  # the opened file's real path (what people see)

    @property
    def path(self) -> str:
        """What to open again: the very file pinned."""
        return f"/proc/self/fd/{self.fd}"


class PinnedFiles:
    def __init__(self, alive: Callable[[str], bool]) -> None:
        self.alive = alive  # is this broadcast still known to the engine (not ended)?
        self._lock = threading.Lock()
        self._held: dict[int, str | None] = {}  # fd -> broadcast id (None: start under way)

    def pin(self, path: str, media_dirs: Iterable[Path], check: bool) -> Pin:
        """Open `path`; with `check`, refuse (Forbidden) unless the opened file lies in one of
        `media_dirs`. Raises Invalid for a path that cannot be opened as a regular file."""
        self.sweep()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Invalid("media_unplayable", f"file not found: {os.path.basename(path)}") from None
        except OSError as e:
            raise Invalid("media_unplayable",
                          f"cannot read {os.path.basename(path)}: {e.strerror or e}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Invalid("media_unplayable",
                              f"{os.path.basename(path)} is not a regular file")
            real = os.readlink(f"/proc/self/fd/{fd}")
            if check and path_allowed(real, list(media_dirs)) != real:
                raise Forbidden("the path is not inside a configured media directory",
                                code="path_not_allowed")
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._held[fd] = None
        return Pin(fd, real)

    def attach(self, pin: Pin, broadcast_id: str) -> None:
        with self._lock:
            if pin.fd in self._held:
                self._held[pin.fd] = broadcast_id

    def release(self, pin: Pin) -> None:
        with self._lock:
            if self._held.pop(pin.fd, "gone") != "gone":
                os.close(pin.fd)

    def sweep(self) -> None:
        """Close the descriptors of broadcasts that have ended."""
        with self._lock:
            done = [fd for fd, bid in self._held.items() if bid is not None and not self.alive(bid)]
            for fd in done:
                del self._held[fd]
                os.close(fd)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def close_all(self) -> None:
        with self._lock:
            for fd in self._held:
                os.close(fd)
            self._held.clear()
