"""Who is calling, may they, and the audit log: the auth middleware and the `authorize` hook.

Credentials, in order: `Authorization: Bearer` (the admin token or a user token), the session
cookie, then local bootstrap mode (loopback, no admin token, no user yet). The middleware looks
up every route's action (registered with the route table, control/http.Route) and asks
control/policy.py; the routes whose decision needs the request's body or the broadcast concerned
(the live routes, `policy.SELF_CHECKED`) call `authorize` themselves, with the same credentials,
the same policy and the same audit log.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from control import auth, origin
from control.db import Database
from control.errors import DomainError, Invalid
from control.http import READ_METHODS, Handler, HttpError, as_http, from_aiohttp
from control.policy import SELF_CHECKED, Policy, Principal
from control.settings import Settings
from streamer.mixer.arbitration import Level
from streamer.zones import ZoneTree

log = logging.getLogger("loa.control")
SESSION_COOKIE = "loa_session"


class Access:
    def __init__(self, db: Database, settings: Settings, tree: Callable[[], ZoneTree]) -> None:
        self.db = db
        self.tree = tree  # control's zone tree, for scope checks
        #: aiohttp route -> its action name (filled when the route table is registered)
        self.actions: dict[Any, str] = {}
        host = settings.http.rpartition(":")[0] or "127.0.0.1"
        self.loopback_only = auth.is_loopback_host(host)
        self.admin_token_hash = (auth.token_hash(settings.admin_token.get_secret_value())
                                 if settings.admin_token and settings.admin_token.get_secret_value()
                                 else None)
        self.users_exist = False

    async def open(self) -> None:
        self.users_exist = await self.db.count_users() > 0
        if self.bootstrap_possible and not self.users_exist:
            log.warning("*** LOCAL BOOTSTRAP MODE: no admin token and no user yet, and the API "
                        "listens on loopback only, so requests from this machine act as admin. "
                        "Create a user (`loa admin create-user`) or set LOA_ADMIN_TOKEN to end it. ***")
            print("loa: WARNING local bootstrap mode: requests from 127.0.0.1/::1 act as admin "
                  "until a user exists or LOA_ADMIN_TOKEN is set", flush=True)

    # ------------------------------------------------------------------ bootstrap
    @property
    def bootstrap_possible(self) -> bool:
        return self.admin_token_hash is None and self.loopback_only

    async def bootstrap_active(self) -> bool:
        if not self.bootstrap_possible or self.users_exist:
            return False
        self.users_exist = await self.db.count_users() > 0  # a user made by the CLI ends it
        return not self.users_exist

    # ------------------------------------------------------------------ credentials
    async def authenticate(self, request: web.Request, public: bool) -> Principal | None:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, cred = header.partition(" ")
            p = await self._from_bearer(cred.strip()) if scheme.lower() == "bearer" else None
            if p is None and not public:
                raise HttpError(401, "invalid_token", "the bearer token is not valid")
            return p
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            s = await self.db.session(auth.token_hash(cookie))
            if s is not None:
                u = await self.db.user(s["user_id"])
                if u is not None and not u["disabled"]:
                    problem = origin.origin_problem(request.method, request.headers)
                    if problem:  # the cookie rides along with a same-site, cross-origin page
                        raise HttpError(403, "cross_origin", problem)
                    return Principal(u["username"], u["role"], u["id"], tuple(u["scope"]),
                                     via="session", display_name=u.get("display_name") or "")
            if not public:
                raise HttpError(401, "session_expired", "the session has ended; sign in again")
            return None
        if await self.bootstrap_active():
            try:
                peer_ok = ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
            except ValueError:
                peer_ok = False
            if peer_ok:
                sock = request.transport.get_extra_info("sockname") if request.transport else None
                problem = origin.bootstrap_problem(
                    request.method, request.headers, request.content_type, request.body_exists,
                    sock[1] if isinstance(sock, tuple) and len(sock) >= 2 else None)
                if problem:
                    if public:
                        return None
                    raise HttpError(403, "cross_origin", problem)
                return Principal("local-bootstrap", "admin", via="bootstrap")
        return None

    async def _from_bearer(self, token: str) -> Principal | None:
        if self.admin_token_hash is not None and auth.constant_eq(auth.token_hash(token),
                                                                  self.admin_token_hash):
            return Principal("admin-token", "admin", via="admin-token")
        parsed = auth.parse_token(token)
        if parsed is None:
            return None
        tid, secret = parsed
        t = await self.db.token(tid)
        if t is None or t["revoked_at"]:
            auth.constant_eq(auth.token_hash(secret), "0" * 64)  # same work either way
            return None
        if not auth.constant_eq(auth.token_hash(secret), t["hash"]):
            return None
        u = await self.db.user(t["user_id"])
        if u is None or u["disabled"]:
            return None
        return Principal(u["username"], u["role"], u["id"], tuple(u["scope"]), via="token",
                         display_name=u.get("display_name") or "")

    # ------------------------------------------------------------------ the middleware
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, ask the policy, run, and audit, for every route of the table but the
        self-checked ones (which call `authorize`)."""
        action = self.actions.get(request.match_info.route)
        if action is None or action in SELF_CHECKED:  # the router's 404/405, or self-checked
            return await handler(request)
        principal: Principal | None = None
        try:
            principal = await self.authenticate(request, public=Policy.is_public(action))
            if not Policy.allows(principal, action):
                if principal is None:
                    raise HttpError(401, "unauthenticated",
                                    "sign in (POST /api/v1/session) or send Authorization: Bearer TOKEN")
                raise HttpError(403, "forbidden", f"role {principal.role} may not {action}")
            request["principal"] = principal
            resp = await handler(request)
        except (HttpError, DomainError) as e:
            err = as_http(e)
            await self.audit(request, action, principal, err.status, err.code, err.message)
            raise
        except web.HTTPException as e:
            if e.status >= 400:
                err = from_aiohttp(request, e)
                await self.audit(request, action, principal, err.status, err.code, err.message)
                raise err from None
            raise
        except (asyncio.CancelledError, ConnectionResetError):  # the client went, or was cut off
            raise
        except Exception:
            await self.audit(request, action, principal, 500, "internal", "")
            raise
        if request.method not in READ_METHODS:
            await self.audit(request, action, principal, resp.status, "ok", "")
        return resp

    async def authorize(self, request: web.Request, action: str, zones: list[str],
                        level: str) -> Principal:
        """For routes that check their own access (the live routes): the same credentials,
        policy and audit log as every other route. For "live.start", also the level and scope
        of `zones` (a zone the tree does not know: Invalid). Raises HttpError 401 or a
        DomainError (403/422), audited either way."""
        principal = None
        try:
            principal = await self.authenticate(request, public=False)
            if principal is None:
                raise HttpError(401, "unauthenticated", "sign in first")
            if not Policy.allows(principal, action):
                raise HttpError(403, "forbidden", f"role {principal.role} may not {action}")
            if action == "live.start":
                tree = self.tree()
                try:
                    lvl = Level.parse(level)
                    reached = tree.resolve(zones)
                except ValueError as e:  # ZoneError too
                    raise Invalid("invalid_request", str(e)) from None
                Policy.check_broadcast(principal, tree, reached, lvl, "live")
        except (HttpError, DomainError) as e:
            err = as_http(e)
            await self.audit(request, action, principal, err.status, err.code, err.message,
                             force=True)
            raise
        if action != "live.status":
            request["audit_detail"] = {"zones": list(zones)[:50], "level": level}
            await self.audit(request, action, principal, 200, "ok", "", force=True)
        return principal

    @staticmethod
    def describe(principal: Principal) -> dict:
        """The caller as the live page sees it."""
        return {"name": principal.name, "display_name": principal.label, "role": principal.role,
                "zones": list(principal.scope),
                "max_level": Policy.what_may_start(principal)["max_level"]}

    async def audit(self, request: web.Request, action: str, principal: Principal | None,
                    status: int, code: str, message: str, force: bool = False) -> None:
        if not force and request.method in READ_METHODS and status not in (401, 403):
            return
        target = request.get("audit_target") or "/".join(request.match_info.values())
        detail = dict(request.get("audit_detail") or {})
        if message:
            detail["message"] = message[:500]
        try:
            await self.db.audit(
                actor=principal.name if principal else "anonymous",
                role=principal.role if principal else "", action=action, method=request.method,
                target=target[:300], address=request.remote or "",
                result="ok" if status < 400 else code, status=status, detail=detail)
        except Exception:
            log.exception("could not write the audit log")

