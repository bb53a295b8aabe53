"""HTTP for relays, resolved once: the address that was checked is the address connected to.

A relay URL names a host. Checking the host's addresses and then letting FFmpeg resolve the
name again would leave a gap (DNS rebinding: a name that answers a public address to the check
and 169.254.169.254 or 10.x to the connect). So FFmpeg never resolves or connects here: the
relay opens its URL with PyAV's `io_open` hook, which FFmpeg calls for *every* resource it reads
(the stream itself, an HLS playlist, each of its segments and reloads, a key), and the opener
below

- refuses anything but http(s) (a playlist pointing at file:///etc/passwd or a private host),
- resolves the host once per relay session (`getaddrinfo`), checks every address it answered
  with `AddressPolicy` (public, or allowed by the `relay_allow_hosts` setting) and keeps the
  first: later requests to that host in the session (segments, reloads) go to the same address,
- connects to that address itself (urllib3, with the name in the Host header, TLS SNI and
  certificate check), follows redirects by checking each new location the same way,
- hands FFmpeg a file-like object whose `read` returns what has arrived (a live stream trickles:
  waiting for FFmpeg's whole 32 KB buffer would hold audio back for seconds).

`AddressPolicy` is pure (addresses in, decision out); control/playout.py uses it for the early
4xx check of an API request, this module for the check that counts.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

from streamer.ingest.base import MediaError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: (host, port) -> the addresses the name resolves to, in the resolver's order
Resolver = Callable[[str, int], Sequence[str]]

MAX_REDIRECTS = 5
USER_AGENT = "Loa relay"


class BlockedAddress(MediaError):
    """The URL's host is (or resolves to) an address a relay may not reach."""


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (blocking)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise MediaError(f"cannot resolve the relay host {host!r} ({e})") from None
    out: list[str] = []
    for info in infos:
        a = str(info[4][0]).split("%")[0]
        if a not in out:
            out.append(a)
    return out


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str      # path and query, as sent in the request line


def split_url(url: str) -> Target:
    """The parts of an http(s) URL a request needs; MediaError for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise MediaError(f"not a URL: {url[:200]!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise MediaError("a relay URL must be http:// or https:// with a host")
    if any(c in url for c in "\r\n\t ") or any(ord(c) < 32 for c in url):
        raise MediaError("a relay URL may not contain spaces or control characters")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


class AddressPolicy:
    """Which addresses a relay may connect to: global unicast ones, and whatever the allow list
    names (host names, addresses or CIDR networks; loopback for tests, a provincial station
    on a private network)."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for a in allow:
            a = a.strip().lower()
            if not a:
                continue
            try:
                self.networks.append(ipaddress.ip_network(a, strict=False))
            except ValueError:
                self.names.add(a.rstrip("."))

    def name_allowed(self, host: str) -> bool:
        """The host itself is on the allow list (by name or as a literal address)."""
        h = host.lower().rstrip(".")
        if h in self.names:
            return True
        try:
            ip = ipaddress.ip_address(h.strip("[]"))
        except ValueError:
            return False
        return any(ip in n for n in self.networks)

    def address_allowed(self, host: str, address: str) -> bool:
        if self.name_allowed(host):
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if any(ip in n for n in self.networks):
            return True
        return ip.is_global and not ip.is_multicast

    def choose(self, host: str, addresses: Sequence[str]) -> str:
        """The address to connect to: the first one, after every one is checked (a name that
        answers one private address among public ones is refused whole). BlockedAddress or
        MediaError (nothing resolved) otherwise."""
        if not addresses:
            raise MediaError(f"the relay host {host!r} has no address")
        for a in addresses:
            if not self.address_allowed(host, a):
                raise BlockedAddress(
                    f"the relay host {host!r} is a private or local address ({a}); add it "
                    "to the relay_allow_hosts setting to allow it")
        return addresses[0]


class _Body:
    """What FFmpeg reads: the response body as it arrives (read1), closed with the connection."""

    def __init__(self, response: Any, on_bytes: Callable[[int], None] | None) -> None:
        self._r = response
        self._on = on_bytes

    def read(self, n: int) -> bytes:
        b: bytes = self._r.read1(n)
        if self._on is not None and b:
            self._on(len(b))
        return b

    def close(self) -> None:
        # closed first: a body FFmpeg left unread must not go back to the pool with its rest
        # still on the connection (the next segment would read it); a body read to its end
        # has given its connection back already (kept alive for the next segment)
        try:
            self._r.close()
        finally:
            self._r.release_conn()


