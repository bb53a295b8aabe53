"""Who may do what: roles, the action table, and the limits on broadcasts. The one place roles
are decided; every other module asks here.

Sans-IO: nothing here touches the network or the database. Every route is registered with an
*action* name (control/http.Route); the access layer (control/access.py) authenticates the
caller and asks `Policy.allows`. What a role may start, where, and whom it may stop or hang up
on comes from `ROLE_LIMITS`, through `Policy.check_broadcast`, `may_stop` and `may_hang_up`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from control.errors import Forbidden, Invalid
from streamer.mixer.arbitration import Level

ROLES = ("admin", "operator", "official", "alert_authority", "viewer")
ALL = frozenset(ROLES)
ADMIN = frozenset({"admin"})
PUBLIC = "public"  # no credentials needed
STARTERS = frozenset({"admin", "operator", "official", "alert_authority"})

# action -> roles that may perform it (scope and level limits on top, see ROLE_LIMITS)
POLICY: dict[str, frozenset[str] | str] = {
    "health.read": PUBLIC, "openapi.read": PUBLIC, "metrics.read": PUBLIC, "sdp.read": PUBLIC,
    "session.login": PUBLIC, "pages.read": PUBLIC,
    "session.logout": ALL, "session.me": ALL,
    "zones.read": ALL, "zones.write": ADMIN,
    "receivers.read": frozenset({"admin", "operator", "viewer"}), "receivers.write": ADMIN,
    "media.read": ALL, "media.write": frozenset({"admin", "operator"}),
    # text to speech: previewing a text is part of starting a broadcast; rendering one into the
    # library is a media write
    "tts.read": ALL, "tts.preview": STARTERS, "media.tts": frozenset({"admin", "operator"}),
    "broadcasts.read": ALL,
    "broadcasts.start": STARTERS,
    "broadcasts.stop": STARTERS,
    "asrun.read": ALL, "events.read": ALL,
    "schedules.read": ALL, "schedules.write": STARTERS,  # + level and scope as for broadcasts
    # disaster alerts (CAP): pushed by the authorities' accounts, read by everyone
    "alerts.push": frozenset({"admin", "alert_authority"}), "alerts.read": ALL,
    "users.read": ADMIN, "users.write": ADMIN,
    "audit.read": ADMIN,
    # going live: the live routes check these themselves (they need the body's zones and level)
    "live.start": STARTERS,
    "live.stop": STARTERS,
    "live.status": ALL,
    "live.connect": STARTERS,   # a standing microphone connection (press to talk)
    # what the RTP ingest ports hear (zones, sender addresses): like receivers, not public
    "live.ingest.read": frozenset({"admin", "operator", "viewer"}),
    # listening, replay archive and e-boards (issue 18): public zones to anybody; the handlers
    # ask `may_hear` for a private zone (a signed-in account that may read it)
    "listen.read": PUBLIC, "listen.write": ADMIN,
    "archive.read": PUBLIC, "boards.read": PUBLIC,
}
#: actions whose routes authorise themselves (through Access.authorize) instead of the
#: middleware, because the decision needs what the body or the broadcast says
SELF_CHECKED = frozenset({"live.start", "live.stop", "live.status"})


@dataclass(frozen=True)
class RoleLimits:
    max_level: Level | None  # highest level this role may start
    min_level: Level = Level.BACKGROUND
    anywhere: bool = False  # False: only inside the user's zone scope
    stop_any_in_scope: bool = False  # False: only broadcasts it owns
    raw_paths: bool = False
    hang_up_any: bool = False  # may end somebody else's live talk


ROLE_LIMITS: dict[str, RoleLimits] = {
    "admin": RoleLimits(Level.EMERGENCY, anywhere=True, stop_any_in_scope=True, raw_paths=True,
                        hang_up_any=True),
    "operator": RoleLimits(Level.PRIORITY, stop_any_in_scope=True),
    "official": RoleLimits(Level.PRIORITY),
    "alert_authority": RoleLimits(Level.EMERGENCY, min_level=Level.EMERGENCY, anywhere=True),
    "viewer": RoleLimits(None),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    user_id: int | None = None
    scope: tuple[str, ...] = ()  # zone ids whose subtrees this user may address
    via: str = "token"  # token | session | admin-token | bootstrap
    display_name: str = ""

    @property
    def id(self) -> str:
        """Who this is, stably: a user by its row id (a user deleted and another made with the
        same name is somebody else), a built-in principal by its kind. Ownership is decided on
        this, never on a name people can choose."""
        if self.user_id is not None:
            return f"user:{self.user_id}"
        return f"{self.via}:{self.name}"

    @property
    def label(self) -> str:
        """What other people see (a refusal names the holder by it)."""
        return self.display_name or self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "user_id": self.user_id,
                "scope": list(self.scope), "via": self.via, "display_name": self.label}


class Tree(Protocol):
    """What the policy needs of a zone tree."""
    @property
    def zones(self) -> Mapping[str, Any]: ...

    def subtree(self, zid: str) -> set[str]: ...


class Policy:
    @staticmethod
    def allows(principal: Principal | None, action: str) -> bool:
        roles = POLICY[action]  # KeyError: a route registered without an action is a bug
        if roles == PUBLIC:
            return True
        return principal is not None and principal.role in roles

    @staticmethod
    def is_public(action: str) -> bool:
        return POLICY[action] == PUBLIC

    @staticmethod
    def scope_zones(principal: Principal, tree: Tree) -> set[str] | None:
        """Zones the principal may address; None means everywhere."""
        if ROLE_LIMITS[principal.role].anywhere:
            return None
        out: set[str] = set()
        for z in principal.scope:
            if z in tree.zones:
                out |= tree.subtree(z)
        return out

    @classmethod
    def read_zones(cls, principal: Principal | None, tree: Tree) -> set[str] | None:
        """Zones whose broadcasts, events and receivers the principal may read; None means
        everywhere. Roles that act anywhere read everywhere; so does a viewer given no scope
        (a province-wide observer); everybody else reads inside their scope's subtrees, and
        nobody anonymous reads anything."""
        if principal is None:
            return set()
        if ROLE_LIMITS[principal.role].anywhere or (principal.role == "viewer"
                                                    and not principal.scope):
            return None
        return cls.scope_zones(principal, tree) or set()

    @classmethod
    def may_hear(cls, principal: Principal | None, tree: Tree, zone: str, public: bool) -> bool:
        """Listening, replays and e-boards of a zone: anybody for a zone marked public,
        otherwise a signed-in account that may read the zone."""
        if public:
            return True
        zones = cls.read_zones(principal, tree)
        return zones is None or zone in zones

    @staticmethod
    def what_may_start(principal: Principal) -> dict[str, Any]:
        """What the caller may start (the live page shows only these): the highest level, and
        the zones whose subtrees it may address (None: everywhere)."""
        lim = ROLE_LIMITS[principal.role]
        return {"max_level": lim.max_level.label if lim.max_level is not None else None,
                "zones": None if lim.anywhere else list(principal.scope)}

    @classmethod
    def check_broadcast(cls, principal: Principal, tree: Tree, reached: set[str], level: Level,
                        source_kind: str) -> None:
        lim = ROLE_LIMITS[principal.role]
        if lim.max_level is None or level > lim.max_level:
            raise Forbidden(f"role {principal.role} may not start {level.label} broadcasts"
                            + (f" (highest: {lim.max_level.label})" if lim.max_level is not None else ""))
        if level < lim.min_level:
            raise Forbidden(f"role {principal.role} starts only {lim.min_level.label} broadcasts")
        if source_kind == "file" and not lim.raw_paths:
            raise Forbidden("only admin may play a server-side file path; upload it to the media "
                            "library and play it by id", code="raw_path_forbidden")
        allowed = cls.scope_zones(principal, tree)
        if allowed is not None:
            outside = sorted(reached - allowed)
            if outside:
                raise Forbidden(f"zones outside your scope: {', '.join(outside[:10])}",
                                code="out_of_scope")

    @staticmethod
    def check_raw_path(principal: Principal, path: str, media_dirs: Iterable[Path]) -> None:
        """Raw server-side paths: admin only (check_broadcast said so), and only under
        media_dirs. With no media_dirs configured, only the local bootstrap admin may use them
        (the developer on their own machine: `loa play`, `loa demo`)."""
        if "\x00" in path:
            raise Invalid("invalid_path", "the path contains a NUL byte")
        dirs = list(media_dirs)
        if not dirs:
            if principal.via == "bootstrap":
                return
            raise Forbidden("no media_dirs are configured, so server-side paths are refused; "
                            "upload the file to the media library instead", code="path_not_allowed")
        if path_allowed(path, dirs) is None:
            raise Forbidden("the path is not inside a configured media directory",
                            code="path_not_allowed")

    @classmethod
    def may_stop(cls, principal: Principal, tree: Tree, broadcast: Mapping[str, Any]) -> bool:
        lim = ROLE_LIMITS[principal.role]
        if principal.role == "admin":
            return True
        if owns(principal, broadcast):
            return True
        if not lim.stop_any_in_scope:
            return False
        allowed = cls.scope_zones(principal, tree)
        reached = set(broadcast.get("reached_zones", []))
        level = Level.parse(broadcast.get("level", "normal"))
        return (allowed is None or reached <= allowed) and level <= (lim.max_level or -1)

    @staticmethod
    def may_hang_up(principal: Principal, broadcast: Mapping[str, Any]) -> bool:
        """A live talk ends by its talker, or by a role that may end anyone's."""
        return owns(principal, broadcast) or ROLE_LIMITS[principal.role].hang_up_any


