"""Sign in, who am I, sign out."""
from __future__ import annotations

import asyncio
import secrets
import time

from aiohttp import web

from control import auth
from control import models as m
from control import throttle
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
        # per (username, address), growing blocks; per username a budget that slows, never
        # blocks (control/throttle.py)
        self.throttle = throttle.LoginThrottle(limit=settings.login_attempts,
                                               user_budget=settings.login_user_budget)
        self.gate = throttle.SlowGate()

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
        addr = request.remote or ""
        request["audit_target"] = body.username
        verdict = self.throttle.check(body.username, addr, time.monotonic())
        if verdict.retry_after_s > 0:
            wait = int(verdict.retry_after_s) + 1
            request["audit_detail"] = {"throttle": verdict.to_dict()}
            raise HttpError(429, "too_many_attempts",
                            f"too many failed sign-ins from this address for this user; try "
                            f"again in {wait} s", retry_after_s=wait)

        async def check() -> tuple[dict | None, bool]:
            u = await self.db.user_by_name(body.username)
            ok = await asyncio.get_running_loop().run_in_executor(
                None, auth.verify_password, body.password, u["password_hash"] if u else None)
            return u, ok

        if verdict.delay_s > 0:  # the name is being guessed from elsewhere: slowed, in turn
            request["audit_detail"] = {"throttle": verdict.to_dict()}
            ran, res = await self.gate.run(body.username.strip().lower(), verdict.clean,
                                           verdict.delay_s, check)
            if not ran or res is None:
                raise HttpError(429, "too_many_attempts",
                                "this user is being signed in to from many places; try again "
                                "in a few seconds", retry_after_s=int(verdict.delay_s) + 1)
            u, ok = res
        else:
            u, ok = await check()
        if not ok or u is None or u["disabled"]:
            after = self.throttle.failed(body.username, addr, time.monotonic())
            request["audit_detail"] = {"throttle": after.to_dict()}
            raise HttpError(401, "invalid_credentials", "wrong username or password")
        self.throttle.succeeded(body.username, addr)
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
