"""The receiver control protocol: register, heartbeat, report (receiver → server) and welcome,
now-playing (server → receiver). Sans-IO: bytes in, bytes out, time is a parameter.

Wire format (one UDP datagram, big-endian), sent to/from the server's media port so that a
receiver behind NAT opens the very mapping its media comes back through:

    magic  b"LOA" | version 1 (1) | type (1) | id length (1) | receiver id (UTF-8)
    timestamp (8, unix milliseconds) | nonce (16) | body length (2) | body (UTF-8 JSON object)
    mac (32) = HMAC-SHA256(receiver secret, every byte before it)

Both directions are signed with the receiver's own secret: the server proves it is the server
the receiver was provisioned for (a receiver ignores media and replies from anyone else), and a
receiver proves its id. The MAC covers message, timestamp and nonce; `ReplayGuard` drops
messages outside the ±window and repeated (or older than the newest accepted) ones.

Secrets inside a message (the media keys of the welcome) are sealed with AES-GCM under a key
derived from the receiver secret (`seal`/`unseal`), so only that receiver can read them.
"""
from __future__ import annotations

from typing import Any

import enum
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"LOA"
VERSION = 1
MAC_SIZE = 32
NONCE_SIZE = 16
MAX_ID = 64
MAX_BODY = 1200          # keeps every message inside one unfragmented datagram
MAX_DATAGRAM = 4 + 1 + MAX_ID + 8 + NONCE_SIZE + 2 + MAX_BODY + MAC_SIZE
_TS = struct.Struct("!Q")
_LEN = struct.Struct("!H")


class ProtocolError(ValueError):
    """A datagram that is not a well-formed control message (before any MAC check)."""


class MsgType(enum.IntEnum):
    REGISTER = 1
    HEARTBEAT = 2
    REPORT = 3
    BYE = 4
    WELCOME = 0x11      # reply to register/heartbeat: config + sealed media keys
    NOW = 0x12          # the zone's on-air broadcasts changed


RECEIVER_TYPES = frozenset({MsgType.REGISTER, MsgType.HEARTBEAT, MsgType.REPORT, MsgType.BYE})
SERVER_TYPES = frozenset({MsgType.WELCOME, MsgType.NOW})


@dataclass(slots=True)
class Message:
    type: MsgType
    receiver_id: str
    timestamp_ms: int
    nonce: bytes
    body: dict[str, Any] = field(default_factory=dict)
    signed: bytes = b""      # the bytes the MAC covers (set by parse)
    mac: bytes = b""

    def verify(self, secret: bytes) -> bool:
        want = hmac.new(secret, self.signed, hashlib.sha256).digest()
        return hmac.compare_digest(want, self.mac)


def looks_like_control(data: bytes | memoryview) -> bool:
    """Cheap first-byte test to tell control messages from RTP/RTCP on a shared socket
    (RTP/RTCP start with version 2: 0x80..0xBF; 'L' is 0x4C)."""
    return len(data) >= 4 and bytes(data[:3]) == MAGIC


def encode(type_: MsgType, receiver_id: str, secret: bytes, body: dict[str, Any] | None = None, *,
           timestamp_ms: int, nonce: bytes | None = None) -> bytes:
    rid = receiver_id.encode()
    if not 0 < len(rid) <= MAX_ID:
        raise ValueError(f"receiver id must be 1..{MAX_ID} bytes")
    raw = json.dumps(body or {}, separators=(",", ":"), ensure_ascii=False).encode()
    if len(raw) > MAX_BODY:
        raise ValueError(f"message body too large ({len(raw)} > {MAX_BODY} bytes)")
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 16 bytes")
    head = (MAGIC + bytes([VERSION, int(type_), len(rid)]) + rid + _TS.pack(timestamp_ms)
            + nonce + _LEN.pack(len(raw)) + raw)
    return head + hmac.new(secret, head, hashlib.sha256).digest()


