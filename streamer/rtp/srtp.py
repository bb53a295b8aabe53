"""SRTP for Loa's one-sequence-space media, protected once per program packet (pylibsrtp).

The problem: every program packet of a tick carries the same SSRC, sequence number and
timestamp. SRTP's AES-CTR keystream is a function of (session key, SSRC, packet index), so two
programs protected under one master key in the same tick would be XORed with the same keystream
(a two-time pad: the XOR of two ciphertexts is the XOR of two Opus payloads).

The scheme: one random *node media key* K (with a 1-byte key id) is handed to every registered
receiver, sealed to its secret (see control_protocol.seal). The SRTP master key+salt of a packet
is HKDF(K, kid | slot | era):

- slot: the packet's rank among the packets protected with this sequence number (the first
  program of a tick is slot 0, the next slot 1, ...). Distinct programs of one tick therefore
  never share a key; no engine bookkeeping is needed, `protect` just counts.
- era: the sender's extended sequence number >> 14. A slot's SRTP session lives for one era
  (16384 packets, 5.5 min), so no session ever sees its sequence numbers wrap: a receiver
  joining mid-era estimates the same packet index as the sender (libsrtp's rollover guess is
  only ambiguous across a wrap), and a key is never used for two packets with the same index.

The 7-byte trailer `kid (1) | slot (2) | era (4)` after the SRTP tag tells the receiver which key
to derive (it plays the role of RFC 3711's MKI; tampering with it only selects a wrong key,
which fails authentication). Cost on the sender: one `srtp_protect` per program packet (plus one
HKDF per slot every 5.5 minutes), whatever the number of receivers or zones.

Rotation (`MediaKeyring`): a new key is announced to receivers (in every welcome) for
`activation_delay_s` before the sender switches to it, and the previous key stays acceptable for
`grace_s` after. `rotate()` on a schedule and whenever a receiver is retired: a retired receiver
never learns the new key.
"""
from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

import pylibsrtp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from streamer.rtp.packet import seq_diff

TRAILER = struct.Struct("!BHI")
TRAILER_SIZE = TRAILER.size          # 7
ERA_BITS = 14
_PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
_MASTER_LEN = 30                     # 16-byte key + 14-byte salt
_MAX_RX_SESSIONS = 64


class MediaAuthError(ValueError):
    """A media packet that did not authenticate (or cannot be placed)."""


def derive_master(key: bytes, kid: int, slot: int, era: int) -> bytes:
    info = b"loa-srtp-v1" + TRAILER.pack(kid, slot, era & 0xFFFFFFFF)
    return HKDF(hashes.SHA256(), _MASTER_LEN, salt=None, info=info).derive(key)


@dataclass(frozen=True, slots=True)
class MediaKey:
    kid: int
    key: bytes
    created: float
    active_from: float
    retire_after: float | None = None    # stop accepting at this time (set when superseded)

    def public(self) -> dict:
        return {"kid": self.kid, "key": self.key.hex()}


class MediaKeyring:
    """The node media keys (sans-IO: times are parameters, seconds from one monotonic clock).

    `active` is read by the sender thread without a lock (a tuple swapped atomically)."""

    def __init__(self, now: float = 0.0, *, rotate_every_s: float = 6 * 3600.0,
                 activation_delay_s: float = 35.0, grace_s: float = 10.0) -> None:
        self.rotate_every_s = rotate_every_s
        self.activation_delay_s = activation_delay_s
        self.grace_s = grace_s
        self._lock = threading.Lock()
        k = MediaKey(os.urandom(1)[0], os.urandom(32), now, now)
        self._keys: list[MediaKey] = [k]     # previous (retiring), active, pending
        self.active: tuple[int, bytes] = (k.kid, k.key)
        self.rotations = 0

    def rotate(self, now: float, *, immediate: bool = False) -> MediaKey:
        """Announce a new key, active after `activation_delay_s` (or now)."""
        with self._lock:
            cur = self._current_locked()
            kid = (cur.kid + 1) & 0xFF
            new = MediaKey(kid, os.urandom(32), now, now if immediate else now +
                           self.activation_delay_s)
            # a key still pending is replaced, never left dangling
            self._keys = [k for k in self._keys if k.active_from <= now] + [new]
            self.rotations += 1
        self.advance(now)
        return new

    def _current_locked(self) -> MediaKey:
        return self._keys[-1]

    def advance(self, now: float) -> None:
        """Activate a due key, forget keys past their grace, rotate on schedule."""
        rotate = False
        with self._lock:
            live = [k for k in self._keys if k.active_from <= now]
            if live:
                act = live[-1]
                if self.active[0] != act.kid or self.active[1] != act.key:
                    self.active = (act.kid, act.key)
                keep = []
                for k in self._keys:
                    if k is not act and k.active_from <= now:
                        if k.retire_after is None:
                            k = MediaKey(k.kid, k.key, k.created, k.active_from, now + self.grace_s)
                        if k.retire_after <= now:
                            continue
                    keep.append(k)
                self._keys = keep
                rotate = (now - act.created >= self.rotate_every_s
                          and not any(k.active_from > now for k in self._keys))
        if rotate:
            self.rotate(now)

    def for_receivers(self) -> list[dict]:
        """Keys a receiver needs now: the retiring one (grace), the active one, a pending one."""
        with self._lock:
            return [k.public() for k in self._keys]


