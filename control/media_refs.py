"""Who may change a media item, and who still needs it (issue 13: an operator scoped to one
commune renamed and deleted the province's shared media, and a running alert's recording
then vanished).

- Owner scope: a media item carries the zones of the account that uploaded or rendered it
  (`media.scope`, a JSON list), or NULL for province-wide items (uploaded by a role that acts
  anywhere, and every item made before the column existed). Only an account whose addressable
  zones cover every zone of the item's scope may rename, tag or delete it.
- References: the rooms that use media (broadcasts, schedules, alerts) plug a check into one
  `MediaReferences` registry; an item any of them names cannot be deleted (409 naming them).

Sans-IO apart from the checks the rooms register (they may read their stores).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from control.errors import Conflict
from control.policy import ROLE_LIMITS, Policy, Principal, Tree

Check = Callable[[str], Awaitable[list[str]]]


def owner_scope(principal: Principal) -> list[str] | None:
    """The scope a new item gets from the account that makes it (None: province-wide)."""
    return None if ROLE_LIMITS[principal.role].anywhere else sorted(principal.scope)


def may_edit(principal: Principal, tree: Tree, scope: list[str] | None) -> bool:
    """The account's zones cover the item's: province-wide items only to roles acting
    anywhere; an item of no zone (an account without a scope made it) only to those too."""
    mine = Policy.scope_zones(principal, tree)
    if mine is None:
        return True
    return bool(scope) and all(z in mine for z in scope or ())


def source_uses(source: object, media_id: str) -> bool:
    """A broadcast's source description (a dict, nested for programmes, playlists and
    variants) plays this library item."""
    if isinstance(source, dict):
        if source.get("media_id") == media_id or (source.get("kind") == "media"
                                                  and source.get("id") == media_id):
            return True
        return any(source_uses(v, media_id) for v in source.values())
    if isinstance(source, (list, tuple)):
        return any(source_uses(v, media_id) for v in source)
    return False


@dataclass(frozen=True)
class Reference:
    kind: str    # the plural key of the answer: broadcasts | schedules | alerts
    code: str    # the 409's code when this room is the first to name the item
    what: str    # how the message names them
    ids: tuple[str, ...]


class MediaReferences:
    """One registry of "who uses this media item"; each room registers its check."""

    def __init__(self) -> None:
        self._checks: list[tuple[str, str, str, Check]] = []

    def register(self, kind: str, code: str, what: str, check: Check) -> None:
        self._checks.append((kind, code, what, check))

    async def users(self, media_id: str) -> list[Reference]:
        out = []
        for kind, code, what, check in self._checks:
            ids = await check(media_id)
            if ids:
                out.append(Reference(kind, code, what, tuple(ids)))
        return out

    async def check_unused(self, media_id: str) -> None:
        """Conflict naming every user (the first room's code) if anything still uses it."""
        refs = await self.users(media_id)
        if refs:
            named = "; ".join(f"{r.what} {', '.join(r.ids)}" for r in refs)
            raise Conflict(refs[0].code, f"media {media_id} is used by {named}",
                           **{r.kind: list(r.ids) for r in refs})
