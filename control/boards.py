"""E-board feed (issue 18): what a commune's LED/LCD boards show, per zone.

- `GET /api/v1/boards/{zone}`: JSON (what is on air, the current bulletin's text, the next
  scheduled items, the emergency banner);
- `GET /api/v1/boards/{zone}/events`: the same as Server-Sent Events, sent when it changes;
- `GET /boards/{zone}.rss`: RSS 2.0 (the bulletin on air and the zone's recent replays);
- `GET /board/{zone}`: the full-screen page a board's browser shows unattended.

The banner follows emergency broadcasts: it appears when one starts in the zone, carries the
alert's risk level and its colour (QĐ 18/2021/QĐ-TTg: 1 light blue, 2 light yellow, 3 orange,
4 red, 5 purple) and stays `banner_hold_s` after it ends (a warning repeats until superseded;
the board must not go blank between airings).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from control.errors import NotFound
from control.http import Route, json_dumps, json_response
from control.listening import Audience, now_playing
from streamer.port import EngineEvent, EnginePort
from streamer.timefmt import utc_iso

STATIC = Path(__file__).resolve().parent / "static"

try:
    from control.alerts.rules import RISK_COLOURS
except ImportError:   # the alerts room not there: the decision's table, same values
    RISK_COLOURS = {1: ("xanh dương nhạt", "#4FC3F7"), 2: ("vàng nhạt", "#FFF176"),
                    3: ("da cam", "#FB8C00"), 4: ("đỏ", "#E53935"), 5: ("tím", "#8E24AA")}
EMERGENCY_COLOUR = ("đỏ", "#E53935")   # an emergency without a risk level (a siren, a talk)
_SSE_BREAKS = {ord(c): " " for c in "\r\n\x85\u2028\u2029"}


def banner_for(level: str, risk_level: Any, text: str, title: str) -> dict[str, Any] | None:
    """The emergency banner of a broadcast, or None (pure)."""
    try:
        risk = int(risk_level) if risk_level is not None else None
    except (TypeError, ValueError):
        risk = None
    if risk not in RISK_COLOURS:
        risk = None
    if level != "emergency" and risk is None:
        return None
    name, colour = RISK_COLOURS[risk] if risk is not None else EMERGENCY_COLOUR
    return {"risk_level": risk, "colour": colour, "colour_name": name,
            "title": title, "text": text or title}


def sse_data(obj: Any) -> str:
    """One SSE `data:` line: JSON escapes CR/LF, and U+2028/2029/0085 are escaped too."""
    return json_dumps(obj).translate(_SSE_BREAKS)


class Boards:
    def __init__(self, port: EnginePort, audience: Audience,
                 next_items: Callable[[str], list[dict[str, Any]]],
                 recent: Callable[[str], list[dict[str, Any]]] | None = None,
                 banner_hold_s: float = 1800.0, max_streams: int = 1000) -> None:
        self.port = port
        self.audience = audience
        self.next_items = next_items
        self.recent = recent or (lambda zone: [])
        self.banner_hold_s = banner_hold_s
        self.max_streams = max_streams
        self.streams = 0
        # zone -> (banner, until: wall clock; None while its broadcast is on air, bid)
        self._banners: dict[str, tuple[dict[str, Any], float | None, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = asyncio.Event()
        port.subscribe(self._on_engine_event)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def close(self) -> None:
        self._loop = None
        self._closing.set()

    def _on_engine_event(self, ev: EngineEvent) -> None:   # the tick thread: never blocks
        loop = self._loop
        if loop is None or ev.level != "emergency":
            return
        try:
            loop.call_soon_threadsafe(self._handle, ev)
        except RuntimeError:
            pass

    def _handle(self, ev: EngineEvent) -> None:
        if ev.type == "broadcast.started":
            np_ = self.port.broadcast(ev.broadcast)
            if np_ is None:
                return
            src = dict(np_.source)
            b = banner_for(np_.level, src.get("risk_level"),
                           str(src.get("text") or np_.title or ""), np_.title)
            if b is not None:
                b["since"] = np_.started_at
                for z in ev.zones:
                    self._banners[z] = (b, None, ev.broadcast)
        elif ev.type in ("broadcast.finished", "broadcast.stopped"):
            until = time.time() + self.banner_hold_s
            for z, (b, _u, bid) in list(self._banners.items()):
                if bid == ev.broadcast:
                    self._banners[z] = (b, until, bid)

    # ------------------------------------------------------------------ state
    def state(self, zone: str) -> dict[str, Any]:
        np_ = now_playing(self.port, zone)
        banner = None
        held = self._banners.get(zone)
        if held is not None:
            b, until, _bid = held
            if until is None or until > time.time():
                banner = b
            else:
                self._banners.pop(zone, None)
        if np_ is not None:
            live = banner_for(np_["level"], np_.get("risk_level"), np_["text"], np_["title"])
            if live is not None:
                banner = dict(live, since=np_["started_at"])
        return {"zone": zone, "name": self.audience.name(zone), "on_air": np_,
                "text": np_["text"] if np_ else "", "next": self.next_items(zone),
                "banner": banner, "clear": banner is None}

    # ------------------------------------------------------------------ HTTP
    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/boards/{zone}", self.board_json, "boards.read",
              "What a zone's e-boards show: on air, text, next items, emergency banner",
              errors=(401, 403, 404)),
            R("GET", "/boards/{zone}/events", self.board_events, "boards.read",
              "The board's state as Server-Sent Events (sent when it changes)",
              produces="text/event-stream", errors=(401, 403, 404, 503)),
            R("GET", "/boards/{zone}.rss", self.board_rss, "boards.read",
              "The zone's bulletins as RSS 2.0", root=True, produces="application/rss+xml"),
            R("GET", "/board/{zone}", self.board_page, "boards.read",
              "The full-screen e-board page", root=True, produces="text/html"),
        ]

    async def board_json(self, request: web.Request) -> web.Response:
        zid = self.audience.zone(request)
        resp = json_response(dict(self.state(zid), updated_at=utc_iso(time.time())))
        resp.headers["Access-Control-Allow-Origin"] = "*"
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    async def board_events(self, request: web.Request) -> web.StreamResponse:
        zid = self.audience.zone(request)
        if self.streams >= self.max_streams:
            from control.http import error_response
            r = error_response(503, "board_streams_full", "too many board streams; retry")
            r.headers["Retry-After"] = "15"
            return r
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "Access-Control-Allow-Origin": "*", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self.streams += 1
        last = ""
        quiet = 0.0
        try:
            await resp.write(b"retry: 3000\n\n")
            while not self._closing.is_set():
                st = self.state(zid)
                data = sse_data(st)
                if data != last:
                    await resp.write(f"event: board\ndata: {data}\n\n".encode())
                    last = data
                    quiet = 0.0
                elif quiet >= 15:
                    await resp.write(b"event: ping\ndata: {}\n\n")  # the page's watchdog
                    quiet = 0.0
                try:
                    await asyncio.wait_for(self._closing.wait(), 1.0)
                except TimeoutError:
                    quiet += 1.0
                if request.transport is None or request.transport.is_closing():
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.streams -= 1
        return resp

    async def board_rss(self, request: web.Request) -> web.Response:
        zid = self.audience.zone(request)
        st = self.state(zid)
        base = f"{request.scheme}://{request.host}"
        items = []
        if st["banner"]:
            b = st["banner"]
            lvl = f" (cấp độ rủi ro {b['risk_level']})" if b["risk_level"] else ""
            items.append((f"CẢNH BÁO{lvl}: {b['title']}", b["text"], f"{base}/board/{zid}",
                          time.time()))
        if st["on_air"]:
            items.append((f"Đang phát: {st['on_air']['title']}", st["text"],
                          f"{base}/nghe/{zid}", time.time()))
        for e in self.recent(zid):
            items.append((e["title"], e.get("text") or e["title"], base + e["url"],
                          _parse_ts(e["started_at"])))
        out = ['<?xml version="1.0" encoding="UTF-8"?>', '<rss version="2.0"><channel>',
               f"<title>{escape(st['name'])}</title>", f"<link>{escape(base)}/board/{zid}</link>",
               f"<description>{escape('Bản tin ' + st['name'])}</description>",
               "<language>vi</language>"]
        for title, text, link, ts in items:
            out.append(f"<item><title>{escape(title)}</title><description>{escape(text)}"
                       f"</description><link>{escape(link)}</link>"
                       f"<pubDate>{formatdate(ts, usegmt=True)}</pubDate></item>")
        out.append("</channel></rss>")
        return web.Response(text="\n".join(out), content_type="application/rss+xml",
                            headers={"Access-Control-Allow-Origin": "*"})

    async def board_page(self, request: web.Request) -> web.StreamResponse:
        zid = request.match_info["zone"]
        if zid not in self.audience.tree().zones:
            raise NotFound("zone_not_found", f"no zone {zid!r}")
        return web.FileResponse(STATIC / "board.html", headers={"Cache-Control": "no-cache"})


def _parse_ts(s: str) -> float:
    import datetime as dt
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()

