"""Sign in, who am I, sign out."""
from __future__ import annotations

import asyncio
import secrets
import time

from aiohttp import web

from control import auth
from control import models as m
from control.access import SESSION_COOKIE
from control.db import Database
from control.http import HttpError, Route, json_response, parse_body
from control.policy import Policy, Principal
from control.service import public_user
from control.settings import Settings


class SessionHandlers:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.throttle = auth.LoginThrottle(limit=settings.login_attempts)

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/session", self.login, "session.login",
                  "Sign in with username and password; sets an HttpOnly session cookie",
                  body=m.Login, errors=(400, 401, 415, 422, 429)),
            Route("GET", "/session", self.me, "session.me", "Who the caller is", errors=(401,)),
            Route("DELETE", "/session", self.logout, "session.logout", "Sign out", errors=(401,)),
        ]

    async def login(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.Login)
        keys = [f"addr:{request.remote}", f"user:{body.username.lower()}"]
        request["audit_target"] = body.username
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            raise HttpError(429, "too_many_attempts",
                            f"too many failed sign-ins; try again in {int(wait) + 1} s",
                            retry_after_s=int(wait) + 1)
        u = await self.db.user_by_name(body.username)
        ok = await asyncio.get_running_loop().run_in_executor(
            None, auth.verify_password, body.password, u["password_hash"] if u else None)
        if not ok or u is None or u["disabled"]:
            self.throttle.failed(keys)
            raise HttpError(401, "invalid_credentials", "wrong username or password")
        self.throttle.succeeded(keys)
        sid = secrets.token_urlsafe(32)
        ttl = self.settings.session_ttl_h * 3600
        await self.db.insert_session(auth.token_hash(sid), u["id"], time.time() + ttl)
        resp = json_response({"user": public_user(u), "expires_in_s": int(ttl)})
        secure = self.settings.cookie_secure if self.settings.cookie_secure is not None \
            else request.secure
        resp.set_cookie(SESSION_COOKIE, sid, max_age=int(ttl), path="/", httponly=True,
                        samesite="Strict", secure=secure)
        return resp

    async def me(self, request: web.Request) -> web.Response:
        p: Principal = request["principal"]
        return json_response(dict(p.to_dict(), **Policy.what_may_start(p)))

    async def logout(self, request: web.Request) -> web.Response:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            await self.db.delete_session(auth.token_hash(sid))
        resp = json_response({"signed_out": True})
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp
