"""Who gets the loudspeakers: a pure function of the active broadcasts and the zones.

For every zone the highest-level ready broadcast that reaches it wins. The winner's mode says
what happens to the level(s) below it: `preempt` silences them (stored items pause and resume
later), `duck` keeps the next program playing attenuated underneath, `mix` keeps it at full
level. Items at the same level do not mix: the first admitted wins and the rest wait (a live
talker goes before stored items at its level; a second live talker is refused at admission).
"""
from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Level(enum.IntEnum):
    BACKGROUND = 0
    NORMAL = 1  # thông thường
    PRIORITY = 2  # ưu tiên
    EMERGENCY = 3  # khẩn cấp

    @classmethod
    def parse(cls, value: str | int | Level) -> Level:
        if isinstance(value, Level):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        raise ValueError(f"unknown level {value!r}; expected one of "
                         + ", ".join(lv.name.lower() for lv in cls))

    @property
    def label(self) -> str:
        return self.name.lower()


MODES = ("preempt", "duck", "mix")


@dataclass(frozen=True, slots=True)
class Claim:
    """One broadcast as arbitration sees it."""
    id: str
    level: Level
    zones: frozenset[str]
    order: int  # admission order, for first-come first-served
    mode: str = "preempt"
    live: bool = False
    ready: bool = True
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Layer:
    claim_id: str
    gain_db: float  # relative gain from arbitration (0 or the duck amount)


def _rank(c: Claim) -> tuple[int, int, int]:
    return (-int(c.level), 0 if c.live else 1, c.order)


def _layers(cands: list[Claim], duck_db: float) -> tuple[Layer, ...]:
    if not cands:
        return ()
    winner = cands[0]  # cands are sorted by rank
    if winner.mode == "preempt":
        return (Layer(winner.id, 0.0),)
    below = [c for c in cands if c.level < winner.level]
    gain = duck_db if winner.mode == "duck" else 0.0
    return (Layer(winner.id, 0.0),) + tuple(
        Layer(l.claim_id, l.gain_db + gain) for l in _layers(below, duck_db))


def arbitrate(claims: Iterable[Claim], zones: Iterable[str] | None = None,
              duck_db: float = -15.0) -> dict[str, tuple[Layer, ...]]:
    """Layers per zone (first layer is the winner). Zones no ready claim reaches are absent."""
    by_zone: dict[str, list[Claim]] = {}
    for c in claims:
        if not c.ready:
            continue
        for z in c.zones:
            by_zone.setdefault(z, []).append(c)
    wanted = None if zones is None else set(zones)
    out: dict[str, tuple[Layer, ...]] = {}
    for z, cands in by_zone.items():
        if wanted is not None and z not in wanted:
            continue
        cands.sort(key=_rank)
        out[z] = _layers(cands, duck_db)
    return out


def live_conflict(new: Claim, claims: Iterable[Claim]) -> Claim | None:
    """The live broadcast that holds one of `new`'s zones at the same or a higher level, if any."""
    if not new.live:
        return None
    for c in sorted(claims, key=_rank):
        if c.live and c.id != new.id and c.level >= new.level and c.zones & new.zones:
            return c
    return None