def parse(data: bytes | bytearray | memoryview) -> Message:
    """Split a datagram into its fields; raises ProtocolError (only) on anything malformed.
    The MAC is *not* checked here (the secret depends on the id): call `Message.verify`."""
    data = bytes(data)
    n = len(data)
    if n > MAX_DATAGRAM:
        raise ProtocolError("datagram too large")
    if n < 6 or data[:3] != MAGIC:
        raise ProtocolError("not a Loa control message")
    if data[3] != VERSION:
        raise ProtocolError(f"unsupported version {data[3]}")
    try:
        type_ = MsgType(data[4])
    except ValueError:
        raise ProtocolError(f"unknown message type {data[4]}") from None
    idlen = data[5]
    pos = 6
    if not 0 < idlen <= MAX_ID:
        raise ProtocolError("bad receiver id length")
    if n < pos + idlen + 8 + NONCE_SIZE + 2 + MAC_SIZE:
        raise ProtocolError("truncated")
    try:
        rid = data[pos:pos + idlen].decode()
    except UnicodeDecodeError:
        raise ProtocolError("receiver id is not UTF-8") from None
    pos += idlen
    (ts,) = _TS.unpack_from(data, pos)
    pos += 8
    nonce = data[pos:pos + NONCE_SIZE]
    pos += NONCE_SIZE
    (blen,) = _LEN.unpack_from(data, pos)
    pos += 2
    if blen > MAX_BODY or pos + blen + MAC_SIZE != n:
        raise ProtocolError("body length does not match the datagram")
    raw = data[pos:pos + blen]
    try:
        body = json.loads(raw.decode()) if blen else {}
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("body is not JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("body is not a JSON object")
    pos += blen
    return Message(type_, rid, ts, nonce, body, data[:pos], data[pos:])


class ReplayGuard:
    """Per-sender freshness: timestamp within ±window of our clock, strictly newer than the last
    accepted one (so a captured message can never be accepted again, even after its nonce has
    left the cache), and a nonce not seen within the window."""

    def __init__(self, window_s: float = 30.0, not_before_ms: int | None = None) -> None:
        self.window_ms = int(window_s * 1000)
        # a guard that starts with nothing (a restarted server, a receiver that failed over)
        # would take any message captured within the window again: `not_before_ms` (its start)
        # refuses everything stamped before it, as a guard that had lived through them would
        self.last_ts: int | None = not_before_ms
        self._nonces: dict[bytes, int] = {}

    def check(self, ts_ms: int, nonce: bytes, now_ms: int) -> str | None:
        """None if fresh (and records it), else the reason it is not."""
        if abs(ts_ms - now_ms) > self.window_ms:
            return "stale"
        if nonce in self._nonces or (self.last_ts is not None and ts_ms <= self.last_ts):
            return "replay"
        if len(self._nonces) > 64:
            cutoff = now_ms - 2 * self.window_ms
            self._nonces = {k: v for k, v in self._nonces.items() if v > cutoff}
            if len(self._nonces) > 256:      # cannot happen with a strictly rising ts; bound it
                self._nonces.clear()
        self._nonces[nonce] = ts_ms
        self.last_ts = ts_ms
        return None


# -- sealing secrets to a receiver --------------------------------------------------------------

def _wrap_key(secret: bytes, receiver_id: str) -> bytes:
    return HKDF(hashes.SHA256(), 16, salt=b"loa-keywrap-v1", info=receiver_id.encode()).derive(secret)


def seal(secret: bytes, receiver_id: str, plaintext: bytes) -> str:
    nonce = os.urandom(12)
    ct = AESGCM(_wrap_key(secret, receiver_id)).encrypt(nonce, plaintext, receiver_id.encode())
    return (nonce + ct).hex()


def unseal(secret: bytes, receiver_id: str, sealed: str) -> bytes:
    """Raises ProtocolError if it was not sealed to this receiver."""
    try:
        raw = bytes.fromhex(sealed)
        return AESGCM(_wrap_key(secret, receiver_id)).decrypt(raw[:12], raw[12:],
                                                             receiver_id.encode())
    except Exception:
        raise ProtocolError("sealed field does not open with this receiver's secret") from None
