"""The media path origin → edge: RTP programme frames in a small authenticated envelope (sans-IO).

One envelope per tick per edge (split in parts when it would pass `MAX_DATAGRAM`) carries the
origin's stream continuity — tick index `k`, sequence number, timestamp and SSRC of that tick,
which the origin's RtpOutput gave every programme packet — and, per programme, its Opus payload
and the edge's zones hearing it, each with its marker bit (a talk spurt starts there). The edge
rebuilds exactly the packets the origin would have sent (same SSRC, sequence, timestamp, marker),
so a receiver that moves from one edge to another, or from the origin to an edge, sees one
continuous RTP stream. Packets to receivers are built and protected by the edge (its own SRTP
keyring); static destinations get plain RTP as on a single node.

Subscriptions go the other way: every second, and at once when its set changes, an edge sends
the zones it needs (`pack_subscription`) from the socket it receives envelopes on; the origin
sends to the address the subscription came from (NAT-friendly) until it expires. Redis is not on
this path: a Redis stall or restart changes nothing here.

Both kinds end with HMAC-SHA256 (truncated to 16 bytes) under the cluster key (stdlib `hmac`:
one call per datagram, no state; `cryptography` would add nothing here) and carry the sender's
wall clock: datagrams older than `MAX_AGE_S` or from further than that in the future are
refused, so a captured envelope or subscription cannot be replayed later.

A tick envelope also carries the sender's fencing token (`streamer.cluster.lease`): an edge
plays media only from the newest token it has seen, from envelopes or commands, so an origin
that was paused past its lease and wakes up still sending is refused by the edges, as its
commands are (version 2; version 1 had no token).

    envelope := "LOAE" ver:u8 flags:u8 part:u8 0:u8 wall_ms:u64 fence:u64 k:u64 seq:u16 ts:u32
                ssrc:u32 n:u16 { nz:u16 { marker:u8 len:u8 zone } plen:u16 payload }*n  mac:16
    subscription := "LOAS" ver:u8 0:u8 nlen:u8 node wall_ms:u64 nz:u16 { len:u8 zone }* mac:16
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["EnvelopeError", "TickEnvelope", "Programme", "pack_tick", "unpack_tick",
           "TickReader", "Subscription", "pack_subscription", "unpack_subscription", "MAX_DATAGRAM",
           "MAX_AGE_S"]

MAGIC_TICK = b"LOAE"
MAGIC_SUB = b"LOAS"
VERSION = 1              # subscriptions
TICK_VERSION = 2         # tick envelopes (2: with the fencing token)
MAC_LEN = 16
MAX_DATAGRAM = 1400
MAX_AGE_S = 5.0
LAST = 0x01
_HEAD = struct.Struct("!4sBBBxQQQHIIH")   # magic ver flags part wall_ms fence k seq ts ssrc n
_U16 = struct.Struct("!H")
_SUB_HEAD = struct.Struct("!4sBxB")


class EnvelopeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Programme:
    """One programme this tick: its Opus payload and the zones hearing it (with marker bits)."""
    payload: bytes
    zones: tuple[str, ...]         # zones continuing their talk spurt
    marked: tuple[str, ...] = ()   # zones whose talk spurt starts (marker bit)

    def all_zones(self) -> tuple[str, ...]:
        return self.zones + self.marked


@dataclass(frozen=True, slots=True)
class TickEnvelope:
    k: int
    seq: int
    ts: int
    ssrc: int
    wall_ms: int
    programmes: tuple[Programme, ...]
    part: int = 0
    last: bool = True
    fence: int = 0     # the sending origin's fencing token


def _mac(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def _zone_bytes(z: str) -> bytes:
    b = z.encode()
    if not 0 < len(b) < 256:
        raise EnvelopeError(f"zone id too long for the envelope: {z!r}")
    return b


def _programme_bytes(payload: bytes, zones: Sequence[tuple[bytes, bool]]) -> bytes:
    out = [struct.pack("!H", len(zones))]
    for zb, marked in zones:
        out.append(struct.pack("!BB", 1 if marked else 0, len(zb)) + zb)
    out.append(struct.pack("!H", len(payload)) + payload)
    return b"".join(out)


def pack_tick(key: bytes, k: int, seq: int, ts: int, ssrc: int, wall_ms: int,
              programmes: Iterable[Programme], max_size: int = MAX_DATAGRAM, *,
              fence: int = 0) -> list[bytes]:
    """The datagrams of one tick for one edge: as few as fit `max_size` (a programme whose zone
    list alone is too long is split into entries with the same payload)."""
    room = max_size - _HEAD.size - MAC_LEN
    entries: list[bytes] = []
    for p in programmes:
        zs = [(_zone_bytes(z), False) for z in p.zones] + [(_zone_bytes(z), True)
                                                          for z in p.marked]
        fixed = 4 + len(p.payload)
        if fixed + 2 + 255 > room:
            raise EnvelopeError("payload too large for one envelope")
        chunk: list[tuple[bytes, bool]] = []
        size = fixed
        for zb, m in zs:
            if chunk and size + 2 + len(zb) > room:
                entries.append(_programme_bytes(p.payload, chunk))
                chunk, size = [], fixed
            chunk.append((zb, m))
            size += 2 + len(zb)
        if chunk:
            entries.append(_programme_bytes(p.payload, chunk))
    parts: list[list[bytes]] = [[]]
    size = 0
    for e in entries:
        if parts[-1] and size + len(e) > room:
            parts.append([])
            size = 0
        parts[-1].append(e)
        size += len(e)
    out = []
    for i, body in enumerate(parts):
        flags = LAST if i == len(parts) - 1 else 0
        head = _HEAD.pack(MAGIC_TICK, TICK_VERSION, flags, i & 0xFF, wall_ms, fence, k,
                          seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF, len(body))
        data = head + b"".join(body)
        out.append(data + _mac(key, data))
    return out


def _check(key: bytes, data: bytes, magic: bytes, wall_now: float, min_len: int) -> memoryview:
    if len(data) < min_len + MAC_LEN or data[:4] != magic:
        raise EnvelopeError("not an envelope")
    body = memoryview(data)[:-MAC_LEN]
    if not hmac.compare_digest(_mac(key, body), data[-MAC_LEN:]):
        raise EnvelopeError("bad MAC")
    return body


def unpack_tick(key: bytes, data: bytes, wall_now: float) -> TickEnvelope:
    """One tick envelope, checked (MAC, version, age, structure) and decoded whole (raises
    EnvelopeError). The edge keeps a `TickReader` instead, which decodes only what changed."""
    r = TickReader(key)
    r.read(data, wall_now)
    return r.envelope()


Entry = tuple[tuple[str, ...], tuple[str, ...]]    # (zones continuing, zones starting a spurt)


class TickReader:
    """An edge's reader of tick envelopes: the checks of `unpack_tick` (MAC, version, age,
    structure) without decoding what repeats from one tick to the next.

    Each programme's zone list is compared, as bytes, with the previous envelope's and decoded
    only when it changed, so a steady stream costs a MAC, a header and one comparison per
    programme. `entries` ((zones, marked) per programme) stays the same object while the zone
    lists hold, so callers can key what they derive from it on its identity; `spans` gives
    each programme's payload as (offset, length) in the datagram last read (not copied).
    Sans-IO: fed the datagram and the wall clock."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.k = self.seq = self.ts = self.ssrc = self.wall_ms = self.fence = self.part = 0
        self.last = True
        self.entries: tuple[Entry, ...] = ()
        self.spans: list[tuple[int, int]] = []
        self.decoded = 0                 # envelopes whose zone lists had to be decoded
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)   # copied per datagram: the
        self._zone_bytes: list[bytes] = []                      # key is not hashed again
        self._data: bytes | bytearray | memoryview = b""

    def read(self, data: bytes | bytearray | memoryview, wall_now: float) -> None:
        """Reads one datagram (raises EnvelopeError as `unpack_tick` does); the attributes
        then describe it, until the next call."""
        n_all = len(data)
        if n_all < _HEAD.size + MAC_LEN or data[:4] != MAGIC_TICK:
            raise EnvelopeError("not an envelope")
        end = n_all - MAC_LEN
        h = self._keyed.copy()
        h.update(data[:end])
        if not hmac.compare_digest(h.digest()[:MAC_LEN], data[end:]):
            raise EnvelopeError("bad MAC")
        try:
            _m, ver, flags, part, wall_ms, fence, k, seq, ts, ssrc, n = _HEAD.unpack_from(data)
            if ver != TICK_VERSION:
                raise EnvelopeError(f"envelope version {ver}")
            if abs(wall_now - wall_ms / 1000.0) > MAX_AGE_S:
                raise EnvelopeError("stale or future envelope")
            known = self._zone_bytes
            same = len(known) == n
            spans = self.spans
            if not same:
                spans = self.spans = [(0, 0)] * n
            off = _HEAD.size
            u16 = _U16.unpack_from
            for i in range(n):
                start = off
                (nz,) = u16(data, off)
                off += 2
                for _ in range(nz):
                    off += 2 + data[off + 1]
                if same and data[start:off] != known[i]:
                    same = False
                    # forgotten together: a datagram refused further on leaves nothing that
                    # the next one could match against stale entries
                    self.entries, self._zone_bytes = (), []
                (plen,) = u16(data, off)
                off += 2
                if off + plen > end:
                    raise EnvelopeError("truncated payload")
                spans[i] = (off, plen)
                off += plen
            if off != end:
                raise EnvelopeError("trailing bytes")
            if not same:
                self._decode(data, n)
        except (struct.error, IndexError) as e:
            raise EnvelopeError(f"malformed envelope: {e}") from None
        self.k, self.seq, self.ts, self.ssrc, self.wall_ms = k, seq, ts, ssrc, wall_ms
        self.fence, self.part, self.last = fence, part, bool(flags & LAST)
        self._data = data

    def _decode(self, data: bytes | bytearray | memoryview, n: int) -> None:
        self.entries, self._zone_bytes = (), []
        entries: list[Entry] = []
        zone_bytes: list[bytes] = []
        off = _HEAD.size
        try:
            for i in range(n):
                start = off
                (nz,) = _U16.unpack_from(data, off)
                off += 2
                plain: list[str] = []
                marked: list[str] = []
                for _ in range(nz):
                    m, ln = data[off], data[off + 1]
                    off += 2
                    z = bytes(data[off:off + ln]).decode()
                    if len(z.encode()) != ln or not z:
                        raise EnvelopeError("truncated zone")
                    off += ln
                    (marked if m else plain).append(z)
                zone_bytes.append(bytes(data[start:off]))
                entries.append((tuple(plain), tuple(marked)))
                off = self.spans[i][0] + self.spans[i][1]
        except UnicodeDecodeError as e:
            raise EnvelopeError(f"malformed envelope: {e}") from None
        self.entries, self._zone_bytes = tuple(entries), zone_bytes
        self.decoded += 1

    def payload(self, i: int) -> bytes | bytearray | memoryview:
        """Programme `i`'s payload in the datagram last read (a view when it was one)."""
        off, ln = self.spans[i]
        return self._data[off:off + ln]

    def envelope(self) -> TickEnvelope:
        """The datagram last read as `unpack_tick` returns it."""
        progs = tuple(Programme(bytes(self.payload(i)), zs, ms)
                      for i, (zs, ms) in enumerate(self.entries))
        return TickEnvelope(self.k, self.seq, self.ts, self.ssrc, self.wall_ms, progs,
                            self.part, self.last, self.fence)


