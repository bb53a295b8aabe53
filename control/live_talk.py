"""Press to talk on a standing connection (the /live page since issue 17).

The page connects when the official signs in (POST /live/connect: WebRTC offer → answer, the
microphone track muted); the connection stays up, and pressing "talk" only unmutes and claims
the zones (POST /live/sessions/{id}/claim: the broadcast use case's start_live with the
connection's claim source, which begins with the audio since the unmute), releasing ends the
claim with a short fade (POST /live/sessions/{id}/release). While on air the page polls
GET /live/sessions/{id}, which carries the level the claimed zones' loudspeakers are getting
(the programme after mix and limiter, streamer.mixer.meter), not the phone's microphone.

Authorisation: connecting needs "live.connect" (a role that may go live); claiming is
"live.start" for the claim's zones and level, checked by `Access.authorize` like POST
/live/offer; a connection belongs to whoever opened it.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from control import textsafe
from control.access import Access
from control.broadcasts import Broadcasts
from control.errors import Conflict, NotFound
from control.http import HttpError, Route, json_response
from streamer.ingest.live import LiveSource
from streamer.ingest.webrtc import WebRtcSession
from streamer.mixer.arbitration import Level
from streamer.mixer.meter import ProgrammeLevels
from streamer.port import AlignTick, EnginePort

log = logging.getLogger("loa.live")
LIVE_LEVELS = ("normal", "priority", "emergency")
MAX_SDP = 64 * 1024
MAX_CONNECTIONS_PER_PRINCIPAL = 4
TICK_NS = 20_000_000
ALIGN_TOLERANCE_NS = 2_000_000   # the tick moves only when further off than this


class LiveConnect(BaseModel):
    sdp: str = Field(min_length=1, max_length=MAX_SDP)
    type: str = "offer"


class LiveClaim(BaseModel):
    zones: list[str] = Field(min_length=1, max_length=1000)
    level: str = "normal"


class _Conn:
    def __init__(self, sid: str, owner: str, session: WebRtcSession) -> None:
        self.id = sid
        self.owner = owner
        self.session = session
        self.broadcast: str | None = None
        self.zones: list[str] = []
        self.source: LiveSource | None = None
        self.claimed_at: float | None = None
        self.last_end: str | None = None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
        body = textsafe.loads(raw) if raw else None
    except ValueError as e:
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise HttpError(422, "invalid_request", "the body must be a JSON object")
    return body


class TalkApi:
    def __init__(self, broadcasts: Broadcasts, port: EnginePort, access: Access,
                 levels: ProgrammeLevels | None, *, grace_s: float = 3.0,
                 ice_servers: list[str] | None = None, realtime: bool = True) -> None:
        self.broadcasts = broadcasts
        self.realtime = realtime   # the voice path's threads at real-time priority (webrtc)
        self.port = port
        self.access = access
        self.levels = levels
        self.grace_s = grace_s
        self.ice_servers = ice_servers or []
        self.conns: dict[str, _Conn] = {}
        #: several origins (issue 19): raises 503 not_leader on an origin that does not lead
        #: (its media reaches no edge), naming the one that does; None on a single node
        self.gate: Callable[[str], Awaitable[None]] | None = None

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("POST", "/live/connect", self.connect, "live.connect",
              "Connect the microphone ahead of talking: a WebRTC offer (track muted) → answer; "
              "nothing airs until a claim", body=LiveConnect, ok=201,
              errors=(400, 401, 403, 422, 429, 500)),
            R("POST", "/live/sessions/{session}/claim", self.claim, "live.start",
              "Press to talk: claim zones on a connected microphone (a live broadcast starts "
              "with the audio since the press)", body=LiveClaim, ok=201,
              errors=(400, 401, 403, 404, 409, 422)),
            R("POST", "/live/sessions/{session}/release", self.release, "live.connect",
              "Release: the claim ends with a short fade; the connection stays",
              body_kind="none", errors=(401, 403, 404)),
            R("GET", "/live/sessions/{session}", self.status, "live.connect",
              "A connection: its state, and while on air the level at the claimed zones' "
              "loudspeakers", errors=(401, 403, 404)),
            R("DELETE", "/live/sessions/{session}", self.disconnect, "live.connect",
              "Close a connection (ends its claim)", errors=(401, 403, 404)),
        ]

    # ------------------------------------------------------------------ helpers
    def _conn(self, request: web.Request) -> _Conn:
        sid = request.match_info["session"]
        c = self.conns.get(sid)
        p = request.get("principal")
        if c is None or p is None or c.owner != p.name:
            raise NotFound("unknown_session", f"no live connection {sid!r} of yours")
        return c

    def _on_claim_end(self, c: _Conn, src: LiveSource) -> None:
        if c.source is src:
            c.source = None
            bid, c.broadcast = c.broadcast, None
            if bid is not None:
                snap = self.port.broadcast(bid)
                c.last_end = (snap.error or snap.state) if snap is not None else "ended"

    # ------------------------------------------------------------------ handlers
    async def connect(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        sdp, typ = body.get("sdp"), body.get("type", "offer")
        if not isinstance(sdp, str) or not sdp.strip() or len(sdp) > MAX_SDP:
            raise HttpError(422, "invalid_request", "sdp: an SDP offer (text) is required")
        if typ != "offer":
            raise HttpError(422, "invalid_request", "type: must be \"offer\"")
        if self.gate is not None:
            await self.gate("connect the microphone")
        p = request["principal"]
        mine = [c for c in self.conns.values() if c.owner == p.name]
        if len(mine) >= MAX_CONNECTIONS_PER_PRINCIPAL:   # a reconnecting page: oldest goes
            oldest = min(mine, key=lambda c: c.session.created)
            await self._close(oldest, "replaced by a new connection")
        sid = secrets.token_urlsafe(12)

        def ended(reason: str) -> None:
            c = self.conns.pop(sid, None)
            if c is not None and c.broadcast is not None:
                self.broadcasts.end(c.broadcast, reason)

        session = WebRtcSession(None, grace_s=self.grace_s, ice_servers=self.ice_servers,
                                on_end=ended, realtime=self.realtime)
        conn = _Conn(sid, p.name, session)
        session.on_claim_end = lambda src: self._on_claim_end(conn, src)
        self.conns[sid] = conn
        try:
            answer = await session.accept(sdp, typ)
        except ValueError as e:
            session.finish("bad SDP offer")
            raise HttpError(400, "invalid_sdp", str(e)) from None
        except Exception:
            log.exception("webrtc negotiation failed")
            session.finish("negotiation failed")
            raise HttpError(500, "webrtc_failed",
                            "could not negotiate the audio connection") from None
        return json_response({"session": sid, "sdp": answer["sdp"], "type": answer["type"]},
                             status=201)

    async def claim(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        zones, level_s = body.get("zones"), body.get("level", "normal")
        if (not isinstance(zones, list) or not zones
                or not all(isinstance(z, str) and z for z in zones) or len(zones) > 1000):
            raise HttpError(422, "invalid_request", "zones: a non-empty list of zone ids is required")
        if not isinstance(level_s, str) or level_s.lower() not in LIVE_LEVELS:
            raise HttpError(422, "invalid_request",
                            f"level: one of {', '.join(LIVE_LEVELS)} is required")
        level_s = level_s.lower()
        if self.gate is not None:
            await self.gate("go live")
        user = await self.access.authorize(request, "live.start", zones, level_s)
        request["principal"] = user
        c = self._conn(request)
        s = c.session
        if s.ended:
            raise Conflict("not_connected", f"the connection has ended: {s.end_reason}")
        if c.broadcast is not None and s.on_air:
            raise Conflict("already_on_air", "this connection is already on air",
                           broadcast=c.broadcast)
        tick_phase = await self._align_tick(c)
        src = s.claim(tick_phase_ns=tick_phase)
        pre = len(s.preroll.since_unmute(s.preroll.capacity))
        try:
            b = self.broadcasts.start_live(user, zones, Level.parse(level_s), src, "webrtc",
                                           {"role": user.role, "session": c.id})
        except Conflict as e:
            s.drop_claim(src)
            if e.code == "zone_busy":
                holder = e.extra.get("holder") or {}
                e.extra["holder_name"] = holder.get("owner_name") or holder.get("owner", "")
            raise
        except Exception:
            s.drop_claim(src)
            raise
        c.broadcast, c.source, c.zones = b.id, src, list(zones)
        c.claimed_at = time.monotonic()
        now = self.port.broadcast(b.id) or b
        return json_response({"broadcast": now.to_dict(), "preroll_ms": pre * 20,
                              "queue_frames": src.prime_frames}, status=201)

    async def _align_tick(self, c: _Conn) -> int | None:
        """Before the claim's first packet: line the engine's tick up with this connection's
        frame arrivals (measured while the muted microphone idled), so a frame never waits
        most of a tick for its read (issue 17). Not while another connection of this node is on
        air (the tick's phase is its talker's), nor on an engine that is not in this process
        (the phase is on this process's monotonic clock). Returns the tick's phase the claim
        will meet (monotonic ns mod the period; its receive queue depth follows from it), None
        where unknown."""
        clock = getattr(self.port, "clock_stats", None)
        if not isinstance(clock, dict) or clock.get("phase_ns") is None:
            return None
        now_phase = int(clock["phase_ns"])
        if any(o.broadcast is not None and o is not c for o in self.conns.values()):
            return now_phase
        phase = c.session.phase.phase_ns()
        if phase is None:
            return now_phase
        d = (phase - now_phase) % TICK_NS
        near = min(d, TICK_NS - d) <= ALIGN_TOLERANCE_NS
        if near and c.session.phase.queue_frames(now_phase) == 1:
            return now_phase   # close enough: every arrival is still before the tick
        self.port.submit(AlignTick(phase, 0 if near else ALIGN_TOLERANCE_NS))
        # a tick already asleep until the old phase still runs there: the claim's first read
        # comes after it, on the new phase (the receivers anchor their playout on that packet)
        await asyncio.sleep(((now_phase - time.monotonic_ns()) % TICK_NS + 1_000_000) / 1e9)
        after = getattr(self.port, "clock_stats", {}).get("phase_ns")
        return int(after) if after is not None else phase

    async def release(self, request: web.Request) -> web.Response:
        c = self._conn(request)
        bid = c.broadcast
        if c.session.release():
            # the fade airs within a tick or two of the last faded frame's arrival
            await asyncio.sleep(c.session.fade_s + 0.04 + 0.02 * c.session.queue_frames)
        if bid is not None:
            self.broadcasts.end(bid, "hung up")   # as a hang-up on POST /live/offer
        return json_response({"session": c.id, "broadcast": bid, "released": bid is not None})

    async def status(self, request: web.Request) -> web.Response:
        c = self._conn(request)
        s = c.session
        out: dict[str, Any] = {"session": c.id, "connection": s.pc.connectionState,
                               "ended": s.ended, "end_reason": s.end_reason,
                               "on_air": s.on_air, "broadcast": c.broadcast,
                               "last_end": c.last_end, "webrtc": s.stats()}
        if c.broadcast is not None and self.levels is not None:
            snap = self.port.broadcast(c.broadcast)
            zones = list(snap.on_air_zones) if snap is not None else []
            lv = self.levels.snapshot(zones)
            peaks = [v["peak_db"] for v in lv.values()]
            rms = [v["rms_db"] for v in lv.values()]
            out["speakers"] = {"zones": lv, "peak_db": max(peaks) if peaks else -120.0,
                               "rms_db": max(rms) if rms else -120.0}
        return json_response(out)

    async def disconnect(self, request: web.Request) -> web.Response:
        c = self._conn(request)
        await self._close(c, "hung up")
        return json_response({"session": c.id, "ended": True})

    async def _close(self, c: _Conn, reason: str) -> None:
        self.conns.pop(c.id, None)
        if c.broadcast is not None:
            self.broadcasts.end(c.broadcast, reason)
        await c.session.close(reason)

    async def close_all(self, app: web.Application | None = None,
                        reason: str = "server shutting down") -> None:
        for c in list(self.conns.values()):
            await self._close(c, reason)

