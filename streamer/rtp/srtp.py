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

Replay and rollover state is *per key* (restarts, failover):

- A key is never persisted: every `MediaKeyring` (every server start, clean or after `kill -9`)
  draws a new one, so a restarted server's sequence numbers starting again at a random value
  can never repeat a (key, slot, era, index) it used before, and a receiver that gets the new
  key in a welcome starts a fresh replay window *for that key*. Anyone who persists keys must
  persist `MediaKeyring.era_floor` with them (a protector never goes below it).
- Within one key's lifetime the sender's eras only go forward: protectors sharing a keyring
  start at or above the highest era any of them used (`era_floor`), and each takes its own
  *lane* (the high bits of the slot: 20/40/60 ms packets have separate sequence spaces but one
  SSRC and one key, so without lanes two of them would reuse a keystream).
- The receiver refuses, per key: eras older than its newest era - 1, and any packet index at
  or behind its per-slot replay window (the index is exact: era << 14 | seq & 0x3FFF, because
  eras are aligned to 16384 sequence numbers). Dropping old keys drops their state; a welcome
  that hands over a *different* key under a known key id resets that id's state.
"""
from __future__ import annotations

from typing import Any

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
_ERA_MASK = (1 << ERA_BITS) - 1
LANE_SHIFT = 13                      # slot = lane << 13 | rank within the sequence number
MAX_LANES = 0x10000 >> LANE_SHIFT    # 8
REPLAY_WINDOW = 128                  # packets behind the newest a slot still accepts
_MAX_RX_WINDOWS = 256
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

    def public(self) -> dict[str, Any]:
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
        #: key -> the highest era a protector of this keyring has used with it: a protector
        #: created later (or recreated) starts above it, so eras never go back under one key
        self.era_floor: dict[bytes, int] = {}
        self._lanes = 0

    def take_lane(self) -> int:
        """A lane of its own for a new protector (distinct keystreams for distinct sequence
        spaces under one key)."""
        with self._lock:
            if self._lanes >= MAX_LANES:
                raise ValueError(f"at most {MAX_LANES} protectors per keyring")
            lane = self._lanes
            self._lanes += 1
            return lane

    def used_era(self, key: bytes, era: int) -> None:
        with self._lock:
            if era > self.era_floor.get(key, -1):
                self.era_floor[key] = era

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
                        if k.retire_after is not None and k.retire_after <= now:
                            continue
                    keep.append(k)
                self._keys = keep
                rotate = (now - act.created >= self.rotate_every_s
                          and not any(k.active_from > now for k in self._keys))
        if rotate:
            self.rotate(now)

    def for_receivers(self) -> list[dict[str, Any]]:
        """Keys a receiver needs now: the retiring one (grace), the active one, a pending one."""
        with self._lock:
            keys = self._keys
            live = {k.key for k in keys}
            for dead in [x for x in self.era_floor if x not in live]:
                del self.era_floor[dead]
            return [k.public() for k in keys]


class MediaProtector:
    """Sender side: call `protect` once per program packet (in send order)."""

    def __init__(self, keyring: MediaKeyring) -> None:
        self.keyring = keyring
        self.lane = keyring.take_lane()
        self._slot0 = self.lane << LANE_SHIFT
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
                d = seq_diff(seq, self._last_seq)
                if d > 0:
                    self._ext += d
                else:
                    # the sequence went back: another stream under this protector (an edge
                    # whose origin changed, issue 19). The index must never go back (the
                    # receivers' replay windows): same low bits, in the next era
                    self._ext = (((self._ext >> ERA_BITS) + 1) << ERA_BITS) | (seq & _ERA_MASK)
            self._last_seq = seq
            self._slot = self._slot0
        else:
            self._slot += 1
        era = (self._ext >> ERA_BITS) & 0xFFFFFFFF
        kid, key = self.keyring.active
        if key is not self._sess_key or era != self._sess_era:
            # a new era or key (once per 5.5 min): old sessions never return. Under a key
            # another protector of this keyring used, start above its highest era (a multiple
            # of 2^14 keeps ext == seq modulo 2^14, which the receiver's index relies on)
            floor = self.keyring.era_floor.get(key)
            if floor is not None and era <= floor and key is not self._sess_key:
                self._ext += (floor + 1 - era) << ERA_BITS
                era = floor + 1
            self._sessions.clear()
            self._sess_key, self._sess_era = key, era
            self.keyring.used_era(key, era)
        k = (kid, self._slot, era)
        s = self._sessions.get(k)
        if s is None:
            s = self._sessions[k] = pylibsrtp.Session(pylibsrtp.Policy(
                key=derive_master(key, kid, self._slot, era),
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=_PROFILE))
        self.protected += 1
        return s.protect(bytes(packet)) + TRAILER.pack(kid, self._slot, era)


class MediaUnprotector:
    """Receiver side. `unprotect` returns the plain RTP packet or raises MediaAuthError.

    Replay state is per key id and forgotten with the key it belongs to (see the module notes):
    `set_keys` with a new key for an id (a restarted or different server) starts that id afresh;
    the same key again (a heartbeat's welcome) keeps it."""

    REASONS = ("malformed", "unknown_key", "old_era", "replay", "auth")

    def __init__(self) -> None:
        self._keys: dict[int, bytes] = {}
        self._sessions: OrderedDict[tuple[int, int, int, bytes], pylibsrtp.Session] = OrderedDict()
        self._max_era: dict[int, int] = {}                      # kid -> newest era accepted
        # (kid, slot) -> [newest index, bitmap of the REPLAY_WINDOW indices behind it]
        self._windows: OrderedDict[tuple[int, int], list[int]] = OrderedDict()
        self._floor: dict[int, int] = {}    # kid -> newest index of a window it had to forget
        self.failed = 0
        self.ok = 0
        self.failures = dict.fromkeys(self.REASONS, 0)

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    @property
    def max_era(self) -> int | None:
        """The newest era accepted under any current key (for logs and tests)."""
        return max(self._max_era.values(), default=None)

    def era_of(self, kid: int) -> int | None:
        return self._max_era.get(kid)

    def set_keys(self, keys: list[dict[str, Any]] | list[tuple[int, bytes]]) -> None:
        new: dict[int, bytes] = {}
        for k in keys:
            kid, key = (k["kid"], bytes.fromhex(k["key"])) if isinstance(k, dict) else k
            if not 0 <= int(kid) <= 255 or len(key) != 32:
                raise ValueError("bad media key")
            new[int(kid)] = key
        changed = {kid for kid, key in self._keys.items() if new.get(kid) != key}
        self._keys = new
        if changed:
            for kid in changed:
                self._max_era.pop(kid, None)
                self._floor.pop(kid, None)
            for wk in [wk for wk in self._windows if wk[0] in changed]:
                del self._windows[wk]
        for sk in [sk for sk in self._sessions if self._keys.get(sk[0]) != sk[3]]:
            del self._sessions[sk]

    def _fail(self, reason: str, msg: str) -> MediaAuthError:
        self.failures[reason] += 1
        self.failed += 1
        return MediaAuthError(msg)

    def unprotect(self, data: bytes) -> bytes:
        if len(data) < 12 + 10 + TRAILER_SIZE or not 0x80 <= data[0] < 0xC0:
            raise self._fail("malformed", "not an SRTP packet")
        kid, slot, era = TRAILER.unpack_from(data, len(data) - TRAILER_SIZE)
        key = self._keys.get(kid)
        if key is None:
            raise self._fail("unknown_key", "unknown media key id")
        top = self._max_era.get(kid)
        if top is not None and era < top - 1:
            raise self._fail("old_era", "packet from an old era (replay?)")
        # eras are aligned to 2^14 sequence numbers, so this is the sender's exact index
        index = (era << ERA_BITS) | (((data[2] << 8) | data[3]) & _ERA_MASK)
        wk = (kid, slot)
        win = self._windows.get(wk)
        if win is None:
            if index <= self._floor.get(kid, -1):
                raise self._fail("replay", "packet behind a forgotten replay window")
        elif index <= win[0] and (win[0] - index >= REPLAY_WINDOW
                                  or (win[1] >> (win[0] - index)) & 1):
            raise self._fail("replay", "replayed packet")
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
            raise self._fail("auth", f"SRTP: {exc}") from None
        # authentic: only now does it move the replay state
        if win is None:
            win = self._windows[wk] = [index, 1]
            while len(self._windows) > _MAX_RX_WINDOWS:
                (okid, _), (hi, _) = self._windows.popitem(last=False)
                if hi > self._floor.get(okid, -1):
                    self._floor[okid] = hi
        else:
            self._windows.move_to_end(wk)
            if index > win[0]:
                shift = index - win[0]
                win[1] = ((win[1] << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) \
                    if shift < REPLAY_WINDOW else 1
                win[0] = index
            else:
                win[1] |= 1 << (win[0] - index)
        if top is None or era > top:
            self._max_era[kid] = era
            for old in [x for x in self._sessions if x[0] == kid and x[2] < era - 1]:
                del self._sessions[old]
        self.ok += 1
        return plain
