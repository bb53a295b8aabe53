"""Zones, groups and each zone's SDP description."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

from aiohttp import web

from control import models as m
from control import textsafe
from control.db import Database
from control.errors import NotFound
from control.http import HttpError, Route, json_response, parse_body, q
from control.service import ControlState
from control.settings import Settings
from control.visibility import ReadScope
from streamer.port import EnginePort, ZoneSnapshot
from streamer.zones import Zone, ZoneError, ZoneTree, parse_hostport


def zone_or_404(tree: ZoneTree, zid: str) -> Zone:
    z = tree.zones.get(zid)
    if z is None:
        raise NotFound("unknown_zone", f"no zone with id {zid!r}")
    return z


class ZoneHandlers:
    def __init__(self, state: ControlState, port: EnginePort, db: Database,
                 settings: Settings, tree: Callable[[], ZoneTree]) -> None:
        self.state = state
        self.port = port
        self.db = db
        self.settings = settings
        self.tree = tree

    def routes(self) -> list[Route]:
        R = Route
        return [
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
        ]

    def _zone_dict(self, zid: str, status: Mapping[str, ZoneSnapshot]) -> dict:
        d = self.tree().zones[zid].to_dict()
        s = status.get(zid)
        d["on_air"] = s.to_dict()["on_air"] if s is not None else []
        d["sdp"] = f"/api/v1/zones/{zid}/sdp"
        d["codes"] = self.state.zone_codes.get(zid, [])
        d["voice"], d["languages"] = self.state.zone_speech.get(zid, (None, []))
        pub = self.state.zone_public.get(zid)
        d["public"] = pub if pub is not None else zid in self.state.settings.listen_public_zones
        return d

    @staticmethod
    def _ancestor_dict(z: Zone) -> dict:
        """A zone above the reader's scope: its name and place in the tree only."""
        return {"id": z.id, "name": z.name, "parent": z.parent, "level": z.level,
                "code": z.code, "ancestor": True}

    async def list_zones(self, request: web.Request) -> web.Response:
        tree, status = self.tree(), self.port.zone_status()
        scope = ReadScope(request.get("principal"), tree)
        above = scope.zone_ancestors(tree)
        out = [scope.zone(self._zone_dict(zid, status)) if scope.sees_zone(zid)
               else self._ancestor_dict(tree.zones[zid])
               for zid in list(tree.zones) if scope.sees_zone(zid) or zid in above]
        groups = [{"id": g, "zones": [z for z in mem if scope.sees_zone(z)]}
                  for g, mem in tree.groups.items()]
        return json_response({"zones": out, "groups": [g for g in groups
                                                        if scope.everything or g["zones"]]})

    async def get_zone(self, request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        tree = self.tree()
        z = zone_or_404(tree, zid)
        scope = ReadScope(request.get("principal"), tree)
        if not scope.sees_zone(zid):
            if zid in scope.zone_ancestors(tree):
                return json_response(self._ancestor_dict(z))
            raise NotFound("unknown_zone", f"no zone with id {zid!r}")
        d = scope.zone(self._zone_dict(zid, self.port.zone_status()))
        d["children"] = [c for c in tree.children(zid) if scope.sees_zone(c)]
        d["receivers"] = await self.db.count_receivers_in(zid)
        return json_response(d)

    async def create_zone(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.ZoneCreate)
        request["audit_target"] = body.id
        await self.state.create_zone(body.model_dump())
        return json_response(self._zone_dict(body.id, {}), status=201)

    async def update_zone(self, request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        body = await parse_body(request, m.ZoneUpdate)
        changes = body.model_dump(exclude_unset=True)
        request["audit_detail"] = {"changes": sorted(changes)}
        await self.state.update_zone(zid, changes)
        return json_response(self._zone_dict(zid, {}))

    async def move_zone(self, request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        body = await parse_body(request, m.ZoneMove)
        request["audit_detail"] = {"parent": body.parent}
        await self.state.move_zone(zid, body.parent)
        return json_response(self._zone_dict(zid, {}))

    async def delete_zone(self, request: web.Request) -> web.Response:
        zid = request.match_info["zone"]
        await self.state.delete_zone(zid)
        return json_response({"deleted": zid})

    async def import_zones(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "invalid_encoding", "the CSV must be UTF-8") from None
        result = await self.state.import_csv(text)
        request["audit_detail"] = result
        return json_response(result)

    async def list_groups(self, request: web.Request) -> web.Response:
        scope = ReadScope(request.get("principal"), self.tree())
        groups = [dict(g, zones=[z for z in g.get("zones") or [] if scope.sees_zone(z)])
                  for g in await self.db.groups()]
        return json_response({"groups": [g for g in groups if scope.everything or g["zones"]]})

    async def put_group(self, request: web.Request) -> web.Response:
        gid = request.match_info["group"]
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$", gid):
            raise HttpError(422, "invalid_request", "group id: letters, digits, _ . - (max 100)")
        body = await parse_body(request, m.GroupPut)
        return json_response(await self.state.put_group(gid, body.name, body.zones))

    async def delete_group(self, request: web.Request) -> web.Response:
        gid = request.match_info["group"]
        await self.state.delete_group(gid)
        return json_response({"deleted": gid})

    async def sdp(self, request: web.Request) -> web.Response:
        z = zone_or_404(self.tree(), request.match_info["zone"])
        dest = request.query.get("dest")
        if dest:
            try:
                host, port = parse_hostport(dest, "dest")
            except ZoneError as e:
                raise HttpError(400, "invalid_dest", str(e)) from None
            if (host, port) not in z.unicast and z.multicast != (host, port):
                raise HttpError(404, "unknown_dest", f"{dest} is not a destination of zone {z.id}")
        elif z.multicast:
            host, port = z.multicast
        elif z.unicast:
            host, port = z.unicast[0]
        else:
            raise HttpError(409, "no_destination",
                            f"zone {z.id} has no multicast group or static destination to describe")
        return web.Response(text=zone_sdp(z, host, port, self.port.ssrc, self.settings),
                            content_type="application/sdp")


def zone_sdp(z: Zone, host: str, port: int, ssrc: int, settings: Settings) -> str:
    """RFC 7587: rtpmap is always opus/48000/2; sprop-stereo=0 says we send mono."""
    ttl = f"/{max(settings.multicast_ttl, 1)}" if ipaddress.ip_address(host).is_multicast else ""
    pt = settings.payload_type
    ip_ver = "IP6" if ":" in host else "IP4"
    return (
        "v=0\r\n"
        f"o=- {ssrc} 1 IN {ip_ver} 127.0.0.1\r\n"
        f"s=Loa zone {textsafe.one_line(z.id)}\r\n"
        f"i={textsafe.one_line(z.name, 500) or '-'}\r\n"
        f"c=IN {ip_ver} {host}{ttl}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP {pt}\r\n"
        f"a=rtpmap:{pt} opus/48000/2\r\n"
        f"a=fmtp:{pt} sprop-stereo=0;stereo=0;useinbandfec=1;"
        f"maxaveragebitrate={settings.opus_bitrate}\r\n"
        "a=ptime:20\r\n"
        "a=recvonly\r\n"
    )
