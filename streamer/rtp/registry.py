"""The server side of the receiver protocol: who is registered, where they are, what they play.

Sans-IO: `datagram_received(data, addr, now, wall)` returns the datagrams to send back; `poll`
does offline detection; `set_on_air` turns zone status changes into now-playing messages. `now`
is monotonic seconds (liveness), `wall` unix seconds (message timestamps, reports).

The receivers table belongs to the control plane: it plugs in `secret_for(receiver_id) ->
(secret, zone_id) | None`, which must answer from memory (it runs for every datagram; keep a
dict in sync with the database rather than querying it here). Nothing is stored for an id that
has not proven its secret, so unauthenticated traffic costs one lookup and one HMAC, no memory.

An address is taken from a datagram only after its MAC, timestamp window and replay checks pass;
a spoofed register for an existing id (bad MAC) changes nothing. The replay guard of a receiver
starts at the registry's start (`started_wall`, else the first `wall` it is given): a message
captured before a restart is not taken again by the restarted server.

Playback (`status()["playback"]`): an online receiver is `playing`, `idle` (nothing on air in
its zone) or `not_playing` with a reason, from its reports: `auth_failed` (media arrives but does
not authenticate and nothing plays), `no_media` (its zone has been on air for a report interval
and it plays nothing), `no_reports` (it heartbeats but stopped reporting). Going not-playing
emits `receiver.not_playing` (an alarm), coming back `receiver.playing_again`.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from streamer.rtp import control_protocol as cp
from streamer.timefmt import utc_iso

if TYPE_CHECKING:
    from streamer.rtp.srtp import MediaKeyring

log = logging.getLogger("loa.registry")

Addr = tuple[str, int]
SecretLookup = Callable[[str], "tuple[bytes, str] | None"]
TOLERANCE_S = 1.0      # delivery report: slack at the start and end of a broadcast
CLOCK_SLACK_S = 1.0    # receiver messages stamped this much before our start are still taken


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return utc_iso(t)


def _parse_iso(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _num(v: object, lo: float, hi: float) -> float | None:
    """A report field, if it is a finite number in range (reports are authenticated but still
    input: a buggy receiver must not break the status page)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if not lo <= v <= hi:
        return None
    return float(v)


@dataclass
class _Receiver:
    id: str
    zone: str
    guard: cp.ReplayGuard
    addr: Addr | None = None
    online: bool = False
    last_seen: float = 0.0            # monotonic
    last_seen_wall: float | None = None
    online_since: float | None = None
    registers: int = 0
    heartbeats: int = 0
    reports: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    report_wall: float | None = None
    played: dict[str, dict[str, Any]] = field(default_factory=dict)   # broadcast -> first/last/audio_s
    rtt_ms: float | None = None
    now_key: str | None = None
    redundant: bool = False          # gets RFC 2198 packets (previous frame repeated)
    redundant_since: float = 0.0
    loss_bucket: int | None = None   # the loss (%) it is counted with in loss_zone's histogram
    loss_measured: float | None = None  # the last report's loss, if it measured any (see below)
    loss_zone: str | None = None
    play_state: str | None = None    # playing / idle / not_playing (None: no report yet)
    play_reason: str | None = None
    play_since: float | None = None  # wall
    auth_failed: int = 0             # media that failed authentication, as it last reported
    auth_failed_new: int = 0         # ... during its last report interval
    auth_failed_seen: int = 0        # summed over this server's lifetime (for /metrics)


