"""The assembly of issue 18's outputs: HTTP listening, the replay archive, e-boards (and HLS).

`control/app.py` makes one `Outputs` before the engine (the engine gets `outputs.engine_outputs`
to feed every tick), binds it to the engine port and control's tree once both exist, adds
`outputs.handlers` to its route table and starts/closes it with the server.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.archive import Archive
from control.boards import Boards
from control.hls import HlsHandlers
from control.listening import Audience, ListenHandlers, PublicZones, listener_metrics
from control.settings import Settings
from streamer.outputs.archive import ArchiveIndex
from streamer.outputs.listen import ListenHub, ListenLimits, ListenOutput
from streamer.port import EnginePort
from streamer.zones import ZoneTree


class Outputs:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listen_output = ListenOutput()
        self.engine_outputs: list[Any] = [self.listen_output]
        self.public = PublicZones(settings)
        self.handlers: list[Any] = []
        self.hub: ListenHub | None = None
        self._closers: list[Callable[[], Any]] = []
        self._starters: list[Callable[[], Any]] = []
        #: zone -> its next scheduled items ({title, at, ...}); set at assembly when available
        self.schedule_next: Callable[[str], list[dict[str, Any]]] | None = None

    def bind(self, port: EnginePort, tree: Callable[[], ZoneTree], handlers: list[Any],
             events: Any = None) -> None:
        s = self.settings
        self.audience = Audience(tree, self.public)

        def title(zone: str) -> str:
            return self.audience.name(zone)
        self.hub = ListenHub(self.listen_output, ListenLimits(
            max_per_zone=s.listen_max_per_zone, max_total=s.listen_max_total,
            max_per_address=s.listen_max_per_address, max_buffer=s.listen_buffer_kb * 1024),
            title=title, flush_s=s.listen_flush_s)
        self.listen = ListenHandlers(self.hub, port, self.audience, self.next_items)
        self.handlers.append(self.listen)
        self.hls = HlsHandlers(self.hub, self.audience)
        self.listen.hls_counts = self.hls.counts
        self.handlers.append(self.hls)
        self._starters.append(self.hls.start)
        self._closers.append(self.hls.close)
        for h in handlers:   # listener counts on /metrics
            m = getattr(h, "metrics_", None)
            if m is not None and hasattr(m, "register"):
                m.register(listener_metrics(self.hub, self.hls.counts))
        self.archive: Archive | None = None
        if s.archive:
            self.archive = Archive(port, self.hub, self.audience,
                                   ArchiveIndex(s.data_dir / "archive"),
                                   s.archive_max_age_days * 86400, s.archive_max_mb * 1024 ** 2)
            self.handlers.append(self.archive)
            self._starters.append(self.archive.start)
            self._closers.append(self.archive.close)
        self.boards = Boards(port, self.audience, self.next_items, self._recent,
                             max_streams=s.listen_max_total)
        self.handlers.append(self.boards)
        self._starters.append(self.boards.start)
        self._closers.append(self.boards.close)
        self._closers.append(self.hub.close)

    def _recent(self, zone: str) -> list[dict[str, Any]]:
        if self.archive is None:
            return []
        return [e.to_api() for e in self.archive.index.search({zone}, limit=10)]

    def next_items(self, zone: str) -> list[dict[str, Any]]:
        """The zone's next scheduled items: `schedule_next(zone)` once the schedule room offers
        it (assembly sets the attribute); until then none."""
        fn = self.schedule_next
        if fn is None:
            return []
        try:
            return list(fn(zone))
        except Exception:
            return []

    async def start(self) -> None:
        for fn in self._starters:
            r = fn()
            if hasattr(r, "__await__"):
                await r

    async def close(self) -> None:
        for fn in self._closers:
            r = fn()
            if hasattr(r, "__await__"):
                await r