class _Empty:
    """What FFmpeg reads for a resource that could not be had."""

    def read(self, n: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


class PinnedOpener:
    """One relay session's opener (PyAV's `io_open`): every URL FFmpeg asks for is checked and
    fetched from the address resolved and checked once for its host in this session."""

    def __init__(self, policy: AddressPolicy, *, resolver: Resolver = system_resolver,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 5.0,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.policy = policy
        self.resolver = resolver
        self.timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        self.on_bytes = on_bytes
        self._pinned: dict[tuple[str, int], str] = {}
        self._pools: dict[tuple[str, str, int], urllib3.HTTPConnectionPool] = {}
        #: (url, address) of every request made, in order (tests, status)
        self.requests: list[tuple[str, str]] = []
        self.failures = 0
        self.blocked = 0
        self.last_error: str | None = None

    def address(self, host: str, port: int) -> str:
        """The checked address for a host, resolved on first use in this session."""
        key = (host.lower(), port)
        hit = self._pinned.get(key)
        if hit is not None:
            return hit
        literal = host.strip("[]")
        try:
            ipaddress.ip_address(literal)
            addresses: Sequence[str] = [literal]
        except ValueError:
            addresses = self.resolver(host, port)
        chosen = self.policy.choose(host, list(addresses))
        self._pinned[key] = chosen
        return chosen

    def _pool(self, t: Target, address: str) -> urllib3.HTTPConnectionPool:
        key = (t.scheme, t.host.lower(), t.port)
        pool = self._pools.get(key)
        if pool is None:
            if t.scheme == "https":
                pool = urllib3.HTTPSConnectionPool(
                    address, t.port, timeout=self.timeout, retries=False, maxsize=2,
                    server_hostname=t.host, assert_hostname=t.host, cert_reqs="CERT_REQUIRED")
            else:
                pool = urllib3.HTTPConnectionPool(address, t.port, timeout=self.timeout,
                                                  retries=False, maxsize=2)
            self._pools[key] = pool
        return pool

    def open(self, url: str) -> _Body:
        """GET `url` (redirects followed and checked); the body as a file-like object.
        MediaError / OSError / urllib3 errors when it cannot be had."""
        for _ in range(MAX_REDIRECTS + 1):
            t = split_url(url)
            address = self.address(t.host, t.port)
            default = 443 if t.scheme == "https" else 80
            host_header = t.host if ":" not in t.host else f"[{t.host}]"
            if t.port != default:
                host_header += f":{t.port}"
            self.requests.append((url, address))
            r = self._pool(t, address).urlopen(
                "GET", t.path, headers={"Host": host_header, "User-Agent": USER_AGENT,
                                        "Accept": "*/*"},
                redirect=False, preload_content=False, decode_content=False)
            if r.status in (301, 302, 303, 307, 308) and r.headers.get("Location"):
                location = str(r.headers["Location"])
                r.drain_conn()
                r.release_conn()
                url = urljoin(url, location)
                continue
            if r.status != 200:
                r.drain_conn()
                r.release_conn()
                raise MediaError(f"the upstream answered {r.status} {r.reason or ''}".strip())
            return _Body(r, self.on_bytes)
        raise MediaError(f"more than {MAX_REDIRECTS} redirects")

    def io_open(self, url: str, flags: int, options: dict[str, Any]) -> _Body | _Empty:
        """PyAV's hook: read-only opens only. A resource that cannot be had (refused, 503,
        unreachable) reads as empty, its reason kept in `last_error`: an exception raised here
        would be stashed by PyAV and surface at some later, unrelated call (an HLS segment
        that fails is skipped by FFmpeg, a failed playlist ends the session)."""
        try:
            if flags & 2:   # AVIO_FLAG_WRITE
                raise MediaError("a relay only reads")
            return self.open(url)
        except BlockedAddress as e:
            self.blocked += 1
            self.last_error = str(e)
        except (MediaError, OSError, urllib3.exceptions.HTTPError) as e:
            self.last_error = str(e) or type(e).__name__
        self.failures += 1
        return _Empty()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
