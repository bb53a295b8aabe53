"""Request bodies of the control API (the OpenAPI document is generated from these) and the
pure function that turns stored rows into the engine's ZoneTree."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from control.policy import ROLES
from control.settings import ReceiverConfig, ZoneConfig
from streamer.zones import Zone, ZoneTree, parse_destination, parse_hostport

Id = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
Lang = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ZoneCreate(ZoneConfig):
    model_config = ConfigDict(extra="forbid")
    language: Lang = "vi"


class ZoneUpdate(_Strict):
    name: str | None = Field(None, max_length=200)
    multicast: str | None = None
    unicast: list[str] | None = None
    level: str | None = Field(None, max_length=40)
    code: str | None = Field(None, max_length=40)
    language: Lang | None = None
    codes: list[Annotated[str, Field(min_length=1, max_length=40)]] | None = Field(None, max_length=1000)
    voice: str | None = Field(None, max_length=100)   # "": none (the parent's or the server's)
    languages: list[Lang] | None = Field(None, max_length=20)
    public: bool | None = None   # anybody may listen (issue 18); null: the setting decides

    @field_validator("multicast")
    @classmethod
    def _mcast(cls, v):
        return ZoneConfig._mcast(v) if v else v

    @field_validator("unicast")
    @classmethod
    def _ucast(cls, v):
        return ZoneConfig._ucast(v) if v is not None else v


class ZoneMove(_Strict):
    parent: Id | None


class GroupPut(_Strict):
    name: str = Field("", max_length=200)
    zones: list[Id] = Field(default_factory=list, max_length=10_000)


class ReceiverProvision(ReceiverConfig):
    model_config = ConfigDict(extra="forbid")
    id: Id | None = None  # type: ignore[assignment]  # generated when absent


#: receivers per `POST /receivers/bulk` request: bigger lists go in several requests (a 10,000-row
#: body is ~1 MB, the default `max_body_mb`; parsing and answering it stays a few ms)
MAX_BULK_RECEIVERS = 10_000


class ReceiverBulk(_Strict):
    """All or nothing: every row is checked before any is written."""
    receivers: list[ReceiverProvision] = Field(min_length=1, max_length=MAX_BULK_RECEIVERS)


def validate_receivers(items: list) -> tuple[list[dict], list[tuple[int, tuple, str]]]:
    """Each row through `ReceiverProvision`, one call per row (one pydantic call over 10,000
    rows would hold the GIL, and with it the tick, for tens of ms). Returns the valid rows
    (dumped) and every problem as (row index, field path inside the row, message)."""
    rows: list[dict] = []
    problems: list[tuple[int, tuple, str]] = []
    for i, it in enumerate(items):
        try:
            rows.append(ReceiverProvision.model_validate(it).model_dump())
        except ValidationError as e:
            for err in e.errors(include_url=False, include_input=False, include_context=False):
                problems.append((i, tuple(err.get("loc", ())), err.get("msg", "")))
        except ValueError as e:  # a validator's own error outside pydantic's wrapper
            problems.append((i, (), str(e)))
    return rows, problems


class ReceiverUpdate(_Strict):
    name: str | None = Field(None, max_length=200)
    address: str | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    link: Literal["sim", "ethernet", "wifi"] | None = None
    notes: str | None = Field(None, max_length=2000)

    @field_validator("address")
    @classmethod
    def _addr(cls, v):
        if v is not None:
            parse_hostport(v, "receiver address")
        return v


class ReceiverMove(_Strict):
    zone: Id


class MediaUpdate(_Strict):
    title: str | None = Field(None, max_length=300)
    language: Lang | None = None
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(None, max_length=50)


Username = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@\-]*$")]
Password = Annotated[str, Field(min_length=8, max_length=256)]


class UserCreate(_Strict):
    username: Username
    display_name: str = Field("", max_length=100)  # e.g. "Ông Nguyễn Văn An"
    password: Password | None = None
    role: Literal[ROLES]  # type: ignore[valid-type]
    scope: list[Id] = Field(default_factory=list, max_length=1000)


class UserUpdate(_Strict):
    display_name: str | None = Field(None, max_length=100)
    password: Password | None = None
    role: Literal[ROLES] | None = None  # type: ignore[valid-type]
    scope: list[Id] | None = Field(None, max_length=1000)
    disabled: bool | None = None


class TokenCreate(_Strict):
    name: str = Field("", max_length=100)


class Login(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


def zone_from_row(r: dict, extra_unicast: Sequence[str] = ()) -> Zone:
    """`unicast` entries and receiver addresses may carry a packet time: HOST:PORT/40."""
    uni: list[tuple[str, int]] = []
    ptime: dict[tuple[str, int], int] = {}
    _add_destinations(uni, ptime, set(), r.get("unicast") or [], "unicast destination")
    _add_destinations(uni, ptime, set(uni), extra_unicast, "receiver address")
    return Zone(id=r["id"], name=r.get("name") or r["id"], parent=r.get("parent"),
                multicast=parse_hostport(r["multicast"], "multicast") if r.get("multicast") else None,
                unicast=uni, level=r.get("level") or "", code=r.get("code") or "",
                language=r.get("language") or "vi", ptime=ptime)


def _add_destinations(uni: list, ptime: dict, seen: set, texts: Iterable[str], what: str) -> None:
    # a set, not `in uni`: a zone with 10,000 receivers must not cost 50 million comparisons
    for text in texts:
        host, port, pt = parse_destination(text, what)
        if (host, port) not in seen:
            seen.add((host, port))
            uni.append((host, port))
            if pt != 20:
                ptime[(host, port)] = pt


def receiver_destination(rx: dict, cellular_ptime: int = 20) -> str | None:
    """The destination a stored receiver adds to its zone (HOST:PORT[/PTIME]), None if none.
    A static receiver on a SIM link gets `cellular_ptime` ms packets unless its address names
    a packet time itself."""
    if rx.get("status") == "retired" or not rx.get("address"):
        return None
    a = rx["address"]
    if rx.get("link") == "sim" and cellular_ptime != 20 and "/" not in a:
        a = f"{a}/{cellular_ptime}"
    return a


def zone_with_destinations(zone: Zone, texts: Iterable[str]) -> Zone:
    """A copy of `zone` with these receiver destinations appended (the ones it already has are
    skipped): exactly what rebuilding it from its rows would give when receivers were added
    last, without reading the others. Raises ZoneError for a malformed destination."""
    uni, ptime = list(zone.unicast), dict(zone.ptime)
    _add_destinations(uni, ptime, set(uni), texts, "receiver address")
    return dataclasses.replace(zone, unicast=uni, ptime=ptime)


def tree_from_rows(zones: list[dict], groups: list[dict], receivers: list[dict],
                   cellular_ptime: int = 20) -> ZoneTree:
    """Raises ZoneError when the rows do not make a tree (unknown parent, cycle, bad group)."""
    addrs: dict[str, list[str]] = {}
    for rx in receivers:
        a = receiver_destination(rx, cellular_ptime)
        if a is not None:
            addrs.setdefault(rx["zone"], []).append(a)
    tree = ZoneTree()
    for r in zones:
        tree.add(zone_from_row(r, addrs.get(r["id"], ())))
    tree.validate()
    for g in groups:
        tree.set_group(g["id"], [z for z in g["zones"]])
    return tree
