"""A receiver in the field: registers with a Loa server, stays joined, reports, fails over.

`FieldSession` is the sans-IO protocol state (register → heartbeats, server freshness and
authenticity, failover in configured order, media keys). `FieldReceiver` glues it to the
reference `Receiver` (jitter buffer + decode): one UDP socket carries everything, so the NAT
mapping the control messages open is the one media comes back through. Only datagrams from the
server it is registered with are looked at; with SRTP on, media that does not authenticate is
dropped before the jitter buffer sees it.

Restarts and failover never need the receiver restarted: media keys (and their replay windows)
come from every welcome; media that fails authentication makes the receiver re-register at
once (new keys from a restarted server), and a zone that is on air but sends nothing makes it
heartbeat early (a restarted server sends media only to receivers it has heard from). Both are
rate-limited (1 s, doubling up to the heartbeat interval, reset by good media).
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from receivers.receiver import Receiver, playout_ticks
from streamer.audio import SAMPLE_RATE
from streamer.rtp import control_protocol as cp
from streamer.rtp.rtcp import RtcpError, SenderReport, is_rtcp
from streamer.rtp.srtp import MediaAuthError, MediaUnprotector

Addr = tuple[str, int]
VERSION = "loa-receiver/0.1"
PROBE_MIN_S = 1.0        # first re-register / early heartbeat after media trouble
STALL_S = 1.5            # on air, no media for this long: ask the server (it may have restarted)
ANSWER_WAIT_S = 1.0      # a heartbeat not answered within this long is a missed acknowledgement
SILENCE_FAILOVER_S = 2.0  # on air, no media for this long: the next server (when there are several)
CLOCK_SLACK_MS = 1000    # server messages stamped this much before our (re)start still count


class FieldSession:
    COUNTERS = ("registers_sent", "heartbeats_sent", "reports_sent", "welcomes", "now_messages",
                "control_rejected", "failovers", "server_lost", "rekeys", "stall_probes")

    def __init__(self, receiver_id: str, secret: bytes, servers: list[Addr], *,
                 register_retry_s: float = 2.0, register_attempts: int = 3,
                 heartbeat_s: float = 15.0, missed: int = 3, window_s: float = 30.0) -> None:
        if not servers:
            raise ValueError("at least one server")
        self.receiver_id = receiver_id
        self.secret = secret
        self.servers = [(str(h), int(p)) for h, p in servers]
        self.register_retry_s = register_retry_s
        self.register_attempts = register_attempts
        self.heartbeat_s = heartbeat_s
        self.report_s = 5.0
        self.missed = missed
        self.window_s = window_s
        self.index = 0
        self.registered = False
        self.srtp = False
        self.keys = MediaUnprotector()
        self.on_air: list[dict] = []
        self.welcome: dict = {}
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        self.events: list[tuple[float, str, Addr]] = []   # (wall, what, server) for logs/tests
        self._guard = cp.ReplayGuard(window_s)
        self._attempts = 0
        self._next_register = 0.0
        self._next_heartbeat = 0.0
        self._next_report = 0.0
        self._last_welcome = 0.0
        self._report_now = False
        self._guard_floor = False        # the guard's not-before is set at the first poll
        self._media_at = 0.0             # monotonic time of the last good media packet
        self._on_air_at = 0.0            # when the zone last went on air (as we were told)
        self._rekey = False              # media failed authentication: re-register soon
        self._probe_at = 0.0             # no probe (rekey / stall heartbeat) before this
        self._probe_backoff = PROBE_MIN_S
        self.unanswered = 0              # heartbeats/probes sent since the last welcome
        self._sent_at = 0.0              # when the last of them was sent
        self._welcomed_at = 0.0          # when this server first welcomed us

    @property
    def server(self) -> Addr:
        return self.servers[self.index]

    def _msg(self, t: cp.MsgType, wall: float, body: dict | None = None) -> tuple[bytes, Addr]:
        return (cp.encode(t, self.receiver_id, self.secret, body, timestamp_ms=int(wall * 1000)),
                self.server)

    def _failover(self, now: float, wall: float, why: str) -> None:
        self.registered = False
        self.srtp = False
        self.keys = MediaUnprotector()
        self.on_air = []
        self._guard = cp.ReplayGuard(self.window_s, int(wall * 1000) - CLOCK_SLACK_MS)
        self._rekey = False
        self._probe_at = 0.0
        self._probe_backoff = PROBE_MIN_S
        self._attempts = 0
        self.unanswered = 0
        self._next_register = now
        if len(self.servers) > 1:
            self.index = (self.index + 1) % len(self.servers)
            self.counters["failovers"] += 1
        self.events.append((wall, why, self.server))

    def report_now(self) -> None:
        self._report_now = True

    def media_ok(self, now: float) -> None:
        """A media packet authenticated (or plain media was accepted)."""
        self._media_at = now
        if self._probe_backoff != PROBE_MIN_S or self._rekey:
            self._probe_backoff = PROBE_MIN_S
            self._rekey = False

    def media_failed(self, now: float) -> None:
        """Media from our server that did not authenticate (or came before any key): our keys
        are not the ones it sends with (it restarted, or rotated while a welcome was lost)."""
        if self.registered:
            self._rekey = True

    def _probe(self, now: float, wall: float) -> tuple[bytes, Addr] | None:
        if now < self._probe_at:
            return None
        if self._rekey:
            why = "auth_failed"
            self.counters["rekeys"] += 1
        elif self.on_air and now - max(self._media_at, self._on_air_at,
                                       self._last_welcome) > STALL_S:
            why = "no_media"
            self.counters["stall_probes"] += 1
        else:
            return None
        self._rekey = False
        self._probe_at = now + self._probe_backoff
        self._probe_backoff = min(self._probe_backoff * 2, max(PROBE_MIN_S, self.heartbeat_s))
        self._next_heartbeat = now + self.heartbeat_s
        self.counters["registers_sent"] += 1
        self.unanswered += 1
        self._sent_at = now
        return self._msg(cp.MsgType.REGISTER, wall, {"version": VERSION, "rekey": why})

    def poll(self, now: float, wall: float,
             report: Callable[[], dict] | None = None) -> list[tuple[bytes, Addr]]:
        out: list[tuple[bytes, Addr]] = []
        if not self._guard_floor:
            self._guard_floor = True
            if self._guard.last_ts is None:
                self._guard.last_ts = int(wall * 1000) - CLOCK_SLACK_MS
        if not self.registered:
            if now >= self._next_register:
                if self._attempts >= self.register_attempts:
                    self._failover(now, wall, "no answer")
                self._attempts += 1
                self._next_register = now + self.register_retry_s
                self.counters["registers_sent"] += 1
                out.append(self._msg(cp.MsgType.REGISTER, wall, {"version": VERSION}))
            return out
        if now - self._last_welcome > self.missed * self.heartbeat_s:
            self.counters["server_lost"] += 1
            self._failover(now, wall, "server lost")
            return self.poll(now, wall, report)
        # several servers (edges): the next one after `missed` unanswered messages, or after
        # SILENCE_FAILOVER_S without media while our zone is on air (issue 19)
        missed = self.unanswered >= self.missed and now - self._sent_at >= ANSWER_WAIT_S
        if len(self.servers) > 1 and (
                missed or (self.on_air and now - max(self._media_at, self._on_air_at,
                                              self._welcomed_at) > SILENCE_FAILOVER_S)):
            self.counters["server_lost"] += 1
            self._failover(now, wall, "missed acknowledgements" if missed else "silence on air")
            return self.poll(now, wall, report)
        probe = self._probe(now, wall)
        if probe is not None:
            out.append(probe)
        elif now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_s
            self.counters["heartbeats_sent"] += 1
            self.unanswered += 1
            self._sent_at = now
            out.append(self._msg(cp.MsgType.HEARTBEAT, wall))
        if report is not None and (self._report_now or now >= self._next_report):
            self._report_now = False
            self._next_report = now + self.report_s
            self.counters["reports_sent"] += 1
            out.append(self._msg(cp.MsgType.REPORT, wall, report()))
        return out

    def control_received(self, data: bytes, addr: Addr, now: float, wall: float) -> str | None:
        """A control datagram; returns 'welcome' / 'now' if accepted, else None (counted)."""
        try:
            if (str(addr[0]), int(addr[1])) != self.server:
                raise cp.ProtocolError("not from our server")
            msg = cp.parse(data)
            if (msg.type not in cp.SERVER_TYPES or msg.receiver_id != self.receiver_id
                    or not msg.verify(self.secret)):
                raise cp.ProtocolError("not for us, or not signed by our server")
            if self._guard.check(msg.timestamp_ms, msg.nonce, int(wall * 1000)) is not None:
                raise cp.ProtocolError("stale or replayed")
            body = msg.body
            if msg.type is cp.MsgType.WELCOME:
                keys = None
                if body.get("srtp"):
                    keys = json.loads(cp.unseal(self.secret, self.receiver_id, body["keys"]))
                hb = body.get("heartbeat_s")
                if isinstance(hb, (int, float)) and 0.05 <= hb <= 3600:
                    self.heartbeat_s = float(hb)
                rs = body.get("report_s")
                if isinstance(rs, (int, float)) and 0.05 <= rs <= 3600:
                    self.report_s = float(rs)
                if keys is not None:
                    self.keys.set_keys(keys)
                self.srtp = bool(body.get("srtp"))
                first = not self.registered
                self.registered = True
                self.welcome = body
                self._last_welcome = now
                self._attempts = 0
                self.unanswered = 0
                if first:
                    self._welcomed_at = now
                    self._next_heartbeat = now + self.heartbeat_s
                    self._next_report = now
                    self.events.append((wall, "registered", self.server))
                self._set_on_air(body.get("on_air"), now)
                self.counters["welcomes"] += 1
                return "welcome"
            if not self.registered:
                raise cp.ProtocolError("now-playing before welcome")
            self._set_on_air(body.get("on_air"), now)
            self.counters["now_messages"] += 1
            return "now"
        except (cp.ProtocolError, ValueError, TypeError, KeyError):
            self.counters["control_rejected"] += 1
            return None

    def _set_on_air(self, on, now: float) -> None:
        if isinstance(on, list):
            was = bool(self.on_air)
            self.on_air = [x for x in on if isinstance(x, dict)
                           and isinstance(x.get("broadcast"), str)][:8]
            if self.on_air and not was:
                self._on_air_at = now


class FieldReceiver:
    """Session + reference receiver over one socket (sans-IO core; `run` is the asyncio layer)."""

    def __init__(self, session: FieldSession, receiver: Receiver, *, volume: float = 1.0) -> None:
        self.session = session
        self.rx = receiver
        self.volume = volume
        self.started = time.monotonic()
        self.counters = {"foreign_source": 0, "auth_failed": 0, "no_key": 0, "plain_rejected": 0,
                         "sender_reports": 0}
        self.played: OrderedDict[str, dict] = OrderedDict()
        self._sr: tuple[int, float] | None = None      # (LSR, arrival monotonic)
        self._audio_since: float | None = None         # wall time the current audio began
        self._last_written = 0.0
        self._now_key: tuple = ()
        self._prev = (0, 0, 0)                          # (received, lost, concealed) at last report
        self._prev_red = 0                              # red_recovered at last report
        self._prev_failed = 0                           # auth_failed + no_key at last report

    def datagram_received(self, data: bytes, addr: Addr, now: float, wall: float) -> None:
        s = self.session
        if (str(addr[0]), int(addr[1])) != s.server:
            self.counters["foreign_source"] += 1
            return
        if cp.looks_like_control(data):
            if s.control_received(data, addr, now, wall) is not None:
                self._on_air_changed(wall)
            return
        if is_rtcp(data):
            try:
                sr = SenderReport.parse(data)
            except RtcpError:
                return
            self._sr = (sr.lsr, now)
            self.counters["sender_reports"] += 1
            return
        if s.srtp:
            if not s.keys.ready:
                self.counters["no_key"] += 1
                s.media_failed(now)
                return
            try:
                data = s.keys.unprotect(data)
            except MediaAuthError:
                self.counters["auth_failed"] += 1
                s.media_failed(now)
                return
        elif not s.registered:
            self.counters["plain_rejected"] += 1
            return
        s.media_ok(now)
        self.rx.datagram_received(data, now)

    def _on_air_changed(self, wall: float) -> None:
        key = tuple(x["broadcast"] for x in self.session.on_air)
        if key == self._now_key:
            return
        new = [b for b in key if b not in self._now_key]
        self._now_key = key
        # The now-playing message may trail the audio by a poll interval: audio that began
        # just before it belongs to the new broadcast.
        if self._audio_since is not None and wall - self._audio_since < 1.0:
            for b in new:
                if b not in self.played:
                    self.played[b] = {"first": self._audio_since, "last": wall, "audio_s": 0.0}
        self.session.report_now()

    def tick(self, now: float, wall: float) -> list[tuple[bytes, Addr]]:
        n = self.rx.tick(now)
        if n:
            if self._last_written == 0.0 or wall - self._last_written > 0.2:
                self._audio_since = wall
            self._last_written = wall
            for b in self._now_key:
                p = self.played.get(b)
                if p is None:
                    p = self.played[b] = {"first": wall - n / SAMPLE_RATE, "last": wall,
                                          "audio_s": 0.0}
                    while len(self.played) > 6:
                        self.played.popitem(last=False)
                p["last"] = wall
                p["audio_s"] += n / SAMPLE_RATE
        return self.session.poll(now, wall, self.report)

    def report(self) -> dict:
        snap = self.rx.snapshot()
        rec, lost, conc = int(snap["received"]), int(snap["lost"]), int(snap["concealed"])
        red_rec = int(snap.get("red_recovered", 0))
        d_rec, d_lost, d_conc = (rec - self._prev[0], lost - self._prev[1],
                                 conc - self._prev[2])
        # the network's loss, before redundancy repaired it: what the server decides on
        d_lost += red_rec - self._prev_red
        self._prev = (rec, lost, conc)
        self._prev_red = red_rec
        failed = self.counters["auth_failed"] + self.counters["no_key"]
        d_failed, self._prev_failed = failed - self._prev_failed, failed
        expected = d_rec + d_lost
        playing = self._last_written > 0 and time.time() - self._last_written < 1.0
        on = self.session.on_air[0] if self.session.on_air else {}
        body: dict[str, Any]
        body = {"fraction_lost": round(d_lost / expected, 4) if expected > 0 else 0.0,
                "cumulative_lost": lost, "jitter_ms": snap["jitter_ms"],
                "concealed_pct": round(100.0 * d_conc / (d_rec + d_conc), 2)
                if d_rec + d_conc > 0 else 0.0,
                "jb_depth_ms": snap["buffered_ms"], "jb_target_ms": snap["target_ms"],
                "volume": self.volume, "uptime_s": round(time.monotonic() - self.started, 1),
                "version": VERSION, "received": rec, "playing": playing,
                # media that did not authenticate: in all, and since the last report
                "auth_failed": failed, "auth_failed_new": d_failed,
                "rekeys": self.session.counters["rekeys"],
                "played": {b: {k: round(v, 3) for k, v in p.items()}
                           for b, p in self.played.items()}}
        if playing and on:
            body["broadcast"] = on.get("broadcast")
            body["level"] = on.get("level")
        if self._sr is not None:
            body["lsr"] = self._sr[0]
            body["dlsr"] = round(time.monotonic() - self._sr[1], 4)
        return body

    def snapshot(self) -> dict:
        s: dict[str, Any] = self.rx.snapshot()
        s.update(self.counters)
        s.update({f"session_{k}": v for k, v in self.session.counters.items()})
        s["registered"] = self.session.registered
        s["server"] = f"{self.session.server[0]}:{self.session.server[1]}"
        s["srtp"] = self.session.srtp
        s["srtp_failed"] = self.session.keys.failed
        return s

    async def run(self, sock: socket.socket, *, duration: float | None = None,
                  stop: asyncio.Event | None = None) -> dict:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        try:
            async for now in playout_ticks(self.rx.stats, stop, duration):
                for data, addr in self.tick(now / 1e9, time.time()):
                    try:
                        transport.sendto(data, addr)
                    except OSError:
                        self.rx.stats.socket_errors += 1
        finally:
            transport.close()
        return self.snapshot()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, fr: FieldReceiver) -> None:
        self._fr = fr

    def datagram_received(self, data: bytes, addr) -> None:
        self._fr.datagram_received(data, addr[:2], time.monotonic(), time.time())

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead server lands here; failover is driven by time
        self._fr.rx.stats.socket_errors += 1


def resolve_servers(servers: list[Addr]) -> list[Addr]:
    """Host names → IPv4 addresses once at start (the session compares source addresses)."""
    out = []
    for host, port in servers:
        info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        out.append((str(info[0][4][0]), port))
    return out