class ReceiverRegistry:
    COUNTERS = ("datagrams", "accepted", "malformed", "unexpected_type", "unknown_id", "bad_mac",
                "stale", "replay", "lookup_errors", "registers", "heartbeats", "reports", "byes",
                "welcomes_sent", "now_sent", "address_changes", "offline_transitions",
                "rekeys", "not_playing_transitions", "destination_errors", "lookup_pending")
    HELD_MAX = 256   # datagrams of ids being looked up, kept to answer once they are found

    def __init__(self, secret_for: SecretLookup, *,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_destinations: Callable[[str, list[tuple[str, int, int, bool]]], None]
                 | None = None,
                 on_zone_loss: Callable[[str, int | None], None] | None = None,
                 keyring: MediaKeyring | None = None, heartbeat_s: float = 15.0, missed: int = 3,
                 window_s: float = 30.0, report_s: float = 5.0, server_name: str = "loa",
                 max_played: int = 64, started_wall: float | None = None) -> None:
        self.secret_for = secret_for
        #: True while the control plane looks an unknown id up (a datagram of it then waits)
        self.is_pending: Callable[[str], bool] = lambda rid: False
        self._held: dict[str, tuple[bytes, Addr]] = {}
        self.on_event = on_event or (lambda e: None)
        self.on_destinations = on_destinations or (lambda z, a: None)
        self.on_zone_loss = on_zone_loss or (lambda z, p: None)
        # zone -> how many online receivers last reported each loss (whole %, 0..LOSS_CAP):
        # a report costs O(1) and a zone's worst is a scan of 31 counters, even at 10,000
        # receivers reporting every few seconds
        self._loss_hist: dict[str, list[int]] = {}
        self._zone_loss: dict[str, int] = {}        # zone -> worst, as last handed on
        self.keyring = keyring
        self.heartbeat_s = heartbeat_s
        self.missed = missed
        self.window_s = window_s
        self.report_s = report_s
        self.server_name = server_name
        self.max_played = max_played
        self.media_ssrc: int | None = None
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        self._rx: dict[str, _Receiver] = {}
        self._on_air: dict[str, list[dict[str, Any]]] = {}
        self._on_air_key: dict[str, str] = {}       # zone -> its on-air list as sent (JSON)
        self._status_seen: object = None            # the last status mapping looked at
        self._now_pending: set[str] = set()         # receivers whose now-playing is due
        #: receivers a broadcast reaches alone (StartBroadcast.only): address -> the carve zone
        #: they hear while it lasts (streamer.core.carve); their now-playing is that zone's
        self._carved: Mapping[Addr, str] = {}
        self._reject_last: dict[str, float] = {}
        self._sr_sent: dict[tuple[str, int], float] = {}   # (receiver, LSR) -> wall time sent
        self._floor_ms: int | None = (None if started_wall is None
                                      else int((started_wall - CLOCK_SLACK_S) * 1000))
        self._on_air_since: dict[str, float] = {}    # zone -> wall time it went on air
        self._auth_failed_gone: dict[str, int] = {}  # zone -> auth failures of forgotten rx

    # -- helpers ------------------------------------------------------------------------------

    def _emit(self, type_: str, wall: float, **fields: Any) -> None:
        ev = {"type": type_, "time": _iso(wall)}
        ev.update(fields)
        try:
            self.on_event(ev)
        except Exception:       # an observer must never break the protocol, but it is told
            log.exception("receiver event observer failed on %s", type_)

    def _reject(self, reason: str, addr: Addr, rid: str | None, wall: float, now: float) -> None:
        self.counters[reason] += 1
        # one event per reason per 10 s: a flood of garbage must not become a flood of events
        last = self._reject_last.get(reason)
        if last is None or now - last >= 10.0:
            self._reject_last[reason] = now
            self._emit("receiver.rejected", wall, reason=reason, receiver=rid,
                       address=f"{addr[0]}:{addr[1]}", count=self.counters[reason])

    def _push_destinations(self, zone: str) -> None:
        addrs = sorted((r.addr[0], r.addr[1], 20, r.redundant) for r in self._rx.values()
                       if r.zone == zone and r.online and r.addr is not None)
        try:
            self.on_destinations(zone, addrs)
        except Exception:
            # receivers of this zone may now get no audio: never silent about it
            self.counters["destination_errors"] += 1
            log.exception("applying the destinations of zone %s failed", zone)

    # -- input --------------------------------------------------------------------------------

    def _floor(self, wall: float) -> int:
        if self._floor_ms is None:
            self._floor_ms = int((wall - CLOCK_SLACK_S) * 1000)
        return self._floor_ms

    def retry(self, receiver_id: str, now: float, wall: float) -> list[tuple[bytes, Addr]]:
        """Handle again the datagram an id sent while it was being looked up (see
        `is_pending`): called when the look-up found it, so its first registration is answered
        at once instead of at its next attempt."""
        held = self._held.pop(receiver_id, None)
        if held is None:
            return []
        return self.datagram_received(held[0], held[1], now, wall)

    def datagram_received(self, data: bytes, addr: Addr, now: float,
                          wall: float) -> list[tuple[bytes, Addr]]:
        self.counters["datagrams"] += 1
        floor = self._floor(wall)
        addr = (str(addr[0]), int(addr[1]))
        try:
            msg = cp.parse(data)
        except cp.ProtocolError:
            self._reject("malformed", addr, None, wall, now)
            return []
        if msg.type not in cp.RECEIVER_TYPES:
            self._reject("unexpected_type", addr, msg.receiver_id, wall, now)
            return []
        try:
            found = self.secret_for(msg.receiver_id)
        except Exception:
            found = None
            self.counters["lookup_errors"] += 1
        if not found:
            if self.is_pending(msg.receiver_id):
                # the control plane is looking this id up in its database (its cache may be
                # stale): not refused; kept, and handled again by `retry` when it is found
                self.counters["lookup_pending"] += 1
                keep = self._held
                keep.pop(msg.receiver_id, None)
                if len(keep) >= self.HELD_MAX:
                    keep.pop(next(iter(keep)))
                keep[msg.receiver_id] = (bytes(data), addr)
                return []
            self._reject("unknown_id", addr, msg.receiver_id, wall, now)
            return []
        secret, zone = found
        if not msg.verify(secret):
            self._reject("bad_mac", addr, msg.receiver_id, wall, now)
            return []
        r = self._rx.get(msg.receiver_id)
        fresh = r is None
        if r is None:
            r = _Receiver(msg.receiver_id, zone, cp.ReplayGuard(self.window_s, floor))
        why = r.guard.check(msg.timestamp_ms, msg.nonce, int(wall * 1000))
        if why is not None:
            self._reject(why, addr, msg.receiver_id, wall, now)
            return []
        if fresh:           # kept only once a message of its passed every check
            self._rx[msg.receiver_id] = r
        self.counters["accepted"] += 1
        if r.zone != zone:            # moved to another zone in the receivers table
            old, r.zone = r.zone, zone
            if r.auth_failed_seen:
                self._auth_failed_gone[old] = (self._auth_failed_gone.get(old, 0)
                                               + r.auth_failed_seen)
                r.auth_failed_seen = 0
            self._now_pending.add(r.id)
            if r.online:
                self._push_destinations(old)
                self._push_destinations(zone)
                if r.loss_bucket is not None:    # its last report now counts in the new zone
                    self._count_loss(r, r.loss_bucket / 100.0)
        r.last_seen = now
        r.last_seen_wall = wall
        t = msg.type
        if t is cp.MsgType.BYE:
            self.counters["byes"] += 1
            self._go_offline(r, wall, "bye")
            return []
        if t is cp.MsgType.REPORT:
            self.counters["reports"] += 1
            r.reports += 1
            self._take_report(r, msg.body, wall)
            if not r.online:
                self._come_online(r, addr, wall)
            elif r.addr != addr:
                self._move(r, addr, wall)
            if r.loss_measured is not None:
                self._count_loss(r, r.loss_measured)
            return []
        if t is cp.MsgType.REGISTER:
            self.counters["registers"] += 1
            r.registers += 1
            if isinstance(msg.body.get("rekey"), str):
                self.counters["rekeys"] += 1     # its media failed or stopped: fresh keys
        else:
            self.counters["heartbeats"] += 1
            r.heartbeats += 1
        if not r.online:
            self._come_online(r, addr, wall)
        elif r.addr != addr:
            self._move(r, addr, wall)
        return [(self._welcome(r, secret, wall), addr)]

    def _come_online(self, r: _Receiver, addr: Addr, wall: float) -> None:
        r.addr = addr
        r.online = True
        r.online_since = wall
        r.now_key = None
        r.play_state = r.play_reason = r.play_since = None
        self._now_pending.add(r.id)
        self._push_destinations(r.zone)
        self._emit("receiver.online", wall, receiver=r.id, zone=r.zone,
                   address=f"{addr[0]}:{addr[1]}")

    def _move(self, r: _Receiver, addr: Addr, wall: float) -> None:
        old = r.addr
        r.addr = addr
        self.counters["address_changes"] += 1
        self._push_destinations(r.zone)
        self._emit("receiver.address_changed", wall, receiver=r.id, zone=r.zone,
                   address=f"{addr[0]}:{addr[1]}",
                   previous=f"{old[0]}:{old[1]}" if old else None)

    #: reported loss is counted in whole percent up to this (libopus plans FEC for ~5-30 %)
    LOSS_CAP = 30

    def _count_loss(self, r: _Receiver, fraction: float | None) -> None:
        """Count `r` in its zone's loss histogram with this loss (None: not at all, e.g. it
        went offline) and hand on the worst of each zone whose worst changed."""
        bucket = None
        if fraction is not None and r.online:
            bucket = min(self.LOSS_CAP, max(0, math.ceil(fraction * 100.0 - 1e-9)))
        zone = r.zone if bucket is not None else None
        if bucket == r.loss_bucket and zone == r.loss_zone:
            return
        touched = []
        if r.loss_bucket is not None and r.loss_zone is not None:
            h = self._loss_hist[r.loss_zone]
            h[r.loss_bucket] -= 1
            touched.append(r.loss_zone)
        if bucket is not None and zone is not None:
            hz = self._loss_hist.get(zone)
            if hz is None:
                hz = self._loss_hist[zone] = [0] * (self.LOSS_CAP + 1)
            hz[bucket] += 1
            if zone not in touched:
                touched.append(zone)
        r.loss_bucket, r.loss_zone = bucket, zone
        for z in touched:
            h = self._loss_hist[z]
            worst = next((i for i in range(self.LOSS_CAP, -1, -1) if h[i]), None)
            if worst is None:
                del self._loss_hist[z]
            if self._zone_loss.get(z) != worst:
                if worst is None:
                    self._zone_loss.pop(z, None)
                else:
                    self._zone_loss[z] = worst
                try:
                    self.on_zone_loss(z, worst)
                except Exception:   # an observer must never break the protocol
                    pass

    def zone_loss(self) -> dict[str, int]:
        """zone -> worst loss (%) its online receivers report (zones where one reports)."""
        return dict(self._zone_loss)

    def _go_offline(self, r: _Receiver, wall: float, reason: str) -> None:
        if not r.online:
            return
        r.online = False
        self._count_loss(r, None)
        r.play_state = r.play_reason = r.play_since = None   # offline is its own alarm
        self.counters["offline_transitions"] += 1
        self._push_destinations(r.zone)
        self._emit("receiver.offline", wall, receiver=r.id, zone=r.zone, reason=reason,
                   last_seen=_iso(r.last_seen_wall))

    #: network loss (before repair) at which a receiver gets redundant packets, and below which
    #: (after at least `RED_HOLD_S`) it goes back to plain ones
    RED_ON, RED_OFF, RED_HOLD_S = 0.03, 0.01, 60.0

    def _choose_redundancy(self, r: _Receiver, loss: float | None, wall: float) -> None:
        if loss is None:
            return
        if not r.redundant and loss >= self.RED_ON:
            r.redundant, r.redundant_since = True, wall
        elif r.redundant and loss < self.RED_OFF and wall - r.redundant_since >= self.RED_HOLD_S:
            r.redundant = False
        else:
            return
        self._emit("receiver.redundancy", wall, receiver=r.id, zone=r.zone, on=r.redundant,
                   fraction_lost=loss)
        self._push_destinations(r.zone)

    def _welcome(self, r: _Receiver, secret: bytes, wall: float) -> bytes:
        assert r.addr is not None  # welcomed only once online (its address known)
        body: dict[str, Any] = {"server": self.server_name, "zone": r.zone, "heartbeat_s": self.heartbeat_s,
                      "report_s": self.report_s, "observed": f"{r.addr[0]}:{r.addr[1]}",
                      "on_air": self._on_air.get(r.zone, []), "srtp": self.keyring is not None}
        if self.media_ssrc is not None:
            body["ssrc"] = self.media_ssrc
        if self.keyring is not None:
            keys = json.dumps(self.keyring.for_receivers()).encode()
            body["keys"] = cp.seal(secret, r.id, keys)
        self.counters["welcomes_sent"] += 1
        return cp.encode(cp.MsgType.WELCOME, r.id, secret, body, timestamp_ms=int(wall * 1000))

    def _take_report(self, r: _Receiver, body: dict[str, Any], wall: float) -> None:
        rep: dict[str, Any] = {}
        for name, lo, hi in (("fraction_lost", 0, 1), ("cumulative_lost", 0, 2**31),
                             ("jitter_ms", 0, 1e5), ("concealed_pct", 0, 100),
                             ("jb_depth_ms", 0, 1e5), ("jb_target_ms", 0, 1e5),
                             ("volume", 0, 1000), ("uptime_s", 0, 1e10), ("received", 0, 2**53),
                             ("highest_seq", 0, 2**32)):
            v = _num(body.get(name), lo, hi)
            if v is not None:
                rep[name] = v
        for name in ("broadcast", "level", "version"):
            v = body.get(name)
            if isinstance(v, str) and len(v) <= 64:
                rep[name] = v
        rep["playing"] = body.get("playing") is True
        total = _num(body.get("auth_failed"), 0, 2**53)
        new = _num(body.get("auth_failed_new"), 0, 2**53)
        if total is not None:
            if new is None:         # a receiver that only counts: the rise since its last report
                new = total - r.auth_failed if total >= r.auth_failed else total
            r.auth_failed = int(total)
        r.auth_failed_new = int(new or 0)
        r.auth_failed_seen += r.auth_failed_new
        # A report whose interval brought no packet measured nothing (an idle zone reports
        # 0 % loss): the receiver keeps the loss it measured last, so a lossy link still gets
        # FEC and redundant packets from the first frame of the next broadcast.
        loss = rep.get("fraction_lost")
        before, now_rx = r.report.get("received"), rep.get("received")
        if loss is not None and loss == 0 and before is not None and now_rx == before:
            loss = None
        r.loss_measured = loss
        r.report = rep
        r.report_wall = wall
        self._judge_playback(r, wall)
        self._choose_redundancy(r, loss, wall)
        lsr, dlsr = body.get("lsr"), _num(body.get("dlsr"), 0, 3600)
        if isinstance(lsr, int) and dlsr is not None:
            sent = self._sr_sent.get((r.id, lsr))
            if sent is not None:
                r.rtt_ms = round(max(0.0, (wall - sent - dlsr) * 1000.0), 1)
        played = body.get("played")
        if isinstance(played, dict):
            for bid, p in list(played.items())[: self.max_played]:
                if not isinstance(bid, str) or len(bid) > 64 or not isinstance(p, dict):
                    continue
                first = _num(p.get("first"), wall - 86400 * 7, wall + 3600)
                last = _num(p.get("last"), wall - 86400 * 7, wall + 3600)
                audio = _num(p.get("audio_s"), 0, 86400 * 7)
                if first is None or last is None or audio is None or last < first:
                    continue
                cur = r.played.get(bid)
                if cur is None:
                    if len(r.played) >= self.max_played:
                        r.played.pop(next(iter(r.played)))
                    r.played[bid] = {"first": first, "last": last, "audio_s": audio}
                else:
                    cur["first"] = min(cur["first"], first)
                    cur["last"] = max(cur["last"], last)
                    cur["audio_s"] = max(cur["audio_s"], audio)

    # -- playback: is an online receiver really playing? ---------------------------------------

    def _judge_playback(self, r: _Receiver, wall: float) -> None:
        """From its latest report: the receiver's media fails authentication and nothing
        plays; or its zone has been on air for a whole report interval (and a second) and it
        plays nothing. Its link figures describe nothing then (see `_status`)."""
        rep = r.report
        playing = rep.get("playing") is True
        since = self._on_air_since.get(r.zone)
        if playing:
            state, reason = "playing", None
        elif r.auth_failed_new > 0:
            state, reason = "not_playing", "auth_failed"
        elif since is not None and wall - since >= self.report_s + 1.0:
            state, reason = "not_playing", "no_media"
        else:
            state, reason = "idle", None
        self._set_playback(r, state, reason, wall)

    def _set_playback(self, r: _Receiver, state: str, reason: str | None, wall: float) -> None:
        if state == r.play_state and reason == r.play_reason:
            return
        was, was_reason, was_since = r.play_state, r.play_reason, r.play_since
        r.play_state, r.play_reason, r.play_since = state, reason, wall
        if state == "not_playing":
            self.counters["not_playing_transitions"] += 1
            self._emit("receiver.not_playing", wall, receiver=r.id, zone=r.zone, reason=reason,
                       auth_failed=r.auth_failed_new, on_air=self._on_air.get(r.zone, []),
                       previous_reason=was_reason)
        elif was == "not_playing":
            self._emit("receiver.playing_again", wall, receiver=r.id, zone=r.zone, state=state,
                       previous_reason=was_reason,
                       not_playing_s=round(wall - was_since, 3) if was_since else None)

    def _poll_playback(self, wall: float) -> None:
        """Time-based verdicts: reports stopped while heartbeats go on; a zone that has been on
        air for a report interval whose receivers last said they played nothing."""
        stale = 3 * self.report_s + 1.0
        for r in self._rx.values():
            if not r.online:
                continue
            if r.report_wall is not None and \
                    wall - max(r.report_wall, r.online_since or 0.0) > stale:
                self._set_playback(r, "not_playing", "no_reports", wall)
            elif r.play_state == "idle":
                since = self._on_air_since.get(r.zone)
                if since is not None and wall - since >= self.report_s + 1.0 and \
                        r.report_wall is not None and r.report_wall >= since + 1.0:
                    # it said "nothing plays" after the zone went on air, and no report since
                    # has said otherwise
                    self._judge_playback(r, wall)

    def not_playing_by_zone(self) -> dict[tuple[str, str], int]:
        """(zone, reason) -> online receivers not playing, for /metrics."""
        out: dict[tuple[str, str], int] = {}
        for r in self._rx.values():
            if r.online and r.play_state == "not_playing":
                k = (r.zone, r.play_reason or "unknown")
                out[k] = out.get(k, 0) + 1
        return out

    def auth_failures_by_zone(self) -> dict[str, int]:
        """zone -> media packets its receivers reported failing authentication (a counter over
        this server's lifetime)."""
        out = dict(self._auth_failed_gone)
        for r in self._rx.values():
            if r.auth_failed_seen:
                out[r.zone] = out.get(r.zone, 0) + r.auth_failed_seen
        return out

    # -- time, zone status, RTCP --------------------------------------------------------------

    def poll(self, now: float, wall: float) -> None:
        """Offline detection: `missed` heartbeats without a valid message."""
        self._floor(wall)
        limit = self.missed * self.heartbeat_s
        for r in self._rx.values():
            if r.online and now - r.last_seen > limit:
                self._go_offline(r, wall, f"{self.missed} heartbeats missed")
        self._poll_playback(wall)
        if len(self._sr_sent) > 4 * max(1, len(self._rx)) + 64:
            cutoff = wall - 60
            self._sr_sent = {k: v for k, v in self._sr_sent.items() if v > cutoff}

    def set_carves(self, carved: Mapping[Addr, str]) -> None:
        """The receivers some broadcast reaches alone, by address -> the carve zone they hear
        (a carve of their own zone): what is on air there is what they are told is playing, so
        their reports credit the broadcast they actually played."""
        if carved is self._carved or carved == self._carved:
            self._carved = carved
            return
        old, self._carved = self._carved, carved
        moved = {a for a in set(old) | set(carved) if old.get(a) != carved.get(a)}
        for r in self._rx.values():
            if r.addr in moved:
                self._now_pending.add(r.id)

    def _hears(self, r: _Receiver) -> str:
        """The zone whose on-air list a receiver hears: its carve while it has one."""
        if self._carved and r.addr is not None:
            c = self._carved.get(r.addr)
            if c is not None and c.startswith(r.zone + "~"):
                return c
        return r.zone

    def set_on_air(self, status: dict[str, list[dict[str, Any]]], wall: float) -> list[tuple[bytes, Addr]]:
        """Zone id -> on-air broadcasts ({broadcast, level}); returns now-playing messages for
        the online receivers of zones whose list changed, and for receivers that just came
        online or moved. Called several times a second: passing the same mapping object again
        (nothing changed) costs only the receivers that are due, not every zone and receiver."""
        out: list[tuple[bytes, Addr]] = []
        check: list[_Receiver] = []
        if status is not self._status_seen:
            self._status_seen = status
            changed = set()
            for zone, on in status.items():
                norm = [{"broadcast": str(x.get("broadcast")), "level": str(x.get("level"))}
                        for x in on]
                if self._on_air.get(zone) != norm or zone not in self._on_air_key:
                    if norm and not self._on_air.get(zone):
                        self._on_air_since[zone] = wall
                    elif not norm:
                        self._on_air_since.pop(zone, None)
                    self._on_air[zone] = norm
                    self._on_air_key[zone] = json.dumps(norm, sort_keys=True)
                    changed.add(zone)
            if changed:
                check = [r for r in self._rx.values()
                         if r.zone in changed or (self._carved and self._hears(r) in changed)]
        if self._now_pending:
            pending, self._now_pending = self._now_pending, set()
            check += [self._rx[i] for i in pending if i in self._rx]
        for r in check:
            if not r.online or r.addr is None:
                continue
            hears = self._hears(r)
            on = self._on_air.get(hears, [])
            key = self._on_air_key.get(hears, "[]")
            if key == r.now_key:
                continue
            found = self.secret_for(r.id)
            if not found:
                self._now_pending.add(r.id)   # no secret yet: try again next time
                continue
            r.now_key = key
            out.append((cp.encode(cp.MsgType.NOW, r.id, found[0], {"zone": r.zone, "on_air": on},
                                  timestamp_ms=int(wall * 1000)), r.addr))
            self.counters["now_sent"] += 1
        return out

    def sr_targets(self) -> list[tuple[str, Addr]]:
        return [(r.id, r.addr) for r in self._rx.values() if r.online and r.addr is not None]

    def address_of(self, receiver_id: str) -> Addr | None:
        """Where an online receiver gets its media (observed), or None."""
        r = self._rx.get(receiver_id)
        return r.addr if r is not None and r.online else None

    def sr_sent(self, receiver_id: str, lsr: int, wall: float) -> None:
        self._sr_sent[(receiver_id, lsr)] = wall

    def retire(self, receiver_id: str, now: float, wall: float) -> None:
        """A receiver left the fleet: forget it and rotate the media key it knew."""
        r = self._rx.pop(receiver_id, None)
        if r is not None and r.auth_failed_seen:
            self._auth_failed_gone[r.zone] = (self._auth_failed_gone.get(r.zone, 0)
                                              + r.auth_failed_seen)
        if r is not None and r.online:
            r.online = False
            self._count_loss(r, None)
            self._push_destinations(r.zone)
            self._emit("receiver.offline", wall, receiver=r.id, zone=r.zone, reason="retired",
                       last_seen=_iso(r.last_seen_wall))
        if self.keyring is not None:
            self.keyring.rotate(now)

    # -- output -------------------------------------------------------------------------------

    def status(self, receiver_id: str | None = None) -> list[dict[str, Any]] | dict[str, Any] | None:
        if receiver_id is not None:
            r = self._rx.get(receiver_id)
            return None if r is None else self._status(r)
        return [self._status(r) for r in sorted(self._rx.values(), key=lambda x: (x.zone, x.id))]

    def _status(self, r: _Receiver) -> dict[str, Any]:
        rep = r.report
        loss = rep.get("fraction_lost")
        conc = rep.get("concealed_pct")
        quality = None
        silent = r.online and r.play_state == "not_playing"
        if silent:
            # a receiver that plays nothing measured no link: 0 % loss of nothing is not "good"
            loss = conc = None
        if loss is not None or conc is not None:
            worst = max(loss or 0.0, (conc or 0.0) / 100.0)
            quality = "good" if worst < 0.01 else "fair" if worst < 0.05 else "poor"
        return {
            "id": r.id, "zone": r.zone, "online": r.online,
            "state": "online" if r.online else "offline",
            "address": f"{r.addr[0]}:{r.addr[1]}" if r.addr else None,
            "last_seen": _iso(r.last_seen_wall), "online_since": _iso(r.online_since),
            "link": {"quality": quality, "fraction_lost": loss,
                     "cumulative_lost": rep.get("cumulative_lost"),
                     "jitter_ms": rep.get("jitter_ms"), "concealed_pct": conc,
                     "jb_depth_ms": rep.get("jb_depth_ms"), "jb_target_ms": rep.get("jb_target_ms"),
                     "rtt_ms": r.rtt_ms},
            "redundancy": r.redundant,
            "playback": {"state": r.play_state if r.online else None,
                         "reason": r.play_reason if r.online else None,
                         "since": _iso(r.play_since) if r.online else None,
                         "auth_failed": r.auth_failed_new if r.online else None,
                         "auth_failed_total": r.auth_failed},
            "playing": ({"broadcast": rep.get("broadcast"), "level": rep.get("level")}
                        if rep.get("playing") else None),
            "volume": rep.get("volume"), "uptime_s": rep.get("uptime_s"),
            "version": rep.get("version"), "report_at": _iso(r.report_wall),
            "messages": {"registers": r.registers, "heartbeats": r.heartbeats,
                         "reports": r.reports},
        }

    def online_by_zone(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._rx.values():
            out[r.zone] = out.get(r.zone, 0) + (1 if r.online else 0)
        return out

    def delivery_report(self, broadcast: dict[str, Any],
                        expected: Iterable[tuple[str, str]] | None = None,
                        wall: float | None = None) -> dict[str, Any]:
        """Who played a broadcast (a broadcast snapshot as a dict): `full` (from its start to its end,
        within TOLERANCE_S), `partly`, `never`; and time from start to first audio.

        expected: (receiver id, zone) of every receiver that should have played it (from the
        receivers table); default: the receivers this registry knows in the reached zones."""
        bid = broadcast["id"]
        zones = set(broadcast.get("reached_zones") or broadcast.get("zones") or ())
        start = _parse_iso(broadcast.get("started_at"))
        end = _parse_iso(broadcast.get("ended_at"))
        if expected is None:
            expected = [(r.id, r.zone) for r in self._rx.values() if r.zone in zones]
        rows = []
        counts = {"full": 0, "partly": 0, "never": 0}
        tol = TOLERANCE_S
        for rid, zone in sorted(expected):
            r = self._rx.get(rid)
            p = r.played.get(bid) if r else None
            if p is None or start is None:
                outcome, first_s, audio = "never", None, 0.0
            else:
                first_s = round(p["first"] - start, 3)
                audio = p["audio_s"]
                stop = end if end is not None else (wall if wall is not None else p["last"])
                span = max(0.0, stop - start)
                ok_start = p["first"] <= start + tol
                ok_end = p["last"] >= stop - tol - (self.report_s if end is None else 0)
                ok_body = audio >= span - 2 * tol
                outcome = "full" if ok_start and ok_end and ok_body else "partly"
            counts[outcome] += 1
            rows.append({"receiver": rid, "zone": zone, "outcome": outcome,
                         "time_to_first_audio_s": first_s,
                         "audio_s": round(audio, 2),
                         "first_audio": _iso(p["first"]) if p else None,
                         "last_audio": _iso(p["last"]) if p else None})
        return {"broadcast": bid, "started_at": broadcast.get("started_at"),
                "ended_at": broadcast.get("ended_at"), "zones": sorted(zones),
                "summary": counts, "receivers": rows}


def new_secret() -> bytes:
    """A fresh receiver secret (32 random bytes) for provisioning."""
    return os.urandom(32)
