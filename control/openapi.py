"""The OpenAPI document, built from the same pydantic models the handlers validate with."""
from __future__ import annotations

from pydantic.json_schema import models_json_schema

from control.sources import BroadcastRequest

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}


def _err(*codes: int) -> dict:
    return {str(c): {"description": "error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for c in codes}


def _ok(desc: str, schema: dict | None = None, ctype: str = "application/json") -> dict:
    return {"description": desc, "content": {ctype: {"schema": schema or {"type": "object"}}}}


def build_openapi(version: str) -> dict:
    _, defs = models_json_schema([(BroadcastRequest, "validation")],
                                 ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR
    zid = {"name": "zone", "in": "path", "required": True, "schema": {"type": "string"}}
    bid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths = {
        "/api/v1/health": {"get": {"summary": "Liveness and engine clock statistics",
                                   "responses": {"200": _ok("server is up")}}},
        "/api/v1/zones": {"get": {"summary": "Zone tree, groups and what is on air",
                                  "responses": {"200": _ok("zones")}}},
        "/api/v1/zones/{zone}": {"get": {"summary": "One zone", "parameters": [zid],
                                         "responses": {"200": _ok("zone"), **_err(404)}}},
        "/api/v1/zones/{zone}/sdp": {"get": {
            "summary": "SDP a stock RTP client (ffmpeg, GStreamer, VLC) can play",
            "parameters": [zid, {"name": "dest", "in": "query", "required": False,
                                 "schema": {"type": "string"}}],
            "responses": {"200": _ok("SDP", {"type": "string"}, "application/sdp"),
                          **_err(400, 404, 409)}}},
        "/api/v1/broadcasts": {
            "get": {"summary": "Active broadcasts (past too with ?past=1)",
                    "parameters": [{"name": "past", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": ["0", "1"]}}],
                    "responses": {"200": _ok("broadcasts")}},
            "post": {"summary": "Start a broadcast",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/BroadcastRequest"}}}},
                     "responses": {"201": _ok("the broadcast, with its id"),
                                   **_err(400, 404, 409, 413, 415, 422)}}},
        "/api/v1/broadcasts/{id}": {
            "get": {"summary": "One broadcast (active or past)", "parameters": [bid],
                    "responses": {"200": _ok("broadcast"), **_err(404)}},
            "delete": {"summary": "Stop a broadcast", "parameters": [bid],
                       "responses": {"200": _ok("stopped broadcast"), **_err(404, 409)}}},
        "/api/v1/asrun": {"get": {"summary": "As-run log (engine events)",
                                  "parameters": [{"name": "since", "in": "query", "required": False,
                                                  "schema": {"type": "integer", "minimum": 0}},
                                                 {"name": "broadcast", "in": "query",
                                                  "required": False, "schema": {"type": "string"}}],
                                  "responses": {"200": _ok("events"), **_err(400)}}},
        "/api/v1/events": {"get": {"summary": "Server-Sent Events stream of engine events",
                                   "responses": {"200": _ok("event stream", {"type": "string"},
                                                            "text/event-stream")}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "Loa broadcast server API", "version": version},
            "paths": paths, "components": {"schemas": schemas}}