#: names no user may take: the built-in principals' (and what the audit log calls nobody)
RESERVED_NAMES = frozenset({"admin-token", "local-bootstrap", "anonymous", "system", "config"})


def reserved_name(name: str, extra: Iterable[str] = ()) -> bool:
    """A username that would read as a built-in principal (case-insensitive), or as one of
    `extra` (the configured inputs that act under their own names, e.g. RTP ingest ports)."""
    n = name.strip().lower()
    return n in RESERVED_NAMES or n in {e.lower() for e in extra}


def owns(principal: Principal, broadcast: Mapping[str, Any]) -> bool:
    """Ownership by identity: the starter's stable id (kept in the source description as
    `owner_id`). A record without one (started before ids were kept) falls back to the account
    name, except for a user whose name is a built-in principal's."""
    source = broadcast.get("source") or {}
    oid = source.get("owner_id") if isinstance(source, Mapping) else None
    if oid:
        return bool(oid == principal.id)
    if principal.user_id is not None and reserved_name(principal.name):
        return False
    return bool(broadcast.get("owner") == principal.name)


def path_allowed(path: str, media_dirs: list[Path]) -> str | None:
    """The real path if it lies under one of media_dirs (after resolving symlinks and ..)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return None
    for d in media_dirs:
        root = os.path.realpath(d)
        try:
            if os.path.commonpath([real, root]) == root:
                return real
        except ValueError:
            continue
    return None
