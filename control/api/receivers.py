"""Receivers: one or in bulk (all or nothing), their details, moves and retirement."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from control import models as m
from control.api.zones import zone_or_404
from control.db import Database
from control.errors import NotFound
from control.http import HttpError, Route, json_dumps, json_response, parse_body, q, read_json
from control.receiver_secrets import ReceiverSecrets
from control.service import ControlState, public_receiver
from control.visibility import ReadScope
from streamer.zones import ZoneTree


class ReceiverHandlers:
    def __init__(self, state: ControlState, db: Database, registry: Any,
                 secrets: ReceiverSecrets, tree: Callable[[], ZoneTree]) -> None:
        self.state = state
        self.db = db
        self.registry = registry  # streamer.rtp.registry.ReceiverRegistry: what is live
        self.secrets = secrets
        self.tree = tree

    def routes(self) -> list[Route]:
        R = Route
        return [
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
        ]

    def with_live(self, r: dict) -> dict:
        """What the receiver protocol knows: online/offline, last seen, address, link quality,
        what it is playing (`never` when it has not registered since the server started)."""
        st = self.registry.status(r["id"]) if self.registry is not None else None
        r["live"] = st if st else {"state": "never", "online": False}
        return r

    async def list_receivers(self, request: web.Request) -> web.Response:
        zone, status = request.query.get("zone"), request.query.get("status")
        if status is not None and status not in ("provisioned", "retired"):
            raise HttpError(400, "invalid_query", "status is provisioned or retired")
        zones = None
        if zone is not None:
            tree = self.tree()
            zone_or_404(tree, zone)
            zones = tree.subtree(zone)
        rows = await self.db.receivers(status=status, zones=zones)
        live = request.query.get("live")
        scope = ReadScope(request.get("principal"), self.tree())
        out = [self.with_live(public_receiver(r)) for r in rows if scope.receiver(r)]
        if live in ("online", "offline", "never"):
            out = [r for r in out if r["live"]["state"] == live]
        return json_response({"receivers": out})

    async def get_receiver(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        r = await self.db.receiver(rid)
        if r is None or not ReadScope(request.get("principal"), self.tree()).receiver(r):
            raise NotFound("unknown_receiver", f"no receiver with id {rid!r}")
        return json_response(self.with_live(public_receiver(r)))

    async def provision_receiver(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.ReceiverProvision)
        out = await self.state.provision_receiver(body.model_dump())
        request["audit_target"] = out["id"]
        request["audit_detail"] = {"zone": out["zone"]}  # never the secret
        return json_response(out, status=201)

    async def provision_receivers_bulk(self, request: web.Request) -> web.Response:
        """`{"receivers": [ReceiverProvision, ...]}`, all or nothing. Rows are validated one by
        one (`validate_receivers`) and every bad row is reported, not just the first."""
        data = await read_json(request)
        if not isinstance(data, dict) or not isinstance(data.get("receivers"), list):
            raise HttpError(422, "invalid_request",
                            'the body must be a JSON object {"receivers": [{...}, ...]}')
        unknown = sorted(set(data) - {"receivers"})
        if unknown:
            raise HttpError(422, "invalid_request", f"unknown field(s): {', '.join(unknown[:10])}")
        items = data["receivers"]
        if not items:
            raise HttpError(422, "invalid_request", "receivers: give at least one receiver")
        if len(items) > m.MAX_BULK_RECEIVERS:
            raise HttpError(413, "too_many_receivers",
                            f"{len(items)} receivers in one request; the limit is "
                            f"{m.MAX_BULK_RECEIVERS}: send them in several requests",
                            limit=m.MAX_BULK_RECEIVERS)
        rows, found = m.validate_receivers(items)
        problems = [{"field": ".".join(str(x) for x in ("receivers", i, *loc)), "problem": msg}
                    for i, loc, msg in found]
        if problems:
            summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
            raise HttpError(422, "invalid_request", f"{summary}; nothing was written",
                            problems=problems[:1000])
        zones = sorted({r["zone"] for r in rows})
        request["audit_target"] = f"{len(rows)} receivers"
        request["audit_detail"] = {"count": len(rows), "zones": zones[:100]}  # never the secrets
        out = await self.state.provision_receivers(rows)
        # one small dumps per receiver, not one big call that holds the GIL for 10,000 of them
        body = b'{"receivers": [' + b", ".join(json_dumps(r).encode() for r in out) + b"]}"
        return web.Response(body=body, status=201, content_type="application/json")

    async def update_receiver(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.ReceiverUpdate)
        changes = body.model_dump(exclude_unset=True)
        request["audit_detail"] = {"changes": sorted(changes)}
        return json_response(await self.state.update_receiver(request.match_info["id"], changes))

    async def move_receiver(self, request: web.Request) -> web.Response:
        body = await parse_body(request, m.ReceiverMove)
        request["audit_detail"] = {"zone": body.zone}
        return json_response(await self.state.update_receiver(request.match_info["id"],
                                                              {"zone": body.zone}))

    async def retire_receiver(self, request: web.Request) -> web.Response:
        out = await self.state.retire_receiver(request.match_info["id"])
        # forget it in the receiver protocol and rotate the media key it knew
        self.registry.retire(out["id"], time.monotonic(), time.time())
        self.secrets.forget(out["id"])
        return json_response(out)
