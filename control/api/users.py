"""Accounts and their API tokens."""
from __future__ import annotations

from aiohttp import web

from control import models as m
from control.access import Access
from control.db import Database
from control.errors import NotFound
from control.http import Route, json_response, parse_body
from control.service import ControlState, public_user


def user_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise NotFound("unknown_user", f"no user with id {raw!r}")
    return int(raw)


class UserHandlers:
    def __init__(self, state: ControlState, db: Database, access: Access) -> None:
        self.state = state
        self.db = db
        self.access = access  # a new user ends local bootstrap mode

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/users", self.list_users, "users.read", "Accounts", errors=(401, 403)),
            R("POST", "/users", self.create_user, "users.write", "Create an account",
              body=m.UserCreate, ok=201, errors=(400, 401, 403, 409, 415, 422)),
            R("GET", "/users/{id}", self.get_user, "users.read", "One account",
              errors=(401, 403, 404)),
            R("PATCH", "/users/{id}", self.update_user, "users.write",
              "Change role, scope or password; disable or enable",
              body=m.UserUpdate, errors=(400, 401, 403, 404, 415, 422)),
            R("GET", "/users/{id}/tokens", self.list_tokens, "users.read",
              "An account's API tokens (never the secrets)", errors=(401, 403, 404)),
            R("POST", "/users/{id}/tokens", self.create_token, "users.write",
              "Create an API token; the response carries it, shown only this once",
              body=m.TokenCreate, ok=201, errors=(400, 401, 403, 404, 415, 422)),
            R("POST", "/tokens/{id}/rotate", self.rotate_token, "users.write",
              "Replace a token with a new one (the old one stops working)", ok=201,
              errors=(401, 403, 404, 409)),
            R("DELETE", "/tokens/{id}", self.revoke_token, "users.write", "Revoke a token",
              errors=(401, 403, 404)),
        ]

    async def list_users(self, request: web.Request) -> web.Response:
        return json_response({"users": [public_user(u) for u in await self.db.users()]})

    async def get_user(self, request: web.Request) -> web.Response:
        u = await self.db.user(user_id(request))
        if u is None:
            raise NotFound("unknown_user", f"no user with id {request.match_info['id']!r}")
        return json_response(public_user(u))

    async def create_user(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.UserCreate)
        request["audit_target"] = body.username
        request["audit_detail"] = {"role": body.role, "scope": body.scope}
        u = await self.state.create_user(body.username, body.role, body.scope, body.password,
                                         body.display_name)
        self.access.users_exist = True  # ends local bootstrap mode at once
        return json_response(u, status=201)

    async def update_user(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.UserUpdate)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        request["audit_detail"] = {"changes": sorted(changes)}  # never the password itself
        return json_response(await self.state.update_user(user_id(request), changes))

    async def list_tokens(self, request: web.Request) -> web.Response:
        uid = user_id(request)
        if await self.db.user(uid) is None:
            raise NotFound("unknown_user", f"no user with id {uid}")
        return json_response({"tokens": await self.db.tokens(uid)})

    async def create_token(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.TokenCreate)
        out = await self.state.create_token(user_id(request), body.name)
        request["audit_target"] = f"token {out['id']} of user {out['user_id']}"
        return json_response(out, status=201)

    async def rotate_token(self, request: web.Request) -> web.Response:
        out = await self.state.rotate_token(request.match_info["id"])
        request["audit_detail"] = {"new_token": out["id"]}
        return json_response(out, status=201)

    async def revoke_token(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        if await self.db.token(tid) is None:
            raise NotFound("unknown_token", f"no token with id {tid!r}")
        await self.db.revoke_token(tid)
        return json_response({"revoked": tid})