@dataclass(frozen=True, slots=True)
class Subscription:
    node: str
    wall_ms: int
    zones: frozenset[str]


def pack_subscription(key: bytes, node: str, wall_ms: int, zones: Iterable[str]) -> bytes:
    nb = node.encode()
    if not 0 < len(nb) < 256:
        raise EnvelopeError("node id length")
    zs = [_zone_bytes(z) for z in sorted(zones)]
    data = (_SUB_HEAD.pack(MAGIC_SUB, VERSION, len(nb)) + nb + struct.pack("!QH", wall_ms, len(zs))
            + b"".join(bytes([len(z)]) + z for z in zs))
    if len(data) + MAC_LEN > 65000:
        raise EnvelopeError("too many zones for one subscription")
    return data + _mac(key, data)


def unpack_subscription(key: bytes, data: bytes, wall_now: float) -> Subscription:
    body = _check(key, data, MAGIC_SUB, wall_now, _SUB_HEAD.size)
    try:
        _m, ver, nlen = _SUB_HEAD.unpack_from(body)
        if ver != VERSION:
            raise EnvelopeError(f"subscription version {ver}")
        off = _SUB_HEAD.size
        node = bytes(body[off:off + nlen]).decode()
        off += nlen
        wall_ms, nz = struct.unpack_from("!QH", body, off)
        off += 10
        if abs(wall_now - wall_ms / 1000.0) > MAX_AGE_S:
            raise EnvelopeError("stale or future subscription")
        zones = set()
        for _ in range(nz):
            ln = body[off]
            z = bytes(body[off + 1:off + 1 + ln]).decode()
            if len(z.encode()) != ln or not z:
                raise EnvelopeError("truncated zone")
            zones.add(z)
            off += 1 + ln
        if off != len(body) or not node:
            raise EnvelopeError("malformed subscription")
    except (struct.error, UnicodeDecodeError, IndexError) as e:
        raise EnvelopeError(f"malformed subscription: {e}") from None
    return Subscription(node, wall_ms, frozenset(zones))
