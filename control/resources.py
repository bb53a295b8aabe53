"""Handlers for the stored resources: sessions, zones, groups, receivers, media, users, audit.

Mixed into LoaApp (control/app.py). Who may call each one is decided before it runs, by the
policy table; these only validate input and call the service layer (control/service.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
import unicodedata
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

from control import auth, models as m
from control.errors import ApiError
from control.service import media_root, public_receiver, public_user
from streamer.ingest.base import MediaError

if TYPE_CHECKING:  # pragma: no cover
    from control.app import LoaApp

MB = 1024 * 1024
CHUNK = 256 * 1024


def _j(*a, **k):
    from control.app import json_response
    return json_response(*a, **k)


async def _body(request, model):
    from control.app import parse_body
    return await parse_body(request, model)


def safe_filename(name: str | None) -> str:
    """Only for display: the stored file is named by its content hash, never by this."""
    name = unicodedata.normalize("NFC", os.path.basename((name or "").replace("\\", "/")))
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip().lstrip(".")
    return name[:200] or "upload"


def probe_upload(path: str) -> dict:
    """Blocking (worker thread): what the file is, how long, how loud. MediaError if unplayable."""
    from streamer.ingest.file import probe
    from streamer.mixer.loudness import measure_file
    info = probe(path)
    try:
        lufs = measure_file(path, max_seconds=300.0)
        lufs = lufs if lufs == lufs and abs(lufs) != float("inf") else None
    except MediaError:
        raise
    except Exception:
        lufs = None
    return {"format": info.format_name, "codec": info.codec_name, "duration_s": info.duration_s,
            "sample_rate": info.sample_rate, "channels": info.channels,
            "loudness_lufs": round(lufs, 2) if lufs is not None else None}


def public_media(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "path"}


class ResourceHandlers:
    # ------------------------------------------------------------------ session
    async def login(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.Login)
        keys = [f"addr:{request.remote}", f"user:{body.username.lower()}"]
        request["audit_target"] = body.username
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            raise ApiError(429, "too_many_attempts",
                           f"too many failed sign-ins; try again in {int(wait) + 1} s",
                           retry_after_s=int(wait) + 1)
        u = await self.db.user_by_name(body.username)
        ok = await asyncio.get_running_loop().run_in_executor(
            None, auth.verify_password, body.password, u["password_hash"] if u else None)
        if not ok or u is None or u["disabled"]:
            self.throttle.failed(keys)
            raise ApiError(401, "invalid_credentials", "wrong username or password")
        self.throttle.succeeded(keys)
        sid = secrets.token_urlsafe(32)
        ttl = self.settings.session_ttl_h * 3600
        await self.db.insert_session(auth.token_hash(sid), u["id"], time.time() + ttl)
        resp = _j({"user": public_user(u), "expires_in_s": int(ttl)})
        secure = self.settings.cookie_secure if self.settings.cookie_secure is not None \
            else request.secure
        resp.set_cookie("loa_session", sid, max_age=int(ttl), path="/", httponly=True,
                        samesite="Strict", secure=secure)
        return resp

    async def me(self: "LoaApp", request: web.Request) -> web.Response:
        p: auth.Principal = request["principal"]
        lim = auth.ROLE_LIMITS[p.role]
        # what the caller may start (the live page shows only these): the highest level, and
        # the zones whose subtrees it may address (None: everywhere)
        return _j(dict(p.to_dict(),
                       max_level=lim.max_level.label if lim.max_level is not None else None,
                       zones=None if lim.anywhere else list(p.scope)))

    async def logout(self: "LoaApp", request: web.Request) -> web.Response:
        sid = request.cookies.get("loa_session")
        if sid:
            await self.db.delete_session(auth.token_hash(sid))
        resp = _j({"signed_out": True})
        resp.del_cookie("loa_session", path="/")
        return resp

    # ------------------------------------------------------------------ zones and groups
    def _zone_dict(self: "LoaApp", zid: str, status: dict) -> dict:
        z = self.engine.tree.zones[zid]
        d = z.to_dict()
        d["on_air"] = status.get(zid, {}).get("on_air", [])
        d["sdp"] = f"/api/v1/zones/{zid}/sdp"
        return d

    async def list_zones(self: "LoaApp", request: web.Request) -> web.Response:
        status = self.engine.zone_status()
        out = [self._zone_dict(zid, status) for zid in list(self.engine.tree.zones)]
        groups = [{"id": g, "zones": mem} for g, mem in self.engine.tree.groups.items()]
        return _j({"zones": out, "groups": groups})

    async def get_zone(self: "LoaApp", request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        self._zone(zid)
        d = self._zone_dict(zid, self.engine.zone_status())
        d["children"] = self.engine.tree.children(zid)
        d["receivers"] = await self.db.count_receivers_in(zid)
        return _j(d)

    async def create_zone(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.ZoneCreate)
        request["audit_target"] = body.id
        await self.state.create_zone(body.model_dump())
        return _j(self._zone_dict(body.id, {}), status=201)

    async def update_zone(self: "LoaApp", request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        body = await _body(request, m.ZoneUpdate)
        changes = body.model_dump(exclude_unset=True)
        request["audit_detail"] = {"changes": sorted(changes)}
        await self.state.update_zone(zid, changes)
        return _j(self._zone_dict(zid, {}))

    async def move_zone(self: "LoaApp", request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        body = await _body(request, m.ZoneMove)
        request["audit_detail"] = {"parent": body.parent}
        await self.state.move_zone(zid, body.parent)
        return _j(self._zone_dict(zid, {}))

    async def delete_zone(self: "LoaApp", request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        await self.state.delete_zone(zid)
        return _j({"deleted": zid})

    async def import_zones(self: "LoaApp", request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_encoding", "the CSV must be UTF-8") from None
        result = await self.state.import_csv(text)
        request["audit_detail"] = result
        return _j(result)

    async def list_groups(self: "LoaApp", request: web.Request) -> web.Response:
        return _j({"groups": await self.db.groups()})

    async def put_group(self: "LoaApp", request: web.Request) -> web.Response:
        gid = request.match_info["group"]
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$", gid):
            raise ApiError(422, "invalid_request", "group id: letters, digits, _ . - (max 100)")
        body = await _body(request, m.GroupPut)
        return _j(await self.state.put_group(gid, body.name, body.zones))

    async def delete_group(self: "LoaApp", request: web.Request) -> web.Response:
        gid = request.match_info["group"]
        await self.state.delete_group(gid)
        return _j({"deleted": gid})

    # ------------------------------------------------------------------ receivers
    async def list_receivers(self: "LoaApp", request: web.Request) -> web.Response:
        zone, status = request.query.get("zone"), request.query.get("status")
        if status is not None and status not in ("provisioned", "retired"):
            raise ApiError(400, "invalid_query", "status is provisioned or retired")
        zones = None
        if zone is not None:
            self._zone(zone)
            zones = self.engine.tree.subtree(zone)
        rows = await self.db.receivers(status=status, zones=zones)
        live = request.query.get("live")
        out = [self._with_live(public_receiver(r)) for r in rows]
        if live in ("online", "offline", "never"):
            out = [r for r in out if r["live"]["state"] == live]
        return _j({"receivers": out})

    def _with_live(self: "LoaApp", r: dict) -> dict:
        """What the receiver protocol knows: online/offline, last seen, address, link quality,
        what it is playing (`never` when it has not registered since the server started)."""
        st = self.registry.status(r["id"]) if getattr(self, "registry", None) else None
        r["live"] = st if st else {"state": "never", "online": False}
        return r

    async def _receiver(self: "LoaApp", rid: str) -> dict:
        r = await self.db.receiver(rid)
        if r is None:
            raise ApiError(404, "unknown_receiver", f"no receiver with id {rid!r}")
        return r

    async def get_receiver(self: "LoaApp", request: web.Request) -> web.Response:
        return _j(self._with_live(public_receiver(await self._receiver(request.match_info["id"]))))

    async def provision_receiver(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.ReceiverProvision)
        out = await self.state.provision_receiver(body.model_dump())
        request["audit_target"] = out["id"]
        request["audit_detail"] = {"zone": out["zone"]}  # never the secret
        return _j(out, status=201)

    async def provision_receivers_bulk(self: "LoaApp", request: web.Request) -> web.Response:
        """`{"receivers": [ReceiverProvision, ...]}`, all or nothing. Rows are validated one by
        one (`validate_receivers`) and every bad row is reported, not just the first."""
        from control.app import read_json
        data = await read_json(request)
        if not isinstance(data, dict) or not isinstance(data.get("receivers"), list):
            raise ApiError(422, "invalid_request",
                           'the body must be a JSON object {"receivers": [{...}, ...]}')
        unknown = sorted(set(data) - {"receivers"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown field(s): {', '.join(unknown[:10])}")
        items = data["receivers"]
        if not items:
            raise ApiError(422, "invalid_request", "receivers: give at least one receiver")
        if len(items) > m.MAX_BULK_RECEIVERS:
            raise ApiError(413, "too_many_receivers",
                           f"{len(items)} receivers in one request; the limit is "
                           f"{m.MAX_BULK_RECEIVERS}: send them in several requests",
                           limit=m.MAX_BULK_RECEIVERS)
        rows, found = m.validate_receivers(items)
        problems = [{"field": ".".join(str(x) for x in ("receivers", i, *loc)), "problem": msg}
                    for i, loc, msg in found]
        if problems:
            summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
            raise ApiError(422, "invalid_request", f"{summary}; nothing was written",
                           problems=problems[:1000])
        zones = sorted({r["zone"] for r in rows})
        request["audit_target"] = f"{len(rows)} receivers"
        request["audit_detail"] = {"count": len(rows), "zones": zones[:100]}  # never the secrets
        out = await self.state.provision_receivers(rows)
        # one small dumps per receiver, not one big call that holds the GIL for 10,000 of them
        from control.app import json_dumps
        body = b'{"receivers": [' + b", ".join(json_dumps(r).encode() for r in out) + b"]}"
        return web.Response(body=body, status=201, content_type="application/json")

    async def update_receiver(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.ReceiverUpdate)
        changes = body.model_dump(exclude_unset=True)
        request["audit_detail"] = {"changes": sorted(changes)}
        return _j(await self.state.update_receiver(request.match_info["id"], changes))

    async def move_receiver(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.ReceiverMove)
        request["audit_detail"] = {"zone": body.zone}
        return _j(await self.state.update_receiver(request.match_info["id"], {"zone": body.zone}))

    async def retire_receiver(self: "LoaApp", request: web.Request) -> web.Response:
        out = await self.state.retire_receiver(request.match_info["id"])
        # forget it in the receiver protocol and rotate the media key it knew
        self.registry.retire(out["id"], time.monotonic(), time.time())
        self.receiver_secrets.pop(out["id"], None)
        return _j(out)

    # ------------------------------------------------------------------ media
    async def list_media(self: "LoaApp", request: web.Request) -> web.Response:
        rows = await self.db.media_list(request.query.get("language"), request.query.get("tag"))
        return _j({"media": [public_media(r) for r in rows]})

    async def _media(self: "LoaApp", mid: str) -> dict:
        r = await self.db.media(mid)
        if r is None:
            raise ApiError(404, "unknown_media", f"no media with id {mid!r}")
        return r

    async def get_media(self: "LoaApp", request: web.Request) -> web.Response:
        return _j(public_media(await self._media(request.match_info["id"])))

    async def update_media(self: "LoaApp", request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        await self._media(mid)
        body = await _body(request, m.MediaUpdate)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        if changes:
            await self.db.update_media(mid, **changes)
        request["audit_detail"] = {"changes": sorted(changes)}
        return _j(public_media(await self._media(mid)))

    def _media_users(self: "LoaApp", mid: str) -> list[str]:
        return [b["id"] for b in self.engine.list_broadcasts()
                if (b.get("source") or {}).get("media_id") == mid]

    async def delete_media(self: "LoaApp", request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        async with self.media_lock:
            row = await self._media(mid)
            users = self._media_users(mid)
            if users:
                raise ApiError(409, "media_in_use",
                               f"media {mid} is in use by broadcast(s) {', '.join(users)}",
                               broadcasts=users)
            await self.db.delete_media(mid)
            try:
                await asyncio.get_running_loop().run_in_executor(None, os.unlink, row["path"])
            except FileNotFoundError:
                pass
        return _j({"deleted": mid})

    async def upload_media(self: "LoaApp", request: web.Request) -> web.Response:
        """Streamed to a temporary file while hashing; nothing stays behind unless it is whole,
        within the limit and playable."""
        if not request.content_type.startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type",
                           "upload with Content-Type: multipart/form-data (field `file`)")
        limit = self.settings.max_upload_mb * MB
        clen = request.content_length
        if clen is not None and clen > limit + 64 * 1024:
            raise ApiError(413, "upload_too_large",
                           f"the upload is larger than the limit of {self.settings.max_upload_mb} MB")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError, KeyError) as e:
            raise ApiError(400, "malformed_multipart", f"cannot read the multipart body: {e}") from None
        root = media_root(self.settings)
        incoming = root / ".incoming"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: incoming.mkdir(parents=True, exist_ok=True))
        tmp = incoming / f"{secrets.token_hex(8)}.part"
        fields: dict[str, str] = {}
        filename, sha, size = None, hashlib.sha256(), 0
        keep = False
        f = None
        try:
            try:
                while True:
                    part = await reader.next()
                    if part is None:
                        break
                    if not hasattr(part, "read_chunk"):
                        raise ApiError(400, "malformed_multipart", "nested multipart is not accepted")
                    if part.name == "file":
                        if f is not None:
                            raise ApiError(400, "malformed_multipart", "send one `file` per upload")
                        filename = safe_filename(part.filename)
                        f = await loop.run_in_executor(None, open, tmp, "wb")
                        buf = bytearray()
                        while True:
                            chunk = await part.read_chunk(CHUNK)
                            if not chunk:
                                break
                            size += len(chunk)
                            if size > limit:
                                raise ApiError(413, "upload_too_large",
                                               f"the upload is larger than the limit of "
                                               f"{self.settings.max_upload_mb} MB")
                            sha.update(chunk)
                            buf += chunk
                            if len(buf) >= 4 * MB:
                                await loop.run_in_executor(None, f.write, bytes(buf))
                                buf.clear()
                        if buf:
                            await loop.run_in_executor(None, f.write, bytes(buf))
                        await loop.run_in_executor(None, f.close)
                    elif part.name in ("title", "language", "tags"):
                        value = await part.read_chunk(4096)
                        if await part.read_chunk(1):
                            raise ApiError(422, "invalid_request", f"field {part.name} is too long")
                        try:
                            fields[part.name] = value.decode("utf-8").strip()
                        except UnicodeDecodeError:
                            raise ApiError(422, "invalid_request",
                                           f"field {part.name} is not UTF-8") from None
                    else:
                        raise ApiError(422, "invalid_request", f"unknown form field {part.name!r}; "
                                       "expected file, title, language, tags")
            except ApiError:
                raise
            except (ValueError, AssertionError, RuntimeError, KeyError, asyncio.IncompleteReadError,
                    ConnectionError) as e:
                raise ApiError(400, "truncated_upload",
                               f"the upload is incomplete or malformed: {e}") from None
            except Exception as e:  # aiohttp ClientPayloadError and friends: the body broke off
                if type(e).__module__.startswith("aiohttp"):
                    raise ApiError(400, "truncated_upload",
                                   f"the upload is incomplete: {type(e).__name__}") from None
                raise
            if f is None:
                raise ApiError(422, "missing_file", "the form has no `file` field")
            if size == 0:
                raise ApiError(422, "empty_file", "the uploaded file is empty")
            meta = m.MediaUpdate.model_validate({
                "title": fields.get("title") or None, "language": fields.get("language") or None,
                "tags": [t.strip() for t in fields.get("tags", "").split(",") if t.strip()] or None})
            digest = sha.hexdigest()
            try:
                info = await loop.run_in_executor(None, probe_upload, str(tmp))
            except MediaError as e:
                raise ApiError(422, "unsupported_media", f"not a playable audio file: {e}") from None
            existing = await self.db.media_by_hash(digest)
            if existing is not None:
                request["audit_target"] = existing["id"]
                return _j(dict(public_media(existing), duplicate=True), status=200)
            final = root / digest
            await loop.run_in_executor(None, os.replace, tmp, final)
            keep = True
            row = {"id": digest[:16], "sha256": digest, "path": str(final), "filename": filename,
                   "size": size, **info, "title": meta.title or filename,
                   "language": meta.language or "vi", "tags": meta.tags or [],
                   "created_by": request["principal"].name}
            try:
                await self.db.insert_media(row)
            except Exception:
                keep = False
                await loop.run_in_executor(None, lambda: final.unlink(missing_ok=True))
                raise
            request["audit_target"] = row["id"]
            request["audit_detail"] = {"filename": filename, "size": size}
            return _j(public_media(await self._media(row["id"])), status=201)
        except ValidationError as e:
            from control.app import validation_error
            raise validation_error(e) from None
        finally:
            if f is not None and not f.closed:
                await loop.run_in_executor(None, f.close)
            if not keep:
                await loop.run_in_executor(None, lambda: tmp.unlink(missing_ok=True))

    # ------------------------------------------------------------------ users and tokens
    @staticmethod
    def _uid(request: web.Request) -> int:
        raw = request.match_info["id"]
        if not raw.isdigit() or len(raw) > 12:
            raise ApiError(404, "unknown_user", f"no user with id {raw!r}")
        return int(raw)

    async def list_users(self: "LoaApp", request: web.Request) -> web.Response:
        return _j({"users": [public_user(u) for u in await self.db.users()]})

    async def get_user(self: "LoaApp", request: web.Request) -> web.Response:
        u = await self.db.user(self._uid(request))
        if u is None:
            raise ApiError(404, "unknown_user", f"no user with id {request.match_info['id']!r}")
        return _j(public_user(u))

    async def create_user(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.UserCreate)
        request["audit_target"] = body.username
        request["audit_detail"] = {"role": body.role, "scope": body.scope}
        u = await self.state.create_user(body.username, body.role, body.scope, body.password,
                                         body.display_name)
        self._users_exist = True  # ends local bootstrap mode at once
        return _j(u, status=201)

    async def update_user(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.UserUpdate)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        request["audit_detail"] = {"changes": sorted(changes)}  # never the password itself
        return _j(await self.state.update_user(self._uid(request), changes))

    async def list_tokens(self: "LoaApp", request: web.Request) -> web.Response:
        uid = self._uid(request)
        if await self.db.user(uid) is None:
            raise ApiError(404, "unknown_user", f"no user with id {uid}")
        return _j({"tokens": await self.db.tokens(uid)})

    async def create_token(self: "LoaApp", request: web.Request) -> web.Response:
        body = await _body(request, m.TokenCreate)
        out = await self.state.create_token(self._uid(request), body.name)
        request["audit_target"] = f"token {out['id']} of user {out['user_id']}"
        return _j(out, status=201)

    async def rotate_token(self: "LoaApp", request: web.Request) -> web.Response:
        out = await self.state.rotate_token(request.match_info["id"])
        request["audit_detail"] = {"new_token": out["id"]}
        return _j(out, status=201)

    async def revoke_token(self: "LoaApp", request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        if await self.db.token(tid) is None:
            raise ApiError(404, "unknown_token", f"no token with id {tid!r}")
        await self.db.revoke_token(tid)
        return _j({"revoked": tid})

    # ------------------------------------------------------------------ audit
    async def audit_log(self: "LoaApp", request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
            limit = min(max(int(request.query.get("limit", "500")), 1), 10_000)
        except ValueError:
            raise ApiError(400, "invalid_query", "since and limit must be integers") from None
        if since < 0 or since > 2 ** 62:
            raise ApiError(400, "invalid_query", "since must be a non-negative sequence number")
        rows = await self.db.audit_log(since, limit, request.query.get("actor"),
                                       request.query.get("action"))
        return _j({"entries": rows})
