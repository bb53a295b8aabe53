"""Citizens' listening (issue 18): `/listen/{zone}.ogg` (Icecast listener conventions), the
public listening page `/nghe/{zone}`, listener counts (`/api/v1/listen`, Icecast's
`/status-json.xsl`), and which zones are public.

The audio itself comes from `streamer.outputs.listen.ListenHub` (handed over at assembly): this
module only decides who may hear a zone, answers the HTTP conversation and hands the
connection's transport to the hub. Which zones are public: the zone's `public` field
(settings file `public = true`, the zone API, or `PUT /api/v1/listen/zones/{zone}`); where
a zone does not set it, the `listen_public_zones` setting and the marks of
`<data_dir>/listening.json` (kept from before the field).
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestHandler
from pydantic import BaseModel, ConfigDict

from control.conn_guard import GUARD
from control.errors import NotFound
from control.http import HttpError, Route, error_response, json_response, parse_body
from control.policy import Policy, Principal
from control.settings import Settings
from streamer.outputs.listen import Listener, ListenHub, ListenRefused, status_json
from streamer.outputs.listen_socket import SocketSink
from streamer.port import EnginePort
from streamer.zones import ZoneTree

log = logging.getLogger("loa.listen")
STATIC = Path(__file__).resolve().parent / "static"
_LINE_BREAKS = {ord(c): " " for c in "\r\n\x85\u2028\u2029\x00\t\x0b\x0c"}


def header_text(s: str, limit: int = 200) -> str:
    """User text fit for an HTTP header line (no line breaks of any kind)."""
    return s.translate(_LINE_BREAKS)[:limit]


class PublicPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public: bool


class PublicZones:
    """Which zones anybody may hear: the zone's own `public` field (settings file, zone API,
    `PUT /listen/zones/{zone}`) when it is set; else, as before the field existed, the marks an
    admin left in `listening.json` and the `listen_public_zones` setting."""

    def __init__(self, settings: Settings) -> None:
        self.configured = set(settings.listen_public_zones)
        self.path = settings.data_dir / "listening.json"
        self.marks: dict[str, bool] = {}
        #: the zones' stored flags (ControlState.zone_public) and how to store one; set at
        #: assembly (without them the marks file is written, as before)
        self.stored: Callable[[], Mapping[str, bool | None]] = dict
        self.store: Callable[[str, bool], Awaitable[Any]] | None = None
        try:
            data = json.loads(self.path.read_text())
            self.marks = {str(k): bool(v) for k, v in data.get("public", {}).items()}
        except (OSError, ValueError, AttributeError):
            pass

    def is_public(self, zone: str) -> bool:
        own = self.stored().get(zone)
        if own is not None:
            return own
        return self.marks.get(zone, zone in self.configured)

    async def put(self, zone: str, public: bool) -> None:
        if self.store is not None:
            await self.store(zone, public)
        else:
            self.set(zone, public)

    def set(self, zone: str, public: bool) -> None:
        self.marks[zone] = public
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"public": self.marks}, ensure_ascii=False))
        os.replace(tmp, self.path)


class Audience:
    """The zone checks the listening, archive and board routes share."""

    def __init__(self, tree: Callable[[], ZoneTree], public: PublicZones) -> None:
        self.tree = tree
        self.public = public

    def zone(self, request: web.Request, zid: str | None = None) -> str:
        """The request's zone, if it exists and the caller may hear it (404 / 401 / 403)."""
        zid = zid if zid is not None else request.match_info["zone"]
        tree = self.tree()
        if zid not in tree.zones:
            raise NotFound("zone_not_found", f"no zone {zid!r}")
        principal: Principal | None = request.get("principal")
        if not Policy.may_hear(principal, tree, zid, self.public.is_public(zid)):
            if principal is None:
                raise HttpError(401, "unauthenticated",
                                f"zone {zid} is not public: sign in with an account that may "
                                "read it")
            raise HttpError(403, "forbidden", f"{principal.name} may not hear zone {zid}")
        return zid

    def visible(self, request: web.Request) -> list[str]:
        tree = self.tree()
        principal: Principal | None = request.get("principal")
        return [z for z in tree.zones
                if Policy.may_hear(principal, tree, z, self.public.is_public(z))]

    def name(self, zid: str) -> str:
        z = self.tree().zones.get(zid)
        return (z.name or zid) if z is not None else zid


