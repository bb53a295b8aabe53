"""The OpenAPI document, built from the route table and the pydantic models handlers validate
with, so a route cannot exist without being documented."""
from __future__ import annotations

import re

from pydantic.json_schema import models_json_schema

from control.http import Route
from control.policy import Policy

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}


def _err(*codes: int) -> dict:
    return {str(c): {"description": "error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for c in codes}


def _ok(desc: str, schema: dict | None = None, ctype: str = "application/json") -> dict:
    return {"description": desc, "content": {ctype: {"schema": schema or {"type": "object"}}}}


def build_openapi(version: str, routes: list[Route]) -> dict:
    models = {r.body for r in routes if r.body is not None}
    _, defs = models_json_schema([(mdl, "validation") for mdl in sorted(models, key=lambda x: x.__name__)],
                                 ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR
    paths: dict[str, dict] = {}
    for r in routes:
        if r.root:  # pages and /metrics live outside /api/v1
            continue
        op: dict = {"summary": r.summary, "operationId": f"{r.method.lower()}_{r.path}",
                    "x-loa-action": r.action}
        params = [{"name": p, "in": "path", "required": True,
                   "schema": {"type": "string", "minLength": 1}}
                  for p in re.findall(r"{(\w+)}", r.path)]
        params += r.query
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}}}
        elif r.body_kind == "multipart":
            op["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "title": {"type": "string", "maxLength": 300},
                    "language": {"type": "string"},
                    "tags": {"type": "string", "description": "comma-separated"}}}}}}
        elif r.body_kind == "cap":
            op["requestBody"] = {"required": True, "content": {
                t: {"schema": {"type": "string", "description": "a CAP 1.2 <alert>, XML-signed"}}
                for t in ("application/cap+xml", "application/xml")}}
        elif r.body_kind == "csv":
            op["requestBody"] = {"required": True, "content": {"text/csv": {
                "schema": {"type": "string",
                           "description": "header code,name,parent_code,level then one zone a line"}}}}
        ok = ({"200": _ok("SDP", {"type": "string"}, r.produces)} if r.produces != "application/json"
              else {str(r.ok): _ok(r.summary)})
        op["responses"] = {**ok, **_err(*r.errors)}
        if not Policy.is_public(r.action):
            op["security"] = [{"bearer": []}, {"session": []}]
        paths.setdefault(f"/api/v1{r.path}", {})[r.method.lower()] = op
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "operationId": "get_metrics",
                                 "responses": {"200": _ok("metrics", {"type": "string"},
                                                          "text/plain")}}}
    return {"openapi": "3.1.0",
            "info": {"title": "Loa broadcast server API", "version": version,
                     "description": "Roles: admin, operator, official, alert_authority, viewer. "
                                    "Errors are {\"error\": {\"code\", \"message\"}}."},
            "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "loa_session"}}}}
