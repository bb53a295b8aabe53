"""The HTTP API (aiohttp) around the engine.

Handlers never touch audio: they validate, then call the engine's short thread-safe methods.
Blocking work (probing and measuring files, password hashing) runs in the default executor;
the database is aiosqlite (its own thread). Every route is declared once in `LoaApp.route_table`
with the action name the policy table (control/auth.py) knows it by; the auth middleware is the
only place that decides who may call what, and it writes the audit log.
"""
from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control import auth
from control.db import Database
from control.errors import ApiError
from control.events import EventHub
from control.resources import ResourceHandlers
from control.service import ControlState, path_allowed
from control.settings import Settings
from control.sources import BroadcastRequest, FileSpec, MediaSpec, build_source
from streamer.engine import BroadcastRefused, BroadcastSpec, Engine, EngineSettings
from streamer.ingest.base import MediaError
from streamer.rtp.fanout import Fanout
from streamer.rtp.opus import OpusSettings
from streamer.zones import Zone, ZoneError, ZoneTree, parse_hostport

log = logging.getLogger("loa.control")
VERSION = "0.1.0"
API = "/api/v1"
SESSION_COOKIE = "loa_session"
READ_METHODS = ("GET", "HEAD", "OPTIONS")

__all__ = ["ApiError", "create_app", "build_tree", "LoaApp"]


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def json_dumps(o: Any) -> str:
    return json.dumps(o, ensure_ascii=False, default=str)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=json_dumps)


def _http_error(request: web.Request, e: web.HTTPException) -> ApiError:
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return ApiError(413, "body_too_large", e.text or "request body too large")
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
    msg = {404: f"no such resource: {request.path}",
           405: f"{request.method} is not allowed on {request.path}"}.get(e.status, e.reason)
    return ApiError(e.status, code, msg)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, **e.extra)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        err = _http_error(request, e)
        return error_response(err.status, err.code, err.message)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal server error (logged on the server)")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Authenticate, check the policy table, run, and audit. The one place for all of it."""
    loa: LoaApp = request.app["loa"]
    action = loa.actions.get(request.match_info.route)
    if action is None:  # 404/405 from the router: nothing to authorise
        return await handler(request)
    principal: auth.Principal | None = None
    try:
        principal = await loa.authenticate(request, public=auth.POLICY[action] == auth.PUBLIC)
        if not auth.Policy.allows(principal, action):
            if principal is None:
                raise ApiError(401, "unauthenticated",
                               "sign in (POST /api/v1/session) or send Authorization: Bearer TOKEN")
            raise ApiError(403, "forbidden", f"role {principal.role} may not {action}")
        request["principal"] = principal
        resp = await handler(request)
    except ApiError as e:
        await loa.audit(request, action, principal, e.status, e.code, e.message)
        raise
    except auth.Denied as e:
        await loa.audit(request, action, principal, 403, e.code, str(e))
        raise ApiError(403, e.code, str(e)) from None
    except web.HTTPException as e:
        if e.status >= 400:
            err = _http_error(request, e)
            await loa.audit(request, action, principal, err.status, err.code, err.message)
            raise err from None
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        await loa.audit(request, action, principal, 500, "internal", "")
        raise
    if request.method not in READ_METHODS:
        await loa.audit(request, action, principal, resp.status, "ok", "")
    return resp


def build_tree(settings: Settings) -> ZoneTree:
    """The tree the TOML file alone describes (used to check a config file before serving)."""
    tree = ZoneTree()
    for zc in settings.effective_zones():
        tree.add(Zone(
            id=zc.id, name=zc.name or zc.id, parent=zc.parent,
            multicast=parse_hostport(zc.multicast, "multicast") if zc.multicast else None,
            unicast=[parse_hostport(u, "unicast destination") for u in zc.unicast],
            level=zc.level, code=zc.code, language=zc.language))
    tree.validate()
    for g in settings.groups:
        tree.set_group(g.id, g.zones)
    return tree


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "", "application/octet-stream", "text/plain"):
        raise ApiError(415, "unsupported_media_type", "send a JSON body (Content-Type: application/json)")
    raw = await request.read()
    if not raw:
        raise ApiError(400, "empty_body", "the request body is empty; a JSON object is expected")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None


def validation_error(e: ValidationError) -> ApiError:
    problems = []
    for err in e.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(x) for x in err.get("loc", ()))
        problems.append({"field": loc, "problem": err.get("msg", "")})
    summary = "; ".join(f"{p['field']}: {p['problem']}" if p["field"] else p["problem"]
                        for p in problems[:5])
    return ApiError(422, "invalid_request", summary or "invalid request", problems=problems)


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
    except (ValueError, ZoneError) as e:  # a validator's own error outside pydantic's wrapper
        raise ApiError(422, "invalid_request", str(e)) from None