def now_playing(port: EnginePort, zid: str) -> dict[str, Any] | None:
    """What a zone hears now (the first broadcast on air there), or None."""
    st = port.zone_status().get(zid)
    if st is None or not st.on_air:
        return None
    b = port.broadcast(st.on_air[0].broadcast)
    if b is None:
        return None
    src = dict(b.source)
    return {"id": b.id, "title": b.title or str(src.get("title") or src.get("kind") or ""),
            "text": str(src.get("text") or b.title or ""), "level": b.level,
            "kind": str(src.get("kind") or ""), "started_at": b.started_at,
            "duration_s": b.duration_s, "position_s": round(b.position_s, 1),
            "risk_level": src.get("risk_level"), "live": b.live}


class ListenHandlers:
    def __init__(self, hub: ListenHub, port: EnginePort, audience: Audience,
                 next_items: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        self.hub = hub
        self.port = port
        self.audience = audience
        self.next_items = next_items or (lambda zone: [])
        #: awaits a zone's next items before they are read (a cold cache); set at assembly
        self.prime_next: Callable[[str], Awaitable[Any]] | None = None
        #: HLS clients per zone (fetched within the last three segments); set at assembly
        self.hls_counts: Callable[[], dict[str, int]] = dict

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/listen/{zone}.ogg", self.listen_ogg, "listen.read",
              "A zone's programme as an Ogg/Opus stream (Icecast listener conventions)",
              root=True, produces="audio/ogg"),
            R("GET", "/nghe/{zone}", self.page, "listen.read", "The public listening page",
              root=True, produces="text/html"),
            R("GET", "/nghe-static/{name}", self.asset, "listen.read",
              "The listening and board pages' script and style", root=True),
            R("GET", "/status-json.xsl", self.icecast_status, "listen.read",
              "Listener counts in Icecast's status-json shape", root=True),
            R("GET", "/listen", self.counts, "listen.read",
              "Listener counts per zone the caller may hear, and the limits"),
            R("GET", "/listen/{zone}", self.zone_info, "listen.read",
              "A zone's listening info: stream URLs, listeners, now playing, next items",
              errors=(401, 403, 404)),
            R("PUT", "/listen/zones/{zone}", self.set_public, "listen.write",
              "Mark a zone public (anybody may listen) or private", body=PublicPut,
              errors=(401, 403, 404, 422)),
        ]

    async def listen_ogg(self, request: web.Request) -> web.StreamResponse:
        zid = self.audience.zone(request)
        addr = request.remote or "unknown"
        try:
            lst = self.hub.admit(zid, addr, request.headers.get("User-Agent", "")[:200])
        except ListenRefused as e:
            resp = error_response(503, e.code, e.message)
            resp.headers["Retry-After"] = str(e.retry_after_s)
            return resp
        name = header_text(self.audience.name(zid))
        stream = _HandedOver(headers={
            "Content-Type": "audio/ogg",
            "icy-name": name,
            "icy-description": header_text(f"Loa: {name}"),
            "icy-pub": "1" if self.audience.public.is_public(zid) else "0",
            "icy-genre": "public announcements",
            "Cache-Control": "no-cache, no-store, must-revalidate",
            "Pragma": "no-cache", "Expires": "0",
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": "icy-name, icy-description, icy-pub",
            "X-Content-Type-Options": "nosniff",
        })
        chunked = request.version >= HttpVersion11
        if chunked:
            stream.enable_chunked_encoding()
        else:
            stream.force_close()
        transport = request.transport
        try:
            await stream.prepare(request)
            await stream.write(self.hub.headers(zid))
        except (ConnectionError, RuntimeError):
            self.hub.release(lst)
            return stream
        if transport is None or transport.is_closing():
            self.hub.release(lst)
            return stream
        # from here the hub writes the pages (same bytes for every listener of the zone,
        # chunk-framed once) to the connection's own socket, taken out of aiohttp: this
        # handler, its request and response and aiohttp's connection state end now
        if self._hand_over(request, transport, lst, chunked):
            stream.handed_over = True
            stream.force_close()
            return stream
        sock = transport.get_extra_info("socket")
        if sock is not None:   # the kernel's share of a stalled listener is bounded too
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                max(8192, self.hub.limits.max_buffer))
            except OSError:
                pass
        # where the socket cannot be taken (the head is not sent yet, a transport without
        # one), the hub writes to aiohttp's transport; it ends when the client goes, reads
        # too slowly or the server stops
        why = await self.hub.serve(lst, transport, chunked)  # type: ignore[arg-type]
        log.debug("listener %s of %s ended: %s", addr, zid, why)
        stream.force_close()
        return stream

    def _hand_over(self, request: web.Request, transport: asyncio.Transport, lst: Listener,
                   chunked: bool) -> bool:
        """Give the listener's connection to the hub as a `SocketSink` (a duplicate of the
        socket's descriptor; aiohttp's transport is then aborted, which closes only its own
        descriptor: the connection stays open and nothing more is written by aiohttp). The
        connection guard keeps counting it, as a connection busy with a request, until the
        listener ends. False (nothing changed) where that cannot be done."""
        if transport.get_write_buffer_size():   # the head is not all out: keep aiohttp's path
            return False
        if transport.get_extra_info("ssl_object") is not None \
                or transport.get_extra_info("sslcontext") is not None:
            return False   # TLS: the pages must go through the TLS layer, not to the socket
        raw = transport.get_extra_info("socket")
        if raw is None:
            return False
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except (OSError, ValueError):
            return False
        try:   # the kernel holds a few pages for a listener; the hub's backlog bounds the rest
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                            max(8192, min(self.hub.limits.max_buffer, 16384)))
        except OSError:
            pass
        sink = SocketSink(sock, asyncio.get_running_loop())
        guard = request.app.get(GUARD)
        if guard is not None:
            peer = transport.get_extra_info("peername")
            addr = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            book = guard.book
            book.closed(request.protocol)   # its place passes to the listener
            ok, victims = book.opened(sink, addr)
            for v in victims:
                if isinstance(v, RequestHandler):
                    v.force_close()
            if ok:
                book.busy(sink)
                lst.on_end = functools.partial(book.closed, sink)
        transport.abort()
        if not self.hub.attach(lst, sink, chunked) and lst.on_end is not None:
            lst.on_end()   # the hub closed meanwhile (shutdown): the sink is closed, uncount it
        return True

    async def page(self, request: web.Request) -> web.StreamResponse:
        zid = request.match_info["zone"]
        if zid not in self.audience.tree().zones:
            raise NotFound("zone_not_found", f"no zone {zid!r}")
        # the page itself is public; the API calls it makes decide what it may show
        return web.FileResponse(STATIC / "nghe.html", headers={"Cache-Control": "no-cache"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("nghe.js", "nghe.css", "board.js", "board.css"):
            raise NotFound("not_found", f"no such resource: {request.path}")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    def _zone_counts(self, zones: list[str]) -> list[dict[str, Any]]:
        counts = self.hub.counts()
        peaks = self.hub.peaks()
        hls = self.hls_counts()
        return [{"zone": z, "name": self.audience.name(z),
                 "public": self.audience.public.is_public(z),
                 "listeners": {"current": counts.get(z, 0) + hls.get(z, 0),
                               "peak": peaks.get(z, 0), "ogg": counts.get(z, 0),
                               "hls": hls.get(z, 0)},
                 "listen_url": f"/listen/{z}.ogg", "hls_url": f"/listen/{z}/index.m3u8",
                 "page_url": f"/nghe/{z}"} for z in zones]

    async def counts(self, request: web.Request) -> web.Response:
        lim = self.hub.limits
        return json_response({
            "zones": self._zone_counts(self.audience.visible(request)),
            "total": self.hub.total, "hls_total": sum(self.hls_counts().values()),
            "refused": self.hub.refused,
            "dropped_slow": self.hub.dropped_slow,
            "limits": {"per_zone": lim.max_per_zone, "total": lim.max_total,
                       "per_address": lim.max_per_address, "buffer_bytes": lim.max_buffer}})

    async def zone_info(self, request: web.Request) -> web.Response:
        zid = self.audience.zone(request)
        d = self._zone_counts([zid])[0]
        np_ = now_playing(self.port, zid)
        # AzuraCast's now-playing shape, where it fits
        d["now_playing"] = np_
        d["is_online"] = np_ is not None
        if self.prime_next is not None:
            await self.prime_next(zid)
        d["playing_next"] = self.next_items(zid)
        return json_response(d)

    async def icecast_status(self, request: web.Request) -> web.Response:
        tree = self.audience.tree()
        zones = {z: tree.zones[z] for z in self.audience.visible(request)}
        base = f"{request.scheme}://{request.host}"
        return json_response(status_json(self.hub, zones, base, self.hls_counts()))

    async def set_public(self, request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        if zid not in self.audience.tree().zones:
            raise NotFound("zone_not_found", f"no zone {zid!r}")
        body = await parse_body(request, PublicPut)
        await self.audience.public.put(zid, body.public)
        request["audit_target"] = zid
        return json_response({"zone": zid, "public": body.public})


class _HandedOver(web.StreamResponse):
    """A listening response whose connection the hub took over after its head: aiohttp must
    not end the body (a chunked terminator in the middle of the stream), only forget it. Its
    head goes out with the stream's header pages: one write, one segment."""
    handed_over = False
    _send_headers_immediately = False

    async def write_eof(self, data: bytes = b"") -> None:
        if not self.handed_over:
            await super().write_eof(data)


def listener_metrics(hub: ListenHub, hls_counts: Callable[[], dict[str, int]] = dict) -> Any:
    """A prometheus collector of listener counts (registered with /metrics at assembly):
    `loa_listeners{zone}` and `loa_listeners_total` count Ogg listeners and HLS clients (those
    that fetched within the last segments: HLS has no connection to count), also apart with
    `loa_listeners_by_kind{zone,kind="ogg"|"hls"}`."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Any:
            ogg = hub.counts()
            try:
                hls = hls_counts()
            except RuntimeError:   # no running loop (collected off the server)
                hls = {}
            g = GaugeMetricFamily("loa_listeners", "HTTP listeners per zone (Ogg + HLS)",
                                  labels=["zone"])
            for z in sorted(set(ogg) | set(hls)):
                g.add_metric([z], ogg.get(z, 0) + hls.get(z, 0))
            yield g
            k = GaugeMetricFamily("loa_listeners_by_kind", "HTTP listeners per zone and kind",
                                  labels=["zone", "kind"])
            for z in sorted(set(ogg) | set(hls)):
                k.add_metric([z, "ogg"], ogg.get(z, 0))
                k.add_metric([z, "hls"], hls.get(z, 0))
            yield k
            yield GaugeMetricFamily("loa_listeners_total", "HTTP listeners in all (Ogg + HLS)",
                                    value=hub.total + sum(hls.values()))
            yield GaugeMetricFamily("loa_listeners_hls", "HLS clients in all",
                                    value=sum(hls.values()))
            yield CounterMetricFamily("loa_listeners_refused", "Listeners refused (limits)",
                                      value=hub.refused)
            yield CounterMetricFamily("loa_listeners_dropped_slow",
                                      "Listeners dropped as slow readers", value=hub.dropped_slow)
    return _Collector()
