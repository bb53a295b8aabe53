"""CAP 1.2 messages (OASIS Common Alerting Protocol) parsed into plain data, hardened.

Sans-IO: bytes in, a `CapAlert` out, or `CapError` (a domain `Invalid`, so a 4xx) naming what
is wrong. The XML goes through defusedxml with DTDs, entities and external references all
forbidden, after a size cap: an XXE probe, a billion-laughs expansion, a truncated document or a
message in the wrong namespace is refused before anything is read from disk or network, and
memory stays bounded by the cap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from control.errors import Invalid, TooLarge

NS = "urn:oasis:names:tc:emergency:cap:1.2"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
DEFAULT_MAX_BYTES = 1024 * 1024

STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")


class CapError(Invalid):
    """The message is not an acceptable CAP 1.2 alert (the code says which way)."""


Key = tuple[str, str, str]  # (sender, identifier, sent as UTC ISO)


@dataclass(frozen=True)
class Resource:
    description: str
    mime_type: str
    uri: str | None = None
    size: int | None = None
    digest: str | None = None  # SHA-1, hex


@dataclass(frozen=True)
class Area:
    description: str
    polygons: tuple[tuple[tuple[float, float], ...], ...] = ()  # rings of (lat, lon)
    circles: tuple[tuple[float, float, float], ...] = ()  # (lat, lon, radius km)
    geocodes: tuple[tuple[str, str], ...] = ()  # (valueName, value)


@dataclass(frozen=True)
class Info:
    language: str
    event: str
    urgency: str
    severity: str
    certainty: str
    headline: str = ""
    description: str = ""
    instruction: str = ""
    sender_name: str = ""
    effective: datetime | None = None
    onset: datetime | None = None
    expires: datetime | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    resources: tuple[Resource, ...] = ()
    areas: tuple[Area, ...] = ()

    def parameter(self, name: str) -> str | None:
        for k, v in self.parameters:
            if k == name:
                return v
        return None


@dataclass(frozen=True)
class CapAlert:
    identifier: str
    sender: str
    sent: datetime
    status: str
    msg_type: str
    scope: str
    references: tuple[Key, ...] = ()
    infos: tuple[Info, ...] = ()
    signed: bool = False  # carries an enveloped ds:Signature (checked elsewhere)
    note: str = ""
    sources: tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> Key:
        return (self.sender, self.identifier, utc_key(self.sent))

    @property
    def expires(self) -> datetime | None:
        """The latest expiry of its info blocks (None: no block says)."""
        ex = [i.expires for i in self.infos if i.expires is not None]
        return max(ex) if ex else None


def utc_key(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# CAP dateTime: 2025-11-26T08:00:00+07:00 (a zone is required; -00:00 means UTC)
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$")


def parse_time(text: str, what: str) -> datetime:
    t = text.strip()
    if not _TIME.match(t):
        raise CapError("invalid_cap", f"{what}: {t[:40]!r} is not a CAP date-time with a time zone")
    try:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise CapError("invalid_cap", f"{what}: {t[:40]!r} is not a valid date-time") from None


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _text(el: Element, tag: str, required: str | None = None, limit: int = 20_000) -> str:
    child = el.find(_q(tag))
    value = (child.text or "").strip() if child is not None else ""
    if not value and required:
        raise CapError("invalid_cap", f"{required}: <{tag}> is required")
    return value[:limit]


def _choice(el: Element, tag: str, allowed: tuple[str, ...], where: str) -> str:
    v = _text(el, tag, where)
    if v not in allowed:
        raise CapError("invalid_cap", f"{where}: <{tag}> {v[:40]!r} is not one of {', '.join(allowed)}")
    return v


def parse_references(text: str) -> tuple[Key, ...]:
    out: list[Key] = []
    for triple in text.split():
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            raise CapError("invalid_cap", f"references: {triple[:80]!r} is not sender,identifier,sent")
        out.append((parts[0], parts[1], utc_key(parse_time(parts[2], "references"))))
    return tuple(out)


def _point(pair: str, where: str) -> tuple[float, float]:
    try:
        lat_s, lon_s = pair.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise CapError("invalid_cap", f"{where}: {pair[:40]!r} is not lat,lon") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise CapError("invalid_cap", f"{where}: {pair[:40]!r} is outside the globe")
    return lat, lon


def parse_polygon(text: str) -> tuple[tuple[float, float], ...]:
    pts = tuple(_point(p, "polygon") for p in text.split())
    if len(pts) < 4 or pts[0] != pts[-1]:
        raise CapError("invalid_cap", "polygon: at least 4 lat,lon pairs, the first equal to the last")
    return pts


def parse_circle(text: str) -> tuple[float, float, float]:
    try:
        centre, radius_s = text.split()
        radius = float(radius_s)
    except ValueError:
        raise CapError("invalid_cap", f"circle: {text[:60]!r} is not 'lat,lon radius'") from None
    if not 0 <= radius <= 20_000:
        raise CapError("invalid_cap", f"circle: radius {radius} km is out of range")
    lat, lon = _point(centre, "circle")
    return lat, lon, radius


def _area(el: Element, where: str) -> Area:
    polys = tuple(parse_polygon(p.text or "") for p in el.findall(_q("polygon")))
    circles = tuple(parse_circle(c.text or "") for c in el.findall(_q("circle")))
    codes = []
    for g in el.findall(_q("geocode")):
        name, value = _text(g, "valueName", f"{where} geocode"), _text(g, "value", f"{where} geocode")
        codes.append((name, value))
    return Area(_text(el, "areaDesc", where, 2000), polys, circles, tuple(codes))


def _info(el: Element, n: int) -> Info:
    where = f"info {n}"
    params = tuple((_text(p, "valueName", f"{where} parameter"), _text(p, "value", None, 2000))
                   for p in el.findall(_q("parameter")))
    resources = []
    for r in el.findall(_q("resource")):
        size_s = _text(r, "size")
        try:
            size = int(size_s) if size_s else None
        except ValueError:
            raise CapError("invalid_cap", f"{where} resource: size {size_s[:20]!r} is not a number") from None
        digest = _text(r, "digest").lower() or None
        if digest is not None and not re.fullmatch(r"[0-9a-f]{40}", digest):
            raise CapError("invalid_cap", f"{where} resource: digest is not a SHA-1 hex value")
        resources.append(Resource(_text(r, "resourceDesc", f"{where} resource", 500),
                                  _text(r, "mimeType", f"{where} resource", 200),
                                  _text(r, "uri", None, 2000) or None, size, digest))
    if not el.findall(_q("category")):
        raise CapError("invalid_cap", f"{where}: <category> is required")

    def when(tag: str) -> datetime | None:
        v = _text(el, tag)
        return parse_time(v, f"{where} {tag}") if v else None

    return Info(
        language=_text(el, "language") or "en-US",
        event=_text(el, "event", where, 500),
        urgency=_choice(el, "urgency", URGENCIES, where),
        severity=_choice(el, "severity", SEVERITIES, where),
        certainty=_choice(el, "certainty", CERTAINTIES, where),
        headline=_text(el, "headline", None, 500), description=_text(el, "description"),
        instruction=_text(el, "instruction"), sender_name=_text(el, "senderName", None, 500),
        effective=when("effective"), onset=when("onset"), expires=when("expires"),
        parameters=params, resources=tuple(resources),
        areas=tuple(_area(a, f"{where} area") for a in el.findall(_q("area"))))


def parse(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> CapAlert:
    """A CAP 1.2 alert from its XML bytes (CapError / TooLarge otherwise)."""
    if len(data) > max_bytes:
        raise TooLarge("alert_too_large", f"the message is {len(data)} bytes; the limit is {max_bytes}")
    if not data.strip():
        raise CapError("invalid_xml", "the message is empty")
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise CapError("forbidden_xml", f"DTDs, entities and external references are refused "
                       f"({type(e).__name__})") from None
    except ParseError as e:
        raise CapError("invalid_xml", f"not well-formed XML: {e}") from None
    except (ValueError, UnicodeError) as e:
        raise CapError("invalid_xml", f"not readable XML: {e}") from None
    if root.tag != _q("alert"):
        raise CapError("wrong_namespace",
                       f"the root element is {root.tag[:120]!r}; expected <alert> in {NS}")
    status = _choice(root, "status", STATUSES, "alert")
    msg_type = _choice(root, "msgType", MSG_TYPES, "alert")
    refs_text = _text(root, "references", None, 100_000)
    refs = parse_references(refs_text) if refs_text else ()
    if msg_type in ("Update", "Cancel") and not refs:
        raise CapError("invalid_cap", f"a {msg_type} must name the alerts it changes in <references>")
    infos = tuple(_info(el, n) for n, el in enumerate(root.findall(_q("info")), start=1))
    identifier, sender = _text(root, "identifier", "alert", 500), _text(root, "sender", "alert", 500)
    for name, v in (("identifier", identifier), ("sender", sender)):
        if re.search(r"[\s,<&]", v):
            raise CapError("invalid_cap", f"alert: <{name}> may not contain spaces, commas, < or &")
    return CapAlert(
        identifier=identifier, sender=sender, sent=parse_time(_text(root, "sent", "alert"), "sent"),
        status=status, msg_type=msg_type, scope=_choice(root, "scope", SCOPES, "alert"),
        references=refs, infos=infos,
        signed=root.find(f"{{{DSIG_NS}}}Signature") is not None,
        note=_text(root, "note", None, 2000),
        sources=tuple(s for s in (_text(root, "source", None, 500),) if s))
