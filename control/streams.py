"""Long-lived event streams under control (issue 13): a cap per principal, and a stream ends
when its credentials no longer hold (a token revoked, a user disabled or demoted, a session
expired or signed out), checked again every `recheck_s`.

A viewer once held 1,000 event streams open, and 500 streams went on receiving events after
their token was revoked.
"""
from __future__ import annotations

import time

from aiohttp import web

from control.access import Access
from control.errors import DomainError, TooMany
from control.http import HttpError
from control.limits import PerKeyCap
from control.policy import Policy, Principal


class StreamLease:
    def __init__(self, guard: StreamGuard, request: web.Request, principal: Principal,
                 action: str) -> None:
        self.guard, self.request, self.principal, self.action = guard, request, principal, action
        self._checked = time.monotonic()
        self._closed = False

    async def valid(self) -> bool:
        """Still allowed? Re-authenticates at most every recheck_s (cheap in between)."""
        now = time.monotonic()
        if now - self._checked < self.guard.recheck_s:
            return True
        self._checked = now
        try:
            p = await self.guard.access.authenticate(self.request, public=False)
        except (HttpError, DomainError):
            return False
        return (p is not None and p.id == self.principal.id
                and Policy.allows(p, self.action))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.guard.cap.release(self.principal.id)


class StreamGuard:
    def __init__(self, access: Access, per_principal: int, recheck_s: float) -> None:
        self.access = access
        self.cap = PerKeyCap(per_principal)
        self.recheck_s = recheck_s

    def open(self, request: web.Request, action: str) -> StreamLease:
        """A lease for one stream of the request's (already authorised) principal, or TooMany
        (429) when it holds its limit already."""
        p: Principal = request["principal"]
        if not self.cap.acquire(p.id):
            raise TooMany("too_many_streams",
                          f"{p.name} already has {self.cap.limit} event streams open; close "
                          "one first", limit=self.cap.limit)
        return StreamLease(self, request, p, action)
