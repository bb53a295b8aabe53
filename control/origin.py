"""Browser-borne requests that act with ambient credentials: the local bootstrap mode (any
request from this machine acts as admin) and the session cookie.

Found (issue 13): in bootstrap mode a page on another loopback address (127.0.0.2, or another
port) could `fetch` an emergency onto every zone, and any `Host` header was answered, so DNS
rebinding worked too. The rules, sans-IO (the caller passes the request's parts):

- bootstrap mode answers only the `Host` it serves: a loopback name or address with the port
  the request came in on (a rebinding attacker's name is refused, reads too);
- a write (any method but GET/HEAD/OPTIONS) that carries an `Origin` must come from the same
  origin (`http(s)://` + that Host); no `Origin` (curl, the CLI) is fine;
- in bootstrap mode a write's body must be JSON (or a multipart upload / CSV, which the
  `Origin` rule covers): the form and text/plain bodies a page can send cross-origin without a
  CORS preflight are refused.

Bearer tokens are not ambient (a page cannot make the browser send one), so they skip this.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping

READ_METHODS = ("GET", "HEAD", "OPTIONS")
BODY_TYPES = ("application/json", "multipart/form-data", "text/csv")


def _split_host(host: str) -> tuple[str, int | None] | None:
    host = host.strip()
    if not host:
        return None
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    else:
        name, sep, port_s = host.rpartition(":")
        if not sep:
            name, port_s = host, ""
    if port_s is None:
        return None
    if port_s == "":
        return name.lower(), None
    if not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5:
        return None
    return name.lower(), int(port_s)


def loopback_name(name: str) -> bool:
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_problem(host: str | None, served_port: int | None) -> str | None:
    """Why `Host` is not the one this loopback server serves (None: it is)."""
    parts = _split_host(host or "")
    if parts is None:
        return "the Host header is missing or malformed"
    name, port = parts
    if not loopback_name(name):
        return f"the Host {name!r} is not this server (local bootstrap mode answers loopback only)"
    if served_port is not None and (port or 80) != served_port:
        return "the Host names another port than the one this server listens on"
    return None


def origin_problem(method: str, headers: Mapping[str, str]) -> str | None:
    """A write from another origin (None: same origin, or no Origin at all)."""
    if method.upper() in READ_METHODS:
        return None
    origin = headers.get("Origin")
    if origin is None:
        return None
    host = (headers.get("Host") or "").strip().lower()
    if host and origin.strip().lower() in (f"http://{host}", f"https://{host}"):
        return None
    return "a write from another origin is refused (the page must be served by this server)"


def body_problem(method: str, content_type: str, has_body: bool) -> str | None:
    """A write whose body a page could send cross-origin without a preflight."""
    if method.upper() in READ_METHODS or not has_body:
        return None
    if content_type.lower() in BODY_TYPES:
        return None
    return "send the body as JSON (Content-Type: application/json)"


def bootstrap_problem(method: str, headers: Mapping[str, str], content_type: str,
                      has_body: bool, served_port: int | None) -> str | None:
    return (host_problem(headers.get("Host"), served_port) or origin_problem(method, headers)
            or body_problem(method, content_type, has_body))