class MediaProtector:
    """Sender side: call `protect` once per program packet (in send order)."""

    def __init__(self, keyring: MediaKeyring) -> None:
        self.keyring = keyring
        self._last_seq: int | None = None
        self._ext = 0
        self._slot = -1
        self._sessions: dict[tuple[int, int, int], pylibsrtp.Session] = {}
        self._sess_key: bytes | None = None
        self._sess_era = -1
        self.protected = 0

    def protect(self, packet: bytes | bytearray | memoryview) -> bytes:
        seq = (packet[2] << 8) | packet[3]
        if seq != self._last_seq:
            if self._last_seq is None:
                self._ext = seq
            else:
                self._ext += seq_diff(seq, self._last_seq)
            self._last_seq = seq
            self._slot = 0
        else:
            self._slot += 1
        era = (self._ext >> ERA_BITS) & 0xFFFFFFFF
        kid, key = self.keyring.active
        if key is not self._sess_key or era != self._sess_era:
            self._sessions.clear()            # a new era or key: old sessions never return
            self._sess_key, self._sess_era = key, era
        k = (kid, self._slot, era)
        s = self._sessions.get(k)
        if s is None:
            s = self._sessions[k] = pylibsrtp.Session(pylibsrtp.Policy(
                key=derive_master(key, kid, self._slot, era),
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=_PROFILE))
        self.protected += 1
        return s.protect(bytes(packet)) + TRAILER.pack(kid, self._slot, era)


class MediaUnprotector:
    """Receiver side. `unprotect` returns the plain RTP packet or raises MediaAuthError."""

    def __init__(self) -> None:
        self._keys: dict[int, bytes] = {}
        self._sessions: OrderedDict[tuple[int, int, int, bytes], pylibsrtp.Session] = OrderedDict()
        self.max_era: int | None = None
        self.failed = 0

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    def set_keys(self, keys: list[dict] | list[tuple[int, bytes]]) -> None:
        new: dict[int, bytes] = {}
        for k in keys:
            kid, key = (k["kid"], bytes.fromhex(k["key"])) if isinstance(k, dict) else k
            if not 0 <= int(kid) <= 255 or len(key) != 32:
                raise ValueError("bad media key")
            new[int(kid)] = key
        self._keys = new
        for sk in [sk for sk in self._sessions if self._keys.get(sk[0]) != sk[3]]:
            del self._sessions[sk]

    def unprotect(self, data: bytes) -> bytes:
        try:
            if len(data) < 12 + 10 + TRAILER_SIZE or not 0x80 <= data[0] < 0xC0:
                raise MediaAuthError("not an SRTP packet")
            kid, slot, era = TRAILER.unpack_from(data, len(data) - TRAILER_SIZE)
            key = self._keys.get(kid)
            if key is None:
                raise MediaAuthError("unknown media key id")
            if self.max_era is not None and era < self.max_era - 1:
                raise MediaAuthError("packet from an old era (replay?)")
            sk = (kid, slot, era, key)
            s = self._sessions.get(sk)
            if s is None:
                s = pylibsrtp.Session(pylibsrtp.Policy(
                    key=derive_master(key, kid, slot, era),
                    ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=_PROFILE))
                self._sessions[sk] = s
                while len(self._sessions) > _MAX_RX_SESSIONS:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(sk)
            try:
                plain = s.unprotect(data[:-TRAILER_SIZE])
            except pylibsrtp.Error as exc:
                raise MediaAuthError(f"SRTP: {exc}") from None
        except MediaAuthError:
            self.failed += 1
            raise
        if self.max_era is None or era > self.max_era:
            self.max_era = era
            for old in [x for x in self._sessions if x[2] < era - 1]:
                del self._sessions[old]
        return plain


class ProtectedFanout:
    """A Fanout whose `send` protects the packet first: one protect per program packet, then
    the same bytes to every receiver. Drop-in for the engine (`Engine(tree, ProtectedFanout(...))`);
    everything else is delegated to the wrapped Fanout."""

    def __init__(self, fanout, protector: MediaProtector) -> None:  # noqa: ANN001
        self._fanout = fanout
        self.protector = protector

    def send(self, packet, keys) -> int:  # noqa: ANN001
        return self._fanout.send(self.protector.protect(packet), keys)

    def __getattr__(self, name: str):
        return getattr(self._fanout, name)
