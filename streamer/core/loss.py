"""The encoders' loss policy: a program's Opus encoder plans for the worst packet loss its zones'
receivers report (in-band FEC where that is high enough). A rise applies at once, a fall only
after the higher value held `hold_s`; reported changes are looked at no more often than every
`apply_interval_s` while the plan holds. Pure: times are parameters (seconds, monotonic)."""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)   # a programme's key


class LossPolicy:
    def __init__(self, default_perc: int, hold_s: float = 30.0,
                 apply_interval_s: float = 1.0) -> None:
        self.default = default_perc
        self.hold_s = hold_s
        self.apply_interval_s = apply_interval_s
        #: zone -> worst loss (%) its registered receivers report; absent: nobody reports
        self.zone_loss: dict[str, int] = {}
        self._version = 0
        self._applied = -1
        self._next = 0.0      # earliest time the next reported change is applied
        self._due = 0.0       # a held fall to apply then (0: none)
        self._raised: dict[Hashable, float] = {}   # encoder -> time of its last rise

    def report(self, zone: str, perc: int | None) -> None:
        """A zone's worst reported loss (whole %), None when nobody there reports."""
        if perc is None:
            if self.zone_loss.pop(zone, None) is None:
                return
        else:
            perc = max(0, min(100, int(perc)))
            if self.zone_loss.get(zone) == perc:
                return
            self.zone_loss[zone] = perc
        self._version += 1

    def due(self, now: float) -> bool:
        """Whether the steady tick must look again (a report changed, or a held fall is due)."""
        return (self._version != self._applied and now >= self._next) or \
            bool(self._due and now >= self._due)

    def plan(self, programs: Mapping[K, tuple[str, ...]],
             current: Mapping[K, tuple[Hashable, int]], now: float) -> dict[K, int]:
        """The loss each program's encoder should plan for now, for those that must change.
        `current[key]` is (the program's encoder, the loss it plans for now): an encoder handed
        to another program keeps its last rise. O(zones): on plan changes and when `due`."""
        self._applied = self._version
        self._next = now + self.apply_interval_s
        zl, default, raised = self.zone_loss, self.default, self._raised
        due = 0.0
        out: dict[K, int] = {}
        for key, zones in programs.items():
            want = max([zl.get(z, default) for z in zones]) if zl else default
            enc, have = current[key]
            if want > have:
                out[key] = want
                raised[enc] = now
            elif want < have:
                at = raised.get(enc, -1e18) + self.hold_s
                if now >= at:
                    out[key] = want
                elif not due or at < due:
                    due = at
        self._due = due
        return out

    def forget(self, encoder: Hashable) -> None:
        """An encoder was closed."""
        self._raised.pop(encoder, None)
