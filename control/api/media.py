"""The media library: streamed uploads (hashed, probed, measured), tags, deletion."""
from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import secrets
import unicodedata

from aiohttp import BodyPartReader, web
from pydantic import ValidationError

from control import models as m
from control.broadcasts import Broadcasts
from control.db import Database
from control.errors import Forbidden, NotFound
from control.media_refs import MediaReferences, may_edit, owner_scope
from control.http import HttpError, Route, json_response, parse_body, q, validation_error
from control.service import media_root
from control.settings import Settings
from streamer.ingest.base import MediaError

MB = 1024 * 1024
CHUNK = 256 * 1024


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
    lufs: float | None
    try:
        lufs = measure_file(path, max_seconds=300.0)
        lufs = lufs if math.isfinite(lufs) else None
    except MediaError:
        raise
    except Exception:
        lufs = None
    return {"format": info.format_name, "codec": info.codec_name, "duration_s": info.duration_s,
            "sample_rate": info.sample_rate, "channels": info.channels,
            "loudness_lufs": round(lufs, 2) if lufs is not None else None}


def public_media(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "path"}


class MediaHandlers:
    def __init__(self, db: Database, settings: Settings, broadcasts: Broadcasts,
                 refs: MediaReferences | None = None) -> None:
        self.db = db
        self.settings = settings
        self.broadcasts = broadcasts  # the media lock, the zone tree
        #: who still uses an item (broadcasts, schedules, alerts register their checks)
        self.refs = refs if refs is not None else MediaReferences()

    def routes(self) -> list[Route]:
        R = Route
        return [
            R("GET", "/media", self.list_media, "media.read", "The media library",
              query=[q("language"), q("tag")], errors=(401,)),
            R("POST", "/media", self.upload_media, "media.write",
              "Upload a recording (multipart field `file`; optional `title`, `language`, `tags`)",
              body_kind="multipart", ok=201, errors=(400, 401, 403, 413, 415, 422)),
            R("GET", "/media/{id}", self.get_media, "media.read", "One media item", errors=(401, 404)),
            R("PATCH", "/media/{id}", self.update_media, "media.write", "Tag a media item",
              body=m.MediaUpdate, errors=(400, 401, 403, 404, 415, 422)),
            R("DELETE", "/media/{id}", self.delete_media, "media.write",
              "Delete a media item (refused while a broadcast, schedule or alert uses it)",
              errors=(401, 403, 404, 409)),
        ]

    async def list_media(self, request: web.Request) -> web.Response:
        rows = await self.db.media_list(request.query.get("language"), request.query.get("tag"))
        return json_response({"media": [public_media(r) for r in rows]})

    async def _media(self, mid: str) -> dict:
        r = await self.db.media(mid)
        if r is None:
            raise NotFound("unknown_media", f"no media with id {mid!r}")
        return r

    async def get_media(self, request: web.Request) -> web.Response:
        return json_response(public_media(await self._media(request.match_info["id"])))

    def _check_owner(self, request: web.Request, row: dict) -> None:
        """Only an account whose zones cover the item's owner scope changes it."""
        principal = request["principal"]
        if not may_edit(principal, self.broadcasts.tree(), row.get("scope")):
            where = ", ".join(row.get("scope") or []) or "the whole province"
            raise Forbidden(f"media {row['id']} belongs to {where}, outside your scope",
                            code="media_out_of_scope")

    async def update_media(self, request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        self._check_owner(request, await self._media(mid))
        body = await parse_body(request, m.MediaUpdate)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        if changes:
            await self.db.update_media(mid, **changes)
        request["audit_detail"] = {"changes": sorted(changes)}
        return json_response(public_media(await self._media(mid)))

    async def delete_media(self, request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        async with self.broadcasts.media_lock:
            row = await self._media(mid)
            self._check_owner(request, row)
            # never a silent gap later: stop, change or delete what uses it first
            await self.refs.check_unused(mid)
            await self.db.delete_media(mid)
            try:
                await asyncio.get_running_loop().run_in_executor(None, os.unlink, row["path"])
            except FileNotFoundError:
                pass
        return json_response({"deleted": mid})

    async def upload_media(self, request: web.Request) -> web.Response:
        """Streamed to a temporary file while hashing; nothing stays behind unless it is whole,
        within the limit and playable."""
        if not request.content_type.startswith("multipart/form-data"):
            raise HttpError(415, "unsupported_media_type",
                           "upload with Content-Type: multipart/form-data (field `file`)")
        limit = self.settings.max_upload_mb * MB
        clen = request.content_length
        if clen is not None and clen > limit + 64 * 1024:
            raise HttpError(413, "upload_too_large",
                           f"the upload is larger than the limit of {self.settings.max_upload_mb} MB")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError, KeyError) as e:
            raise HttpError(400, "malformed_multipart", f"cannot read the multipart body: {e}") from None
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
                    if not isinstance(part, BodyPartReader):
                        raise HttpError(400, "malformed_multipart", "nested multipart is not accepted")
                    if part.name == "file":
                        if f is not None:
                            raise HttpError(400, "malformed_multipart", "send one `file` per upload")
                        filename = safe_filename(part.filename)
                        f = await loop.run_in_executor(None, open, tmp, "wb")
                        buf = bytearray()
                        while True:
                            chunk = await part.read_chunk(CHUNK)
                            if not chunk:
                                break
                            size += len(chunk)
                            if size > limit:
                                raise HttpError(413, "upload_too_large",
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
                            raise HttpError(422, "invalid_request", f"field {part.name} is too long")
                        try:
                            fields[part.name] = value.decode("utf-8").strip()
                        except UnicodeDecodeError:
                            raise HttpError(422, "invalid_request",
                                           f"field {part.name} is not UTF-8") from None
                    else:
                        raise HttpError(422, "invalid_request", f"unknown form field {part.name!r}; "
                                       "expected file, title, language, tags")
            except HttpError:
                raise
            except (ValueError, AssertionError, RuntimeError, KeyError, asyncio.IncompleteReadError,
                    ConnectionError) as e:
                raise HttpError(400, "truncated_upload",
                               f"the upload is incomplete or malformed: {e}") from None
            except Exception as e:  # aiohttp ClientPayloadError and friends: the body broke off
                if type(e).__module__.startswith("aiohttp"):
                    raise HttpError(400, "truncated_upload",
                                   f"the upload is incomplete: {type(e).__name__}") from None
                raise
            if f is None:
                raise HttpError(422, "missing_file", "the form has no `file` field")
            if size == 0:
                raise HttpError(422, "empty_file", "the uploaded file is empty")
            meta = m.MediaUpdate.model_validate({
                "title": fields.get("title") or None, "language": fields.get("language") or None,
                "tags": [t.strip() for t in fields.get("tags", "").split(",") if t.strip()] or None})
            digest = sha.hexdigest()
            try:
                info = await loop.run_in_executor(None, probe_upload, str(tmp))
            except MediaError as e:
                raise HttpError(422, "unsupported_media", f"not a playable audio file: {e}") from None
            existing = await self.db.media_by_hash(digest)
            if existing is not None:
                request["audit_target"] = existing["id"]
                return json_response(dict(public_media(existing), duplicate=True), status=200)
            final = root / digest
            await loop.run_in_executor(None, os.replace, tmp, final)
            keep = True
            row = {"id": digest[:16], "sha256": digest, "path": str(final), "filename": filename,
                   "size": size, **info, "title": meta.title or filename,
                   "language": meta.language or "vi", "tags": meta.tags or [],
                   "created_by": request["principal"].name,
                   "scope": owner_scope(request["principal"])}
            try:
                await self.db.insert_media(row)
            except Exception:
                keep = False
                await loop.run_in_executor(None, lambda: final.unlink(missing_ok=True))
                raise
            request["audit_target"] = row["id"]
            request["audit_detail"] = {"filename": filename, "size": size}
            return json_response(public_media(await self._media(row["id"])), status=201)
        except ValidationError as e:
            raise validation_error(e) from None
        finally:
            if f is not None and not f.closed:
                await loop.run_in_executor(None, f.close)
            if not keep:
                await loop.run_in_executor(None, lambda: tmp.unlink(missing_ok=True))