@dataclass
class Route:
    method: str
    path: str
    handler: Any
    action: str
    summary: str
    body: type[BaseModel] | None = None
    body_kind: str = "json"  # json | multipart | csv
    query: list[dict] = field(default_factory=list)
    ok: int = 200
    errors: tuple[int, ...] = ()
    produces: str = "application/json"


def q(name: str, type_: str = "string", **extra: Any) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_, **extra}}


class LoaApp(ResourceHandlers):
    def __init__(self, settings: Settings, engine: Engine, hub: EventHub) -> None:
        self.settings = settings
        self.engine = engine
        self.hub = hub
        self.started = time.time()
        self.db = Database(settings.database_path)
        self.state: ControlState | None = None
        self.actions: dict[Any, str] = {}
        self.throttle = auth.LoginThrottle(limit=settings.login_attempts)
        self.media_lock = asyncio.Lock()
        self._events: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        host = settings.http.rpartition(":")[0] or "127.0.0.1"
        self.loopback_only = auth.is_loopback_host(host)
        self.admin_token_hash = (auth.token_hash(settings.admin_token.get_secret_value())
                                 if settings.admin_token and settings.admin_token.get_secret_value()
                                 else None)
        self._users_exist = False
        #: receiver id -> (secret, zone), kept in memory: the receiver protocol looks it up for
        #: every datagram and must never wait on the database
        self.receiver_secrets: dict[str, tuple[bytes, str]] = {}
        #: receiver id -> the sealed blob its cached secret was opened from: a secret is
        #: decrypted again only when its blob changed
        self._sealed: dict[str, bytes] = {}
        self.registry = None
        self.link = None

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        await self.db.open()
        box = auth.SecretBox.load(
            self.settings.secret_key.get_secret_value() if self.settings.secret_key else None,
            self.settings.data_dir / "secret.key")
        self.state = ControlState(self.db, self.settings, box, apply_tree=self._swap_tree,
                                  apply_zones=self._swap_zones,
                                  receivers_changed=self._receivers_changed)
        await self.state.apply_config()
        gone = await self.db.mark_interrupted()
        if gone:
            log.warning("%d broadcast(s) were on air when the server last stopped; recorded as "
                        "interrupted: %s", len(gone), ", ".join(gone))
        self._users_exist = await self.db.count_users() > 0
        if self.bootstrap_possible and not self._users_exist:
            log.warning("*** LOCAL BOOTSTRAP MODE: no admin token and no user yet, and the API "
                        "listens on loopback only, so requests from this machine act as admin. "
                        "Create a user (`loa admin create-user`) or set LOA_ADMIN_TOKEN to end it. ***")
            print("loa: WARNING local bootstrap mode: requests from 127.0.0.1/::1 act as admin "
                  "until a user exists or LOA_ADMIN_TOKEN is set", flush=True)
        self._events = asyncio.Queue(maxsize=100_000)
        self.hub.observers.append(self._on_event)
        self._tasks = [asyncio.create_task(self._event_writer(), name="loa-asrun-writer"),
                       asyncio.create_task(self._watch_db(), name="loa-db-watch")]

    async def close(self) -> None:
        # let the events the engine emitted while stopping reach the as-run log
        for _ in range(3):
            await asyncio.sleep(0)
        if self._events is not None:
            try:
                await asyncio.wait_for(self._events.join(), 5)
            except asyncio.TimeoutError:
                log.warning("as-run writer did not drain in time")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.db.close()

    def receiver_secret_cached(self, rid: str) -> tuple[bytes, str] | None:
        return self.receiver_secrets.get(rid)

    async def refresh_receiver_secrets(self) -> None:
        """Every receiver's secret, from the database: at start, and after a full reload (another
        process may have added, moved or retired receivers). Changes made here go through
        `_receivers_changed` instead. Under the state lock, so a snapshot read before a
        provisioning cannot drop the secrets that provisioning just added."""
        async with self.state.lock:
            rows = await self.db.receiver_secret_rows()
            for i, r in enumerate(rows):
                self._cache_secret(r)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # 10,000s of decryptions at start: let others run
            gone = set(self.receiver_secrets) - {r["id"] for r in rows}
            for rid in gone:
                self.receiver_secrets.pop(rid, None)
                self._sealed.pop(rid, None)

    def _cache_secret(self, r: dict, secret: bytes | None = None) -> None:
        rid, blob = r["id"], r.get("secret_enc")
        if r.get("status") == "retired" or not blob:
            self.receiver_secrets.pop(rid, None)
            self._sealed.pop(rid, None)
            return
        if secret is None:
            cached = self.receiver_secrets.get(rid)
            if cached is not None and self._sealed.get(rid) == blob:
                secret = cached[0]
            else:
                try:
                    secret = self.state.box.open(blob, rid)
                except Exception:
                    log.error("cannot decrypt the secret of receiver %s (wrong secret key?)", rid)
                    self.receiver_secrets.pop(rid, None)
                    self._sealed.pop(rid, None)
                    return
        self.receiver_secrets[rid] = (secret, r["zone"])
        self._sealed[rid] = blob

    def _receivers_changed(self, rows: list[dict], secrets: dict[str, bytes]) -> None:
        """From the service layer: these receivers were added or changed here (new ones come
        with their raw secret, so nothing is decrypted)."""
        for r in rows:
            self._cache_secret(r, secrets.get(r["id"]))

    def _swap_tree(self, new: ZoneTree) -> None:
        # the engine gets its own dicts: the service layer keeps editing `new` (its stored tree)
        zones = dict(new.zones)
        groups = {g: list(m) for g, m in new.groups.items()}
        self.engine.prepare_destinations(zones.values())  # outside the engine lock

        def swap(t: ZoneTree) -> None:
            t.zones, t.groups = zones, groups
            t.version += 1
        self.engine.edit_tree(swap)
        if self.state is not None:  # receivers may have been added, moved or retired
            asyncio.get_running_loop().create_task(self.refresh_receiver_secrets())

    def _swap_zones(self, tree: ZoneTree, changed: set[str]) -> None:
        """Only these zones' destinations changed (receivers added, moved, retired): the tick
        re-applies these zones alone, with their big lists packed here beforehand."""
        zones = {zid: tree.zones[zid] for zid in changed}
        self.engine.prepare_destinations(zones.values())

        def swap(t: ZoneTree) -> None:
            t.zones.update(zones)
            t.version += 1
        self.engine.edit_tree(swap, dests_changed=set(zones))

    def _on_event(self, ev: dict) -> None:  # on the loop, from EventHub._fanout
        try:
            self._events.put_nowait(ev)
        except asyncio.QueueFull:
            log.error("as-run queue full; dropped %s", ev.get("type"))

    async def _event_writer(self) -> None:
        while True:
            ev = await self._events.get()
            try:
                bid = ev.get("broadcast")
                snap = self.engine.get(bid) if bid else None
                if snap is None and bid and ev.get("type") == "broadcast.refused":
                    snap = {"id": bid, "state": "refused", "level": ev.get("level", ""),
                            "owner": ev.get("owner", ""), "reached_zones": ev.get("zones", []),
                            "created_at": ev.get("time"), "ended_at": ev.get("time"),
                            "error": ev.get("reason")}
                await self.db.record_event(ev, snap)
            except Exception:
                log.exception("could not record event %s", ev.get("type"))
            finally:
                self._events.task_done()

    async def _watch_db(self) -> None:
        """Pick up zone/receiver changes another process (the CLI) wrote to the same file."""
        last = None
        while True:
            await asyncio.sleep(2.0)
            try:
                (v,) = await (await self.db.conn.execute("PRAGMA data_version")).fetchone()
                if last is not None and v != last:
                    async with self.state.lock:
                        await self.state.reload_tree()
                last = v
            except ApiError as e:
                log.error("stored zone tree is inconsistent: %s", e.message)
            except Exception:
                log.exception("db watch failed")

    # ------------------------------------------------------------------ auth
    @property
    def bootstrap_possible(self) -> bool:
        return self.admin_token_hash is None and self.loopback_only

    async def _bootstrap_active(self) -> bool:
        if not self.bootstrap_possible or self._users_exist:
            return False
        self._users_exist = await self.db.count_users() > 0  # a user made by the CLI ends it
        return not self._users_exist

    async def authenticate(self, request: web.Request, public: bool) -> auth.Principal | None:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, cred = header.partition(" ")
            p = await self._from_bearer(cred.strip()) if scheme.lower() == "bearer" else None
            if p is None and not public:
                raise ApiError(401, "invalid_token", "the bearer token is not valid")
            return p
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            s = await self.db.session(auth.token_hash(cookie))
            if s is not None:
                u = await self.db.user(s["user_id"])
                if u is not None and not u["disabled"]:
                    return auth.Principal(u["username"], u["role"], u["id"], tuple(u["scope"]),
                                          via="session", display_name=u.get("display_name") or "")
            if not public:
                raise ApiError(401, "session_expired", "the session has ended; sign in again")
            return None
        if await self._bootstrap_active():
            try:
                peer_ok = ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
            except ValueError:
                peer_ok = False
            if peer_ok:
                return auth.Principal("local-bootstrap", "admin", via="bootstrap")
        return None

    async def _from_bearer(self, token: str) -> auth.Principal | None:
        if self.admin_token_hash is not None and auth.constant_eq(auth.token_hash(token),
                                                                  self.admin_token_hash):
            return auth.Principal("admin-token", "admin", via="admin-token")
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
        return auth.Principal(u["username"], u["role"], u["id"], tuple(u["scope"]), via="token",
                              display_name=u.get("display_name") or "")

    async def authorize(self, request: web.Request, action: str, zones: list[str],
                        level: str) -> dict:
        """For handlers that check their own access (control/live.py): the same credentials,
        policy table and audit log as every other route. Returns {"name", "role", "zones",
        "max_level"}; raises ApiError 401/403 (rendered as JSON by the error middleware)."""
        principal = None
        try:
            principal = await self.authenticate(request, public=False)
            if principal is None:
                raise ApiError(401, "unauthenticated", "sign in first")
            if not auth.Policy.allows(principal, action):
                raise ApiError(403, "forbidden", f"role {principal.role} may not {action}")
            if action == "live.start":
                try:
                    lvl = auth.Level.parse(level)
                    reached = self.engine.edit_tree(lambda t: t.resolve(zones))
                except (ValueError, ZoneError) as e:
                    raise ApiError(422, "invalid_request", str(e)) from None
                try:
                    auth.Policy.check_broadcast(principal, self.engine.tree, reached, lvl, "live")
                except auth.Denied as e:
                    raise ApiError(403, e.code, str(e)) from None
        except ApiError as e:
            await self.audit(request, action, principal, e.status, e.code, e.message, force=True)
            raise
        if action != "live.status":
            request["audit_detail"] = {"zones": list(zones)[:50], "level": level}
            await self.audit(request, action, principal, 200, "ok", "", force=True)
        lim = auth.ROLE_LIMITS[principal.role]
        return {"name": principal.name, "display_name": principal.label, "role": principal.role,
                "zones": list(principal.scope),
                "max_level": lim.max_level.label if lim.max_level is not None else None}

    async def audit(self, request: web.Request, action: str, principal: auth.Principal | None,
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

    # ------------------------------------------------------------------ core handlers
    async def health(self, request: web.Request) -> web.Response:
        return json_response({
            "status": "ok", "version": VERSION, "uptime_s": round(time.time() - self.started, 1),
            "clock": self.engine.clock_stats, "encoders_active": self.engine.encoders_active,
            "encoders": self.engine.encoder_stats,
            "broadcasts_active": len(self.engine.broadcasts), "fanout": self.engine.fanout.stats(),
            "bootstrap_mode": await self._bootstrap_active(),
            "receiver_port": self.engine.fanout.sock.getsockname()[1],
            "receivers_online": sum(self.registry.online_by_zone().values()) if self.registry else 0,
        })

    def _zone(self, zid: str) -> Zone:
        z = self.engine.tree.zones.get(zid)
        if z is None:
            raise ApiError(404, "unknown_zone", f"no zone with id {zid!r}")
        return z

    async def sdp(self, request: web.Request) -> web.Response:
        z = self._zone(request.match_info["zone"])
        dest = request.query.get("dest")
        if dest:
            try:
                host, port = parse_hostport(dest, "dest")
            except ZoneError as e:
                raise ApiError(400, "invalid_dest", str(e)) from None
            if (host, port) not in z.unicast and z.multicast != (host, port):
                raise ApiError(404, "unknown_dest", f"{dest} is not a destination of zone {z.id}")
        elif z.multicast:
            host, port = z.multicast
        elif z.unicast:
            host, port = z.unicast[0]
        else:
            raise ApiError(409, "no_destination",
                           f"zone {z.id} has no multicast group or static destination to describe")
        ttl = f"/{max(self.settings.multicast_ttl, 1)}" if ipaddress.ip_address(host).is_multicast else ""
        pt = self.settings.payload_type
        ip_ver = "IP6" if ":" in host else "IP4"
        # RFC 7587: rtpmap is always opus/48000/2; sprop-stereo=0 says we send mono
        body = (
            "v=0\r\n"
            f"o=- {self.engine.ssrc} 1 IN {ip_ver} 127.0.0.1\r\n"
            f"s=Loa zone {z.id}\r\n"
            f"i={z.name}\r\n"
            f"c=IN {ip_ver} {host}{ttl}\r\n"
            "t=0 0\r\n"
            f"m=audio {port} RTP/AVP {pt}\r\n"
            f"a=rtpmap:{pt} opus/48000/2\r\n"
            f"a=fmtp:{pt} sprop-stereo=0;stereo=0;useinbandfec=1;"
            f"maxaveragebitrate={self.settings.opus_bitrate}\r\n"
            "a=ptime:20\r\n"
            "a=recvonly\r\n"
        )
        return web.Response(text=body, content_type="application/sdp")

    async def start_broadcast(self, request: web.Request) -> web.Response:
        req = await parse_body(request, BroadcastRequest)
        principal: auth.Principal = request["principal"]
        request["audit_detail"] = {"zones": req.zones[:50], "level": req.level,
                                   "source": req.source.kind}
        try:
            reached = self.engine.edit_tree(lambda t: t.resolve(req.zones))
        except ZoneError as e:
            raise ApiError(404, "unknown_zone", str(e)) from None
        auth.Policy.check_broadcast(principal, self.engine.tree, reached, req.level_enum,
                                    req.source.kind)
        media = None
        if isinstance(req.source, FileSpec):
            self._check_raw_path(principal, req.source.path)
        loop = asyncio.get_running_loop()
        async with self.media_lock:  # a media item cannot be deleted while it is being started
            if isinstance(req.source, MediaSpec):
                media = await self.db.media(req.source.id)
                if media is None:
                    raise ApiError(404, "unknown_media", f"no media with id {req.source.id!r}")
            try:
                make, desc, duration = await loop.run_in_executor(
                    None, build_source, req, self.settings.loudness_target_lufs,
                    self.settings.emergency_attention, media)
            except MediaError as e:
                raise ApiError(422, "media_unplayable", str(e)) from None
            spec = BroadcastSpec(targets=req.zones, level=req.level_enum, source_factory=make,
                                 kind=req.source.kind, description=desc, mode=req.mode,
                                 gain_db=req.gain_db, owner=principal.name,
                                 owner_name=principal.label,
                                 duration_s=duration, id=req.id)
            try:
                b = await loop.run_in_executor(None, self.engine.start_broadcast, spec)
            except BroadcastRefused as e:
                raise ApiError(409, "zone_busy", e.reason, holder=e.holder) from None
            except ZoneError as e:
                raise ApiError(404, "unknown_zone", str(e)) from None
            except ValueError as e:
                raise ApiError(409, "conflict", str(e)) from None
        request["audit_target"] = b.id
        return json_response(b.to_dict(), status=201)

    def _check_raw_path(self, principal: auth.Principal, path: str) -> None:
        """Raw server-side paths: admin only (the policy said so), and only under media_dirs.
        With no media_dirs configured, only the local bootstrap admin may use them (the
        developer on their own machine: `loa play`, `loa demo`)."""
        if "\x00" in path:
            raise ApiError(422, "invalid_path", "the path contains a NUL byte")
        dirs = list(self.settings.media_dirs)
        if not dirs:
            if principal.via == "bootstrap":
                return
            raise ApiError(403, "path_not_allowed",
                           "no media_dirs are configured, so server-side paths are refused; "
                           "upload the file to the media library instead")
        if path_allowed(path, dirs) is None:
            raise ApiError(403, "path_not_allowed",
                           "the path is not inside a configured media directory")

    async def list_broadcasts(self, request: web.Request) -> web.Response:
        past = request.query.get("past", "").lower() in ("1", "true", "yes")
        live = self.engine.list_broadcasts(include_past=past)
        if not past:
            return json_response({"broadcasts": live})
        merged = {b["id"]: b for b in await self.db.broadcasts(limit=500)}
        merged.update({b["id"]: b for b in live})
        out = sorted(merged.values(), key=lambda b: b.get("created_at") or "")
        return json_response({"broadcasts": out})

    async def _broadcast(self, bid: str) -> dict:
        b = self.engine.get(bid) or await self.db.broadcast(bid)
        if b is None:
            raise ApiError(404, "unknown_broadcast", f"no broadcast with id {bid!r}")
        return b

    async def get_broadcast(self, request: web.Request) -> web.Response:
        return json_response(await self._broadcast(request.match_info["id"]))

    async def delivery(self, request: web.Request) -> web.Response:
        """Which receivers played a broadcast from start to end, partly, or never, and how long
        each took from the broadcast's start to its first audio (from receiver reports)."""
        b = await self._broadcast(request.match_info["id"])
        zones = set(b.get("reached_zones") or [])
        expected = [(r["id"], r["zone"]) for r in await self.db.receivers(status="provisioned")
                    if r["zone"] in zones]
        return json_response(self.registry.delivery_report(b, expected=expected, wall=time.time()))

    async def dashboard_page(self, request: web.Request) -> web.StreamResponse:
        from pathlib import Path
        return web.FileResponse(Path(__file__).parent / "static" / "dashboard.html",
                                headers={"Cache-Control": "no-cache"})

    async def dashboard_asset(self, request: web.Request) -> web.StreamResponse:
        from pathlib import Path
        name = request.match_info["name"]
        if name not in ("dashboard.js", "dashboard.css"):
            raise ApiError(404, "not_found", f"no such resource: {request.path}")
        return web.FileResponse(Path(__file__).parent / "static" / name,
                                headers={"Cache-Control": "no-cache"})

    async def stop_broadcast(self, request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        current = await self._broadcast(bid)
        if not auth.Policy.may_stop(request["principal"], self.engine.tree, current):
            raise auth.Denied(f"you may not stop broadcast {bid} (not yours or outside your scope)")
        try:
            b = self.engine.stop_broadcast(bid, reason=f"stopped by {request['principal'].name}")
        except KeyError:
            raise ApiError(409, "already_ended", f"broadcast {bid} has already ended") from None
        return json_response(b.to_dict())

    async def asrun(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
            limit = min(max(int(request.query.get("limit", "1000")), 1), 10_000)
        except ValueError:
            raise ApiError(400, "invalid_query", "since and limit must be integers") from None
        if since < 0 or since > 2 ** 62:
            raise ApiError(400, "invalid_query", "since must be a non-negative sequence number")
        events = await self.db.asrun(since, broadcast=request.query.get("broadcast"),
                                     limit=limit, type_=request.query.get("type"))
        return json_response({"events": events})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every engine event as it happens (replays from Last-Event-ID)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q_ = self.hub.subscribe()
        try:
            last = request.headers.get("Last-Event-ID") or request.query.get("since")
            if last and last.isdigit():
                for ev in self.hub.since(int(last)):
                    await resp.write(EventHub.sse(ev))
            await resp.write(b": connected\n\n")
            while True:
                try:
                    ev = await asyncio.wait_for(q_.get(), timeout=15.0)
                    if ev is None:  # the server is shutting down
                        break
                    await resp.write(EventHub.sse(ev))
                except asyncio.TimeoutError:
                    await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(q_)
        return resp

    async def openapi(self, request: web.Request) -> web.Response:
        from control.openapi import build_openapi
        return json_response(build_openapi(VERSION, self.route_table()))

    async def metrics(self, request: web.Request) -> web.Response:
        from control.metrics import render_metrics
        body, ctype = render_metrics(self.engine, self.registry)
        return web.Response(body=body, headers={"Content-Type": ctype})

    # ------------------------------------------------------------------ routes
    def route_table(self) -> list[Route]:
        from control import models as m
        R = Route
        return [
            R("GET", "/health", self.health, "health.read", "Liveness and engine clock statistics"),
            R("GET", "/openapi.json", self.openapi, "openapi.read", "This document"),
            R("POST", "/session", self.login, "session.login",
              "Sign in with username and password; sets an HttpOnly session cookie",
              body=m.Login, errors=(400, 401, 415, 422, 429)),
            R("GET", "/session", self.me, "session.me", "Who the caller is", errors=(401,)),
            R("DELETE", "/session", self.logout, "session.logout", "Sign out", errors=(401,)),
            R("GET", "/zones", self.list_zones, "zones.read", "Zone tree, groups and what is on air",
              errors=(401,)),
            R("POST", "/zones", self.create_zone, "zones.write", "Create a zone", body=m.ZoneCreate,
              ok=201, errors=(400, 401, 403, 404, 409, 415, 422)),
            R("POST", "/zones/import", self.import_zones, "zones.write",
              "Import the administrative tree from CSV (code,name,parent_code,level)",
              body_kind="csv", errors=(400, 401, 403, 409, 413, 422)),
            R("GET", "/zones/{zone}", self.get_zone, "zones.read", "One zone", errors=(401, 404)),
            R("PATCH", "/zones/{zone}", self.update_zone, "zones.write", "Change a zone",
              body=m.ZoneUpdate, errors=(400, 401, 403, 404, 409, 415, 422)),
            R("DELETE", "/zones/{zone}", self.delete_zone, "zones.write",
              "Delete a zone (refused while it has receivers or child zones)",
              errors=(401, 403, 404, 409)),
            R("POST", "/zones/{zone}/move", self.move_zone, "zones.write", "Move a zone in the tree",
              body=m.ZoneMove, errors=(400, 401, 403, 404, 409, 415, 422)),
            R("GET", "/zones/{zone}/sdp", self.sdp, "sdp.read",
              "SDP a stock RTP client (ffmpeg, GStreamer, VLC) can play",
              query=[q("dest")], errors=(400, 404, 409), produces="application/sdp"),
            R("GET", "/groups", self.list_groups, "zones.read", "Zone groups", errors=(401,)),
            R("PUT", "/groups/{group}", self.put_group, "zones.write", "Create or replace a group",
              body=m.GroupPut, errors=(400, 401, 403, 409, 415, 422)),
            R("DELETE", "/groups/{group}", self.delete_group, "zones.write", "Delete a group",
              errors=(401, 403, 404)),
            R("GET", "/receivers", self.list_receivers, "receivers.read",
              "Receivers, filtered by zone (and its subtree) and status",
              query=[q("zone"), q("status", enum=["provisioned", "retired"]),
                     q("live", enum=["online", "offline", "never"])],
              errors=(400, 401, 403, 404)),
            R("POST", "/receivers", self.provision_receiver, "receivers.write",
              "Provision a receiver; the response carries its secret, shown only this once",
              body=m.ReceiverProvision, ok=201, errors=(400, 401, 403, 404, 409, 415, 422)),
            R("POST", "/receivers/bulk", self.provision_receivers_bulk, "receivers.write",
              f"Provision up to {m.MAX_BULK_RECEIVERS} receivers at once, all or nothing (an "
              "unknown zone, a repeated or taken id: nothing is written; the error names them). "
              "The response lists them in order, each with its secret, shown only this once",
              body=m.ReceiverBulk, ok=201, errors=(400, 401, 403, 404, 409, 413, 415, 422)),
            R("GET", "/receivers/{id}", self.get_receiver, "receivers.read", "One receiver",
              errors=(401, 403, 404)),
            R("PATCH", "/receivers/{id}", self.update_receiver, "receivers.write",
              "Change a receiver's details", body=m.ReceiverUpdate,
              errors=(400, 401, 403, 404, 409, 415, 422)),
            R("POST", "/receivers/{id}/move", self.move_receiver, "receivers.write",
              "Move a receiver to another zone", body=m.ReceiverMove,
              errors=(400, 401, 403, 404, 409, 415, 422)),
            R("POST", "/receivers/{id}/retire", self.retire_receiver, "receivers.write",
              "Retire a receiver (its secret is destroyed)", errors=(401, 403, 404, 409)),
            R("GET", "/media", self.list_media, "media.read", "The media library",
              query=[q("language"), q("tag")], errors=(401,)),
            R("POST", "/media", self.upload_media, "media.write",
              "Upload a recording (multipart field `file`; optional `title`, `language`, `tags`)",
              body_kind="multipart", ok=201, errors=(400, 401, 403, 413, 415, 422)),
            R("GET", "/media/{id}", self.get_media, "media.read", "One media item", errors=(401, 404)),
            R("PATCH", "/media/{id}", self.update_media, "media.write", "Tag a media item",
              body=m.MediaUpdate, errors=(400, 401, 403, 404, 415, 422)),
            R("DELETE", "/media/{id}", self.delete_media, "media.write",
              "Delete a media item (refused while a broadcast uses it)",
              errors=(401, 403, 404, 409)),
            R("GET", "/broadcasts", self.list_broadcasts, "broadcasts.read",
              "Active broadcasts (past too with ?past=1)",
              query=[q("past", enum=["0", "1"])], errors=(401,)),
            R("POST", "/broadcasts", self.start_broadcast, "broadcasts.start", "Start a broadcast",
              body=BroadcastRequest, ok=201, errors=(400, 401, 403, 404, 409, 413, 415, 422)),
            R("GET", "/broadcasts/{id}", self.get_broadcast, "broadcasts.read",
              "One broadcast (active or past)", errors=(401, 404)),
            R("DELETE", "/broadcasts/{id}", self.stop_broadcast, "broadcasts.stop",
              "Stop a broadcast", errors=(401, 403, 404, 409)),
            R("GET", "/broadcasts/{id}/delivery", self.delivery, "receivers.read",
              "Delivery report: which receivers played it fully, partly or never, and their time "
              "to first audio", errors=(401, 403, 404)),
            R("GET", "/asrun", self.asrun, "asrun.read", "As-run log (engine events, persisted)",
              query=[q("since", "integer", minimum=0), q("broadcast"), q("type"),
                     q("limit", "integer", minimum=1, maximum=10000)], errors=(400, 401)),
            R("GET", "/events", self.events, "events.read", "Server-Sent Events stream",
              errors=(401,), produces="text/event-stream"),
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
            R("GET", "/audit", self.audit_log, "audit.read", "The audit log (append-only)",
              query=[q("since", "integer", minimum=0), q("actor"), q("action"),
                     q("limit", "integer", minimum=1, maximum=10000)], errors=(400, 401, 403)),
        ]

    def routes(self, app: web.Application) -> None:
        for r in self.route_table():
            route = app.router.add_route(r.method, API + r.path, r.handler)
            self.actions[route] = r.action
        route = app.router.add_route("GET", "/metrics", self.metrics)
        self.actions[route] = "metrics.read"
        # the dashboard page is public HTML; everything it shows comes from the API with the
        # viewer's own credentials
        for path, handler in (("/dashboard", self.dashboard_page),
                              ("/dashboard/{name}", self.dashboard_asset)):
            route = app.router.add_route("GET", path, handler)
            self.actions[route] = "health.read"


def create_app(settings: Settings) -> web.Application:
    hub = EventHub()
    tree = ZoneTree()  # filled from the database (and the TOML file) at startup
    mif = settings.multicast_if
    fanout = Fanout(bind=("0.0.0.0", settings.send_port), multicast_ttl=settings.multicast_ttl,
                    multicast_if=mif, workers=settings.fanout_workers, batch=settings.fanout_batch)
    eng_settings = EngineSettings(
        opus=OpusSettings(bitrate=settings.opus_bitrate, complexity=settings.opus_complexity,
                          fec=settings.opus_fec, packet_loss_perc=settings.opus_packet_loss_perc,
                          application=settings.opus_application),
        payload_type=settings.payload_type, duck_db=settings.duck_db,
        duck_ramp_ms=settings.duck_ramp_ms, resume_rewind_s=settings.resume_rewind_s,
        realtime=settings.engine_realtime)
    keyring = None
    if settings.srtp:
        from streamer.rtp.srtp import MediaKeyring
        keyring = MediaKeyring(time.monotonic(), rotate_every_s=settings.media_key_rotate_h * 3600)
    engine = Engine(tree, fanout, eng_settings, on_event=hub.publish, keyring=keyring)
    app = web.Application(middlewares=[error_middleware, auth_middleware],
                          client_max_size=settings.max_body_mb * 1024 * 1024)
    loa = LoaApp(settings, engine, hub)
    from streamer.rtp.registry import ReceiverRegistry
    loa.registry = ReceiverRegistry(loa.receiver_secret_cached, on_event=hub.publish,
                                    on_zone_loss=engine.set_zone_loss,
                                    keyring=keyring, heartbeat_s=settings.receiver_heartbeat_s)
    loa.routes(app)
    app["loa"] = loa
    # live input: the phone page (WebRTC) and hardware encoders (RTP)
    from control.live import setup_live, setup_rtp_ingest
    setup_live(app, engine, hub, loa.authorize)
    setup_rtp_ingest(app, engine, list(settings.rtp_ingest))

    async def on_startup(app: web.Application) -> None:
        hub.bind(asyncio.get_running_loop())
        await loa.open()
        await loa.refresh_receiver_secrets()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, prewarm)
        # The tick shares the GIL with this whole process, and a full garbage collection walks
        # every tracked object: ~100,000 after start-up (modules, models, codecs), 45-60 ms on
        # a small VM, enough to make ticks late whenever allocation (thousands of receivers
        # provisioned one request at a time, say) triggers one. They live as long as the
        # server: move them out of the collector's way.
        gc.collect()
        gc.freeze()
        engine.start()
        from streamer.rtp.link import start_receiver_endpoint
        loa.link = await start_receiver_endpoint(engine, loa.registry)
        log.info("engine started: %d zones, ssrc %08x, media/receiver port %d",
                 len(engine.tree.zones), engine.ssrc, fanout.sock.getsockname()[1])

    async def on_cleanup(app: web.Application) -> None:
        if getattr(loa, "link", None) is not None:
            loa.link.close()
        engine.stop()
        fanout.close()
        await loa.close()

    async def on_shutdown(app: web.Application) -> None:
        hub.close_streams()  # open event streams end now, not at their next keep-alive

    app.on_startup.insert(0, on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def prewarm() -> None:
    """Load the decoders and render the attention signals before the first alert needs them."""
    try:
        import av  # noqa: F401

        from streamer.ingest import file as _file  # noqa: F401
        from streamer.ingest.tones import ChimeSource, SirenSource
        from streamer.mixer import loudness as _loudness  # noqa: F401
        ChimeSource().read()
        SirenSource(seconds=1.0).read()
    except Exception:  # never fatal: it only saves time later
        log.exception("prewarm failed")
